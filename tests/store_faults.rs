//! Faults of the embedded store as a whole, through the real binary: a
//! damaged file is found by `ledgerd check` and stops a worker (not ready,
//! naming the fault and `ledgerd check`); a full disk (a real one: a 4 MiB
//! tmpfs, where the test may mount one) pauses claiming, and the same
//! worker finishes everything once space is freed.
//!
//! Mounting needs root: elsewhere (CI runs unprivileged) the full-disk test
//! is reported as ignored with the reason; `tests/readiness.rs` covers the
//! same recovery unprivileged, with a file-size limit standing in.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{
    free_port, get, json_lines, metric_sample, readyz_answers, signal, sigterm, stderr, stdout, store_probes,
    unit_actions, wait_until, Scratch,
};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        Trial::test("a_sound_store_passes_check", a_sound_store_passes_check),
        Trial::test(
            "a_damaged_store_is_found_by_check_and_stops_the_worker",
            a_damaged_store_is_found_by_check_and_stops_the_worker,
        ),
        Trial::ignorable_test(
            "a_full_disk_pauses_claiming_and_the_same_worker_resumes_once_space_is_freed",
            a_full_disk_pauses_claiming_and_the_same_worker_resumes_once_space_is_freed,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

fn enqueue(s: &Scratch, count: u64) {
    let out = s.run(&["enqueue"], &unit_actions("f", count));
    assert!(out.status.success(), "{}", stderr(&out));
}

fn a_sound_store_passes_check() -> Result<(), Failed> {
    let s = Scratch::new();
    enqueue(&s, 100);
    for args in [&["check"][..], &["check", "--full"][..]] {
        let out = s.run(args, "");
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
        assert!(text.ends_with("the store is sound (5 checks)\n"), "{text}");
        assert!(text.contains("a write commits"), "{text}");
    }
    let out = s.run(&["check", "--json"], "");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| l["ok"] == true), "{lines:?}");
    Ok(())
}

/// Overwrites most of every other page past those of a fresh store (the
/// header, the schema and the tables' first pages survive, so the file
/// still opens as a store) once every committed page is in the main file.
fn damage(db: &Path) {
    let fresh = Scratch::new();
    let page_count = |db: &Path| -> usize {
        let conn = rusqlite::Connection::open(db).expect("open");
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
        conn.query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("page count")
    };
    let schema = page_count(&fresh.db());
    assert!(page_count(db) > schema + 8, "the store holds data past its schema");
    let mut bytes = std::fs::read(db).expect("read");
    let page = 4096;
    for start in ((schema + 1) * page..bytes.len()).step_by(2 * page) {
        let end = (start + 2000).min(bytes.len());
        bytes[start + 100..end].fill(0xab);
    }
    std::fs::write(db, bytes).expect("write");
}

fn a_damaged_store_is_found_by_check_and_stops_the_worker() -> Result<(), Failed> {
    let s = Scratch::new();
    enqueue(&s, 3_000);
    damage(&s.db());

    // `check` finds it, names it, and exits 1; it writes nothing to it.
    let out = s.run(&["check"], "");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.contains("PROBLEM  integrity  the store is damaged: SQLite's quick_check found"),
        "{text}"
    );
    assert!(text.contains("restore it from a backup"), "{text}");
    assert!(!text.contains("writes"), "no probe write on a damaged file: {text}");
    assert!(text.ends_with("1 problem found (of 4 checks)\n"), "{text}");
    let lines = json_lines(&s.run(&["check", "--full", "--json"], ""));
    let integrity = lines
        .iter()
        .find(|l| l["check"] == "integrity")
        .expect("integrity line");
    assert_eq!(integrity["ok"], false);
    assert!(
        integrity["detail"]
            .as_str()
            .is_some_and(|d| d.contains("integrity_check")),
        "{integrity}"
    );

    // A batch run stops at once, naming the fault and the command.
    let out = s.run(&["run", "--exit-when-idle"], "");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the store is damaged") && err.contains("ledgerd check --full"),
        "{err}"
    );

    // A command that reads the whole ledger names the cause, once.
    let credited = Scratch::new();
    enqueue(&credited, 1_000);
    let out = credited.run(&["run", "--exit-when-idle", "--metrics-addr", "off"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    damage(&credited.db());
    let audit = credited.run(&["audit"], "");
    let err = stderr(&audit);
    assert_eq!(audit.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("the store is damaged").count(), 1, "once: {err}");

    // A running worker is alive, not ready, says why, and claims nothing.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = s
        .cmd(&["run", "--metrics-addr", &addr, "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let body = readyz_answers(port, 503);
    assert!(
        body.contains("the store is damaged") && body.contains(&s.db().display().to_string()),
        "{body}"
    );
    assert!(body.contains("ledgerd check --full"), "{body}");
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    let metrics = get(port, "/metrics").expect("metrics").1;
    assert_eq!(
        metric_sample(&metrics, r#"ledgerd_store_fault{kind="corrupt"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric_sample(&metrics, r#"ledgerd_actions_total{outcome="completed"}"#),
        Some(0.0)
    );
    sigterm(&child);
    let out = child.wait_with_output().expect("exit");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out)
            .matches("the store is damaged: no actions are claimed")
            .count(),
        1,
        "{}",
        stderr(&out)
    );
    Ok(())
}

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn new(dir: &Path, size: &str) -> Result<Self, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Self(dir.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` until a write fails for want of
/// space; returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).expect("filler");
    let block = vec![0u8; 4096];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = file.sync_all();
    filler
}

fn a_full_disk_pauses_claiming_and_the_same_worker_resumes_once_space_is_freed() -> Result<Completion, Failed> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| stdout(&o).trim().to_string());
    if !uid.is_ok_and(|u| u == "0") {
        return Ok(Completion::ignored_with(
            "needs root, to mount a 4 MiB tmpfs; tests/readiness.rs covers the recovery unprivileged",
        ));
    }
    let s = Scratch::empty();
    let disk = s.path().join("disk");
    std::fs::create_dir(&disk).expect("mount point");
    // 4 MiB: the queued actions' write-ahead log takes about 2, the filler
    // the rest, so that freeing it frees room for a checkpoint. (On 2 MiB
    // the log took nearly all of it; the filler, and what its removal
    // freed, were a few pages: too little for SQLite to checkpoint, and
    // recovery came only when a checkpoint happened to fit.)
    let _mounted = match Mounted::new(&disk, "4m") {
        Ok(m) => m,
        Err(why) => return Ok(Completion::ignored_with(format!("cannot mount a tmpfs here: {why}"))),
    };
    let url = format!("sqlite://{}", disk.join("ledgerd.db").display());
    let ledgerd = |args: &[&str]| {
        let mut cmd = s.cmd(args);
        cmd.env("LEDGERD_STORE", &url);
        cmd
    };
    let out = s.run_with(ledgerd(&["init"]), "");
    assert!(out.status.success(), "{}", stderr(&out));

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // The log goes to a file off the full disk: a pipe read only at the
    // end would fill and stop the worker.
    let log_path = s.path().join("worker.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut worker = ledgerd(&["run", "--metrics-addr", &addr, "--log-level", "info"]);
    worker.env("LEDGERD_LEASE_MS", "1000").env("LEDGERD_CONCURRENCY", "8");
    let mut child = worker.stdout(Stdio::null()).stderr(log).spawn().expect("start");
    let started = std::time::Instant::now();
    // The disk fills while the worker runs, with work queued: it is frozen
    // while the actions are queued and the disk is filled.
    readyz_answers(port, 200);
    signal(&child, "STOP");
    let out = s.run_with(ledgerd(&["enqueue"]), &unit_actions("f", 1_000));
    assert!(out.status.success(), "{}", stderr(&out));
    let filler = fill(&disk);
    signal(&child, "CONT");
    let body = readyz_answers(port, 503);
    assert!(
        body.contains("the disk holding the store is full") && body.contains(&disk.display().to_string()),
        "names the cause and the file: {body}"
    );
    wait_until("the store has been probed 4 times", || {
        get(port, "/readyz").is_some_and(|(_, b)| store_probes(&b).is_some_and(|n| n >= 4))
    });
    let metrics = get(port, "/metrics").expect("metrics").1;
    let failed = metric_sample(&metrics, r#"ledgerd_actions_total{outcome="error"}"#).unwrap_or(0.0);
    assert!(
        failed <= 16.0,
        "claiming paused, not a busy loop: {failed} failed attempts"
    );
    assert_eq!(
        metric_sample(&metrics, r#"ledgerd_store_fault{kind="disk_full"}"#),
        Some(1.0)
    );

    // Space freed: the same process resumes and finishes the queue.
    std::fs::remove_file(&filler).expect("free space");
    wait_until("the same worker credits every action", || {
        let status = json_lines(&s.run_with(ledgerd(&["status", "--json"]), ""));
        status.first().is_some_and(|st| st["queued"].as_u64() == Some(0))
    });
    assert_eq!(get(port, "/readyz").map(|r| r.0), Some(200));
    sigterm(&child);
    assert_eq!(child.wait().expect("exit").code(), Some(0));
    let err = std::fs::read_to_string(&log_path).expect("log");
    let minutes = 1 + started.elapsed().as_secs() as usize / 60;
    let logged = err.matches("the store cannot work: no actions are claimed").count();
    assert!(
        (1..=minutes).contains(&logged),
        "{logged} lines in {minutes} minutes: {err}"
    );
    assert!(err.contains("\"fault\":\"disk_full\""), "{err}");
    let audit = s.run_with(ledgerd(&["audit"]), "");
    assert!(audit.status.success(), "{}", stdout(&audit));
    let mut at = s.cmd(&["balances"]);
    at.env("LEDGERD_STORE", &url);
    let listed = json_lines(&s.run_with(at, ""));
    let credited: u64 = listed.iter().filter_map(|l| l["units"].as_u64()).sum();
    assert_eq!(credited, 1_000, "{listed:?}");
    Ok(Completion::Completed)
}

//! Failures that must be loud, through the real binary: a discovery that
//! cannot work stops `run --exit-when-idle` with one clear message and makes
//! a running worker not ready (logged once, not once per attempt); a disk
//! that cannot take another write pauses claiming, turns `/readyz` to 503,
//! and the same worker finishes everything once it can write again.

mod common;

use std::process::Stdio;

use common::{
    balances, free_port, get, json_lines, metric_sample, readyz_answers, sigterm, start_watched, stderr, store_probes,
    unit_actions, wait_until, Scratch,
};

/// A store whose `docs` table lacks the columns discovery reads: as
/// permanent a discovery failure as a missing index or Query service.
fn broken_discovery() -> Scratch {
    let s = Scratch::empty();
    let conn = rusqlite::Connection::open(s.db()).expect("create");
    conn.execute_batch(
        "CREATE TABLE docs (bucket TEXT NOT NULL, k TEXT NOT NULL, body BLOB NOT NULL);
         CREATE TABLE cas_seq (id INTEGER PRIMARY KEY, value INTEGER NOT NULL);
         INSERT INTO cas_seq VALUES (1, 0);",
    )
    .expect("schema");
    s
}

#[test]
fn a_discovery_that_cannot_work_stops_an_exit_when_idle_run_with_one_message() {
    let s = broken_discovery();
    let child = s
        .cmd(&["run", "--exit-when-idle", "--metrics-addr", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let out = child.wait_with_output().expect("exit");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.matches("discovery of queued actions has failed").count(),
        1,
        "one message: {err}"
    );
    assert!(err.contains("no such column") && err.contains("will not heal"), "{err}");
}

#[test]
fn a_running_worker_is_not_ready_while_discovery_fails_and_says_so_once() {
    let s = broken_discovery();
    let (child, port) = start_watched(&s, "info", &[]);
    let body = readyz_answers(port, 503);
    assert!(body.contains("discovery") && body.contains("no such column"), "{body}");
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200), "alive, only not ready");
    // Several failed attempts, counted.
    wait_until("three discovery failures are counted", || {
        get(port, "/metrics").is_some_and(|(_, m)| {
            metric_sample(&m, r#"ledgerd_discovery_failures_total{kind="permanent"}"#).is_some_and(|n| n >= 3.0)
        })
    });
    sigterm(&child);
    let out = child.wait_with_output().expect("exit");
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert_eq!(
        err.matches("discovery is failing").count(),
        1,
        "logged once per minute, not once per attempt: {err}"
    );
}

#[test]
fn a_disk_that_takes_no_more_writes_pauses_claiming_and_the_same_worker_resumes() {
    let s = Scratch::new();
    let out = s.run(&["enqueue"], &unit_actions("d", 2_000));
    assert!(out.status.success(), "{}", stderr(&out));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // A soft file-size limit of 64 KiB stands in for a full disk: the
    // write-ahead log can grow by a dozen pages, then every commit fails.
    // SIGXFSZ is ignored so that the failing write returns an error, as
    // ENOSPC would. Raising the soft limit later (`prlimit`, which needs no
    // privilege up to the hard limit) is the disk getting room again.
    let mut limited = std::process::Command::new("bash");
    limited
        .args(["-c", "trap '' XFSZ; ulimit -S -f 64; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_ledgerd"))
        .args(["run", "--metrics-addr", &addr, "--log-level", "info"])
        .current_dir(s.path());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("LEDGERD_")) {
        limited.env_remove(key);
    }
    // A claim can commit while the writes after it, and the unlock, cannot:
    // such an action stays locked for the lease. The shortest lease keeps
    // that wait short.
    limited.env("LEDGERD_LEASE_MS", "1000").env("LEDGERD_CONCURRENCY", "8");
    // The log (a line per action at info) goes to a file: a pipe nobody
    // reads until the end would fill and stop the worker.
    let log_path = s.path().join("worker.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = limited.stdout(Stdio::null()).stderr(log).spawn().expect("start");
    let started = std::time::Instant::now();
    let body = readyz_answers(port, 503);
    assert!(
        body.contains("failed a read or a write") && body.contains(&s.db().display().to_string()),
        "names the cause and the file: {body}"
    );
    // Claiming is paused: while the store is probed again and again, the
    // failed attempts do not grow with the probes (no busy loop).
    let errors = || {
        get(port, "/metrics")
            .and_then(|(_, m)| metric_sample(&m, r#"ledgerd_actions_total{outcome="error"}"#))
            .unwrap_or(0.0)
    };
    wait_until("the store has been probed 4 times", || {
        get(port, "/readyz").is_some_and(|(_, b)| store_probes(&b).is_some_and(|n| n >= 4))
    });
    let failed = errors();
    assert!(
        failed <= 16.0,
        "at most two attempts per slot fail, then claiming pauses: {failed}"
    );
    let metrics = get(port, "/metrics").expect("metrics").1;
    assert_eq!(
        metric_sample(&metrics, r#"ledgerd_store_fault{kind="io_error"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200), "alive, only not ready");

    // Room again: the same process resumes by itself and finishes the queue.
    let raised = std::process::Command::new("prlimit")
        .args(["--pid", &child.id().to_string(), "--fsize=unlimited:"])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(raised.success());
    wait_until("the same worker credits every action", || {
        let status = &json_lines(&s.run(&["status", "--json"], ""))[0];
        status["queued"].as_u64() == Some(0)
    });
    assert_eq!(get(port, "/readyz").map(|r| r.0), Some(200));
    let metrics = get(port, "/metrics").expect("metrics").1;
    assert_eq!(
        metric_sample(&metrics, r#"ledgerd_store_fault{kind="io_error"}"#),
        Some(0.0),
        "{metrics}"
    );
    sigterm(&child);
    assert_eq!(child.wait().expect("exit").code(), Some(0));
    let err = std::fs::read_to_string(&log_path).expect("log");
    // The cause is logged once per minute while it lasts, not per attempt.
    let minutes = 1 + started.elapsed().as_secs() as usize / 60;
    let logged = err.matches("the store cannot work: no actions are claimed").count();
    assert!(
        (1..=minutes).contains(&logged),
        "{logged} lines in {minutes} minutes: {err}"
    );
    assert_eq!(
        err.matches("the store works again: claiming resumes").count(),
        1,
        "{err}"
    );
    let expected: std::collections::BTreeMap<String, u64> = (0..5).map(|w| (format!("w{w}"), 400)).collect();
    assert_eq!(balances(&s), expected);
}

/// A peer that speaks just enough of memcached's binary protocol to refuse
/// a login as Couchbase Server does: it offers SASL mechanisms, answers
/// every SASL_AUTH or SASL_STEP with status 0x20 ("authentication error",
/// kv_engine `docs/BinaryProtocol.md`), and everything else with "unknown
/// command". Returns its port; it serves until the test process ends.
fn refusing_kv_peer() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut header = [0u8; 24];
                while conn.read_exact(&mut header).is_ok() {
                    let body_len = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
                    let mut body = vec![0u8; body_len];
                    if conn.read_exact(&mut body).is_err() {
                        return;
                    }
                    let opcode = header[1];
                    let (status, value): (u16, &[u8]) = match opcode {
                        0x20 => (0x0000, b"PLAIN SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1"),
                        0x21 | 0x22 => (0x0020, b"Authentication failed"),
                        _ => (0x0081, b""),
                    };
                    let mut response = vec![0x81, opcode, 0, 0, 0, 0];
                    response.extend_from_slice(&status.to_be_bytes());
                    response.extend_from_slice(&(value.len() as u32).to_be_bytes());
                    response.extend_from_slice(&header[12..16]); // the opaque
                    response.extend_from_slice(&[0u8; 8]); // the CAS
                    response.extend_from_slice(value);
                    if conn.write_all(&response).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_refused_login_is_said_at_once_naming_the_user_and_never_the_password() {
    let s = Scratch::empty();
    let port = refusing_kv_peer();
    let url = format!("couchbase://127.0.0.1:{port}");
    let password = "pw-Never-Logged-7f3a";
    // A connect deadline far longer than this test's wait: only the
    // refusal can end the command before it.
    let mut cmd = s.cmd(&[
        "enqueue",
        "--store",
        &url,
        "--log-level",
        "trace",
        "--log-format",
        "json",
    ]);
    cmd.env("LEDGERD_COUCHBASE_USERNAME", "ledgerd-app")
        .env("LEDGERD_COUCHBASE_PASSWORD", password)
        .env("LEDGERD_COUCHBASE_CONNECT_TIMEOUT_MS", "600000");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ledgerd");
    drop(child.stdin.take());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("a refused login was not reported: the command waited for its connect deadline");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ledgerd: ") && last.contains("authentication failed") && last.contains("\"ledgerd-app\""),
        "{last}"
    );
    assert!(
        last.contains("couchbase_password"),
        "names the settings to check: {last}"
    );
    assert_eq!(out.status.code(), Some(2), "wrong credentials are configuration");
    assert!(!err.contains(password), "the password was logged");
    assert!(err.lines().count() > 3, "the SDK's trace lines were there to search");
}

//! Helpers for tests that run the real `ledgerd` binary.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A scratch directory with its own store, and a way to run ledgerd there.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    /// A scratch directory with an initialised store (`ledgerd init`), as a
    /// user would start.
    pub fn new() -> Self {
        let s = Self::empty();
        let out = s.run(&["init"], "");
        assert!(out.status.success(), "ledgerd init: {}", stderr(&out));
        s
    }

    /// A scratch directory with no store in it.
    pub fn empty() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store_url(&self) -> String {
        format!("sqlite://{}", self.db().display())
    }

    pub fn db(&self) -> PathBuf {
        self.path().join("ledgerd.db")
    }

    /// `ledgerd ARGS` in the scratch directory, with no LEDGERD_* from
    /// outside, and no ops listener unless the test asks for one with
    /// `--metrics-addr` (tests run side by side, and a worker that cannot
    /// bind its metrics address does not start).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ledgerd"));
        cmd.args(args).current_dir(self.path()).env_remove("RUST_LOG");
        for (key, _) in std::env::vars() {
            if key.starts_with("LEDGERD_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("LEDGERD_METRICS_ADDR", "off");
        cmd
    }

    /// Runs `ledgerd ARGS` with `stdin`, returning its output.
    pub fn run(&self, args: &[&str], stdin: &str) -> Output {
        self.run_with(self.cmd(args), stdin)
    }

    pub fn run_with(&self, cmd: Command, stdin: &str) -> Output {
        self.run_bytes(cmd, stdin.as_bytes())
    }

    /// Runs `cmd` with `stdin` as raw bytes, returning its output.
    pub fn run_bytes(&self, mut cmd: Command, stdin: &[u8]) -> Output {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ledgerd");
        // Written from a thread, so that a child writing much to stdout or
        // stderr while it reads cannot deadlock against us.
        let mut input = child.stdin.take().expect("stdin");
        let bytes = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&bytes);
        });
        let out = child.wait_with_output().expect("ledgerd output");
        let _ = writer.join();
        out
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON lines of stdout.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `ledgerd run` with its ops listener on a free port, logging at
/// `log_level` to a pipe, with `env` set: the child, once the listener
/// answers, and the port.
pub fn start_watched(s: &Scratch, log_level: &str, env: &[(&str, &str)]) -> (std::process::Child, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = s.cmd(&["run", "--metrics-addr", &addr, "--log-level", log_level]);
    cmd.envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start ledgerd run");
    wait_until("the listener answers", || get(port, "/healthz").is_some());
    (child, port)
}

/// The value of one series (name and labels, as written) in a Prometheus
/// text body.
pub fn metric_sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The lines of a Markdown text outside its fenced code blocks.
pub fn prose_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// GitHub's anchor of a Markdown heading's text.
pub fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown text's headings (outside code blocks).
pub fn anchors(text: &str) -> std::collections::BTreeSet<String> {
    prose_lines(text)
        .filter(|line| line.starts_with('#'))
        .map(|line| anchor(line.trim_start_matches('#')))
        .collect()
}

/// `GET path` on the ops listener: (status code, body).
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// Waits for something that must happen; the limit only keeps a broken
/// build from hanging the suite.
pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `count` valid actions with ids `PREFIX00000`…, one unit each to one of
/// five wallets (`w0` to `w4`), as JSON Lines for `enqueue`.
pub fn unit_actions(prefix: &str, count: u64) -> String {
    (0..count)
        .map(|i| {
            format!(
                "{{\"id\":\"{prefix}{i:05}\",\"doc\":{{\"beneficiaries\":{{\"w{}\":\"0.00000001\"}}}}}}\n",
                i % 5
            )
        })
        .collect()
}

/// Waits until `/readyz` answers `code`, and returns its body.
pub fn readyz_answers(port: u16, code: u16) -> String {
    wait_until(&format!("/readyz answers {code}"), || {
        get(port, "/readyz").is_some_and(|(c, _)| c == code)
    });
    get(port, "/readyz").expect("readyz").1
}

/// The number of probes `/readyz` gives for a faulted store.
pub fn store_probes(body: &str) -> Option<u64> {
    let (_, after) = body.split_once(" s, ")?;
    after.split(' ').next()?.parse().ok()
}

/// Sends SIGTERM to a child.
pub fn sigterm(child: &std::process::Child) {
    signal(child, "TERM");
}

/// `hash -> units` from `ledgerd balances`.
pub fn balances(s: &Scratch) -> std::collections::BTreeMap<String, u64> {
    let out = s.run(&["balances"], "");
    assert!(out.status.success(), "balances: {}", stderr(&out));
    json_lines(&out)
        .into_iter()
        .map(|v| {
            (
                v["hash"].as_str().expect("hash").to_string(),
                v["units"].as_u64().expect("units"),
            )
        })
        .collect()
}

/// Freezes worker processes (SIGSTOP, SIGCONT) and reads the store file
/// while they are frozen: the test can look at the queue and act (kill,
/// signal) at a moment when work is known to remain and workers hold claims
/// they cannot finish, whatever the speed of the machine or of ledgerd.
/// Reads of a WAL database never wait for a writer, frozen or not, with one
/// exception: a process that opens the file after another was killed may
/// recover the WAL index, and readers wait for that recovery
/// (SQLITE_BUSY_RECOVERY). A child frozen mid-recovery would make them wait
/// for ever, so a count that finds the file busy lets the frozen children
/// run a step and asks again.
pub struct Freezer {
    conn: rusqlite::Connection,
}

/// Sends the signal `name` (e.g. `STOP`, `CONT`) to a child.
pub fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {}", child.id());
}

/// Waits until every thread of process `pid` is stopped (or gone), as
/// `/proc/<pid>/task/*/stat` says (state `T` or `t`; Linux).
fn wait_stopped(pid: u32) {
    let stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return true; // gone
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat")).map_or(true, |stat| {
                // "pid (comm) S ...": the state follows the last ')'.
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next());
                matches!(state, Some('T' | 't' | 'Z' | 'X') | None)
            })
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !stopped() {
        assert!(std::time::Instant::now() < deadline, "process {pid} never stopped");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

impl Freezer {
    pub fn new(s: &Scratch) -> Self {
        let conn = rusqlite::Connection::open(s.db()).expect("open the store file");
        // Short: a busy file is met by stepping the frozen children (or, if
        // none are frozen, by asking again), never by one long wait.
        conn.busy_timeout(std::time::Duration::from_millis(50))
            .expect("set the busy timeout");
        Self { conn }
    }

    /// Freezes every child, and returns once every thread of each has
    /// stopped: `kill` returns when the signal is sent, and a thread busy
    /// on another core could otherwise take a lock after the test looked.
    pub fn stop(&self, children: &[std::process::Child]) {
        children.iter().for_each(|c| signal(c, "STOP"));
        children.iter().for_each(|c| wait_stopped(c.id()));
    }

    /// Lets every child run again.
    pub fn resume(&self, children: &[std::process::Child]) {
        children.iter().for_each(|c| signal(c, "CONT"));
    }

    /// Lets the children run for a moment, then freezes them again.
    pub fn step(&self, children: &[std::process::Child]) {
        self.resume(children);
        std::thread::sleep(std::time::Duration::from_millis(2));
        self.stop(children);
    }

    /// Queued actions with a lock that lapses after `after_ms` (0: all),
    /// read while `frozen` are stopped (none: nobody is frozen).
    fn queued_locked_after(&self, after_ms: i64, frozen: &[std::process::Child]) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        loop {
            let counted = self.conn.query_row(
                "SELECT COUNT(*) FROM docs WHERE bucket = 'queue' AND key >= 'action:' AND key < 'action;'
                 AND (?1 = 0 OR lock_until_ms > ?1)",
                [after_ms],
                |r| r.get::<_, i64>(0),
            );
            match counted {
                Ok(n) => return u64::try_from(n).expect("a count is never negative"),
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => {
                    assert!(std::time::Instant::now() < deadline, "the store file stayed busy: {e}");
                    if frozen.is_empty() {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    } else {
                        self.step(frozen);
                    }
                }
                Err(e) => panic!("count the queue: {e}"),
            }
        }
    }

    /// The replicas the membership document lists, `(member id, pid)`,
    /// read while `frozen` are stopped.
    pub fn members(&self, frozen: &[std::process::Child]) -> Vec<(String, u64)> {
        let xattrs: Option<String> = loop {
            match self.conn.query_row(
                "SELECT xattrs FROM docs WHERE bucket = 'queue' AND key = 'members:ledgerd'",
                [],
                |r| r.get(0),
            ) {
                Ok(x) => break Some(x),
                Err(rusqlite::Error::QueryReturnedNoRows) => break None,
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => {
                    self.step(frozen)
                }
                Err(e) => panic!("read the members: {e}"),
            }
        };
        let Some(xattrs) = xattrs else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&xattrs).expect("xattrs are JSON");
        let mut members: Vec<(String, u64)> = v["ledger"]["members"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(id, beat)| (id.clone(), beat["pid"].as_u64().expect("pid")))
                    .collect()
            })
            .unwrap_or_default();
        members.sort();
        members
    }

    /// The keys still queued, read while `frozen` are stopped.
    pub fn queued_keys(&self, frozen: &[std::process::Child]) -> Vec<String> {
        loop {
            let listed: Result<Vec<String>, _> = self
                .conn
                .prepare("SELECT key FROM docs WHERE bucket = 'queue' AND key >= 'action:' AND key < 'action;'")
                .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect());
            match listed {
                Ok(keys) => return keys,
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => {
                    self.step(frozen)
                }
                Err(e) => panic!("list the queue: {e}"),
            }
        }
    }

    /// Whether no process holds SQLite's write lock on the file now (one
    /// frozen while it does would stall every other writer), read while
    /// `frozen` are stopped.
    pub fn write_lock_free(&self, frozen: &[std::process::Child]) -> bool {
        let _ = frozen;
        match self.conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {
                self.conn.execute_batch("ROLLBACK").expect("roll back the probe");
                true
            }
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => false,
            Err(e) => panic!("probe the write lock: {e}"),
        }
    }

    /// Actions still queued (no child frozen by this freezer).
    pub fn queued(&self) -> u64 {
        self.queued_locked_after(0, &[])
    }

    /// Actions still queued, counted while `frozen` are stopped.
    pub fn queued_while(&self, frozen: &[std::process::Child]) -> u64 {
        self.queued_locked_after(0, frozen)
    }

    /// Queued actions that a worker holds claimed right now, counted while
    /// `frozen` are stopped.
    pub fn claimed(&self, frozen: &[std::process::Child]) -> u64 {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis();
        self.queued_locked_after(i64::try_from(now_ms).expect("ms"), frozen)
    }
}

//! Failures that must be loud, through the real binary: a discovery that
//! cannot work stops `run --exit-when-idle` with one clear message and makes
//! a running worker not ready (logged once, not once per attempt); a disk
//! that cannot take another write turns `/readyz` to 503, and nothing is
//! lost once it can again.

mod common;

use std::process::Stdio;

use common::{
    balances, free_port, get, json_lines, metric_sample, sigterm, start_watched, stderr, wait_until, Scratch,
};

/// Waits until `/readyz` answers 503, and returns its body.
fn not_ready(port: u16) -> String {
    wait_until("/readyz answers 503", || {
        get(port, "/readyz").is_some_and(|(code, _)| code == 503)
    });
    get(port, "/readyz").expect("readyz").1
}

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
    let body = not_ready(port);
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

/// `count` valid actions, one unit each to one of five wallets.
fn actions(count: u64) -> String {
    (0..count)
        .map(|i| {
            format!(
                "{{\"id\":\"d{i:05}\",\"doc\":{{\"beneficiaries\":{{\"w{}\":\"0.00000001\"}}}}}}\n",
                i % 5
            )
        })
        .collect()
}

#[test]
fn a_disk_that_takes_no_more_writes_turns_readyz_to_503_and_loses_nothing() {
    let s = Scratch::new();
    let out = s.run(&["enqueue"], &actions(2_000));
    assert!(out.status.success(), "{}", stderr(&out));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // A file-size limit of 64 KiB stands in for a full disk: the write-ahead
    // log can grow by a dozen pages, then every commit fails. SIGXFSZ is
    // ignored so that the failing write returns an error, as ENOSPC would.
    let mut limited = std::process::Command::new("bash");
    limited
        .args(["-c", "trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_ledgerd"))
        .args(["run", "--metrics-addr", &addr, "--log-level", "warn"])
        .current_dir(s.path());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("LEDGERD_")) {
        limited.env_remove(key);
    }
    // A claim can commit while the writes after it, and the unlock, cannot:
    // such an action stays locked for the lease. The shortest lease keeps
    // that wait short.
    limited.env("LEDGERD_LEASE_MS", "1000");
    let child = limited
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let started = std::time::Instant::now();
    let body = not_ready(port);
    assert!(body.contains("a write cannot commit"), "{body}");
    // Many attempts fail the same way before the worker is stopped.
    wait_until("20 attempts have failed", || {
        get(port, "/metrics").is_some_and(|(_, m)| {
            m.lines()
                .find(|l| l.starts_with(r#"ledgerd_actions_total{outcome="error"}"#))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .is_some_and(|n| n >= 20.0)
        })
    });
    sigterm(&child);
    let out = child.wait_with_output().expect("exit");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // One line per cause per 10 s, then one with the count of the others.
    let windows = 1 + started.elapsed().as_secs() as usize / 10;
    let logs: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut per_cause: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for line in logs.iter().filter(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("action attempt failed"))
    }) {
        *per_cause.entry(line["error"].to_string()).or_default() += 1;
    }
    assert!(!per_cause.is_empty(), "{}", stderr(&out));
    for (cause, lines) in &per_cause {
        assert!(*lines <= windows, "{cause}: {lines} lines in {windows} windows");
    }
    let repeated: u64 = logs
        .iter()
        .filter(|l| l["message"] == "more action attempts failed with the same error")
        .filter_map(|l| l["repeated"].as_u64())
        .sum();
    assert!(repeated > 0, "the collapsed attempts are counted: {}", stderr(&out));

    // With room again, a worker finishes the queue exactly. Actions the
    // stopped worker had claimed wait out its lease: a run that finds them
    // still locked leaves them (and says so), and the next one takes them.
    wait_until("every action is credited", || {
        let out = s.run(&["run", "--exit-when-idle", "--metrics-addr", "off"], "");
        assert!(out.status.success(), "{}", stderr(&out));
        let status = &json_lines(&s.run(&["status", "--json"], ""))[0];
        status["queued"].as_u64() == Some(0)
    });
    let expected: std::collections::BTreeMap<String, u64> = (0..5).map(|w| (format!("w{w}"), 400)).collect();
    assert_eq!(balances(&s), expected);
}

//! Operating ledgerd through the real binary: metrics, health, SIGTERM
//! mid-run, audit, and requeueing failed actions.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::{
    balances, get, json_lines, metric_sample, sigterm, start_watched, stderr, stdout, wait_until, Freezer, Scratch,
};

fn queued(s: &Scratch) -> u64 {
    json_lines(&s.run(&["status", "--json"], ""))[0]["queued"]
        .as_u64()
        .expect("queued")
}

/// `count` valid actions crediting a few wallets, and their expected totals.
fn actions(prefix: &str, count: u64) -> (String, BTreeMap<String, u64>) {
    let mut lines = String::new();
    let mut expected = BTreeMap::new();
    for i in 0..count {
        let wallet = format!("w{}", i % 5);
        let units = 1 + i * 7_919;
        *expected.entry(wallet.clone()).or_insert(0) += units;
        let tokens = format!("{}.{:08}", units / 100_000_000, units % 100_000_000);
        lines.push_str(&format!(
            "{{\"id\":\"{prefix}{i:05}\",\"doc\":{{\"beneficiaries\":{{\"{wallet}\":\"{tokens}\"}}}}}}\n"
        ));
    }
    (lines, expected)
}

#[test]
fn metrics_count_what_was_processed_and_readyz_follows_the_store() {
    let s = Scratch::new();
    let (mut lines, expected) = actions("m", 40);
    lines.push_str("{\"id\":\"bad1\",\"raw\":\"not json\"}\n{\"id\":\"bad2\",\"doc\":{\"beneficiaries\":{}}}\n");
    s.run(&["enqueue"], &lines);
    let (child, port) = start_watched(&s, "warn", &[]);
    wait_until("the queue is drained", || queued(&s) == 0);
    let (code, body) = get(port, "/metrics").expect("scrape");
    assert_eq!(code, 200);
    assert_eq!(
        metric_sample(&body, r#"ledgerd_actions_total{outcome="completed"}"#),
        Some(40.0),
        "{body}"
    );
    assert_eq!(
        metric_sample(&body, r#"ledgerd_actions_total{outcome="failed"}"#),
        Some(2.0),
        "{body}"
    );
    assert_eq!(metric_sample(&body, "ledgerd_credits_total"), Some(40.0), "{body}");
    // Every credit went out in some wallet write, each write with one or more.
    assert_eq!(
        metric_sample(&body, "ledgerd_wallet_write_credits_total"),
        Some(40.0),
        "{body}"
    );
    assert!(metric_sample(&body, "ledgerd_wallet_writes_total").is_some_and(|n| (1.0..=40.0).contains(&n)));
    let units: u64 = expected.values().sum();
    assert_eq!(
        metric_sample(&body, "ledgerd_units_credited_total"),
        Some(units as f64),
        "{body}"
    );
    assert_eq!(metric_sample(&body, "ledgerd_in_flight_actions"), Some(0.0), "{body}");
    assert_eq!(
        metric_sample(&body, "ledgerd_action_seconds_count"),
        Some(40.0),
        "{body}"
    );
    assert!(metric_sample(
        &body,
        r#"ledgerd_store_operations_total{op="get_and_lock",result="ok"}"#
    )
    .is_some_and(|n| n >= 42.0));
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(port, "/readyz").map(|r| r.0), Some(200));
    assert_eq!(get(port, "/nope").map(|r| r.0), Some(404));

    // The store goes away: not ready (still alive).
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(s.path().join(format!("ledgerd.db{suffix}")));
    }
    let (code, body) = get(port, "/readyz").expect("readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));

    sigterm(&child);
    let out = child.wait_with_output().expect("exit");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn sigterm_mid_run_leaves_nothing_half_done() {
    let s = Scratch::new();
    let (lines, expected) = actions("t", 2_000);
    s.run(&["enqueue"], &lines);
    // The worker runs only when the test lets it, so the signal arrives
    // while it holds claims and work remains, whatever the machine's speed.
    let freezer = Freezer::new(&s);
    let mut child = s
        .cmd(&[
            "run",
            "--concurrency",
            "8",
            "--metrics-addr",
            "off",
            "--log-level",
            "info",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let frozen = std::slice::from_mut(&mut child);
    freezer.stop(frozen);
    while freezer.claimed(frozen) == 0 {
        freezer.step(frozen);
    }
    let queued_at_signal = freezer.queued_while(frozen);
    assert!(queued_at_signal > 8, "more queued than the worker can hold at once");
    sigterm(&frozen[0]);
    freezer.resume(frozen);
    let out = child.wait_with_output().expect("exit");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let left = queued(&s);
    assert!(left > 0, "the test must stop the worker while work remains");

    // A second run finishes the queue with exact results.
    let out = s.run(&["run", "--exit-when-idle", "--metrics-addr", "off"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(queued(&s), 0);
    assert_eq!(balances(&s), expected);
    let audit = s.run(&["audit"], "");
    assert!(audit.status.success(), "{}", stdout(&audit));
}

#[test]
fn audit_passes_on_a_clean_run_and_fails_after_tampering() {
    let s = Scratch::new();
    let (lines, expected) = actions("a", 30);
    s.run(&["enqueue"], &lines);
    drain(&s);
    let out = s.run(&["audit"], "");
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("0 mismatches"), "{}", stdout(&out));

    // Someone adds one unit to a wallet behind ledgerd's back.
    let wallet = "w3";
    let units = expected[wallet] + 1;
    tamper(&s, wallet, &units.to_string());
    let out = s.run(&["audit"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!(
            "MISMATCH {wallet}: balance {units} units, expected {}",
            expected[wallet]
        )),
        "{}",
        stdout(&out)
    );
}

#[test]
fn an_opening_snapshot_accounts_for_balances_from_elsewhere() {
    let s = Scratch::new();
    s.run(&["init"], "");
    tamper(&s, "legacy", "500");
    let out = s.run(&["audit"], "");
    assert_eq!(out.status.code(), Some(1), "a balance with no credits is a mismatch");
    let out = s.run(&["audit", "--snapshot"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    s.run(
        &["enqueue"],
        r#"{"id":"x1","doc":{"beneficiaries":{"legacy":"0.00000001"}}}"#,
    );
    drain(&s);
    let out = s.run(&["audit"], "");
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(balances(&s).get("legacy"), Some(&501));
    let again = s.run(&["audit", "--snapshot"], "");
    assert_eq!(again.status.code(), Some(1), "a snapshot is never overwritten");
}

#[test]
fn a_fixed_failed_action_requeued_is_credited_once() {
    let s = Scratch::new();
    s.run(
        &["enqueue"],
        r#"{"id":"r1","doc":{"beneficiaries":{"w":"0.000000001"}}}"#,
    );
    drain(&s);
    assert_eq!(json_lines(&s.run(&["failed"], "")).len(), 1);

    std::fs::write(s.path().join("fixed.json"), r#"{"beneficiaries":{"w":"0.00000001"}}"#).expect("write");
    let out = s.run(&["failed", "requeue", "r1", "--doc", "fixed.json"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"{"requeued":1,"refused":0}"#);
    assert!(json_lines(&s.run(&["failed"], "")).is_empty());
    drain(&s);
    assert_eq!(balances(&s).get("w"), Some(&1));

    // Requeueing again finds nothing; running again credits nothing.
    let out = s.run(&["failed", "requeue", "r1"], "");
    assert_eq!(out.status.code(), Some(1));
    drain(&s);
    assert_eq!(balances(&s).get("w"), Some(&1));
    let tx = s.run(&["tx", "r1"], "");
    assert!(stdout(&tx).contains("\"state\": \"completed\""), "{}", stdout(&tx));
    let history = json_lines(&s.run(&["history", "w"], ""));
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["units"], 1);
}

#[test]
fn purge_deletes_failed_actions() {
    let s = Scratch::new();
    s.run(&["enqueue"], r#"{"id":"p1","raw":"junk"}"#);
    drain(&s);
    let out = s.run(&["failed", "purge", "p1", "p2"], "");
    assert_eq!(out.status.code(), Some(1), "p2 does not exist");
    assert_eq!(stdout(&out).trim(), r#"{"purged":1}"#);
    assert!(json_lines(&s.run(&["failed"], "")).is_empty());
}

/// Runs a worker until the queue is idle.
fn drain(s: &Scratch) {
    let out = s.run(&["run", "--exit-when-idle", "--metrics-addr", "off"], "");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Overwrites a wallet document behind ledgerd's back.
fn tamper(s: &Scratch, hash: &str, body: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        use ledgerd::store::sqlite::{OpenMode, SqliteStore};
        use ledgerd::store::{Bucket, Store};
        let store = SqliteStore::open(&s.db(), "queue", "ledger", OpenMode::Create).expect("open");
        let key = format!("balance:{hash}");
        match store.get(Bucket::Ledger, &key).await {
            Ok(doc) => store
                .replace(Bucket::Ledger, &key, body.as_bytes(), doc.cas)
                .await
                .map(|_| ()),
            Err(_) => store.insert(Bucket::Ledger, &key, body.as_bytes()).await.map(|_| ()),
        }
        .expect("tamper");
    });
}

/// One response read off a kept-alive connection: (status, headers, body).
fn read_response(stream: &mut std::io::BufReader<std::net::TcpStream>, head_only: bool) -> (u16, String, String) {
    use std::io::{BufRead, Read};
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = stream.read_line(&mut line).expect("read response head");
        assert!(n > 0, "connection closed mid-response: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; if head_only { 0 } else { length }];
    stream.read_exact(&mut body).expect("read body");
    (code, head.to_lowercase(), String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn the_listener_answers_head_keeps_connections_alive_and_refuses_other_methods() {
    use std::io::Write;
    let s = Scratch::new();
    let (mut child, port) = start_watched(&s, "warn", &[]);
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = std::io::BufReader::new(stream);
    // Every request below goes over this one connection.
    let mut ask = |request: &str, head_only: bool| {
        write!(writer, "{request} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("write");
        read_response(&mut reader, head_only)
    };
    let (code, head, _) = ask("HEAD /healthz", true);
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("content-length: 3"),
        "HEAD tells the GET body's length: {head}"
    );
    let (code, _, body) = ask("GET /healthz", false);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, head, _) = ask("HEAD /metrics", true);
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    let (code, _, body) = ask("GET /metrics", false);
    assert_eq!(code, 200);
    assert!(body.contains("ledgerd_build_info"), "{body}");
    let (code, head, _) = ask("POST /metrics", false);
    assert_eq!(code, 405, "{head}");
    assert!(head.contains("allow: get,head"), "{head}");
    let (code, _, body) = ask("GET /readyz", false);
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let (code, _, _) = ask("GET /nope", false);
    assert_eq!(code, 404);
    sigterm(&child);
    let status = child.wait().expect("exit");
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err).expect("stderr");
    assert!(!err.contains("ERROR"), "{err}");
}

#[test]
fn a_metrics_address_that_cannot_be_bound_stops_the_worker_with_exit_2() {
    let s = Scratch::new();
    s.run(&["enqueue"], r#"{"id":"a1","doc":{"beneficiaries":{"w":1}}}"#);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = s.run(&["run", "--exit-when-idle", "--metrics-addr", &addr], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot listen on metrics_addr {addr}")), "{err}");
    assert!(err.contains("--metrics-addr"), "says what to do: {err}");
    // Nothing was claimed: the action waits for a worker that can be watched.
    assert_eq!(queued(&s), 1);
    assert!(balances(&s).is_empty());
    // `off` runs without a listener.
    let out = s.run(&["run", "--exit-when-idle", "--metrics-addr", "off"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(balances(&s).get("w"), Some(&100_000_000));
}

#[test]
fn units_credited_are_counted_exactly_beyond_what_a_float_holds() {
    let s = Scratch::new();
    // 2^53 + 1 units: the first integer a 64-bit float cannot hold, as
    // the whole of one reward.
    let units: u64 = (1 << 53) + 1;
    let tokens = format!("{}.{:08}", units / 100_000_000, units % 100_000_000);
    s.run(
        &["enqueue"],
        &format!(r#"{{"id":"big","doc":{{"reward":"{tokens}","beneficiaries":{{"w":100}}}}}}"#),
    );
    let (child, port) = start_watched(&s, "warn", &[]);
    wait_until("the queue is drained", || queued(&s) == 0);
    let (_, body) = get(port, "/metrics").expect("scrape");
    let line = body
        .lines()
        .find(|l| l.starts_with("ledgerd_units_credited_total "))
        .expect("the units counter");
    assert_eq!(line, format!("ledgerd_units_credited_total {units}"));
    sigterm(&child);
    let out = child.wait_with_output().expect("exit");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

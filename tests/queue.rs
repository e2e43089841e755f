//! Stuck work made visible, through the real binary: a blocked action, one
//! locked by another worker and a ready one, as `queue`, `queue show`,
//! `status`, `/metrics` and `run --exit-when-idle` each report them, from
//! processes other than the worker that saw the blockage.

mod common;

use common::{get, json_lines, metric_sample, sigterm, start_watched, stderr, stdout, wait_until, Scratch};
use ledgerd::store::sqlite::{OpenMode, SqliteStore};
use ledgerd::store::{Bucket, Store};
use serde_json::Value;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

fn store(s: &Scratch) -> SqliteStore {
    SqliteStore::open(&s.db(), "queue", "ledger", OpenMode::Existing).expect("open")
}

fn enqueue(s: &Scratch, id: &str, doc: &str) {
    let out = s.run(&["enqueue"], &format!("{{\"id\":\"{id}\",\"doc\":{doc}}}"));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `b` blocked on a corrupt wallet (seen by a worker that has exited), `l`
/// locked for a minute by another worker, `r` ready.
fn stuck() -> Scratch {
    let s = Scratch::new();
    runtime().block_on(async {
        store(&s)
            .insert(Bucket::Ledger, "balance:bad", b"\"corrupt\"")
            .await
            .expect("corrupt wallet");
    });
    enqueue(&s, "b", r#"{"beneficiaries":{"bad":"1"}}"#);
    let out = s.run(&["run", "--exit-when-idle", "--metrics-addr", "off"], "");
    assert_eq!(out.status.code(), Some(1), "a blocked action is left: {}", stderr(&out));
    assert!(
        stderr(&out).contains("1 blocked") && stderr(&out).contains("ledgerd queue --state blocked"),
        "{}",
        stderr(&out)
    );
    enqueue(&s, "l", r#"{"beneficiaries":{"w":"1"}}"#);
    enqueue(&s, "r", r#"{"beneficiaries":{"w":"2"}}"#);
    runtime().block_on(async {
        store(&s)
            .get_and_lock(Bucket::Queue, "action:l", std::time::Duration::from_secs(30))
            .await
            .expect("another worker's claim");
    });
    s
}

fn queue_json(s: &Scratch, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["queue", "--json"];
    args.extend_from_slice(extra);
    let out = s.run(&args, "");
    assert!(out.status.success(), "{}", stderr(&out));
    json_lines(&out)
}

#[test]
fn queue_lists_every_action_with_its_state() {
    let s = stuck();
    let lines = queue_json(&s, &[]);
    let state = |id: &str| -> &Value {
        lines
            .iter()
            .find(|l| l["id"] == id)
            .unwrap_or_else(|| panic!("{id}: {lines:?}"))
    };
    assert_eq!(lines.len(), 3, "{lines:?}");

    let b = state("b");
    assert_eq!(b["state"], "blocked");
    assert!(
        b["blocked"]["reason"].as_str().is_some_and(|r| r.contains("bad")),
        "{b}"
    );
    assert!(b["blocked"]["retry_after"].as_str().is_some(), "{b}");
    assert_eq!(b["blocked"]["attempts"], 1);
    let l = state("l");
    assert_eq!(l["state"], "locked");
    assert!(l["locked_until"].as_str().is_some(), "{l}");
    let r = state("r");
    assert_eq!(r["state"], "ready");
    assert_eq!(r["locked_until"], Value::Null);
    for line in &lines {
        assert!(
            line["queued_at"].as_str().is_some() && line["age_s"].as_u64().is_some(),
            "{line}"
        );
    }

    let blocked = queue_json(&s, &["--state", "blocked"]);
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0]["id"], "b");

    let text = s.run(&["queue"], "");
    assert!(text.status.success());
    assert!(
        stdout(&text)
            .trim_end()
            .ends_with("3 queued: 1 ready, 1 locked, 1 blocked"),
        "{}",
        stdout(&text)
    );
    assert!(stdout(&text).contains("blocked: "), "{}", stdout(&text));

    let show = s.run(&["queue", "show", "b"], "");
    assert!(show.status.success(), "{}", stderr(&show));
    let shown: Value = serde_json::from_str(&stdout(&show)).expect("one JSON object");
    assert_eq!(shown["state"], "blocked");
    assert_eq!(shown["body"], r#"{"beneficiaries":{"bad":"1"}}"#);
    assert_eq!(shown["plan"]["valid"], true);
    assert_eq!(shown["rejected_bodies"], 0);
    assert_eq!(s.run(&["queue", "show", "nope"], "").status.code(), Some(1));

    let status = &json_lines(&s.run(&["status", "--json"], ""))[0];
    assert_eq!(
        (
            &status["queued"],
            &status["ready"],
            &status["locked"],
            &status["blocked"]
        ),
        (&Value::from(3), &Value::from(1), &Value::from(1), &Value::from(1)),
        "{status}"
    );
    assert!(status["oldest_queued_age_s"].as_u64().is_some(), "{status}");
}

#[test]
fn exit_when_idle_reports_what_it_left_and_fails_while_anything_is_blocked() {
    let s = stuck();
    let out = s.run(&["run", "--exit-when-idle", "--metrics-addr", "off"], "");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("1 blocked") && err.contains("1 locked by other workers"),
        "{err}"
    );
    // The exit line is a lifecycle line, at ERROR here: it says which worker.
    let exit_line: Value = err
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("queue idle: exiting"))
        })
        .unwrap_or_else(|| panic!("no exit line: {err}"));
    assert_eq!(exit_line["level"], "ERROR", "{exit_line}");
    assert!(
        exit_line["pid"].as_u64().is_some() && exit_line["host"].is_string(),
        "{exit_line}"
    );
    // The ready one went through; once the wallet is repaired, so does the
    // blocked one, and what is left (a lock of another worker) is no failure.
    let out = s.run(
        &["adjust", "bad", "--to", "0", "--reason", "restore the corrupt wallet"],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = s.run(&["run", "--exit-when-idle", "--metrics-addr", "off"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let left: Vec<String> = queue_json(&s, &[])
        .iter()
        .map(|l| {
            format!(
                "{}={}",
                l["id"].as_str().unwrap_or("?"),
                l["state"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(left, ["l=locked"]);
}

#[test]
fn metrics_show_the_queue_by_state_and_every_counter_from_the_start() {
    let s = stuck();
    let (child, port) = start_watched(&s, "error", &[("LEDGERD_QUEUE_SAMPLE_MS", "1000")]);
    // Registered at 0 before anything happened to them.
    let (_, body) = get(port, "/metrics").expect("scrape");
    for series in [
        r#"ledgerd_actions_total{outcome="failed"}"#,
        r#"ledgerd_lease_renewals_total{result="lost"}"#,
        r#"ledgerd_discovery_failures_total{kind="permanent"}"#,
        r#"ledgerd_store_operations_total{op="set_xattr",result="limit_exceeded"}"#,
        "ledgerd_markers_pruned_total",
    ] {
        assert_eq!(metric_sample(&body, series), Some(0.0), "{series}: {body}");
    }
    assert_eq!(
        metric_sample(
            &body,
            &format!(r#"ledgerd_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))
        ),
        Some(1.0),
        "{body}"
    );
    // The ready action goes; the blocked one stays blocked, the locked one locked.
    wait_until("the sample shows one blocked and one locked, nothing ready", || {
        get(port, "/metrics").is_some_and(|(_, m)| {
            metric_sample(&m, r#"ledgerd_queue_actions{state="blocked"}"#) == Some(1.0)
                && metric_sample(&m, r#"ledgerd_queue_actions{state="locked"}"#) == Some(1.0)
                && metric_sample(&m, r#"ledgerd_queue_actions{state="ready"}"#) == Some(0.0)
        })
    });
    // Readiness is sampled too (the stuck actions are the queue's, not the worker's).
    wait_until("the sample shows the worker ready", || {
        get(port, "/metrics").is_some_and(|(_, m)| metric_sample(&m, "ledgerd_ready") == Some(1.0))
    });
    let (_, body) = get(port, "/metrics").expect("scrape");
    assert_eq!(metric_sample(&body, "ledgerd_queue_depth"), Some(2.0), "{body}");
    assert_eq!(metric_sample(&body, "ledgerd_failed_actions"), Some(0.0), "{body}");
    assert!(
        metric_sample(&body, "ledgerd_queue_oldest_age_seconds").is_some_and(|a| a >= 0.0),
        "{body}"
    );
    sigterm(&child);
    let out = child.wait_with_output().expect("exit");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

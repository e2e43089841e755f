//! Dead letters through the real binary: every rejected body of an id is
//! kept, listed with when and why, shown, counted, filtered; requeue puts
//! back the body the operator picks and refuses one `plan` rejects; purge
//! removes only what was selected, under CAS.

mod common;

use common::{balances, json_lines, stderr, stdout, Scratch};
use serde_json::Value;

const ALICE: &str = r#"{"beneficiaries":{"alice":"0.000000001"}}"#;
const BOB: &str = r#"{"beneficiaries":{"bob":-5}}"#;

fn drain(s: &Scratch) {
    let out = s.run(&["run", "--exit-when-idle", "--metrics-addr", "off"], "");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Queues `body` under `id` and lets a worker reject it.
fn reject(s: &Scratch, id: &str, body: &str) {
    let line = serde_json::json!({"id": id, "raw": body}).to_string();
    let out = s.run(&["enqueue"], &line);
    assert!(out.status.success(), "{}", stderr(&out));
    drain(s);
}

fn listed(s: &Scratch, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["failed"];
    all.extend_from_slice(args);
    let out = s.run(&all, "");
    assert!(out.status.success(), "{}", stderr(&out));
    json_lines(&out)
}

fn digest_of(entries: &[Value], body: &str) -> String {
    entries
        .iter()
        .find(|e| e["original"] == body)
        .and_then(|e| e["digest"].as_str())
        .unwrap_or_else(|| panic!("no entry for {body}: {entries:?}"))
        .to_string()
}

/// x1 rejected twice, with two different bodies.
fn alice_then_bob() -> Scratch {
    let s = Scratch::new();
    reject(&s, "x1", ALICE);
    reject(&s, "x1", BOB);
    s
}

#[test]
fn every_rejected_body_of_an_id_is_listed_with_when_and_why() {
    let s = alice_then_bob();
    let entries = listed(&s, &[]);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["original"], ALICE, "oldest first");
    assert_eq!(entries[1]["original"], BOB);
    for e in &entries {
        assert_eq!(e["id"], "x1");
        assert!(e["failed_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
        assert_eq!(e["digest"].as_str().map(str::len), Some(64));
    }
    assert_eq!(entries[0]["kind"], "share has more than 8 decimal places");
    // Shares are shown as written: a string share once quoted, not twice.
    assert_eq!(
        entries[0]["reason"],
        r#"beneficiary "alice": share "0.000000001" has more than 8 decimal places"#
    );
    assert!(entries[1]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("share -5 must be greater than 0")));

    let out = s.run(&["failed", "show", "x1"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_str(&stdout(&out)).expect("one JSON object");
    assert_eq!(shown["entries"].as_array().map(Vec::len), Some(2));
    assert_eq!(shown["queued"], Value::Null);
    assert_eq!(shown["credited"], Value::Null);
    assert_eq!(s.run(&["failed", "show", "nope"], "").status.code(), Some(1));
}

#[test]
fn requeue_puts_back_the_body_picked_and_keeps_the_others() {
    let s = alice_then_bob();
    let entries = listed(&s, &[]);
    let alice = digest_of(&entries, ALICE);

    // Two bodies: the operator must pick; nothing changes.
    let out = s.run(&["failed", "requeue", "x1"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("2 rejected bodies match") && stderr(&out).contains("--digest"),
        "{}",
        stderr(&out)
    );
    // Alice's body as it is would be rejected again.
    let out = s.run(&["failed", "requeue", "x1", "--digest", &alice[..12]], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("would be rejected again"), "{}", stderr(&out));
    // A correction that `plan` rejects is refused.
    std::fs::write(
        s.path().join("still-bad.json"),
        r#"{"beneficiaries":{"alice":"-0.00000001"}}"#,
    )
    .expect("write");
    let out = s.run(
        &["failed", "requeue", "x1", "--digest", &alice, "--doc", "still-bad.json"],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("the --doc body is rejected"), "{}", stderr(&out));
    assert_eq!(listed(&s, &[]), entries, "nothing changed");

    std::fs::write(
        s.path().join("fixed.json"),
        r#"{"beneficiaries":{"alice":"0.00000001"}}"#,
    )
    .expect("write");
    let out = s.run(
        &["failed", "requeue", "x1", "--digest", &alice, "--doc", "fixed.json"],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"{"requeued":1,"refused":0}"#);
    let left = listed(&s, &[]);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["original"], BOB, "bob's body is still kept");

    drain(&s);
    assert_eq!(balances(&s).get("alice"), Some(&1));
    assert_eq!(listed(&s, &[]).len(), 1, "bob's body survives the run");
}

#[test]
fn counts_and_filters() {
    let s = alice_then_bob();
    reject(&s, "x2", r#"{"beneficiaries":{"carol":"1.000000001"}}"#);
    let counts = listed(&s, &["--counts"]);
    assert_eq!(counts[0]["kind"], "share has more than 8 decimal places");
    assert_eq!(counts[0]["entries"], 2);
    assert_eq!(counts[0]["ids"], 2);
    assert_eq!(counts[1]["kind"], "share must be greater than 0");
    assert_eq!(counts[1]["entries"], 1);

    assert_eq!(listed(&s, &["--reason", "decimal places"]).len(), 2);
    assert_eq!(listed(&s, &["--reason", "bob"]).len(), 1);
    assert_eq!(listed(&s, &["--after", "1h"]).len(), 3);
    assert_eq!(listed(&s, &["--before", "1h"]).len(), 0);
    assert_eq!(listed(&s, &["--before", "2999-01-01"]).len(), 3);
    assert_eq!(listed(&s, &["--after", "2999-01-01T00:00:00Z"]).len(), 0);
    let bad = s.run(&["failed", "--before", "yesterday-ish"], "");
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("is not a time"), "{}", stderr(&bad));
}

#[test]
fn purge_removes_only_what_was_listed() {
    let s = alice_then_bob();
    let out = s.run(&["failed", "--reason", "decimal places"], "");
    std::fs::write(s.path().join("listed.jsonl"), stdout(&out)).expect("write");
    // Rejected after the listing: not the operator's to purge.
    reject(&s, "x1", r#"{"beneficiaries":{"dave":"x"}}"#);

    let out = s.run(&["failed", "purge", "--from", "listed.jsonl"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"{"purged":1}"#);
    let left: Vec<String> = listed(&s, &[])
        .iter()
        .map(|e| e["original"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(left, [BOB, r#"{"beneficiaries":{"dave":"x"}}"#]);

    // Bulk, by filter: only the matching entries go.
    let out = s.run(&["failed", "purge", "--all", "--reason", "greater than 0"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"{"purged":1}"#);
    assert_eq!(listed(&s, &[]).len(), 1);
    // By id: the rest of x1; an unknown id is reported and exits 1.
    let out = s.run(&["failed", "purge", "x1", "zz"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("zz: nothing to purge"), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"{"purged":1}"#);
    assert!(listed(&s, &[]).is_empty());
}

#[test]
fn requeue_and_purge_refuse_bad_usage_with_exit_2() {
    let s = alice_then_bob();
    std::fs::write(s.path().join("fixed.json"), r#"{"beneficiaries":{"a":1}}"#).expect("write");
    for args in [
        &["failed", "requeue"][..],
        &["failed", "purge"],
        &["failed", "purge", "x1", "--all"],
        &["failed", "requeue", "x1", "--digest", "abc"],
        &["failed", "requeue", "x1", "x2", "--doc", "fixed.json"],
        &["failed", "purge", "--from", "missing.jsonl"],
        &["failed", "requeue", "x1", "--doc", "missing.json"],
    ] {
        let out = s.run(args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    std::fs::write(s.path().join("not-a-listing.jsonl"), "{\"id\":\"x1\"}\n").expect("write");
    let out = s.run(&["failed", "purge", "--from", "not-a-listing.jsonl"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("line 1: needs"), "{}", stderr(&out));
    assert_eq!(listed(&s, &[]).len(), 2, "nothing changed");
}

#[test]
fn requeue_and_purge_treat_a_selection_that_matches_nothing_alike() {
    let s = alice_then_bob();
    // Every id, filtered to nothing: both exit 0, count 0, and say so.
    for (args, counts) in [
        (
            &["failed", "requeue", "--all", "--reason", "no-such-reason"][..],
            r#"{"requeued":0,"refused":0}"#,
        ),
        (
            &["failed", "purge", "--all", "--reason", "no-such-reason"],
            r#"{"purged":0}"#,
        ),
    ] {
        let out = s.run(args, "");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), counts, "{args:?}");
        assert!(
            stderr(&out).contains("nothing matched the selection"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // An id named that matches nothing: both exit 1, naming it.
    for args in [
        &["failed", "requeue", "x1", "--reason", "no-such-reason"][..],
        &["failed", "purge", "x1", "--reason", "no-such-reason"],
        &["failed", "requeue", "nope"],
        &["failed", "purge", "nope"],
    ] {
        let out = s.run(args, "");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("nothing to"), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(listed(&s, &[]).len(), 2, "nothing changed");
}

#[test]
fn a_failed_document_of_an_earlier_release_is_read_whole() {
    let s = Scratch::new();
    let legacy = serde_json::json!({
        "id": "old", "reason": "latest", "failed_at": "2026-11-20T00:00:01.000Z", "original": "2",
        "previous": [{"id": "old", "reason": "first", "failed_at": "2026-11-20T00:00:00.000Z", "original_base64": "/w=="}],
    });
    tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        use ledgerd::store::sqlite::{OpenMode, SqliteStore};
        use ledgerd::store::{Bucket, Store};
        let store = SqliteStore::open(&s.db(), "queue", "ledger", OpenMode::Existing).expect("open");
        store
            .insert(Bucket::Queue, "failed:old", legacy.to_string().as_bytes())
            .await
            .expect("insert");
    });
    let entries = listed(&s, &[]);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["original_base64"], "/w==");
    assert_eq!(entries[1]["original"], "2");
    assert_eq!(entries[1]["failed_at"], "2026-11-20T00:00:01.000Z");
    // A new rejection of the id keeps both and adds itself.
    reject(&s, "old", "3");
    assert_eq!(listed(&s, &[]).len(), 3);
}

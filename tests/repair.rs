//! Repairing a wallet, through the real binary. A worker commits action A,
//! credits wallet `a`, and dies before crediting `b`; then `b` is corrupted.
//! Writing audit's expected values back by hand drops `a`'s marker, and A,
//! resuming, credits `a` twice; `ledgerd adjust` keeps the markers, A
//! credits each wallet once, and the repaired ledger audits clean.

mod common;

use std::sync::Arc;

use common::{balances, json_lines, stderr, stdout, Scratch};
use ledgerd::protocol::{process_action, Options};
use ledgerd::store::faulty::{Fault, FaultyStore, OpKind};
use ledgerd::store::sqlite::{OpenMode, SqliteStore};
use ledgerd::store::{Bucket, Store, StoreError};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

fn store(s: &Scratch) -> SqliteStore {
    SqliteStore::open(&s.db(), "queue", "ledger", OpenMode::Existing).expect("open")
}

/// A runs until its write to `balance:b`, where its worker dies.
fn commit_and_die_before_b(s: &Scratch) {
    runtime().block_on(async {
        let dying = FaultyStore::with_plan(
            Arc::new(store(s)),
            Box::new(|_, kind, key| match (kind, key) {
                (OpKind::WriteWithXattrs, "balance:b") => {
                    Fault::FailBefore(StoreError::Permanent("the worker died".into()))
                }
                _ => Fault::Pass,
            }),
        );
        assert!(process_action(&dying, "A", &Options::default()).await.is_err());
    });
}

/// Writes a balance document whole, as by hand, dropping its markers.
fn write_by_hand(s: &Scratch, hash: &str, body: &str) {
    runtime().block_on(async {
        let store = store(s);
        let key = format!("balance:{hash}");
        let doc = store.get(Bucket::Ledger, &key).await.expect("wallet");
        store
            .replace(Bucket::Ledger, &key, body.as_bytes(), doc.cas)
            .await
            .expect("write");
    });
}

fn scenario() -> Scratch {
    let s = Scratch::new();
    s.run(
        &["enqueue"],
        r#"{"id":"A","doc":{"beneficiaries":{"a":"1.5","b":"1.5"}}}"#,
    );
    // `b` exists before A (say, from an earlier action) and gets corrupted.
    s.run(&["enqueue"], r#"{"id":"B0","doc":{"beneficiaries":{"b":"0.5"}}}"#);
    runtime().block_on(async {
        let store = store(&s);
        assert!(process_action(&store, "B0", &Options::default()).await.is_ok());
    });
    commit_and_die_before_b(&s);
    write_by_hand(&s, "b", "\"corrupt\"");
    let audit = s.run(&["audit"], "");
    assert_eq!(audit.status.code(), Some(1));
    assert!(
        stdout(&audit).contains("MISMATCH b: the balance document is invalid")
            && stdout(&audit).contains("expected 50000000 units"),
        "{}",
        stdout(&audit)
    );
    s
}

fn drain(s: &Scratch) {
    let out = s.run(&["run", "--exit-when-idle", "--metrics-addr", "off"], "");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_wallet_written_by_hand_is_credited_twice() {
    let s = scenario();
    // audit's expected values, written back whole.
    write_by_hand(&s, "a", "150000000");
    write_by_hand(&s, "b", "50000000");
    drain(&s);
    assert_eq!(balances(&s).get("a"), Some(&300_000_000), "the double credit");
}

#[test]
fn adjust_repairs_without_crediting_twice_and_the_ledger_audits_clean() {
    let s = scenario();
    let out = s.run(
        &[
            "adjust",
            "b",
            "--to",
            "50000000",
            "--reason",
            "restore the corrupted wallet",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let record = &json_lines(&out)[0];
    assert_eq!(record["hash"], "b");
    assert_eq!(
        (
            record["before"].is_null(),
            record["expected"].as_u64(),
            record["after"].as_u64()
        ),
        (true, Some(50_000_000), Some(50_000_000))
    );
    assert_eq!(record["state"], "applied");
    // Even writing `a` again with what audit expects keeps its marker.
    let out = s.run(
        &["adjust", "a", "--to", "150000000", "--reason", "as audit expects"],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));

    drain(&s);
    let b = balances(&s);
    assert_eq!(
        (b.get("a"), b.get("b")),
        (Some(&150_000_000), Some(&200_000_000)),
        "each credit once"
    );
    let audit = s.run(&["audit"], "");
    assert!(audit.status.success(), "{}", stdout(&audit));
    assert!(stdout(&audit).contains("0 mismatches"), "{}", stdout(&audit));

    // A deliberate change counts its amount; history shows it.
    let out = s.run(&["adjust", "a", "--by", "-25", "--reason", "refund a chargeback"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(balances(&s).get("a"), Some(&149_999_975));
    assert!(
        s.run(&["audit"], "").status.success(),
        "the adjustment explains the change"
    );
    let history = json_lines(&s.run(&["history", "a"], ""));
    assert!(
        history
            .iter()
            .any(|l| l["adjustment"]["reason"] == "refund a chargeback" && l["delta"] == "-25"),
        "{history:?}"
    );
    // The sweep prunes markers of completed actions and applied adjustments.
    assert!(s.run(&["sweep"], "").status.success());
    assert!(
        s.run(&["audit"], "").status.success(),
        "still explained after the sweep"
    );
}

#[test]
fn adjust_refuses_what_would_be_wrong_and_changes_nothing() {
    let s = scenario();
    let cases: &[&[&str]] = &[
        &["adjust", "a", "--by", "-150000001", "--reason", "too much"],
        &["adjust", "b", "--by", "+5", "--reason", "on an invalid wallet"],
        // A mistyped hash must not create a wallet.
        &["adjust", "nobody", "--by", "5", "--reason", "a typo"],
    ];
    for args in cases {
        let out = s.run(args, "");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("not adjusted"), "{}", stderr(&out));
    }
    for args in [
        &["adjust", "a", "--reason", "no change given"][..],
        &["adjust", "a", "--to", "5", "--reason", ""],
        &["adjust", "a", "--to", "5", "--by", "5", "--reason", "both"],
        // One sign or none.
        &["adjust", "a", "--by", "+-5", "--reason", "two signs"],
        &["adjust", "a", "--by", "--5", "--reason", "two signs"],
        &["adjust", "a", "--by", "+ 5", "--reason", "a space"],
        // Past the supply, or below zero: refused as --by's are, before
        // anything is read.
        &[
            "adjust",
            "a",
            "--to",
            "10000000000000000001",
            "--reason",
            "past the supply",
        ],
        &["adjust", "a", "--to", "-5", "--reason", "negative"],
    ] {
        assert_eq!(s.run(args, "").status.code(), Some(2), "{args:?}");
    }
    let a = stdout(&s.run(&["balance", "a"], ""));
    assert!(a.contains("(150000000 units)"), "unchanged: {a}");
    let nobody = stdout(&s.run(&["balance", "nobody"], ""));
    assert!(nobody.contains("no wallet"), "no wallet was created: {nobody}");
}

#[test]
fn an_adjustment_id_given_again_with_other_arguments_is_refused() {
    let s = scenario();
    let first = &["adjust", "a", "--by", "+5", "--reason", "bonus", "--id", "fix-1"];
    let out = s.run(first, "");
    assert!(out.status.success(), "{}", stderr(&out));
    let record = stdout(&out);
    // The same arguments again: the applied record, nothing applied twice.
    let again = s.run(first, "");
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again), record);
    for other in [
        &["adjust", "a", "--by", "+6", "--reason", "bonus", "--id", "fix-1"][..],
        &["adjust", "a", "--to", "5", "--reason", "bonus", "--id", "fix-1"],
        &["adjust", "a", "--by", "+5", "--reason", "another", "--id", "fix-1"],
    ] {
        let out = s.run(other, "");
        assert_eq!(out.status.code(), Some(1), "{other:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("adj:fix-1 exists with other arguments (by +5"), "{err}");
    }
    let a = stdout(&s.run(&["balance", "a"], ""));
    assert!(a.contains("(150000005 units)"), "applied once: {a}");
}

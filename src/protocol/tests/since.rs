//! `audit --since`: what changed since the last clean audit is checked,
//! and nothing else is read; a change outside ledgerd, a credit in flight
//! at the checkpoint, and an audit that died before its checkpoint are all
//! accounted for exactly.

use std::collections::BTreeSet;

use super::*;
use crate::commands::audit;
use crate::commands::Exit;
use crate::protocol::accounting::since::{read_checkpoint, CHECKPOINT_KEY};
use crate::protocol::accounting::WALLETS_PER_PASS;

/// Counts the records (`tx:`) and wallets (`balance:`) read, by key.
#[derive(Default)]
struct Reads {
    keys: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Hook for Reads {
    async fn before(&self, kind: OpKind, key: &str) -> Fault {
        if matches!(kind, OpKind::Get | OpKind::GetWithXattrs) {
            self.keys.lock().expect("reads").push(key.to_string());
        }
        Fault::Pass
    }
}

impl Reads {
    /// The distinct keys read under `prefix`.
    fn distinct(&self, prefix: &str) -> BTreeSet<String> {
        self.keys
            .lock()
            .expect("reads")
            .iter()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// `n` completed actions, action `i` crediting wallet `w<i>` 1 token.
async fn ledger_of(n: usize) -> World {
    let w = World::new();
    for i in 0..n {
        let id = format!("a{i:03}");
        w.enqueue(&id, &format!(r#"{{"beneficiaries":{{"w{i:03}":"1"}}}}"#))
            .await;
        assert!(matches!(w.process(&id).await, Ok(Outcome::Completed { .. })));
    }
    w
}

async fn full_with_checkpoint(store: &dyn Store) -> String {
    let mut out = Vec::new();
    let exit = audit::audit(store, WALLETS_PER_PASS, true, &mut out)
        .await
        .expect("audit");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(exit, Exit::Success, "{text}");
    assert!(text.contains("checkpoint "), "{text}");
    text
}

async fn since(store: &dyn Store) -> (Exit, String) {
    let mut out = Vec::new();
    let exit = audit::audit_since(store, None, &mut out).await.expect("audit since");
    (exit, String::from_utf8(out).expect("utf8"))
}

#[tokio::test]
async fn an_audit_since_reads_only_what_changed() {
    let w = ledger_of(40).await;
    full_with_checkpoint(&w.store).await;
    // Two actions after the checkpoint: one to an old wallet, one to a new.
    w.enqueue("b1", r#"{"beneficiaries":{"w005":"2","new":"3"}}"#).await;
    assert!(matches!(w.process("b1").await, Ok(Outcome::Completed { .. })));

    let counted = Hooked::new(arc(&w.store), Reads::default());
    let (exit, text) = since(&counted).await;
    assert_eq!(exit, Exit::Success, "{text}");
    assert!(text.contains("2 wallets changed"), "{text}");
    assert_eq!(
        counted.hook.distinct("balance:"),
        BTreeSet::from(["balance:new".to_string(), "balance:w005".to_string()]),
        "only the wallets that changed are read"
    );
    // The changed record, and (once, in this generation) the changed
    // wallets' own earlier records: never the other 39.
    assert_eq!(
        counted.hook.distinct("tx:"),
        BTreeSet::from(["tx:a005".to_string(), "tx:b1".to_string()]),
    );

    // The next audit since reads only what changed after this one: for a
    // wallet it settled, not even the wallet's earlier records.
    w.enqueue("b2", r#"{"beneficiaries":{"w005":"1"}}"#).await;
    assert!(matches!(w.process("b2").await, Ok(Outcome::Completed { .. })));
    let counted = Hooked::new(arc(&w.store), Reads::default());
    let (exit, text) = since(&counted).await;
    assert_eq!(exit, Exit::Success, "{text}");
    assert_eq!(
        counted.hook.distinct("tx:"),
        BTreeSet::from(["tx:b2".to_string()]),
        "{text}"
    );
    assert_eq!(
        counted.hook.distinct("balance:"),
        BTreeSet::from(["balance:w005".to_string()])
    );
    // Nothing changed: nothing is read.
    let counted = Hooked::new(arc(&w.store), Reads::default());
    let (exit, text) = since(&counted).await;
    assert_eq!(exit, Exit::Success, "{text}");
    assert!(text.contains("0 wallets changed"), "{text}");
    assert!(counted.hook.distinct("balance:").is_empty());
}

#[tokio::test]
async fn a_wallet_changed_outside_ledgerd_and_credited_since_is_a_mismatch() {
    let w = ledger_of(5).await;
    full_with_checkpoint(&w.store).await;
    let before = read_checkpoint(&w.store).await.expect("read").expect("taken");
    // One unit more, with no record, on a wallet credited since: found,
    // and the checkpoint stays.
    w.enqueue("b1", r#"{"beneficiaries":{"w002":"1"}}"#).await;
    assert!(matches!(w.process("b1").await, Ok(Outcome::Completed { .. })));
    w.set_balance("w002", "200000001").await;
    let (exit, text) = since(&w.store).await;
    assert_eq!(exit, Exit::Rejected, "{text}");
    assert!(
        text.contains("MISMATCH w002: balance 200000001 units, expected 200000000"),
        "{text}"
    );
    assert_eq!(read_checkpoint(&w.store).await.expect("read"), Some(before.clone()));
    // Found again until it is repaired.
    let (exit, _) = since(&w.store).await;
    assert_eq!(exit, Exit::Rejected);
    w.set_balance("w002", "200000000").await;
    let (exit, text) = since(&w.store).await;
    assert_eq!(exit, Exit::Success, "{text}");
    assert_ne!(read_checkpoint(&w.store).await.expect("read"), Some(before));
}

#[tokio::test]
async fn a_credit_applied_twice_since_the_checkpoint_is_a_mismatch() {
    let w = ledger_of(3).await;
    full_with_checkpoint(&w.store).await;
    w.enqueue("b1", r#"{"beneficiaries":{"w001":"2"}}"#).await;
    assert!(matches!(w.process("b1").await, Ok(Outcome::Completed { .. })));
    // The wallet takes b1's credit a second time.
    w.set_balance("w001", "500000000").await;
    let (exit, text) = since(&w.store).await;
    assert_eq!(exit, Exit::Rejected, "{text}");
    assert!(
        text.contains("MISMATCH w001: balance 500000000 units, expected 300000000"),
        "{text}"
    );
}

#[tokio::test]
async fn a_credit_in_flight_at_the_checkpoint_is_counted_once_when_it_completes() {
    let w = ledger_of(3).await;
    // Committed before the checkpoint, completed after it: its record's
    // last write is after the checkpoint, but it was listed as in flight.
    w.enqueue("late", r#"{"beneficiaries":{"w000":"5"}}"#).await;
    w.commit_queued(&["late".to_string()]).await;
    full_with_checkpoint(&w.store).await;
    let checkpoint = read_checkpoint(&w.store).await.expect("read").expect("taken");
    assert_eq!(checkpoint.pending, ["tx:late"]);
    w.lapse_locks();
    assert!(matches!(w.process("late").await, Ok(Outcome::Completed { .. })));
    let (exit, text) = since(&w.store).await;
    assert_eq!(exit, Exit::Success, "{text}");
    assert_eq!(w.balance("w000"), Some(600_000_000));
    // And settled: the next audit since has nothing left in flight.
    let checkpoint = read_checkpoint(&w.store).await.expect("read").expect("taken");
    assert!(checkpoint.pending.is_empty(), "{checkpoint:?}");
    let (exit, text) = since(&w.store).await;
    assert_eq!(exit, Exit::Success, "{text}");
}

#[tokio::test]
async fn an_audit_that_died_before_its_checkpoint_leaves_a_ledger_the_next_one_reads_right() {
    let w = ledger_of(3).await;
    full_with_checkpoint(&w.store).await;
    w.enqueue("b1", r#"{"beneficiaries":{"w001":"2","w002":"1"}}"#).await;
    assert!(matches!(w.process("b1").await, Ok(Outcome::Completed { .. })));
    // The audit writes the wallets' sums, then dies at the checkpoint.
    let dying = FaultyStore::with_plan(
        arc(&w.store),
        Box::new(|_, kind, key| match (kind, key) {
            (OpKind::Replace | OpKind::Insert, CHECKPOINT_KEY) => {
                Fault::FailBefore(StoreError::Permanent("died".into()))
            }
            _ => Fault::Pass,
        }),
    );
    let mut out = Vec::new();
    assert!(audit::audit_since(&dying, None, &mut out).await.is_err());
    w.enqueue("b2", r#"{"beneficiaries":{"w001":"1"}}"#).await;
    assert!(matches!(w.process("b2").await, Ok(Outcome::Completed { .. })));
    let (exit, text) = since(&w.store).await;
    assert_eq!(exit, Exit::Success, "{text}");
}

#[tokio::test]
async fn audit_since_needs_a_checkpoint_and_names_the_last() {
    let w = ledger_of(2).await;
    let mut out = Vec::new();
    let e = audit::audit_since(&w.store, None, &mut out)
        .await
        .expect_err("no checkpoint");
    assert!(e.to_string().contains("ledgerd audit --checkpoint"), "{e}");
    full_with_checkpoint(&w.store).await;
    let e = audit::audit_since(&w.store, Some(1), &mut out)
        .await
        .expect_err("not the last");
    assert!(e.to_string().contains("is not the last clean audit's"), "{e}");
}

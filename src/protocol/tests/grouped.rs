//! Steps 3 to 6 as one write group: taken when nothing makes it doubtful,
//! and finished through the steps one by one when a write of the group
//! fails part way.

use super::*;
use crate::store::WriteMode;

/// Before the group's write of `balance:<hash>` runs, writes that wallet
/// as another worker would (so the group's CAS no longer matches).
struct ForeignWriteFirst {
    inner: MemoryStore,
    hash: &'static str,
    done: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Hook for ForeignWriteFirst {
    async fn before(&self, kind: OpKind, key: &str) -> Fault {
        if kind == OpKind::WriteWithXattrs && key == balance_key(self.hash) && !self.done.swap(true, Ordering::SeqCst) {
            let doc = self.inner.get(Bucket::Ledger, key).await.expect("read the wallet");
            self.inner
                .write_with_xattrs(Bucket::Ledger, key, b"1000", &[], WriteMode::Replace(doc.cas))
                .await
                .expect("foreign write");
        }
        Fault::Pass
    }
}

#[tokio::test]
async fn a_wallet_written_under_the_group_is_credited_through_the_steps() {
    let w = World::new();
    w.set_balance("a", "7").await;
    w.set_balance("b", "9").await;
    w.enqueue("1", BODY).await;
    let store = Hooked::new(
        arc(&w.store),
        ForeignWriteFirst {
            inner: w.store.clone(),
            hash: "b",
            done: Default::default(),
        },
    );
    let outcome = process_action(&store, "1", &w.opts).await.expect("processes");
    // Every credit counted once, though one went in the group and one after.
    assert_eq!(
        outcome,
        Outcome::Completed {
            credits: 3,
            units: 179_000_001
        }
    );
    assert_eq!(w.balance("a"), Some(150_000_007));
    assert_eq!(
        w.balance("b"),
        Some(29_001_000),
        "the credit lands on the foreign write's balance"
    );
    assert_eq!(w.balance("c"), Some(1));
    assert!(!w.has(Bucket::Queue, &action_key("1")));
    assert_eq!(w.tx("1").expect("record").state, TxState::Completed);
}

/// Counts writes and the reads of records, by kind.
#[derive(Default)]
struct Kinds(std::sync::Mutex<Vec<(OpKind, String)>>);

#[async_trait::async_trait]
impl Hook for Kinds {
    fn after(&self, kind: OpKind, key: &str, _error: Option<&StoreError>) {
        self.0.lock().expect("lock").push((kind, key.to_string()));
    }
}

#[tokio::test]
async fn the_group_is_taken_only_while_no_other_credit_to_its_wallets_is_on_its_way() {
    let w = World::new();
    w.enqueue("1", BODY).await;
    let store = Hooked::new(arc(&w.store), Kinds::default());
    // Another credit of this process to "b" is on its way: its slot is led.
    let busy = w.opts.coalescer.lead_idle(&["b"]).expect("idle at first");
    assert!(
        w.opts.coalescer.lead_idle(&["a", "b"]).is_none(),
        "a led slot is not idle"
    );
    let processing = process_action(&store, "1", &w.opts);
    tokio::pin!(processing);
    // The action does not write "b" past the credit on its way: it commits
    // its record alone (no group) and waits for the wallet's lead.
    assert!(futures::poll!(processing.as_mut()).is_pending());
    let wrote_b = |ops: &[(OpKind, String)]| {
        ops.iter()
            .any(|(k, key)| *k == OpKind::WriteWithXattrs && *key == balance_key("b"))
    };
    assert!(!wrote_b(&store.hook.0.lock().expect("lock")), "wrote a led wallet");
    drop(busy);
    let outcome = processing.await.expect("processes");
    assert!(matches!(outcome, Outcome::Completed { credits: 3, .. }), "{outcome:?}");
    assert!(wrote_b(&store.hook.0.lock().expect("lock")));
    assert_eq!(w.balance("b"), Some(29_000_000));
}

/// Notes, when the record's completion reaches the hook, whether the
/// action is already gone: a group is shown to a watching hook only after
/// the store ran all of it, a single write as soon as it ran.
struct CompletionSeesRemoval {
    store: MemoryStore,
    id: String,
    seen: std::sync::Mutex<Option<bool>>,
}

#[async_trait::async_trait]
impl Hook for CompletionSeesRemoval {
    fn after(&self, kind: OpKind, key: &str, _error: Option<&StoreError>) {
        if kind == OpKind::Replace && key == tx_key(&self.id) {
            let gone = self.store.peek(Bucket::Queue, &action_key(&self.id)).is_none();
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(gone);
        }
    }
    fn watches_only(&self) -> bool {
        true
    }
}

/// An action resumed from its committed record (so not through the whole
/// write group) still hands steps 5 and 6 to the store as one group: the
/// completion and the removal commit together on a transactional store.
#[tokio::test]
async fn a_resumed_action_completes_and_is_removed_in_one_group() {
    let w = World::new();
    w.enqueue("r", BODY).await;
    w.commit_queued(&["r".to_string()]).await;
    let store = Hooked::new(
        arc(&w.store),
        CompletionSeesRemoval {
            store: w.store.clone(),
            id: "r".into(),
            seen: std::sync::Mutex::new(None),
        },
    );
    let outcome = process_action(&store, "r", &w.opts).await;
    assert!(matches!(outcome, Ok(Outcome::Completed { .. })), "{outcome:?}");
    assert_eq!(w.tx("r").map(|t| t.state), Some(TxState::Completed));
    assert!(!w.has(Bucket::Queue, &action_key("r")));
    assert_eq!(
        *store.hook.seen.lock().unwrap_or_else(|p| p.into_inner()),
        Some(true),
        "the completion was written alone, not in a group with the removal"
    );
}

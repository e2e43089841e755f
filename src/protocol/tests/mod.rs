use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::records::{TxRecord, TxState};
use super::*;
use crate::domain::keys::{balance_key, tx_key, MARKERS_XATTR};
use crate::store::faulty::{Fault, FaultyStore, OpKind};
use crate::store::hooked::{Hook, Hooked};
use crate::store::memory::{Clock, MemoryStore};

mod accounting;
mod failed;
mod grouped;
mod hot;
mod since;
mod steps;

const BODY: &str = r#"{"beneficiaries":[{"a":"1.5"},{"b":0.29},{"c":"0.00000001"}]}"#;
const SPLIT: &str = r#"{"reward":"1","beneficiaries":{"a":33.33333333,"b":33.33333333,"c":33.33333334}}"#;

struct World {
    store: MemoryStore,
    clock: Arc<AtomicU64>,
    /// One worker process's options (its set of completed actions).
    opts: Options,
}

impl World {
    fn new() -> Self {
        let (clock, handle) = Clock::manual();
        Self {
            store: MemoryStore::with_clock(clock),
            clock: handle,
            opts: Options::default(),
        }
    }

    async fn enqueue(&self, id: &str, body: &str) {
        self.store
            .insert(Bucket::Queue, &action_key(id), body.as_bytes())
            .await
            .expect("enqueue");
    }

    /// Inserts each queued action's record, committed, as a worker that
    /// stopped right after its commit point would have left it.
    async fn commit_queued(&self, ids: &[String]) {
        for id in ids {
            let body = self.store.peek(Bucket::Queue, &action_key(id)).expect("queued");
            let plan = crate::domain::plan_action(&body).expect("plan");
            self.store
                .insert(Bucket::Ledger, &tx_key(id), &TxRecord::committed(id, &plan).to_bytes())
                .await
                .expect("commit");
        }
    }

    async fn set_balance(&self, hash: &str, body: &str) {
        let key = balance_key(hash);
        let _ = self.store.remove(Bucket::Ledger, &key, None).await;
        self.store
            .insert(Bucket::Ledger, &key, body.as_bytes())
            .await
            .expect("set balance");
    }

    fn balance(&self, hash: &str) -> Option<u64> {
        self.store
            .snapshot(Bucket::Ledger)
            .into_iter()
            .find(|(k, _)| *k == balance_key(hash))
            .map(|(_, body)| String::from_utf8(body).expect("utf8").parse().expect("integer"))
    }

    fn has(&self, bucket: Bucket, key: &str) -> bool {
        self.store.snapshot(bucket).iter().any(|(k, _)| k == key)
    }

    fn tx(&self, id: &str) -> Option<TxRecord> {
        let (_, body) = self
            .store
            .snapshot(Bucket::Ledger)
            .into_iter()
            .find(|(k, _)| *k == tx_key(id))?;
        Some(TxRecord::parse(id, &body).expect("valid record"))
    }

    fn markers(&self) -> usize {
        self.store
            .snapshot(Bucket::Ledger)
            .iter()
            .filter_map(|(k, _)| self.store.xattrs(Bucket::Ledger, k))
            .map(|x| {
                x.pointer("/ledger/applied")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len())
            })
            .sum()
    }

    /// Lets every lock lapse.
    fn lapse_locks(&self) {
        self.clock.fetch_add(60_000, Ordering::SeqCst);
    }

    async fn process(&self, id: &str) -> Result<Outcome> {
        process_action(&self.store, id, &self.opts).await
    }
}

fn arc(store: &MemoryStore) -> Arc<dyn Store> {
    Arc::new(store.clone())
}

#[tokio::test]
async fn credits_exactly_and_removes_the_action_last() {
    let w = World::new();
    w.set_balance("a", "100").await;
    w.enqueue("1", BODY).await;
    let outcome = w.process("1").await.expect("processes");
    assert_eq!(
        outcome,
        Outcome::Completed {
            credits: 3,
            units: 179_000_001
        }
    );
    assert_eq!(w.balance("a"), Some(150_000_100));
    assert_eq!(w.balance("b"), Some(29_000_000));
    assert_eq!(w.balance("c"), Some(1));
    assert!(!w.has(Bucket::Queue, &action_key("1")));
    assert_eq!(w.tx("1").expect("record").state, TxState::Completed);
    // Its markers stay until each wallet's next write (no extra writes)...
    assert_eq!(w.markers(), 3);
    // ...which removes them in the same atomic write that adds its own.
    w.enqueue("2", BODY).await;
    w.process("2").await.expect("processes");
    assert_eq!(w.markers(), 3, "only the second action's markers remain");
    sweep_markers(&w.store).await.expect("sweep");
    assert_eq!(w.markers(), 0, "the sweep prunes markers of completed actions");
}

#[tokio::test]
async fn split_mode_credits_sum_to_the_reward() {
    let w = World::new();
    w.enqueue("s", SPLIT).await;
    w.process("s").await.expect("processes");
    let total: u64 = ["a", "b", "c"].iter().map(|h| w.balance(h).expect("credited")).sum();
    assert_eq!(total, 100_000_000);
}

/// Counts the store operations of one undisturbed run.
async fn ops_of_a_clean_run(body: &str) -> u64 {
    let w = World::new();
    w.set_balance("a", "7").await;
    w.enqueue("1", body).await;
    let counting = FaultyStore::with_plan(arc(&w.store), Box::new(|_, _, _| Fault::Pass));
    process_action(&counting, "1", &Options::default())
        .await
        .expect("processes");
    counting.ops()
}

/// Whatever a crashed worker left, a fresh worker finishes with exact results.
async fn recovers_from(w: &World, id: &str, expected: &[(&str, u64)]) {
    w.lapse_locks();
    let outcome = w.process(id).await.expect("recovery processes");
    assert!(
        matches!(
            outcome,
            Outcome::Completed { .. } | Outcome::Duplicate | Outcome::Skipped(Skip::Gone)
        ),
        "{outcome:?}"
    );
    for (hash, units) in expected {
        assert_eq!(w.balance(hash), Some(*units), "wallet {hash}");
    }
    assert!(!w.has(Bucket::Queue, &action_key(id)), "action removed");
    // A record left committed beside the action's removal (steps 5 and 6
    // go side by side) is completed by the sweep, from its markers.
    sweep_markers(&w.store).await.expect("sweep");
    assert_eq!(w.tx(id).expect("record").state, TxState::Completed);
    assert_eq!(w.markers(), 0);
}

#[tokio::test]
async fn a_crash_before_any_operation_is_recovered_exactly() {
    let expected = [("a", 150_000_007), ("b", 29_000_000), ("c", 1)];
    let total = ops_of_a_clean_run(BODY).await;
    // claim, 3 wallet reads, insert tx, 3 wallet writes, complete, remove:
    // 2N + 4 for N credits, as docs/protocol.md documents (the record is
    // not read: the insert says whether it exists).
    assert_eq!(total, 2 * 3 + 4, "the happy path's store operations");
    for crash_at in 0..=total {
        let w = World::new();
        w.set_balance("a", "7").await;
        w.enqueue("1", BODY).await;
        let dying = FaultyStore::crash_after(arc(&w.store), crash_at);
        let _ = process_action(&dying, "1", &Options::default()).await;
        recovers_from(&w, "1", &expected).await;
    }
}

#[tokio::test]
async fn an_ambiguous_failure_after_any_operation_is_recovered_exactly() {
    let expected = [("a", 150_000_007), ("b", 29_000_000), ("c", 1)];
    let total = ops_of_a_clean_run(BODY).await;
    for fail_at in 0..total {
        let w = World::new();
        w.set_balance("a", "7").await;
        w.enqueue("1", BODY).await;
        // The operation runs, then reports an ambiguous error; the worker
        // carries on, then a second worker also runs.
        let store = FaultyStore::with_plan(
            arc(&w.store),
            Box::new(move |seq, kind, _| {
                if seq == fail_at && kind.is_write() {
                    Fault::FailAfter(StoreError::Ambiguous("injected timeout".into()))
                } else if seq == fail_at {
                    Fault::FailBefore(StoreError::Transient("injected".into()))
                } else {
                    Fault::Pass
                }
            }),
        );
        let _ = process_action(&store, "1", &Options::default()).await;
        recovers_from(&w, "1", &expected).await;
    }
}

#[tokio::test]
async fn two_workers_racing_on_every_step_credit_once() {
    // Worker 1 stops dead after k operations while holding its lock; the
    // lock lapses; worker 2 runs to the end; then worker 1's twin resumes
    // from the same point with stale reads: nothing may be credited twice.
    let expected = [("a", 150_000_007), ("b", 29_000_000), ("c", 1)];
    let total = ops_of_a_clean_run(BODY).await;
    for k in 0..total {
        let w = World::new();
        w.set_balance("a", "7").await;
        w.enqueue("1", BODY).await;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let pause = Pause {
            pause_at: k,
            seq: AtomicU64::new(0),
            gate: gate.clone(),
        };
        let slow = Arc::new(Hooked::new(arc(&w.store), pause));
        let slow_task = {
            let slow = slow.clone();
            tokio::spawn(async move { process_action(slow.as_ref(), "1", &Options::default()).await })
        };
        // Let worker 1 reach its pause point.
        while slow.hook.seq.load(Ordering::SeqCst) < k && !slow_task.is_finished() {
            tokio::task::yield_now().await;
        }
        w.lapse_locks();
        let _ = w.process("1").await.expect("worker 2");
        // Its markers may go at any time now (a later write, the janitor,
        // the sweep): take them before the stale worker resumes.
        sweep_markers(&w.store).await.expect("sweep");
        gate.add_permits(1_000);
        let _ = slow_task.await.expect("worker 1 joins");
        recovers_from(&w, "1", &expected).await;
    }
}

/// A hook that blocks operation `pause_at` until the gate opens.
struct Pause {
    pause_at: u64,
    seq: AtomicU64,
    gate: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl Hook for Pause {
    async fn before(&self, _kind: OpKind, _key: &str) -> Fault {
        if self.seq.fetch_add(1, Ordering::SeqCst) == self.pause_at {
            let _ = self.gate.acquire().await;
        }
        Fault::Pass
    }
}

#[tokio::test]
async fn a_duplicate_delivery_credits_nothing_more() {
    let w = World::new();
    w.enqueue("1", BODY).await;
    w.process("1").await.expect("first");
    w.enqueue("1", BODY).await;
    assert_eq!(w.process("1").await.expect("again"), Outcome::Duplicate);
    assert_eq!(w.balance("a"), Some(150_000_000));
    assert!(!w.has(Bucket::Queue, &action_key("1")));

    // The same id with another body is preserved as a conflicting duplicate.
    w.enqueue("1", SPLIT).await;
    let outcome = w.process("1").await.expect("conflict");
    assert!(
        matches!(&outcome, Outcome::Failed { reason } if reason.starts_with("conflicting duplicate")),
        "{outcome:?}"
    );
    assert_eq!(w.balance("a"), Some(150_000_000));
    let failed = w.store.get(Bucket::Queue, &failed_key("1")).await.expect("failed doc");
    let doc: Value = serde_json::from_slice(&failed.body).expect("json");
    assert_eq!(doc["entries"][0]["original"], SPLIT);
    assert_eq!(doc["entries"][0]["kind"], "conflicting duplicate");
}

#[tokio::test]
async fn invalid_actions_are_preserved_with_their_bytes_and_reason() {
    let w = World::new();
    w.enqueue("bad", r#"{"beneficiaries":{"a":0.000000001}}"#).await;
    w.store
        .insert(Bucket::Queue, &action_key("bin"), b"\xff\xfe")
        .await
        .expect("insert");
    let outcome = w.process("bad").await.expect("processes");
    assert_eq!(
        outcome,
        Outcome::Failed {
            reason: "beneficiary \"a\": share 0.000000001 has more than 8 decimal places".into()
        }
    );
    assert!(matches!(
        w.process("bin").await.expect("processes"),
        Outcome::Failed { .. }
    ));
    assert!(!w.has(Bucket::Queue, &action_key("bad")));
    let doc: Value = serde_json::from_slice(&w.store.get(Bucket::Queue, &failed_key("bad")).await.expect("kept").body)
        .expect("json");
    assert_eq!(doc["entries"][0]["original"], r#"{"beneficiaries":{"a":0.000000001}}"#);
    assert_eq!(doc["entries"][0]["kind"], "share has more than 8 decimal places");
    let doc: Value = serde_json::from_slice(&w.store.get(Bucket::Queue, &failed_key("bin")).await.expect("kept").body)
        .expect("json");
    assert_eq!(doc["entries"][0]["original_base64"], "//4=");
    assert!(w.tx("bad").is_none(), "nothing committed");
}

#[tokio::test]
async fn a_corrupt_wallet_blocks_only_its_action() {
    let w = World::new();
    w.set_balance("b", "\"twelve\"").await;
    w.enqueue("1", BODY).await;
    w.enqueue("2", r#"{"beneficiaries":{"z":1}}"#).await;
    let outcome = w.process("1").await.expect("processes");
    assert!(
        matches!(&outcome, Outcome::Blocked { reason } if reason.contains("balance:b")),
        "{outcome:?}"
    );
    assert!(w.has(Bucket::Queue, &action_key("1")), "kept in the queue");
    assert_eq!(w.balance("a"), None, "nothing credited before the commit point");
    assert!(matches!(
        w.process("2").await.expect("other"),
        Outcome::Completed { .. }
    ));
    // Held until its retry time, against every replica: another worker
    // (its own options) finds it locked, even after the fix.
    w.set_balance("b", "5").await;
    let other = Options::default();
    assert!(
        matches!(
            process_action(&w.store, "1", &other).await,
            Ok(Outcome::Skipped(Skip::Busy))
        ),
        "a blocked action is tried by no replica before its retry time"
    );
    let census = w
        .store
        .census(Bucket::Queue, "action:", BLOCKED_XATTR, None)
        .await
        .expect("census");
    assert_eq!(
        (census.locked, census.marked),
        (Some(0), Some(1)),
        "counted blocked, not locked"
    );
    // The hold is the retry delay: one attempt's, at most 1 s.
    w.clock.fetch_add(1_000, Ordering::SeqCst);
    assert!(matches!(
        process_action(&w.store, "1", &other).await.expect("retry"),
        Outcome::Completed { .. }
    ));
    assert_eq!(w.balance("b"), Some(29_000_005));
}

#[tokio::test]
async fn a_wallet_corrupted_after_the_commit_point_blocks_until_fixed() {
    let w = World::new();
    w.set_balance("c", "10").await;
    w.enqueue("1", BODY).await;
    // Commit, then stop before any wallet write.
    let crash = FaultyStore::with_plan(
        arc(&w.store),
        Box::new(|_, kind, _| {
            if kind == OpKind::WriteWithXattrs {
                Fault::FailBefore(StoreError::Permanent("crash".into()))
            } else {
                Fault::Pass
            }
        }),
    );
    let _ = process_action(&crash, "1", &Options::default()).await;
    assert_eq!(w.tx("1").expect("committed").state, TxState::Committed);
    w.set_balance("c", "-3").await;
    w.lapse_locks();
    assert!(matches!(
        w.process("1").await.expect("blocked"),
        Outcome::Blocked { .. }
    ));
    assert_eq!(w.tx("1").expect("still committed").state, TxState::Committed);
    // A sweep completes a committed record only when every credit carries
    // its marker: here `c` does not, and the record stays committed.
    crate::protocol::sweep_markers(&w.store).await.expect("sweep");
    assert_eq!(w.tx("1").expect("still committed").state, TxState::Committed);
    w.set_balance("c", "3").await;
    // Held until its retry time.
    w.lapse_locks();
    assert!(matches!(
        w.process("1").await.expect("resumes"),
        Outcome::Completed { .. }
    ));
    assert_eq!(
        (w.balance("a"), w.balance("b"), w.balance("c")),
        (Some(150_000_000), Some(29_000_000), Some(4))
    );
}

#[tokio::test]
async fn a_locked_action_is_skipped() {
    let w = World::new();
    w.enqueue("1", BODY).await;
    let held = w
        .store
        .get_and_lock(Bucket::Queue, &action_key("1"), Duration::from_secs(10))
        .await
        .expect("lock");
    assert_eq!(w.process("1").await, Ok(Outcome::Skipped(Skip::Busy)));
    assert_eq!(w.process("nope").await, Ok(Outcome::Skipped(Skip::Gone)));
    w.store
        .unlock(Bucket::Queue, &action_key("1"), held.cas)
        .await
        .expect("unlock");
    assert!(matches!(
        w.process("1").await.expect("processes"),
        Outcome::Completed { .. }
    ));
}

#[tokio::test]
async fn a_wallet_at_the_supply_is_not_overflowed() {
    let w = World::new();
    w.set_balance("a", "9999999999999999999").await;
    w.enqueue("1", r#"{"beneficiaries":{"a":"0.00000001"}}"#).await;
    assert!(matches!(w.process("1").await.expect("fits"), Outcome::Completed { .. }));
    assert_eq!(w.balance("a"), Some(10_000_000_000_000_000_000));
    w.enqueue("2", r#"{"beneficiaries":{"a":"0.00000001"}}"#).await;
    let outcome = w.process("2").await.expect("processes");
    assert!(
        matches!(&outcome, Outcome::Blocked { reason } if reason.contains("total supply")),
        "{outcome:?}"
    );
    assert_eq!(w.balance("a"), Some(10_000_000_000_000_000_000));
    let _ = MARKERS_XATTR;
}

/// Counts writes of one wallet and makes every operation take a moment, so
/// that concurrent actions overlap as they would against a real store.
struct SlowCounting {
    key: String,
    writes: AtomicU64,
}

#[async_trait::async_trait]
impl Hook for SlowCounting {
    async fn before(&self, kind: OpKind, key: &str) -> Fault {
        if kind == OpKind::WriteWithXattrs && key == self.key {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        Fault::Pass
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_credits_to_one_wallet_are_coalesced_into_fewer_writes() {
    const ACTIONS: u64 = 24;
    let w = World::new();
    w.set_balance("hot", "5").await;
    for i in 0..ACTIONS {
        w.enqueue(
            &i.to_string(),
            &format!(r#"{{"beneficiaries":{{"hot":"1","u{i}":"0.5"}}}}"#),
        )
        .await;
    }
    let hook = SlowCounting {
        key: balance_key("hot"),
        writes: AtomicU64::new(0),
    };
    let store = Hooked::new(arc(&w.store), hook);
    let opts = Options::default();
    let ids: Vec<String> = (0..ACTIONS).map(|i| i.to_string()).collect();
    let outcomes = futures::future::join_all(ids.iter().map(|id| process_action(&store, id, &opts))).await;
    for outcome in outcomes {
        assert!(
            matches!(outcome, Ok(Outcome::Completed { credits: 2, .. })),
            "{outcome:?}"
        );
    }
    assert_eq!(w.balance("hot"), Some(5 + ACTIONS * 100_000_000));
    for i in 0..ACTIONS {
        assert_eq!(w.balance(&format!("u{i}")), Some(50_000_000), "wallet u{i}");
    }
    let writes = store.hook.writes.load(Ordering::SeqCst);
    assert!(
        writes < ACTIONS / 2,
        "{writes} writes of the hot wallet for {ACTIONS} actions: not coalesced"
    );
    sweep_markers(&w.store).await.expect("sweep");
    assert_eq!(w.markers(), 0);
}

#[tokio::test]
async fn a_state_seen_before_a_foreign_write_proves_nothing_after_it() {
    use super::coalesce::{CreditRequest, Credited};
    use super::wallet::{self, State};
    use crate::domain::MarkerName;

    let w = World::new();
    w.set_balance("a", "100").await;
    let request = |action: &str, units: u64, seen: Option<State>| CreditRequest {
        action: action.to_string(),
        marker: MarkerName::of_action(action),
        hash: "a".to_string(),
        units: crate::domain::Units::new(units).expect("units"),
        seen,
    };
    let commit = |id: &'static str, body: &'static str| {
        let store = w.store.clone();
        async move {
            let plan = crate::domain::plan_action(body.as_bytes()).expect("plan");
            let tx = TxRecord::committed(id, &plan);
            store
                .insert(Bucket::Ledger, &tx_key(id), &tx.to_bytes())
                .await
                .expect("commit")
        }
    };
    // Process P observes the wallet, then actions A and B commit.
    let seen = wallet::read(&w.store, "a").await.expect("read");
    commit("A", r#"{"beneficiaries":{"a":"0.00000002"}}"#).await;
    let b_cas = commit("B", r#"{"beneficiaries":{"a":"0.00000001"}}"#).await;
    // P credits A from its observation: its own write, in its lineage.
    let p = Options::default();
    let done = p
        .coalescer
        .credit(&w.store, request("A", 2, Some(seen.clone())), p.rules())
        .await;
    assert!(matches!(done, Ok(Credited::Done { .. })), "{done:?}");
    // Process Q applies B, completes it and prunes its marker.
    let q = Options::default();
    let done = q.coalescer.credit(&w.store, request("B", 1, None), q.rules()).await;
    assert!(matches!(done, Ok(Credited::Done { .. })), "{done:?}");
    let mut tx = w.tx("B").expect("record");
    tx.state = TxState::Completed;
    w.store
        .replace(Bucket::Ledger, &tx_key("B"), &tx.to_bytes(), b_cas)
        .await
        .expect("complete");
    assert_eq!(
        w.store
            .remove_xattr(Bucket::Ledger, &balance_key("a"), &MarkerName::of_action("B").path())
            .await,
        Ok(true)
    );
    assert_eq!(w.balance("a"), Some(103));
    // P, stale, now credits B from its old observation: its cached state and
    // its lineage no longer describe the wallet, and B must not be credited.
    let again = p
        .coalescer
        .credit(&w.store, request("B", 1, Some(seen)), p.rules())
        .await;
    assert!(matches!(again, Ok(Credited::CompletedElsewhere)), "{again:?}");
    assert_eq!(w.balance("a"), Some(103));
}

/// Makes the first wallet write stall for `stall_s` seconds, moving the
/// store's clock along with the runtime's.
struct StallingWrite {
    clock: Arc<AtomicU64>,
    stall_s: u64,
    stalled: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Hook for StallingWrite {
    async fn before(&self, kind: OpKind, _key: &str) -> Fault {
        if kind == OpKind::WriteWithXattrs && !self.stalled.swap(true, Ordering::SeqCst) {
            for _ in 0..self.stall_s {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                self.clock.fetch_add(1_000, Ordering::SeqCst);
            }
        }
        Fault::Pass
    }
}

#[tokio::test(start_paused = true)]
async fn a_claim_is_renewed_while_its_action_is_slow() {
    let w = World::new();
    w.enqueue("slow", BODY).await;
    let lease = std::time::Duration::from_secs(3);
    let slow = Hooked::new(
        arc(&w.store),
        StallingWrite {
            clock: w.clock.clone(),
            stall_s: 10,
            stalled: std::sync::atomic::AtomicBool::new(false),
        },
    );
    let slow_opts = Options {
        lease,
        ..Options::default()
    };
    // Another process tries the action every second while the first one is
    // stuck for more than three leases: the lock must hold throughout.
    let other = async {
        let opts = Options {
            lease,
            ..Options::default()
        };
        let mut seen = Vec::new();
        for _ in 0..9 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            seen.push(process_action(&w.store, "slow", &opts).await);
        }
        seen
    };
    let (first, seen) = tokio::join!(process_action(&slow, "slow", &slow_opts), other);
    assert!(matches!(first, Ok(Outcome::Completed { credits: 3, .. })), "{first:?}");
    for attempt in seen {
        assert_eq!(attempt, Ok(Outcome::Skipped(Skip::Busy)));
    }
    assert_eq!(w.balance("a"), Some(150_000_000));
    assert!(!w.has(Bucket::Queue, &action_key("slow")));
}

/// Every xattr path ledgerd sends is under one xattr key, so it never
/// depends on several keys in one sub-document call (which older servers
/// refused; see docs/couchbase.md).
#[test]
fn every_xattr_path_is_under_one_key() {
    let key = |path: &str| path.split('.').next().map(str::to_string);
    let marker = crate::domain::MarkerName::of_action("any-action").path();
    let paths = [MARKERS_XATTR, BLOCKED_XATTR, marker.as_str()];
    assert!(paths.iter().all(|p| key(p) == Some("ledger".into())), "{paths:?}");
}

/// Makes the marker of `action` on wallet `hash` look written `age_ms` ago
/// (the worker checks another process's marker once it is a minute old).
async fn age_marker(w: &World, hash: &str, action: &str, age_ms: u64) {
    let name = crate::domain::MarkerName::of_action(action);
    let path = format!("ledger.applied.{name}");
    let mut marker = w
        .store
        .xattrs(Bucket::Ledger, &crate::domain::keys::balance_key(hash))
        .and_then(|x| x.pointer(&format!("/ledger/applied/{name}")).cloned())
        .expect("the marker");
    marker["at_ms"] = serde_json::json!(crate::protocol::records::now_ms().saturating_sub(age_ms));
    w.store
        .set_xattr(
            Bucket::Ledger,
            &crate::domain::keys::balance_key(hash),
            &path,
            &marker,
            None,
        )
        .await
        .expect("age the marker");
}

#[tokio::test]
async fn another_process_s_old_markers_go_in_the_credit_s_own_write() {
    let w = World::new();
    // Another process credited `a` twice: one action it finished, one it
    // died on before completing (its record still committed).
    let other = Options::default();
    w.enqueue("done-elsewhere", r#"{"beneficiaries":{"a":"1"}}"#).await;
    assert!(matches!(
        process_action(&w.store, "done-elsewhere", &other).await,
        Ok(Outcome::Completed { .. })
    ));
    w.enqueue("in-flight", r#"{"beneficiaries":{"a":"2"}}"#).await;
    let dying = FaultyStore::with_plan(
        arc(&w.store),
        Box::new(|_, kind, key| match kind {
            OpKind::Replace | OpKind::Remove if key.ends_with("in-flight") => {
                Fault::FailBefore(StoreError::Permanent("died".into()))
            }
            _ => Fault::Pass,
        }),
    );
    // (A third process: the first would prune its own completed marker.)
    let _ = process_action(&dying, "in-flight", &Options::default()).await;
    assert_eq!(w.tx("in-flight").expect("record").state, TxState::Committed);
    for action in ["done-elsewhere", "in-flight"] {
        age_marker(&w, "a", action, 120_000).await;
    }
    // This process credits `a`: the old marker of the completed action goes
    // in that very write; the in-flight one stays; no write of its own.
    let kinds = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = kinds.clone();
    let watched = FaultyStore::with_plan(
        arc(&w.store),
        Box::new(move |_, kind, _| {
            seen.lock().expect("kinds").push(kind);
            Fault::Pass
        }),
    );
    w.enqueue("here", r#"{"beneficiaries":{"a":"3"}}"#).await;
    assert!(matches!(
        process_action(&watched, "here", &w.opts).await,
        Ok(Outcome::Completed { .. })
    ));
    let markers = |w: &World| {
        let xattrs = w.store.xattrs(Bucket::Ledger, &crate::domain::keys::balance_key("a"));
        crate::domain::Markers::from_xattr(xattrs.and_then(|x| x.pointer("/ledger/applied").cloned())).actions()
    };
    assert_eq!(markers(&w), ["here", "in-flight"]);
    let kinds = kinds.lock().expect("kinds").clone();
    assert!(
        !kinds.contains(&OpKind::RemoveXattr),
        "no marker removed by a write of its own: {kinds:?}"
    );
    assert_eq!(w.balance("a"), Some(600_000_000));
}

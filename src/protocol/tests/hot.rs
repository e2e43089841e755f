//! A hot wallet under Couchbase's limits: batches larger than one write go
//! in turns (a batch's markers go whole, in one spec, up to
//! `WHOLE_WRITE_CREDITS_MAX` credits a write), a conflict between turns is
//! recovered exactly, and markers stay bounded when several processes share
//! the wallet.

use super::*;
use crate::domain::{Marker, MarkerName};
use futures::StreamExt;

/// `count` actions `<prefix><i>`, each crediting 1 token to `hot` and 0.5 to
/// a wallet of its own.
async fn enqueue_hot(w: &World, prefix: &str, count: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        let id = format!("{prefix}{i}");
        let body = format!(r#"{{"beneficiaries":{{"hot":"1","u{prefix}{i}":"0.5"}}}}"#);
        w.enqueue(&id, &body).await;
        ids.push(id);
    }
    ids
}

/// Once a full turn of credits is on `hot` and some are still missing,
/// another process finishes the missing ones before the next write (as a
/// worker that took over after a lapsed lease would): the batch's next turn
/// then conflicts. Every operation takes a moment, so that the actions
/// overlap and their credits meet in one batch.
struct TakeoverBetweenTurns {
    store: MemoryStore,
    actions: Vec<String>,
    writes: AtomicU64,
    taken_over: AtomicU64,
}

#[async_trait::async_trait]
impl Hook for TakeoverBetweenTurns {
    async fn before(&self, kind: OpKind, key: &str) -> Fault {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        if kind != OpKind::WriteWithXattrs || key != balance_key("hot") {
            return Fault::Pass;
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.taken_over.load(Ordering::SeqCst) > 0 || self.marked().await < WHOLE_WRITE_CREDITS_MAX {
            return Fault::Pass;
        }
        // At most 15 markers per write, as the store demands.
        loop {
            let doc = self
                .store
                .get_with_xattrs(Bucket::Ledger, &balance_key("hot"), &[MARKERS_XATTR])
                .await
                .expect("read hot");
            let markers = doc.xattrs[0].clone().unwrap_or_default();
            // As a worker would: no marker while the record is still
            // committed means not applied (a completed action's marker may
            // have been pruned).
            let mut missing: Vec<&String> = Vec::new();
            for id in &self.actions {
                if missing.len() == 15 || markers.get(MarkerName::of_action(id).as_str()).is_some() {
                    continue;
                }
                let record = crate::protocol::read_tx(&self.store, id)
                    .await
                    .expect("read the record");
                if record.is_some_and(|(tx, _)| tx.state == crate::protocol::records::TxState::Committed) {
                    missing.push(id);
                }
            }
            if missing.is_empty() {
                return Fault::Pass;
            }
            let balance: u64 = String::from_utf8_lossy(&doc.body).parse().expect("balance");
            let paths: Vec<String> = missing.iter().map(|id| MarkerName::of_action(id).path()).collect();
            let units = crate::domain::Units::new(100_000_000).expect("units");
            let changes: Vec<(&str, Option<Value>)> = paths
                .iter()
                .zip(&missing)
                .map(|(p, id)| (p.as_str(), Marker::credit(id, units, 0).to_value()))
                .collect();
            let body = (balance + 100_000_000 * missing.len() as u64).to_string();
            self.store
                .write_with_xattrs(
                    Bucket::Ledger,
                    &balance_key("hot"),
                    body.as_bytes(),
                    &changes,
                    crate::store::WriteMode::Replace(doc.cas),
                )
                .await
                .expect("the other process's write");
            self.taken_over.fetch_add(missing.len() as u64, Ordering::SeqCst);
        }
    }
}

impl TakeoverBetweenTurns {
    /// How many of the listed actions have their marker on `hot`.
    async fn marked(&self) -> usize {
        let doc = self
            .store
            .get_with_xattrs(Bucket::Ledger, &balance_key("hot"), &[MARKERS_XATTR])
            .await;
        let markers = doc.ok().and_then(|d| d.xattrs[0].clone()).unwrap_or_default();
        self.actions
            .iter()
            .filter(|id| markers.get(MarkerName::of_action(id).as_str()).is_some())
            .count()
    }
}

#[tokio::test(start_paused = true)]
async fn a_takeover_between_two_turns_of_a_batch_credits_nothing_twice() {
    // More credits than one write carries, even whole.
    const ACTIONS: u64 = WHOLE_WRITE_CREDITS_MAX as u64 + 24;
    let w = World::new();
    w.set_balance("hot", "5").await;
    let ids = enqueue_hot(&w, "t", ACTIONS).await;
    let hook = TakeoverBetweenTurns {
        store: w.store.clone(),
        actions: ids.clone(),
        writes: AtomicU64::new(0),
        taken_over: AtomicU64::new(0),
    };
    let store = Hooked::new(arc(&w.store), hook);
    let opts = Options::default();
    // Commit every action first, so that all their hot credits meet in one
    // batch (more than one write can carry).
    w.commit_queued(&ids).await;
    let outcomes = futures::future::join_all(ids.iter().map(|id| process_action(&store, id, &opts))).await;
    let mut reported = 0;
    for outcome in outcomes {
        match outcome {
            Ok(Outcome::Completed { credits, .. }) => reported += credits as u64,
            other => panic!("{other:?}"),
        }
    }
    let taken_over = store.hook.taken_over.load(Ordering::SeqCst);
    assert!(
        (1..ACTIONS).contains(&taken_over),
        "the other process must finish some credits between the turns: {taken_over}"
    );
    assert_eq!(
        reported,
        2 * ACTIONS - taken_over,
        "each worker counts only the credits it wrote"
    );
    assert_eq!(w.balance("hot"), Some(5 + ACTIONS * 100_000_000), "each credit once");
    for id in &ids {
        assert_eq!(w.balance(&format!("u{id}")), Some(50_000_000));
    }
}

/// How many markers `hash` carries.
fn markers_on(w: &World, hash: &str) -> usize {
    w.store
        .xattrs(Bucket::Ledger, &balance_key(hash))
        .and_then(|x| x.pointer("/ledger/applied").and_then(Value::as_object).map(|m| m.len()))
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn markers_stay_bounded_on_a_hot_wallet_two_processes_share() {
    const SOFT_MAX: usize = 8;
    const WAVE: u64 = 30;
    let w = World::new();
    let process = || Options {
        wallet_markers_soft_max: SOFT_MAX,
        ..Options::default()
    };
    let (a, b) = (process(), process());
    let store = Hooked::new(
        arc(&w.store),
        SlowCounting {
            key: balance_key("hot"),
            writes: AtomicU64::new(0),
        },
    );
    let mut done = 0;
    for wave in 0..10 {
        // Each process credits the wallet in turn: neither knows that the
        // other's actions are completed without reading their records.
        let opts = if wave % 2 == 0 { &a } else { &b };
        let ids = enqueue_hot(&w, &format!("w{wave}-"), WAVE).await;
        let outcomes = futures::future::join_all(ids.iter().map(|id| process_action(&store, id, opts))).await;
        assert!(outcomes.iter().all(|o| matches!(o, Ok(Outcome::Completed { .. }))));
        done += WAVE;
        // The soft maximum, plus the markers of the actions that were still
        // in flight at the last write (this wave's): without the rule, the
        // markers of earlier waves would pile up wave after wave.
        let markers = markers_on(&w, "hot");
        assert!(
            markers <= SOFT_MAX + WAVE as usize,
            "wave {wave}: {markers} markers on the hot wallet"
        );
    }
    assert_eq!(w.balance("hot"), Some(done * 100_000_000));
}

use crate::protocol::wallet::{WHOLE_WRITE_CREDITS_MAX, WRITE_XATTR_SPECS_MAX};

#[tokio::test]
async fn a_write_answered_path_not_found_is_read_again_like_a_cas_mismatch() {
    let w = World::new();
    w.set_balance("a", "7").await;
    w.enqueue("1", r#"{"beneficiaries":{"a":"1"}}"#).await;
    // The first write of the wallet meets a state that changed under it
    // (a marker it removes is already gone), as Couchbase may answer.
    let failed_once = std::sync::atomic::AtomicBool::new(false);
    let store = FaultyStore::with_plan(
        arc(&w.store),
        Box::new(move |_, kind, key| {
            if kind == OpKind::WriteWithXattrs && key == balance_key("a") && !failed_once.swap(true, Ordering::SeqCst) {
                Fault::FailBefore(crate::store::StoreError::PathNotFound("ledger.applied.mgone".into()))
            } else {
                Fault::Pass
            }
        }),
    );
    let outcome = process_action(&store, "1", &Options::default()).await;
    assert!(matches!(outcome, Ok(Outcome::Completed { .. })), "{outcome:?}");
    assert_eq!(w.balance("a"), Some(100_000_007));
}

/// Just before worker A inserts its record, its lease lapses and worker B
/// (another process) runs the whole action.
struct FinishedFirst {
    world_store: MemoryStore,
    clock: Arc<AtomicU64>,
    done: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Hook for FinishedFirst {
    async fn before(&self, kind: OpKind, key: &str) -> Fault {
        if kind == OpKind::Insert && key == tx_key("r") && !self.done.swap(true, Ordering::SeqCst) {
            self.clock.fetch_add(60_000, Ordering::SeqCst);
            let b = process_action(&self.world_store, "r", &Options::default()).await;
            assert!(matches!(b, Ok(Outcome::Completed { credits: 2, .. })), "B: {b:?}");
        }
        Fault::Pass
    }
}

#[tokio::test]
async fn losing_the_commit_race_to_a_finished_worker_is_a_duplicate() {
    let w = World::new();
    w.enqueue("r", r#"{"beneficiaries":{"a":"1","b":"2"}}"#).await;
    let store = Hooked::new(
        arc(&w.store),
        FinishedFirst {
            world_store: w.store.clone(),
            clock: w.clock.clone(),
            done: std::sync::atomic::AtomicBool::new(false),
        },
    );
    let a = process_action(&store, "r", &Options::default()).await;
    assert_eq!(a, Ok(Outcome::Duplicate), "A credited nothing");
    assert_eq!((w.balance("a"), w.balance("b")), (Some(100_000_000), Some(200_000_000)));
}

/// A batch too large for one spec per marker sends the wallet's markers
/// whole: the object must keep the marker of an action another process
/// credited and has not completed yet, or that action, taken over, would be
/// credited again ("no marker, record still committed" reads as not applied).
#[tokio::test(start_paused = true)]
async fn a_whole_markers_write_keeps_the_markers_of_actions_still_in_progress() {
    const ACTIONS: u64 = 40;
    let w = World::new();
    w.set_balance("hot", "5").await;
    // Another process committed "x" and credited `hot`, then stopped.
    let x = enqueue_hot(&w, "x", 1).await.remove(0);
    w.commit_queued(std::slice::from_ref(&x)).await;
    let hot = w
        .store
        .get_with_xattrs(Bucket::Ledger, &balance_key("hot"), &[MARKERS_XATTR])
        .await
        .expect("read hot");
    let units = crate::domain::Units::new(100_000_000).expect("units");
    w.store
        .write_with_xattrs(
            Bucket::Ledger,
            &balance_key("hot"),
            (5 + 100_000_000u64).to_string().as_bytes(),
            &[(
                MarkerName::of_action(&x).path().as_str(),
                Marker::credit(&x, units, 0).to_value(),
            )],
            crate::store::WriteMode::Replace(hot.cas),
        )
        .await
        .expect("x's credit");
    // This process: more credits to `hot` at once than one write's paths carry.
    let ids = enqueue_hot(&w, "t", ACTIONS).await;
    w.commit_queued(&ids).await;
    let store = Hooked::new(
        arc(&w.store),
        SlowCounting {
            key: balance_key("hot"),
            writes: AtomicU64::new(0),
        },
    );
    let opts = Options::default();
    let outcomes = futures::future::join_all(ids.iter().map(|id| process_action(&store, id, &opts))).await;
    assert!(outcomes.iter().all(|o| matches!(o, Ok(Outcome::Completed { .. }))));
    // Fewer writes than one spec per marker allows: some went whole.
    let writes = store.hook.writes.load(Ordering::SeqCst);
    assert!(
        writes < ACTIONS.div_ceil(WRITE_XATTR_SPECS_MAX as u64),
        "the batch did not go whole: {writes} writes"
    );
    let markers = w.store.xattrs(Bucket::Ledger, &balance_key("hot")).unwrap_or_default();
    assert!(
        markers
            .pointer(&format!("/ledger/applied/{}", MarkerName::of_action(&x)))
            .is_some(),
        "x's marker was dropped: {markers}"
    );
    // A worker takes "x" over: it finds its credit applied.
    let taken_over = process_action(&store, &x, &opts).await;
    assert!(matches!(taken_over, Ok(Outcome::Completed { .. })), "{taken_over:?}");
    assert_eq!(
        w.balance("hot"),
        Some(5 + (ACTIONS + 1) * 100_000_000),
        "each credit once"
    );
}

/// Every store call takes 20 ms, as over a network.
struct Network;

#[async_trait::async_trait]
impl Hook for Network {
    async fn before(&self, _kind: OpKind, _key: &str) -> Fault {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        Fault::Pass
    }
}

/// Runs `ids` to completion, `AT_ONCE` at a time, counting them in
/// `done`; returns the longest any took.
async fn run_all(store: &dyn Store, ids: &[String], opts: &Options, done: &AtomicU64) -> std::time::Duration {
    const AT_ONCE: usize = 16;
    let longest = std::sync::Mutex::new(std::time::Duration::ZERO);
    futures::stream::iter(ids)
        .for_each_concurrent(AT_ONCE, |id| {
            let longest = &longest;
            async move {
                let started = tokio::time::Instant::now();
                let outcome = process_action(store, id, opts).await;
                assert!(matches!(outcome, Ok(Outcome::Completed { .. })), "{id}: {outcome:?}");
                done.fetch_add(1, Ordering::SeqCst);
                let took = started.elapsed();
                let mut longest = longest.lock().unwrap_or_else(|p| p.into_inner());
                *longest = (*longest).max(took);
            }
        })
        .await;
    let longest = *longest.lock().unwrap_or_else(|p| p.into_inner());
    longest
}

/// Two processes credit one hot wallet at once. Each writes it from its
/// own last state while its credits keep coming (one round trip a batch),
/// where the other needs three after losing a race (read the wallet, read
/// the records that prove its credits, write). Without turns, whichever
/// wrote last writes again before the other can, and the loser's waits
/// grew with every race it lost: its credits waited until the winner ran
/// dry. With turns and a short wait after a lost race, no action of the
/// two waits longer than 3 times the longest of one process alone doing
/// the same work (the same target as `bench --scenario hot --replicas 4
/// --store-latency-ms 20` measures for p99), in the test clock's time.
#[tokio::test(start_paused = true)]
async fn two_processes_crediting_a_hot_wallet_take_turns() {
    const ACTIONS: u64 = 300;
    seed_jitter(35);
    let alone = {
        let w = World::new();
        let store = Hooked::new(arc(&w.store), Network);
        let ids = enqueue_hot(&w, "a", ACTIONS).await;
        run_all(&store, &ids, &Options::default(), &AtomicU64::new(0)).await
    };
    let w = World::new();
    let (a, b) = (Options::default(), Options::default());
    // As the membership tells each worker: another member is alive.
    a.coalescer.set_others_write(true);
    b.coalescer.set_others_write(true);
    let store = Hooked::new(arc(&w.store), Network);
    let a_ids = enqueue_hot(&w, "a", ACTIONS).await;
    let b_ids = enqueue_hot(&w, "b", ACTIONS).await;
    let a_done = AtomicU64::new(0);
    let run_b = async {
        // B starts once A writes the wallet back to back.
        while a_done.load(Ordering::SeqCst) < 30 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        run_all(&store, &b_ids, &b, &AtomicU64::new(0)).await
    };
    let (a_longest, b_longest) = futures::join!(run_all(&store, &a_ids, &a, &a_done), run_b);
    for (process, longest) in [("A", a_longest), ("B", b_longest)] {
        assert!(
            longest <= alone * 3,
            "an action of {process} took {longest:?}; one process alone: {alone:?} at most"
        );
    }
    assert_eq!(w.balance("hot"), Some(2 * ACTIONS * 100_000_000));
}

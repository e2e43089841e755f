//! The worker's discovery under failure: told apart, bounded, reported.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::discovery::{DISCOVERY_BACKOFF_MS_MAX, DISCOVERY_FAILING_MAX_WHEN_IDLE};
use super::*;
use crate::domain::keys::action_key;
use crate::store::faulty::{Fault, FaultyStore, OpKind};
use crate::store::memory::MemoryStore;
use crate::store::StoreError;

pub(super) fn config(exit_when_idle: bool) -> WorkerConfig {
    WorkerConfig {
        concurrency: 4,
        lease: Duration::from_secs(5),
        page_size: 16,
        idle_backoff_max: Duration::from_millis(100),
        exit_when_idle,
        shutdown_grace: Duration::from_secs(5),
        member_timeout: crate::worker::membership::MEMBER_TIMEOUT,
        partition: true,
    }
}

/// A memory store with `n` queued actions, `0` to `n - 1`, each one unit
/// to its own wallet.
pub(super) async fn queued(n: u64) -> MemoryStore {
    let inner = MemoryStore::new();
    for i in 0..n {
        let body = format!(r#"{{"beneficiaries":{{"w{i}":"1"}}}}"#);
        inner
            .insert(Bucket::Queue, &action_key(&i.to_string()), body.as_bytes())
            .await
            .expect("enqueue");
    }
    inner
}

/// Actions still in the queue of `inner` (the queue bucket also holds the
/// membership document).
pub(super) fn actions_left(inner: &MemoryStore) -> usize {
    inner
        .snapshot(Bucket::Queue)
        .iter()
        .filter(|(key, _)| key.starts_with(crate::domain::keys::ACTION_PREFIX))
        .count()
}

/// A memory store with `n` queued actions whose discovery fails with
/// `error` while `broken` is set; counts the failed attempts.
async fn store_with(n: u64, error: StoreError) -> (Arc<dyn Store>, MemoryStore, Arc<AtomicBool>, Arc<AtomicU64>) {
    let inner = queued(n).await;
    let (broken, attempts) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicU64::new(0)));
    let (b, a) = (broken.clone(), attempts.clone());
    let store = FaultyStore::with_plan(
        Arc::new(inner.clone()),
        Box::new(move |_, kind, _| {
            if kind == OpKind::ListKeys && b.load(Ordering::SeqCst) {
                a.fetch_add(1, Ordering::SeqCst);
                Fault::FailBefore(error.clone())
            } else {
                Fault::Pass
            }
        }),
    );
    (Arc::new(store), inner, broken, attempts)
}

#[tokio::test(start_paused = true)]
async fn a_permanent_discovery_error_stops_an_exit_when_idle_run_at_once() {
    let error = StoreError::Permanent("no index on the queue: run `ledgerd init`".into());
    let (store, _, _, attempts) = store_with(2, error).await;
    let health = Arc::new(Health::default());
    let running = run(store, config(true), health.clone(), std::future::pending());
    let stats = tokio::time::timeout(Duration::from_secs(3_600), running)
        .await
        .expect("the worker stops");
    let why = stats.stopped.expect("stopped");
    assert!(
        why.contains("run `ledgerd init`") && why.contains("will not heal"),
        "{why}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "a permanent error is not retried");
    assert!(health.problem().is_some());
}

#[tokio::test(start_paused = true)]
async fn transient_discovery_errors_stop_an_exit_when_idle_run_after_a_bounded_time() {
    let (store, _, _, attempts) = store_with(2, StoreError::Transient("query timed out".into())).await;
    let started = tokio::time::Instant::now();
    let running = run(store, config(true), Arc::default(), std::future::pending());
    let stats = tokio::time::timeout(Duration::from_secs(3_600), running)
        .await
        .expect("the worker stops");
    let why = stats.stopped.expect("stopped");
    assert!(why.contains("query timed out"), "{why}");
    assert!(attempts.load(Ordering::SeqCst) > 3, "transient errors are retried");
    let took = started.elapsed();
    assert!(
        took >= DISCOVERY_FAILING_MAX_WHEN_IDLE
            && took <= DISCOVERY_FAILING_MAX_WHEN_IDLE + Duration::from_millis(DISCOVERY_BACKOFF_MS_MAX),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_running_worker_is_not_ready_while_discovery_fails_and_recovers_after() {
    let error = StoreError::Permanent("the Query service answered HTTP 501".into());
    let (store, inner, broken, attempts) = store_with(3, error).await;
    let health = Arc::new(Health::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(run(store, config(false), health.clone(), async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let problem = health.problem().expect("not ready");
    assert!(problem.contains("HTTP 501"), "{problem}");
    let tried = attempts.load(Ordering::SeqCst);
    assert!(
        (3..=20).contains(&tried),
        "retried with a capped backoff, not in a tight loop: {tried}"
    );
    assert_eq!(actions_left(&inner), 3, "nothing claimed meanwhile");

    broken.store(false, Ordering::SeqCst);
    for _ in 0..600 {
        if actions_left(&inner) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(actions_left(&inner) == 0, "the queue drains once discovery works");
    assert_eq!(health.problem(), None, "ready again");
    let _ = stop.send(());
    let stats = worker.await.expect("worker");
    assert_eq!((stats.completed, stats.stopped), (3, None));
}

#[test]
fn retry_delays_grow_to_the_longest_lock_and_are_jittered_per_action() {
    for number in 1..=12u32 {
        let ceiling = (RETRY_DELAY_MS_MIN << number.clamp(1, 7).saturating_sub(1)).min(RETRY_DELAY_MS_MAX);
        let drawn: std::collections::BTreeSet<u128> = (0..200).map(|_| retry_delay(number).as_millis()).collect();
        assert!(
            drawn
                .iter()
                .all(|d| (u128::from(ceiling / 2)..=u128::from(ceiling)).contains(d)),
            "{number}: {drawn:?}"
        );
        // Actions blocked together do not all come back together.
        assert!(drawn.len() > 50, "{number}: {} distinct delays", drawn.len());
    }
    assert!(retry_delay(99) <= Duration::from_millis(RETRY_DELAY_MS_MAX));
}

/// Bounded memory: after many actions, some blocked and then removed by
/// someone else, every table the worker keeps holds what its bound allows
/// and nothing per action processed (the latency histogram keeps its one
/// size; no put-off entry outlives its action). On paused time: every
/// wait below is the worker's own idle passes, never the machine's speed.
#[tokio::test(start_paused = true)]
async fn a_worker_keeps_nothing_per_action_processed() {
    let inner = MemoryStore::new();
    let actions = 3_000u64;
    for i in 0..actions {
        let body = format!(r#"{{"beneficiaries":{{"w{}":"1","v{}":"2"}}}}"#, i % 50, i % 7);
        inner
            .insert(Bucket::Queue, &action_key(&format!("a{i:05}")), body.as_bytes())
            .await
            .expect("enqueue");
    }
    // Ten actions credit a wallet that is not a valid balance: blocked.
    inner
        .insert(Bucket::Ledger, "balance:broken", b"\"not a number\"")
        .await
        .expect("broken wallet");
    for i in 0..10 {
        inner
            .insert(
                Bucket::Queue,
                &action_key(&format!("blocked{i}")),
                br#"{"beneficiaries":{"broken":"1"}}"#,
            )
            .await
            .expect("enqueue");
    }
    let store: Arc<dyn Store> = Arc::new(inner.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(run(store, config(false), Arc::default(), async {
        let _ = stopped.await;
    }));
    // Until every other action is credited and every blocked one was
    // tried (it says so on itself).
    let all_tried = || async {
        for i in 0..10 {
            let key = action_key(&format!("blocked{i}"));
            match inner
                .get_with_xattrs(Bucket::Queue, &key, &[protocol::BLOCKED_XATTR])
                .await
            {
                Ok(d) if d.xattrs.first().is_some_and(Option::is_some) => {}
                _ => return false,
            }
        }
        true
    };
    for _ in 0..6_000 {
        if actions_left(&inner) == 10 && all_tried().await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(actions_left(&inner), 10, "only the blocked actions are left");
    // Someone else (an operator) removes the blocked actions: the worker
    // must forget them once a pass no longer lists them.
    for i in 0..10 {
        let key = action_key(&format!("blocked{i}"));
        // A retry of the worker's may hold it for a moment.
        while let Err(e) = inner.remove(Bucket::Queue, &key, None).await {
            assert_eq!(e, StoreError::Locked, "remove {key}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Idle passes (each at most idle_backoff_max apart) see them gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop.send(());
    let stats = worker.await.expect("worker");
    assert_eq!(stats.completed, actions);
    assert!(stats.blocked >= 10);
    assert_eq!(
        stats.latencies.count(),
        actions,
        "every completed action is in the histogram"
    );
    let f = stats.footprint;
    assert_eq!(
        f.latency_counters,
        Latencies::new().counters(),
        "the histogram keeps its one size"
    );
    assert_eq!(f.put_off, 0, "no entry outlives its action: {f:?}");
    assert_eq!(f.in_flight, 0);
    assert!(f.recently_completed <= protocol::RECENT_COMPLETED_MAX, "{f:?}");
    assert!(f.coalescer_slots <= 58, "one slot per wallet at most: {f:?}");
    assert!(f.lineage_states <= f.coalescer_slots * protocol::LINEAGE_MAX, "{f:?}");
    assert!(f.collapsed_causes <= 2 * (collapse::COLLAPSE_CAUSES_MAX + 1), "{f:?}");
    assert!(f.head_sightings <= pass::HEAD_KEYS, "the head's keys at most: {f:?}");
    assert!(f.members_remembered <= membership::MEMBERS_MAX, "{f:?}");
}

#[tokio::test(start_paused = true)]
async fn keys_ending_in_any_characters_are_claimed_by_their_owner_not_the_stale_path() {
    // The memory store files keys by shard as Couchbase's index does
    // (bytes), where the workers' own `shard_of` counts characters: for
    // these ids the two disagree, and only a listing that is trusted gets
    // each action claimed, by the member whose share lists it.
    let inner = MemoryStore::new();
    let store: Arc<dyn Store> = Arc::new(inner.clone());
    let cfg = WorkerConfig {
        member_timeout: Duration::from_secs(10),
        ..config(false)
    };
    // A key of another member's shard is tried through the stale rule only
    // after this long at the head of the queue.
    let stale_after = cfg.lease + cfg.member_timeout;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..3 {
        let mut stopped = stopped.clone();
        workers.push(tokio::spawn(run(
            store.clone(),
            cfg.clone(),
            Arc::default(),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )));
    }
    // The three agree on who owns what before any action is queued.
    tokio::time::sleep(cfg.member_timeout * 3).await;
    let endings = crate::store::contract::KEY_ENDINGS_BEYOND_ASCII;
    let mut disagreeing = 0;
    for i in 0..60 {
        let id = format!("q{i}{}", endings[i % endings.len()]);
        let key = action_key(&id);
        let (by_bytes, by_chars) = (
            crate::domain::shard::shard_of_bytes(&key),
            crate::domain::shard::shard_of(&key),
        );
        disagreeing += usize::from(by_bytes * 3 / 256 != by_chars * 3 / 256);
        let body = format!(r#"{{"beneficiaries":{{"w{i}":"1"}}}}"#);
        inner
            .insert(Bucket::Queue, &key, body.as_bytes())
            .await
            .expect("enqueue");
    }
    assert!(
        disagreeing > 10,
        "the two functions give other owners for many: {disagreeing}"
    );
    let queued_at = tokio::time::Instant::now();
    while actions_left(&inner) > 0 && queued_at.elapsed() < stale_after {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        actions_left(&inner),
        0,
        "every action credited before the stale rule could act"
    );
    let _ = stop.send(true);
    let mut completed = 0;
    for w in workers {
        let stats = w.await.expect("worker");
        assert_eq!(stats.duplicates, 0);
        completed += stats.completed;
    }
    assert_eq!(completed, 60);
}

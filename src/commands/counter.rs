//! What a benchmarked worker did to its store: operations by cost, round
//! trips, claims and discovery reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::domain::keys::MEMBERS_KEY;
use crate::store::hooked::{Fault, Hook, OpKind};
use crate::store::{StoreError, WriteGroup};
use crate::worker::{Latencies, RunStats};

/// Counts store operations by what they cost: reads, writes, conflicts,
/// and the wallet writes among the writes; the membership's heartbeat
/// apart. With a latency, every call waits that long first (a write
/// group, that long per stage), as a call to a server over a network does
/// (`bench --store-latency-ms`).
///
/// Round trips are counted per task, and the worker runs each action in a
/// task of its own: a call on an action's path (not discovery's listing,
/// not the heartbeat) that starts while none of its task's calls is in
/// flight begins a new round trip. Every call yields (or waits out the
/// latency) after it is counted and before it goes to the store, as a call
/// to a server never answers on its first poll: calls an action starts
/// together (its wallet reads) are then all in flight before any of them
/// ends, however fast the store, and what is counted does not depend on
/// the machine's speed.
#[derive(Default)]
pub struct OpCounter {
    reads: AtomicU64,
    writes: AtomicU64,
    wallet_writes: AtomicU64,
    conflicts: AtomicU64,
    round_trips: AtomicU64,
    membership: AtomicU64,
    latency: Duration,
    /// Calls in flight, by task: at most one entry per task with a call in
    /// flight (an entry goes when its count returns to zero).
    in_flight: Mutex<HashMap<tokio::task::Id, u32>>,
}

impl OpCounter {
    /// A counter whose calls each wait `latency` first.
    pub fn with_latency(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }
}

impl OpCounter {
    /// Whether a call is on an action's path: not a listing (discovery)
    /// and not the membership's heartbeat.
    fn on_path(kind: OpKind, key: &str) -> bool {
        key != MEMBERS_KEY && !matches!(kind, OpKind::ListKeys | OpKind::CountKeys)
    }

    /// A call of this task starts; counts a round trip when none was in
    /// flight. Outside a task: nothing.
    fn begin(&self) {
        let Some(task) = tokio::task::try_id() else { return };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = in_flight.entry(task).or_insert(0);
        if *n == 0 {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        *n += 1;
    }

    /// A call of this task ended.
    fn end(&self) {
        let Some(task) = tokio::task::try_id() else { return };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&task) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(&task);
            }
        }
    }

    /// Counts one operation that ran.
    fn count(&self, kind: OpKind, key: &str, error: Option<&StoreError>) {
        if key == MEMBERS_KEY {
            // The heartbeat's: a few per interval, whatever the actions.
            self.membership.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let counter = if kind.is_write() { &self.writes } else { &self.reads };
        counter.fetch_add(1, Ordering::Relaxed);
        if kind == OpKind::WriteWithXattrs {
            self.wallet_writes.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(
            error,
            Some(StoreError::CasMismatch | StoreError::Exists | StoreError::Locked)
        ) {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The wait of one call (or one stage), or a yield without a latency.
    async fn wait(&self, stages: u32) {
        match self.latency.is_zero() {
            true => tokio::task::yield_now().await,
            false => tokio::time::sleep(self.latency.saturating_mul(stages)).await,
        }
    }
}

#[async_trait::async_trait]
impl Hook for OpCounter {
    async fn before(&self, kind: OpKind, key: &str) -> Fault {
        if Self::on_path(kind, key) {
            self.begin();
        }
        self.wait(1).await;
        Fault::Pass
    }
    fn watches_only(&self) -> bool {
        true
    }
    async fn before_group(&self, group: &WriteGroup) {
        // The group's first stage is in flight from here: reads sent beside
        // it (the records of old markers, beside the insert) share its
        // round trip, as on Couchbase.
        self.begin();
        self.wait(u32::try_from(group.len()).unwrap_or(u32::MAX)).await;
    }
    fn after(&self, kind: OpKind, key: &str, error: Option<&StoreError>) {
        if Self::on_path(kind, key) {
            self.end();
        }
        self.count(kind, key, error);
    }
    fn after_stage(&self, stage: usize, ran: &[(OpKind, &str, Option<&StoreError>)]) {
        // One round trip per stage, as Couchbase runs a group: the first
        // was counted as the group began; each later one follows it.
        if stage > 0 {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        for (kind, key, error) in ran {
            self.count(*kind, key, *error);
        }
    }
    fn after_group(&self) {
        self.end();
    }
}

/// What one worker (a `ledgerd run --bench-report FILE` process, or one
/// replica of `bench --replicas`) did.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct ProcessReport {
    /// Claim-to-completion of the actions it completed (a fixed-size
    /// histogram, whatever the number of actions).
    pub latencies: Latencies,
    /// Store reads.
    pub reads: u64,
    /// Store writes.
    pub writes: u64,
    /// Wallet writes among them.
    pub wallet_writes: u64,
    /// CAS mismatches, exists and locked answers.
    pub conflicts: u64,
    /// Sequential round trips on the actions' paths: a store call that
    /// starts while none of its action is in flight begins one, and a write
    /// group counts one per stage, as Couchbase runs it.
    #[serde(default)]
    pub round_trips: u64,
    /// Reads and writes of the membership document.
    #[serde(default)]
    pub membership: u64,
    /// Claims tried (get-and-lock of a queued action).
    #[serde(default)]
    pub claim_attempts: u64,
    /// Keys read by discovery.
    #[serde(default)]
    pub discovery_keys: u64,
    /// Actions it finished (completed, duplicate or rejected).
    #[serde(default)]
    pub finished: u64,
    /// The process's peak resident memory.
    #[serde(default)]
    pub peak_rss_bytes: u64,
}

impl ProcessReport {
    /// The report of a worker that ran with `counter` and ended with `stats`.
    pub fn new(stats: &RunStats, counter: &OpCounter) -> Self {
        Self {
            latencies: stats.latencies.clone(),
            reads: counter.reads.load(Ordering::Relaxed),
            writes: counter.writes.load(Ordering::Relaxed),
            wallet_writes: counter.wallet_writes.load(Ordering::Relaxed),
            conflicts: counter.conflicts.load(Ordering::Relaxed),
            round_trips: counter.round_trips.load(Ordering::Relaxed),
            membership: counter.membership.load(Ordering::Relaxed),
            claim_attempts: stats.claim_attempts,
            discovery_keys: stats.discovery_keys,
            finished: stats.completed + stats.duplicates + stats.failed,
            peak_rss_bytes: peak_rss_bytes(),
        }
    }

    /// Adds another worker's report to this one.
    pub fn add(&mut self, other: ProcessReport) {
        self.latencies.merge(&other.latencies);
        self.reads += other.reads;
        self.writes += other.writes;
        self.wallet_writes += other.wallet_writes;
        self.conflicts += other.conflicts;
        self.round_trips += other.round_trips;
        self.membership += other.membership;
        self.claim_attempts += other.claim_attempts;
        self.discovery_keys += other.discovery_keys;
        self.finished += other.finished;
        self.peak_rss_bytes = self.peak_rss_bytes.max(other.peak_rss_bytes);
    }
}

/// This process's peak resident memory (Linux), else 0.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::hooked::Hooked;
    use crate::store::memory::MemoryStore;
    use crate::store::{Bucket, Store};

    fn trips(store: &Hooked<OpCounter>) -> u64 {
        ProcessReport::new(&RunStats::default(), &store.hook).round_trips
    }

    /// The memory store answers on the first poll: without the yield in
    /// `before` the first of two joined reads would end before the second
    /// began, and they would count as two round trips.
    #[tokio::test]
    async fn calls_started_together_are_one_round_trip_however_fast_the_store() {
        let store = Arc::new(Hooked::new(Arc::new(MemoryStore::new()), OpCounter::default()));
        let action = store.clone();
        tokio::spawn(async move {
            let (a, b) = tokio::join!(
                action.get(Bucket::Ledger, "balance:a"),
                action.get(Bucket::Ledger, "balance:b")
            );
            assert!(matches!((a, b), (Err(StoreError::NotFound), Err(StoreError::NotFound))));
            assert_eq!(trips(&action), 1, "joined calls");
            let _ = action.get(Bucket::Ledger, "balance:a").await;
            let _ = action.get(Bucket::Ledger, "balance:b").await;
            assert_eq!(trips(&action), 3, "one after the other");
        })
        .await
        .expect("the action's task");
        assert!(
            store.hook.in_flight.lock().expect("lock").is_empty(),
            "nothing left in flight"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_latency_delays_every_call_and_each_stage_of_a_group_once() {
        use crate::store::{GroupWrite, WriteGroup};
        let latency = Duration::from_millis(5);
        let store = Hooked::new(Arc::new(MemoryStore::new()), OpCounter::with_latency(latency));
        let started = tokio::time::Instant::now();
        let _ = store.get(Bucket::Ledger, "balance:a").await;
        assert_eq!(started.elapsed(), latency);
        let insert = |key: &str| GroupWrite::Insert {
            bucket: Bucket::Queue,
            key: key.to_string(),
            body: b"{}".to_vec(),
        };
        let group: WriteGroup = vec![vec![insert("a"), insert("b")], vec![insert("c")]];
        let started = tokio::time::Instant::now();
        let _ = store.write_group(&group).await;
        assert_eq!(started.elapsed(), latency * 2, "one wait per stage, not per write");
    }
}

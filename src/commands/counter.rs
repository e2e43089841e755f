//! What a benchmarked worker did to its store: operations by cost, round
//! trips, claims and discovery reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::domain::keys::MEMBERS_KEY;
use crate::store::hooked::{Fault, Hook, InFlight, OpKind};
use crate::store::StoreError;
use crate::worker::{Latencies, RunStats};

/// Counts store operations by what they cost: reads, writes, conflicts,
/// and the wallet writes among the writes; the membership's heartbeat
/// apart. With a latency, every call waits that long first, as a call to a
/// server does.
#[derive(Default)]
pub struct OpCounter {
    reads: AtomicU64,
    writes: AtomicU64,
    wallet_writes: AtomicU64,
    conflicts: AtomicU64,
    round_trips: AtomicU64,
    membership: AtomicU64,
    latency: Duration,
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

#[async_trait::async_trait]
impl Hook for OpCounter {
    async fn before(&self, _kind: OpKind, _key: &str) -> Fault {
        if InFlight::begin() {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        Fault::Pass
    }
    fn watches_only(&self) -> bool {
        true
    }
    fn counts_round_trips(&self) -> bool {
        true
    }
    fn latency(&self) -> Duration {
        self.latency
    }
    fn after(&self, kind: OpKind, key: &str, error: Option<&StoreError>) {
        InFlight::end();
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
    use crate::store::hooked::{Hooked, IN_FLIGHT};
    use crate::store::memory::MemoryStore;
    use crate::store::{Bucket, Store};

    fn trips(store: &Hooked<OpCounter>) -> u64 {
        ProcessReport::new(&RunStats::default(), &store.hook).round_trips
    }

    /// The memory store answers on the first poll: without `as_if_remote`
    /// the first of two joined reads would end before the second began,
    /// and they would count as two round trips.
    #[tokio::test]
    async fn calls_started_together_are_one_round_trip_however_fast_the_store() {
        let store = Hooked::new(Arc::new(MemoryStore::new()), OpCounter::default());
        IN_FLIGHT
            .scope(Default::default(), async {
                let (a, b) = tokio::join!(
                    store.get(Bucket::Ledger, "balance:a"),
                    store.get(Bucket::Ledger, "balance:b")
                );
                assert!(matches!((a, b), (Err(StoreError::NotFound), Err(StoreError::NotFound))));
                assert_eq!(trips(&store), 1, "joined calls");
                let _ = store.get(Bucket::Ledger, "balance:a").await;
                let _ = store.get(Bucket::Ledger, "balance:b").await;
                assert_eq!(trips(&store), 3, "one after the other");
            })
            .await;
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

//! A deterministic fault-injection simulator for the crediting protocol.
//!
//! One seed drives everything: the workload, the order in which workers'
//! operations interleave, every injected fault, where workers die, and the
//! virtual lock clock. The same seed replays the same run, operation for
//! operation (one thread, paused tokio time, seeded jitter).
//!
//! Simulated: ambiguous writes (applied or not), transient errors, reordering
//! between workers, locks lapsing mid-action, workers stopping dead at any
//! store call and never returning, fresh workers taking over (and joining
//! the membership, whose heartbeats meet the same faults; one worker in
//! three holds a stale view, so two may claim one share; a member also
//! claims keys of others' shards, as the stale rule does), duplicate
//! deliveries (same and different body), a producer rewriting queued
//! actions, a wallet corrupted by someone else, and balances near the supply.
//! The store keeps Couchbase Server's limits (`store::limits`), and a
//! request it refuses for them is a violation. One seed in three is
//! crowded: more actions, 40 in flight per worker, and a marker soft
//! maximum of 3, so that batches carry more credits than the paths of one
//! write can (their markers then go whole, in one spec) and writes prune
//! the markers of other workers' completed actions.
//! Not simulated: store bugs (the store is trusted to keep its contract),
//! process memory corruption, and Couchbase-specific behaviour such as
//! failover or durability loss beyond "ambiguous".

mod checker;
pub mod explore;
pub mod store;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::domain::keys::{action_key, balance_key, ACTION_PREFIX};
use crate::domain::shard::shard_of;
use crate::protocol::{self, process_action, Outcome};
use crate::store::memory::{Clock, MemoryStore};
use crate::store::{Bucket, Store};
use crate::worker::membership::{Membership, View};
use checker::{Delivery, Facts};
pub use store::Sabotage;
use store::{Shared, SimStore};

/// Faulty workers started at the beginning.
const WORKERS_FIRST: usize = 3;
/// Passes over the queue a faulty worker makes before it stops.
const WORKER_PASSES_MAX: usize = 6;
/// Passes the clean recovery worker may need.
const RECOVERY_PASSES_MAX: usize = 20;
/// Actions one worker has in flight at once.
const ACTIONS_AT_ONCE: usize = 3;
/// Actions one worker has in flight at once in a crowded seed: its credits
/// to one hot wallet then exceed what the paths of one write can carry, so
/// that their markers go whole.
const ACTIONS_AT_ONCE_CROWDED: usize = 40;
/// Marker soft maximum of a crowded seed's wallets: low, so that writes
/// prune markers of other workers' completed actions as they go.
const WALLET_MARKERS_SOFT_MAX_CROWDED: usize = 3;
/// One seed in this many is crowded.
const CROWDED_ONE_IN: u64 = 3;
/// Lease used in the simulation (virtual milliseconds).
const LEASE_MS: u64 = 1_000;
/// Membership timeout in the simulation (virtual milliseconds).
const MEMBER_TIMEOUT_MS: u64 = 1_000;
/// One worker in this many holds a stale view of the membership.
const STALE_VIEW_ONE_IN: u64 = 3;
/// A member claims one key of another member's share in this many.
const FOREIGN_ONE_IN: u64 = 4;

/// A simulated worker's membership: real heartbeats through the faulty
/// store, and a view that may be stale.
struct Member {
    membership: Membership,
    /// Reads the membership once, when it joins, and never again.
    stale: bool,
    joined: bool,
}

impl Member {
    /// The view this member claims by.
    async fn view(&mut self) -> View {
        if !self.stale || !self.joined {
            self.joined = true;
            return self.membership.refresh().await.clone();
        }
        self.membership.view().clone()
    }
}

/// What one seed found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Invariant violations; empty when the run was correct.
    pub violations: Vec<String>,
    /// The run, one line per store operation.
    pub trace: Vec<String>,
    /// Actions delivered.
    pub deliveries: usize,
    /// Whether the seed was crowded (see [`CROWDED_ONE_IN`]).
    pub crowded: bool,
    /// The most xattr specs any write of the run carried.
    pub xattr_specs_max: usize,
    /// Writes that removed a marker along with their credits.
    pub pruning_writes: u64,
    /// Writes that replaced a wallet's whole markers object in one spec.
    pub whole_writes: u64,
}

struct Run {
    shared: Arc<Shared>,
    /// Actions one worker has in flight at once.
    actions_at_once: usize,
    /// Each worker process's marker soft maximum.
    wallet_markers_soft_max: usize,
    deliveries: Mutex<BTreeMap<String, Vec<Delivery>>>,
    corrupted: Mutex<BTreeSet<String>>,
    blocked: Mutex<BTreeMap<String, String>>,
}

/// One worker process's options: its own memory of completed actions and
/// its own coalescer, lost with it when it dies.
fn worker_options(wallet_markers_soft_max: usize) -> protocol::Options {
    protocol::Options {
        lease: Duration::from_millis(LEASE_MS),
        apply_rounds_max: 8,
        wallet_markers_soft_max,
        ..protocol::Options::default()
    }
}

impl Run {
    fn deliver(&self, id: &str, body: &[u8], rewrite: bool) {
        let mut all = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        let list = all.entry(id.to_string()).or_default();
        if rewrite {
            if let Some(last) = list.last_mut() {
                last.superseded = true;
            }
        }
        list.push(Delivery {
            body: body.to_vec(),
            superseded: false,
        });
        self.shared.trace(format!(
            "producer delivers {id}{}: {}",
            if rewrite { " (rewrite)" } else { "" },
            String::from_utf8_lossy(body)
        ));
    }

    /// The producer: first deliveries, duplicates, and rewrites of queued actions.
    async fn produce(&self, actions: Vec<(String, String)>) {
        let inner = &self.shared.inner;
        for (id, body) in &actions {
            if inner
                .insert(Bucket::Queue, &action_key(id), body.as_bytes())
                .await
                .is_ok()
            {
                self.deliver(id, body.as_bytes(), false);
            }
            tokio::time::sleep(Duration::from_millis(self.shared.gen_range(0..5))).await;
        }
        for _ in 0..self.shared.gen_range(0..6) {
            tokio::time::sleep(Duration::from_millis(self.shared.gen_range(1..30))).await;
            let (id, old) = &actions[self.shared.gen_range(0..actions.len() as u64) as usize];
            let key = action_key(id);
            let fresh = {
                let mut rng = self.shared.rng.lock().unwrap_or_else(|p| p.into_inner());
                workload::body(&mut rng)
            };
            match self.shared.gen_range(0..3) {
                // Duplicate delivery with the same body, or another body.
                0 | 1 => {
                    let body = if self.shared.gen_range(0..2) == 0 {
                        old.clone()
                    } else {
                        fresh
                    };
                    if inner.insert(Bucket::Queue, &key, body.as_bytes()).await.is_ok() {
                        self.deliver(id, body.as_bytes(), false);
                    }
                }
                // Rewrite while queued (fails harmlessly if a worker holds the lock).
                _ => {
                    if let Ok(doc) = inner.get(Bucket::Queue, &key).await {
                        if inner
                            .replace(Bucket::Queue, &key, fresh.as_bytes(), doc.cas)
                            .await
                            .is_ok()
                        {
                            self.deliver(id, fresh.as_bytes(), true);
                        }
                    }
                }
            }
        }
    }

    /// Someone else corrupts a wallet, sometimes.
    async fn corrupt(&self) {
        if self.shared.gen_range(0..4) != 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(self.shared.gen_range(0..60))).await;
        let hash = format!("h{}", self.shared.gen_range(0..workload::HOT_WALLETS as u64));
        let key = balance_key(&hash);
        let inner = &self.shared.inner;
        let done = match inner.get(Bucket::Ledger, &key).await {
            Ok(doc) => inner
                .replace(Bucket::Ledger, &key, b"\"corrupt\"", doc.cas)
                .await
                .is_ok(),
            Err(_) => inner.insert(Bucket::Ledger, &key, b"\"corrupt\"").await.is_ok(),
        };
        if done {
            self.shared.trace(format!("chaos corrupts {key}"));
            self.corrupted.lock().unwrap_or_else(|p| p.into_inner()).insert(hash);
        }
    }

    /// A worker: passes over the queue, a few actions at a time (so that
    /// its credits to one wallet coalesce). Returns whether its last pass
    /// made progress. A member claims only its view's share (and, one key
    /// in [`FOREIGN_ONE_IN`], another member's, as the stale rule does); a
    /// worker without one claims everything.
    async fn work(&self, store: &SimStore, passes: usize, record_blocked: bool, mut member: Option<Member>) -> bool {
        let opts = worker_options(self.wallet_markers_soft_max);
        let mut progress = false;
        for _ in 0..passes {
            let keys = match store.list_keys(Bucket::Queue, ACTION_PREFIX, None, 100).await {
                Ok(keys) => keys,
                Err(_) => continue,
            };
            if keys.is_empty() {
                return false;
            }
            let keys = match member.as_mut() {
                Some(member) => {
                    let view = member.view().await;
                    self.shared.trace(format!(
                        "{} holds a view of {} members, {} shards",
                        store.describe(),
                        view.members.len(),
                        view.shards.len()
                    ));
                    keys.into_iter()
                        .filter(|k| view.owns(shard_of(k)) || self.shared.gen_range(0..FOREIGN_ONE_IN) == 0)
                        .collect()
                }
                None => keys,
            };
            let mut ids: Vec<String> = keys
                .iter()
                .filter_map(|k| k.strip_prefix(ACTION_PREFIX).map(str::to_string))
                .collect();
            {
                let mut rng = self.shared.rng.lock().unwrap_or_else(|p| p.into_inner());
                ids.shuffle(&mut *rng);
            }
            progress = false;
            for pair in ids.chunks(self.actions_at_once) {
                let results = futures::future::join_all(pair.iter().map(|id| process_action(store, id, &opts))).await;
                for (id, result) in pair.iter().zip(results) {
                    self.shared.trace(format!("{} {id}: {result:?}", store.describe()));
                    match result {
                        Ok(Outcome::Blocked { reason }) if record_blocked => {
                            self.blocked
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(id.clone(), reason);
                        }
                        Ok(Outcome::Completed { .. } | Outcome::Duplicate | Outcome::Failed { .. }) => progress = true,
                        _ => {}
                    }
                }
            }
            if record_blocked && !progress {
                return false;
            }
        }
        progress
    }
}

/// Runs one seed to quiescence and checks it.
pub fn run_seed(seed: u64, sabotage: Sabotage) -> Report {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Report {
                seed,
                violations: vec![format!("no runtime: {e}")],
                trace: Vec::new(),
                deliveries: 0,
                crowded: false,
                xattr_specs_max: 0,
                pruning_writes: 0,
                whole_writes: 0,
            };
        }
    };
    runtime.block_on(simulate(seed, sabotage))
}

async fn simulate(seed: u64, sabotage: Sabotage) -> Report {
    protocol::seed_jitter(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let crowded = rand::Rng::gen_range(&mut rng, 0..CROWDED_ONE_IN) == 0;
    let work = workload::generate(&mut rng, crowded);
    let (clock, handle) = Clock::manual();
    // Timestamps and marker ages follow the virtual clock too.
    protocol::records::use_virtual_clock(Some(handle.clone()));
    let inner = MemoryStore::with_clock(clock);
    for (hash, units) in &work.initial {
        let _ = inner
            .insert(Bucket::Ledger, &balance_key(hash), units.to_string().as_bytes())
            .await;
    }
    let shared = Arc::new(Shared {
        inner: inner.clone(),
        clock: handle.clone(),
        rng: Mutex::new(rng),
        trace: Mutex::new(Vec::new()),
        violations: Mutex::new(Vec::new()),
        sabotage,
        xattr_specs_max: Default::default(),
        pruning_writes: Default::default(),
        whole_writes: Default::default(),
    });
    let run = Arc::new(Run {
        shared: shared.clone(),
        actions_at_once: if crowded {
            ACTIONS_AT_ONCE_CROWDED
        } else {
            ACTIONS_AT_ONCE
        },
        wallet_markers_soft_max: if crowded {
            WALLET_MARKERS_SOFT_MAX_CROWDED
        } else {
            protocol::WALLET_MARKERS_SOFT_MAX
        },
        deliveries: Mutex::new(BTreeMap::new()),
        corrupted: Mutex::new(BTreeSet::new()),
        blocked: Mutex::new(BTreeMap::new()),
    });

    let mut tasks = Vec::new();
    let worker = |name: String, dies_at: Option<u64>| {
        let (run, shared) = (run.clone(), shared.clone());
        // Membership faults: a member that never reads the membership again
        // after joining holds a stale view (and may claim another's share);
        // its heartbeats go through the same faulty store.
        let stale = shared.gen_range(0..STALE_VIEW_ONE_IN) == 0;
        let id = format!("{:016x}", shared.gen_range(0..u64::MAX));
        tokio::spawn(async move {
            let heartbeats: Arc<dyn Store> =
                Arc::new(SimStore::new(shared.clone(), format!("{name}-heart"), true, None));
            let member = Member {
                membership: Membership::with_id(heartbeats, Duration::from_millis(MEMBER_TIMEOUT_MS), id),
                stale,
                joined: false,
            };
            let store = SimStore::new(shared, name, true, dies_at);
            run.work(&store, WORKER_PASSES_MAX, false, Some(member)).await;
        })
    };
    for w in 0..WORKERS_FIRST {
        let dies_at = (shared.gen_range(0..10) < 5).then(|| shared.gen_range(0..60));
        tasks.push(worker(format!("w{w}"), dies_at));
    }
    let producer = {
        let run = run.clone();
        tokio::spawn(async move { run.produce(work.actions).await })
    };
    let chaos = {
        let run = run.clone();
        tokio::spawn(async move { run.corrupt().await })
    };
    let _ = producer.await;
    let _ = chaos.await;
    // Fresh workers take over from the ones that died.
    for w in 0..shared.gen_range(1..3) {
        tasks.push(worker(format!("fresh{w}"), None));
    }
    for task in tasks {
        // A dead worker never finishes: give up on it (virtual time is free).
        let _ = tokio::time::timeout(Duration::from_secs(3_600), task).await;
    }

    // Quiesce: every lock lapses, then one clean worker settles what it can.
    handle.fetch_add(60_000, std::sync::atomic::Ordering::SeqCst);
    let recovery = SimStore::new(shared.clone(), "recovery".into(), false, None);
    run.blocked.lock().unwrap_or_else(|p| p.into_inner()).clear();
    run.work(&recovery, RECOVERY_PASSES_MAX, true, None).await;
    if let Err(e) = protocol::sweep_markers(&recovery).await {
        shared.violation(format!("the marker sweep failed: {e}"));
    }

    let deliveries = run.deliveries.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let corrupted = run.corrupted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let blocked = run.blocked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let facts = Facts {
        initial: &work.initial,
        deliveries: &deliveries,
        corrupted: &corrupted,
        blocked: &blocked,
    };
    let mut violations = shared.violations.lock().unwrap_or_else(|p| p.into_inner()).clone();
    violations.extend(checker::check(&inner, &facts));
    let trace = shared.trace.lock().unwrap_or_else(|p| p.into_inner()).clone();
    protocol::records::use_virtual_clock(None);
    Report {
        seed,
        violations,
        trace,
        deliveries: deliveries.values().map(Vec::len).sum(),
        crowded,
        xattr_specs_max: shared.xattr_specs_max.load(std::sync::atomic::Ordering::SeqCst),
        pruning_writes: shared.pruning_writes.load(std::sync::atomic::Ordering::SeqCst),
        whole_writes: shared.whole_writes.load(std::sync::atomic::Ordering::SeqCst),
    }
}

/// The command that replays one seed.
pub fn replay_command(seed: u64) -> String {
    format!("ledgerd simulate --seed {seed} --trace")
}

#[cfg(test)]
mod tests;

//! The worker: discovers queued actions, runs the protocol on up to
//! `concurrency` of them at once, and stops cleanly when told to.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::domain::keys::ACTION_PREFIX;
use crate::ops::health::Health;
use crate::ops::names as m;
use crate::protocol::{self, process_attempt, Attempt, Outcome, ProtocolError};
use crate::store::{Bucket, Store};
use collapse::Collapser;
pub use latency::Latencies;
use membership::Membership;
use outage::{Next, Outage};
use pass::Sightings;
use put_off::PutOff;
pub use report::{Footprint, LeftBehind, RunStats};
pub use signal::shutdown_signal;

pub mod collapse;
mod discovery;
pub mod latency;
pub mod membership;
pub mod outage;
mod pass;
pub mod put_off;
mod record;
mod report;
mod signal;

/// First delay before retrying an action that was blocked or failed.
const RETRY_DELAY_MS_MIN: u64 = 1_000;
/// Longest delay before retrying an action that was blocked or failed:
/// Couchbase's longest lock, which holds a blocked action for that long
/// against every replica (`protocol::process_attempt`).
const RETRY_DELAY_MS_MAX: u64 = crate::store::limits::LOCK_SECS_MAX * 1_000;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Actions worked on at once.
    pub concurrency: usize,
    /// Lock time of a claim.
    pub lease: Duration,
    /// Keys read per discovery query.
    pub page_size: usize,
    /// Longest pause between passes when idle.
    pub idle_backoff_max: Duration,
    /// Exit once a full pass claims nothing and nothing is in flight.
    pub exit_when_idle: bool,
    /// How long in-flight actions may run on after shutdown is requested.
    pub shutdown_grace: Duration,
    /// How long another replica's heartbeat may stay unchanged before this
    /// one takes it for dead (see [`membership`]).
    pub member_timeout: Duration,
    /// Divide the queue with the other replicas (see [`membership`]);
    /// without, this worker lists and claims every shard, racing the others
    /// for the same actions (what `bench --unpartitioned` measures).
    pub partition: bool,
}

type Finished = (String, Result<Outcome, ProtocolError>, Duration, Attempt);

/// The delay before attempt `number + 1` of an action whose attempt
/// `number` was blocked or failed: doubling from [`RETRY_DELAY_MS_MIN`] up
/// to [`RETRY_DELAY_MS_MAX`], each drawn between half and all of that
/// (jitter), so that actions blocked together do not all come back at once.
pub fn retry_delay(number: u32) -> Duration {
    let ceiling = RETRY_DELAY_MS_MIN
        .saturating_mul(1 << number.clamp(1, 7).saturating_sub(1))
        .min(RETRY_DELAY_MS_MAX);
    let half = ceiling / 2;
    Duration::from_millis(half + rand::Rng::gen_range(&mut rand::thread_rng(), 0..=ceiling - half))
}

struct Loop {
    store: Arc<dyn Store>,
    cfg: WorkerConfig,
    health: Arc<Health>,
    /// When a failing discovery was last logged at ERROR.
    discovery_logged: Option<tokio::time::Instant>,
    /// A fault of the whole store, as the loop sees it (see `outage.rs`).
    outage: Outage,
    opts: protocol::Options,
    tasks: JoinSet<Finished>,
    /// At most `concurrency` ids.
    in_flight: HashSet<String>,
    /// Actions to leave alone for a while (bounded: see `put_off.rs`).
    put_off: PutOff,
    claims_this_pass: u64,
    stats: RunStats,
    /// This replica's heartbeat and view of the others.
    membership: Membership,
    /// Keys at the head of the queue and since when (one page at most).
    sightings: Sightings,
    /// Unpartitioned: a key of the last page listed, where the next pass
    /// begins (every pass from a different place in the queue).
    last_listed: Option<String>,
    /// Repeated "attempt failed" lines, collapsed per error.
    errors_logged: Collapser,
    /// Repeated "blocked" lines, collapsed per reason.
    blocked_logged: Collapser,
}

/// Runs until `shutdown` completes (or, with `exit_when_idle`, the queue is
/// idle or discovery cannot work), reporting its discovery to `health`.
pub async fn run(
    store: Arc<dyn Store>,
    cfg: WorkerConfig,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> RunStats {
    let opts = protocol::Options {
        lease: cfg.lease,
        ..protocol::Options::default()
    };
    // A key of another member's shard is tried by anyone once it waited at
    // the head of the queue for a lease (its claim may be held that long)
    // and a membership timeout (its owner may be dead that long).
    let stale_after = cfg.lease + cfg.member_timeout;
    let membership = Membership::new(store.clone(), cfg.member_timeout);
    let mut w = Loop {
        store: store.clone(),
        cfg,
        health,
        discovery_logged: None,
        outage: Outage::default(),
        opts,
        tasks: JoinSet::new(),
        in_flight: HashSet::new(),
        put_off: PutOff::default(),
        claims_this_pass: 0,
        stats: RunStats::default(),
        membership,
        sightings: Sightings::new(stale_after),
        last_listed: None,
        errors_logged: Collapser::default(),
        blocked_logged: Collapser::default(),
    };
    tokio::pin!(shutdown);
    crate::lifecycle!(
        store = w.store.describe(),
        concurrency = w.cfg.concurrency,
        lease_ms = w.cfg.lease.as_millis() as u64,
        "worker started"
    );
    tokio::select! {
        _ = &mut shutdown => crate::lifecycle!(
            in_flight = w.tasks.len(),
            grace_ms = w.cfg.shutdown_grace.as_millis() as u64,
            "shutdown requested: no new claims"
        ),
        _ = w.discover() => {}
    }
    w.drain_within_grace().await;
    if w.cfg.partition {
        w.membership.leave().await;
    }
    w.stats.members = w.membership.view().members.len();
    w.stats.footprint = w.footprint();
    w.log_repeats(true);
    crate::lifecycle!(
        completed = w.stats.completed,
        duplicates = w.stats.duplicates,
        failed = w.stats.failed,
        blocked = w.stats.blocked,
        errors = w.stats.errors,
        "worker stopped"
    );
    w.stats
}

impl Loop {
    /// What this worker holds now.
    fn footprint(&self) -> Footprint {
        let (coalescer_slots, lineage_states) = self.opts.coalescer.footprint();
        Footprint {
            in_flight: self.in_flight.len(),
            put_off: self.put_off.len(),
            collapsed_causes: self.errors_logged.len() + self.blocked_logged.len(),
            latency_counters: self.stats.latencies.counters(),
            coalescer_slots,
            lineage_states,
            recently_completed: self.opts.recent.len(),
            head_sightings: self.sightings.len(),
            members_remembered: self.membership.remembered(),
        }
    }

    /// Starts the actions of one page as slots free up, in random order so
    /// that processes reading the same page rarely collide.
    async fn spawn_page(&mut self, page: Vec<String>, semaphore: &Arc<Semaphore>) {
        let mut ids: Vec<String> = page
            .into_iter()
            .filter_map(|k| k.strip_prefix(ACTION_PREFIX).map(str::to_string))
            .collect();
        ids.shuffle(&mut rand::thread_rng());
        let now = Instant::now();
        for id in ids {
            let waiting = self.put_off.listed_and_waiting(&id, now);
            if waiting || self.in_flight.contains(&id) {
                continue;
            }
            let Ok(permit) = semaphore.clone().acquire_owned().await else {
                return;
            };
            self.reap();
            if self.health.store_outage().is_some() {
                // The store as a whole fails: the rest of the page waits
                // for the next pass, after the store works again.
                return;
            }
            self.in_flight.insert(id.clone());
            self.stats.claim_attempts += 1;
            metrics::gauge!(m::IN_FLIGHT).set(self.in_flight.len() as f64);
            self.membership.note_in_flight(self.in_flight.len());
            let (store, opts) = (self.store.clone(), self.opts.clone());
            let number = self.put_off.attempts(&id) + 1;
            let attempt = Attempt {
                number,
                retry_in: retry_delay(number),
            };
            self.tasks.spawn(async move {
                let _permit = permit;
                let started = Instant::now();
                let result = process_attempt(store.as_ref(), &id, &opts, attempt).await;
                (id, result, started.elapsed(), attempt)
            });
        }
    }

    /// While the store is faulted: pauses, lets in-flight attempts end, and
    /// probes the store, until a probe works (`Ok`), or returns the message
    /// to stop with (see [`Outage::wait`]).
    async fn ride_out_store_fault(&mut self) -> Result<(), String> {
        loop {
            match self.outage.wait(&self.health, self.cfg.exit_when_idle).await {
                Next::Resume => return Ok(()),
                Next::Stop(message) => return Err(message),
                Next::Probe => {
                    self.reap();
                    self.log_repeats(false);
                    self.outage.probe(&self.health, self.store.as_ref()).await;
                }
            }
        }
    }

    /// Says, when the queue went idle, what is still in it: locked by
    /// others, blocked, or put off after errors.
    async fn left_behind(&self) -> LeftBehind {
        let mut left = LeftBehind::default();
        // This worker holds nothing now (every task was joined), whatever
        // its last heartbeat said.
        match membership::queue_census(self.store.as_ref(), None, Some(self.membership.id())).await {
            Ok(census) => {
                (left.locked, left.blocked) = (census.locked.unwrap_or(0), census.marked.unwrap_or(0));
            }
            Err(e) => left.unknown = Some(format!("the queue could not be read: {e}")),
        }
        for id in self.put_off.after_errors() {
            match self
                .store
                .get(Bucket::Queue, &crate::domain::keys::action_key(id))
                .await
            {
                Ok(_) => left.after_errors += 1,
                Err(crate::store::StoreError::NotFound) => {}
                Err(e) => left.unknown = Some(format!("the queue could not be read: {e}")),
            }
        }
        left
    }

    /// Logs how often each collapsed line came back in its interval (every
    /// interval still open with `all`).
    fn log_repeats(&mut self, all: bool) {
        let now = Instant::now();
        for r in self.errors_logged.due(now, all) {
            tracing::warn!(
                outcome = "error",
                error = r.cause,
                repeated = r.count,
                last_action = r.last_action,
                over_s = now.duration_since(r.since).as_secs(),
                "more action attempts failed with the same error"
            );
        }
        for r in self.blocked_logged.due(now, all) {
            tracing::error!(
                outcome = "blocked",
                reason = r.cause,
                repeated = r.count,
                last_action = r.last_action,
                over_s = now.duration_since(r.since).as_secs(),
                "more actions blocked for the same reason"
            );
        }
    }

    /// Lets in-flight actions finish within the grace period, then abandons
    /// the rest (their locks lapse; the protocol resumes them elsewhere).
    async fn drain_within_grace(&mut self) {
        let deadline = tokio::time::Instant::now() + self.cfg.shutdown_grace;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(done)) => self.record(done),
                Ok(None) => return,
                Err(_) => {
                    crate::lifecycle!(
                        level: tracing::Level::WARN,
                        abandoned = self.tasks.len(),
                        "grace period over: abandoning in-flight actions"
                    );
                    self.tasks.abort_all();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

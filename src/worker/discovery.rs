//! Discovery: passes over this replica's share of the queue, page by page,
//! starting each action as a slot frees up, until the queue is idle (with
//! `exit_when_idle`) or forever; and what a failing discovery does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use tokio::sync::Semaphore;

use super::pass::{self, Listing, Pass};
use super::report::log_left_behind;
use super::Loop;
use crate::domain::keys::ACTION_PREFIX;
use crate::ops::names as m;
use crate::store::Bucket;

/// First pause after a pass that found nothing to do.
pub(super) const IDLE_BACKOFF_MS_MIN: u64 = 20;
/// First pause after a failed discovery; it doubles with each failure.
pub(super) const DISCOVERY_BACKOFF_MS_MIN: u64 = 100;
/// Longest pause between failed discoveries.
pub(super) const DISCOVERY_BACKOFF_MS_MAX: u64 = 10_000;
/// While discovery keeps failing, it is logged at ERROR at most this often.
pub(super) const DISCOVERY_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// With `exit_when_idle`, how long transient discovery failures may last
/// before the worker gives up (a permanent one stops it at once).
pub(super) const DISCOVERY_FAILING_MAX_WHEN_IDLE: Duration = Duration::from_secs(30);

impl Loop {
    /// Passes over the queue until idle (with `exit_when_idle`) or forever.
    pub(super) async fn discover(&mut self) {
        let semaphore = Arc::new(Semaphore::new(self.cfg.concurrency));
        let mut pass = self.new_pass().await;
        let mut idle = Duration::from_millis(IDLE_BACKOFF_MS_MIN);
        // With `exit_when_idle`: when the queue first looked idle with
        // blocked actions this worker never tried (held locked until their
        // retry time by the process that blocked them).
        let mut waiting_for_held: Option<Instant> = None;
        loop {
            self.reap();
            self.log_repeats(false);
            if let Err(fatal) = self.ride_out_store_fault().await {
                self.stats.stopped = Some(fatal);
                return;
            }
            if self.cfg.partition && !pass.is_everything() && self.membership.due() {
                // The view may change mid-pass (a member joined, left or
                // fell silent): a long pass over a backlog must not hold
                // on to shards it no longer owns, nor leave the new ones.
                let before = self.membership.view().id;
                if self.refresh_membership().await.id != before {
                    pass = self.new_pass().await;
                }
            }
            let now = tokio::time::Instant::now();
            let head = self.cfg.partition && !pass.is_everything() && self.sightings.head_due(now);
            let next = if head {
                Some(Listing::Head)
            } else {
                pass.listing().cloned()
            };
            if let Some(listing) = next {
                let listed = Instant::now();
                let page = self.list(&listing).await;
                metrics::histogram!(m::DISCOVERY_SECONDS).record(listed.elapsed().as_secs_f64());
                let page = match page {
                    Ok(page) => {
                        self.discovery_works();
                        page
                    }
                    Err(crate::store::StoreError::Fault(fault)) => {
                        // The store as a whole, not discovery: paused above.
                        self.outage.faulted(&self.health, &fault);
                        continue;
                    }
                    Err(e) => match self.discovery_failed(&e) {
                        Ok(pause) => {
                            tokio::time::sleep(pause).await;
                            continue;
                        }
                        Err(fatal) => {
                            self.stats.stopped = Some(fatal);
                            return;
                        }
                    },
                };
                let read = page.len() as u64;
                self.stats.discovery_keys += read;
                metrics::counter!(m::DISCOVERY_KEYS).increment(read);
                if !self.cfg.partition {
                    self.last_listed = page
                        .choose(&mut rand::thread_rng())
                        .cloned()
                        .or(self.last_listed.take());
                }
                let keys = match listing {
                    Listing::Head => self.sightings.saw(&page, self.membership.view(), now),
                    _ => pass.take(page, self.cfg.page_size),
                };
                self.spawn_page(keys, &semaphore).await;
                continue;
            }
            // End of a pass: settle everything it started, then decide.
            while let Some(done) = self.tasks.join_next().await {
                self.record(done);
            }
            self.put_off.pass_over();
            let claimed = std::mem::take(&mut self.claims_this_pass);
            if claimed > 0 {
                idle = Duration::from_millis(IDLE_BACKOFF_MS_MIN);
                pass = self.new_pass().await;
            } else if self.cfg.exit_when_idle && !pass.is_everything() && self.cfg.partition {
                // Before exiting, one pass over every key, whoever owns
                // it: an exiting worker leaves nothing it could claim.
                pass = Pass::everything();
            } else if self.cfg.exit_when_idle {
                let left = self.left_behind().await;
                // A blocked action another process holds until its retry
                // time (at most the longest lock) is tried when it comes,
                // once: it may have been repaired since.
                let held = left.blocked > self.put_off.blocked();
                let started = *waiting_for_held.get_or_insert_with(Instant::now);
                if held && started.elapsed() <= crate::store::limits::LOCK_MAX {
                    tokio::time::sleep(idle).await;
                    idle = (idle * 2).min(self.cfg.idle_backoff_max);
                    pass = Pass::everything();
                    continue;
                }
                log_left_behind(&left);
                self.stats.left = Some(left);
                return;
            } else {
                tokio::time::sleep(idle).await;
                idle = (idle * 2).min(self.cfg.idle_backoff_max);
                pass = self.new_pass().await;
            }
        }
    }

    /// A pass over this member's share, after a heartbeat when one is due;
    /// its shards in random order, so that members whose views overlap
    /// for a moment rarely list the same shard at the same time.
    pub(super) async fn new_pass(&mut self) -> Pass {
        if !self.cfg.partition {
            return Pass::everything_from(self.last_listed.take());
        }
        let mut shards = self.refresh_membership().await.shards.clone();
        shards.shuffle(&mut rand::thread_rng());
        Pass::new(shards)
    }

    /// A heartbeat when one is due, and the view in force; the coalescer
    /// learns whether other live workers may write the same wallets.
    async fn refresh_membership(&mut self) -> &super::membership::View {
        let view = self.membership.refresh().await;
        self.opts.coalescer.set_others_write(view.members.len() > 1);
        view
    }

    /// One page of a listing.
    pub(super) async fn list(&self, listing: &Listing) -> crate::store::StoreResult<Vec<String>> {
        let page = self.cfg.page_size;
        match listing {
            Listing::Head => {
                self.store
                    .list_keys(Bucket::Queue, ACTION_PREFIX, None, pass::HEAD_KEYS)
                    .await
            }
            Listing::Share => {
                let range = self.membership.view().range.clone();
                self.store
                    .list_shard_range(Bucket::Queue, ACTION_PREFIX, range, page)
                    .await
            }
            Listing::All { after } => {
                self.store
                    .list_keys(Bucket::Queue, ACTION_PREFIX, after.as_deref(), page)
                    .await
            }
            Listing::Shard { shard, after } => {
                self.store
                    .list_shard_keys(Bucket::Queue, ACTION_PREFIX, *shard, after.as_deref(), page)
                    .await
            }
        }
    }

    /// Notes a failed discovery: counted, shown by `/readyz`, logged at
    /// ERROR once per interval while it lasts. Returns how long to pause
    /// before the next attempt, or, with `exit_when_idle`, the message to
    /// stop with when it cannot work (a permanent error at once, a transient
    /// one after [`DISCOVERY_FAILING_MAX_WHEN_IDLE`]).
    pub(super) fn discovery_failed(&mut self, e: &crate::store::StoreError) -> Result<Duration, String> {
        let failure = self.health.discovery_failed(e);
        let kind = if failure.permanent() { "permanent" } else { "transient" };
        metrics::counter!(m::DISCOVERY_FAILURES, "kind" => kind).increment(1);
        metrics::gauge!(m::DISCOVERY_FAILING).set(1.0);
        if self.cfg.exit_when_idle
            && (failure.permanent() || failure.since.elapsed() >= DISCOVERY_FAILING_MAX_WHEN_IDLE)
        {
            return Err(format!(
                "{}; the worker stops (--exit-when-idle needs a working discovery)",
                failure.describe()
            ));
        }
        if self
            .discovery_logged
            .is_none_or(|at| at.elapsed() >= DISCOVERY_ERROR_LOG_INTERVAL)
        {
            self.discovery_logged = Some(tokio::time::Instant::now());
            tracing::error!(
                error = %e,
                kind,
                attempts = failure.attempts,
                failing_for_s = failure.since.elapsed().as_secs(),
                "discovery is failing: no new actions are claimed; retrying (this is logged once a minute while it lasts)"
            );
        }
        let doubled = DISCOVERY_BACKOFF_MS_MIN.saturating_mul(1 << failure.attempts.min(20));
        Ok(Duration::from_millis(doubled.min(DISCOVERY_BACKOFF_MS_MAX)))
    }

    /// Notes a discovery that worked, ending a failure if one was going on.
    pub(super) fn discovery_works(&mut self) {
        if let Some(ended) = self.health.discovery_ok() {
            metrics::gauge!(m::DISCOVERY_FAILING).set(0.0);
            self.discovery_logged = None;
            tracing::info!(
                attempts = ended.attempts,
                failed_for_s = ended.since.elapsed().as_secs(),
                "discovery works again"
            );
        }
    }
}

//! The queue sampler: depth, actions by state, the oldest queued action
//! and the failed ids, for `/metrics`, and readiness, every interval.

use std::sync::Arc;
use std::time::Duration;

use super::health::{readiness, Health};
use super::names::*;
use crate::domain::keys::FAILED_PREFIX;
use crate::store::{Bucket, Store};
use crate::worker::membership::queue_census;

/// Most queued actions the sampler reads one by one to count them by state
/// on a store that can count them neither in one scan (the embedded
/// stores) nor in one query (Couchbase, from its state index); above it
/// the per-state gauges read NaN. No store ledgerd ships takes that path
/// for the queue.
pub const QUEUE_PROBE_MAX: u64 = 1_000;

/// Samples the queue (depth, by state, the oldest queued action), the
/// failed ids and readiness for `/metrics`, every `interval`, forever
/// (abort the task to stop).
pub async fn sample_queue(store: Arc<dyn Store>, health: Arc<Health>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sample_queue_once(store.as_ref()).await;
        let _ = readiness(store.as_ref(), &health).await;
    }
}

/// One sample (see [`sample_queue`]); what cannot be read reads NaN.
pub async fn sample_queue_once(store: &dyn Store) {
    let census = queue_census(store, Some(QUEUE_PROBE_MAX), None).await;
    metrics::gauge!(QUEUE_DEPTH).set(census.as_ref().map_or(f64::NAN, |c| c.total as f64));
    let (states, oldest) = match &census {
        Ok(c) => {
            let states = c.locked.zip(c.marked).map(|(locked, blocked)| {
                let ready = c.total.saturating_sub(locked).saturating_sub(blocked);
                [ready as f64, locked as f64, blocked as f64]
            });
            let oldest = c.oldest_created_ms.map(|ms| {
                let now = crate::domain::time::unix_ms_now();
                now.saturating_sub(ms) as f64 / 1000.0
            });
            (states, oldest)
        }
        Err(e) => {
            tracing::debug!(error = %e, "sampling the queue failed");
            (None, None)
        }
    };
    let states = states.unwrap_or([f64::NAN; 3]);
    for (state, value) in ["ready", "locked", "blocked"].into_iter().zip(states) {
        metrics::gauge!(QUEUE_ACTIONS, "state" => state).set(value);
    }
    metrics::gauge!(QUEUE_OLDEST_AGE).set(oldest.unwrap_or(f64::NAN));
    let failed = store.count_keys(Bucket::Queue, FAILED_PREFIX).await;
    metrics::gauge!(FAILED_ACTIONS).set(failed.map_or(f64::NAN, |n| n as f64));
}

//! Every metric ledgerd exports, named and described in one place.
//!
//! The `metrics` facade records them; `metrics-exporter-prometheus`
//! renders the Prometheus text format. Without an installed recorder (tests,
//! `--metrics-addr off`) recording is a no-op.

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::store::hooked::{Hook, OpKind};
use crate::store::StoreError;

/// Actions finished, by `outcome`: completed, duplicate, failed, blocked, error.
pub const ACTIONS: &str = "ledgerd_actions_total";
/// Wallet credits applied (one per wallet per completed action).
pub const CREDITS: &str = "ledgerd_credits_total";
/// Units credited.
pub const UNITS: &str = "ledgerd_units_credited_total";
/// Claims refused because another worker held the action.
pub const CLAIM_CONFLICTS: &str = "ledgerd_claim_conflicts_total";
/// Steps retried inside the protocol, by error `kind`.
pub const RETRIES: &str = "ledgerd_retries_total";
/// Actions being worked on now.
pub const IN_FLIGHT: &str = "ledgerd_in_flight_actions";
/// Time to read one page of the queue.
pub const DISCOVERY_SECONDS: &str = "ledgerd_discovery_seconds";
/// Time from claim to outcome, per action.
pub const ACTION_SECONDS: &str = "ledgerd_action_seconds";
/// Store operations, by `op` and `result`.
pub const STORE_OPS: &str = "ledgerd_store_operations_total";
/// Lease renewals, by `result`: renewed, lost.
pub const LEASE_RENEWALS: &str = "ledgerd_lease_renewals_total";
/// Successful wallet writes (each carries one or more coalesced credits).
pub const WALLET_WRITES: &str = "ledgerd_wallet_writes_total";
/// Credits carried by those writes; divided by the writes: credits per write.
pub const WALLET_WRITE_CREDITS: &str = "ledgerd_wallet_write_credits_total";
/// Reads of a transaction record made to prove a credit not yet applied
/// (needed when the wallet changed under another process's write), or to
/// find markers of completed actions on a wallet above its soft maximum.
pub const RECORD_CHECKS: &str = "ledgerd_credit_record_checks_total";
/// Markers of completed actions removed by wallet writes.
pub const MARKERS_PRUNED: &str = "ledgerd_markers_pruned_total";
/// Failed discovery queries, by `kind`: permanent (will not heal by itself:
/// a missing Query service or index, credentials, a dropped bucket) or
/// transient.
pub const DISCOVERY_FAILURES: &str = "ledgerd_discovery_failures_total";
/// 1 while discovery is failing (the worker is then not ready), else 0.
pub const DISCOVERY_FAILING: &str = "ledgerd_discovery_failing";

/// Live members in this replica's view of the membership (itself included).
pub const MEMBERS: &str = "ledgerd_members";
/// Queue shards this replica owns in its view (see `domain::shard`).
pub const SHARDS_OWNED: &str = "ledgerd_shards_owned";
/// Distinct membership views among the live members, as they last
/// published them: 1 when the replicas agree.
pub const MEMBERSHIP_VIEWS: &str = "ledgerd_membership_views";
/// Failed exchanges with the membership document (heartbeat and read).
pub const MEMBERSHIP_FAILURES: &str = "ledgerd_membership_failures_total";
/// Keys read by discovery (divided by the actions finished: keys read per
/// action).
pub const DISCOVERY_KEYS: &str = "ledgerd_discovery_keys_total";

/// 1 while the store as a whole is faulted, by `kind`: disk_full,
/// read_only, io_error, corrupt (claiming is paused meanwhile), else 0.
pub const STORE_FAULT: &str = "ledgerd_store_fault";

/// Queued actions, all states (sampled; every store can tell).
pub const QUEUE_DEPTH: &str = "ledgerd_queue_depth";
/// 1 while the worker is ready (what `/readyz` answers, checked at every
/// queue sample and every `/readyz` request), else 0.
pub const READY: &str = "ledgerd_ready";
/// Queued actions by `state`: ready, locked, blocked (sampled; NaN while
/// the store cannot tell cheaply, see `QUEUE_PROBE_MAX`).
pub const QUEUE_ACTIONS: &str = "ledgerd_queue_actions";
/// Age of the oldest queued action (sampled; NaN where the store cannot tell).
pub const QUEUE_OLDEST_AGE: &str = "ledgerd_queue_oldest_age_seconds";
/// Ids with rejected bodies in `failed:` (sampled).
pub const FAILED_ACTIONS: &str = "ledgerd_failed_actions";
/// Always 1, labelled with the `version` running.
pub const BUILD_INFO: &str = "ledgerd_build_info";

/// Most queued actions the sampler reads one by one to count them by state
/// on a store that can count them neither in one scan (the embedded
/// stores) nor in one query (Couchbase, from its state index); above it
/// the per-state gauges read NaN. No store ledgerd ships takes that path
/// for the queue.
pub const QUEUE_PROBE_MAX: u64 = 1_000;

/// Every label value each counter takes, so that each series exists, at 0,
/// from the start (a rate over a series that appears late is wrong).
fn register_at_zero() {
    for outcome in ["completed", "duplicate", "failed", "blocked", "error", "skipped"] {
        metrics::counter!(ACTIONS, "outcome" => outcome).absolute(0);
    }
    for name in [
        CREDITS,
        UNITS,
        CLAIM_CONFLICTS,
        WALLET_WRITES,
        WALLET_WRITE_CREDITS,
        RECORD_CHECKS,
        MARKERS_PRUNED,
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::counter!(RETRIES, "kind" => "transient").absolute(0);
    for result in ["renewed", "lost"] {
        metrics::counter!(LEASE_RENEWALS, "result" => result).absolute(0);
    }
    for kind in ["permanent", "transient"] {
        metrics::counter!(DISCOVERY_FAILURES, "kind" => kind).absolute(0);
    }
    for op in OpKind::ALL {
        for result in RESULT_LABELS {
            metrics::counter!(STORE_OPS, "op" => op.name(), "result" => *result).absolute(0);
        }
    }
    metrics::gauge!(IN_FLIGHT).set(0.0);
    metrics::gauge!(DISCOVERY_FAILING).set(0.0);
    metrics::counter!(MEMBERSHIP_FAILURES).absolute(0);
    metrics::counter!(DISCOVERY_KEYS).absolute(0);
    for kind in crate::worker::outage::FAULT_KINDS {
        metrics::gauge!(STORE_FAULT, "kind" => kind.name()).set(0.0);
    }
    metrics::gauge!(READY).set(0.0);
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Histogram buckets in seconds, from 1 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the recorder's pending histogram samples are folded into
/// their buckets. The exporter keeps every sample recorded until then (or
/// until a scrape renders them): a worker that nobody scrapes would
/// otherwise keep 8 bytes per histogram sample, several per action, for
/// as long as it runs.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder for this process, describes every
/// metric, and starts its upkeep (every [`UPKEEP_INTERVAL`], on the current
/// tokio runtime, for the life of the process).
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe_counter!(ACTIONS, "Actions finished, by outcome.");
    describe_counter!(CREDITS, "Wallet credits applied.");
    describe_counter!(UNITS, "Units credited.");
    describe_counter!(
        CLAIM_CONFLICTS,
        "Claims refused because another worker held the action."
    );
    describe_counter!(RETRIES, "Protocol steps retried, by error kind.");
    describe_gauge!(IN_FLIGHT, "Actions being worked on now.");
    describe_histogram!(DISCOVERY_SECONDS, Unit::Seconds, "Time to read one page of the queue.");
    describe_histogram!(ACTION_SECONDS, Unit::Seconds, "Time from claim to outcome, per action.");
    describe_counter!(STORE_OPS, "Store operations, by op and result.");
    describe_counter!(LEASE_RENEWALS, "Lease renewals, by result.");
    describe_counter!(WALLET_WRITES, "Successful wallet writes.");
    describe_counter!(
        WALLET_WRITE_CREDITS,
        "Credits carried by wallet writes (more than the writes when credits coalesce)."
    );
    describe_counter!(
        RECORD_CHECKS,
        "Transaction records read to prove a credit not yet applied, or to find markers to prune."
    );
    describe_counter!(MARKERS_PRUNED, "Markers of completed actions removed by wallet writes.");
    describe_counter!(
        DISCOVERY_FAILURES,
        "Failed discovery queries, by kind: permanent or transient."
    );
    describe_gauge!(
        DISCOVERY_FAILING,
        "1 while discovery is failing (the worker is not ready)."
    );
    describe_gauge!(
        STORE_FAULT,
        "1 while the store as a whole is faulted, by kind: disk_full, read_only, io_error, corrupt (no actions are claimed)."
    );
    describe_gauge!(QUEUE_DEPTH, "Queued actions, all states (sampled).");
    describe_gauge!(READY, "1 while the worker is ready (as /readyz answers), else 0.");
    describe_gauge!(
        QUEUE_ACTIONS,
        "Queued actions by state (sampled): ready, locked, blocked."
    );
    describe_gauge!(
        QUEUE_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest queued action (sampled; NaN where the store cannot tell)."
    );
    describe_gauge!(FAILED_ACTIONS, "Action ids with rejected bodies in failed: (sampled).");
    describe_gauge!(BUILD_INFO, "1, labelled with the running version.");
    describe_gauge!(MEMBERS, "Live members in this replica's view, itself included.");
    describe_gauge!(SHARDS_OWNED, "Queue shards this replica owns in its view.");
    describe_gauge!(
        MEMBERSHIP_VIEWS,
        "Distinct membership views among the live members (1 when they agree)."
    );
    describe_counter!(MEMBERSHIP_FAILURES, "Failed exchanges with the membership document.");
    describe_counter!(DISCOVERY_KEYS, "Keys read by discovery.");
    register_at_zero();
    tokio::spawn(upkeep(handle.clone()));
    Ok(handle)
}

/// Folds pending histogram samples into their buckets, every
/// [`UPKEEP_INTERVAL`], forever: what bounds the recorder's memory when
/// nothing scrapes `/metrics`.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut every = tokio::time::interval(UPKEEP_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

/// Every value [`result_label`] gives.
const RESULT_LABELS: &[&str] = &[
    "ok",
    "not_found",
    "exists",
    "cas_mismatch",
    "locked",
    "ambiguous",
    "transient",
    "permanent",
    "limit_exceeded",
    "path_not_found",
    "fault",
];

/// The label value of a store result.
pub fn result_label(error: Option<&StoreError>) -> &'static str {
    match error {
        None => "ok",
        Some(StoreError::NotFound) => "not_found",
        Some(StoreError::Exists) => "exists",
        Some(StoreError::CasMismatch) => "cas_mismatch",
        Some(StoreError::Locked) => "locked",
        Some(StoreError::Ambiguous(_)) => "ambiguous",
        Some(StoreError::Transient(_)) => "transient",
        Some(StoreError::Permanent(_)) => "permanent",
        Some(StoreError::LimitExceeded(_)) => "limit_exceeded",
        Some(StoreError::PathNotFound(_)) => "path_not_found",
        Some(StoreError::Fault(_)) => "fault",
    }
}

/// Counts every store operation by kind and result.
pub struct StoreMetrics;

#[async_trait::async_trait]
impl Hook for StoreMetrics {
    fn after(&self, kind: OpKind, _key: &str, error: Option<&StoreError>) {
        metrics::counter!(STORE_OPS, "op" => kind.name(), "result" => result_label(error)).increment(1);
    }
    fn watches_only(&self) -> bool {
        true
    }
}

/// Samples the queue (depth, by state, the oldest queued action), the
/// failed ids and readiness for `/metrics`, every `interval`, forever
/// (abort the task to stop).
pub async fn sample_queue(
    store: std::sync::Arc<dyn crate::store::Store>,
    health: std::sync::Arc<crate::ops::health::Health>,
    interval: std::time::Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sample_queue_once(store.as_ref()).await;
        let _ = crate::ops::health::readiness(store.as_ref(), &health).await;
    }
}

/// One sample (see [`sample_queue`]); what cannot be read reads NaN.
pub async fn sample_queue_once(store: &dyn crate::store::Store) {
    use crate::domain::keys::FAILED_PREFIX;
    use crate::store::Bucket;
    let census = crate::worker::membership::queue_census(store, Some(QUEUE_PROBE_MAX)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_result_label_is_registered() {
        let errors = [
            None,
            Some(StoreError::NotFound),
            Some(StoreError::Exists),
            Some(StoreError::CasMismatch),
            Some(StoreError::Locked),
            Some(StoreError::Ambiguous(String::new())),
            Some(StoreError::Transient(String::new())),
            Some(StoreError::Permanent(String::new())),
            Some(StoreError::LimitExceeded(String::new())),
            Some(StoreError::PathNotFound(String::new())),
            Some(StoreError::Fault(crate::store::StoreFault::new(
                crate::store::FaultKind::Full,
                String::new(),
            ))),
        ];
        let labels: Vec<&str> = errors.iter().map(|e| result_label(e.as_ref())).collect();
        assert_eq!(labels, RESULT_LABELS);
    }
}

//! Every metric ledgerd exports, described in one place (named in
//! `names.rs`), and the exporter.
//!
//! The `metrics` facade records them; `metrics-exporter-prometheus`
//! renders the Prometheus text format. Without an installed recorder (tests,
//! `--metrics-addr off`) recording is a no-op.

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::names::*;
use crate::store::hooked::{Hook, OpKind};
use crate::store::{FaultKind, StoreError};

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
    for kind in FaultKind::ALL {
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

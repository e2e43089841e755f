//! Every metric ledgerd exports, named and described in one place.
//!
//! The `metrics` facade records them; `metrics-exporter-prometheus`
//! renders the Prometheus text format. Without an installed recorder (tests,
//! `--metrics-addr off`) recording is a no-op.

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

/// Histogram buckets in seconds, from 1 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the Prometheus recorder for this process and describes every metric.
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
    Ok(handle)
}

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
    }
}

/// Counts every store operation by kind and result.
pub struct StoreMetrics;

#[async_trait::async_trait]
impl Hook for StoreMetrics {
    fn after(&self, kind: OpKind, _key: &str, error: Option<&StoreError>) {
        metrics::counter!(STORE_OPS, "op" => kind.name(), "result" => result_label(error)).increment(1);
    }
}

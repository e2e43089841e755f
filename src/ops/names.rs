//! The name of every metric ledgerd exports, and the values of its labels
//! that more than one module writes: a leaf, so that the protocol, the
//! worker and the exporter all name a metric the same way without
//! importing each other.

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

/// Every value [`result_label`] gives.
pub const RESULT_LABELS: &[&str] = &[
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

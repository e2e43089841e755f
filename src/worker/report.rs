//! What a worker run reports: its stats by outcome, the tables it holds,
//! and what `--exit-when-idle` left in the queue.

use super::latency::Latencies;

/// What a worker did, by outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunStats {
    /// Actions credited and removed.
    pub completed: u64,
    /// Duplicate deliveries removed without credit.
    pub duplicates: u64,
    /// Actions rejected into `failed:`.
    pub failed: u64,
    /// Attempts that found a wallet blocking the action.
    pub blocked: u64,
    /// Attempts that ended in an error (the action stays queued).
    pub errors: u64,
    /// Units credited.
    pub units: u128,
    /// Claims tried (each a get-and-lock of a queued action).
    pub claim_attempts: u64,
    /// Keys read by discovery.
    pub discovery_keys: u64,
    /// Live members in this replica's last view of the membership.
    pub members: usize,
    /// Claim-to-completion times of the completed actions, as a histogram
    /// of fixed size (never one sample per action).
    pub latencies: Latencies,
    /// Why the worker stopped before the queue was idle (with
    /// `exit_when_idle`, a discovery that cannot work), if it did.
    pub stopped: Option<String>,
    /// With `exit_when_idle`: what it left in the queue when it went idle.
    pub left: Option<LeftBehind>,
    /// What the worker held when it stopped.
    pub footprint: Footprint,
}

/// What a worker holds, table by table, in entries: each is bounded by
/// configuration, never by the actions processed (docs/operations.md lists
/// the bounds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Actions in flight (at most `concurrency`).
    pub in_flight: usize,
    /// Actions put off after a blocked or failed attempt (at most
    /// [`PUT_OFF_MAX`](super::put_off::PUT_OFF_MAX), and only those still queued).
    pub put_off: usize,
    /// Log causes with an open collapse window, both tables (at most
    /// [`COLLAPSE_CAUSES_MAX`](super::collapse::COLLAPSE_CAUSES_MAX) + 1 each).
    pub collapsed_causes: usize,
    /// Counters of the latency histogram (fixed).
    pub latency_counters: usize,
    /// The coalescer's wallet slots (at most [`SLOTS_MAX`](crate::protocol::SLOTS_MAX)
    /// beyond those in use).
    pub coalescer_slots: usize,
    /// Wallet states in the slots' lineages (at most
    /// [`LINEAGE_MAX`](crate::protocol::LINEAGE_MAX) per slot, none older than the longest lock).
    pub lineage_states: usize,
    /// Action ids remembered as completed (at most
    /// [`RECENT_COMPLETED_MAX`](crate::protocol::RECENT_COMPLETED_MAX)).
    pub recently_completed: usize,
    /// Keys remembered at the head of the queue (at most
    /// [`HEAD_KEYS`](super::pass::HEAD_KEYS)).
    pub head_sightings: usize,
    /// Members remembered (at most [`MEMBERS_MAX`](super::membership::MEMBERS_MAX)).
    pub members_remembered: usize,
}

/// What `--exit-when-idle` left in the queue: nothing it could claim, but
/// not necessarily nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeftBehind {
    /// Actions locked by other workers (or by a worker that died, until
    /// its lease lapses).
    pub locked: u64,
    /// Actions whose last attempt was blocked.
    pub blocked: u64,
    /// Actions this worker put off after an attempt failed with an error.
    pub after_errors: u64,
    /// Why the queue could not be read to say so, if it could not.
    pub unknown: Option<String>,
}

impl LeftBehind {
    /// Whether the run should end as a failure: something is blocked, or
    /// was given up on after errors, or nobody can tell.
    pub fn needs_attention(&self) -> bool {
        self.blocked > 0 || self.after_errors > 0 || self.unknown.is_some()
    }
}

/// Says, as a worker run with `exit_when_idle` exits, what it left.
pub(super) fn log_left_behind(left: &LeftBehind) {
    if left.needs_attention() {
        crate::lifecycle!(
            level: tracing::Level::ERROR,
            left_locked = left.locked,
            left_blocked = left.blocked,
            left_after_errors = left.after_errors,
            unknown = left.unknown.as_deref(),
            "queue idle: exiting, leaving work behind (see `ledgerd queue`)"
        );
    } else {
        crate::lifecycle!(left_locked = left.locked, "queue idle: exiting");
    }
}

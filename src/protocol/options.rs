//! How one action is processed: the lease, the rounds of wallet writes,
//! the shared coalescer and the actions known completed.

use std::sync::Arc;
use std::time::Duration;

use super::coalesce::{Coalescer, WriteRules};
use super::recent::RecentlyCompleted;

/// Tuning of one action's processing.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lock time of the claim.
    pub lease: Duration,
    /// Rounds of wallet writes before giving up on contention for now.
    pub apply_rounds_max: u32,
    /// Actions known completed, shared by a process's workers.
    pub recent: Arc<RecentlyCompleted>,
    /// Folds concurrent credits to one wallet into one write; one per process.
    pub coalescer: Arc<Coalescer>,
    /// Markers a wallet may carry before each write must remove as many
    /// markers of completed actions as it adds (see `wallet::plan`).
    pub wallet_markers_soft_max: usize,
}

/// Default soft maximum of markers per wallet. A marker takes about 100
/// bytes (at most about 600 with the longest action id), so 256 keep a
/// wallet's xattrs near 25 KiB and below 160 KiB at worst, far from
/// Couchbase's 20 MiB item limit, and every read of the wallet small.
pub const WALLET_MARKERS_SOFT_MAX: usize = 256;

impl Default for Options {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            apply_rounds_max: 32,
            recent: Arc::default(),
            coalescer: Arc::default(),
            wallet_markers_soft_max: WALLET_MARKERS_SOFT_MAX,
        }
    }
}

impl Options {
    /// What the coalescer's wallet writes need of these options.
    pub(crate) fn rules(&self) -> WriteRules<'_> {
        WriteRules {
            apply_rounds_max: self.apply_rounds_max,
            wallet_markers_soft_max: self.wallet_markers_soft_max,
            recent: &self.recent,
        }
    }
}

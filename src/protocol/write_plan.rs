//! How many credits and marker removals go into one wallet write: pure
//! arithmetic, kept apart so that its rules can be checked exhaustively.
//!
//! One write is one sub-document multi-mutation: the new balance (the body
//! spec) plus its marker changes, at most [`SUBDOC_SPECS_MAX`] specs in all.
//! The changes go in one of two forms:
//! - **by path**: one xattr spec per credit's marker and per pruned marker,
//!   when they all fit. Credits come first: pruning only fills the slots
//!   they leave, except when the wallet carries more than its soft maximum
//!   of markers. Then each write removes at least as many markers of
//!   completed actions as it adds (when it knows that many), so that the
//!   markers of finished work cannot pile up, while credits still go
//!   through in every write: a credit never waits for the marker count.
//! - **whole**: when more credits wait than the paths can carry, ONE spec
//!   replaces the whole markers object (`ledger.applied`) with what the
//!   write leaves: the markers read, less those pruned, plus the new ones.
//!   The write is conditional on the CAS of the state the markers were read
//!   in (or is an insert), so the object it sends is exactly that state's,
//!   changed by this write alone. It carries up to
//!   [`WHOLE_WRITE_CREDITS_MAX`] credits and every known prunable marker:
//!   a hot wallet takes a whole batch of credits in one write, where by
//!   path it took about 7 (each credit's marker added, an older one pruned).
//!
//! Markers of actions still in progress are never removed (that is what
//! makes a retried credit safe), so a wallet holds at most its soft maximum
//! plus one write's worth of markers of completed actions, plus one per
//! action in progress anywhere (bounded by the workers' concurrency).

use crate::store::limits::SUBDOC_SPECS_MAX;

/// Xattr specs one wallet write may carry: the body takes one spec.
pub(crate) const WRITE_XATTR_SPECS_MAX: usize = SUBDOC_SPECS_MAX - 1;

/// Most credits one whole-object write carries: with markers of at most
/// about 600 bytes, its object stays below a few hundred KiB, far from
/// Couchbase's 20 MiB item limit.
pub(crate) const WHOLE_WRITE_CREDITS_MAX: usize = 256;

/// The shape of the next write of a wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WritePlan {
    /// Credits (markers added) to carry, from the front of the queue.
    pub credits: usize,
    /// Markers of completed actions to remove.
    pub prunes: usize,
    /// Prunable markers the plan would use if it knew them (the caller may
    /// confirm more completed actions and plan again).
    pub prunes_wanted: usize,
    /// The marker changes go as one spec: the whole markers object.
    pub whole: bool,
}

/// Plans one write: `markers` on the wallet now, `pending` credits waiting,
/// `prunable` markers known to belong to completed actions, and the
/// wallet's soft maximum of markers.
pub(crate) fn plan(markers: usize, pending: usize, prunable: usize, soft_max: usize) -> WritePlan {
    // Above the soft maximum, a write removes as many completed markers as
    // it adds (up to what is known), so that the count does not grow.
    let required = |credits: usize, known: usize| (markers + credits).saturating_sub(soft_max).min(known).min(credits);
    let slots = WRITE_XATTR_SPECS_MAX;
    let mut credits = pending.min(slots);
    while credits > 1 && credits + required(credits, prunable) > slots {
        credits -= 1;
    }
    if credits < pending {
        let credits = pending.min(WHOLE_WRITE_CREDITS_MAX);
        return WritePlan {
            credits,
            prunes: prunable,
            prunes_wanted: required(credits, usize::MAX).max(prunable),
            whole: true,
        };
    }
    let prunes = prunable.min(slots - credits);
    let prunes_wanted = required(credits, usize::MAX).max(prunes);
    WritePlan {
        credits,
        prunes,
        prunes_wanted,
        whole: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_first_then_pruning_in_the_spare_slots() {
        assert_eq!(
            plan(3, 15, 20, 256),
            WritePlan {
                credits: 15,
                prunes: 0,
                prunes_wanted: 0,
                whole: false,
            }
        );
        assert_eq!(plan(3, 4, 20, 256).credits, 4);
        assert_eq!(plan(3, 4, 20, 256).prunes, 11);
        assert_eq!(plan(0, 0, 0, 256).credits, 0);
    }

    #[test]
    fn more_credits_than_paths_go_whole_with_every_known_prune() {
        assert_eq!(
            plan(3, 40, 20, 256),
            WritePlan {
                credits: 40,
                prunes: 20,
                prunes_wanted: 20,
                whole: true,
            }
        );
        assert_eq!(plan(3, 1_000, 0, 256).credits, WHOLE_WRITE_CREDITS_MAX);
        // 7 credits and 8 prunes fit by path; 8 waiting do not.
        assert!(!plan(300, 7, 20, 256).whole);
        assert!(plan(300, 8, 20, 256).whole);
    }

    #[test]
    fn above_the_soft_maximum_every_write_prunes_as_much_as_it_adds() {
        let p = plan(300, 7, 20, 256);
        assert_eq!((p.credits, p.prunes), (7, 8));
        let p = plan(300, 40, 20, 256);
        assert_eq!((p.credits, p.prunes, p.whole), (40, 20, true));
        assert!(p.prunes_wanted >= 40, "{p:?}");
        // Nothing known to prune: the credits still go through.
        let p = plan(300, 15, 0, 256);
        assert_eq!((p.credits, p.prunes), (15, 0));
        assert!(p.prunes_wanted >= 15, "{p:?}");
        // Crossing the soft maximum within one write, by path and whole.
        let p = plan(250, 10, 20, 256);
        assert!(!p.whole && p.credits + p.prunes <= 15);
        assert!(250 + p.credits - p.prunes <= 256 + 15);
        let p = plan(250, 15, 20, 256);
        assert!(p.whole && 250 + p.credits - p.prunes <= 256);
    }

    /// Exhaustively over small inputs: within the spec limit (by path) or
    /// the credit limit (whole), every waiting credit in the write when
    /// paths cannot carry them all, a credit in every write that has one
    /// waiting, and never growth above the soft maximum while enough
    /// completed markers are known.
    #[test]
    fn every_plan_fits_and_makes_progress() {
        for soft in [0, 4, 16, 256] {
            for markers in 0..300 {
                for pending in (0..40).chain([255, 256, 257, 1_000]) {
                    for prunable in 0..=markers.min(20) {
                        let p = plan(markers, pending, prunable, soft);
                        match p.whole {
                            false => assert!(p.credits + p.prunes <= WRITE_XATTR_SPECS_MAX, "{p:?}"),
                            true => {
                                assert_eq!(p.credits, pending.min(WHOLE_WRITE_CREDITS_MAX), "{p:?}");
                                assert!(pending > WRITE_XATTR_SPECS_MAX / 2, "{p:?}");
                            }
                        }
                        assert!(p.prunes <= prunable && p.credits <= pending, "{p:?}");
                        assert_eq!(p.credits == 0, pending == 0, "{markers} {pending} {prunable} {p:?}");
                        let after = markers + p.credits - p.prunes;
                        if after > soft.max(markers) {
                            assert!(prunable < p.credits, "grew with prunable markers known: {p:?}");
                        }
                    }
                }
            }
        }
    }
}

//! How many credits and marker removals go into one wallet write: pure
//! arithmetic, kept apart so that its rules can be checked exhaustively.
//!
//! One write is one sub-document multi-mutation: the new balance (the body
//! spec) plus one xattr spec per credit's marker and per pruned marker, at
//! most [`SUBDOC_SPECS_MAX`] in all. Credits come first: pruning only fills
//! the slots they leave, except when the wallet carries more than its soft
//! maximum of markers. Then each write removes at least as many markers of
//! completed actions as it adds (when it knows that many), so that the
//! markers of finished work cannot pile up, while credits still go through
//! in every write: a credit never waits for the marker count.
//!
//! Markers of actions still in progress are never removed (that is what
//! makes a retried credit safe), so a wallet holds at most its soft maximum
//! plus one write's worth of markers of completed actions, plus one per
//! action in progress anywhere (bounded by the workers' concurrency).

use crate::store::limits::SUBDOC_SPECS_MAX;

/// Xattr specs one wallet write may carry: the body takes one spec.
pub(crate) const WRITE_XATTR_SPECS_MAX: usize = SUBDOC_SPECS_MAX - 1;

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
}

/// Plans one write: `markers` on the wallet now, `pending` credits waiting,
/// `prunable` markers known to belong to completed actions, and the
/// wallet's soft maximum of markers.
pub(crate) fn plan(markers: usize, pending: usize, prunable: usize, soft_max: usize) -> WritePlan {
    let slots = WRITE_XATTR_SPECS_MAX;
    // Above the soft maximum, a write removes as many completed markers as
    // it adds (up to what is known), so that the count does not grow.
    let required = |credits: usize, known: usize| (markers + credits).saturating_sub(soft_max).min(known).min(credits);
    let mut credits = pending.min(slots);
    while credits > 1 && credits + required(credits, prunable) > slots {
        credits -= 1;
    }
    let prunes = prunable.min(slots - credits);
    let prunes_wanted = required(credits, usize::MAX).max(prunes);
    WritePlan {
        credits,
        prunes,
        prunes_wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_first_then_pruning_in_the_spare_slots() {
        assert_eq!(
            plan(3, 40, 20, 256),
            WritePlan {
                credits: 15,
                prunes: 0,
                prunes_wanted: 0
            }
        );
        assert_eq!(plan(3, 4, 20, 256).credits, 4);
        assert_eq!(plan(3, 4, 20, 256).prunes, 11);
        assert_eq!(plan(0, 0, 0, 256).credits, 0);
    }

    #[test]
    fn above_the_soft_maximum_every_write_prunes_as_much_as_it_adds() {
        let p = plan(300, 40, 20, 256);
        assert_eq!((p.credits, p.prunes), (7, 8));
        // Nothing known to prune: the credits still go through.
        let p = plan(300, 40, 0, 256);
        assert_eq!((p.credits, p.prunes), (15, 0));
        assert!(p.prunes_wanted >= 15, "{p:?}");
        // Crossing the soft maximum within one write.
        let p = plan(250, 40, 20, 256);
        assert!(p.credits + p.prunes <= 15);
        assert!(250 + p.credits - p.prunes <= 256 + 15);
    }

    /// Exhaustively over small inputs: within the spec limit, a credit in
    /// every write that has one waiting, and never growth above the soft
    /// maximum while enough completed markers are known.
    #[test]
    fn every_plan_fits_and_makes_progress() {
        for soft in [0, 4, 16, 256] {
            for markers in 0..300 {
                for pending in 0..20 {
                    for prunable in 0..=markers.min(20) {
                        let p = plan(markers, pending, prunable, soft);
                        assert!(p.credits + p.prunes <= WRITE_XATTR_SPECS_MAX, "{p:?}");
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

//! One write of a wallet, built on one state of it: the new balance and
//! the marker changes in one sub-document mutation, within Couchbase's
//! limits. [`plan`] decides its shape; [`Write`] builds it.
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

use serde_json::Value;

use super::{Prune, State};
use crate::domain::keys::{balance_key, MARKERS_XATTR};
use crate::domain::{Marker, MarkerName, Markers, Units};
use crate::store::limits::SUBDOC_SPECS_MAX;
use crate::store::{Bucket, Cas, GroupWrite, Store, StoreResult, WriteMode};

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

/// A wallet write, ready to send alone ([`Write::send`]) or in a group
/// ([`Write::to_group`]).
#[derive(Debug, Clone)]
pub(crate) struct Write {
    key: String,
    body: Vec<u8>,
    /// The xattr changes: a value to set (a marker, or the whole markers
    /// object) or `None` to remove a path.
    changes: Vec<(String, Option<Value>)>,
    mode: WriteMode,
    balance: Units,
    /// The markers the write leaves.
    markers: Markers,
    removed: usize,
}

impl Write {
    /// The write of wallet `hash` from state `on` to `balance`, adding the
    /// markers `added` and removing `prunes`.
    ///
    /// The changes go by path (one spec each) when they fit in one
    /// mutation, else as ONE spec replacing the whole markers object with
    /// what this write leaves: the state's markers, less the prunes, plus
    /// the added. Either way the write is conditional on `on` (its CAS, or
    /// an insert when it is absent), so it changes exactly that state.
    ///
    /// # Panics
    /// On a broken invariant, which is a defect of the caller, never of
    /// the data: a marker added that `on` already carries, or added twice;
    /// a prune of a marker `on` does not carry; more markers than one
    /// write may carry.
    pub(crate) fn new(
        hash: &str,
        on: &State,
        balance: Units,
        added: &[(MarkerName, Marker<'_>)],
        prunes: &[Prune],
    ) -> Self {
        let before = on.markers();
        for (i, (name, marker)) in added.iter().enumerate() {
            assert!(
                !before.contains(name) && !added[..i].iter().any(|(n, _)| n == name),
                "wallet {hash}: marker {name} would be added twice (a credit applied twice)"
            );
            debug_assert!(
                marker.action().is_none_or(|a| MarkerName::of_action(a) == *name),
                "marker {name} is not {marker:?}'s"
            );
        }
        for prune in prunes {
            assert!(
                before.contains(prune.name()),
                "wallet {hash}: pruning marker {} that the state does not carry",
                prune.name()
            );
        }
        assert!(
            added.len() <= WHOLE_WRITE_CREDITS_MAX,
            "wallet {hash}: {} markers in one write",
            added.len()
        );
        let values: Vec<(MarkerName, Value)> = added
            .iter()
            .filter_map(|(name, marker)| Some((name.clone(), marker.to_value()?)))
            .collect();
        let removed: Vec<MarkerName> = prunes.iter().map(|p| p.name().clone()).collect();
        let markers = before.after(&removed, &values);
        let changes = match values.len() + removed.len() > WRITE_XATTR_SPECS_MAX {
            // One spec: the whole object this write leaves, exactly the
            // state it is conditional on, changed by this write alone.
            true => vec![(MARKERS_XATTR.to_string(), Some(markers.to_value()))],
            false => values
                .into_iter()
                .map(|(name, value)| (name.path(), Some(value)))
                .chain(removed.iter().map(|name| (name.path(), None)))
                .collect(),
        };
        let mode = match on {
            State::Absent => WriteMode::Insert,
            State::Present { cas, .. } | State::Invalid { cas, .. } => WriteMode::Replace(*cas),
        };
        Self {
            key: balance_key(hash),
            body: balance.get().to_string().into_bytes(),
            changes,
            mode,
            balance,
            markers,
            removed: prunes.len(),
        }
    }

    /// The same write, conditional on the CAS of the lock held on the
    /// wallet instead (a locked document answers reads with no CAS).
    pub(crate) fn under_lock(mut self, cas: Cas) -> Self {
        self.mode = WriteMode::Replace(cas);
        self
    }

    /// Sends it alone: the CAS of the state it leaves.
    pub(crate) async fn send(&self, store: &dyn Store) -> StoreResult<Cas> {
        let changes = crate::store::group::xattr_refs(&self.changes);
        store
            .write_with_xattrs(Bucket::Ledger, &self.key, &self.body, &changes, self.mode)
            .await
    }

    /// It, as one write of a group.
    pub(crate) fn to_group(&self) -> GroupWrite {
        GroupWrite::WriteWithXattrs {
            bucket: Bucket::Ledger,
            key: self.key.clone(),
            body: self.body.clone(),
            xattrs: self.changes.clone(),
            mode: self.mode,
        }
    }

    /// Markers it removes.
    pub(crate) fn removed(&self) -> usize {
        self.removed
    }

    /// The state it left, once the store answered with `cas`.
    pub(crate) fn landed(&self, cas: Cas) -> State {
        State::Present {
            balance: self.balance,
            cas,
            markers: self.markers.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RecentlyCompleted;

    fn credit(id: &str) -> (MarkerName, Marker<'_>) {
        (MarkerName::of_action(id), Marker::credit(id, Units::ZERO, 1))
    }

    fn state_with(ids: &[&str]) -> State {
        let absent = State::Absent;
        let added: Vec<_> = ids.iter().map(|id| credit(id)).collect();
        Write::new("w", &absent, Units::ZERO, &added, &[]).landed(7)
    }

    #[test]
    fn few_changes_go_by_path_and_many_go_whole() {
        let on = state_with(&["a", "b"]);
        let recent = RecentlyCompleted::default();
        recent.insert("a");
        let prunes = on.known_completed(&recent);
        assert_eq!(prunes.len(), 1);
        let w = Write::new("w", &on, Units::ZERO, &[credit("c")], &prunes);
        assert_eq!(w.mode, WriteMode::Replace(7));
        assert_eq!(w.changes.len(), 2);
        assert_eq!(w.changes[1], (MarkerName::of_action("a").path(), None));
        let State::Present { markers, .. } = w.landed(8) else {
            panic!("a write leaves a present state")
        };
        assert!(markers.contains(&MarkerName::of_action("c")) && !markers.contains(&MarkerName::of_action("a")));

        let ids: Vec<String> = (0..WRITE_XATTR_SPECS_MAX).map(|i| format!("n{i}")).collect();
        let many: Vec<_> = ids.iter().map(|id| credit(id)).collect();
        let w = Write::new("w", &on, Units::ZERO, &many, &prunes);
        assert_eq!(w.changes.len(), 1, "{} changes go whole", WRITE_XATTR_SPECS_MAX + 1);
        assert_eq!(w.changes[0].0, MARKERS_XATTR);
        let Some(Some(Value::Object(sent))) = w.changes.first().map(|c| c.1.clone()) else {
            panic!("the whole object")
        };
        assert_eq!(sent.len(), 2 - 1 + WRITE_XATTR_SPECS_MAX);
    }

    #[test]
    #[should_panic(expected = "added twice")]
    fn a_marker_the_state_carries_is_never_added_again() {
        let on = state_with(&["a"]);
        Write::new("w", &on, Units::ZERO, &[credit("a")], &[]);
    }

    #[test]
    #[should_panic(expected = "added twice")]
    fn one_write_never_adds_a_marker_twice() {
        Write::new("w", &State::Absent, Units::ZERO, &[credit("a"), credit("a")], &[]);
    }

    #[test]
    fn only_completed_work_makes_a_prune() {
        let on = state_with(&["a"]);
        let (name, marker) = credit("a");
        let markers = on.markers();
        let (found, _) = markers.iter().next().expect("the state carries a");
        assert_eq!(found.to_name(), name);
        assert_eq!(Prune::known(found, &marker, &RecentlyCompleted::default()), None);
        use crate::domain::{Mode, Plan};
        use crate::protocol::records::{TxRecord, TxState};
        let plan = Plan {
            mode: Mode::Amount,
            credits: Vec::new(),
            total: Units::ZERO,
            digest: String::new(),
        };
        let record = |state| TxRecord {
            state,
            ..TxRecord::committed("a", &plan)
        };
        assert_eq!(Prune::by_record(name.clone(), "a", &record(TxState::Committed)), None);
        assert_eq!(Prune::by_record(name.clone(), "b", &record(TxState::Completed)), None);
        let prune = Prune::by_record(name, "a", &record(TxState::Completed)).expect("completed");
        let w = Write::new("w", &on, Units::ZERO, &[], &[prune]);
        assert_eq!(w.removed(), 1);
    }

    #[test]
    #[should_panic(expected = "does not carry")]
    fn a_prune_of_a_marker_not_on_the_state_is_refused() {
        let on = state_with(&["a"]);
        let recent = RecentlyCompleted::default();
        recent.insert("a");
        let prunes = on.known_completed(&recent);
        Write::new("w", &State::Absent, Units::ZERO, &[], &prunes);
    }

    // How a write is shaped (`plan`).

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

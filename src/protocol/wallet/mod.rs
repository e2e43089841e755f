//! A wallet, and the only code that writes one.
//!
//! A wallet's [`State`] (balance, CAS, markers) is read in one atomic
//! lookup; every write of a wallet is a [`Write`] built on one state: the
//! new balance and its marker changes in ONE sub-document mutation,
//! conditional on that state's CAS (or an insert, on no document). The
//! credit path (the write group, `steps.rs`), the coalescer and
//! `adjust` all build their writes here; pruning a single marker
//! ([`remove_marker`]) is here too. Two invariants are asserted where a
//! write is built, for every caller:
//! - a marker is never added to a state that carries it (that would be a
//!   credit applied twice);
//! - only markers of completed work are removed: a [`Prune`] can only be
//!   made from proof that the action completed (or the adjustment was
//!   applied), so a retried credit always finds its marker.
//!
//! How many credits and prunes one write carries is [`plan`]'s rule
//! (`write.rs`).

use super::records::{now_ms, AdjRecord, AdjState, TxRecord, TxState};
use super::{read_tx, retry, RecentlyCompleted, Result};
use crate::domain::keys::{balance_key, MARKERS_XATTR};
use crate::domain::{Credit, FoundName, Marker, MarkerName, Markers, Units};
use crate::store::{Bucket, Cas, Store, StoreError};
#[cfg(test)]
pub(crate) use write::WHOLE_WRITE_CREDITS_MAX;
pub(crate) use write::{plan, Write, WRITE_XATTR_SPECS_MAX};

mod write;

/// Leftover markers of other actions older than this are worth checking
/// (a heuristic for work only: pruning still requires a completed record).
const FOREIGN_MARKER_AGE_MS_MIN: u64 = 60_000;
/// Most leftover markers one action checks for pruning.
pub(crate) const FOREIGN_MARKERS_CHECKED_MAX: usize = 4;

/// A wallet's state at one moment: its document, or the lack of one. The
/// one type for a wallet as read, by the credit path and by audits alike.
#[derive(Debug, Clone)]
pub enum State {
    /// No `balance:<hash>` document.
    Absent,
    /// A valid balance.
    Present {
        /// The balance in units.
        balance: Units,
        /// The CAS of this state: it names the state (a CAS is never reused).
        cas: Cas,
        /// Its markers.
        markers: Markers,
    },
    /// The document exists but is not a valid balance: credits wait until
    /// an operator repairs it (`adjust --to`, which keeps its markers).
    Invalid {
        /// What is wrong with its balance.
        error: String,
        /// The start of the body as stored, for the operator.
        shown: String,
        /// The CAS of this state.
        cas: Cas,
        /// Its markers.
        markers: Markers,
    },
}

/// Which state of a wallet: absent, or the state with this CAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum StateId {
    /// The wallet did not exist.
    Absent,
    /// The wallet was in the state with this CAS.
    Cas(Cas),
}

/// A marker of completed work, which a write may remove. Made only from
/// proof that its work is done: that is the only way a write removes a
/// marker, so the marker of a credit still in progress always stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Prune(MarkerName);

impl Prune {
    /// `name` marks a credit of an action this process knows completed.
    pub(crate) fn known(name: FoundName<'_>, marker: &Marker<'_>, recent: &RecentlyCompleted) -> Option<Self> {
        marker
            .action()
            .is_some_and(|a| recent.contains(a))
            .then(|| Prune(name.to_name()))
    }

    /// `name` marks a credit of `action`, whose record reads completed.
    pub(crate) fn by_record(name: MarkerName, action: &str, record: &TxRecord) -> Option<Self> {
        (record.state == TxState::Completed && record.action_id == action).then_some(Prune(name))
    }

    /// `name` marks adjustment `id`, whose record reads applied.
    pub(crate) fn by_adjustment(name: MarkerName, id: &str, record: &AdjRecord) -> Option<Self> {
        (record.state == AdjState::Applied && record.id == id).then_some(Prune(name))
    }

    /// The marker it removes.
    pub(crate) fn name(&self) -> &MarkerName {
        &self.0
    }
}

/// An old marker of another action that this process does not know
/// completed: checked later, and pruned if its record reads completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stale {
    /// The wallet.
    pub(crate) hash: String,
    /// The marker.
    pub(crate) name: MarkerName,
    /// The action it names.
    pub(crate) action: String,
}

impl State {
    /// Which state this is, if it is one a credit can be written over.
    pub(crate) fn id(&self) -> Option<StateId> {
        match self {
            State::Absent => Some(StateId::Absent),
            State::Present { cas, .. } => Some(StateId::Cas(*cas)),
            State::Invalid { .. } => None,
        }
    }

    /// The balance as found: `None` without a document, `Err` when the
    /// document is not a valid balance (what an audit reports).
    pub fn found(&self) -> Option<std::result::Result<u64, String>> {
        match self {
            State::Absent => None,
            State::Present { balance, .. } => Some(Ok(balance.get())),
            State::Invalid { error, .. } => Some(Err(error.clone())),
        }
    }

    /// The CAS of the read (0 without a document; `LOCKED_CAS` while locked).
    pub fn cas(&self) -> Cas {
        match self {
            State::Absent => 0,
            State::Present { cas, .. } | State::Invalid { cas, .. } => *cas,
        }
    }

    /// Why no credit can be written on it (`hash`'s document is not a
    /// valid balance), if that is so.
    pub(crate) fn invalid(&self, hash: &str) -> Option<String> {
        match self {
            State::Invalid { error, shown, .. } => Some(format!(
                "wallet {} is not a valid balance ({error}): {shown:?}",
                balance_key(hash)
            )),
            _ => None,
        }
    }

    /// Its markers (none when absent).
    pub fn markers(&self) -> Markers {
        match self {
            State::Absent => Markers::default(),
            State::Present { markers, .. } | State::Invalid { markers, .. } => markers.clone(),
        }
    }

    /// Whether the marker `name` is on the wallet.
    pub fn has_marker(&self, name: &MarkerName) -> bool {
        self.markers().contains(name)
    }

    /// The balance a credit adds to: zero when absent, `None` when the
    /// document is not a valid balance.
    pub(crate) fn balance(&self) -> Option<Units> {
        match self {
            State::Absent => Some(Units::ZERO),
            State::Present { balance, .. } => Some(*balance),
            State::Invalid { .. } => None,
        }
    }

    /// Why this wallet cannot take `credit` (its marker named `own`), if it cannot.
    pub(crate) fn precheck(&self, credit: &Credit, own: &MarkerName) -> Option<String> {
        match self {
            State::Absent => None,
            State::Invalid { .. } => self.invalid(&credit.hash),
            State::Present { markers, .. } if markers.contains(own) => None,
            State::Present { balance, .. } => balance
                .checked_add(credit.units)
                .is_none()
                .then(|| over_supply(&credit.hash, credit.units)),
        }
    }

    /// The markers any write of this state may remove: those of actions
    /// this process knows completed.
    pub(crate) fn known_completed(&self, recent: &RecentlyCompleted) -> Vec<Prune> {
        self.markers()
            .iter()
            .filter_map(|(name, marker)| Prune::known(name, &marker, recent))
            .collect()
    }

    /// Markers of actions this process does not know completed, oldest
    /// first: `(name, action)`.
    pub(crate) fn unknown(&self, recent: &RecentlyCompleted) -> Vec<(MarkerName, String)> {
        let markers = self.markers();
        let mut found: Vec<(u64, MarkerName, String)> = markers
            .iter()
            .filter_map(|(name, marker)| {
                let action = marker.action().filter(|a| !recent.contains(a))?;
                Some((marker.at_ms().unwrap_or(0), name.to_name(), action.to_string()))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, name, action)| (name, action)).collect()
    }

    /// Old markers of actions this process does not know completed, worth
    /// a check later (a marker's time is a heuristic for work only).
    pub(crate) fn stale(&self, hash: &str, recent: &RecentlyCompleted) -> Vec<Stale> {
        let cutoff = now_ms().saturating_sub(FOREIGN_MARKER_AGE_MS_MIN);
        self.markers()
            .iter()
            .filter(|(_, marker)| marker.at_ms().is_some_and(|at| at < cutoff))
            .filter_map(|(name, marker)| {
                let action = marker.action().filter(|a| !recent.contains(a))?;
                Some(Stale {
                    hash: hash.to_string(),
                    name: name.to_name(),
                    action: action.to_string(),
                })
            })
            .collect()
    }
}

/// Why a credit is refused when it would take its wallet past the supply.
pub(crate) fn over_supply(hash: &str, units: Units) -> String {
    format!("wallet {hash:?}: crediting {units} would exceed the total supply")
}

/// Reads one wallet: body, markers and CAS, in one atomic read. The
/// credit path, `adjust` and audits all read a wallet here.
pub async fn read(store: &dyn Store, hash: &str) -> Result<State> {
    let key = balance_key(hash);
    let doc = match retry(|| store.get_with_xattrs(Bucket::Ledger, &key, &[MARKERS_XATTR])).await {
        Ok(doc) => doc,
        Err(StoreError::NotFound) => return Ok(State::Absent),
        Err(e) => return Err(e.into()),
    };
    let (body, cas) = (doc.body, doc.cas);
    let markers = Markers::from_xattr(doc.xattrs.into_iter().next().flatten());
    Ok(match Units::parse_balance(&body) {
        Ok(balance) => State::Present { balance, cas, markers },
        Err(e) => State::Invalid {
            error: e.to_string(),
            shown: String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned(),
            cas,
            markers,
        },
    })
}

/// Removes one marker of completed work by itself (no balance change):
/// whether it was there and is gone now.
pub(crate) async fn remove_marker(store: &dyn Store, hash: &str, prune: &Prune) -> bool {
    matches!(
        store
            .remove_xattr(Bucket::Ledger, &balance_key(hash), &prune.name().path())
            .await,
        Ok(true)
    )
}

/// Removes the marker `name` of `action`'s credit from wallet `hash` if
/// the action's record reads completed (or is completed here, see
/// [`complete_if_applied`]): whether it was there and is gone now. An
/// unreadable or missing record leaves the marker alone.
pub(crate) async fn prune_if_completed(store: &dyn Store, hash: &str, name: MarkerName, action: &str) -> bool {
    let Ok(Some((record, cas))) = read_tx(store, action).await else {
        return false;
    };
    let record = match record.state {
        TxState::Completed => record,
        TxState::Committed => match complete_if_applied(store, action, &record, cas).await {
            Some(completed) => completed,
            None => return false,
        },
    };
    match Prune::by_record(name, action, &record) {
        Some(prune) => remove_marker(store, hash, &prune).await,
        None => false,
    }
}

/// Completes `action`'s record, read `committed` under `cas`, if every
/// credit it names is applied: each wallet carries the action's marker.
/// Returns the record as completed (here or by another), or `None` while
/// a credit is missing its marker or the record cannot be written.
///
/// This finishes what a worker left when it removed the action and died
/// before the record's completion landed (steps 5 and 6 go side by side):
/// completion asserts only that every credit is applied, which the markers
/// prove, since no marker is removed before its record is completed. A
/// worker still busy with the action loses nothing: its own completion
/// then meets another CAS, reads the record completed, and goes on.
pub(crate) async fn complete_if_applied(
    store: &dyn Store,
    action: &str,
    record: &TxRecord,
    cas: Cas,
) -> Option<TxRecord> {
    let own = MarkerName::of_action(action);
    let mut hashes: Vec<&str> = record.credits.iter().map(|c| c.hash.as_str()).collect();
    hashes.sort_unstable();
    hashes.dedup();
    for hash in hashes {
        if !read(store, hash).await.ok()?.has_marker(&own) {
            return None;
        }
    }
    let completed = record.completed_now();
    let write = store
        .replace(
            Bucket::Ledger,
            &crate::domain::keys::tx_key(action),
            &completed.to_bytes(),
            cas,
        )
        .await;
    match write {
        Ok(_) => Some(completed),
        // Another wrote it first, or the answer was lost: what it says now.
        Err(_) => match read_tx(store, action).await {
            Ok(Some((now, _))) if now.state == TxState::Completed => Some(now),
            _ => None,
        },
    }
}

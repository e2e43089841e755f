//! Step 4 (apply each credit exactly once) and step 7 (prune markers).

use std::sync::Arc;

use futures::future::join_all;
use serde_json::{Map, Value};

use super::coalesce::{CreditRequest, Credited};
use super::records::{now_ms, TxRecord};
use super::{read_tx, retry, Options, RecentlyCompleted, Result};
use crate::domain::keys::{balance_key, marker_path, MARKERS_XATTR};
use crate::domain::{Credit, Units};
use crate::store::{Bucket, Cas, Store, StoreError};

/// Leftover markers of other actions older than this are worth checking
/// (a heuristic for work only: pruning still requires a completed record).
const FOREIGN_MARKER_AGE_MS_MIN: u64 = 60_000;
/// Most leftover markers one action checks for pruning.
const FOREIGN_MARKERS_CHECKED_MAX: usize = 4;

/// A wallet's state at one moment: its document, or the lack of one.
#[derive(Debug, Clone)]
pub(crate) enum Snapshot {
    /// No `balance:<hash>` document.
    Absent,
    /// A valid balance.
    Present {
        /// The balance in units.
        balance: Units,
        /// The CAS of this state: it names the state (a CAS is never reused).
        cas: Cas,
        /// The markers object (`ledger.applied`), by marker name.
        markers: Arc<Map<String, Value>>,
    },
    /// The document exists but is not a valid balance.
    Invalid(String),
}

/// Which state of a wallet was observed: absent, or the state with this CAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Seen {
    /// The wallet did not exist.
    Absent,
    /// The wallet was in the state with this CAS.
    Cas(Cas),
}

impl Snapshot {
    /// Which state this is, if it is one a credit can be written over.
    pub(crate) fn seen(&self) -> Option<Seen> {
        match self {
            Snapshot::Absent => Some(Seen::Absent),
            Snapshot::Present { cas, .. } => Some(Seen::Cas(*cas)),
            Snapshot::Invalid(_) => None,
        }
    }

    /// Whether the marker named `name` (the part after `ledger.applied.`) is on the wallet.
    pub(crate) fn has_marker(&self, name: &str) -> bool {
        matches!(self, Snapshot::Present { markers, .. } if markers.contains_key(name))
    }

    /// Why this wallet cannot take `credit` (its marker named `own`), if it cannot.
    pub(crate) fn precheck(&self, credit: &Credit, own: &str) -> Option<String> {
        match self {
            Snapshot::Absent => None,
            Snapshot::Invalid(reason) => Some(reason.clone()),
            Snapshot::Present { markers, .. } if markers.contains_key(own) => None,
            Snapshot::Present { balance, .. } => balance
                .checked_add(credit.units)
                .is_none()
                .then(|| over_supply(&credit.hash, credit.units)),
        }
    }

    /// Markers of other actions worth a look: those of actions this process
    /// knows completed (`prunable`: dropped by the next write), and old ones
    /// of unknown actions (`stale`: `(path, action id)`, checked later).
    pub(crate) fn foreign_markers(&self, recent: &RecentlyCompleted) -> (Vec<String>, Vec<(String, String)>) {
        let (mut prunable, mut stale) = (Vec::new(), Vec::new());
        let Snapshot::Present { markers, .. } = self else {
            return (prunable, stale);
        };
        let cutoff = now_ms().saturating_sub(FOREIGN_MARKER_AGE_MS_MIN);
        for (name, v) in markers.iter() {
            let Some(action) = v.get("tx").and_then(Value::as_str) else {
                continue;
            };
            let path = format!("{MARKERS_XATTR}.{name}");
            if recent.contains(action) {
                prunable.push(path);
            } else if v.get("at_ms").and_then(Value::as_u64).is_some_and(|at| at < cutoff) {
                stale.push((path, action.to_string()));
            }
        }
        (prunable, stale)
    }
}

/// Why a credit is refused when it would take its wallet past the supply.
pub(crate) fn over_supply(hash: &str, units: Units) -> String {
    format!("wallet {hash:?}: crediting {units} would exceed the total supply")
}

/// The marker's name under `ledger.applied` for the marker path `path`.
pub(crate) fn marker_name(path: &str) -> &str {
    path.strip_prefix(MARKERS_XATTR)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or(path)
}

/// Reads one wallet: body, markers and CAS, in one atomic read.
pub(crate) async fn read_snapshot(store: &dyn Store, hash: &str) -> Result<Snapshot> {
    let key = balance_key(hash);
    let doc = match retry(|| store.get_with_xattrs(Bucket::Ledger, &key, &[MARKERS_XATTR])).await {
        Ok(doc) => doc,
        Err(StoreError::NotFound) => return Ok(Snapshot::Absent),
        Err(e) => return Err(e.into()),
    };
    let balance = match Units::parse_balance(&doc.body) {
        Ok(b) => b,
        Err(e) => {
            let shown = String::from_utf8_lossy(&doc.body[..doc.body.len().min(40)]).into_owned();
            return Ok(Snapshot::Invalid(format!(
                "wallet {key} is not a valid balance ({e}): {shown:?}"
            )));
        }
    };
    let markers = match doc.xattrs.into_iter().next().flatten() {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    Ok(Snapshot::Present {
        balance,
        cas: doc.cas,
        markers: Arc::new(markers),
    })
}

/// The wallets of `credits` as this process knows them, reading those it
/// does not: a state this process wrote itself moments ago stands for a read.
pub(crate) async fn observe_wallets(store: &dyn Store, credits: &[Credit], opts: &Options) -> Result<Vec<Snapshot>> {
    join_all(credits.iter().map(|c| async move {
        match opts.coalescer.peek(&c.hash) {
            Some(known) => Ok(known),
            None => read_snapshot(store, &c.hash).await,
        }
    }))
    .await
    .into_iter()
    .collect()
}

/// How applying an action's credits ended.
pub(crate) enum Applied {
    /// Every credit carries this action's marker.
    Done,
    /// The record turned `completed`: another worker finished the action.
    CompletedElsewhere,
    /// A wallet is invalid; the action must wait.
    Blocked(String),
}

/// Step 4: applies every credit of a committed record exactly once, all
/// wallets in parallel, each through the process's coalescer (which folds
/// credits of concurrent actions to one wallet into one write).
///
/// `observed` are wallet states observed before this worker's own insert
/// of the record: nothing can have been applied before the record existed,
/// so a write under such a state (or one this process derived from it by
/// its own writes alone) needs no further proof. Without one, a write needs
/// a read of the record after the wallet state was observed: a marker is
/// pruned only after the record is completed, so "no marker" seen before
/// "still committed" means not applied.
pub(crate) async fn apply_credits(
    store: &dyn Store,
    id: &str,
    tx: &TxRecord,
    observed: Option<Vec<Snapshot>>,
    opts: &Options,
) -> Result<(Applied, Vec<(String, String, String)>)> {
    let marker = marker_path(id);
    let mut observed = observed.map(Vec::into_iter);
    let requests: Vec<CreditRequest> = tx
        .credits
        .iter()
        .map(|credit| CreditRequest {
            action: id.to_string(),
            marker: marker.clone(),
            hash: credit.hash.clone(),
            units: credit.units,
            seen: observed.as_mut().and_then(Iterator::next),
        })
        .collect();
    let answers = join_all(requests.into_iter().map(|r| opts.coalescer.credit(store, r, opts))).await;
    let (mut applied, mut stale, mut failure) = (Applied::Done, Vec::new(), None);
    for (credit, answer) in tx.credits.iter().zip(answers) {
        match answer {
            Ok(Credited::Done { stale: s }) => {
                stale.extend(s.into_iter().map(|(path, other)| (credit.hash.clone(), path, other)));
            }
            Ok(Credited::CompletedElsewhere) => {
                if matches!(applied, Applied::Done) {
                    applied = Applied::CompletedElsewhere;
                }
            }
            Ok(Credited::Blocked(reason)) => {
                if !matches!(applied, Applied::Blocked(_)) {
                    applied = Applied::Blocked(reason);
                }
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    // A blocked wallet is reported even if another write failed: the action
    // cannot finish either way, and "blocked" says what to fix.
    match (applied, failure) {
        (blocked @ Applied::Blocked(_), _) => Ok((blocked, stale)),
        (_, Some(e)) => Err(e),
        (applied, None) => Ok((applied, stale)),
    }
}

/// Step 7: this action's markers are not removed by extra writes: each goes
/// with the next write its wallet gets from this process (see
/// `RecentlyCompleted`). Here, a few OLD markers of other actions seen on
/// the wallets (their process forgot them, or crashed) are checked and
/// pruned if their record is completed. Best effort: a marker left behind
/// is harmless; `sweep_markers` is the full pass.
pub(crate) async fn prune_markers(store: &dyn Store, stale: &[(String, String, String)]) {
    for (hash, path, other) in stale.iter().take(FOREIGN_MARKERS_CHECKED_MAX) {
        prune_if_completed(store, hash, path, other).await;
    }
}

/// Removes a marker if its action's record is completed.
pub(crate) async fn prune_if_completed(store: &dyn Store, hash: &str, path: &str, action_id: &str) -> bool {
    match read_tx(store, action_id).await {
        Ok(Some((t, _))) if t.state == super::records::TxState::Completed => {
            matches!(
                store.remove_xattr(Bucket::Ledger, &balance_key(hash), path).await,
                Ok(true)
            )
        }
        _ => false,
    }
}

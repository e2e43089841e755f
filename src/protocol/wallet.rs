//! A wallet as the protocol sees it: its state at one moment (balance, CAS,
//! markers), read in one atomic lookup, and what that state tells about a
//! credit. Shared by the commit step (`mod.rs`), step 4 (`apply.rs`) and the
//! coalescer (`coalesce/`).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::records::now_ms;
use super::{retry, RecentlyCompleted, Result};
use crate::domain::keys::{balance_key, MARKERS_XATTR};
use crate::domain::{Credit, Units};
use crate::store::{Bucket, Cas, Store, StoreError};

/// Leftover markers of other actions older than this are worth checking
/// (a heuristic for work only: pruning still requires a completed record).
const FOREIGN_MARKER_AGE_MS_MIN: u64 = 60_000;
/// Most leftover markers one action checks for pruning.
pub(crate) const FOREIGN_MARKERS_CHECKED_MAX: usize = 4;

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
        let Snapshot::Present { markers, .. } = self else {
            return (Vec::new(), Vec::new());
        };
        let cutoff = now_ms().saturating_sub(FOREIGN_MARKER_AGE_MS_MIN);
        let stale = markers
            .iter()
            .filter_map(|(name, v)| {
                let action = marker_action(v).filter(|a| !recent.contains(a))?;
                let old = v.get("at_ms").and_then(Value::as_u64).is_some_and(|at| at < cutoff);
                old.then(|| (format!("{MARKERS_XATTR}.{name}"), action.to_string()))
            })
            .collect();
        (known_completed(markers, recent), stale)
    }
}

/// The action a marker's value names (its `tx`), if it names one.
pub(crate) fn marker_action(value: &Value) -> Option<&str> {
    value.get("tx").and_then(Value::as_str)
}

/// The paths of the markers whose actions this process knows completed:
/// the next write of their wallet may drop them.
pub(crate) fn known_completed(markers: &Map<String, Value>, recent: &RecentlyCompleted) -> Vec<String> {
    markers
        .iter()
        .filter(|(_, v)| marker_action(v).is_some_and(|a| recent.contains(a)))
        .map(|(name, _)| format!("{MARKERS_XATTR}.{name}"))
        .collect()
}

/// The markers a write leaves on a wallet: `markers` less the `prunes`
/// (paths), plus `added` (path, value).
pub(crate) fn markers_after(
    mut markers: Map<String, Value>,
    prunes: &[String],
    added: impl IntoIterator<Item = (String, Value)>,
) -> Map<String, Value> {
    for path in prunes {
        markers.remove(marker_name(path));
    }
    for (path, value) in added {
        markers.insert(marker_name(&path).to_string(), value);
    }
    markers
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

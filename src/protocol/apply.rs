//! Step 4 (apply each credit exactly once) and step 7 (prune markers).

use futures::future::join_all;
use serde_json::Value;

use super::records::{marker_value, now_ms, TxRecord, TxState};
use super::{backoff, count_retry, read_tx, retry, Options, ProtocolError, RecentlyCompleted, Result};
use crate::domain::keys::{balance_key, marker_path, MARKERS_XATTR};
use crate::domain::{Credit, Units};
use crate::ops::metrics::result_label;
use crate::store::{Bucket, Cas, Store, StoreError, WriteMode};

/// Leftover markers of other actions older than this are worth checking
/// (a heuristic for work only: pruning still requires a completed record).
const FOREIGN_MARKER_AGE_MS_MIN: u64 = 60_000;
/// Most leftover markers one action checks for pruning.
const FOREIGN_MARKERS_CHECKED_MAX: usize = 4;

/// A wallet as read before crediting it.
#[derive(Debug, Clone)]
pub(crate) enum WalletRead {
    /// No `balance:<hash>` document.
    Absent,
    /// A valid balance.
    Present {
        balance: Units,
        cas: Cas,
        /// This action's marker is on the wallet: the credit is applied.
        marked: bool,
        /// Old markers of other actions: `(xattr path, action id)`.
        stale: Vec<(String, String)>,
        /// Markers of actions known completed, dropped by the next write.
        prunable: Vec<String>,
    },
    /// The document exists but is not a valid balance.
    Invalid(String),
}

impl WalletRead {
    /// Why this wallet cannot take `credit`, if it cannot.
    pub(crate) fn precheck(&self, credit: &Credit) -> Option<String> {
        match self {
            WalletRead::Absent | WalletRead::Present { marked: true, .. } => None,
            WalletRead::Invalid(reason) => Some(reason.clone()),
            WalletRead::Present { balance, .. } => balance.checked_add(credit.units).is_none().then(|| {
                format!(
                    "wallet {:?}: crediting {} would exceed the total supply",
                    credit.hash, credit.units
                )
            }),
        }
    }
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

async fn read_wallet(store: &dyn Store, marker: &str, hash: &str, recent: &RecentlyCompleted) -> Result<WalletRead> {
    let key = balance_key(hash);
    let doc = match retry(|| store.get_with_xattrs(Bucket::Ledger, &key, &[MARKERS_XATTR])).await {
        Ok(doc) => doc,
        Err(StoreError::NotFound) => return Ok(WalletRead::Absent),
        Err(e) => return Err(e.into()),
    };
    let balance = match Units::parse_balance(&doc.body) {
        Ok(b) => b,
        Err(e) => {
            let shown = String::from_utf8_lossy(&doc.body[..doc.body.len().min(40)]).into_owned();
            return Ok(WalletRead::Invalid(format!(
                "wallet {key} is not a valid balance ({e}): {shown:?}"
            )));
        }
    };
    let own = &marker[MARKERS_XATTR.len() + 1..];
    let markers = doc.xattrs.first().cloned().flatten().unwrap_or(Value::Null);
    let marked = markers.get(own).is_some();
    let cutoff = now_ms().saturating_sub(FOREIGN_MARKER_AGE_MS_MIN);
    let (mut stale, mut prunable) = (Vec::new(), Vec::new());
    for (name, v) in markers.as_object().into_iter().flatten() {
        let Some(action) = v.get("tx").and_then(Value::as_str) else {
            continue;
        };
        let path = format!("{MARKERS_XATTR}.{name}");
        if name == own {
            continue;
        }
        if recent.contains(action) {
            prunable.push(path);
        } else if v.get("at_ms").and_then(Value::as_u64).is_some_and(|at| at < cutoff) {
            stale.push((path, action.to_string()));
        }
    }
    Ok(WalletRead::Present {
        balance,
        cas: doc.cas,
        marked,
        stale,
        prunable,
    })
}

/// Reads the wallets of `credits` in parallel.
pub(crate) async fn read_wallets(
    store: &dyn Store,
    id: &str,
    credits: &[&Credit],
    recent: &RecentlyCompleted,
) -> Result<Vec<WalletRead>> {
    let marker = marker_path(id);
    join_all(credits.iter().map(|c| read_wallet(store, &marker, &c.hash, recent)))
        .await
        .into_iter()
        .collect()
}

enum Write {
    Done,
    Retry,
    Blocked(String),
}

/// One attempt at one credit, from a read of its wallet.
async fn write_credit(store: &dyn Store, id: &str, marker: &str, credit: &Credit, read: &WalletRead) -> Result<Write> {
    if let Some(reason) = read.precheck(credit) {
        return Ok(Write::Blocked(reason));
    }
    let key = balance_key(&credit.hash);
    let value = marker_value(id, credit.units, now_ms());
    let (next, mode) = match read {
        WalletRead::Present { marked: true, .. } => return Ok(Write::Done),
        WalletRead::Invalid(reason) => return Ok(Write::Blocked(reason.clone())),
        // Created with the units, or replaced under the read's CAS;
        // precheck() refused any sum above the supply.
        WalletRead::Absent => (credit.units, WriteMode::Insert),
        WalletRead::Present { balance, cas, .. } => (
            balance.checked_add(credit.units).unwrap_or(Units::SUPPLY),
            WriteMode::Replace(*cas),
        ),
    };
    let body = next.get().to_string();
    // This action's marker, and the removal of markers of actions known
    // completed (present, as the read under this CAS showed).
    let mut changes: Vec<(&str, Option<Value>)> = vec![(marker, Some(value))];
    if let (WalletRead::Present { prunable, .. }, WriteMode::Replace(_)) = (read, mode) {
        changes.extend(prunable.iter().map(|path| (path.as_str(), None)));
    }
    let result = store
        .write_with_xattrs(Bucket::Ledger, &key, body.as_bytes(), &changes, mode)
        .await;
    match result {
        Ok(_) => Ok(Write::Done),
        // Someone else changed or created the wallet, or we do not know
        // whether our write landed: read again; the marker tells.
        Err(e @ (StoreError::Exists | StoreError::CasMismatch | StoreError::NotFound | StoreError::Locked)) => {
            count_retry(result_label(Some(&e)));
            Ok(Write::Retry)
        }
        Err(e) if e.is_retryable() => {
            count_retry(result_label(Some(&e)));
            Ok(Write::Retry)
        }
        Err(e) => Err(e.into()),
    }
}

/// Step 4: applies every credit of a committed record exactly once.
///
/// `prefetched` are wallet reads made before this worker's own insert of
/// the record; they are safe to write under. Any other read is followed by
/// a read of the record: a marker is pruned only after the record is
/// completed, so "no marker" read before "still committed" means not applied.
pub(crate) async fn apply_credits(
    store: &dyn Store,
    id: &str,
    tx: &TxRecord,
    prefetched: Option<Vec<WalletRead>>,
    opts: &Options,
) -> Result<(Applied, Vec<(String, String, String)>)> {
    let rounds_max = opts.apply_rounds_max;
    let marker = marker_path(id);
    let mut pending: Vec<&Credit> = tx.credits.iter().collect();
    let mut reads = prefetched;
    let mut stale = Vec::new();
    for round in 0..rounds_max {
        let current = match reads.take() {
            Some(r) => r,
            None => {
                let r = read_wallets(store, id, &pending, &opts.recent).await?;
                match read_tx(store, id).await? {
                    Some((t, _)) if t.state == TxState::Committed => {}
                    Some(_) => return Ok((Applied::CompletedElsewhere, stale)),
                    None => return Err(ProtocolError::CorruptRecord(format!("tx:{id} vanished while applying"))),
                }
                r
            }
        };
        for (credit, read) in pending.iter().zip(&current) {
            if let WalletRead::Present { stale: s, .. } = read {
                stale.extend(
                    s.iter()
                        .map(|(path, tx)| (credit.hash.clone(), path.clone(), tx.clone())),
                );
            }
        }
        let writes = join_all(
            pending
                .iter()
                .zip(&current)
                .map(|(c, r)| write_credit(store, id, &marker, c, r)),
        )
        .await;
        let mut next = Vec::new();
        for (credit, write) in pending.iter().zip(writes) {
            match write? {
                Write::Done => {}
                Write::Retry => next.push(*credit),
                Write::Blocked(reason) => return Ok((Applied::Blocked(reason), stale)),
            }
        }
        if next.is_empty() {
            return Ok((Applied::Done, stale));
        }
        pending = next;
        tokio::time::sleep(backoff(round)).await;
    }
    Err(ProtocolError::Contention(rounds_max))
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
        Ok(Some((t, _))) if t.state == TxState::Completed => {
            matches!(
                store.remove_xattr(Bucket::Ledger, &balance_key(hash), path).await,
                Ok(true)
            )
        }
        _ => false,
    }
}

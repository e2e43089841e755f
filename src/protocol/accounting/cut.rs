//! A cut: every wallet's state taken together with what the records
//! explain of it, one range of wallets at a time (see the module above for
//! the rule that makes it consistent while workers run).

use std::collections::{BTreeMap, BTreeSet};

use super::{next_range, scan, wallet_hashes_in, Explained, HashRange, LOCK, UNLOCKED_ROUNDS};
use crate::domain::keys::balance_key;
use crate::protocol::wallet::{self, State};
use crate::protocol::{ProtocolError, Result};
use crate::store::{Bucket, Cas, Store, StoreError, LOCKED_CAS, READ_DOCS_IN_FLIGHT};

/// Each wallet's state with what the ledger explains for it, every pair
/// taken consistently (see the module doc), for the wallets of one range.
#[derive(Debug, Default)]
pub struct Cut {
    /// By hash: the state, and what the ledger explains for it.
    pub wallets: BTreeMap<String, (State, Explained)>,
    /// Wallets that changed in every attempt, even locked (their lock
    /// lapsed during a scan longer than it): not accounted.
    pub unsettled: BTreeSet<String>,
    /// Transaction records in the last scan.
    pub records: u64,
    /// Wallets of the range in the opening snapshot.
    pub opening_wallets: usize,
    /// Records not final in the scans (see [`Scan`](super::Scan)).
    pub pending: BTreeSet<String>,
}

/// Takes every wallet (those with a document, and those the ledger names)
/// with what the ledger explains for it, consistently, while workers run:
/// in one pass, holding every wallet at once. See [`cut_in_passes`].
pub async fn cut(store: &dyn Store) -> Result<Cut> {
    cut_range(store, &HashRange::all()).await
}

/// Wallets an audit holds at once unless told otherwise: about 1 KiB each
/// (hash, two readings with their markers, the sums), so about 200 MiB at
/// most, and one pass over the ledger for up to 200,000 wallets.
pub const WALLETS_PER_PASS: usize = 200_000;

/// [`cut`] a range of at most `wallets` wallet documents at a time (plus
/// the wallets in that range that only the records name), handing each
/// range's cut to `each` in hash order: memory bounded by `wallets`, never
/// by the ledger; one read of the records per range (more for wallets
/// that keep changing, as in [`cut`]).
pub async fn cut_in_passes<E: From<ProtocolError>>(
    store: &dyn Store,
    wallets: usize,
    mut each: impl FnMut(Cut) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut lo = String::new();
    loop {
        let range = next_range(store, &lo, wallets).await?;
        each(cut_range(store, &range).await?)?;
        match range.hi {
            Some(hi) => lo = hi,
            None => return Ok(()),
        }
    }
}

/// [`cut`] for the wallets of `range`.
pub async fn cut_range(store: &dyn Store, range: &HashRange) -> Result<Cut> {
    let mut cut = Cut::default();
    let mut pending = BTreeSet::new();
    let mut before = BTreeMap::new();
    for _ in 0..UNLOCKED_ROUNDS {
        // Wallets created since the last round are read before this scan too.
        pending.extend(
            wallet_hashes_in(store, range)
                .await?
                .into_iter()
                .filter(|h| !cut.wallets.contains_key(h)),
        );
        let unread: BTreeSet<String> = pending.iter().filter(|h| !before.contains_key(*h)).cloned().collect();
        before.extend(read_all(store, &unread).await?);
        let mut scan = scan(store, range, &before).await?;
        (cut.records, cut.opening_wallets) = (scan.records, scan.opening_wallets());
        cut.pending.append(&mut scan.pending);
        pending.extend(scan.wallets().into_iter().filter(|h| !cut.wallets.contains_key(h)));
        let after = read_all(store, &pending).await?;
        for hash in std::mem::take(&mut pending) {
            match (before.remove(&hash), after.get(&hash)) {
                (Some(b), Some(a)) if b.cas() == a.cas() && b.cas() != LOCKED_CAS => {
                    let explained = scan.explained(&hash, &b);
                    cut.wallets.insert(hash, (b, explained));
                }
                _ => {
                    pending.insert(hash);
                }
            }
        }
        if pending.is_empty() {
            return Ok(cut);
        }
        before = after.into_iter().filter(|(h, _)| pending.contains(h)).collect();
    }
    settle_locked(store, range, &mut cut, pending).await?;
    Ok(cut)
}

/// Reads the wallets, with at most [`READ_DOCS_IN_FLIGHT`] reads in
/// flight (on Couchbase, pipelined: never one round trip after another).
async fn read_all(store: &dyn Store, hashes: &BTreeSet<String>) -> Result<BTreeMap<String, State>> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(hashes)
        .map(|hash| async move { wallet::read(store, hash).await.map(|view| (hash.clone(), view)) })
        .buffered(READ_DOCS_IN_FLIGHT)
        .try_collect()
        .await
}

/// The last round for wallets that kept changing: lock them, read them,
/// scan, and keep those proven unchanged by their lock.
async fn settle_locked(store: &dyn Store, range: &HashRange, cut: &mut Cut, pending: BTreeSet<String>) -> Result<()> {
    let mut locked: Vec<(String, Option<Cas>, State)> = Vec::new();
    for hash in pending {
        let lock = match store.get_and_lock(Bucket::Ledger, &balance_key(&hash), LOCK).await {
            Ok(doc) => Some(doc.cas),
            Err(StoreError::NotFound) => None,
            // Someone else holds it (an adjustment, another audit).
            Err(StoreError::Locked) => {
                cut.unsettled.insert(hash);
                continue;
            }
            Err(e) => {
                release(store, locked.iter().map(|(hash, lock, _)| (hash.as_str(), *lock))).await;
                return Err(e.into());
            }
        };
        let view = wallet::read(store, &hash).await?;
        locked.push((hash, lock, view));
    }
    let views: BTreeMap<String, State> = locked.iter().map(|(h, _, v)| (h.clone(), v.clone())).collect();
    let scan = scan(store, range, &views).await;
    let unchanged = release(store, locked.iter().map(|(hash, lock, _)| (hash.as_str(), *lock))).await;
    let mut scan = scan?;
    (cut.records, cut.opening_wallets) = (scan.records, scan.opening_wallets());
    cut.pending.append(&mut scan.pending);
    for ((hash, _, view), unchanged) in locked.into_iter().zip(unchanged) {
        if unchanged {
            let explained = scan.explained(&hash, &view);
            cut.wallets.insert(hash, (view, explained));
        } else {
            cut.unsettled.insert(hash);
        }
    }
    Ok(())
}

/// Releases the locks; for each wallet, whether it is proven unchanged
/// since it was locked: its lock was still held, or it lapsed and the CAS
/// is still the lock's (a lapsed lock leaves the CAS as it was). An absent
/// wallet is unchanged if it is still absent.
pub(super) async fn release<'a>(
    store: &dyn Store,
    locked: impl IntoIterator<Item = (&'a str, Option<Cas>)>,
) -> Vec<bool> {
    let mut unchanged = Vec::new();
    for (hash, lock) in locked {
        let key = balance_key(hash);
        let same = match lock {
            Some(cas) => match store.unlock(Bucket::Ledger, &key, cas).await {
                Ok(()) => true,
                Err(_) => store.get(Bucket::Ledger, &key).await.is_ok_and(|d| d.cas == cas),
            },
            None => matches!(store.get(Bucket::Ledger, &key).await, Err(StoreError::NotFound)),
        };
        unchanged.push(same);
    }
    unchanged
}

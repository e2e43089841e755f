//! What the ledger explains: each wallet's balance as its opening balance,
//! the credits of the transaction records and the operators' adjustments
//! account for it — computed against one state of the wallet, consistently,
//! while workers run. Used by `audit`, `audit --snapshot` and `adjust`.
//!
//! The rule, for a wallet state S (balance, markers, CAS) that did not
//! change while the records were scanned:
//! - a credit whose marker is on S is in S (a marker is written with its
//!   credit, in one atomic write);
//! - a credit without its marker on S is in S iff its record read
//!   `completed` in the scan: a marker goes only after its record is
//!   completed, and nothing was written to the wallet during the scan;
//! - an adjustment is in S iff its marker is on S or its record reads
//!   `applied` (the same reasoning);
//! - the opening snapshot is in every state.
//!
//! A wallet's state is taken before the scan and again after it; the same
//! CAS (never reused) proves it did not change in between. A wallet that
//! keeps changing is locked for the length of one scan (workers treat the
//! lock like a CAS conflict and retry), and proven unchanged by its lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::Value;

use super::records::{AdjRecord, AdjState, TxRecord, TxState};
use super::{retry, ProtocolError, Result};
use crate::domain::keys::{balance_key, ADJ_PREFIX, BALANCE_PREFIX, TX_PREFIX};
use crate::domain::{Marker, MarkerName};
use crate::store::{Bucket, Store, StoreError, KEY_PAGE};

mod cut;
pub mod since;

pub use cut::{cut, cut_in_passes, cut_range, Cut, WALLETS_PER_PASS};

use super::wallet::State;

/// Most records not final that a checkpoint (`since.rs`) lists (about 60
/// bytes each: 6 MiB): records in flight, a few per worker. A ledger with
/// more (an outage left them) gets no checkpoint until they are finished.
pub const PENDING_MAX: usize = 100_000;

/// The ledger document holding balances that came from outside ledgerd
/// (the first part of them, and how many parts there are).
pub const OPENING_KEY: &str = "audit:opening";
/// Rounds of read, scan, read before the wallets still changing are locked.
pub(super) const UNLOCKED_ROUNDS: usize = 2;
/// How long a changing wallet is locked for one scan (Couchbase's longest).
pub(super) const LOCK: Duration = crate::store::limits::LOCK_MAX;

/// The key of part `n` (from 1) of the opening snapshot after the first.
pub fn opening_part_key(n: usize) -> String {
    format!("{OPENING_KEY}:{n}")
}

/// The wallets one pass of an audit takes: those whose hash is in
/// `[lo, hi)` (`hi` `None`: no upper end). An audit goes through the
/// ledger's wallets a range at a time, so that what it holds is bounded by
/// the range's size, never by the ledger's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashRange {
    /// The first hash in the range (the empty string: from the start).
    pub lo: String,
    /// The first hash after the range, if any.
    pub hi: Option<String>,
}

impl HashRange {
    /// Every wallet.
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether `hash` is in the range.
    pub fn contains(&self, hash: &str) -> bool {
        hash >= self.lo.as_str() && self.hi.as_deref().is_none_or(|hi| hash < hi)
    }
}

/// The records of the ledger, read once, summed for the wallets of one
/// range against one state of each (see [`scan`]).
#[derive(Debug, Default)]
pub struct Scan {
    /// By wallet: the completed credits whose marker is not on the state
    /// the scan was given (those with a marker are counted from the
    /// marker). Every wallet a record credits has an entry.
    credits: HashMap<String, u128>,
    opening: BTreeMap<String, u64>,
    adjustments: HashMap<String, Vec<AdjRecord>>,
    /// Transaction records read.
    pub records: u64,
    /// Records read that are not final (a transaction record not
    /// completed, an adjustment not applied), for a checkpoint
    /// ([`since`]); at most [`PENDING_MAX`] + 1 are kept.
    pending: BTreeSet<String>,
}

/// What the ledger explains for one wallet, by source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Explained {
    /// From the opening snapshot.
    pub opening: u64,
    /// From transaction records.
    pub credits: u128,
    /// From adjustments (`after - expected`, summed; may be negative).
    pub adjustments: i128,
}

impl Explained {
    /// The balance these explain.
    pub fn total(&self) -> i128 {
        i128::from(self.opening) + i128::try_from(self.credits).unwrap_or(i128::MAX) + self.adjustments
    }
}

impl Scan {
    /// Every wallet of the range the records, the opening snapshot or an
    /// adjustment name.
    pub fn wallets(&self) -> BTreeSet<String> {
        self.credits
            .keys()
            .chain(self.opening.keys())
            .chain(self.adjustments.keys())
            .cloned()
            .collect()
    }

    /// Wallets of the range in the opening snapshot.
    pub fn opening_wallets(&self) -> usize {
        self.opening.len()
    }

    /// The adjustments of one wallet.
    pub fn adjustments_of(&self, hash: &str) -> &[AdjRecord] {
        self.adjustments.get(hash).map_or(&[], Vec::as_slice)
    }

    /// What the ledger explains for `hash` in the state `view`: the state
    /// this scan was given for it, which must not have changed while the
    /// scan was taken (see the module doc).
    pub fn explained(&self, hash: &str, view: &State) -> Explained {
        let marked: u128 = view
            .markers()
            .iter()
            .filter_map(|(_, marker)| match marker {
                Marker::Credit { units: Some(units), .. } => Some(u128::from(units.get())),
                _ => None,
            })
            .sum();
        let adjustments = self
            .adjustments_of(hash)
            .iter()
            .filter(|a| a.state == AdjState::Applied || view.has_marker(&MarkerName::of_adjustment(&a.id)))
            .map(AdjRecord::delta)
            .sum();
        Explained {
            opening: self.opening.get(hash).copied().unwrap_or(0),
            credits: marked + self.credits.get(hash).copied().unwrap_or(0),
            adjustments,
        }
    }

    /// Adds one transaction record's credits to the wallets of `range`.
    fn add_tx(&mut self, key: &str, body: &[u8], range: &HashRange, views: &BTreeMap<String, State>) -> Result<()> {
        let id = &key[TX_PREFIX.len()..];
        let tx = TxRecord::parse(id, body).map_err(|e| ProtocolError::CorruptRecord(format!("{key}: {e}")))?;
        self.records += 1;
        let completed = tx.state == TxState::Completed;
        if !completed && self.pending.len() <= PENDING_MAX {
            self.pending.insert(key.to_string());
        }
        // The marker's name (a digest of the action id) only for a wallet
        // that holds markers, and once per record.
        let mut name: Option<MarkerName> = None;
        for c in tx.credits.iter().filter(|c| range.contains(&c.hash)) {
            let marked = completed
                && views.get(&c.hash).is_some_and(|v| {
                    !v.markers().is_empty()
                        && v.has_marker(name.get_or_insert_with(|| MarkerName::of_action(&tx.action_id)))
                });
            let units = if completed && !marked {
                u128::from(c.units.get())
            } else {
                0
            };
            match self.credits.get_mut(&c.hash) {
                Some(sum) => *sum += units,
                None => {
                    self.credits.insert(c.hash.clone(), units);
                }
            }
        }
        Ok(())
    }

    /// Adds one adjustment, if its wallet is in `range`.
    fn add_adj(&mut self, key: &str, body: &[u8], range: &HashRange) -> Result<()> {
        let adj = AdjRecord::parse(&key[ADJ_PREFIX.len()..], body)
            .map_err(|e| ProtocolError::CorruptRecord(format!("{key}: {e}")))?;
        if adj.state != AdjState::Applied && self.pending.len() <= PENDING_MAX {
            self.pending.insert(key.to_string());
        }
        if range.contains(&adj.hash) {
            self.adjustments.entry(adj.hash.clone()).or_default().push(adj);
        }
        Ok(())
    }
}

/// Reads every transaction record, the opening snapshot and every
/// adjustment once, in key order a page at a time, keeping for each wallet
/// of `range` only sums (memory bounded by the range, not by the ledger).
/// A credit is summed against the wallet's state in `views` (none: no
/// marker), which the caller keeps for [`Scan::explained`].
pub async fn scan(store: &dyn Store, range: &HashRange, views: &BTreeMap<String, State>) -> Result<Scan> {
    let mut scan = Scan {
        opening: read_opening(store)
            .await?
            .into_iter()
            .filter(|(hash, _)| range.contains(hash))
            .collect(),
        ..Scan::default()
    };
    for_each_doc(store, TX_PREFIX, |key, body| scan.add_tx(key, body, range, views)).await?;
    for_each_doc(store, ADJ_PREFIX, |key, body| scan.add_adj(key, body, range)).await?;
    Ok(scan)
}

/// [`scan`] for one wallet, reading only its own records through the
/// store's index by wallet ([`Store::wallet_records`]): what `adjust`
/// needs, at the cost of the wallet's records, not the ledger's.
pub async fn scan_wallet(store: &dyn Store, hash: &str, view: &State) -> Result<Scan> {
    let range = HashRange {
        lo: hash.to_string(),
        hi: Some(format!("{hash}\0")),
    };
    let views = BTreeMap::from([(hash.to_string(), view.clone())]);
    let mut scan = Scan {
        opening: read_opening(store)
            .await?
            .into_iter()
            .filter(|(h, _)| h == hash)
            .collect(),
        ..Scan::default()
    };
    for_each_wallet_record(store, hash, |key, body| {
        if key.starts_with(TX_PREFIX) {
            scan.add_tx(key, body, &range, &views)
        } else {
            scan.add_adj(key, body, &range)
        }
    })
    .await?;
    Ok(scan)
}

/// Calls `each` with every record (`adj:` first, then `tx:`, each in key
/// order) that names wallet `hash`, read through the store's index by
/// wallet ([`Store::wallet_records`]) a page at a time, skipping records
/// removed since they were listed: what `history` and `adjust` read.
pub async fn for_each_wallet_record<E: From<ProtocolError>>(
    store: &dyn Store,
    hash: &str,
    mut each: impl FnMut(&str, &[u8]) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut after: Option<String> = None;
    loop {
        let page = retry(|| store.wallet_records(hash, after.as_deref(), DOC_PAGE))
            .await
            .map_err(ProtocolError::from)?;
        for key in &page {
            match retry(|| store.get(Bucket::Ledger, key)).await {
                Ok(doc) => each(key, &doc.body)?,
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(ProtocolError::from(e).into()),
            }
        }
        if page.len() < DOC_PAGE {
            return Ok(());
        }
        after = page.last().cloned();
    }
}

/// Documents read per page by a scan.
const DOC_PAGE: usize = 500;

/// Calls `each` with every ledger document under `prefix`, in key order,
/// a page at a time ([`Store::read_docs`]: one statement on the embedded
/// store, pipelined gets on Couchbase).
///
/// The next page is read while this one is handed to `each`: reading and
/// parsing overlap.
async fn for_each_doc(store: &dyn Store, prefix: &str, mut each: impl FnMut(&str, &[u8]) -> Result<()>) -> Result<()> {
    let read = |after: Option<String>| async move {
        retry(|| store.read_docs(Bucket::Ledger, prefix, after.as_deref(), DOC_PAGE)).await
    };
    let (mut page, mut next) = read(None).await?;
    loop {
        let Some(after) = next else {
            return page.iter().try_for_each(|(key, body)| each(key, body));
        };
        // The read is polled first, so it starts before the page is
        // handed over.
        let handled = async { page.iter().try_for_each(|(key, body)| each(key, body)) };
        let (read, handled) = futures::join!(read(Some(after)), handled);
        handled?;
        (page, next) = read?;
    }
}

/// The hash of every wallet document in `range`.
pub async fn wallet_hashes_in(store: &dyn Store, range: &HashRange) -> Result<BTreeSet<String>> {
    let mut hashes = BTreeSet::new();
    // From the range's first hash: the one before it is listed after.
    let mut after = (!range.lo.is_empty()).then(|| balance_key(&range.lo));
    if let Some(first) = &after {
        match retry(|| store.get(Bucket::Ledger, first)).await {
            Ok(_) => {
                hashes.insert(range.lo.clone());
            }
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    loop {
        let page = retry(|| store.list_keys(Bucket::Ledger, BALANCE_PREFIX, after.as_deref(), KEY_PAGE)).await?;
        for key in &page {
            let hash = &key[BALANCE_PREFIX.len()..];
            if !range.contains(hash) {
                return Ok(hashes);
            }
            hashes.insert(hash.to_string());
        }
        if page.len() < KEY_PAGE {
            return Ok(hashes);
        }
        after = page.last().cloned();
    }
}

/// The ranges of at most `wallets` wallet documents each (the last from
/// where the one before ended), in hash order, listing `wallets + 1` keys
/// a time: an audit's passes.
pub(super) async fn next_range(store: &dyn Store, lo: &str, wallets: usize) -> Result<HashRange> {
    // Two at least: the range then ends past its first key, even the
    // smallest (an empty hash), so every range moves on.
    let wallets = wallets.max(2);
    let after = (!lo.is_empty()).then(|| balance_key(lo));
    // The range's first hash is `lo` itself (if it has a document): the
    // listing after it holds the rest, and the first key past `wallets`.
    let page = retry(|| store.list_keys(Bucket::Ledger, BALANCE_PREFIX, after.as_deref(), wallets)).await?;
    let hi = (page.len() >= wallets)
        .then(|| page.last().map(|k| k[BALANCE_PREFIX.len()..].to_string()))
        .flatten();
    Ok(HashRange { lo: lo.to_string(), hi })
}

/// The opening snapshot: every part's balances, by hash (empty if none).
pub async fn read_opening(store: &dyn Store) -> Result<BTreeMap<String, u64>> {
    let corrupt = |key: &str, why: String| ProtocolError::CorruptRecord(format!("{key}: {why}"));
    let head = match retry(|| store.get(Bucket::Ledger, OPENING_KEY)).await {
        Ok(doc) => doc,
        Err(StoreError::NotFound) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.into()),
    };
    let head: Value = serde_json::from_slice(&head.body).map_err(|e| corrupt(OPENING_KEY, e.to_string()))?;
    let mut out = BTreeMap::new();
    add_balances(&head, OPENING_KEY, &mut out)?;
    let parts = head.get("parts").and_then(Value::as_u64).unwrap_or(1);
    for n in 1..usize::try_from(parts).unwrap_or(usize::MAX) {
        let key = opening_part_key(n);
        let doc = retry(|| store.get(Bucket::Ledger, &key))
            .await
            .map_err(|e| corrupt(&key, format!("part {n} of the {parts} of the opening snapshot: {e}")))?;
        let part: Value = serde_json::from_slice(&doc.body).map_err(|e| corrupt(&key, e.to_string()))?;
        add_balances(&part, &key, &mut out)?;
    }
    Ok(out)
}

fn add_balances(doc: &Value, key: &str, out: &mut BTreeMap<String, u64>) -> Result<()> {
    for (hash, units) in doc.get("balances").and_then(Value::as_object).into_iter().flatten() {
        let units = units
            .as_u64()
            .ok_or_else(|| ProtocolError::CorruptRecord(format!("{key}: balance of {hash:?} is not an integer")))?;
        out.insert(hash.clone(), units);
    }
    Ok(())
}

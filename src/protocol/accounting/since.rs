//! `ledgerd audit --since`: only what changed since the last clean audit,
//! so that a daily audit of a ledger of 10^8 records costs a day's records.
//!
//! A **checkpoint** is a point of the store's clock, a CAS `through`
//! ([`Store::cas_floor`]: every later write has a greater CAS). What a
//! wallet's checkpoint settles is the set of its records that were final
//! (a transaction record `completed`, an adjustment `applied`) with a CAS
//! at most `through`: final records are never written again, and any
//! later write has a greater CAS, so that set never changes. Its sum is
//! kept per wallet, in `audited:<hash>`, with the `through` it was taken
//! at. The checkpoint document (`audit:checkpoint`) names the last clean
//! audit's `through`, and lists the records that were not final at it:
//! every record not settled is either listed there or has a greater CAS.
//!
//! An audit since a checkpoint then:
//! 1. takes a new point of the clock, `floor`;
//! 2. lists the records written after `through`
//!    ([`Store::changed_since`]) and the checkpoint's listed records: the
//!    wallets these name are the only ones ledgerd changed (a wallet
//!    written by something else, with no record, is found by a full
//!    audit, which reads every wallet);
//! 3. checks each such wallet as a full audit does (its state read before
//!    and after its records, locked if it keeps changing), with what the
//!    ledger explains for it = its settled sum + the credits of its
//!    records not settled (a completed record counts, a committed one
//!    counts if its marker is on the wallet; likewise adjustments);
//! 4. if every wallet matches, settles each checked wallet's records
//!    final at `floor` into its sum, then writes the new checkpoint (its
//!    commit point). An audit that dies before the checkpoint leaves sums
//!    with a later `through`, which the next audit reads as they are.
//!
//! A wallet without a sum of this checkpoint's generation (the last full
//! audit with `--checkpoint`) is checked against all of its records (read
//! through the index by wallet), once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::cut::release;
use super::{read_opening, LOCK, OPENING_KEY, PENDING_MAX, UNLOCKED_ROUNDS};
use crate::domain::keys::{balance_key, ADJ_PREFIX, TX_PREFIX};
use crate::domain::MarkerName;
use crate::protocol::records::{AdjRecord, AdjState, TxRecord, TxState};
use crate::protocol::wallet::{self, State};
use crate::protocol::{retry, ProtocolError, Result};
use crate::store::{Bucket, Cas, Store, StoreError, KEY_PAGE, LOCKED_CAS, READ_DOCS_IN_FLIGHT};

/// The document naming the last clean audit's checkpoint.
pub const CHECKPOINT_KEY: &str = "audit:checkpoint";
/// Prefix of each wallet's settled sum (`audited:<hash>`: as long as
/// `balance:<hash>`, so within Couchbase's 250-byte keys for every hash).
pub const AUDITED_PREFIX: &str = "audited:";

/// The key of a wallet's settled sum.
pub fn audited_key(hash: &str) -> String {
    format!("{AUDITED_PREFIX}{hash}")
}

/// The last clean audit's checkpoint. CAS values are written as decimal
/// strings: they pass 2^53, where JSON readers lose digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The full audit that began this line of checkpoints: sums of another
    /// generation are not read.
    pub generation: String,
    /// The point of the store's clock it was taken at.
    pub through: String,
    /// When, for operators.
    pub at: String,
    /// Records not final at `through` (their keys).
    pub pending: Vec<String>,
}

impl Checkpoint {
    /// `through` as a CAS.
    pub fn through_cas(&self) -> Result<Cas> {
        self.through
            .parse()
            .map_err(|_| ProtocolError::CorruptRecord(format!("{CHECKPOINT_KEY}: through {:?}", self.through)))
    }

    /// The name an operator gives `--since`: its `through`.
    pub fn name(&self) -> &str {
        &self.through
    }
}

/// A wallet's settled sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Settled {
    generation: String,
    through: String,
    /// Opening balance + settled credits + settled adjustments, in units
    /// (a decimal string: an adjustment may make it negative, and it may
    /// pass 2^53).
    expected: String,
}

/// Reads the checkpoint, if there is one.
pub async fn read_checkpoint(store: &dyn Store) -> Result<Option<Checkpoint>> {
    match retry(|| store.get(Bucket::Ledger, CHECKPOINT_KEY)).await {
        Ok(doc) => serde_json::from_slice(&doc.body)
            .map(Some)
            .map_err(|e| ProtocolError::CorruptRecord(format!("{CHECKPOINT_KEY}: {e}"))),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes `checkpoint` as the last clean audit's (its commit point).
pub async fn write_checkpoint(store: &dyn Store, checkpoint: &Checkpoint) -> Result<()> {
    put(store, CHECKPOINT_KEY, checkpoint).await
}

/// Writes `value` as the ledger document `key`, whatever was there: two
/// audits writing it at once each wrote what a clean audit found, and the
/// last one wins.
async fn put(store: &dyn Store, key: &str, value: &impl Serialize) -> Result<()> {
    let body = serde_json::to_vec(value).map_err(|e| ProtocolError::CorruptRecord(e.to_string()))?;
    loop {
        let written = match store.get(Bucket::Ledger, key).await {
            Ok(old) => store.replace(Bucket::Ledger, key, &body, old.cas).await,
            Err(StoreError::NotFound) => store.insert(Bucket::Ledger, key, &body).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(_) => return Ok(()),
            Err(StoreError::CasMismatch | StoreError::Exists) => continue,
            Err(e) if e.is_retryable() => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One record as read: its key, CAS and what it does to each wallet.
#[derive(Debug, Clone)]
struct Read {
    key: String,
    cas: Cas,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Tx(TxRecord),
    Adj(AdjRecord),
}

impl Read {
    fn parse(key: &str, cas: Cas, body: &[u8]) -> Result<Self> {
        let corrupt = |e: String| ProtocolError::CorruptRecord(format!("{key}: {e}"));
        let kind = if let Some(id) = key.strip_prefix(TX_PREFIX) {
            Kind::Tx(TxRecord::parse(id, body).map_err(corrupt)?)
        } else if let Some(id) = key.strip_prefix(ADJ_PREFIX) {
            Kind::Adj(AdjRecord::parse(id, body).map_err(corrupt)?)
        } else {
            return Err(corrupt("not a record".into()));
        };
        Ok(Self {
            key: key.to_string(),
            cas,
            kind,
        })
    }

    fn is_final(&self) -> bool {
        match &self.kind {
            Kind::Tx(tx) => tx.state == TxState::Completed,
            Kind::Adj(adj) => adj.state == AdjState::Applied,
        }
    }

    /// The wallets it names.
    fn wallets(&self) -> Vec<&str> {
        match &self.kind {
            Kind::Tx(tx) => tx.credits.iter().map(|c| c.hash.as_str()).collect(),
            Kind::Adj(adj) => vec![adj.hash.as_str()],
        }
    }

    /// What it adds to wallet `hash` if final.
    fn amount(&self, hash: &str) -> i128 {
        match &self.kind {
            Kind::Tx(tx) => tx
                .credits
                .iter()
                .filter(|c| c.hash == hash)
                .map(|c| i128::from(c.units.get()))
                .sum(),
            Kind::Adj(adj) if adj.hash == hash => adj.delta(),
            Kind::Adj(_) => 0,
        }
    }

    /// Whether the wallet state `view` holds it: final, or its marker is
    /// on the state (the rule of the module `accounting`).
    fn in_state(&self, view: &State) -> bool {
        self.is_final()
            || match &self.kind {
                Kind::Tx(tx) => view.has_marker(&MarkerName::of_action(&tx.action_id)),
                Kind::Adj(adj) => view.has_marker(&MarkerName::of_adjustment(&adj.id)),
            }
    }
}

/// One wallet checked since the checkpoint.
#[derive(Debug)]
pub struct Checked {
    /// The balance in the state it was checked in (see [`State`]).
    pub balance: Option<std::result::Result<u64, String>>,
    /// What the ledger explains for that state.
    pub expected: i128,
    /// Its new settled sum, at the new point.
    settled: i128,
    /// Its records not final at the new point.
    pending: Vec<String>,
}

/// What an audit since a checkpoint found.
#[derive(Debug, Default)]
pub struct Since {
    /// The new point of the clock.
    pub floor: Cas,
    /// Records read (the changed ones, and every record of a wallet
    /// checked against all of its records).
    pub records: u64,
    /// By hash: the wallets that may have changed, checked.
    pub wallets: BTreeMap<String, Checked>,
    /// Wallets that changed in every reading, even locked.
    pub unsettled: BTreeSet<String>,
    /// Wallets checked against all of their records (no sum of this
    /// generation).
    pub from_the_start: u64,
}

/// Lists every key under `prefix` changed after `through`.
async fn changed(store: &dyn Store, prefix: &str, through: Cas) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut after: Option<(Cas, String)> = None;
    loop {
        let page = retry(|| store.changed_since(Bucket::Ledger, prefix, through, after.clone(), KEY_PAGE)).await?;
        keys.extend(page.iter().map(|(_, k)| k.clone()));
        if page.len() < KEY_PAGE {
            return Ok(keys);
        }
        after = page.last().cloned();
    }
}

/// Reads records by key, with at most [`READ_DOCS_IN_FLIGHT`] reads in
/// flight; records gone are left out.
async fn read_records(store: &dyn Store, keys: &[String]) -> Result<Vec<Read>> {
    use futures::{StreamExt, TryStreamExt};
    let read: Vec<Option<Read>> = futures::stream::iter(keys)
        .map(|key| async move {
            match retry(|| store.get(Bucket::Ledger, key)).await {
                Ok(doc) => Read::parse(key, doc.cas, &doc.body).map(Some),
                Err(StoreError::NotFound) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .buffered(READ_DOCS_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(read.into_iter().flatten().collect())
}

/// Every record key of one wallet, through the store's index by wallet.
async fn all_records_of(store: &dyn Store, hash: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = retry(|| store.wallet_records(hash, after.as_deref(), KEY_PAGE)).await?;
        keys.extend(page.iter().cloned());
        if page.len() < KEY_PAGE {
            return Ok(keys);
        }
        after = page.last().cloned();
    }
}

/// A wallet's base: its settled sum and the point it was settled at, if
/// it has one of this generation; else its opening balance, with nothing
/// settled.
async fn base_of(store: &dyn Store, hash: &str, generation: &str) -> Result<Option<(i128, Cas)>> {
    let key = audited_key(hash);
    let doc = match retry(|| store.get(Bucket::Ledger, &key)).await {
        Ok(doc) => doc,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let corrupt = |why: &str| ProtocolError::CorruptRecord(format!("{key}: {why}"));
    let settled: Settled = serde_json::from_slice(&doc.body).map_err(|e| corrupt(&e.to_string()))?;
    if settled.generation != generation {
        return Ok(None);
    }
    let expected = settled
        .expected
        .parse()
        .map_err(|_| corrupt("expected is not an integer"))?;
    let through = settled.through.parse().map_err(|_| corrupt("through is not a CAS"))?;
    Ok(Some((expected, through)))
}

/// Checks every wallet that may have changed since `checkpoint`.
pub async fn check(store: &dyn Store, checkpoint: &Checkpoint) -> Result<Since> {
    let through = checkpoint.through_cas()?;
    let floor = retry(|| store.cas_floor(Bucket::Ledger)).await?;
    if !changed(store, OPENING_KEY, through).await?.is_empty() {
        return Err(ProtocolError::CorruptRecord(format!(
            "the opening snapshot ({OPENING_KEY}) changed since checkpoint {}: run a full `ledgerd audit --checkpoint`",
            checkpoint.name()
        )));
    }
    // What changed: the records written since, and those in flight then.
    let mut keys: BTreeSet<String> = checkpoint.pending.iter().cloned().collect();
    keys.extend(changed(store, TX_PREFIX, through).await?);
    keys.extend(changed(store, ADJ_PREFIX, through).await?);
    let keys: Vec<String> = keys.into_iter().collect();
    let mut by_wallet: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for record in read_records(store, &keys).await? {
        for hash in record.wallets() {
            by_wallet
                .entry(hash.to_string())
                .or_default()
                .insert(record.key.clone());
        }
    }
    let opening = read_opening(store).await?;
    let mut since = Since {
        floor,
        records: keys.len() as u64,
        ..Since::default()
    };
    for (hash, changed_records) in by_wallet {
        let base = base_of(store, &hash, &checkpoint.generation).await?;
        let (base, settled_through, record_keys) = match base {
            Some((expected, settled_through)) => (expected, settled_through, changed_records.into_iter().collect()),
            None => {
                since.from_the_start += 1;
                let all = all_records_of(store, &hash).await?;
                since.records += all.len() as u64;
                (i128::from(opening.get(&hash).copied().unwrap_or(0)), 0, all)
            }
        };
        match check_wallet(store, &hash, &record_keys, base, settled_through, floor).await? {
            Some(checked) => {
                since.wallets.insert(hash, checked);
            }
            None => {
                since.unsettled.insert(hash);
            }
        }
    }
    Ok(since)
}

/// Checks one wallet against its base and its records not settled at
/// `settled_through`, in a state that did not change while they were read
/// (read before and after; locked for one reading if it keeps changing).
/// `None`: it changed in every reading.
async fn check_wallet(
    store: &dyn Store,
    hash: &str,
    keys: &[String],
    base: i128,
    settled_through: Cas,
    floor: Cas,
) -> Result<Option<Checked>> {
    let explain = |view: State, records: &[Read]| {
        let unsettled = records.iter().filter(|r| !(r.is_final() && r.cas <= settled_through));
        let expected = base
            + unsettled
                .clone()
                .filter(|r| r.in_state(&view))
                .map(|r| r.amount(hash))
                .sum::<i128>();
        let settled = base
            + unsettled
                .clone()
                .filter(|r| r.is_final() && r.cas <= floor)
                .map(|r| r.amount(hash))
                .sum::<i128>();
        let pending = unsettled
            .filter(|r| !r.is_final() && r.cas <= floor)
            .map(|r| r.key.clone())
            .collect();
        Checked {
            balance: view.found(),
            expected,
            settled,
            pending,
        }
    };
    for _ in 0..UNLOCKED_ROUNDS {
        let before = wallet::read(store, hash).await?;
        let records = read_records(store, keys).await?;
        let after = wallet::read(store, hash).await?;
        if before.cas() == after.cas() && before.cas() != LOCKED_CAS {
            return Ok(Some(explain(before, &records)));
        }
    }
    // It keeps changing: lock it for one reading (workers treat the lock
    // as a conflict and retry).
    let key = balance_key(hash);
    let lock = match store.get_and_lock(Bucket::Ledger, &key, LOCK).await {
        Ok(doc) => Some(doc.cas),
        Err(StoreError::NotFound) => None,
        Err(StoreError::Locked) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let view = wallet::read(store, hash).await;
    let records = read_records(store, keys).await;
    // Released as the full audit releases its locks.
    let unchanged = release(store, [(hash, lock)]).await;
    let (view, records) = (view?, records?);
    Ok(unchanged
        .first()
        .copied()
        .unwrap_or(false)
        .then(|| explain(view, &records)))
}

/// After a clean audit since a checkpoint: writes each checked wallet's
/// new settled sum, then the new checkpoint (the commit point).
pub async fn settle(store: &dyn Store, checkpoint: &Checkpoint, since: &Since) -> Result<Checkpoint> {
    use futures::{StreamExt, TryStreamExt};
    let through = since.floor.to_string();
    futures::stream::iter(&since.wallets)
        .map(|(hash, checked)| {
            let settled = Settled {
                generation: checkpoint.generation.clone(),
                through: through.clone(),
                expected: checked.settled.to_string(),
            };
            async move { put(store, &audited_key(hash), &settled).await }
        })
        .buffer_unordered(READ_DOCS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    let pending: BTreeSet<String> = since.wallets.values().flat_map(|c| c.pending.iter().cloned()).collect();
    if pending.len() > PENDING_MAX {
        return Err(ProtocolError::CorruptRecord(format!(
            "{} records are not finished (at most {PENDING_MAX} fit in a checkpoint): let the workers finish them, then audit again",
            pending.len()
        )));
    }
    let next = Checkpoint {
        generation: checkpoint.generation.clone(),
        through,
        at: crate::domain::time::rfc3339_from_unix_ms(crate::protocol::records::now_ms()),
        pending: pending.into_iter().collect(),
    };
    write_checkpoint(store, &next).await?;
    Ok(next)
}

/// The first checkpoint of a generation, after a clean full audit that
/// began at `floor` and saw `pending` records not final.
pub fn first(floor: Cas, pending: BTreeSet<String>) -> Result<Checkpoint> {
    if pending.len() > PENDING_MAX {
        return Err(ProtocolError::CorruptRecord(format!(
            "more than {PENDING_MAX} records are not finished: let the workers finish them, then audit again"
        )));
    }
    Ok(Checkpoint {
        generation: floor.to_string(),
        through: floor.to_string(),
        at: crate::domain::time::rfc3339_from_unix_ms(crate::protocol::records::now_ms()),
        pending: pending.into_iter().collect(),
    })
}

//! An operator's repair of one wallet (`ledgerd adjust`). A balance
//! document must never be written whole: that drops its markers, and an
//! action still in progress would then credit the wallet again. Here:
//!
//! 1. the wallet is read (balance, markers, CAS) and the ledger scanned, to
//!    know what its records explain for that very state (`accounting`);
//! 2. `adj:<id>` is recorded (`before`, `expected`, `after`, reason);
//! 3. the wallet's body is written under the CAS of step 1, in one
//!    sub-document write that keeps every marker and adds the adjustment's
//!    own (so a retried write applies once); success proves the wallet did
//!    not change since step 1, so `expected` is exact;
//! 4. the record is marked `applied`.
//!
//! A wallet that changed meanwhile is read again; one that keeps changing
//! is locked for the last attempt. `audit` counts `after - expected`.

use std::time::Duration;

use super::accounting;
use super::records::{now_ms, AdjRecord, AdjState};
use super::wallet::{self, State, Write};
use super::{ProtocolError, Result};
use crate::domain::keys::{adj_key, balance_key};
use crate::domain::time::rfc3339_from_unix_ms;
use crate::domain::{Marker, MarkerName, Units, TOTAL_SUPPLY_UNITS};
use crate::store::{Bucket, Cas, Store, StoreError};

/// Attempts before giving up on a wallet that keeps changing; the last one
/// holds the wallet locked.
const ATTEMPTS_MAX: usize = 4;
/// The lock of the last attempt (Couchbase's longest).
const LOCK: Duration = crate::store::limits::LOCK_MAX;

/// What the operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Set the balance to this many units.
    To(u64),
    /// Add (or, negative, remove) this many units.
    By(i128),
}

impl Change {
    /// How the request reads in the record: `to N`, `by +N` or `by -N`.
    pub fn requested(self) -> String {
        match self {
            Change::To(units) => format!("to {units}"),
            Change::By(delta) => format!("by {delta:+}"),
        }
    }
}

/// How an adjustment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adjusted {
    /// The wallet holds the new balance; the record says so.
    Applied(AdjRecord),
    /// Nothing changed, and why.
    Refused(String),
}

/// Adjusts wallet `hash` as `change` asks, recording it as `adj:<id>`.
pub async fn adjust(store: &dyn Store, id: &str, hash: &str, change: Change, reason: &str) -> Result<Adjusted> {
    // An id already applied is done: never apply it twice.
    match store.get(Bucket::Ledger, &adj_key(id)).await {
        Ok(doc) => match AdjRecord::parse(id, &doc.body) {
            Ok(done) if done.hash != hash => {
                return Ok(Adjusted::Refused(format!(
                    "adj:{id} is an adjustment of wallet {}, not {hash}",
                    done.hash
                )))
            }
            Ok(done) if done.requested.as_ref().is_some_and(|r| *r != change.requested()) || done.reason != reason => {
                return Ok(Adjusted::Refused(format!(
                    "adj:{id} exists with other arguments ({}, reason {:?}, {}): nothing changed; give a new --id for a new adjustment, or the same arguments to finish this one",
                    done.requested.as_deref().unwrap_or("an earlier release's request"),
                    done.reason,
                    if done.state == AdjState::Applied { "applied" } else { "recorded, not applied" }
                )))
            }
            Ok(done) if done.state == AdjState::Applied => return Ok(Adjusted::Applied(done)),
            Ok(_) => {}
            Err(e) => return Err(ProtocolError::CorruptRecord(format!("adj:{id}: {e}"))),
        },
        Err(StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    let marker = MarkerName::of_adjustment(id);
    for attempt in 1..=ATTEMPTS_MAX {
        let lock = match attempt == ATTEMPTS_MAX {
            true => lock_wallet(store, hash).await?,
            false => None,
        };
        let view = wallet::read(store, hash).await?;
        if view.has_marker(&marker) {
            // An earlier attempt's write landed (its answer was lost).
            return mark_applied(store, id).await.map(Adjusted::Applied);
        }
        let scan = accounting::scan_wallet(store, hash, &view).await?;
        let explained = scan.explained(hash, &view).total();
        let record = match plan(id, hash, &view, explained, change, reason) {
            Ok(record) => record,
            Err(why) => {
                unlock(store, hash, lock).await;
                return Ok(Adjusted::Refused(why));
            }
        };
        save(store, &record).await?;
        // `plan` keeps `after` within the supply.
        let after = Units::new(record.after).map_err(|e| ProtocolError::CorruptRecord(format!("adj:{id}: {e}")))?;
        let added = [(marker.clone(), Marker::adjustment(id, now_ms()))];
        let mut write = Write::new(hash, &view, after, &added, &[]);
        if let (false, Some(cas)) = (matches!(view, State::Absent), lock) {
            write = write.under_lock(cas);
        }
        match write.send(store).await {
            Ok(_) => return mark_applied(store, id).await.map(Adjusted::Applied),
            // Changed under us, or unknown: look again (the marker tells).
            Err(
                StoreError::CasMismatch
                | StoreError::Exists
                | StoreError::NotFound
                | StoreError::Locked
                | StoreError::PathNotFound(_)
                | StoreError::Ambiguous(_)
                | StoreError::Transient(_),
            ) => unlock(store, hash, lock).await,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Adjusted::Refused(format!(
        "wallet {hash} kept changing, even locked for {} s: nothing changed (adj:{id} stays recorded, not applied); run it again",
        LOCK.as_secs()
    )))
}

/// The record of the adjustment, or why it cannot be made.
fn plan(
    id: &str,
    hash: &str,
    view: &State,
    explained: i128,
    change: Change,
    reason: &str,
) -> std::result::Result<AdjRecord, String> {
    let supply = i128::from(TOTAL_SUPPLY_UNITS);
    let expected = u64::try_from(explained)
        .ok()
        .filter(|e| i128::from(*e) <= supply)
        .ok_or_else(|| {
            format!(
                "the ledger explains {explained} units for wallet {hash}, which no balance can be: audit the ledger"
            )
        })?;
    let before = match view.found() {
        None => Some(0),
        Some(Ok(units)) => Some(units),
        Some(Err(_)) => None,
    };
    if matches!(view, State::Absent) && matches!(change, Change::By(_)) {
        // A mistyped hash must not create a wallet.
        return Err(format!(
            "wallet {hash} does not exist (a mistyped hash?): --by changes an existing balance; create a wallet with --to"
        ));
    }
    let after = match change {
        Change::To(units) => i128::from(units),
        Change::By(delta) => match before {
            Some(b) if b == expected => i128::from(b) + delta,
            Some(b) => {
                return Err(format!(
                    "wallet {hash} holds {b} units where the ledger explains {expected}: repair it with --to {expected} first, then --by"
                ))
            }
            None => {
                return Err(format!(
                    "wallet {hash} holds no valid balance: set one with --to (the ledger explains {expected} units)"
                ))
            }
        },
    };
    if !(0..=supply).contains(&after) {
        return Err(format!(
            "wallet {hash} would hold {after} units: a balance is 0 to {TOTAL_SUPPLY_UNITS}"
        ));
    }
    Ok(AdjRecord {
        id: id.to_string(),
        hash: hash.to_string(),
        before,
        expected,
        after: u64::try_from(after).unwrap_or(0),
        reason: reason.to_string(),
        state: AdjState::Recorded,
        at: rfc3339_from_unix_ms(now_ms()),
        applied_at: None,
        requested: Some(change.requested()),
    })
}

/// Records (or, on a later attempt, re-records) the adjustment.
async fn save(store: &dyn Store, record: &AdjRecord) -> Result<()> {
    let key = adj_key(&record.id);
    match store.get(Bucket::Ledger, &key).await {
        Ok(doc) => store.replace(Bucket::Ledger, &key, &record.to_bytes(), doc.cas).await?,
        Err(StoreError::NotFound) => store.insert(Bucket::Ledger, &key, &record.to_bytes()).await?,
        Err(e) => return Err(e.into()),
    };
    Ok(())
}

/// Marks the record applied (its marker on the wallet already says so, to
/// `audit`); returns it.
async fn mark_applied(store: &dyn Store, id: &str) -> Result<AdjRecord> {
    let key = adj_key(id);
    let doc = store.get(Bucket::Ledger, &key).await?;
    let mut record =
        AdjRecord::parse(id, &doc.body).map_err(|e| ProtocolError::CorruptRecord(format!("{key}: {e}")))?;
    if record.state != AdjState::Applied {
        record.state = AdjState::Applied;
        record.applied_at = Some(rfc3339_from_unix_ms(now_ms()));
        store.replace(Bucket::Ledger, &key, &record.to_bytes(), doc.cas).await?;
    }
    Ok(record)
}

async fn lock_wallet(store: &dyn Store, hash: &str) -> Result<Option<Cas>> {
    match store.get_and_lock(Bucket::Ledger, &balance_key(hash), LOCK).await {
        Ok(doc) => Ok(Some(doc.cas)),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn unlock(store: &dyn Store, hash: &str, lock: Option<Cas>) {
    if let Some(cas) = lock {
        // Best effort: a lapsed lock is gone anyway.
        let _ = store.unlock(Bucket::Ledger, &balance_key(hash), cas).await;
    }
}

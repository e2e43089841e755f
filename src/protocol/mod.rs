//! The crediting protocol (see docs/protocol.md, "How an action is credited"):
//! claim → look up `tx:<id>` → commit → apply → complete → remove → prune.
//!
//! Written once, against [`Store`]. Safety rests on three facts, never on
//! clocks: inserting `tx:<id>` is the single commit point; a wallet write
//! carries the action's marker in the same atomic mutation as the new
//! balance, under the CAS of the read that saw no marker; and a marker is
//! only ever pruned after the record is `completed`, so "no marker, record
//! still committed" (read in that order) proves a credit is not applied.

pub mod accounting;
pub mod adjust;
mod coalesce;
pub mod dead_letters;
mod grouped;
mod options;
mod outcome;
mod recent;
pub mod records;
mod step;
mod steps;
mod sweep;
mod wallet;

use std::convert::Infallible;
use std::time::Duration;

use crate::domain::keys::{action_key, failed_key, sha256_hex, tx_key};
use crate::ops::names as m;
use crate::store::limits::{LOCK_MAX, LOCK_SECS_MAX, LOCK_SECS_MIN};
use crate::store::{Bucket, Cas, Doc, GroupCas, GroupWrite, Store, StoreError};
use coalesce::Applied;
pub use coalesce::{Coalescer, LINEAGE_MAX, SLOTS_MAX};
use dead_letters::{DeadLetters, Entry, FAILED_DOC_BYTES_MAX};
use grouped::send_one;
pub use options::{Options, WALLET_MARKERS_SOFT_MAX};
pub use outcome::{Outcome, ProtocolError, Result, Skip};
pub use recent::{RecentlyCompleted, RECENT_COMPLETED_MAX};
use records::TxState;
pub use step::{backoff, seed_jitter};
pub(crate) use step::{count_retry, read_tx, retry, STEP_ATTEMPTS_MAX};
use steps::{next, Claim, Held, Known, Record, Step, STEPS_MAX};
pub use sweep::sweep_markers;

pub use crate::domain::keys::BLOCKED_XATTR;

/// Which attempt at an action this is, and when the worker will try again
/// if it is blocked (written into [`BLOCKED_XATTR`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first attempt after the action was last seen unblocked.
    pub number: u32,
    /// The delay before the next attempt, if this one is blocked.
    pub retry_in: Duration,
}

impl Default for Attempt {
    fn default() -> Self {
        Self {
            number: 1,
            retry_in: Duration::from_secs(1),
        }
    }
}

/// Claims `action:<id>` and takes it as far as it can go (steps 2–7).
pub async fn process_action(store: &dyn Store, id: &str, opts: &Options) -> Result<Outcome> {
    process_attempt(store, id, opts, Attempt::default()).await
}

/// [`process_action`], saying which attempt this is.
pub async fn process_attempt(store: &dyn Store, id: &str, opts: &Options, attempt: Attempt) -> Result<Outcome> {
    let key = action_key(id);
    let claimed = match store.get_and_lock(Bucket::Queue, &key, opts.lease).await {
        Ok(doc) => doc,
        Err(StoreError::NotFound) => return Ok(Outcome::Skipped(Skip::Gone)),
        Err(StoreError::Locked) => return Ok(Outcome::Skipped(Skip::Busy)),
        Err(e) => return Err(e.into()),
    };
    let claim = Claim::new(claimed);
    let result = tokio::select! {
        biased;
        result = process_claimed(store, id, &claim, opts) => result,
        never = renew(store, &key, &claim, opts.lease) => match never {},
    };
    if let Ok(Outcome::Blocked { reason }) = &result {
        // Say why on the action itself, with the claim's CAS: the write
        // also releases the claim. Then hold it until its retry time, so
        // that no replica tries it sooner. Best effort, like the unlock
        // below: an early attempt costs work, never money.
        let hold = blocked_hold(attempt.retry_in);
        if mark_blocked(store, &key, claim.cas(), reason, attempt.number, hold)
            .await
            .is_ok()
        {
            if let Err(e) = store.get_and_lock(Bucket::Queue, &key, hold).await {
                tracing::debug!(action = id, error = %e, "a blocked action could not be held until its retry time");
            }
            return result;
        }
    }
    if !matches!(
        result,
        Ok(Outcome::Completed { .. } | Outcome::Duplicate | Outcome::Failed { .. } | Outcome::Skipped(_))
    ) {
        // Release the claim so the next attempt need not wait out the lease.
        // Best effort: a lapsed or lost lock is harmless.
        let _ = store.unlock(Bucket::Queue, &key, claim.cas()).await;
    }
    result
}

/// Writes [`BLOCKED_XATTR`] on a claimed action: why, and that it is held
/// for `hold`.
async fn mark_blocked(
    store: &dyn Store,
    key: &str,
    cas: Cas,
    reason: &str,
    attempts: u32,
    hold: Duration,
) -> Result<()> {
    let now = records::now_ms();
    let retry_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
    let note = serde_json::json!({
        "reason": dead_letters::bounded_reason(reason),
        "at": crate::domain::time::rfc3339_from_unix_ms(now),
        "attempts": attempts,
        "retry_after": crate::domain::time::rfc3339_from_unix_ms(now.saturating_add(retry_ms)),
    });
    store
        .set_xattr(Bucket::Queue, key, BLOCKED_XATTR, &note, Some(cas))
        .await?;
    Ok(())
}

/// How long a blocked action is held locked after its attempt: the retry
/// delay, in the whole seconds a lock counts (rounded up), at most
/// Couchbase's longest lock ([`LOCK_SECS_MAX`]). The lock is the store's,
/// so every replica honours the delay, not only the one that blocked it
/// (whose own retry waits at least as long). Nobody holds the lock's CAS:
/// it lapses by itself. An action another replica claimed in between, or
/// that its producer removed, is left as it is.
pub fn blocked_hold(retry_in: Duration) -> Duration {
    let secs = u64::try_from(retry_in.as_millis().div_ceil(1000)).unwrap_or(u64::MAX);
    Duration::from_secs(secs.clamp(LOCK_SECS_MIN, LOCK_SECS_MAX))
}

/// Steps 3 to 7 (see `steps`): what is known of the action picks the next
/// step, which is taken and its answer folded in, until one ends it.
async fn process_claimed(store: &dyn Store, id: &str, claim: &Claim, opts: &Options) -> Result<Outcome> {
    let held = Held { store, id, claim, opts };
    let mut known = Known::new(id);
    let mut taken = Vec::with_capacity(STEPS_MAX);
    loop {
        let step = next(&known);
        // Each step changes what is known so that it is never picked again:
        // the path is at most every step once.
        assert!(!taken.contains(&step), "step {step:?} picked twice for {id}");
        taken.push(step);
        if let Some(outcome) = take(step, &held, &mut known).await? {
            return Ok(outcome);
        }
    }
}

/// Takes one step; `Some` when it ends the action.
async fn take(step: Step, h: &Held<'_>, k: &mut Known) -> Result<Option<Outcome>> {
    match step {
        Step::Reject => {
            let (kind, reason) = k.rejection();
            return reject(h.store, h.id, h.claim, &kind, &reason).await.map(Some);
        }
        Step::LookUp => steps::look_up(h, k).await?,
        Step::Commit => return grouped::commit(h, k).await,
        Step::Apply => {
            let observed = match &mut k.record {
                Record::Found { observed, .. } => observed.take(),
                _ => None,
            };
            let Some((tx, _)) = k.tx() else {
                return Err(ProtocolError::CorruptRecord(format!(
                    "tx:{id}: applied before it was read",
                    id = h.id
                )));
            };
            let application = h
                .opts
                .coalescer
                .apply(h.store, h.id, tx, observed, h.opts.rules())
                .await?;
            k.credited.0 += application.written_credits;
            k.credited.1 = k.credited.1.saturating_add(application.written_units);
            match application.applied {
                Applied::Blocked(reason) => return Ok(Some(Outcome::Blocked { reason })),
                Applied::Done | Applied::CompletedElsewhere => k.applied = true,
            }
        }
        Step::CompleteAndRemove => grouped::complete_and_remove(h, k).await,
        Step::Complete => complete(h, k).await?,
        Step::Remove => finish(h, k).await?,
        Step::Done => return Ok(Some(k.outcome())),
    }
    Ok(None)
}

/// Step 5: mark the record completed (one write when nothing interferes).
async fn complete(h: &Held<'_>, k: &mut Known) -> Result<()> {
    let (store, id) = (h.store, h.id);
    let Some((tx, mut cas)) = k.tx() else {
        return Err(ProtocolError::CorruptRecord(format!(
            "tx:{id}: completed before it was read"
        )));
    };
    let (key, body) = (tx_key(id), tx.completed_now().to_bytes());
    for _ in 0..STEP_ATTEMPTS_MAX {
        let replace = GroupWrite::Replace {
            bucket: Bucket::Ledger,
            key: key.clone(),
            body: body.clone(),
            cas: GroupCas::Known(cas),
        };
        match send_one(store, replace).await {
            Ok(_) => {
                k.set_completed(h);
                return Ok(());
            }
            Err(StoreError::CasMismatch) => {}
            Err(e) if e.is_retryable() => {}
            Err(e) => return Err(e.into()),
        }
        // Someone else (or our own ambiguous write) changed it: look again.
        match read_tx(store, id).await? {
            Some((current, _)) if current.state == TxState::Completed => {
                k.set_completed(h);
                return Ok(());
            }
            Some((_, current_cas)) => cas = current_cas,
            None => {
                return Err(ProtocolError::CorruptRecord(format!(
                    "tx:{id} vanished before completion"
                )))
            }
        }
    }
    Err(StoreError::Transient(format!("could not complete tx:{id}")).into())
}

/// Step 6: remove the action, or preserve it as failed if its body is not
/// the one the record was made from.
async fn finish(h: &Held<'_>, k: &mut Known) -> Result<()> {
    let Some((tx, _)) = k.tx() else {
        return Err(ProtocolError::CorruptRecord(format!(
            "tx:{}: removed before it was read",
            h.id
        )));
    };
    let (store, id) = (h.store, h.id);
    // After a rewrite we hold the new body under a lock of our own.
    let mut relocked: Option<Claim> = None;
    for _ in 0..STEP_ATTEMPTS_MAX {
        let current = relocked.as_ref().unwrap_or(h.claim);
        if sha256_hex(&current.body) != tx.digest {
            let reason = format!(
                "conflicting duplicate: action {id:?} was already credited from a different body (digest {})",
                tx.digest
            );
            let outcome = reject(store, id, current, "conflicting duplicate", &reason).await?;
            k.removed = Some(Some(outcome));
            return Ok(());
        }
        match remove_action(store, id, current).await? {
            Removal::Done => {
                k.removed = Some(None);
                return Ok(());
            }
            Removal::Changed(doc) => relocked = Some(Claim::new(doc)),
        }
    }
    k.removed = Some(Some(Outcome::Skipped(Skip::Changed)));
    Ok(())
}

enum Removal {
    /// The action is gone, or another worker holds it (and will find the record).
    Done,
    /// The body was rewritten; here it is, locked by us.
    Changed(Doc),
}

/// Removes `action:<id>` if it still holds the claimed body.
async fn remove_action(store: &dyn Store, id: &str, claim: &Claim) -> Result<Removal> {
    let key = action_key(id);
    let remove = |cas| GroupWrite::Remove {
        bucket: Bucket::Queue,
        key: key.clone(),
        cas: Some(cas),
    };
    match retry(|| send_one(store, remove(claim.cas()))).await.map(drop) {
        Ok(()) | Err(StoreError::NotFound) | Err(StoreError::Locked) => return Ok(Removal::Done),
        Err(StoreError::CasMismatch) => {}
        Err(e) => return Err(e.into()),
    }
    // Our lock lapsed and the document changed: lock it again and look.
    let doc = match store.get_and_lock(Bucket::Queue, &key, LOCK_MAX).await {
        Ok(doc) => doc,
        Err(StoreError::NotFound) | Err(StoreError::Locked) => return Ok(Removal::Done),
        Err(e) => return Err(e.into()),
    };
    if doc.body == claim.body {
        return match retry(|| send_one(store, remove(doc.cas))).await.map(drop) {
            Ok(()) | Err(StoreError::NotFound) | Err(StoreError::Locked) => Ok(Removal::Done),
            Err(StoreError::CasMismatch) => Ok(Removal::Done),
            Err(e) => Err(e.into()),
        };
    }
    Ok(Removal::Changed(doc))
}

/// Preserves a rejected action as an entry of `failed:<id>` (beside every
/// earlier rejected body of the id), then removes it. If the failed
/// document would not fit in one item, the action stays queued, blocked,
/// with a reason that says what to do: nothing is dropped.
async fn reject(store: &dyn Store, id: &str, claim: &Claim, kind: &str, reason: &str) -> Result<Outcome> {
    let key = failed_key(id);
    let entry = Entry::new(&claim.body, kind, reason);
    let mut written = false;
    for _ in 0..STEP_ATTEMPTS_MAX {
        let existing = match retry(|| store.get(Bucket::Queue, &key)).await {
            Ok(doc) => Some(doc),
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        let (mut letters, cas) = match &existing {
            None => (DeadLetters::default(), None),
            Some(doc) => (DeadLetters::parse(&doc.body), Some(doc.cas)),
        };
        if !letters.reject(entry.clone()) {
            written = true;
            break;
        }
        let doc = letters.encode(id);
        if doc.len() > FAILED_DOC_BYTES_MAX {
            return Ok(unpreservable(&key, doc.len(), reason));
        }
        let result = match cas {
            None => store.insert(Bucket::Queue, &key, &doc).await,
            Some(cas) => store.replace(Bucket::Queue, &key, &doc, cas).await,
        };
        match result {
            Ok(_) => {
                written = true;
                break;
            }
            Err(StoreError::Exists | StoreError::CasMismatch) => continue,
            Err(e) if e.is_retryable() => continue,
            Err(StoreError::LimitExceeded(_)) => return Ok(unpreservable(&key, doc.len(), reason)),
            Err(e) => return Err(e.into()),
        }
    }
    if !written {
        return Err(StoreError::Transient(format!("could not write {key}")).into());
    }
    Ok(match remove_action(store, id, claim).await? {
        Removal::Done => Outcome::Failed {
            reason: dead_letters::bounded_reason(reason),
        },
        // Rewritten since we read it: the new body gets its own turn.
        Removal::Changed(doc) => {
            let _ = store.unlock(Bucket::Queue, &action_key(id), doc.cas).await;
            Outcome::Skipped(Skip::Changed)
        }
    })
}

/// The outcome of a rejection whose failed document cannot be written.
fn unpreservable(key: &str, bytes: usize, reason: &str) -> Outcome {
    Outcome::Blocked {
        reason: format!(
            "rejected ({}), but {key} would be {bytes} bytes, more than Couchbase's {FAILED_DOC_BYTES_MAX}: the action stays queued; save and remove {key} (it holds earlier rejected bodies of this id), or save and remove the action itself",
            dead_letters::bounded_reason(reason)
        ),
    }
}

/// Renews the lock every two thirds of the lease, for as long as it is
/// polled. Renewal is unlock then lock again (Couchbase cannot extend a
/// lock); if another worker takes the action in between, or the body
/// changed, the claim is reported lost and renewal stops. Nothing depends on
/// it for safety: a lost claim only means two workers may run the action,
/// which the protocol makes harmless.
async fn renew(store: &dyn Store, key: &str, claim: &Claim, lease: Duration) -> Infallible {
    let every = lease * 2 / 3;
    loop {
        tokio::time::sleep(every).await;
        let renewed = match store.unlock(Bucket::Queue, key, claim.cas()).await {
            Ok(()) => match store.get_and_lock(Bucket::Queue, key, lease).await {
                Ok(doc) if doc.body == claim.body => {
                    claim.relocked(doc.cas);
                    true
                }
                Ok(doc) => {
                    // Rewritten by a producer: not ours to hold; `finish` sees it.
                    let _ = store.unlock(Bucket::Queue, key, doc.cas).await;
                    false
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        metrics::counter!(m::LEASE_RENEWALS, "result" => if renewed { "renewed" } else { "lost" }).increment(1);
        if !renewed {
            tracing::warn!(
                key,
                lease_ms = lease.as_millis() as u64,
                "lease renewal failed: another worker may take this action over (safe)"
            );
            return std::future::pending().await;
        }
        tracing::debug!(key, "lease renewed");
    }
}

#[cfg(test)]
mod tests;

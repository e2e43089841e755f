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
mod apply;
mod claim;
mod coalesce;
pub mod dead_letters;
mod grouped;
mod options;
mod outcome;
mod recent;
pub mod records;
mod step;
mod sweep;
mod wallet;

use std::time::Duration;

use crate::domain::keys::{action_key, check_action_id, failed_key, sha256_hex, tx_key};
use crate::domain::{plan_action, Plan};
use crate::store::limits::{LOCK_MAX, LOCK_SECS_MAX, LOCK_SECS_MIN};
use crate::store::{Bucket, Cas, Doc, GroupCas, Store, StoreError, WriteGroup};
use apply::{apply_credits, Applied};
use claim::Claim;
pub use coalesce::{Coalescer, LINEAGE_MAX, SLOTS_MAX};
use dead_letters::{DeadLetters, Entry, FAILED_DOC_BYTES_MAX};
use grouped::Progress;
pub use options::{Options, WALLET_MARKERS_SOFT_MAX};
pub use outcome::{Outcome, ProtocolError, Result, Skip};
pub use recent::{RecentlyCompleted, RECENT_COMPLETED_MAX};
use records::{TxRecord, TxState};
pub use step::{backoff, seed_jitter};
pub(crate) use step::{count_retry, read_tx, retry, STEP_ATTEMPTS_MAX};
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
        never = claim::renew(store, &key, &claim, opts.lease) => match never {},
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

async fn process_claimed(store: &dyn Store, id: &str, claim: &Claim, opts: &Options) -> Result<Outcome> {
    if let Err(e) = check_action_id(id) {
        return reject(store, id, claim, "invalid action id", &format!("action id {e}")).await;
    }
    let mut progress = Progress::default();
    // Step 3's lookup of the record and, for a body that plans, its reads of
    // the wallets go out together: one round trip. The reads are only used
    // if the record is absent, and then our own insert of it, after them,
    // proves that no credit of this action was applied before them.
    let (record, planned) = match plan_action(&claim.body) {
        Ok(plan) => {
            let (record, reads) =
                futures::join!(read_tx(store, id), apply::observe_wallets(store, &plan.credits, opts));
            (record?, Ok((plan, reads)))
        }
        Err(e) => (read_tx(store, id).await?, Err(e)),
    };
    let (tx, tx_cas, prefetched) = match record {
        Some((tx, cas)) => (tx, cas, None),
        None => {
            let (plan, reads) = match planned {
                Ok((plan, reads)) => (plan, reads?),
                Err(e) => return reject(store, id, claim, &e.kind(), &e.to_string()).await,
            };
            match commit(store, id, claim, &plan, reads, opts).await? {
                Commit::Blocked(reason) => return Ok(Outcome::Blocked { reason }),
                // A record another worker already completed (it won the
                // commit race and finished) makes this a duplicate too.
                Commit::Recorded { tx, cas, prefetched } => (tx, cas, prefetched),
                Commit::Grouped { tx, cas, done } => {
                    progress = done;
                    (tx, cas, None)
                }
            }
        }
    };
    let was_completed = tx.state == TxState::Completed;
    let (mut stale, mut credited) = (progress.stale, progress.credited);
    if tx.state == TxState::Committed && !progress.completed {
        if !progress.applied {
            let application = apply_credits(store, id, &tx, prefetched, opts).await?;
            stale.extend(application.stale);
            credited.0 += application.written_credits;
            credited.1 = credited.1.saturating_add(application.written_units);
            match application.applied {
                Applied::Blocked(reason) => return Ok(Outcome::Blocked { reason }),
                Applied::Done | Applied::CompletedElsewhere => {}
            }
        }
        if sha256_hex(&claim.body) == tx.digest {
            (progress.completed, progress.removed) = complete_and_remove(store, id, &tx, tx_cas, claim).await;
        }
        if !progress.completed {
            complete(store, id, &tx, tx_cas).await?;
        }
    }
    // From here the record is completed: this action's markers may go.
    opts.recent.insert(id);
    let removed = match progress.removed {
        true => None,
        false => finish(store, id, claim, &tx).await?,
    };
    wallet::prune_stale(store, &stale).await;
    Ok(match removed {
        Some(outcome) => outcome,
        None if was_completed => Outcome::Duplicate,
        None => Outcome::Completed {
            credits: credited.0,
            units: credited.1,
        },
    })
}

enum Commit {
    Blocked(String),
    Recorded {
        tx: TxRecord,
        cas: Cas,
        prefetched: Option<Vec<wallet::State>>,
    },
    /// Committed by a write group, which may have gone further.
    Grouped {
        tx: TxRecord,
        cas: Cas,
        done: Progress,
    },
}

/// Step 3: pre-check the wallets (`reads`, observed before the record
/// exists), then insert the record (the commit point), as the first write
/// of a group with steps 4 to 6 where that is safe.
async fn commit(
    store: &dyn Store,
    id: &str,
    claim: &Claim,
    plan: &Plan,
    reads: Vec<wallet::State>,
    opts: &Options,
) -> Result<Commit> {
    let own = crate::domain::MarkerName::of_action(id);
    for (credit, read) in plan.credits.iter().zip(&reads) {
        if let Some(reason) = read.precheck(credit, &own) {
            return Ok(Commit::Blocked(reason));
        }
    }
    let error = match grouped::try_group(store, id, claim, plan, &reads, opts).await {
        grouped::Reached::Committed { tx, cas, done } => return Ok(Commit::Grouped { tx, cas, done }),
        // Not applied: the insert alone, retried as any step is.
        grouped::Reached::NotTried | grouped::Reached::NotCommitted(StoreError::Transient(_)) => {
            let tx = TxRecord::committed(id, plan);
            let (key, body) = (tx_key(id), tx.to_bytes());
            match retry(|| store.insert(Bucket::Ledger, &key, &body)).await {
                // Our insert made the record after our reads, so nobody can
                // have applied (let alone pruned) a credit before them: the
                // reads stand.
                Ok(cas) => {
                    return Ok(Commit::Recorded {
                        tx,
                        cas,
                        prefetched: Some(reads),
                    })
                }
                Err(e) => e,
            }
        }
        grouped::Reached::NotCommitted(e) => e,
    };
    match error {
        // Another worker committed first (or our insert was ambiguous):
        // continue with whatever record exists, reading wallets afresh.
        StoreError::Exists | StoreError::Ambiguous(_) => match read_tx(store, id).await? {
            Some((tx, cas)) => Ok(Commit::Recorded {
                tx,
                cas,
                prefetched: None,
            }),
            None => Err(StoreError::Transient("transaction record not visible after insert".into()).into()),
        },
        e => Err(e.into()),
    }
}

/// Steps 5 and 6 handed to the store as one ordered group: the record's
/// completion, then the removal of the action under the claim's CAS, each
/// exactly the write its step makes alone (a transactional store commits
/// both at once; Couchbase runs them one after the other). Returns whether
/// each succeeded; what did not is then done by the steps themselves,
/// which recover from any state the group can leave (a failed or
/// ambiguous completion is read again; a removal that failed is retried or
/// judged by `finish`).
async fn complete_and_remove(store: &dyn Store, id: &str, tx: &TxRecord, cas: Cas, claim: &Claim) -> (bool, bool) {
    let group: WriteGroup = grouped::complete_and_remove_stages(id, tx, GroupCas::Known(cas), claim).into();
    let results = store.write_group(&group).await;
    let ok = |stage: usize| matches!(results.get(stage).and_then(|s| s.first()), Some(Some(Ok(_))));
    (ok(0), ok(0) && ok(1))
}

/// Step 5: mark the record completed (one write when nothing interferes).
async fn complete(store: &dyn Store, id: &str, tx: &TxRecord, mut cas: Cas) -> Result<()> {
    let done = tx.completed_now();
    for _ in 0..STEP_ATTEMPTS_MAX {
        match store.replace(Bucket::Ledger, &tx_key(id), &done.to_bytes(), cas).await {
            Ok(_) => return Ok(()),
            Err(StoreError::CasMismatch) => {}
            Err(e) if e.is_retryable() => {}
            Err(e) => return Err(e.into()),
        }
        // Someone else (or our own ambiguous write) changed it: look again.
        match read_tx(store, id).await? {
            Some((current, _)) if current.state == TxState::Completed => return Ok(()),
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
/// the one the record was made from. Returns an outcome when it differs
/// from a plain completion.
async fn finish(store: &dyn Store, id: &str, claim: &Claim, tx: &TxRecord) -> Result<Option<Outcome>> {
    // After a rewrite we hold the new body under a lock of our own.
    let mut relocked: Option<Claim> = None;
    for _ in 0..STEP_ATTEMPTS_MAX {
        let current = relocked.as_ref().unwrap_or(claim);
        if sha256_hex(&current.body) != tx.digest {
            let reason = format!(
                "conflicting duplicate: action {id:?} was already credited from a different body (digest {})",
                tx.digest
            );
            return reject(store, id, current, "conflicting duplicate", &reason)
                .await
                .map(Some);
        }
        match remove_action(store, id, current).await? {
            Removal::Done => return Ok(None),
            Removal::Changed(doc) => relocked = Some(Claim::new(doc)),
        }
    }
    Ok(Some(Outcome::Skipped(Skip::Changed)))
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
    match retry(|| store.remove(Bucket::Queue, &key, Some(claim.cas()))).await {
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
        return match retry(|| store.remove(Bucket::Queue, &key, Some(doc.cas))).await {
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

#[cfg(test)]
mod tests;

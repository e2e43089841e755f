//! Steps 3 to 6 of a claimed action as one path. [`Known`] is what this
//! worker knows of the action, built only from the store's answers;
//! [`next`], a pure function of it, names the next step; the flow
//! (`process_claimed`) takes that step and folds the store's answer back
//! in, until a step ends the action. No step is taken twice for one claim.
//! Here too: step 3's reads (`look_up`). Step 3's commit and the groups of
//! writes the steps hand the store are in `grouped.rs`; steps 5 and 6 alone
//! are in the flow, and step 4's writes are the coalescer's.

use std::sync::atomic::{AtomicU64, Ordering};

use super::records::{TxRecord, TxState};
use super::wallet::State;
use super::{read_tx, Options, Outcome, Result};
use crate::domain::keys::{check_action_id, sha256_hex};
use crate::domain::{plan_action, ActionError, Plan};
use crate::store::{Cas, Doc, Store};

/// The action we hold: its body as claimed, and the CAS of our lock, which
/// changes when the lease is renewed.
pub(crate) struct Claim {
    pub body: Vec<u8>,
    cas: AtomicU64,
}

impl Claim {
    pub fn new(doc: Doc) -> Self {
        Self {
            body: doc.body,
            cas: AtomicU64::new(doc.cas),
        }
    }

    /// The CAS of our lock now.
    pub fn cas(&self) -> Cas {
        self.cas.load(Ordering::SeqCst)
    }

    /// Our lock was taken again (the lease renewed): its CAS is `cas`.
    pub fn relocked(&self, cas: Cas) {
        self.cas.store(cas, Ordering::SeqCst);
    }
}

/// A claimed action and what it is worked with.
pub(super) struct Held<'a> {
    pub store: &'a dyn Store,
    pub id: &'a str,
    pub claim: &'a Claim,
    pub opts: &'a Options,
}

/// A step of a claimed action: each is taken at most once per claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Preserve the action as failed: its id or body cannot be credited.
    Reject,
    /// Step 3's reads: the wallets of a body that plans (the record is
    /// presumed absent until the insert says otherwise), or the record of
    /// one that does not.
    LookUp,
    /// Step 3: commit, with steps 4 to 6 as one group where that is safe.
    Commit,
    /// Step 4 through the coalescer.
    Apply,
    /// Steps 5 and 6 as one group of two.
    CompleteAndRemove,
    /// Step 5 alone.
    Complete,
    /// Step 6 alone (or the rejection of a body that is not the record's).
    Remove,
    /// Nothing is left: report the outcome.
    Done,
}

/// Steps in the longest path (every variant of [`Step`] but `Reject`).
pub(super) const STEPS_MAX: usize = 7;

/// `tx:<id>`, as far as this worker has looked it up.
pub(super) enum Record {
    NotRead,
    /// Absent, or presumed so (not read: the insert tells): the body's
    /// plan with its wallets as read before any insert of the record, or
    /// why the body has no plan (then the record was read, and is absent).
    Absent(std::result::Result<(Plan, Vec<State>), ActionError>),
    /// The record and its CAS.
    Found {
        tx: TxRecord,
        cas: Cas,
        /// The wallets as read before our own insert of the record, if we
        /// made it and step 4 has not used them yet.
        observed: Option<Vec<State>>,
        /// The claimed body is the one the record was made from.
        same_body: bool,
    },
}

/// What this worker knows of the action it holds.
pub(super) struct Known {
    /// Why the id cannot be an action's.
    pub(super) bad_id: Option<String>,
    pub(super) record: Record,
    /// The record was already completed when this worker found it.
    pub(super) found_completed: bool,
    /// Every credit carries the action's marker.
    pub(super) applied: bool,
    /// The record is completed.
    pub(super) completed: bool,
    /// Steps 5 and 6 were tried as a group.
    pub(super) paired: bool,
    /// Step 6 is done; with its outcome where that is not a plain one.
    pub(super) removed: Option<Option<Outcome>>,
    /// Credits and units this worker's own writes applied.
    pub(super) credited: (usize, u64),
}

/// The next step for an action, from what is known of it.
pub(super) fn next(k: &Known) -> Step {
    let same_body = match &k.record {
        _ if k.bad_id.is_some() => return Step::Reject,
        Record::NotRead => return Step::LookUp,
        Record::Absent(Err(_)) => return Step::Reject,
        Record::Absent(Ok(_)) => return Step::Commit,
        Record::Found { same_body, .. } => *same_body,
    };
    match () {
        _ if !k.completed && !k.applied => Step::Apply,
        _ if !k.completed && same_body && !k.paired && k.removed.is_none() => Step::CompleteAndRemove,
        _ if !k.completed => Step::Complete,
        _ if k.removed.is_none() => Step::Remove,
        _ => Step::Done,
    }
}

impl Known {
    pub(super) fn new(id: &str) -> Self {
        Self {
            bad_id: check_action_id(id).err().map(|e| format!("action id {e}")),
            record: Record::NotRead,
            found_completed: false,
            applied: false,
            completed: false,
            paired: false,
            removed: None,
            credited: (0, 0),
        }
    }

    /// Why the action is rejected, as (kind, reason).
    pub(super) fn rejection(&self) -> (String, String) {
        match (&self.bad_id, &self.record) {
            (Some(reason), _) => ("invalid action id".into(), reason.clone()),
            (None, Record::Absent(Err(e))) => (e.kind(), e.to_string()),
            _ => ("unknown".into(), "rejected".into()),
        }
    }

    /// The record is `tx` (with `cas`): found, or inserted by us after
    /// reading the wallets as `observed`.
    pub(super) fn found(&mut self, tx: TxRecord, cas: Cas, observed: Option<Vec<State>>, h: &Held<'_>) {
        let same_body = sha256_hex(&h.claim.body) == tx.digest;
        self.found_completed = tx.state == TxState::Completed;
        self.record = Record::Found {
            tx,
            cas,
            observed,
            same_body,
        };
        if self.found_completed {
            self.set_completed(h);
        }
    }

    /// The record is completed: from here this action's markers may go.
    pub(super) fn set_completed(&mut self, h: &Held<'_>) {
        self.completed = true;
        h.opts.recent.insert(h.id);
    }

    /// The record and its CAS, once found.
    pub(super) fn tx(&self) -> Option<(&TxRecord, Cas)> {
        match &self.record {
            Record::Found { tx, cas, .. } => Some((tx, *cas)),
            _ => None,
        }
    }

    /// How the action ended, once every step is done.
    pub(super) fn outcome(&mut self) -> Outcome {
        match self.removed.take().flatten() {
            Some(outcome) => outcome,
            None if self.found_completed => Outcome::Duplicate,
            None => Outcome::Completed {
                credits: self.credited.0,
                units: self.credited.1,
            },
        }
    }
}

/// Step 3's lookup. For a body that plans, the reads of its wallets only:
/// the record is presumed absent, not read, and the insert that follows
/// tells (it fails with "exists" where the record is there: a resumed
/// action or a duplicate delivery, which then read it). Our own insert,
/// after the reads, proves that no credit of this action was applied
/// before them. A body that does not plan reads the record, which may say
/// it was already credited from another body.
pub(super) async fn look_up(h: &Held<'_>, k: &mut Known) -> Result<()> {
    match plan_action(&h.claim.body) {
        Ok(plan) => {
            let reads = h.opts.coalescer.observe(h.store, &plan.credits).await?;
            k.record = Record::Absent(Ok((plan, reads)));
        }
        Err(e) => match read_tx(h.store, h.id).await? {
            Some((tx, cas)) => k.found(tx, cas, None, h),
            None => k.record = Record::Absent(Err(e)),
        },
    }
    Ok(())
}

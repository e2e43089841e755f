//! Steps 3 to 7 of a claimed action as one path. [`Known`] is what this
//! worker knows of the action, built only from the store's answers;
//! [`next`], a pure function of it, names the next step; the flow
//! (`process_claimed`) takes that step and folds the store's answer back
//! in, until a step ends the action. No step is taken twice for one claim.
//! Below: step 3 (`commit`) and the groups the record's writes and the
//! action's removals go to the store in (three stages, or one); steps 5
//! and 6 alone are in the flow, and step 4's writes are the coalescer's.
//!
//! Steps 3 to 6 go to the store as ONE ordered group of writes (see
//! `store::group`) when nothing makes it doubtful: insert the record; write
//! every wallet; mark the record completed and remove the action, side by
//! side (each needs only every credit applied). Steps 5 and 6 go as a
//! group of one stage after step 4 ran on its own. Each write of a
//! group is exactly the one its step makes alone, under the same CAS and
//! with the same proof, so a group that stops part way (a conflict, an
//! ambiguous answer, a crash) leaves a state the steps already recover
//! from, and [`next`] takes the action on from there. A transactional store
//! commits a group at once (one commit per action instead of six);
//! Couchbase runs it stage by stage, as many round trips as the steps alone.
//!
//! The three-stage group is taken only when the wallets' states were read
//! before the record existed (the commit step's own proof: nothing can be
//! applied before the record exists), no other credit of this process is
//! on its way to any of the wallets (their coalescer slots are idle and
//! held for the group's duration), and no write needs to confirm other
//! actions' markers first.

use std::sync::atomic::{AtomicU64, Ordering};

use super::records::{self, TxRecord, TxState};
use super::wallet::{plan, Stale, State, Write, WRITE_XATTR_SPECS_MAX};
use super::{read_tx, retry, Options, Outcome, ProtocolError, Result};
use crate::domain::keys::{action_key, check_action_id, sha256_hex, tx_key};
use crate::domain::{plan_action, ActionError, Marker, MarkerName, Plan};
use crate::ops::names as m;
use crate::store::{Bucket, Cas, Doc, GroupCas, GroupWrite, Store, StoreError, WriteGroup};

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
    /// Step 7: prune the old markers seen on the wallets.
    Prune,
    /// Nothing is left: report the outcome.
    Done,
}

/// Steps in the longest path (every variant of [`Step`] but `Reject`).
pub(super) const STEPS_MAX: usize = 8;

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
    /// Step 7 is done.
    pub(super) pruned: bool,
    /// Old markers of other actions seen on the wallets.
    pub(super) stale: Vec<Stale>,
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
        _ if !k.pruned => Step::Prune,
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
            pruned: false,
            stale: Vec::new(),
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

/// Step 3: pre-check the wallets (read before the record exists), then
/// insert the record (the commit point), as the first write of a group
/// with steps 4 to 6 where that is safe.
pub(super) async fn commit(h: &Held<'_>, k: &mut Known) -> Result<Option<Outcome>> {
    let Record::Absent(Ok((plan, reads))) = std::mem::replace(&mut k.record, Record::NotRead) else {
        return Err(ProtocolError::CorruptRecord(format!(
            "tx:{}: commit without a plan",
            h.id
        )));
    };
    let own = MarkerName::of_action(h.id);
    for (credit, read) in plan.credits.iter().zip(&reads) {
        if let Some(reason) = read.precheck(credit, &own) {
            // The record was presumed absent: before blocking on a wallet,
            // see whether the action is already committed (then it goes on
            // from its record, as any resumed action does).
            return match read_tx(h.store, h.id).await? {
                Some((tx, cas)) => {
                    k.found(tx, cas, None, h);
                    Ok(None)
                }
                None => Ok(Some(Outcome::Blocked { reason })),
            };
        }
    }
    let error = match try_group(h, &plan, &reads, k).await {
        Grouped::Committed => return Ok(None),
        // Not applied: the insert alone, retried as any step is.
        Grouped::NotTried | Grouped::NotCommitted(StoreError::Transient(_)) => {
            let tx = TxRecord::committed(h.id, &plan);
            let (key, body) = (tx_key(h.id), tx.to_bytes());
            let insert = || GroupWrite::Insert {
                bucket: Bucket::Ledger,
                key: key.clone(),
                body: body.clone(),
            };
            match retry(|| send_one(h.store, insert())).await {
                // Our insert made the record after our reads, so nobody can
                // have applied (let alone pruned) a credit before them: the
                // reads stand.
                Ok(cas) => {
                    k.found(tx, cas, Some(reads), h);
                    return Ok(None);
                }
                Err(e) => e,
            }
        }
        Grouped::NotCommitted(e) => e,
    };
    match error {
        // Another worker committed first (or our insert was ambiguous):
        // continue with whatever record exists, reading wallets afresh.
        StoreError::Exists | StoreError::Ambiguous(_) => match read_tx(h.store, h.id).await? {
            Some((tx, cas)) => {
                k.found(tx, cas, None, h);
                Ok(None)
            }
            None => Err(StoreError::Transient("transaction record not visible after insert".into()).into()),
        },
        e => Err(e.into()),
    }
}

/// How far the three-stage group took an action.
enum Grouped {
    /// The group was not tried; nothing was written.
    NotTried,
    /// The record was not inserted by it, for this reason.
    NotCommitted(StoreError),
    /// The record is committed; what else the group did is in `Known`.
    Committed,
}

/// Tries steps 3 to 6 as one group for an action with no record yet;
/// `reads` are the wallets of `plan` as observed before any insert of the
/// record, each already checked to take its credit.
async fn try_group(h: &Held<'_>, plan: &Plan, reads: &[State], k: &mut Known) -> Grouped {
    let (id, opts) = (h.id, h.opts);
    let hashes: Vec<&str> = plan.credits.iter().map(|c| c.hash.as_str()).collect();
    let Some(leads) = opts.coalescer.lead_idle(&hashes) else {
        return Grouped::NotTried;
    };
    let own = MarkerName::of_action(id);
    let at = records::now_ms();
    let mut wallets = Vec::with_capacity(plan.credits.len());
    let mut stale = Vec::new();
    for (credit, read) in plan.credits.iter().zip(reads) {
        let Some(balance) = read.balance() else {
            return Grouped::NotTried;
        };
        if read.has_marker(&own) {
            return Grouped::NotTried;
        }
        let Some(next) = balance.checked_add(credit.units) else {
            return Grouped::NotTried;
        };
        let prunable = read.known_completed(&opts.recent);
        let Some(prunes) = plan_one(read.markers().len(), prunable.len(), opts.wallet_markers_soft_max) else {
            // Above its soft maximum without enough known-completed markers:
            // the coalescer confirms others' markers first.
            return Grouped::NotTried;
        };
        stale.extend(read.stale(&credit.hash, &opts.recent));
        let added = [(own.clone(), Marker::credit(id, credit.units, at))];
        let write = Write::new(&credit.hash, read, next, &added, &prunable[..prunes]);
        wallets.push((read, write, credit.units));
    }
    let tx = TxRecord::committed(id, plan);
    let mut group: WriteGroup = vec![
        vec![GroupWrite::Insert {
            bucket: Bucket::Ledger,
            key: tx_key(id),
            body: tx.to_bytes(),
        }],
        wallets.iter().map(|(_, w, _)| w.to_group()).collect(),
    ];
    group.push(complete_and_remove_stage(id, &tx, GroupCas::LeftBy(0, 0), h.claim));
    let ran = Answers(h.store.write_group(&group).await);
    let cas = match ran.get(0, 0) {
        Some(Ok(cas)) => cas,
        failed => {
            (0..wallets.len()).for_each(|i| leads.forget(i));
            return Grouped::NotCommitted(match failed {
                Some(Err(e)) => e,
                _ => StoreError::Transient("the write group did not run".into()),
            });
        }
    };
    k.found(tx, cas, None, h);
    k.stale = stale;
    k.applied = true;
    for (i, (basis, write, units)) in wallets.into_iter().enumerate() {
        match ran.get(1, i) {
            Some(Ok(new_cas)) => {
                k.credited = (k.credited.0 + 1, k.credited.1.saturating_add(units.get()));
                metrics::counter!(m::WALLET_WRITES).increment(1);
                metrics::counter!(m::WALLET_WRITE_CREDITS).increment(1);
                metrics::counter!(m::MARKERS_PRUNED).increment(write.removed() as u64);
                leads.wrote(i, basis, write.landed(new_cas));
            }
            _ => {
                k.applied = false;
                leads.forget(i);
            }
        }
    }
    if ran.ok(2, 0) {
        k.set_completed(h);
    }
    if ran.ok(2, 1) {
        k.removed = Some(None);
    }
    Grouped::Committed
}

/// Hands the store one write as a group of one stage: every write of the
/// record and every removal of the action goes to the store as a group, of
/// one stage or three (a store runs a group of one as the single call it
/// is).
pub(super) async fn send_one(store: &dyn Store, write: GroupWrite) -> std::result::Result<Cas, StoreError> {
    Answers(store.write_group(&vec![vec![write]]).await)
        .get(0, 0)
        .unwrap_or_else(|| Err(StoreError::Transient("the write group did not run".into())))
}

/// What a store answered for each write of a group, by stage.
struct Answers(Vec<Vec<Option<std::result::Result<Cas, StoreError>>>>);

impl Answers {
    /// The answer to the `i`th write of `stage`, if it ran.
    fn get(&self, stage: usize, i: usize) -> Option<std::result::Result<Cas, StoreError>> {
        self.0.get(stage).and_then(|s| s.get(i)).cloned().flatten()
    }

    /// Whether the `i`th write of `stage` ran and succeeded.
    fn ok(&self, stage: usize, i: usize) -> bool {
        matches!(self.0.get(stage).and_then(|s| s.get(i)), Some(Some(Ok(_))))
    }
}

/// Steps 5 and 6 as the last stage of a group, side by side: `tx` marked
/// completed under `cas`, and the action removed under the claim's CAS.
/// Both need only every credit applied, which the stages before them (or
/// the steps) established; neither needs the other. Removed while its
/// record is still `committed` (the completion failed, or the worker died
/// between the two answers), an action is exact and traceable all the
/// same: every credit carries its marker, and `audit` counts a committed
/// record's marked credits. Whoever next meets the record with every
/// credit marked completes it (`wallet::complete_if_applied`: a pruner, the
/// sweep, a duplicate delivery).
fn complete_and_remove_stage(id: &str, tx: &TxRecord, cas: GroupCas, claim: &Claim) -> Vec<GroupWrite> {
    vec![
        GroupWrite::Replace {
            bucket: Bucket::Ledger,
            key: tx_key(id),
            body: tx.completed_now().to_bytes(),
            cas,
        },
        GroupWrite::Remove {
            bucket: Bucket::Queue,
            key: action_key(id),
            cas: Some(claim.cas()),
        },
    ]
}

/// How many known-completed markers one credit's write removes, or `None`
/// when the write plan wants more than are known (see `wallet::plan`).
pub(super) fn plan_one(markers: usize, prunable: usize, soft_max: usize) -> Option<usize> {
    let p = plan(markers, 1, prunable, soft_max);
    debug_assert!(p.credits + p.prunes <= WRITE_XATTR_SPECS_MAX);
    (p.credits == 1 && p.prunes_wanted <= p.prunes).then_some(p.prunes)
}

/// Steps 5 and 6 handed to the store as one stage: the record's
/// completion and the removal of the action under the claim's CAS, side by
/// side, each exactly the write its step makes alone (a transactional
/// store commits both at once; Couchbase sends both in one round trip).
/// What did not succeed is then done by the steps alone, which recover from
/// any state the stage can leave (a failed or ambiguous completion is read
/// again; a removal that failed is retried or judged by `finish`).
pub(super) async fn complete_and_remove(h: &Held<'_>, k: &mut Known) {
    k.paired = true;
    let Some((tx, cas)) = k.tx() else { return };
    let group: WriteGroup = vec![complete_and_remove_stage(h.id, tx, GroupCas::Known(cas), h.claim)];
    let ran = Answers(h.store.write_group(&group).await);
    if ran.ok(0, 0) {
        k.set_completed(h);
    }
    if ran.ok(0, 1) {
        k.removed = Some(None);
    }
}

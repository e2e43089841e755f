//! The write groups a claimed action's steps hand the store (see
//! `store::group`): steps 3 to 6 as one group of three stages where that is
//! safe (`try_group`, taken by `commit`, step 3), and steps 5 and 6 as one
//! stage after step 4 ran on its own (`complete_and_remove`). Every write
//! of the record and every removal of the action goes to the store as a
//! group, of one stage (`send_one`) or three.
//!
//! Steps 3 to 6 go as ONE ordered group when nothing makes it doubtful:
//! insert the record; write every wallet; mark the record completed and
//! remove the action, side by side (each needs only every credit
//! applied). Each write of a group is exactly the one its step makes
//! alone, under the same CAS and with the same proof, so a group that
//! stops part way (a conflict, an ambiguous answer, a crash) leaves a
//! state the steps already recover from, and `steps::next` takes the
//! action on from there. A transactional store commits a group at once;
//! Couchbase runs it stage by stage, as many round trips as the steps
//! alone.
//!
//! The three-stage group is taken only when the wallets' states were read
//! before the record existed (the commit step's own proof: nothing can be
//! applied before the record exists), no other credit of this process is
//! on its way to any of the wallets (their coalescer slots are idle and
//! held for the group's duration), and no write needs to confirm other
//! actions' markers first.

use super::records::{self, TxRecord};
use super::steps::{Claim, Held, Known, Record};
use super::wallet::{plan, Prune, Stale, State, Write, FOREIGN_MARKERS_CHECKED_MAX, WRITE_XATTR_SPECS_MAX};
use super::{read_tx, retry, Outcome, ProtocolError, Result};
use crate::domain::keys::{action_key, tx_key};
use crate::domain::{Marker, MarkerName, Plan};
use crate::ops::names as m;
use crate::store::{Bucket, Cas, GroupCas, GroupWrite, Store, StoreError, WriteGroup};

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
pub(super) enum Grouped {
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
///
/// Old markers of other processes' actions on those wallets (production's
/// steady state: a wallet's last credit came from another replica) are
/// pruned in the credit's own CAS write: their records are read beside the
/// insert, in its round trip, and those that read `completed` are removed
/// by the wallet write (a record read completed stays completed; the write
/// is conditional on the state that carried them). The insert then goes
/// alone, and the rest of the group after it.
pub(super) async fn try_group(h: &Held<'_>, plan: &Plan, reads: &[State], k: &mut Known) -> Grouped {
    let (id, opts) = (h.id, h.opts);
    let hashes: Vec<&str> = plan.credits.iter().map(|c| c.hash.as_str()).collect();
    let Some(leads) = opts.coalescer.lead_idle(&hashes) else {
        return Grouped::NotTried;
    };
    let own = MarkerName::of_action(id);
    let mut credits = Vec::with_capacity(plan.credits.len());
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
        stale.extend(read.stale(&credit.hash, &opts.recent));
        credits.push((credit, read, next));
    }
    stale.truncate(FOREIGN_MARKERS_CHECKED_MAX);
    let tx = TxRecord::committed(id, plan);
    let insert = GroupWrite::Insert {
        bucket: Bucket::Ledger,
        key: tx_key(id),
        body: tx.to_bytes(),
    };
    // With markers to check, the insert goes first, beside their records'
    // reads; else the whole group at once.
    let (first, completed) = if stale.is_empty() {
        (None, Vec::new())
    } else {
        let alone: WriteGroup = vec![vec![insert.clone()]];
        let (ran, completed) = futures::join!(h.store.write_group(&alone), completed_of(h.store, &stale));
        (Some(Answers(ran)), completed)
    };
    let at = records::now_ms();
    let mut wallets = Vec::with_capacity(credits.len());
    for (credit, read, next) in credits {
        let mut prunable = read.known_completed(&opts.recent);
        prunable.extend(
            completed
                .iter()
                .filter(|(s, _)| s.hash == credit.hash)
                .map(|(_, prune)| prune.clone()),
        );
        let Some(prunes) = plan_one(read.markers().len(), prunable.len(), opts.wallet_markers_soft_max) else {
            // Above its soft maximum without enough known-completed markers:
            // the coalescer confirms others' markers first.
            (0..wallets.len()).for_each(|i| leads.forget(i));
            return match first {
                // The record is in: the steps go on from it.
                Some(ran) => committed_alone(ran, tx, h, k),
                None => Grouped::NotTried,
            };
        };
        let added = [(own.clone(), Marker::credit(id, credit.units, at))];
        let write = Write::new(&credit.hash, read, next, &added, &prunable[..prunes]);
        wallets.push((read, write, credit.units));
    }
    let mut group: WriteGroup = Vec::with_capacity(3);
    if first.is_none() {
        group.push(vec![insert]);
    }
    group.push(wallets.iter().map(|(_, w, _)| w.to_group()).collect());
    let record_cas = match &first {
        Some(ran) => match ran.get(0, 0) {
            Some(Ok(cas)) => GroupCas::Known(cas),
            _ => GroupCas::LeftBy(0, 0),
        },
        None => GroupCas::LeftBy(0, 0),
    };
    group.push(complete_and_remove_stage(id, &tx, record_cas, h.claim));
    let (ran, inserted, base) = match first {
        Some(inserted) => match inserted.get(0, 0) {
            Some(Ok(cas)) => (Answers(h.store.write_group(&group).await), Ok(cas), 0),
            failed => (Answers(Vec::new()), failed.unwrap_or_else(not_run), 0),
        },
        None => {
            let ran = Answers(h.store.write_group(&group).await);
            let inserted = ran.get(0, 0).unwrap_or_else(not_run);
            (ran, inserted, 1)
        }
    };
    let cas = match inserted {
        Ok(cas) => cas,
        Err(e) => {
            (0..wallets.len()).for_each(|i| leads.forget(i));
            return Grouped::NotCommitted(e);
        }
    };
    k.found(tx, cas, None, h);
    k.applied = true;
    for (i, (basis, write, units)) in wallets.into_iter().enumerate() {
        match ran.get(base, i) {
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
    if ran.ok(base + 1, 0) {
        k.set_completed(h);
    }
    if ran.ok(base + 1, 1) {
        k.removed = Some(None);
    }
    Grouped::Committed
}

/// The answer of a write that did not run.
fn not_run() -> std::result::Result<Cas, StoreError> {
    Err(StoreError::Transient("the write group did not run".into()))
}

/// The record inserted alone (`ran`), the rest of the group not sent: the
/// steps take the action on from its record.
fn committed_alone(ran: Answers, tx: TxRecord, h: &Held<'_>, k: &mut Known) -> Grouped {
    match ran.get(0, 0).unwrap_or_else(not_run) {
        Ok(cas) => {
            k.found(tx, cas, None, h);
            Grouped::Committed
        }
        Err(e) => Grouped::NotCommitted(e),
    }
}

/// The markers among `stale` whose records read `completed`, each with
/// its prune: read side by side (a record that cannot be read is left for
/// another time).
async fn completed_of(store: &dyn Store, stale: &[Stale]) -> Vec<(Stale, Prune)> {
    let reads = futures::future::join_all(stale.iter().map(|s| read_tx(store, &s.action))).await;
    stale
        .iter()
        .zip(reads)
        .filter_map(|(s, read)| {
            let (record, _) = read.ok()??;
            Prune::by_record(s.name.clone(), &s.action, &record).map(|prune| (s.clone(), prune))
        })
        .collect()
}

/// Hands the store one write as a group of one stage: every write of the
/// record and every removal of the action goes to the store as a group, of
/// one stage or three (a store runs a group of one as the single call it
/// is).
pub(super) async fn send_one(store: &dyn Store, write: GroupWrite) -> std::result::Result<Cas, StoreError> {
    Answers(store.write_group(&vec![vec![write]]).await)
        .get(0, 0)
        .unwrap_or_else(not_run)
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

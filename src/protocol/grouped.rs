//! Steps 3 to 6 handed to the store as ONE ordered group of writes (see
//! `store::group`): insert the record; write every wallet; mark the record
//! completed; remove the action. Each write is exactly the one the step
//! makes alone, under the same CAS and with the same proof, so a group that
//! stops part way (a conflict, an ambiguous answer, a crash) leaves a state
//! the steps already recover from, and the action simply goes on through
//! them from there. A transactional store commits the group at once (one
//! commit per action instead of six); Couchbase runs it stage by stage, as
//! many round trips as the steps alone.
//!
//! Taken only when nothing makes it doubtful: the wallets' states were read
//! before the record existed (the commit step's own proof: nothing can be
//! applied before the record exists), and no other credit of this process
//! is on its way to any of the wallets (their coalescer slots are idle and
//! held for the group's duration), and no write needs to confirm other
//! actions' markers first. Otherwise the steps run one by one.

use super::claim::Claim;
use super::records::{self, TxRecord};
use super::wallet::{plan, Stale, State, Write, WRITE_XATTR_SPECS_MAX};
use super::Options;
use crate::domain::keys::{action_key, tx_key};
use crate::domain::{Marker, MarkerName, Plan};
use crate::ops::names as m;
use crate::store::{Bucket, GroupCas, GroupWrite, Store, StoreError, WriteGroup};

/// How far a group took an action.
pub(super) enum Reached {
    /// The group was not tried; nothing was written.
    NotTried,
    /// The record was not inserted by it, for this reason.
    NotCommitted(StoreError),
    /// The record is committed (inserted with this CAS); what else was done.
    Committed { tx: TxRecord, cas: u64, done: Progress },
}

/// What a write group did for an action beyond committing it; by default,
/// nothing.
#[derive(Default)]
pub(super) struct Progress {
    /// Old markers of other actions seen on the wallets (see `apply`).
    pub stale: Vec<Stale>,
    /// Credits and units the group's wallet writes applied.
    pub credited: (usize, u64),
    /// Every wallet write succeeded.
    pub applied: bool,
    /// The record was marked completed.
    pub completed: bool,
    /// The action was removed.
    pub removed: bool,
}

/// Tries the group for an action with no record yet; `reads` are the
/// wallets of `plan` as observed before any insert of the record, each
/// already checked to take its credit.
pub(super) async fn try_group(
    store: &dyn Store,
    id: &str,
    claim: &Claim,
    plan: &Plan,
    reads: &[State],
    opts: &Options,
) -> Reached {
    let hashes: Vec<&str> = plan.credits.iter().map(|c| c.hash.as_str()).collect();
    let Some(leads) = opts.coalescer.lead_idle(&hashes) else {
        return Reached::NotTried;
    };
    let own = MarkerName::of_action(id);
    let at = records::now_ms();
    let mut wallets = Vec::with_capacity(plan.credits.len());
    let mut stale = Vec::new();
    for (credit, read) in plan.credits.iter().zip(reads) {
        let Some(balance) = read.balance() else {
            return Reached::NotTried;
        };
        if read.has_marker(&own) {
            return Reached::NotTried;
        }
        let Some(next) = balance.checked_add(credit.units) else {
            return Reached::NotTried;
        };
        let prunable = read.known_completed(&opts.recent);
        let Some(prunes) = plan_one(read.markers().len(), prunable.len(), opts.wallet_markers_soft_max) else {
            // Above its soft maximum without enough known-completed markers:
            // the coalescer confirms others' markers first.
            return Reached::NotTried;
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
    group.extend(complete_and_remove_stages(id, &tx, GroupCas::LeftBy(0, 0), claim));
    let results = store.write_group(&group).await;
    let ran = |stage: usize, i: usize| results.get(stage).and_then(|s| s.get(i)).cloned().flatten();
    let cas = match ran(0, 0) {
        Some(Ok(cas)) => cas,
        failed => {
            (0..wallets.len()).for_each(|i| leads.forget(i));
            return Reached::NotCommitted(match failed {
                Some(Err(e)) => e,
                _ => StoreError::Transient("the write group did not run".into()),
            });
        }
    };
    let (mut credited, mut applied) = ((0, 0u64), true);
    for (i, (basis, write, units)) in wallets.into_iter().enumerate() {
        match ran(1, i) {
            Some(Ok(new_cas)) => {
                credited = (credited.0 + 1, credited.1.saturating_add(units.get()));
                metrics::counter!(m::WALLET_WRITES).increment(1);
                metrics::counter!(m::WALLET_WRITE_CREDITS).increment(1);
                metrics::counter!(m::MARKERS_PRUNED).increment(write.removed() as u64);
                leads.wrote(i, basis, write.landed(new_cas));
            }
            _ => {
                applied = false;
                leads.forget(i);
            }
        }
    }
    let (completed, removed) = (matches!(ran(2, 0), Some(Ok(_))), matches!(ran(3, 0), Some(Ok(_))));
    let done = Progress {
        stale,
        credited,
        applied,
        completed,
        removed,
    };
    Reached::Committed { tx, cas, done }
}

/// Steps 5 and 6 as the last two stages of a group: `tx` marked completed
/// under `cas`, then the action removed under the claim's CAS.
pub(super) fn complete_and_remove_stages(
    id: &str,
    tx: &TxRecord,
    cas: GroupCas,
    claim: &Claim,
) -> [Vec<GroupWrite>; 2] {
    [
        vec![GroupWrite::Replace {
            bucket: Bucket::Ledger,
            key: tx_key(id),
            body: tx.completed_now().to_bytes(),
            cas,
        }],
        vec![GroupWrite::Remove {
            bucket: Bucket::Queue,
            key: action_key(id),
            cas: Some(claim.cas()),
        }],
    ]
}

/// How many known-completed markers one credit's write removes, or `None`
/// when the write plan wants more than are known (see `wallet::plan`).
fn plan_one(markers: usize, prunable: usize, soft_max: usize) -> Option<usize> {
    let p = plan(markers, 1, prunable, soft_max);
    debug_assert!(p.credits + p.prunes <= WRITE_XATTR_SPECS_MAX);
    (p.credits == 1 && p.prunes_wanted <= p.prunes).then_some(p.prunes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credit_prunes_in_spare_slots_and_defers_when_more_are_wanted_than_known() {
        assert_eq!(plan_one(3, 0, 256), Some(0));
        assert_eq!(plan_one(3, 20, 256), Some(14));
        assert_eq!(plan_one(300, 20, 256), Some(14));
        assert_eq!(plan_one(300, 0, 256), None);
    }
}

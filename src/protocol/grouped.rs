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

use std::sync::Arc;

use serde_json::Value;

use super::claim::Claim;
use super::records::{self, marker_value, TxRecord};
use super::wallet::{self, Snapshot};
use super::write_plan::{plan, WRITE_XATTR_SPECS_MAX};
use super::Options;
use crate::domain::keys::{action_key, balance_key, marker_path, tx_key};
use crate::domain::{Plan, Units};
use crate::ops::names as m;
use crate::store::{Bucket, GroupCas, GroupWrite, Store, StoreError, WriteGroup, WriteMode};

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
    pub stale: Vec<(String, String, String)>,
    /// Credits and units the group's wallet writes applied.
    pub credited: (usize, u64),
    /// Every wallet write succeeded.
    pub applied: bool,
    /// The record was marked completed.
    pub completed: bool,
    /// The action was removed.
    pub removed: bool,
}

/// One wallet's write in the group.
struct WalletWrite {
    basis: Snapshot,
    balance: Units,
    markers: serde_json::Map<String, Value>,
    write: GroupWrite,
    units: Units,
    prunes: usize,
}

/// Tries the group for an action with no record yet; `reads` are the
/// wallets of `plan` as observed before any insert of the record, each
/// already checked to take its credit.
pub(super) async fn try_group(
    store: &dyn Store,
    id: &str,
    claim: &Claim,
    plan: &Plan,
    reads: &[Snapshot],
    opts: &Options,
) -> Reached {
    let hashes: Vec<&str> = plan.credits.iter().map(|c| c.hash.as_str()).collect();
    let Some(leads) = opts.coalescer.lead_idle(&hashes) else {
        return Reached::NotTried;
    };
    let marker = marker_path(id);
    let own = wallet::marker_name(&marker).to_string();
    let at = records::now_ms();
    let mut wallets = Vec::with_capacity(plan.credits.len());
    let mut stale = Vec::new();
    for (credit, read) in plan.credits.iter().zip(reads) {
        let (balance, mode, markers) = match read {
            Snapshot::Absent => (Units::ZERO, WriteMode::Insert, serde_json::Map::new()),
            Snapshot::Present { balance, cas, markers } => (*balance, WriteMode::Replace(*cas), (**markers).clone()),
            Snapshot::Invalid(_) => return Reached::NotTried,
        };
        if markers.contains_key(&own) {
            return Reached::NotTried;
        }
        let Some(next) = balance.checked_add(credit.units) else {
            return Reached::NotTried;
        };
        let (prunable, old) = read.foreign_markers(&opts.recent);
        let shape = plan_one(markers.len(), prunable.len(), opts.wallet_markers_soft_max);
        let Some(prunes) = shape else {
            // Above its soft maximum without enough known-completed markers:
            // the coalescer confirms others' markers first.
            return Reached::NotTried;
        };
        let prunes: Vec<String> = match mode {
            WriteMode::Insert => Vec::new(),
            WriteMode::Replace(_) => prunable.into_iter().take(prunes).collect(),
        };
        stale.extend(old.into_iter().map(|(path, other)| (credit.hash.clone(), path, other)));
        let value = marker_value(id, credit.units, at);
        let after = wallet::markers_after(markers, &prunes, [(marker.clone(), value.clone())]);
        let mut xattrs = vec![(marker.clone(), Some(value))];
        xattrs.extend(prunes.iter().map(|p| (p.clone(), None)));
        wallets.push(WalletWrite {
            basis: read.clone(),
            balance: next,
            markers: after,
            write: GroupWrite::WriteWithXattrs {
                bucket: Bucket::Ledger,
                key: balance_key(&credit.hash),
                body: next.get().to_string().into_bytes(),
                xattrs,
                mode,
            },
            units: credit.units,
            prunes: prunes.len(),
        });
    }
    let tx = TxRecord::committed(id, plan);
    let mut group: WriteGroup = vec![
        vec![GroupWrite::Insert {
            bucket: Bucket::Ledger,
            key: tx_key(id),
            body: tx.to_bytes(),
        }],
        wallets.iter().map(|w| w.write.clone()).collect(),
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
    for (i, w) in wallets.into_iter().enumerate() {
        match ran(1, i) {
            Some(Ok(new_cas)) => {
                credited = (credited.0 + 1, credited.1.saturating_add(w.units.get()));
                metrics::counter!(m::WALLET_WRITES).increment(1);
                metrics::counter!(m::WALLET_WRITE_CREDITS).increment(1);
                metrics::counter!(m::MARKERS_PRUNED).increment(w.prunes as u64);
                let state = Snapshot::Present {
                    balance: w.balance,
                    cas: new_cas,
                    markers: Arc::new(w.markers),
                };
                leads.wrote(i, &w.basis, state);
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
/// when the write plan wants more than are known (see `write_plan`).
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

//! Writing one batch's proven credits in turns that each fit in one
//! Couchbase sub-document mutation (see the module above for why every
//! credit keeps its proof across turns).

use std::collections::VecDeque;

use futures::future::join_all;
use tokio::time::Instant;

use super::slot::{answer, locked, Known, Lineage, Pending, Slot};
use super::Credited;
use crate::domain::{Marker, MarkerName, Units};
use crate::ops::names as m;
use crate::protocol::records::now_ms;
use crate::protocol::wallet::{over_supply, plan, Prune, Stale, State, StateId, Write, WRITE_XATTR_SPECS_MAX};
use crate::protocol::{read_tx, RecentlyCompleted};
use crate::store::{Store, StoreError};

/// What a wallet write needs of a worker's options (see
/// [`Options::rules`](super::Options::rules)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteRules<'a> {
    /// Rounds of wallet writes before giving up on contention for now.
    pub(crate) apply_rounds_max: u32,
    /// Markers a wallet may carry before each write must prune as many as
    /// it adds.
    pub(crate) wallet_markers_soft_max: usize,
    /// Actions this process knows completed.
    pub(crate) recent: &'a RecentlyCompleted,
}

/// Writes the proven credits of one batch in turns: as many CAS writes, in
/// sequence, as the sub-document spec limit needs, each on the state the
/// previous one left. Every credit keeps its proof: the state each write is
/// conditional on descends from the basis through this batch's own writes
/// only, none of which carried its marker.
pub(super) struct Turns<'a> {
    pub(super) slot: &'a Slot,
    pub(super) store: &'a dyn Store,
    pub(super) hash: String,
    pub(super) stale: Vec<Stale>,
    pub(super) rules: WriteRules<'a>,
}

/// Requests to try again from a fresh read, and why.
pub(super) type Retry = (Vec<Pending>, StoreError);

impl Turns<'_> {
    pub(super) async fn write(
        &self,
        basis: State,
        mut lineage: Lineage,
        proven: Vec<Pending>,
    ) -> std::result::Result<(), Retry> {
        let mut current = basis;
        let mut queue: VecDeque<Pending> = proven.into();
        while !queue.is_empty() {
            let prunes = self.choose_prunes(&current, queue.len()).await;
            let shape = plan(current.markers().len(), queue.len(), prunes.len(), self.soft_max());
            let (included, balance) = self.take_credits(&current, &mut queue, shape.credits);
            if included.is_empty() {
                return Ok(());
            }
            // By path, only what the credits leave of the specs (`choose_prunes`
            // gives none for a wallet that does not exist yet).
            let prunes = match shape.whole {
                true => &prunes[..],
                false => &prunes[..prunes.len().min(WRITE_XATTR_SPECS_MAX - included.len())],
            };
            let at = now_ms();
            let added: Vec<(MarkerName, Marker<'_>)> = included
                .iter()
                .map(|p| {
                    let r = &p.request;
                    (r.marker.clone(), Marker::credit(&r.action, r.units, at))
                })
                .collect();
            let write = Write::new(&self.hash, &current, balance, &added, prunes);
            let cas = match write.send(self.store).await {
                Ok(cas) => cas,
                Err(e) if is_conflict(&e) || e.is_retryable() => {
                    let mut left = included;
                    left.extend(queue);
                    return Err((left, e));
                }
                Err(e) => {
                    included
                        .into_iter()
                        .chain(queue)
                        .for_each(|p| answer(p, Err(e.clone().into())));
                    return Ok(());
                }
            };
            current = write.landed(cas);
            metrics::counter!(m::WALLET_WRITES).increment(1);
            metrics::counter!(m::WALLET_WRITE_CREDITS).increment(included.len() as u64);
            metrics::counter!(m::MARKERS_PRUNED).increment(write.removed() as u64);
            lineage.push(StateId::Cas(cas));
            *locked(&self.slot.known) = Some(Known {
                state: current.clone(),
                lineage: lineage.clone(),
                at: Instant::now(),
            });
            for p in included {
                answer(
                    p,
                    Ok(Credited::Done {
                        stale: self.stale.clone(),
                        written: true,
                    }),
                );
            }
        }
        Ok(())
    }

    fn soft_max(&self) -> usize {
        self.rules.wallet_markers_soft_max
    }

    /// Markers of completed actions this write may remove: those this
    /// process knows completed, and, when the plan wants more (the wallet is
    /// above its soft maximum), those of the oldest other markers whose
    /// record now reads `completed`.
    async fn choose_prunes(&self, current: &State, pending: usize) -> Vec<Prune> {
        if matches!(current, State::Absent) {
            return Vec::new();
        }
        let recent = self.rules.recent;
        let mut prunes = current.known_completed(recent);
        let wanted = plan(current.markers().len(), pending, prunes.len(), self.soft_max()).prunes_wanted;
        if wanted <= prunes.len() {
            return prunes;
        }
        let candidates: Vec<(MarkerName, String)> = current
            .unknown(recent)
            .into_iter()
            .filter(|(name, _)| !self.slot.is_unfinished(name))
            .take(wanted - prunes.len())
            .collect();
        metrics::counter!(m::RECORD_CHECKS).increment(candidates.len() as u64);
        let records = join_all(candidates.iter().map(|(_, action)| read_tx(self.store, action))).await;
        for ((name, action), record) in candidates.into_iter().zip(records) {
            // Unreadable or missing: leave the marker alone.
            let Ok(Some((tx, _))) = record else { continue };
            match Prune::by_record(name.clone(), &action, &tx) {
                Some(prune) => {
                    recent.insert(&action);
                    prunes.push(prune);
                }
                None => self.slot.mark_unfinished(name),
            }
        }
        prunes
    }

    /// Takes up to `count` credits from the front of the queue, answering
    /// those that would take the wallet past the total supply; returns them
    /// and the balance they lead to.
    fn take_credits(&self, current: &State, queue: &mut VecDeque<Pending>, count: usize) -> (Vec<Pending>, Units) {
        // Never invalid: an invalid basis is answered before any turn.
        let mut balance = current.balance().unwrap_or(Units::ZERO);
        let mut included = Vec::new();
        while included.len() < count {
            let Some(p) = queue.pop_front() else { break };
            match balance.checked_add(p.request.units) {
                Some(next) => {
                    balance = next;
                    included.push(p);
                }
                None => {
                    let reason = over_supply(&p.request.hash, p.request.units);
                    answer(p, Ok(Credited::Blocked(reason)));
                }
            }
        }
        (included, balance)
    }
}

/// Someone else changed, created or locked the wallet, or a path we
/// removed is gone: read again; the markers tell.
pub(super) fn is_conflict(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Exists
            | StoreError::CasMismatch
            | StoreError::NotFound
            | StoreError::Locked
            | StoreError::PathNotFound(_)
    )
}

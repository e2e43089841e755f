//! Writing one batch's proven credits in turns that each fit in one
//! Couchbase sub-document mutation (see the module above for why every
//! credit keeps its proof across turns).

use std::collections::VecDeque;
use std::sync::Arc;

use futures::future::join_all;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::slot::{answer, locked, Known, Lineage, Pending, Slot};
use super::Credited;
use crate::domain::keys::MARKERS_XATTR;
use crate::domain::Units;
use crate::ops::names as m;
use crate::protocol::records::{marker_value, now_ms, TxState};
use crate::protocol::wallet::{known_completed, marker_action, markers_after, over_supply, Seen, Snapshot};
use crate::protocol::write_plan::{plan, WRITE_XATTR_SPECS_MAX};
use crate::protocol::{read_tx, RecentlyCompleted};
use crate::store::{Bucket, Store, StoreError, WriteMode};

/// A wallet state this batch writes over: its basis, then each state its
/// own successful writes leave.
struct Current {
    balance: Units,
    mode: WriteMode,
    /// Shared with the slot's known state once written: cloned only where
    /// a write changes it.
    markers: Arc<Map<String, Value>>,
}

impl Current {
    fn of(basis: &Snapshot) -> Self {
        match basis {
            Snapshot::Present { balance, cas, markers } => Self {
                balance: *balance,
                mode: WriteMode::Replace(*cas),
                markers: markers.clone(),
            },
            _ => Self {
                balance: Units::ZERO,
                mode: WriteMode::Insert,
                markers: Arc::default(),
            },
        }
    }

    /// Markers of actions not known completed, oldest first: `(path, action)`.
    fn unknown(&self, recent: &RecentlyCompleted) -> Vec<(String, String)> {
        let mut found: Vec<(u64, String, String)> = self
            .markers
            .iter()
            .filter_map(|(name, v)| {
                let action = marker_action(v)?;
                let at = v.get("at_ms").and_then(Value::as_u64).unwrap_or(0);
                (!recent.contains(action)).then(|| (at, format!("{MARKERS_XATTR}.{name}"), action.to_string()))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, path, action)| (path, action)).collect()
    }
}

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
    pub(super) key: String,
    pub(super) stale: Vec<(String, String)>,
    pub(super) rules: WriteRules<'a>,
}

/// Requests to try again from a fresh read, and why.
pub(super) type Retry = (Vec<Pending>, StoreError);

impl Turns<'_> {
    pub(super) async fn write(
        &self,
        basis: Snapshot,
        mut lineage: Lineage,
        proven: Vec<Pending>,
    ) -> std::result::Result<(), Retry> {
        let mut current = Current::of(&basis);
        let mut queue: VecDeque<Pending> = proven.into();
        while !queue.is_empty() {
            let prunes = self.choose_prunes(&current, queue.len()).await;
            let shape = plan(current.markers.len(), queue.len(), prunes.len(), self.soft_max());
            let (included, balance) = self.take_credits(&current, &mut queue, shape.credits);
            if included.is_empty() {
                return Ok(());
            }
            let prunes: Vec<String> = match current.mode {
                WriteMode::Replace(_) if shape.whole => prunes,
                WriteMode::Replace(_) => prunes
                    .into_iter()
                    .take(WRITE_XATTR_SPECS_MAX - included.len())
                    .collect(),
                WriteMode::Insert => Vec::new(),
            };
            let at = now_ms();
            let values: Vec<(String, Value)> = included
                .iter()
                .map(|p| {
                    (
                        p.request.marker.clone(),
                        marker_value(&p.request.action, p.request.units, at),
                    )
                })
                .collect();
            let mut changes: Vec<(&str, Option<Value>)> = match shape.whole {
                // One spec: the whole object this write leaves, exactly the
                // state it is conditional on, changed by this write alone.
                true => {
                    let after = markers_after((*current.markers).clone(), &prunes, values.iter().cloned());
                    vec![(MARKERS_XATTR, Some(Value::Object(after)))]
                }
                false => values
                    .iter()
                    .map(|(m, v)| (m.as_str(), Some(v.clone())))
                    .chain(prunes.iter().map(|path| (path.as_str(), None)))
                    .collect(),
            };
            let body = balance.get().to_string();
            let written = self
                .store
                .write_with_xattrs(Bucket::Ledger, &self.key, body.as_bytes(), &changes, current.mode)
                .await;
            let cas = match written {
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
            // The markers the write left: the object it sent whole, or the
            // state it was conditional on with its changes by path.
            let after = match changes.pop() {
                Some((_, Some(Value::Object(sent)))) if shape.whole => sent,
                _ => markers_after((*current.markers).clone(), &prunes, values),
            };
            current.markers = Arc::new(after);
            (current.balance, current.mode) = (balance, WriteMode::Replace(cas));
            metrics::counter!(m::WALLET_WRITES).increment(1);
            metrics::counter!(m::WALLET_WRITE_CREDITS).increment(included.len() as u64);
            metrics::counter!(m::MARKERS_PRUNED).increment(prunes.len() as u64);
            lineage.push(Seen::Cas(cas));
            *locked(&self.slot.known) = Some(Known {
                state: Snapshot::Present {
                    balance,
                    cas,
                    markers: current.markers.clone(),
                },
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
    async fn choose_prunes(&self, current: &Current, pending: usize) -> Vec<String> {
        if current.mode == WriteMode::Insert {
            return Vec::new();
        }
        let recent = self.rules.recent;
        let mut prunes = known_completed(&current.markers, recent);
        let wanted = plan(current.markers.len(), pending, prunes.len(), self.soft_max()).prunes_wanted;
        if wanted <= prunes.len() {
            return prunes;
        }
        let candidates: Vec<(String, String)> = current
            .unknown(recent)
            .into_iter()
            .filter(|(path, _)| !self.slot.is_unfinished(path))
            .take(wanted - prunes.len())
            .collect();
        metrics::counter!(m::RECORD_CHECKS).increment(candidates.len() as u64);
        let records = join_all(candidates.iter().map(|(_, action)| read_tx(self.store, action))).await;
        for ((path, action), record) in candidates.into_iter().zip(records) {
            match record {
                Ok(Some((tx, _))) if tx.state == TxState::Completed => {
                    recent.insert(&action);
                    prunes.push(path);
                }
                Ok(Some(_)) => self.slot.mark_unfinished(path),
                // Unreadable or missing: leave the marker alone.
                _ => {}
            }
        }
        prunes
    }

    /// Takes up to `count` credits from the front of the queue, answering
    /// those that would take the wallet past the total supply; returns them
    /// and the balance they lead to.
    fn take_credits(&self, current: &Current, queue: &mut VecDeque<Pending>, count: usize) -> (Vec<Pending>, Units) {
        let (mut included, mut balance) = (Vec::new(), current.balance);
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

//! Coalesced wallet writes.
//!
//! When several in-flight actions of one process credit the same wallet,
//! their credits are folded into ONE atomic write of that wallet: the new
//! balance plus every one of their markers, under the CAS of one state. A
//! hot wallet then costs one CAS round per batch instead of one per action.
//!
//! The requests for one wallet queue in its slot; whoever holds the slot's
//! lead lock drains the queue and writes the batch for everyone ("flat
//! combining"); the others find their answer when they get the lock.
//!
//! Exactly-once rests on the same facts as a lone write (see `apply`),
//! checked per request against the batch's basis state:
//! - the request's marker is on the basis: applied, done;
//! - else the request observed a state before its record existed, and the
//!   basis descends from that state through this process's own successful
//!   CAS writes only (its *lineage*): nobody else wrote the wallet since,
//!   and none of our writes carried this marker, so it is not applied;
//! - else its record is read AFTER the basis was observed: `committed`
//!   proves the marker was not pruned before, so absent means not applied;
//!   `completed` means another worker finished it.
//!
//! The write itself is conditional on the basis's CAS (or is an insert when
//! the basis is "absent"), so a basis that is no longer current fails and
//! the batch starts over from a fresh read. Nothing here depends on timing:
//! the cached state is an optimisation that a CAS mismatch corrects.
//!
//! One write carries at most 15 markers (Couchbase takes at most 16 specs in
//! one sub-document mutation, and the balance is one): a larger batch is
//! written in turns, each a CAS write on the state the previous turn left,
//! so that each later credit's proof (against the basis) still holds — the
//! state it is written on descends from the basis through this batch's own
//! writes alone. A turn that fails starts the rest over from a fresh read.
//! How many credits and marker removals share a turn is `write_plan`'s rule.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::join_all;
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::records::{marker_value, now_ms, TxState};
use super::wallet::{marker_name, over_supply, read_snapshot, Seen, Snapshot};
use super::write_plan::{plan, WRITE_XATTR_SPECS_MAX};
use super::{backoff, count_retry, read_tx, Options, ProtocolError, RecentlyCompleted, Result};
use crate::domain::keys::{balance_key, MARKERS_XATTR};
use crate::domain::Units;
use crate::ops::metrics::{self as m, result_label};
use crate::store::{Bucket, Store, StoreError, WriteMode};

/// Wallet slots kept before idle ones (and their cached states) are dropped.
const SLOTS_MAX: usize = 8_192;
/// States in one lineage remembered (older observations need a record read).
const LINEAGE_MAX: usize = 1_024;
/// How long a state this process wrote stands in for a pre-commit read.
/// Only a heuristic for work: a stale state costs a failed write, never money.
const KNOWN_FRESH: Duration = Duration::from_secs(1);

/// One credit to one wallet, waiting to be written.
#[derive(Debug, Clone)]
pub(crate) struct CreditRequest {
    /// The action id.
    pub action: String,
    /// The action's marker path.
    pub marker: String,
    /// The wallet.
    pub hash: String,
    /// The credit.
    pub units: Units,
    /// The wallet as observed before the action's record existed, if it was.
    pub seen: Option<Snapshot>,
}

/// How one credit ended.
#[derive(Debug)]
pub(crate) enum Credited {
    /// The wallet carries the marker; old markers of other actions seen on it.
    Done { stale: Vec<(String, String)> },
    /// The record is completed: another worker finished the action.
    CompletedElsewhere,
    /// The wallet cannot take the credit now.
    Blocked(String),
}

struct Pending {
    request: CreditRequest,
    reply: oneshot::Sender<Result<Credited>>,
}

/// A state of a wallet this process wrote, and the states it descends from
/// through this process's own writes alone.
#[derive(Clone)]
struct Known {
    state: Snapshot,
    lineage: Lineage,
    at: Instant,
}

#[derive(Clone, Default)]
struct Lineage {
    set: HashSet<Seen>,
    order: VecDeque<Seen>,
}

impl Lineage {
    fn root(seen: Option<Seen>) -> Self {
        let mut lineage = Lineage::default();
        if let Some(s) = seen {
            lineage.push(s);
        }
        lineage
    }

    fn push(&mut self, seen: Seen) {
        if self.set.insert(seen) {
            self.order.push_back(seen);
            if self.order.len() > LINEAGE_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, seen: Option<Seen>) -> bool {
        seen.is_some_and(|s| self.set.contains(&s))
    }
}

#[derive(Default)]
struct Slot {
    queue: Mutex<Vec<Pending>>,
    lead: tokio::sync::Mutex<()>,
    known: Mutex<Option<Known>>,
    /// Markers whose record read `committed` a moment ago, and when: not
    /// read again for [`KNOWN_FRESH`] (a heuristic for work only).
    unfinished: Mutex<HashMap<String, Instant>>,
}

impl Slot {
    fn is_unfinished(&self, path: &str) -> bool {
        locked(&self.unfinished)
            .get(path)
            .is_some_and(|at| at.elapsed() < KNOWN_FRESH)
    }

    fn mark_unfinished(&self, path: String) {
        let mut unfinished = locked(&self.unfinished);
        unfinished.retain(|_, at| at.elapsed() < KNOWN_FRESH);
        unfinished.insert(path, Instant::now());
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The per-process coalescer of wallet writes (shared by a process's workers).
#[derive(Default)]
pub struct Coalescer {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("slots", &locked(&self.slots).len())
            .finish()
    }
}

impl Coalescer {
    fn slot(&self, hash: &str) -> Arc<Slot> {
        let mut slots = locked(&self.slots);
        if let Some(slot) = slots.get(hash) {
            return slot.clone();
        }
        if slots.len() >= SLOTS_MAX {
            // Keep only slots in use; idle ones lose their cached state.
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let slot = Arc::new(Slot::default());
        slots.insert(hash.to_string(), slot.clone());
        slot
    }

    /// A state of `hash` this process wrote moments ago, if it has one.
    pub(crate) fn peek(&self, hash: &str) -> Option<Snapshot> {
        let slot = locked(&self.slots).get(hash).cloned()?;
        let known = locked(&slot.known);
        known
            .as_ref()
            .filter(|k| k.at.elapsed() < KNOWN_FRESH)
            .map(|k| k.state.clone())
    }

    /// Applies one credit, together with whatever other credits to the same
    /// wallet are waiting at the time.
    pub(crate) async fn credit(&self, store: &dyn Store, request: CreditRequest, opts: &Options) -> Result<Credited> {
        let slot = self.slot(&request.hash);
        let mut answer = enqueue(&slot, request.clone());
        loop {
            let _lead = slot.lead.lock().await;
            match answer.try_recv() {
                Ok(result) => return result,
                // The leader that took it was cancelled before answering.
                Err(oneshot::error::TryRecvError::Closed) => answer = enqueue(&slot, request.clone()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch = std::mem::take(&mut *locked(&slot.queue));
            write_batch(&slot, store, batch, opts).await;
            if let Ok(result) = answer.try_recv() {
                return result;
            }
        }
    }
}

fn enqueue(slot: &Slot, request: CreditRequest) -> oneshot::Receiver<Result<Credited>> {
    let (reply, answer) = oneshot::channel();
    locked(&slot.queue).push(Pending { request, reply });
    answer
}

fn answer(p: Pending, result: Result<Credited>) {
    // The requester may be gone (cancelled): nothing to tell then.
    let _ = p.reply.send(result);
}

/// Writes one batch for one wallet, retrying conflicts, and answers every
/// request in it.
async fn write_batch(slot: &Slot, store: &dyn Store, mut batch: Vec<Pending>, opts: &Options) {
    let Some(hash) = batch.first().map(|p| p.request.hash.clone()) else {
        return;
    };
    let mut fresh: Option<Snapshot> = None;
    let mut round = 0;
    loop {
        // The basis: a fresh read after a failed write; else the newest of
        // this process's own last write and the requests' observations.
        let (basis, lineage) = match fresh.take() {
            Some(state) => {
                let lineage = Lineage::root(state.seen());
                (state, lineage)
            }
            None => match choose_basis(slot, &batch) {
                Some(chosen) => chosen,
                None => match read_snapshot(store, &hash).await {
                    Ok(state) => {
                        let lineage = Lineage::root(state.seen());
                        (state, lineage)
                    }
                    Err(e) => return fail_all(batch, &e),
                },
            },
        };
        if let Snapshot::Invalid(reason) = &basis {
            *locked(&slot.known) = None;
            for p in batch {
                answer(p, Ok(Credited::Blocked(reason.clone())));
            }
            return;
        }
        let (_, stale) = basis.foreign_markers(&opts.recent);
        let proven = prove(store, &basis, &lineage, batch, &stale).await;
        if proven.is_empty() {
            return;
        }
        let turns = Turns {
            slot,
            store,
            key: balance_key(&hash),
            stale,
            opts,
        };
        let (left, error) = match turns.write(basis, lineage, proven).await {
            Ok(()) => return,
            Err(retry) => retry,
        };
        *locked(&slot.known) = None;
        count_retry(result_label(Some(&error)));
        round += 1;
        if round >= opts.apply_rounds_max {
            for p in left {
                answer(p, Err(ProtocolError::Contention(opts.apply_rounds_max)));
            }
            return;
        }
        tokio::time::sleep(backoff(round)).await;
        // Requests that arrived meanwhile join the next round.
        batch = left;
        batch.append(&mut locked(&slot.queue));
        fresh = match read_snapshot(store, &hash).await {
            Ok(state) => Some(state),
            Err(e) => return fail_all(batch, &e),
        };
    }
}

/// Which requests of a batch are proven not yet applied on `basis` (they are
/// returned); the others are answered: applied already, completed by
/// another worker, or failed.
async fn prove(
    store: &dyn Store,
    basis: &Snapshot,
    lineage: &Lineage,
    batch: Vec<Pending>,
    stale: &[(String, String)],
) -> Vec<Pending> {
    let mut proven = Vec::new();
    let mut unproven = Vec::new();
    for p in batch {
        if basis.has_marker(marker_name(&p.request.marker)) {
            answer(p, Ok(Credited::Done { stale: stale.to_vec() }));
        } else if lineage.contains(p.request.seen.as_ref().and_then(Snapshot::seen)) {
            proven.push(p);
        } else {
            unproven.push(p);
        }
    }
    if !unproven.is_empty() {
        metrics::counter!(m::RECORD_CHECKS).increment(unproven.len() as u64);
    }
    // Read after the basis was observed: "no marker, still committed".
    let records = join_all(unproven.iter().map(|p| read_tx(store, &p.request.action))).await;
    for (p, record) in unproven.into_iter().zip(records) {
        match record {
            Ok(Some((tx, _))) if tx.state == TxState::Committed => proven.push(p),
            Ok(Some(_)) => answer(p, Ok(Credited::CompletedElsewhere)),
            Ok(None) => {
                let action = p.request.action.clone();
                answer(
                    p,
                    Err(ProtocolError::CorruptRecord(format!(
                        "tx:{action} vanished while applying"
                    ))),
                );
            }
            Err(e) => answer(p, Err(e)),
        }
    }
    proven
}

/// A wallet state this batch writes over: its basis, then each state its
/// own successful writes leave.
struct Current {
    balance: Units,
    mode: WriteMode,
    markers: Map<String, Value>,
}

impl Current {
    fn of(basis: &Snapshot) -> Self {
        match basis {
            Snapshot::Present { balance, cas, markers } => Self {
                balance: *balance,
                mode: WriteMode::Replace(*cas),
                markers: (**markers).clone(),
            },
            _ => Self {
                balance: Units::ZERO,
                mode: WriteMode::Insert,
                markers: Map::new(),
            },
        }
    }

    /// Marker paths of actions this process knows completed.
    fn known_prunable(&self, recent: &RecentlyCompleted) -> Vec<String> {
        self.markers
            .iter()
            .filter(|(_, v)| v.get("tx").and_then(Value::as_str).is_some_and(|a| recent.contains(a)))
            .map(|(name, _)| format!("{MARKERS_XATTR}.{name}"))
            .collect()
    }

    /// Markers of actions not known completed, oldest first: `(path, action)`.
    fn unknown(&self, recent: &RecentlyCompleted) -> Vec<(String, String)> {
        let mut found: Vec<(u64, String, String)> = self
            .markers
            .iter()
            .filter_map(|(name, v)| {
                let action = v.get("tx").and_then(Value::as_str)?;
                let at = v.get("at_ms").and_then(Value::as_u64).unwrap_or(0);
                (!recent.contains(action)).then(|| (at, format!("{MARKERS_XATTR}.{name}"), action.to_string()))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, path, action)| (path, action)).collect()
    }
}

/// Writes the proven credits of one batch in turns: as many CAS writes, in
/// sequence, as the sub-document spec limit needs, each on the state the
/// previous one left. Every credit keeps its proof: the state each write is
/// conditional on descends from the basis through this batch's own writes
/// only, none of which carried its marker.
struct Turns<'a> {
    slot: &'a Slot,
    store: &'a dyn Store,
    key: String,
    stale: Vec<(String, String)>,
    opts: &'a Options,
}

/// Requests to try again from a fresh read, and why.
type Retry = (Vec<Pending>, StoreError);

impl Turns<'_> {
    async fn write(
        &self,
        basis: Snapshot,
        mut lineage: Lineage,
        proven: Vec<Pending>,
    ) -> std::result::Result<(), Retry> {
        let mut current = Current::of(&basis);
        let mut queue: VecDeque<Pending> = proven.into();
        while !queue.is_empty() {
            let prunes = self.choose_prunes(&current, queue.len()).await;
            let credits = plan(current.markers.len(), queue.len(), prunes.len(), self.soft_max()).credits;
            let (included, balance) = self.take_credits(&current, &mut queue, credits);
            if included.is_empty() {
                return Ok(());
            }
            let prunes: Vec<String> = match current.mode {
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
            let mut changes: Vec<(&str, Option<Value>)> =
                values.iter().map(|(m, v)| (m.as_str(), Some(v.clone()))).collect();
            changes.extend(prunes.iter().map(|path| (path.as_str(), None)));
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
            for path in &prunes {
                current.markers.remove(marker_name(path));
            }
            for (path, value) in values {
                current.markers.insert(marker_name(&path).to_string(), value);
            }
            (current.balance, current.mode) = (balance, WriteMode::Replace(cas));
            metrics::counter!(m::WALLET_WRITES).increment(1);
            metrics::counter!(m::WALLET_WRITE_CREDITS).increment(included.len() as u64);
            metrics::counter!(m::MARKERS_PRUNED).increment(prunes.len() as u64);
            lineage.push(Seen::Cas(cas));
            *locked(&self.slot.known) = Some(Known {
                state: Snapshot::Present {
                    balance,
                    cas,
                    markers: Arc::new(current.markers.clone()),
                },
                lineage: lineage.clone(),
                at: Instant::now(),
            });
            for p in included {
                answer(
                    p,
                    Ok(Credited::Done {
                        stale: self.stale.clone(),
                    }),
                );
            }
        }
        Ok(())
    }

    fn soft_max(&self) -> usize {
        self.opts.wallet_markers_soft_max
    }

    /// Markers of completed actions this write may remove: those this
    /// process knows completed, and, when the plan wants more (the wallet is
    /// above its soft maximum), those of the oldest other markers whose
    /// record now reads `completed`.
    async fn choose_prunes(&self, current: &Current, pending: usize) -> Vec<String> {
        if current.mode == WriteMode::Insert {
            return Vec::new();
        }
        let recent = &self.opts.recent;
        let mut prunes = current.known_prunable(recent);
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
fn is_conflict(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Exists
            | StoreError::CasMismatch
            | StoreError::NotFound
            | StoreError::Locked
            | StoreError::PathNotFound(_)
    )
}

/// The newest state among this process's last write and the requests'
/// observations, with its lineage. `None` when there is none.
fn choose_basis(slot: &Slot, batch: &[Pending]) -> Option<(Snapshot, Lineage)> {
    let rank = |s: &Snapshot| match s {
        Snapshot::Present { cas, .. } => Some(*cas),
        Snapshot::Absent => Some(0),
        Snapshot::Invalid(_) => None,
    };
    let observed = batch
        .iter()
        .filter_map(|p| p.request.seen.as_ref())
        .filter_map(|s| rank(s).map(|r| (r, s)))
        .max_by_key(|(r, _)| *r);
    let known = locked(&slot.known).clone();
    match (known, observed) {
        (Some(k), Some((r, s))) if rank(&k.state).is_some_and(|kr| r > kr) => {
            Some((s.clone(), Lineage::root(s.seen())))
        }
        (Some(k), _) => Some((k.state, k.lineage)),
        (None, Some((_, s))) => Some((s.clone(), Lineage::root(s.seen()))),
        (None, None) => None,
    }
}

fn fail_all(batch: Vec<Pending>, e: &ProtocolError) {
    for p in batch {
        answer(p, Err(e.clone()));
    }
}

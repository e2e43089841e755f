//! One wallet's slot: the credit requests queued for it and their answers,
//! its lead lock, the state this process last wrote with the lineage that
//! proves it descends from an observation, and [`Turns`], which writes a
//! batch's proven credits in turns that each fit in one Couchbase
//! sub-document mutation (see the module above for why every credit keeps
//! its proof across turns).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::domain::{Marker, MarkerName, Units};
use crate::ops::names as m;
use crate::protocol::records::now_ms;
use crate::protocol::step::jitter_fraction;
use crate::protocol::wallet::{
    over_supply, plan, Prune, Stale, State, StateId, Write, FOREIGN_MARKERS_CHECKED_MAX, WRITE_XATTR_SPECS_MAX,
};
use crate::protocol::{read_tx, ProtocolError, RecentlyCompleted, Result};
use crate::store::{Store, StoreError};

/// States in one lineage remembered (older observations need a record read).
pub const LINEAGE_MAX: usize = 1_024;
/// How long a state stays in a lineage: Couchbase's longest lock, so an
/// observation made by any action still within its lease is kept. Without
/// an age, a wallet this process writes again and again would keep
/// [`LINEAGE_MAX`] states (about 50 KiB) for the life of the process;
/// forgetting one only costs a record read, never money.
const LINEAGE_AGE_MAX: Duration = crate::store::limits::LOCK_MAX;
/// How long a state this process wrote stands in for a pre-commit read.
/// Only a heuristic for work: a stale state costs a failed write, never money.
pub(super) const KNOWN_FRESH: Duration = Duration::from_secs(1);
/// How long a sign that another process writes a wallet too (a write of
/// ours that lost its CAS race, or a state we did not write read where
/// our own was expected) makes this process take turns on it.
pub(super) const CONTENDED_FOR: Duration = Duration::from_secs(2);
/// While a wallet is contended, how many of its write times this process
/// keeps writing it from its own last state (without a read) before it
/// reads it afresh like everyone else. Writing from its own state needs
/// one round trip a batch where another process needs three (read the
/// wallet, read the records that prove its credits, write), so without a
/// turn the process that wrote last writes again before any other can,
/// and the others' credits wait for seconds. A heuristic for latency only:
/// which process writes next never touches what a write must prove.
pub(super) const OWN_STATE_WRITES_WHILE_CONTENDED: u32 = 2;
/// How many write times a turn leaves the wallet to the others (see
/// [`Slot::turn_pause`]): a read, the records' reads and a write.
pub(super) const TURN_PAUSE_WRITES: u32 = 3;

/// One credit to one wallet, waiting to be written.
#[derive(Debug, Clone)]
pub(crate) struct CreditRequest {
    /// The action id.
    pub action: String,
    /// The action's marker.
    pub marker: MarkerName,
    /// The wallet.
    pub hash: String,
    /// The credit.
    pub units: Units,
    /// The wallet as observed before the action's record existed, if it was.
    pub seen: Option<State>,
}

/// How one credit ended.
#[derive(Debug)]
pub(crate) enum Credited {
    /// The wallet carries the marker. `written`: this process's write put
    /// it there (else it was found).
    Done { written: bool },
    /// The record is completed: another worker finished the action.
    CompletedElsewhere,
    /// The wallet cannot take the credit now.
    Blocked(String),
}

pub(super) struct Pending {
    pub(super) request: CreditRequest,
    pub(super) reply: oneshot::Sender<Result<Credited>>,
}

/// A state of a wallet this process wrote, and the states it descends from
/// through this process's own writes alone.
#[derive(Clone)]
pub(super) struct Written {
    pub(super) state: State,
    pub(super) lineage: Lineage,
    pub(super) at: Instant,
}

#[derive(Clone)]
pub(super) struct Lineage {
    pub(super) set: HashSet<StateId>,
    /// Oldest first, with when each joined.
    pub(super) order: VecDeque<(StateId, Instant)>,
    /// When its root was observed: how long this process has been writing
    /// the wallet from its own states alone.
    pub(super) since: Instant,
}

impl Lineage {
    pub(super) fn root(seen: Option<StateId>) -> Self {
        let mut lineage = Lineage {
            set: HashSet::new(),
            order: VecDeque::new(),
            since: Instant::now(),
        };
        if let Some(s) = seen {
            lineage.push(s);
        }
        lineage
    }

    pub(super) fn push(&mut self, seen: StateId) {
        let now = Instant::now();
        if self.set.insert(seen) {
            self.order.push_back((seen, now));
        }
        // The newest state always stays.
        while self.order.len() > 1
            && self
                .order
                .front()
                .is_some_and(|(_, at)| self.order.len() > LINEAGE_MAX || now.duration_since(*at) > LINEAGE_AGE_MAX)
        {
            if let Some((old, _)) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// How many states it holds (at most [`LINEAGE_MAX`]).
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    pub(super) fn contains(&self, seen: Option<StateId>) -> bool {
        seen.is_some_and(|s| self.set.contains(&s))
    }
}

#[derive(Default)]
pub(super) struct Slot {
    pub(super) queue: Mutex<Vec<Pending>>,
    pub(super) lead: std::sync::Arc<tokio::sync::Mutex<()>>,
    pub(super) written: Mutex<Option<Written>>,
    /// Markers whose record read `committed` a moment ago, and when: not
    /// read again for [`KNOWN_FRESH`] (a heuristic for work only).
    pub(super) unfinished: Mutex<HashMap<MarkerName, Instant>>,
    /// When another process was last seen writing the wallet.
    pub(super) contended: Mutex<Option<Instant>>,
    /// How long this process's writes of the wallet take (a moving average).
    pub(super) write_time: Mutex<Duration>,
}

impl Slot {
    /// Another process writes this wallet too.
    pub(super) fn note_contention(&self) {
        *locked(&self.contended) = Some(Instant::now());
    }

    /// One of this process's writes of the wallet took `took`.
    pub(super) fn note_write_time(&self, took: Duration) {
        let mut average = locked(&self.write_time);
        *average = (*average * 3 + took) / 4;
    }

    /// Whether this process should leave the wallet to others for a moment
    /// before its next write: it has written it from its own states alone
    /// for [`OWN_STATE_WRITES_WHILE_CONTENDED`] write times, while others
    /// may write it too (`others`: other live workers exist) or were seen
    /// to (a lost CAS race, a state it did not write).
    pub(super) fn takes_turns(&self, others: bool) -> bool {
        let Some(since) = locked(&self.written).as_ref().map(|k| k.lineage.since) else {
            return false;
        };
        let contended = others || locked(&self.contended).is_some_and(|at| at.elapsed() < CONTENDED_FOR);
        contended && since.elapsed() > *locked(&self.write_time) * OWN_STATE_WRITES_WHILE_CONTENDED
    }

    /// How long a turn leaves the wallet to the others: long enough for
    /// one of them to read it, read the records its credits need and
    /// write it, with a jitter so that processes do not pause in step.
    pub(super) fn turn_pause(&self) -> Duration {
        let write = *locked(&self.write_time);
        write * TURN_PAUSE_WRITES + write.mul_f64(jitter_fraction())
    }

    /// How long to wait after losing a CAS race on the wallet: up to one
    /// of this process's write times, at random.
    pub(super) fn retry_pause(&self) -> Duration {
        locked(&self.write_time).mul_f64(jitter_fraction())
    }

    pub(super) fn is_unfinished(&self, name: &MarkerName) -> bool {
        locked(&self.unfinished)
            .get(name)
            .is_some_and(|at| at.elapsed() < KNOWN_FRESH)
    }

    pub(super) fn mark_unfinished(&self, name: MarkerName) {
        let mut unfinished = locked(&self.unfinished);
        unfinished.retain(|_, at| at.elapsed() < KNOWN_FRESH);
        unfinished.insert(name, Instant::now());
    }
}

pub(super) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn enqueue(slot: &Slot, request: CreditRequest) -> oneshot::Receiver<Result<Credited>> {
    let (reply, answer) = oneshot::channel();
    locked(&slot.queue).push(Pending { request, reply });
    answer
}

pub(super) fn answer(p: Pending, result: Result<Credited>) {
    // The requester may be gone (cancelled): nothing to tell then.
    let _ = p.reply.send(result);
}

pub(super) fn fail_all(batch: Vec<Pending>, e: &ProtocolError) {
    for p in batch {
        answer(p, Err(e.clone()));
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
            let sent = Instant::now();
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
            self.slot.note_write_time(sent.elapsed());
            current = write.landed(cas);
            metrics::counter!(m::WALLET_WRITES).increment(1);
            metrics::counter!(m::WALLET_WRITE_CREDITS).increment(included.len() as u64);
            metrics::counter!(m::MARKERS_PRUNED).increment(write.removed() as u64);
            lineage.push(StateId::Cas(cas));
            *locked(&self.slot.written) = Some(Written {
                state: current.clone(),
                lineage: lineage.clone(),
                at: Instant::now(),
            });
            for p in included {
                answer(p, Ok(Credited::Done { written: true }));
            }
        }
        Ok(())
    }

    fn soft_max(&self) -> usize {
        self.rules.wallet_markers_soft_max
    }

    /// Markers of completed actions this write may remove: those this
    /// process knows completed; those of the old markers of other
    /// processes' actions seen on the wallet (`stale`, a few) whose record
    /// now reads `completed`, so that production's steady state (a
    /// wallet's last credit came from another replica) prunes them in the
    /// credit's own CAS write; and, when the plan wants more (the wallet is
    /// above its soft maximum), those of the oldest other markers whose
    /// record reads `completed`.
    async fn choose_prunes(&self, current: &State, pending: usize) -> Vec<Prune> {
        if matches!(current, State::Absent) {
            return Vec::new();
        }
        let recent = self.rules.recent;
        let mut prunes = current.known_completed(recent);
        let wanted = plan(current.markers().len(), pending, prunes.len(), self.soft_max()).prunes_wanted;
        let checkable = |name: &MarkerName| !self.slot.is_unfinished(name) && !prunes.iter().any(|p| p.name() == name);
        let mut candidates: Vec<(MarkerName, String)> = self
            .stale
            .iter()
            .filter(|s| checkable(&s.name))
            .take(FOREIGN_MARKERS_CHECKED_MAX)
            .map(|s| (s.name.clone(), s.action.clone()))
            .collect();
        if wanted > prunes.len() {
            let more: Vec<(MarkerName, String)> = current
                .unknown(recent)
                .into_iter()
                .filter(|(name, _)| checkable(name) && !candidates.iter().any(|(n, _)| n == name))
                .take(wanted - prunes.len())
                .collect();
            candidates.extend(more);
        }
        if candidates.is_empty() {
            return prunes;
        }
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

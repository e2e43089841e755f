//! The coalescer's parts: a credit request and its answer, one wallet's
//! slot (its queue, its lead lock, the state this process last wrote), and
//! the lineage that proves a state descends from an observation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::domain::{MarkerName, Units};
use crate::protocol::wallet::{Stale, State, StateId};
use crate::protocol::{ProtocolError, Result};

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
    /// The wallet carries the marker; old markers of other actions seen on
    /// it. `written`: this process's write put it there (else it was found).
    Done { stale: Vec<Stale>, written: bool },
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
pub(super) struct Known {
    pub(super) state: State,
    pub(super) lineage: Lineage,
    pub(super) at: Instant,
}

#[derive(Clone, Default)]
pub(super) struct Lineage {
    pub(super) set: HashSet<StateId>,
    /// Oldest first, with when each joined.
    pub(super) order: VecDeque<(StateId, Instant)>,
}

impl Lineage {
    pub(super) fn root(seen: Option<StateId>) -> Self {
        let mut lineage = Lineage::default();
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
    pub(super) known: Mutex<Option<Known>>,
    /// Markers whose record read `committed` a moment ago, and when: not
    /// read again for [`KNOWN_FRESH`] (a heuristic for work only).
    pub(super) unfinished: Mutex<HashMap<MarkerName, Instant>>,
}

impl Slot {
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

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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::join_all;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::apply::{marker_name, over_supply, read_snapshot, Seen, Snapshot};
use super::records::{marker_value, now_ms, TxState};
use super::{backoff, count_retry, read_tx, Options, ProtocolError, Result};
use crate::domain::keys::balance_key;
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
    let key = balance_key(&hash);
    let mut fresh: Option<Snapshot> = None;
    let mut round = 0;
    loop {
        // The basis: a fresh read after a failed write; else the newest of
        // this process's own last write and the requests' observations.
        let (basis, mut lineage) = match fresh.take() {
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
        let (prunable, stale) = basis.foreign_markers(&opts.recent);

        // Which requests are applied already, proven not applied, or need
        // their record read (after the basis was observed: it was).
        let mut proven = Vec::new();
        let mut unproven = Vec::new();
        for p in batch {
            if basis.has_marker(marker_name(&p.request.marker)) {
                answer(p, Ok(Credited::Done { stale: stale.clone() }));
            } else if lineage.contains(p.request.seen.as_ref().and_then(Snapshot::seen)) {
                proven.push(p);
            } else {
                unproven.push(p);
            }
        }
        if !unproven.is_empty() {
            metrics::counter!(m::RECORD_CHECKS).increment(unproven.len() as u64);
        }
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

        // The new balance, refusing any credit that would pass the supply.
        let (mut balance, mode, mut markers) = match &basis {
            Snapshot::Present { balance, cas, markers } => (*balance, WriteMode::Replace(*cas), (**markers).clone()),
            _ => (Units::ZERO, WriteMode::Insert, serde_json::Map::new()),
        };
        let mut included = Vec::new();
        for p in proven {
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
        if included.is_empty() {
            return;
        }

        // One atomic write: the balance, every marker, and the removal of
        // markers of actions known completed (present on the basis).
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
        if matches!(mode, WriteMode::Replace(_)) {
            changes.extend(prunable.iter().map(|path| (path.as_str(), None)));
        }
        let body = balance.get().to_string();
        let result = store
            .write_with_xattrs(Bucket::Ledger, &key, body.as_bytes(), &changes, mode)
            .await;
        let failure = match result {
            Ok(cas) => {
                if matches!(mode, WriteMode::Replace(_)) {
                    for path in &prunable {
                        markers.remove(marker_name(path));
                    }
                }
                for (path, value) in values {
                    markers.insert(marker_name(&path).to_string(), value);
                }
                metrics::counter!(m::WALLET_WRITES).increment(1);
                metrics::counter!(m::WALLET_WRITE_CREDITS).increment(included.len() as u64);
                lineage.push(Seen::Cas(cas));
                *locked(&slot.known) = Some(Known {
                    state: Snapshot::Present {
                        balance,
                        cas,
                        markers: Arc::new(markers),
                    },
                    lineage,
                    at: Instant::now(),
                });
                for p in included {
                    answer(p, Ok(Credited::Done { stale: stale.clone() }));
                }
                return;
            }
            Err(e) => e,
        };
        *locked(&slot.known) = None;
        match failure {
            // Someone else changed or created the wallet, or we do not know
            // whether our write landed: read again; the markers tell.
            e @ (StoreError::Exists | StoreError::CasMismatch | StoreError::NotFound | StoreError::Locked) => {
                count_retry(result_label(Some(&e)));
            }
            e if e.is_retryable() => count_retry(result_label(Some(&e))),
            e => return fail_all(included, &e.into()),
        }
        round += 1;
        if round >= opts.apply_rounds_max {
            for p in included {
                answer(p, Err(ProtocolError::Contention(opts.apply_rounds_max)));
            }
            return;
        }
        tokio::time::sleep(backoff(round)).await;
        // Requests that arrived meanwhile join the next round.
        batch = included;
        batch.append(&mut locked(&slot.queue));
        fresh = match read_snapshot(store, &hash).await {
            Ok(state) => Some(state),
            Err(e) => return fail_all(batch, &e),
        };
    }
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

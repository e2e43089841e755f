//! Step 4: every credit applied exactly once, through coalesced wallet
//! writes.
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
//! Exactly-once rests on the same facts as a lone write (see
//! [`Coalescer::apply`]),
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
//! Couchbase takes at most 16 specs in one sub-document mutation, and the
//! balance is one: a write carries one spec per marker while they fit, and
//! otherwise the whole markers object as one spec (`wallet::plan`), up to
//! `WHOLE_WRITE_CREDITS_MAX` credits. A larger batch is written in turns,
//! each a CAS write on the state the previous turn left,
//! so that each later credit's proof (against the basis) still holds — the
//! state it is written on descends from the basis through this batch's own
//! writes alone. A turn that fails starts the rest over from a fresh read.
//! How many credits and marker removals share a turn is `wallet::plan`'s rule.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use tokio::sync::oneshot;

use super::records::{TxRecord, TxState};
use super::wallet::{self, State, StateId};
use super::{backoff, count_retry, read_tx, ProtocolError, Result};
use crate::domain::{Credit, MarkerName};
use crate::ops::names::{self as m, result_label};
use crate::store::Store;
pub use slot::LINEAGE_MAX;
use slot::{answer, enqueue, fail_all, is_conflict, locked, Lineage, Pending, Slot, Turns, Written, KNOWN_FRESH};
pub(crate) use slot::{CreditRequest, Credited, WriteRules};

mod slot;

/// What step 4 did for one action.
pub(crate) struct Application {
    /// How it ended.
    pub applied: Applied,
    /// Credits this process's own writes applied (not those found applied).
    pub written_credits: usize,
    /// Their units.
    pub written_units: u64,
}

/// How applying an action's credits ended.
pub(crate) enum Applied {
    /// Every credit carries this action's marker.
    Done,
    /// The record turned `completed`: another worker finished the action.
    CompletedElsewhere,
    /// A wallet is invalid; the action must wait.
    Blocked(String),
}

/// Wallet slots kept before idle ones (and their cached states) are dropped.
pub const SLOTS_MAX: usize = 8_192;

/// The per-process coalescer of wallet writes (shared by a process's workers).
#[derive(Default)]
pub struct Coalescer {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Other live workers may write the same wallets (see
    /// [`Coalescer::set_others_write`]).
    others_write: AtomicBool,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("slots", &locked(&self.slots).len())
            .finish()
    }
}

impl Coalescer {
    /// Tells whether other live workers may write the same wallets (the
    /// membership has other members): then a wallet this process writes
    /// again and again is left to them for a moment now and then (see
    /// `OWN_STATE_WRITES_WHILE_CONTENDED`). A heuristic for latency only.
    pub fn set_others_write(&self, others: bool) {
        self.others_write.store(others, Ordering::Relaxed);
    }

    fn others_write(&self) -> bool {
        self.others_write.load(Ordering::Relaxed)
    }

    fn slot(&self, hash: &str) -> Arc<Slot> {
        let mut slots = locked(&self.slots);
        if let Some(slot) = slots.get(hash) {
            return slot.clone();
        }
        if slots.len() >= SLOTS_MAX {
            // Keep only slots in use; idle ones lose their cached state
            // (which only spares a read). Dropping an eighth at a time was
            // measured too: the process's memory swung a little less
            // (standard deviation 6.6 MiB against 8.0 over a 2,000,000-action
            // soak) but held 12 MiB more on average.
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let slot = Arc::new(Slot::default());
        slots.insert(hash.to_string(), slot.clone());
        slot
    }

    /// The wallets of `credits` as this process knows them, reading those it
    /// does not: a state this process wrote itself moments ago stands for a read.
    pub(crate) async fn observe(&self, store: &dyn Store, credits: &[Credit]) -> Result<Vec<State>> {
        join_all(credits.iter().map(|c| async move {
            match self.peek(&c.hash) {
                Some(known) => Ok(known),
                None => wallet::read(store, &c.hash).await,
            }
        }))
        .await
        .into_iter()
        .collect()
    }

    /// Step 4: applies every credit of a committed record exactly once, all
    /// wallets in parallel, each through the process's coalescer (which folds
    /// credits of concurrent actions to one wallet into one write).
    ///
    /// `observed` are wallet states observed before this worker's own insert
    /// of the record: nothing can have been applied before the record existed,
    /// so a write under such a state (or one this process derived from it by
    /// its own writes alone) needs no further proof. Without one, a write needs
    /// a read of the record after the wallet state was observed: a marker is
    /// pruned only after the record is completed, so "no marker" seen before
    /// "still committed" means not applied.
    pub(crate) async fn apply(
        &self,
        store: &dyn Store,
        id: &str,
        tx: &TxRecord,
        observed: Option<Vec<State>>,
        rules: WriteRules<'_>,
    ) -> Result<Application> {
        let marker = MarkerName::of_action(id);
        let mut observed = observed.map(Vec::into_iter);
        let requests: Vec<CreditRequest> = tx
            .credits
            .iter()
            .map(|credit| CreditRequest {
                action: id.to_string(),
                marker: marker.clone(),
                hash: credit.hash.clone(),
                units: credit.units,
                seen: observed.as_mut().and_then(Iterator::next),
            })
            .collect();
        let answers = join_all(requests.into_iter().map(|r| self.credit(store, r, rules))).await;
        let (mut applied, mut failure) = (Applied::Done, None);
        let (mut written_credits, mut written_units) = (0, 0u64);
        for (credit, answer) in tx.credits.iter().zip(answers) {
            match answer {
                Ok(Credited::Done { written }) => {
                    if written {
                        written_credits += 1;
                        written_units = written_units.saturating_add(credit.units.get());
                    }
                }
                Ok(Credited::CompletedElsewhere) => {
                    if matches!(applied, Applied::Done) {
                        applied = Applied::CompletedElsewhere;
                    }
                }
                Ok(Credited::Blocked(reason)) => {
                    if !matches!(applied, Applied::Blocked(_)) {
                        applied = Applied::Blocked(reason);
                    }
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        // A blocked wallet is reported even if another write failed: the action
        // cannot finish either way, and "blocked" says what to fix.
        let applied = match (applied, failure) {
            (blocked @ Applied::Blocked(_), _) => blocked,
            (_, Some(e)) => return Err(e),
            (applied, None) => applied,
        };
        Ok(Application {
            applied,
            written_credits,
            written_units,
        })
    }

    /// What it holds: wallet slots (at most [`SLOTS_MAX`] beyond those in
    /// use), and the states remembered in their lineages.
    pub fn footprint(&self) -> (usize, usize) {
        let slots = locked(&self.slots);
        let states = slots
            .values()
            .map(|s| locked(&s.written).as_ref().map_or(0, |k| k.lineage.len()))
            .sum();
        (slots.len(), states)
    }

    /// A state of `hash` this process wrote moments ago, if it has one.
    pub(crate) fn peek(&self, hash: &str) -> Option<State> {
        let slot = locked(&self.slots).get(hash).cloned()?;
        let known = locked(&slot.written);
        known
            .as_ref()
            .filter(|k| k.at.elapsed() < KNOWN_FRESH)
            .map(|k| k.state.clone())
    }

    /// The leads of the wallets `hashes`, if each is idle now (nobody leads
    /// it and no credit waits): while they are held, this process writes
    /// those wallets through nobody else. `None` if any is busy.
    pub(crate) fn lead_idle(&self, hashes: &[&str]) -> Option<IdleLeads> {
        let mut held = Vec::with_capacity(hashes.len());
        for hash in hashes {
            let slot = self.slot(hash);
            let guard = slot.lead.clone().try_lock_owned().ok()?;
            if !locked(&slot.queue).is_empty() {
                return None;
            }
            held.push((slot, guard));
        }
        Some(IdleLeads { held })
    }

    /// Applies one credit, together with whatever other credits to the same
    /// wallet are waiting at the time.
    pub(crate) async fn credit(
        &self,
        store: &dyn Store,
        request: CreditRequest,
        rules: WriteRules<'_>,
    ) -> Result<Credited> {
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
            write_batch(&slot, store, batch, rules, self.others_write()).await;
            if let Ok(result) = answer.try_recv() {
                return result;
            }
        }
    }
}

/// The leads of idle wallets, held (see [`Coalescer::lead_idle`]); dropping
/// it lets the next credit to each wallet through.
pub(crate) struct IdleLeads {
    held: Vec<(Arc<Slot>, tokio::sync::OwnedMutexGuard<()>)>,
}

impl IdleLeads {
    /// The `i`th wallet was written by this process on `basis`, giving
    /// `state`: the next credits to it may write on that state.
    pub(crate) fn wrote(&self, i: usize, basis: &State, state: State) {
        if let (Some((slot, _)), Some(StateId::Cas(cas))) = (self.held.get(i), state.id()) {
            let mut lineage = Lineage::root(basis.id());
            lineage.push(StateId::Cas(cas));
            *locked(&slot.written) = Some(Written {
                state,
                lineage,
                at: tokio::time::Instant::now(),
            });
        }
    }

    /// The `i`th wallet's state is unknown now (a write failed or is ambiguous).
    pub(crate) fn forget(&self, i: usize) {
        if let Some((slot, _)) = self.held.get(i) {
            *locked(&slot.written) = None;
        }
    }
}

/// Writes one batch for one wallet, retrying conflicts, and answers every
/// request in it.
async fn write_batch(slot: &Slot, store: &dyn Store, mut batch: Vec<Pending>, rules: WriteRules<'_>, others: bool) {
    let Some(hash) = batch.first().map(|p| p.request.hash.clone()) else {
        return;
    };
    let mut fresh: Option<State> = None;
    if slot.takes_turns(others) {
        // Leave the wallet to the others for a moment, then see whether
        // one of them wrote it.
        tokio::time::sleep(slot.turn_pause()).await;
        batch.append(&mut locked(&slot.queue));
        let own = locked(&slot.written).take();
        match wallet::read(store, &hash).await {
            Ok(state) => match own {
                // Nobody did: this process's states stand, lineage and all.
                Some(mut own) if own.state.id() == state.id() => {
                    own.lineage.since = tokio::time::Instant::now();
                    *locked(&slot.written) = Some(own);
                }
                _ => {
                    slot.note_contention();
                    fresh = Some(state);
                }
            },
            Err(e) => return fail_all(batch, &e),
        }
    }
    let mut round = 0;
    loop {
        // The basis: a fresh read after a failed write, or when this process
        // takes turns with another writing the wallet too; else the newest of
        // this process's own last write and the requests' observations.
        let (basis, lineage) = match fresh.take() {
            Some(state) => {
                let lineage = Lineage::root(state.id());
                (state, lineage)
            }
            None => match choose_basis(slot, &batch) {
                Some(chosen) => chosen,
                None => match wallet::read(store, &hash).await {
                    Ok(state) => {
                        let lineage = Lineage::root(state.id());
                        (state, lineage)
                    }
                    Err(e) => return fail_all(batch, &e),
                },
            },
        };
        if let Some(reason) = basis.invalid(&hash) {
            *locked(&slot.written) = None;
            for p in batch {
                answer(p, Ok(Credited::Blocked(reason.clone())));
            }
            return;
        }
        let stale = basis.stale(&hash, rules.recent);
        let proven = prove(store, &basis, &lineage, batch).await;
        if proven.is_empty() {
            return;
        }
        let turns = Turns {
            slot,
            store,
            hash: hash.clone(),
            stale,
            rules,
        };
        let (left, error) = match turns.write(basis, lineage, proven).await {
            Ok(()) => return,
            Err(retry) => retry,
        };
        *locked(&slot.written) = None;
        count_retry(result_label(Some(&error)));
        round += 1;
        if round >= rules.apply_rounds_max {
            for p in left {
                answer(p, Err(ProtocolError::Contention(rules.apply_rounds_max)));
            }
            return;
        }
        if is_conflict(&error) {
            // A lost race: another process's write just landed, so the
            // wallet is free now. Waiting longer with every loss would let
            // the others win every race (seconds of waiting on a hot
            // wallet); a short jitter keeps the losers apart.
            slot.note_contention();
            tokio::time::sleep(slot.retry_pause()).await;
        } else {
            tokio::time::sleep(backoff(round)).await;
        }
        // Requests that arrived meanwhile join the next round.
        batch = left;
        batch.append(&mut locked(&slot.queue));
        fresh = match wallet::read(store, &hash).await {
            Ok(state) => Some(state),
            Err(e) => return fail_all(batch, &e),
        };
    }
}

/// Which requests of a batch are proven not yet applied on `basis` (they are
/// returned); the others are answered: applied already, completed by
/// another worker, or failed.
async fn prove(store: &dyn Store, basis: &State, lineage: &Lineage, batch: Vec<Pending>) -> Vec<Pending> {
    let mut proven = Vec::new();
    let mut unproven = Vec::new();
    for p in batch {
        if basis.has_marker(&p.request.marker) {
            answer(p, Ok(Credited::Done { written: false }));
        } else if lineage.contains(p.request.seen.as_ref().and_then(State::id)) {
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

/// The newest state among this process's last write and the requests'
/// observations, with its lineage. `None` when there is none.
fn choose_basis(slot: &Slot, batch: &[Pending]) -> Option<(State, Lineage)> {
    let rank = |s: &State| match s {
        State::Present { cas, .. } => Some(*cas),
        State::Absent => Some(0),
        State::Invalid { .. } => None,
    };
    let observed = batch
        .iter()
        .filter_map(|p| p.request.seen.as_ref())
        .filter_map(|s| rank(s).map(|r| (r, s)))
        .max_by_key(|(r, _)| *r);
    let known = locked(&slot.written).clone();
    match (known, observed) {
        (Some(k), Some((r, s))) if rank(&k.state).is_some_and(|kr| r > kr) => Some((s.clone(), Lineage::root(s.id()))),
        (Some(k), _) => Some((k.state, k.lineage)),
        (None, Some((_, s))) => Some((s.clone(), Lineage::root(s.id()))),
        (None, None) => None,
    }
}

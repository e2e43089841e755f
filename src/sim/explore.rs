//! Every interleaving within a bound, not a sample: a depth-first explorer
//! of the crediting protocol's store calls, on the protocol's own code.
//!
//! Two workers (two processes: each its own coalescer and memory of
//! completions) each claim and process both actions of a small world,
//! in opposite orders; the actions share one wallet. Every store call a
//! worker makes stops at a gate; when every worker has stopped at a gate,
//! finished or died, the explorer chooses which call goes next and what
//! befalls it: nothing, the worker dies before it, the worker dies after it
//! (it applied), an ambiguous answer after it applied, or an ambiguous
//! answer although it did not apply, or every lock lapses before it (a
//! lease running out: the other worker may claim the same action). Between
//! two gates the code runs alone on one thread with a paused clock and a
//! seeded jitter, so a list of choices replays exactly.
//!
//! A schedule is that list of choices. The explorer enumerates them
//! depth-first (stateless model checking, as CHESS and `shuttle`'s DFS
//! scheduler do): run a schedule taking the first option at every new
//! choice, then backtrack to the deepest choice with an option left.
//! Bounds keep it finite: how many times the explorer may switch away from
//! a worker that could go on (preemptions), and how many faults a schedule
//! may hold. After each schedule, a clean worker settles what is left (every
//! lock lapsed first), the markers are swept, and the simulator's checker
//! judges the store: every credit applied exactly once, every unit
//! explained by a record, no action removed before its credits were
//! committed (checked at each removal), no request beyond Couchbase's
//! limits, and every action completed in the end (liveness).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::checker::{self, Delivery, Facts};
use super::Sabotage;
use crate::domain::keys::{action_key, ACTION_PREFIX};
use crate::protocol::{self, process_action, Options, Outcome};
use crate::store::hooked::{Fault, Hook, Hooked, OpKind};
use crate::store::memory::{Clock, MemoryStore};
use crate::store::{Bucket, Store, StoreError};

/// The world: two actions, two credits each, sharing wallet `shared`.
const ACTIONS: [(&str, &str); 2] = [
    ("a1", r#"{"beneficiaries":{"shared":"1","own1":"2"}}"#),
    ("a2", r#"{"beneficiaries":{"shared":"3","own2":"4"}}"#),
];
/// Workers, each working through every action, in its own order.
const WORKERS: usize = 2;
/// Store calls one schedule may make before it counts as not terminating.
const CALLS_MAX: usize = 400;
/// How far the lock clock jumps when every lock lapses (past any lease).
const LAPSE_MS: u64 = 60_000;

/// The bounds of an exploration.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Switches away from a worker that could have gone on.
    pub preemptions: usize,
    /// Faults in one schedule.
    pub faults: usize,
    /// Stop after this many schedules (the exploration is then partial).
    pub schedules_max: u64,
    /// A third party runs `sweep` once, its calls interleaved like the
    /// workers' (at any point, within the preemptions).
    pub sweep: bool,
}

/// What may befall one store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Befall {
    /// It runs and answers.
    Nothing,
    /// The worker dies before it: it never runs.
    DiesBefore,
    /// It runs; the worker dies before reading the answer.
    DiesAfter,
    /// It runs; the answer is "ambiguous".
    AmbiguousApplied,
    /// It does not run; the answer is "ambiguous".
    AmbiguousLost,
    /// Every lock lapses first (a lease ran out), then it runs.
    LocksLapse,
}

impl Befall {
    fn options(kind: OpKind, faults_left: bool) -> Vec<Befall> {
        let mut options = vec![Befall::Nothing];
        if faults_left {
            options.extend([Befall::DiesBefore, Befall::DiesAfter, Befall::LocksLapse]);
            if kind.is_write() {
                options.extend([Befall::AmbiguousApplied, Befall::AmbiguousLost]);
            }
        }
        options
    }

    fn said(self) -> &'static str {
        match self {
            Befall::Nothing => "",
            Befall::DiesBefore => "  <- the worker dies before it",
            Befall::DiesAfter => "  <- runs, then the worker dies",
            Befall::AmbiguousApplied => "  <- runs, answered ambiguous",
            Befall::AmbiguousLost => "  <- does not run, answered ambiguous",
            Befall::LocksLapse => "  <- every lock lapses first",
        }
    }
}

/// A store call stopped at its gate.
struct Call {
    worker: usize,
    kind: OpKind,
    key: String,
    go: oneshot::Sender<Befall>,
}

#[derive(Default)]
struct Gates {
    waiting: Vec<Call>,
    dead: [bool; WORKERS + 1],
    violations: Vec<String>,
}

/// How a trace names a party: `w0`, `w1`, or `sweep`.
fn party(index: usize) -> String {
    if index < WORKERS {
        format!("w{index}")
    } else {
        "sweep".to_string()
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One worker's view of the store: every call waits at its gate.
struct Gate {
    worker: usize,
    gates: Arc<Mutex<Gates>>,
    /// The store itself, to judge each removal of an action as it happens.
    inner: MemoryStore,
    /// A deliberate defect, if any.
    sabotage: Sabotage,
}

#[async_trait]
impl Hook for Gate {
    async fn before(&self, kind: OpKind, key: &str) -> Fault {
        let (go, answer) = oneshot::channel();
        let dead = {
            let mut gates = locked(&self.gates);
            let dead = gates.dead[self.worker];
            if !dead {
                gates.waiting.push(Call {
                    worker: self.worker,
                    kind,
                    key: key.to_string(),
                    go,
                });
            }
            dead
        };
        if dead {
            return std::future::pending().await;
        }
        let befall = answer.await;
        if let (Sabotage::RemoveOnClaim, OpKind::GetAndLock, Ok(Befall::Nothing)) = (self.sabotage, kind, &befall) {
            // The defect: the action goes as its claim is made.
            let body = self.inner.peek(Bucket::Queue, key).unwrap_or_default();
            if self.inner.remove(Bucket::Queue, key, None).await.is_ok() {
                if let Some(v) = super::store::removal_violation(&self.inner, key, &body) {
                    locked(&self.gates).violations.push(v);
                }
            }
        }
        match befall {
            Ok(Befall::Nothing | Befall::LocksLapse) => Fault::Pass,
            Ok(Befall::DiesAfter) => Fault::FailAfter(StoreError::Permanent("the worker died".into())),
            Ok(Befall::AmbiguousApplied) => Fault::FailAfter(StoreError::Ambiguous("explored: applied".into())),
            Ok(Befall::AmbiguousLost) => Fault::FailBefore(StoreError::Ambiguous("explored: not applied".into())),
            Ok(Befall::DiesBefore) | Err(_) => std::future::pending().await,
        }
    }

    fn after(&self, kind: OpKind, key: &str, error: Option<&StoreError>) {
        if let Some(StoreError::LimitExceeded(why)) = error {
            locked(&self.gates).violations.push(format!(
                "{} {kind:?} {key}: a request beyond Couchbase's limits: {why}",
                party(self.worker)
            ));
        }
        // An action removed (by this call, or before it: then it was judged
        // then, and what made it right cannot have gone since).
        let removed = kind == OpKind::Remove
            && !matches!(error, Some(StoreError::NotFound))
            && self.inner.peek(Bucket::Queue, key).is_none();
        let delivered = key
            .strip_prefix(ACTION_PREFIX)
            .and_then(|id| ACTIONS.iter().find(|(a, _)| *a == id));
        if let (true, Some((_, body))) = (removed, delivered) {
            if let Some(v) = super::store::removal_violation(&self.inner, key, body.as_bytes()) {
                locked(&self.gates).violations.push(v);
            }
        }
    }
}

/// Depth-first choices: replays `prefix`, then takes the first option.
struct Choices {
    prefix: Vec<usize>,
    /// Each choice made: (taken, options).
    made: Vec<(usize, usize)>,
}

impl Choices {
    fn choose(&mut self, options: usize) -> usize {
        let taken = self.prefix.get(self.made.len()).copied().unwrap_or(0).min(options - 1);
        self.made.push((taken, options));
        taken
    }

    /// The next schedule depth-first, if any is left.
    fn next(&self) -> Option<Vec<usize>> {
        let deepest = self.made.iter().rposition(|(taken, options)| taken + 1 < *options)?;
        let mut next: Vec<usize> = self.made[..deepest].iter().map(|(taken, _)| *taken).collect();
        next.push(self.made[deepest].0 + 1);
        Some(next)
    }
}

/// One schedule run to its end.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The choices that make it (replay them with [`replay`]).
    pub choices: Vec<usize>,
    /// The store calls in the order they went, with what befell each.
    pub trace: Vec<String>,
    /// Invariants it broke.
    pub violations: Vec<String>,
}

/// What an exploration found.
#[derive(Debug)]
pub struct Exploration {
    /// Schedules run.
    pub schedules: u64,
    /// The most choices one schedule made.
    pub depth_max: usize,
    /// Whether every schedule within the bounds was run.
    pub complete: bool,
    /// The first schedule that broke an invariant (depth-first order
    /// finds short ones first: few preemptions and faults, early).
    pub failing: Option<Schedule>,
    /// How long it took.
    pub elapsed: Duration,
}

/// Runs every schedule within `bounds`, stopping at the first violation.
pub fn explore(bounds: Bounds) -> Exploration {
    explore_with(bounds, Sabotage::None)
}

/// [`explore`] with a deliberate defect (of those a gate can make:
/// [`Sabotage::RemoveOnClaim`]), to watch the explorer catch it.
pub(crate) fn explore_with(bounds: Bounds, sabotage: Sabotage) -> Exploration {
    let started = Instant::now();
    let (mut schedules, mut depth_max) = (0, 0);
    let mut prefix = Some(Vec::new());
    while let Some(p) = prefix.take() {
        if schedules >= bounds.schedules_max {
            return Exploration {
                schedules,
                depth_max,
                complete: false,
                failing: None,
                elapsed: started.elapsed(),
            };
        }
        let (schedule, next) = run(bounds, sabotage, p);
        schedules += 1;
        depth_max = depth_max.max(schedule.choices.len());
        if !schedule.violations.is_empty() {
            return Exploration {
                schedules,
                depth_max,
                complete: false,
                failing: Some(schedule),
                elapsed: started.elapsed(),
            };
        }
        prefix = next;
    }
    Exploration {
        schedules,
        depth_max,
        complete: true,
        failing: None,
        elapsed: started.elapsed(),
    }
}

/// Runs the one schedule `choices` names (as a failing one was printed).
pub fn replay(bounds: Bounds, choices: &[usize]) -> Schedule {
    run(bounds, Sabotage::None, choices.to_vec()).0
}

/// [`replay`] with a deliberate defect.
#[cfg(test)]
pub(crate) fn replay_with(bounds: Bounds, sabotage: Sabotage, choices: &[usize]) -> Schedule {
    run(bounds, sabotage, choices.to_vec()).0
}

/// Runs the schedule that starts with `prefix`; returns it and the next
/// schedule depth-first.
fn run(bounds: Bounds, sabotage: Sabotage, prefix: Vec<usize>) -> (Schedule, Option<Vec<usize>>) {
    let mut choices = Choices {
        prefix,
        made: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build();
    let (trace, violations) = match runtime {
        Ok(runtime) => runtime.block_on(schedule(bounds, sabotage, &mut choices)),
        Err(e) => (Vec::new(), vec![format!("no runtime: {e}")]),
    };
    let next = choices.next();
    let schedule = Schedule {
        choices: choices.made.iter().map(|(taken, _)| *taken).collect(),
        trace,
        violations,
    };
    (schedule, next)
}

async fn schedule(bounds: Bounds, sabotage: Sabotage, choices: &mut Choices) -> (Vec<String>, Vec<String>) {
    protocol::seed_jitter(0);
    let (clock, lock_clock) = Clock::manual();
    lock_clock.store(1_000_000, Ordering::SeqCst);
    protocol::records::use_virtual_clock(Some(lock_clock.clone()));
    let inner = MemoryStore::with_clock(clock);
    for (id, body) in ACTIONS {
        if let Err(e) = inner.insert(Bucket::Queue, &action_key(id), body.as_bytes()).await {
            return (Vec::new(), vec![format!("enqueue {id}: {e}")]);
        }
    }
    let gates = Arc::new(Mutex::new(Gates::default()));
    let mut workers = Vec::new();
    let parties = if bounds.sweep { WORKERS + 1 } else { WORKERS };
    for worker in 0..parties {
        let store = Hooked::new(
            Arc::new(inner.clone()),
            Gate {
                worker,
                gates: gates.clone(),
                inner: inner.clone(),
                sabotage,
            },
        );
        workers.push(tokio::spawn(async move {
            if worker == WORKERS {
                let _ = protocol::sweep_markers(&store).await;
                return;
            }
            let opts = Options::default();
            // Worker 0 takes the actions in order, worker 1 in reverse.
            let mut ids: Vec<&str> = ACTIONS.iter().map(|(id, _)| *id).collect();
            if worker % 2 == 1 {
                ids.reverse();
            }
            for id in ids {
                let _ = process_action(&store, id, &opts).await;
            }
        }));
    }

    let mut trace = Vec::new();
    let (mut last, mut preemptions, mut faults) = (None, 0, 0);
    loop {
        // Every worker runs until it waits at a gate, sleeps, dies or ends.
        tokio::time::sleep(Duration::from_micros(1)).await;
        let mut g = locked(&gates);
        if g.waiting.is_empty() {
            let ended = workers.iter().enumerate().all(|(w, t)| t.is_finished() || g.dead[w]);
            if ended {
                break;
            }
            continue;
        }
        if trace.len() >= CALLS_MAX {
            g.violations.push(format!("no end after {CALLS_MAX} store calls"));
            break;
        }
        g.waiting
            .sort_by(|a, b| (a.worker, a.kind.name(), &a.key).cmp(&(b.worker, b.kind.name(), &b.key)));
        // The worker that went last goes on first; choosing another is a
        // preemption when it could have.
        let mut order: Vec<usize> = (0..g.waiting.len()).collect();
        let could_go_on = g.waiting.iter().position(|c| Some(c.worker) == last);
        if let Some(i) = could_go_on {
            order.remove(i);
            order.insert(0, i);
        }
        let allowed = match could_go_on {
            Some(_) if preemptions >= bounds.preemptions => 1,
            _ => order.len(),
        };
        let pick = if allowed > 1 { choices.choose(allowed) } else { 0 };
        if could_go_on.is_some() && pick > 0 {
            preemptions += 1;
        }
        let call = g.waiting.remove(order[pick]);
        let options = Befall::options(call.kind, faults < bounds.faults);
        let befall = options[if options.len() > 1 {
            choices.choose(options.len())
        } else {
            0
        }];
        if befall != Befall::Nothing {
            faults += 1;
        }
        if matches!(befall, Befall::DiesBefore | Befall::DiesAfter) {
            g.dead[call.worker] = true;
        }
        if befall == Befall::LocksLapse {
            lock_clock.fetch_add(LAPSE_MS, Ordering::SeqCst);
        }
        trace.push(format!(
            "{:>3}. {} {} {}{}",
            trace.len() + 1,
            party(call.worker),
            call.kind.name(),
            call.key,
            befall.said()
        ));
        last = Some(call.worker);
        let _ = call.go.send(befall);
    }
    let mut violations = std::mem::take(&mut locked(&gates).violations);
    for (w, worker) in workers.into_iter().enumerate() {
        if !worker.is_finished() {
            worker.abort();
            continue;
        }
        if let Err(e) = worker.await {
            if e.is_panic() {
                let why = e.into_panic();
                let why = why
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| why.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                violations.push(format!("{} panicked: {why}", party(w)));
            }
        }
    }

    // The faults stop: every lock lapses, a clean worker settles the rest.
    lock_clock.fetch_add(LAPSE_MS, Ordering::SeqCst);
    let opts = Options::default();
    for (id, _) in ACTIONS {
        match process_action(&inner, id, &opts).await {
            Ok(Outcome::Completed { .. } | Outcome::Duplicate | Outcome::Skipped(protocol::Skip::Gone)) => {}
            other => violations.push(format!(
                "liveness: {id} did not complete once the faults stopped: {other:?}"
            )),
        }
    }
    if let Err(e) = protocol::sweep_markers(&inner).await {
        violations.push(format!("the marker sweep failed: {e}"));
    }
    let deliveries: BTreeMap<String, Vec<Delivery>> = ACTIONS
        .iter()
        .map(|(id, body)| {
            let delivery = Delivery {
                body: body.as_bytes().to_vec(),
                superseded: false,
            };
            (id.to_string(), vec![delivery])
        })
        .collect();
    let facts = Facts {
        initial: &BTreeMap::new(),
        deliveries: &deliveries,
        corrupted: &Default::default(),
        blocked: &Default::default(),
    };
    violations.extend(checker::check(&inner, &facts));
    protocol::records::use_virtual_clock(None);
    (trace, violations)
}

#[cfg(test)]
mod tests;

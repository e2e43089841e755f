//! A fault of the whole store (a full disk, a read-only, failing or damaged
//! store): the worker stops claiming, probes the store with capped backoff,
//! logs the cause once per interval, answers `/readyz` with it, and resumes
//! by itself once a probe works. A damaged store is never probed: it does
//! not mend itself, and the worker claims nothing more until restarted.

use std::time::Duration;

use tokio::time::Instant;

use crate::ops::health::Health;
use crate::ops::names as m;
use crate::store::{Store, StoreFault};

/// First pause before probing a faulted store; it doubles with each probe.
const STORE_PROBE_MS_MIN: u64 = 250;
/// Longest pause between probes: a store that works again is found within
/// this (plus one probe), so a freed disk is back at work within seconds.
pub(super) const STORE_PROBE_MS_MAX: u64 = 5_000;
/// While the store is faulted, the cause is logged at ERROR at most this
/// often (and at once when the outage begins or the cause changes).
const STORE_FAULT_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// With `exit_when_idle`, how long a fault that may heal (full disk,
/// read-only, I/O error) may last before the worker gives up; a damaged
/// store stops it at once.
const STORE_FAULT_MAX_WHEN_IDLE: Duration = Duration::from_secs(30);

/// The pause before probe `probes + 1`: doubling, capped.
fn probe_pause(probes: u64) -> Duration {
    let doubled = STORE_PROBE_MS_MIN.saturating_mul(1 << probes.min(20));
    Duration::from_millis(doubled.min(STORE_PROBE_MS_MAX))
}

/// What the worker does next while the store is faulted.
pub(super) enum Next {
    /// No fault (any more): claiming resumes.
    Resume,
    /// Stop the worker with this message (`exit_when_idle` only).
    Stop(String),
    /// The pause is over: let in-flight attempts end, then [`Outage::probe`].
    Probe,
}

/// The worker's side of a fault of the whole store: when it was last
/// logged. The fault itself lives in [`Health`] (what `/readyz` answers).
#[derive(Debug, Default)]
pub(super) struct Outage {
    /// When the fault was last logged at ERROR.
    logged: Option<Instant>,
}

impl Outage {
    /// Notes a fault of the whole store, met by an attempt or a discovery:
    /// claiming pauses until a probe of the store works.
    pub(super) fn faulted(&mut self, health: &Health, fault: &StoreFault) {
        let before = health.store_outage().map(|o| o.fault.kind);
        let outage = health.store_faulted(fault);
        metrics::gauge!(m::STORE_FAULT, "kind" => fault.kind.name()).set(1.0);
        if before != Some(fault.kind) {
            if let Some(kind) = before {
                metrics::gauge!(m::STORE_FAULT, "kind" => kind.name()).set(0.0);
            }
            self.logged = None;
        }
        if self.logged.is_none_or(|at| at.elapsed() >= STORE_FAULT_LOG_INTERVAL) {
            self.logged = Some(Instant::now());
            tracing::error!(
                fault = fault.kind.name(),
                place = fault.place.as_deref(),
                error = %outage.fault,
                failing_for_s = outage.since.elapsed().as_secs(),
                probes = outage.probes,
                "{}",
                if fault.kind.may_heal() {
                    "the store cannot work: no actions are claimed; probing it until it works again (logged once a minute while it lasts)"
                } else {
                    "the store is damaged: no actions are claimed until the worker is restarted on a sound store (logged once a minute while it lasts)"
                }
            );
        }
    }

    /// While the store is faulted, pauses before the next probe and says
    /// what to do then. With `exit_when_idle`, says to stop instead: for a
    /// damaged store at once, for any other fault after
    /// [`STORE_FAULT_MAX_WHEN_IDLE`].
    pub(super) async fn wait(&self, health: &Health, exit_when_idle: bool) -> Next {
        let Some(outage) = health.store_outage() else {
            return Next::Resume;
        };
        let heals = outage.fault.kind.may_heal();
        if exit_when_idle && (!heals || outage.since.elapsed() >= STORE_FAULT_MAX_WHEN_IDLE) {
            return Next::Stop(format!(
                "{}; the worker stops (--exit-when-idle needs a working store)",
                outage.describe()
            ));
        }
        let pause = match heals {
            true => probe_pause(outage.probes),
            false => Duration::from_millis(STORE_PROBE_MS_MAX),
        };
        tokio::time::sleep(pause).await;
        Next::Probe
    }

    /// Probes the store (a damaged one is never probed: its fault is only
    /// logged again once per interval) and notes what the probe found.
    pub(super) async fn probe(&mut self, health: &Health, store: &dyn Store) {
        let Some(outage) = health.store_outage() else {
            return;
        };
        if !outage.fault.kind.may_heal() {
            self.faulted(health, &outage.fault);
            return;
        }
        match store.ping().await {
            Ok(()) => {
                if let Some(ended) = health.store_works() {
                    metrics::gauge!(m::STORE_FAULT, "kind" => ended.fault.kind.name()).set(0.0);
                    self.logged = None;
                    tracing::info!(
                        fault = ended.fault.kind.name(),
                        failed_for_s = ended.since.elapsed().as_secs(),
                        probes = ended.probes + 1,
                        "the store works again: claiming resumes"
                    );
                }
            }
            Err(e) => {
                health.store_probe_failed(&e);
                if let Some(fault) = e.fault() {
                    self.faulted(health, fault);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::store::hooked::{Fault, Hook, Hooked, OpKind};
    use crate::store::memory::MemoryStore;
    use crate::store::{FaultKind, Store, StoreError};
    use crate::worker::tests::{actions_left, config, queued};
    use crate::worker::{run, RunStats};

    /// Starts a worker (not `exit_when_idle`) on `store`; it stops when the
    /// sender is used (or dropped).
    fn spawn(
        store: Arc<dyn Store>,
        health: &Arc<Health>,
    ) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<RunStats>) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(run(store, config(false), health.clone(), async {
            let _ = stopped.await;
        }));
        (stop, worker)
    }

    #[test]
    fn probes_back_off_to_a_cap() {
        assert_eq!(probe_pause(0), Duration::from_millis(STORE_PROBE_MS_MIN));
        assert_eq!(probe_pause(1), Duration::from_millis(2 * STORE_PROBE_MS_MIN));
        assert_eq!(probe_pause(u64::MAX), Duration::from_millis(STORE_PROBE_MS_MAX));
        assert!((0..64).all(|n| probe_pause(n) <= Duration::from_millis(STORE_PROBE_MS_MAX)));
    }

    /// What a faulted store saw.
    #[derive(Default)]
    struct Seen {
        broken: AtomicBool,
        failed_ops: AtomicU64,
        pings: AtomicU64,
    }

    /// While `seen.broken`, fails every operation of a kind in `failing`,
    /// and every readiness probe, with `fault`. Each failure takes 1 ms of
    /// (paused) time, so that a worker looping on the fault moves the clock
    /// and the test sees the loop, instead of hanging.
    struct Outage {
        seen: Arc<Seen>,
        fault: StoreFault,
        failing: &'static [OpKind],
    }

    #[async_trait::async_trait]
    impl Hook for Outage {
        async fn before(&self, kind: OpKind, _key: &str) -> Fault {
            if !(self.seen.broken.load(Ordering::SeqCst) && self.failing.contains(&kind)) {
                return Fault::Pass;
            }
            self.seen.failed_ops.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
            Fault::FailBefore(StoreError::Fault(self.fault.clone()))
        }
        async fn before_ping(&self) -> Option<StoreError> {
            self.seen.pings.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.seen
                .broken
                .load(Ordering::SeqCst)
                .then(|| StoreError::Fault(self.fault.clone()))
        }
    }

    /// A memory store with 3 queued actions; while `seen.broken`, every
    /// operation of a kind in `failing` and every readiness probe fail with
    /// `fault`.
    async fn faulted(fault: StoreFault, failing: &'static [OpKind]) -> (Arc<dyn Store>, MemoryStore, Arc<Seen>) {
        let inner = queued(3).await;
        let seen = Arc::new(Seen::default());
        seen.broken.store(true, Ordering::SeqCst);
        let store = Hooked::new(
            Arc::new(inner.clone()),
            Outage {
                seen: seen.clone(),
                fault,
                failing,
            },
        );
        (Arc::new(store), inner, seen)
    }

    /// Serializes the tests that log from this module: tracing caches each
    /// log statement's interest the first time it runs, and a statement
    /// first run on another thread while a capture is being installed can
    /// miss the capture.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Log lines written on this thread while installed.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn install(&self) -> tracing::subscriber::DefaultGuard {
            let out = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || out.clone())
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_default(subscriber)
        }
        fn lines_with(&self, text: &str) -> usize {
            let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| l.contains(text))
                .count()
        }
    }

    /// A store that cannot be written (or a full disk), met by claims or by
    /// discovery: nothing is claimed while it lasts, the store is probed
    /// with a capped backoff (no busy loop), the cause is logged once and
    /// answered by `/readyz`; once a probe works, the same worker resumes
    /// within one probe interval and credits everything.
    #[tokio::test(start_paused = true)]
    async fn a_store_fault_pauses_claiming_logs_once_and_heals_by_itself() {
        let _serial = SERIAL.lock().await;
        for (kind, failing) in [
            (FaultKind::ReadOnly, &[OpKind::GetAndLock, OpKind::Insert][..]),
            (FaultKind::Full, &[OpKind::ListKeys][..]),
        ] {
            let log = Captured::default();
            let _guard = log.install();
            let fault = StoreFault::new(kind, "attempt to write a readonly database").at("/data/ledgerd.db");
            let (store, inner, seen) = faulted(fault, failing).await;
            let health = Arc::new(Health::default());
            let (stop, worker) = spawn(store, &health);
            tokio::time::sleep(Duration::from_secs(50)).await;

            let problem = health.problem().expect("not ready while the store is faulted");
            assert!(
                problem.contains(&kind.to_string()) && problem.contains("/data/ledgerd.db"),
                "{problem}"
            );
            let failed = seen.failed_ops.load(Ordering::SeqCst);
            assert!(
                failed <= 4,
                "{kind:?}: nothing more is tried once the fault is seen: {failed} failed operations"
            );
            let pings = seen.pings.load(Ordering::SeqCst);
            assert!(
                (5..=20).contains(&pings),
                "{kind:?}: probed with a capped backoff, not in a loop: {pings} probes in 50 s"
            );
            assert_eq!(actions_left(&inner), 3, "nothing claimed meanwhile");
            assert_eq!(
                log.lines_with(&kind.to_string()),
                1,
                "{kind:?}: one message per interval"
            );

            seen.broken.store(false, Ordering::SeqCst);
            let healed = tokio::time::Instant::now();
            while actions_left(&inner) > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(healed.elapsed() < Duration::from_secs(60), "{kind:?}: the queue drains");
            }
            assert!(
                healed.elapsed() <= Duration::from_millis(STORE_PROBE_MS_MAX + 1_000),
                "{kind:?}: resumed within one probe interval: {:?}",
                healed.elapsed()
            );
            assert_eq!(health.problem(), None, "ready again");
            assert_eq!(log.lines_with("the store works again"), 1);
            let _ = stop.send(());
            let stats = worker.await.expect("worker");
            assert_eq!(stats.completed, 3, "{kind:?}: every action credited once");
        }
    }

    /// A damaged store is never probed (it does not mend itself): the
    /// worker stops claiming for good, is not ready, and names
    /// `ledgerd check`; with `--exit-when-idle` it stops at once.
    #[tokio::test(start_paused = true)]
    async fn a_damaged_store_stops_claiming_for_good_and_names_check() {
        let _serial = SERIAL.lock().await;
        let log = Captured::default();
        let _guard = log.install();
        let fault = StoreFault::new(FaultKind::Corrupt, "database disk image is malformed").at("/data/ledgerd.db");
        let (store, inner, seen) = faulted(fault.clone(), &[OpKind::GetAndLock]).await;
        let health = Arc::new(Health::default());
        let (stop, worker) = spawn(store, &health);
        tokio::time::sleep(Duration::from_secs(120)).await;
        let problem = health.problem().expect("not ready");
        assert!(problem.contains("ledgerd check"), "{problem}");
        assert!(seen.failed_ops.load(Ordering::SeqCst) <= 4);
        assert_eq!(seen.pings.load(Ordering::SeqCst), 0, "a damaged store is not probed");
        assert_eq!(
            log.lines_with("the store is damaged"),
            2,
            "logged at once, then once a minute"
        );
        seen.broken.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(actions_left(&inner), 3, "still nothing claimed");
        let _ = stop.send(());
        let stats = worker.await.expect("worker");
        assert_eq!(stats.completed, 0);

        let (store, _, _) = faulted(fault, &[OpKind::GetAndLock]).await;
        let stats = tokio::time::timeout(
            Duration::from_secs(3_600),
            run(store, config(true), Arc::default(), std::future::pending()),
        )
        .await
        .expect("an exit-when-idle run stops");
        let why = stats.stopped.expect("stopped with the cause");
        assert!(why.contains("ledgerd check") && why.contains("damaged"), "{why}");
    }
}

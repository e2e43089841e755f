//! What the worker knows about its own ability to work, for `/readyz`: a
//! failing discovery makes the worker not ready, with the cause, until a
//! discovery succeeds again; so does a fault of the whole store (a full
//! disk, a read-only, failing or damaged store) until a probe of the store
//! works again; a worker shutting down is not ready either.
//! (What the store itself can do, `/readyz` asks the store: see
//! `Store::ping`.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::ops::names as m;
use crate::store::{Store, StoreError, StoreFault};

/// How long a readiness check waits for the store.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Ready when the worker is not shutting down, its discovery works, and
/// the store can do what `run` needs (`Store::ping`: for Couchbase,
/// key-value access to both buckets and the discovery query; for SQLite, a
/// write that commits). Sets the `ledgerd_ready` gauge to the answer.
pub async fn readiness(store: &dyn Store, health: &Health) -> Result<(), String> {
    let answer = match health.problem() {
        Some(problem) => Err(problem),
        None => match tokio::time::timeout(READY_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the store did not answer within {} s", READY_TIMEOUT.as_secs())),
        },
    };
    metrics::gauge!(m::READY).set(if answer.is_ok() { 1.0 } else { 0.0 });
    answer
}

/// The discovery failure in progress, if any.
#[derive(Debug, Clone)]
pub struct DiscoveryFailure {
    /// The last error.
    pub error: StoreError,
    /// When the failures began.
    pub since: Instant,
    /// Failed attempts since then.
    pub attempts: u64,
}

impl DiscoveryFailure {
    /// Whether the last error will not heal by itself.
    pub fn permanent(&self) -> bool {
        !self.error.is_retryable()
    }

    /// One line for operators: what fails, since when, and why.
    pub fn describe(&self) -> String {
        format!(
            "discovery of queued actions has failed for {} s ({} attempts{}): {}",
            self.since.elapsed().as_secs(),
            self.attempts,
            if self.permanent() {
                ", will not heal by itself"
            } else {
                ""
            },
            self.error
        )
    }
}

/// A fault of the whole store in progress: claiming is paused.
#[derive(Debug, Clone)]
pub struct StoreOutage {
    /// The last fault seen.
    pub fault: StoreFault,
    /// What the last probe of the store answered, when that was not a
    /// fault of the whole store.
    pub probe_error: Option<String>,
    /// When the outage began.
    pub since: Instant,
    /// Probes of the store since then.
    pub probes: u64,
}

impl StoreOutage {
    /// One line for operators: the cause, where, what to do, for how long.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "{} (for {} s, {} probes; {})",
            self.fault,
            self.since.elapsed().as_secs(),
            self.probes,
            if self.fault.kind.may_heal() {
                "no actions are claimed until a probe works, then the worker resumes by itself"
            } else {
                "no actions are claimed until the worker is restarted on a sound store"
            }
        );
        if let Some(e) = &self.probe_error {
            line.push_str(&format!("; the last probe failed with: {e}"));
        }
        line
    }
}

/// Shared by a worker (which reports) and the ops listener (which reads).
#[derive(Debug, Default)]
pub struct Health {
    discovery: Mutex<Option<DiscoveryFailure>>,
    store: Mutex<Option<StoreOutage>>,
    stopping: AtomicBool,
}

impl Health {
    /// Records a failed discovery; returns the failure as it now stands.
    pub fn discovery_failed(&self, error: &StoreError) -> DiscoveryFailure {
        let mut slot = self.discovery.lock().unwrap_or_else(|p| p.into_inner());
        let failure = match slot.take() {
            Some(mut f) => {
                f.error = error.clone();
                f.attempts += 1;
                f
            }
            None => DiscoveryFailure {
                error: error.clone(),
                since: Instant::now(),
                attempts: 1,
            },
        };
        *slot = Some(failure.clone());
        failure
    }

    /// Records a successful discovery; returns the failure it ends, if any.
    pub fn discovery_ok(&self) -> Option<DiscoveryFailure> {
        self.discovery.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Records a fault of the whole store (the first starts an outage);
    /// returns the outage as it now stands.
    pub fn store_faulted(&self, fault: &StoreFault) -> StoreOutage {
        let mut slot = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let outage = match slot.take() {
            Some(mut o) => {
                o.fault = fault.clone();
                o.probe_error = None;
                o
            }
            None => StoreOutage {
                fault: fault.clone(),
                probe_error: None,
                since: Instant::now(),
                probes: 0,
            },
        };
        *slot = Some(outage.clone());
        outage
    }

    /// Records a probe of the store during an outage that failed with
    /// `error`; returns the outage as it now stands (`None` if there is none).
    pub fn store_probe_failed(&self, error: &StoreError) -> Option<StoreOutage> {
        let mut slot = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let outage = slot.as_mut()?;
        outage.probes += 1;
        match error.fault() {
            Some(f) => {
                outage.fault = f.clone();
                outage.probe_error = None;
            }
            None => outage.probe_error = Some(error.to_string()),
        }
        Some(outage.clone())
    }

    /// The store outage in progress, if any.
    pub fn store_outage(&self) -> Option<StoreOutage> {
        self.store.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records that the store works again; returns the outage it ends.
    pub fn store_works(&self) -> Option<StoreOutage> {
        self.store.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Records that the worker was asked to stop: it claims nothing more.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Why the worker is not ready, if it is not.
    pub fn problem(&self) -> Option<String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Some("shutting down: claiming no more actions, finishing those in flight".into());
        }
        if let Some(outage) = self.store.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Some(outage.describe());
        }
        self.discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(DiscoveryFailure::describe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_lasts_until_a_discovery_succeeds() {
        let h = Health::default();
        assert_eq!(h.problem(), None);
        h.discovery_failed(&StoreError::Transient("busy".into()));
        let f = h.discovery_failed(&StoreError::Permanent("no index".into()));
        assert_eq!(f.attempts, 2);
        assert!(f.permanent());
        assert!(h
            .problem()
            .is_some_and(|p| p.contains("no index") && p.contains("2 attempts")));
        assert!(h.discovery_ok().is_some());
        assert_eq!(h.problem(), None);
    }

    #[test]
    fn a_store_outage_lasts_until_the_store_works_and_names_its_cause() {
        use crate::store::FaultKind;
        let h = Health::default();
        let full = StoreFault::new(FaultKind::Full, "database or disk is full").at("/data/ledgerd.db");
        assert!(h.store_probe_failed(&StoreError::Fault(full.clone())).is_none());
        h.store_faulted(&full);
        let o = h
            .store_probe_failed(&StoreError::Transient("busy".into()))
            .expect("an outage");
        assert_eq!(o.probes, 1);
        let problem = h.problem().expect("not ready");
        assert!(problem.contains("disk holding the store is full") && problem.contains("/data/ledgerd.db"));
        assert!(problem.contains("busy"));
        assert!(h.store_works().is_some());
        assert_eq!(h.problem(), None);
    }

    #[test]
    fn a_stopping_worker_is_not_ready() {
        let h = Health::default();
        h.stopping();
        assert!(h.problem().is_some_and(|p| p.contains("shutting down")));
    }
}

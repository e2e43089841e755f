//! What the worker knows about its own ability to work, for `/readyz`: a
//! failing discovery makes the worker not ready, with the cause, until a
//! discovery succeeds again; a worker shutting down is not ready either.
//! (What the store itself can do, `/readyz` asks the store: see
//! `Store::ping`.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::ops::metrics as m;
use crate::store::{Store, StoreError};

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

/// Shared by a worker (which reports) and the ops listener (which reads).
#[derive(Debug, Default)]
pub struct Health {
    discovery: Mutex<Option<DiscoveryFailure>>,
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

    /// Records that the worker was asked to stop: it claims nothing more.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Why the worker is not ready, if it is not.
    pub fn problem(&self) -> Option<String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Some("shutting down: claiming no more actions, finishing those in flight".into());
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
    fn a_stopping_worker_is_not_ready() {
        let h = Health::default();
        h.stopping();
        assert!(h.problem().is_some_and(|p| p.contains("shutting down")));
    }
}

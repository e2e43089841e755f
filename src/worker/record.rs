//! An attempt that ended, in two parts: what happened (its stats, metrics
//! and log line, in [`Loop::tell`]), and what the loop does next with the
//! action, a pure function of how it ended ([`then`]), applied by
//! [`Loop::record`].

use std::time::{Duration, Instant};

use super::collapse::{cause, COLLAPSE_INTERVAL};
use super::{Finished, Loop};
use crate::ops::names as m;
use crate::protocol::{self, Attempt, Outcome, ProtocolError, Skip};
use crate::telemetry::ACTION_TARGET;

/// What the loop does with an action after an attempt at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    /// Nothing: it was not claimed (gone, or another worker holds it).
    Nothing,
    /// The store as a whole failed, not this action: claiming pauses (see
    /// `outage.rs`), and the action is not put off (it is claimed again as
    /// soon as the store works).
    Outage,
    /// Done with it (completed, duplicate or rejected): forget any put-off.
    Forget,
    /// Leave it alone for `delay`; `after_error` when an error (not a
    /// blocked wallet) ended the attempt.
    PutOff { delay: Duration, after_error: bool },
}

/// What the loop does next with an action whose attempt `attempt` ended
/// with `result`.
pub(super) fn then(result: &Result<Outcome, ProtocolError>, attempt: Attempt) -> Then {
    match result {
        Ok(Outcome::Skipped(_)) => Then::Nothing,
        Err(e) if e.fault().is_some() => Then::Outage,
        // The delay chosen when the attempt started: a blocked action says
        // on itself when it is tried again, and is locked until then (in
        // whole seconds), which this worker waits out too.
        Ok(Outcome::Blocked { .. }) => Then::PutOff {
            delay: attempt.retry_in.max(protocol::blocked_hold(attempt.retry_in)),
            after_error: false,
        },
        Err(_) => Then::PutOff {
            delay: attempt.retry_in,
            after_error: true,
        },
        Ok(Outcome::Completed { .. } | Outcome::Duplicate | Outcome::Failed { .. }) => Then::Forget,
    }
}

impl Loop {
    pub(super) fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            self.record(done);
        }
    }

    /// An attempt ended: says what happened, then does what follows.
    pub(super) fn record(&mut self, done: Result<Finished, tokio::task::JoinError>) {
        let (id, result, elapsed, attempt) = match done {
            Ok(finished) => finished,
            Err(e) => {
                // A panic in the protocol is a bug; the action stays queued.
                tracing::error!(error = %e, "action task failed");
                self.stats.errors += 1;
                return;
            }
        };
        self.in_flight.remove(&id);
        metrics::gauge!(m::IN_FLIGHT).set(self.in_flight.len() as f64);
        self.membership.note_in_flight(self.in_flight.len());
        self.tell(&id, &result, elapsed, attempt);
        match then(&result, attempt) {
            Then::Nothing => {}
            Then::Outage => {
                if let Some(fault) = result.as_ref().err().and_then(ProtocolError::fault) {
                    self.outage.faulted(&self.health, fault);
                }
                self.claims_this_pass += 1;
                self.put_off.clear(&id);
            }
            Then::Forget => {
                self.claims_this_pass += 1;
                self.put_off.clear(&id);
            }
            Then::PutOff { delay, after_error } => {
                self.claims_this_pass += 1;
                self.put_off
                    .put_off(id, Instant::now() + delay, attempt.number, after_error);
            }
        }
    }

    /// What happened: the stats, the metrics and the log line of an attempt.
    fn tell(&mut self, id: &str, result: &Result<Outcome, ProtocolError>, elapsed: Duration, attempt: Attempt) {
        metrics::counter!(m::ACTIONS, "outcome" => outcome_label(result)).increment(1);
        let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(Outcome::Skipped(why)) => {
                if *why == Skip::Busy {
                    metrics::counter!(m::CLAIM_CONFLICTS).increment(1);
                }
                tracing::debug!(target: ACTION_TARGET, action = id, outcome = "skipped", why = ?why, "action skipped");
            }
            Ok(Outcome::Completed { credits, units }) => {
                self.stats.completed += 1;
                self.stats.units += u128::from(*units);
                metrics::counter!(m::CREDITS).increment(*credits as u64);
                metrics::counter!(m::UNITS).increment(*units);
                metrics::histogram!(m::ACTION_SECONDS).record(elapsed.as_secs_f64());
                self.stats.latencies.record(elapsed);
                tracing::info!(
                    target: ACTION_TARGET,
                    action = id,
                    outcome = "completed",
                    credits,
                    units,
                    duration_ms,
                    "action done"
                );
            }
            Ok(Outcome::Duplicate) => {
                self.stats.duplicates += 1;
                tracing::info!(
                    target: ACTION_TARGET,
                    action = id,
                    outcome = "duplicate",
                    credits = 0,
                    duration_ms,
                    "action done"
                );
            }
            Ok(Outcome::Failed { reason }) => {
                self.stats.failed += 1;
                tracing::warn!(
                    target: ACTION_TARGET,
                    action = id,
                    outcome = "failed",
                    reason,
                    duration_ms,
                    "action rejected into failed:"
                );
            }
            Ok(Outcome::Blocked { reason }) => {
                self.stats.blocked += 1;
                if self.blocked_logged.admit(&cause(reason, id), id, Instant::now()) {
                    tracing::error!(
                        target: ACTION_TARGET,
                        action = id,
                        outcome = "blocked",
                        reason,
                        duration_ms,
                        retry_in_ms = attempt.retry_in.as_millis() as u64,
                        "action blocked; will retry (more actions blocked for this reason within {}s are counted, not logged)",
                        COLLAPSE_INTERVAL.as_secs()
                    );
                }
            }
            // The outage says it (see `outage.rs`).
            Err(e) if e.fault().is_some() => self.stats.errors += 1,
            Err(e) => {
                self.stats.errors += 1;
                if self.errors_logged.admit(&cause(&e.to_string(), id), id, Instant::now()) {
                    tracing::warn!(
                        target: ACTION_TARGET,
                        action = id,
                        outcome = "error",
                        error = %e,
                        retryable = e.is_retryable(),
                        duration_ms,
                        "action attempt failed; will retry (more attempts failing with this error within {}s are counted, not logged)",
                        COLLAPSE_INTERVAL.as_secs()
                    );
                }
            }
        }
    }
}

/// The `outcome` label of an attempt.
fn outcome_label(result: &Result<Outcome, ProtocolError>) -> &'static str {
    match result {
        Ok(Outcome::Completed { .. }) => "completed",
        Ok(Outcome::Duplicate) => "duplicate",
        Ok(Outcome::Failed { .. }) => "failed",
        Ok(Outcome::Blocked { .. }) => "blocked",
        Ok(Outcome::Skipped(_)) => "skipped",
        Err(_) => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fault::{FaultKind, StoreFault};
    use crate::store::StoreError;

    fn attempt(secs: u64) -> Attempt {
        Attempt {
            number: 2,
            retry_in: Duration::from_millis(secs * 1000 + 300),
        }
    }

    #[test]
    fn done_actions_are_forgotten_and_skipped_ones_left_as_they_are() {
        for done in [
            Outcome::Completed { credits: 1, units: 1 },
            Outcome::Duplicate,
            Outcome::Failed { reason: "r".into() },
        ] {
            assert_eq!(then(&Ok(done), attempt(1)), Then::Forget);
        }
        assert_eq!(then(&Ok(Outcome::Skipped(Skip::Busy)), attempt(1)), Then::Nothing);
    }

    #[test]
    fn a_blocked_action_waits_out_its_hold_and_an_error_its_delay() {
        // The hold is in whole seconds, rounded up: 2.3 s waits 3 s.
        assert_eq!(
            then(&Ok(Outcome::Blocked { reason: "r".into() }), attempt(2)),
            Then::PutOff {
                delay: Duration::from_secs(3),
                after_error: false
            }
        );
        let error = Err(ProtocolError::Contention(3));
        assert_eq!(
            then(&error, attempt(2)),
            Then::PutOff {
                delay: Duration::from_millis(2_300),
                after_error: true
            }
        );
    }

    #[test]
    fn a_fault_of_the_whole_store_pauses_claiming_and_puts_nothing_off() {
        let fault = StoreError::Fault(StoreFault::new(FaultKind::Full, "disk full"));
        assert_eq!(then(&Err(fault.into()), attempt(1)), Then::Outage);
    }
}

//! How SDK errors become [`StoreError`]s, and the retry strategy that
//! surfaces a locked document at once.

use std::sync::Arc;

use couchbase::error::{Error, ErrorKind};
use couchbase::retry::{BestEffortRetryStrategy, RetryAction, RetryReason, RetryRequest, RetryStrategy};

use crate::store::StoreError;

/// What kind of call failed: it decides what a timeout means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A read: a timeout means nothing happened.
    Read,
    /// A write without a CAS.
    Write,
    /// A write under a CAS.
    WriteWithCas,
}

/// Maps an SDK error, knowing what kind of call it came from.
pub fn map_error(e: &Error, call: Call) -> StoreError {
    let write = call != Call::Read;
    match e.kind() {
        ErrorKind::DocumentNotFound => StoreError::NotFound,
        ErrorKind::DocumentExists | ErrorKind::PathExists => StoreError::Exists,
        // A sub-document insert on an existing document comes back as a CAS
        // mismatch (the server's KEY_EXISTS carries a CAS); with no CAS of
        // ours involved, it means "exists".
        ErrorKind::CasMismatch if call == Call::WriteWithCas => StoreError::CasMismatch,
        ErrorKind::CasMismatch => StoreError::Exists,
        ErrorKind::DocumentLocked => StoreError::Locked,
        ErrorKind::DocumentNotLocked => StoreError::CasMismatch,
        ErrorKind::DurabilityAmbiguous => StoreError::Ambiguous(e.to_string()),
        ErrorKind::ServerTimeout | ErrorKind::RequestCanceled | ErrorKind::ClusterDropped if write => {
            StoreError::Ambiguous(e.to_string())
        }
        ErrorKind::ServerTimeout
        | ErrorKind::RequestCanceled
        | ErrorKind::ClusterDropped
        | ErrorKind::TemporaryFailure
        | ErrorKind::DurabilityWriteInProgress
        | ErrorKind::DurableWriteRecommitInProgress
        | ErrorKind::ServiceNotAvailable(_)
        | ErrorKind::RateLimitedFailure => StoreError::Transient(e.to_string()),
        ErrorKind::DurabilityImpossible => StoreError::Permanent(format!(
            "{e} (a single-node cluster needs couchbase_durability = \"none\" or buckets with 0 replicas)"
        )),
        _ => StoreError::Permanent(e.to_string()),
    }
}

/// What a lapsed client-side deadline means for a call.
pub fn deadline_error(call: Call, what: &str, timeout_ms: u64) -> StoreError {
    let msg = format!("{what}: no answer within {timeout_ms} ms");
    match call {
        Call::Read => StoreError::Transient(msg),
        // The request may have reached the server and been applied.
        Call::Write | Call::WriteWithCas => StoreError::Ambiguous(msg),
    }
}

/// The SDK's best-effort retries, except that a locked document is
/// reported at once (the protocol skips it or waits for the lease), and
/// that a lock attempt does not spin on temporary failures either.
#[derive(Debug)]
pub struct FailFastOnLock {
    inner: BestEffortRetryStrategy<couchbase::retry::ExponentialBackoffCalculator>,
    for_lock_attempts: bool,
}

impl FailFastOnLock {
    /// The strategy for ordinary operations.
    pub fn shared() -> Arc<dyn RetryStrategy> {
        Arc::new(Self {
            inner: BestEffortRetryStrategy::default(),
            for_lock_attempts: false,
        })
    }

    /// The strategy for `get_and_lock`, where older servers answer a
    /// locked document with a temporary failure.
    pub fn for_lock_attempts() -> Arc<dyn RetryStrategy> {
        Arc::new(Self {
            inner: BestEffortRetryStrategy::default(),
            for_lock_attempts: true,
        })
    }

    /// Whether a failure for this reason should come back to us now.
    pub fn surfaces(&self, reason: &RetryReason) -> bool {
        matches!(reason, RetryReason::KvLocked)
            || (self.for_lock_attempts && matches!(reason, RetryReason::KvTemporaryFailure))
    }
}

impl RetryStrategy for FailFastOnLock {
    fn retry_after(&self, request: &RetryRequest, reason: &RetryReason) -> Option<RetryAction> {
        if self.surfaces(reason) {
            return None;
        }
        self.inner.retry_after(request, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorKind) -> Error {
        Error::new(kind)
    }

    #[test]
    fn errors_map_by_call() {
        assert_eq!(
            map_error(&err(ErrorKind::DocumentNotFound), Call::Read),
            StoreError::NotFound
        );
        assert_eq!(
            map_error(&err(ErrorKind::DocumentExists), Call::Write),
            StoreError::Exists
        );
        assert_eq!(map_error(&err(ErrorKind::CasMismatch), Call::Write), StoreError::Exists);
        assert_eq!(
            map_error(&err(ErrorKind::CasMismatch), Call::WriteWithCas),
            StoreError::CasMismatch
        );
        assert_eq!(
            map_error(&err(ErrorKind::DocumentLocked), Call::WriteWithCas),
            StoreError::Locked
        );
        assert_eq!(
            map_error(&err(ErrorKind::DocumentNotLocked), Call::Write),
            StoreError::CasMismatch
        );
        assert!(matches!(
            map_error(&err(ErrorKind::ServerTimeout), Call::Read),
            StoreError::Transient(_)
        ));
        assert!(matches!(
            map_error(&err(ErrorKind::ServerTimeout), Call::Write),
            StoreError::Ambiguous(_)
        ));
        assert!(matches!(
            map_error(&err(ErrorKind::RequestCanceled), Call::WriteWithCas),
            StoreError::Ambiguous(_)
        ));
        assert!(matches!(
            map_error(&err(ErrorKind::DurabilityAmbiguous), Call::Write),
            StoreError::Ambiguous(_)
        ));
        assert!(matches!(
            map_error(&err(ErrorKind::TemporaryFailure), Call::Write),
            StoreError::Transient(_)
        ));
        assert!(matches!(
            map_error(&err(ErrorKind::AuthenticationFailure), Call::Read),
            StoreError::Permanent(_)
        ));
        let impossible = map_error(&err(ErrorKind::DurabilityImpossible), Call::Write);
        assert!(matches!(&impossible, StoreError::Permanent(m) if m.contains("couchbase_durability")));
    }

    #[test]
    fn deadlines_are_ambiguous_only_for_writes() {
        assert!(matches!(deadline_error(Call::Read, "get", 5), StoreError::Transient(_)));
        assert!(matches!(
            deadline_error(Call::Write, "insert", 5),
            StoreError::Ambiguous(_)
        ));
        assert!(matches!(
            deadline_error(Call::WriteWithCas, "replace", 5),
            StoreError::Ambiguous(_)
        ));
    }

    #[test]
    fn locks_surface_at_once() {
        let ordinary = FailFastOnLock {
            inner: BestEffortRetryStrategy::default(),
            for_lock_attempts: false,
        };
        let locking = FailFastOnLock {
            inner: BestEffortRetryStrategy::default(),
            for_lock_attempts: true,
        };
        assert!(ordinary.surfaces(&RetryReason::KvLocked));
        assert!(!ordinary.surfaces(&RetryReason::KvTemporaryFailure));
        assert!(!ordinary.surfaces(&RetryReason::KvNotMyVbucket));
        assert!(locking.surfaces(&RetryReason::KvTemporaryFailure));
    }
}

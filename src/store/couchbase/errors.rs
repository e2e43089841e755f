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
        // A path a write needed is gone: the document changed under us.
        ErrorKind::PathNotFound => StoreError::PathNotFound(e.to_string()),
        // The server's (or the SDK's) refusal of a request beyond its
        // limits: too many specs ("subdoc invalid combo", an invalid
        // argument), a key over 250 bytes (the SDK refuses it as an invalid
        // argument), an item over 20 MiB (E2BIG), paths too long or deep.
        ErrorKind::InvalidArgument(_)
        | ErrorKind::ValueTooLarge
        | ErrorKind::PathTooBig
        | ErrorKind::PathTooDeep
        | ErrorKind::ValueTooDeep
        | ErrorKind::PathInvalid
        | ErrorKind::XattrInvalidKeyCombo
        | ErrorKind::XattrInvalidOrder
        | ErrorKind::XattrInvalidFlagCombo
        | ErrorKind::XattrCannotModifyVirtualAttribute => StoreError::LimitExceeded(e.to_string()),
        // The server's EINVAL (a sub-document path over 1024 bytes, say)
        // reaches us only as this message.
        ErrorKind::OtherFailure(m) if m.contains("invalid args") => StoreError::LimitExceeded(e.to_string()),
        _ => StoreError::Permanent(e.to_string()),
    }
}

/// What an operator must have for discovery to work, said once.
const QUERY_NEEDS: &str =
    "ledgerd needs a node running the Query and Index services, and the indexes that `ledgerd init` creates";

/// Maps the error of a SQL++ query (discovery, listing, counting), telling
/// apart what will not heal by itself (a missing Query service or index,
/// wrong credentials, a dropped bucket: `Permanent`, with what to do) from
/// what may (`Transient`).
pub fn map_query_error(e: &Error) -> StoreError {
    let text = e.to_string();
    match e.kind() {
        ErrorKind::ServiceNotAvailable(_) => {
            StoreError::Permanent(format!("no node runs the Query service ({text}): {QUERY_NEEDS}"))
        }
        ErrorKind::IndexNotFound | ErrorKind::IndexFailure | ErrorKind::PlanningFailure => {
            StoreError::Permanent(format!("the query could not use its index ({text}): {QUERY_NEEDS}"))
        }
        ErrorKind::AuthenticationFailure => StoreError::Permanent(format!(
            "the Query service refused the credentials ({text}): check couchbase_username and couchbase_password, and that the user may run queries on both buckets"
        )),
        ErrorKind::BucketNotFound | ErrorKind::ScopeNotFound | ErrorKind::CollectionNotFound => {
            StoreError::Permanent(format!(
                "a bucket is missing ({text}): create the buckets with `ledgerd init`, or fix queue_bucket and ledger_bucket"
            ))
        }
        // The SDK reports an HTTP error without a SQL++ error body (a proxy,
        // or a node without the Query service, answering 404 or 501) as a
        // plain message carrying the status code.
        ErrorKind::OtherFailure(_) if http_status(&text).is_some_and(|s| (400..600).contains(&s) && s != 503) => {
            let status = http_status(&text).unwrap_or_default();
            StoreError::Permanent(format!("the Query service answered HTTP {status} ({text}): {QUERY_NEEDS}"))
        }
        _ => match map_error(e, Call::Read) {
            StoreError::Permanent(m) => StoreError::Permanent(format!("{m}: {QUERY_NEEDS}")),
            other => other,
        },
    }
}

/// The HTTP status named in an SDK message such as "non-200 status code
/// received 501 Not Implemented …".
fn http_status(message: &str) -> Option<u16> {
    let rest = &message[message.find("status code received ")? + "status code received ".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
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
    fn refusals_beyond_the_limits_and_missing_paths_have_their_own_classes() {
        for kind in [
            ErrorKind::ValueTooLarge,
            ErrorKind::PathTooBig,
            ErrorKind::PathTooDeep,
            ErrorKind::XattrInvalidKeyCombo,
        ] {
            let shown = format!("{kind:?}");
            assert!(
                matches!(map_error(&err(kind), Call::WriteWithCas), StoreError::LimitExceeded(_)),
                "{shown}"
            );
        }
        // What the SDK makes of SUBDOC_INVALID_COMBO (more than 16 specs).
        let combo = err(ErrorKind::InvalidArgument(
            couchbase::error::InvalidArgumentErrorKind::new(None, "subdoc invalid combo"),
        ));
        assert!(
            matches!(map_error(&combo, Call::WriteWithCas), StoreError::LimitExceeded(m) if m.contains("invalid combo"))
        );
        assert!(matches!(
            map_error(&err(ErrorKind::PathNotFound), Call::WriteWithCas),
            StoreError::PathNotFound(_)
        ));
    }

    #[test]
    fn query_errors_say_whether_they_heal_and_what_to_do() {
        let missing_service = err(ErrorKind::ServiceNotAvailable(
            couchbase::service_type::ServiceType::QUERY,
        ));
        assert!(
            matches!(map_query_error(&missing_service), StoreError::Permanent(m) if m.contains("Query and Index services"))
        );
        assert!(
            matches!(map_query_error(&err(ErrorKind::IndexNotFound)), StoreError::Permanent(m) if m.contains("ledgerd init"))
        );
        assert!(
            matches!(map_query_error(&err(ErrorKind::AuthenticationFailure)), StoreError::Permanent(m) if m.contains("couchbase_password"))
        );
        assert!(matches!(
            map_query_error(&err(ErrorKind::BucketNotFound)),
            StoreError::Permanent(_)
        ));
        let not_implemented = err(ErrorKind::OtherFailure(
            "non-200 status code received 501 Not Implemented but parsing error response body failed x".into(),
        ));
        assert!(matches!(map_query_error(&not_implemented), StoreError::Permanent(m) if m.contains("HTTP 501")));
        let busy = err(ErrorKind::OtherFailure(
            "non-200 status code received 503 Service Unavailable but parsing error response body failed x".into(),
        ));
        assert!(!matches!(map_query_error(&busy), StoreError::Permanent(m) if m.contains("HTTP")));
        assert!(matches!(
            map_query_error(&err(ErrorKind::ServerTimeout)),
            StoreError::Transient(_)
        ));
        assert!(matches!(
            map_query_error(&err(ErrorKind::TemporaryFailure)),
            StoreError::Transient(_)
        ));
        assert_eq!(http_status("x status code received 404 Not Found"), Some(404));
        assert_eq!(http_status("no status here"), None);
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

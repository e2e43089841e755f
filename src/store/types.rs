//! The values that cross the store contract: buckets, documents, CAS,
//! write modes and errors.

use serde_json::Value;

use super::fault::StoreFault;

/// A document's compare-and-swap value.
pub type Cas = u64;

/// The CAS a plain read of a locked document returns: it matches no write.
pub const LOCKED_CAS: Cas = u64::MAX;

/// The two buckets ledgerd uses, named by role; the store maps them to
/// the configured bucket names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// `action:` and `failed:` documents.
    Queue,
    /// `balance:` and `tx:` documents.
    Ledger,
}

/// A document body and its CAS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    /// The body bytes, exactly as written.
    pub body: Vec<u8>,
    /// The CAS at the time of the read.
    pub cas: Cas,
}

/// A document body, some of its xattrs and its CAS, read atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct DocWithXattrs {
    /// The body bytes.
    pub body: Vec<u8>,
    /// The value at each requested path, `None` where absent.
    pub xattrs: Vec<Option<Value>>,
    /// The CAS at the time of the read.
    pub cas: Cas,
}

/// When a document was created and until when it is locked, where the store
/// can tell (the embedded stores can; Couchbase Server exposes neither).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DocTimes {
    /// Until when (Unix ms) it is locked, if it is locked now.
    pub locked_until_ms: Option<u64>,
    /// When (Unix ms) it was created.
    pub created_ms: Option<u64>,
}

/// The documents under a prefix by state, for operators (see [`Store::census`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Every document under the prefix.
    pub total: u64,
    /// Locked now and not carrying the xattr path; `None` where the store
    /// cannot see locks (SQL++ does not: Couchbase keeps them in the data
    /// service's memory) or could not tell within the probe budget.
    pub locked: Option<u64>,
    /// Carrying the xattr path, locked or not; `None` where the store could
    /// not tell within the probe budget.
    pub marked: Option<u64>,
    /// When the oldest not carrying the xattr path was created (Unix ms),
    /// where the store knows. Couchbase knows when each was last written
    /// (its CAS, a hybrid logical clock), which is when its producer wrote
    /// it as long as it carries no path: writing the path (a block note) is
    /// the only write a worker makes to a queued action, so those carrying
    /// it are left out on every store. How long a blocked action has been
    /// blocked is in its note.
    pub oldest_created_ms: Option<u64>,
}

/// How [`Store::write_with_xattrs`] treats an existing document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Create the document; fail with `Exists` if it is there.
    Insert,
    /// Change the document only if its CAS is still this one.
    Replace(Cas),
}

/// What went wrong with a store operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The document does not exist.
    #[error("document not found")]
    NotFound,
    /// The document already exists.
    #[error("document already exists")]
    Exists,
    /// The document changed since the CAS was read.
    #[error("CAS mismatch")]
    CasMismatch,
    /// The document is locked by someone else.
    #[error("document is locked")]
    Locked,
    /// A write may or may not have happened (e.g. a timeout after sending).
    #[error("ambiguous outcome: {0}")]
    Ambiguous(String),
    /// The operation did not happen and may work if tried again.
    #[error("transient error: {0}")]
    Transient(String),
    /// The operation did not happen and will not work if tried again.
    #[error("permanent error: {0}")]
    Permanent(String),
    /// The request breaks a documented limit of Couchbase Server (specs per
    /// sub-document call, key, body or xattr size, lock time; see
    /// [`limits`](super::limits)). It fails the same way every time: a defect of the
    /// caller, never retried.
    #[error("refused by the store's limits: {0}")]
    LimitExceeded(String),
    /// A write needed a sub-document path that is not there (removing a
    /// marker already gone): the document is not in the state the caller
    /// believed. Read it again, as after a CAS mismatch.
    #[error("sub-document path not found: {0}")]
    PathNotFound(String),
    /// The store as a whole cannot work (a full disk, a read-only or
    /// failing file, a damaged store): every operation fails alike until
    /// the cause is fixed. Not retried step by step: the worker pauses
    /// claiming and probes the store (see [`fault`](super::fault)). A write that met it
    /// may or may not have happened, as after a crash; the protocol rolls
    /// forward from whatever is stored, as it does after one.
    #[error("{0}")]
    Fault(StoreFault),
}

impl StoreError {
    /// The one place that decides which errors are worth retrying as they
    /// are. `NotFound`, `Exists`, `CasMismatch` and `Locked` are answers
    /// the caller acts on, not failures.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Ambiguous(_) | StoreError::Transient(_))
    }

    /// The fault of the store as a whole this error is, if it is one.
    pub fn fault(&self) -> Option<&StoreFault> {
        match self {
            StoreError::Fault(f) => Some(f),
            _ => None,
        }
    }
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A page of [`Store::read_docs`]: the documents, and the key to read the
/// next page after (`None` after the last page).
pub type DocPage = (Vec<(String, Vec<u8>)>, Option<String>);

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store URL, or the store it names, is not usable as configured:
    /// fix the configuration (the process exits 2).
    #[error("{0}")]
    Config(String),
    /// The store was found but failed to open or answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

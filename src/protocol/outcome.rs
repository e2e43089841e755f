//! What processing an action ends in: an outcome, or an error that leaves
//! the action queued for another attempt.

use crate::store::{StoreError, StoreFault};

/// Why an action was not claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Another worker holds its lock.
    Busy,
    /// It is no longer in the queue.
    Gone,
    /// Its body changed while we held it; it will be read afresh.
    Changed,
}

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its credits are applied and it is removed from the queue.
    Completed {
        /// Wallets this worker credited (a credit another worker had
        /// already applied is not counted).
        credits: usize,
        /// Units this worker credited.
        units: u64,
    },
    /// It was already completed earlier; it is removed, nothing credited.
    Duplicate,
    /// It was rejected and preserved as `failed:<id>`.
    Failed {
        /// Why.
        reason: String,
    },
    /// It cannot proceed now (a wallet is invalid); it stays queued.
    Blocked {
        /// Why.
        reason: String,
    },
    /// It was not claimed.
    Skipped(Skip),
}

/// A failure that leaves the action queued for another attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The store failed. (Not a `#[source]`: the message already holds
    /// it, and an error chain would print it twice.)
    #[error("store: {0}")]
    Store(StoreError),
    /// A transaction record is unreadable or inconsistent.
    #[error("{0}")]
    CorruptRecord(String),
    /// Wallet writes kept conflicting; the attempt gave up for now.
    #[error("wallet contention: credits not settled after {0} rounds")]
    Contention(u32),
}

impl From<StoreError> for ProtocolError {
    fn from(e: StoreError) -> Self {
        ProtocolError::Store(e)
    }
}

impl ProtocolError {
    /// True when trying the action again soon may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProtocolError::Store(e) => e.is_retryable(),
            ProtocolError::CorruptRecord(_) => false,
            ProtocolError::Contention(_) => true,
        }
    }

    /// The fault of the whole store behind this error, if it is one.
    pub fn fault(&self) -> Option<&StoreFault> {
        match self {
            ProtocolError::Store(e) => e.fault(),
            _ => None,
        }
    }
}

/// Result of the protocol's steps.
pub type Result<T> = std::result::Result<T, ProtocolError>;

//! SQLite's errors as the store's: busy is transient, a full disk, a
//! read-only, failing or damaged file is a fault of the whole store.

use crate::store::fault::{sqlite_fault, FaultKind};
use crate::store::{StoreError, StoreFault};

/// The store's error for a SQLite error.
pub(super) fn sql_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
        {
            StoreError::Transient(e.to_string())
        }
        rusqlite::Error::SqliteFailure(f, _) => match sqlite_fault(f.code) {
            Some(kind) => fault(kind, &e),
            None => StoreError::Permanent(e.to_string()),
        },
        // Every text ledgerd stores (keys, xattrs) is valid UTF-8: text
        // that is not was damaged on disk, where SQLite's own checks did
        // not look (a page overwritten inside a row).
        rusqlite::Error::FromSqlConversionFailure(_, rusqlite::types::Type::Text, _)
        | rusqlite::Error::Utf8Error(_) => fault(FaultKind::Corrupt, &e),
        _ => StoreError::Permanent(e.to_string()),
    }
}

fn fault(kind: FaultKind, e: &rusqlite::Error) -> StoreError {
    let fault = StoreFault::new(kind, e.to_string());
    LAST_FAULT.with(|last| *last.borrow_mut() = Some(fault.clone()));
    StoreError::Fault(fault)
}

thread_local! {
    /// The last fault of the whole store that `sql_error` met on this
    /// thread. The writer reads it when SQLite rolls a batch back by
    /// itself (it does so on a full disk or an I/O error), so that every
    /// caller of the batch hears the cause, not just "rolled back".
    static LAST_FAULT: std::cell::RefCell<Option<StoreFault>> = const { std::cell::RefCell::new(None) };
}

/// Takes the last fault `sql_error` met on this thread.
pub(super) fn take_last_fault() -> Option<StoreFault> {
    LAST_FAULT.with(|last| last.borrow_mut().take())
}

/// A failure that left a batch not applied: a fault of the whole store as
/// it is, anything else as `Transient` (or `Permanent`, if the store broke
/// its own model).
pub(super) fn not_applied(e: StoreError, broken: bool) -> StoreError {
    // The cause's own message, without its kind: one kind per message, not
    // "transient error: not applied: permanent error: …".
    let cause = match &e {
        StoreError::Permanent(m) | StoreError::Transient(m) | StoreError::Ambiguous(m) => m.clone(),
        other => other.to_string(),
    };
    match e {
        StoreError::Fault(f) => StoreError::Fault(f),
        _ if broken => StoreError::Permanent(format!("not applied: {cause}")),
        _ => StoreError::Transient(format!("not applied (its batch was rolled back): {cause}")),
    }
}

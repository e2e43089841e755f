//! `ledgerd check`: what a store's own health checks found, one finding per
//! thing looked at, each sound or not, in plain words.

use serde::Serialize;

use super::StoreResult;

/// One thing `ledgerd check` looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was looked at, e.g. `integrity` or `bucket ledger`.
    pub check: String,
    /// Whether it is sound.
    pub ok: bool,
    /// What was found, and on a problem what to do.
    pub detail: String,
}

impl Finding {
    /// A sound finding.
    pub fn ok(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    /// A problem.
    pub fn problem(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            ok: false,
            detail: detail.into(),
        }
    }

    /// A finding from a result: `sound` on success, the error otherwise.
    pub fn from_result(check: &str, result: StoreResult<()>, sound: &str) -> Self {
        match result {
            Ok(()) => Self::ok(check, sound),
            Err(e) => Self::problem(check, e.to_string()),
        }
    }
}

/// How thoroughly `ledgerd check` looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// What can be checked quickly (SQLite's `quick_check`).
    Quick,
    /// Everything (SQLite's `integrity_check`, which also matches every
    /// index to its table).
    Full,
}

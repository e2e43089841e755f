//! Faults of the store as a whole: not one document's answer, but the disk
//! or the file under every document (full, read-only, failing, damaged).
//! Every operation fails alike until the cause is fixed, so the worker
//! stops claiming, backs off and probes, instead of failing each action in
//! a loop; `/readyz` and the log name the cause and what to do.

use std::fmt;

/// What is wrong with the store as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The disk holding the store is full (SQLite `SQLITE_FULL`).
    Full,
    /// The store cannot be written: a read-only file, directory or file
    /// system, or permissions (SQLite `SQLITE_READONLY`, `SQLITE_PERM`,
    /// `SQLITE_CANTOPEN` on a file that exists).
    ReadOnly,
    /// The disk failed a read or a write (SQLite `SQLITE_IOERR`).
    Io,
    /// The store's file is damaged or is not a store (SQLite
    /// `SQLITE_CORRUPT`, `SQLITE_NOTADB`). It never heals by itself.
    Corrupt,
}

impl FaultKind {
    /// Every kind (the fault gauge's series exist at 0 from the start).
    pub const ALL: [FaultKind; 4] = [FaultKind::Full, FaultKind::ReadOnly, FaultKind::Io, FaultKind::Corrupt];

    /// The label of the fault in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Full => "disk_full",
            FaultKind::ReadOnly => "read_only",
            FaultKind::Io => "io_error",
            FaultKind::Corrupt => "corrupt",
        }
    }

    /// Whether the store may work again without a restart: space freed,
    /// permissions or a remount fixed, a disk that recovers. A damaged
    /// file does not mend itself: the worker stops claiming for good.
    pub fn may_heal(self) -> bool {
        !matches!(self, FaultKind::Corrupt)
    }

    /// What an operator should do about it.
    pub fn what_to_do(self) -> &'static str {
        match self {
            FaultKind::Full => "free space on that disk (or grow it)",
            FaultKind::ReadOnly => {
                "make the file, its directory and its -wal and -shm files writable by the worker \
                 (or remount the file system read-write)"
            }
            FaultKind::Io => "check the disk and the kernel log (dmesg)",
            FaultKind::Corrupt => {
                "stop every worker on this store, run `ledgerd check --full`, and restore the \
                 store from a backup (docs/deployment.md)"
            }
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Full => "the disk holding the store is full",
            FaultKind::ReadOnly => "the store cannot be written",
            FaultKind::Io => "the disk holding the store failed a read or a write",
            FaultKind::Corrupt => "the store is damaged",
        })
    }
}

/// A fault of the store as a whole, with where and what the store said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFault {
    /// What is wrong.
    pub kind: FaultKind,
    /// Where: the store's file (or server), when known.
    pub place: Option<String>,
    /// What the store itself said.
    pub detail: String,
}

impl StoreFault {
    /// A fault of `kind` with the store's own words.
    pub fn new(kind: FaultKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            place: None,
            detail: detail.into(),
        }
    }

    /// The same fault, placed at `place` (kept if already placed).
    pub fn at(mut self, place: &str) -> Self {
        self.place.get_or_insert_with(|| place.to_string());
        self
    }
}

impl StoreFault {
    /// What is wrong and where, without what to do (for `ledgerd check`,
    /// which says it in its own words: it must not tell its reader to run
    /// itself).
    pub fn what(&self) -> String {
        match &self.place {
            Some(place) => format!("{} ({place}): {}", self.kind, self.detail),
            None => format!("{}: {}", self.kind, self.detail),
        }
    }
}

impl fmt::Display for StoreFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.what(), self.kind.what_to_do())
    }
}

/// The fault a SQLite result code means, if it is one.
pub fn sqlite_fault(code: rusqlite::ErrorCode) -> Option<FaultKind> {
    use rusqlite::ErrorCode as C;
    match code {
        C::DiskFull => Some(FaultKind::Full),
        C::ReadOnly | C::PermissionDenied => Some(FaultKind::ReadOnly),
        C::SystemIoFailure => Some(FaultKind::Io),
        C::DatabaseCorrupt | C::NotADatabase => Some(FaultKind::Corrupt),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_names_its_cause_its_place_and_what_to_do() {
        let f = StoreFault::new(FaultKind::Full, "database or disk is full").at("/var/lib/ledgerd/ledgerd.db");
        let text = f.to_string();
        assert!(text.starts_with("the disk holding the store is full (/var/lib/ledgerd/ledgerd.db)"));
        assert!(text.contains("database or disk is full"));
        assert!(text.contains("free space"));
        assert!(StoreFault::new(FaultKind::Corrupt, "malformed")
            .to_string()
            .contains("ledgerd check"));
    }

    #[test]
    fn only_damage_never_heals() {
        assert!(FaultKind::Full.may_heal() && FaultKind::ReadOnly.may_heal() && FaultKind::Io.may_heal());
        assert!(!FaultKind::Corrupt.may_heal());
    }

    #[test]
    fn sqlite_codes_map_to_faults() {
        use rusqlite::ErrorCode as C;
        assert_eq!(sqlite_fault(C::DiskFull), Some(FaultKind::Full));
        assert_eq!(sqlite_fault(C::ReadOnly), Some(FaultKind::ReadOnly));
        assert_eq!(sqlite_fault(C::SystemIoFailure), Some(FaultKind::Io));
        assert_eq!(sqlite_fault(C::DatabaseCorrupt), Some(FaultKind::Corrupt));
        assert_eq!(sqlite_fault(C::NotADatabase), Some(FaultKind::Corrupt));
        assert_eq!(sqlite_fault(C::DatabaseBusy), None);
        assert_eq!(sqlite_fault(C::ConstraintViolation), None);
    }
}

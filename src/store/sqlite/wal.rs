//! The WAL's bound. SQLite's automatic checkpoints are passive: a reader
//! holding an old snapshot stops them short, and the WAL file only restarts
//! from its beginning after a checkpoint that reached its end. Under
//! continuous load with readers (this process's, other workers', an
//! operator's `status`) it can therefore grow without limit, and a file
//! once grown keeps its size: space freed on a full disk is eaten again.
//! So the writer sets `journal_size_limit` (a WAL that restarts is cut back
//! to it) and, after a commit that leaves the WAL above [`WAL_BYTES_MAX`],
//! runs a TRUNCATE checkpoint, which waits for readers (through the busy
//! handler) instead of giving up, copies every frame into the database and
//! empties the WAL file.
//! (SQLite documents both: <https://www.sqlite.org/pragma.html#pragma_journal_size_limit>,
//! <https://www.sqlite.org/pragma.html#pragma_wal_checkpoint> and
//! <https://www.sqlite.org/wal.html#avoiding_excessively_large_wal_files>.)

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::errors::sql_error;
use crate::store::StoreResult;

/// Pages in the WAL after which a commit runs SQLite's passive automatic
/// checkpoint: 10,000 pages of 4 KiB, 40 MiB (SQLite's default of 1,000
/// checkpoints ten times as often, a cost on every batch).
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// Most bytes the WAL file may hold after a commit: above it, the writer
/// forces a TRUNCATE checkpoint. 64 MiB: the automatic checkpoint's 40 MiB
/// with room for the batches committed while a reader holds it off.
pub const WAL_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The least a full disk can lower the bound to (see
/// [`WalBound::after_full`]): below it, a checkpoint would follow nearly
/// every batch.
pub const WAL_BYTES_MIN: u64 = 256 * 1024;

/// After a forced checkpoint that readers held off, how much more the WAL
/// must grow before the writer tries again (never one try per batch).
const WAL_RETRY_GROWTH: u64 = 4 * 1024 * 1024;

/// Sets the writer connection's WAL settings.
pub(super) fn configure(conn: &Connection) -> StoreResult<()> {
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .map_err(sql_error)?;
    let limit = i64::try_from(WAL_BYTES_MAX).unwrap_or(i64::MAX);
    conn.pragma_update_and_check(None, "journal_size_limit", limit, |_| Ok(()))
        .map_err(sql_error)
}

/// The WAL file of the database at `db`: SQLite names it `<db>-wal`.
pub(super) fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// The size of the WAL file of the database at `db` (0 when there is none).
pub(super) fn wal_bytes(db: &Path) -> u64 {
    std::fs::metadata(wal_path(db)).map(|m| m.len()).unwrap_or(0)
}

/// Keeps one writer's WAL within a bound.
pub(super) struct WalBound {
    wal: PathBuf,
    max: u64,
    /// The WAL's size when a forced checkpoint last fell short.
    fell_short_at: Option<u64>,
}

/// What [`WalBound::after_commit`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Checkpoint {
    /// The WAL was within its bound.
    NotNeeded,
    /// A TRUNCATE checkpoint emptied the WAL.
    Truncated,
    /// Readers held the checkpoint off; tried again after more growth.
    HeldOff,
}

impl WalBound {
    /// The bound of the WAL of the database at `db`.
    pub(super) fn new(db: &Path, max: u64) -> Self {
        Self {
            wal: wal_path(db),
            max,
            fell_short_at: None,
        }
    }

    /// Called after a batch failed because the disk is full. A WAL that
    /// filled its disk would fill it again once space is freed (it only
    /// shrinks when truncated), so this process's bound drops to half the
    /// size at which the disk filled (never below [`WAL_BYTES_MIN`]); and a
    /// checkpoint is tried at once, in case the space it needs is there.
    pub(super) fn after_full(&mut self, conn: &Connection) {
        let size = self.size();
        let lowered = (size / 2).max(WAL_BYTES_MIN);
        if lowered < self.max {
            tracing::warn!(
                wal_bytes = size,
                wal_bytes_max = lowered,
                "the disk holding the store filled up: this worker now keeps the SQLite WAL under half the size it reached"
            );
            self.max = lowered;
        }
        self.fell_short_at = None;
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }

    /// The WAL file's size now.
    fn size(&self) -> u64 {
        std::fs::metadata(&self.wal).map(|m| m.len()).unwrap_or(0)
    }

    /// The bound now in force.
    #[cfg(test)]
    pub(super) fn max(&self) -> u64 {
        self.max
    }

    /// Called after each commit: checkpoints and truncates the WAL if it
    /// is above the bound (a stat of the file otherwise).
    pub(super) fn after_commit(&mut self, conn: &Connection) -> StoreResult<Checkpoint> {
        let size = self.size();
        if size <= self.max {
            self.fell_short_at = None;
            return Ok(Checkpoint::NotNeeded);
        }
        if self
            .fell_short_at
            .is_some_and(|at| size < at.saturating_add(WAL_RETRY_GROWTH))
        {
            return Ok(Checkpoint::HeldOff);
        }
        // (busy, frames in the WAL, frames checkpointed): busy is 1 when a
        // reader or another writer held the checkpoint off.
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(sql_error)?;
        if busy == 0 {
            self.fell_short_at = None;
            return Ok(Checkpoint::Truncated);
        }
        self.fell_short_at = Some(size);
        tracing::warn!(
            wal_bytes = size,
            wal_bytes_max = self.max,
            "the SQLite WAL is above its bound and readers held its checkpoint off; trying again as it grows"
        );
        Ok(Checkpoint::HeldOff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(db: &Path) -> Connection {
        let conn = Connection::open(db).expect("open");
        conn.pragma_update(None, "journal_mode", "WAL").expect("wal");
        conn
    }

    /// Writes about `bytes` through `conn`, one commit per 64 KiB.
    fn write(conn: &Connection, bytes: usize) {
        let blob = vec![7u8; 64 * 1024];
        for _ in 0..bytes / blob.len() {
            conn.execute("INSERT INTO t (b) VALUES (?1)", [&blob]).expect("insert");
        }
    }

    /// A writer (with the store's WAL settings) and a reader holding a
    /// snapshot, after 2 MiB written: no checkpoint can pass the reader, so
    /// the WAL holds all of it.
    fn grown_behind_a_reader(db: &Path) -> (Connection, Connection) {
        let writer = open(db);
        configure(&writer).expect("configure");
        writer.execute_batch("CREATE TABLE t (b BLOB)").expect("table");
        let reader = open(db);
        reader.execute_batch("BEGIN; SELECT COUNT(*) FROM t;").expect("read");
        write(&writer, 2 * 1024 * 1024);
        (writer, reader)
    }

    #[test]
    fn a_wal_held_open_by_a_reader_is_truncated_once_the_reader_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("w.db");
        let (writer, reader) = grown_behind_a_reader(&db);
        let max = 1024 * 1024;
        assert!(wal_bytes(&db) > max, "the WAL grew while a reader held it");
        let mut bound = WalBound::new(&db, max);
        writer
            .busy_timeout(std::time::Duration::from_millis(50))
            .expect("timeout");
        assert_eq!(bound.after_commit(&writer).expect("checkpoint"), Checkpoint::HeldOff);
        // Not tried again until the WAL has grown by WAL_RETRY_GROWTH.
        assert_eq!(bound.after_commit(&writer).expect("checkpoint"), Checkpoint::HeldOff);
        reader.execute_batch("COMMIT").expect("end read");
        write(&writer, WAL_RETRY_GROWTH as usize + 128 * 1024);
        assert_eq!(bound.after_commit(&writer).expect("checkpoint"), Checkpoint::Truncated);
        assert_eq!(wal_bytes(&db), 0, "a TRUNCATE checkpoint empties the WAL file");
        assert_eq!(bound.after_commit(&writer).expect("checkpoint"), Checkpoint::NotNeeded);
    }

    #[test]
    fn a_full_disk_lowers_the_bound_to_half_the_wal_it_filled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("w.db");
        let (writer, reader) = grown_behind_a_reader(&db);
        let filled = wal_bytes(&db);
        let mut bound = WalBound::new(&db, WAL_BYTES_MAX);
        bound.after_full(&writer);
        assert_eq!(bound.max(), filled / 2);
        reader.execute_batch("COMMIT").expect("end read");
        // The next commit above the lowered bound truncates the WAL.
        write(&writer, 64 * 1024);
        assert_eq!(bound.after_commit(&writer).expect("checkpoint"), Checkpoint::Truncated);
        assert_eq!(wal_bytes(&db), 0);
        // Never below the floor, and never raised by a smaller WAL.
        bound.after_full(&writer);
        assert_eq!(bound.max(), WAL_BYTES_MIN);
    }

    #[test]
    fn the_writer_limits_the_wal_it_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("w.db");
        let writer = open(&db);
        configure(&writer).expect("configure");
        let limit: i64 = writer
            .query_row("PRAGMA journal_size_limit", [], |r| r.get(0))
            .expect("read the limit");
        assert_eq!(limit, WAL_BYTES_MAX as i64);
        let pages: i64 = writer
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .expect("read the checkpoint size");
        assert_eq!(pages, WAL_AUTOCHECKPOINT_PAGES);
    }
}

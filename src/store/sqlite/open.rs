//! Opening the embedded store: its file's connections and their caches,
//! the schema and what an older store lacks, and the writer's and the
//! reader's threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use super::early::Unsettled;
use super::errors::sql_error;
use super::threads::{reader_loop, writer_loop, Job, ReadJob};
use super::{changes, fairness, records, shard, wal};
use crate::store::{StoreError, StoreResult};

/// How long a connection waits for another process's write lock.
const BUSY_TIMEOUT_MS: u64 = 10_000;
/// Page cache of the writer's connection, in KiB: the pages a batch
/// dirties and the B-tree's upper levels, kept across batches (a commit of
/// the connection's own does not invalidate them).
const WRITER_CACHE_KIB: i64 = 32 * 1024;
/// Page cache of the reader's connection, in KiB. SQLite drops a
/// connection's whole cache when its next read transaction finds the WAL
/// changed, which under load is after every batch of the writer, so a
/// larger cache holds nothing longer: it only made memory churn (the pages
/// of the 32 MiB cache this replaced were freed and allocated again batch
/// after batch). One read batch's pages (at most `READ_BATCH_MAX` lookups,
/// a leaf each below shared upper levels) fit.
const READER_CACHE_KIB: i64 = 4 * 1024;
/// Page cache of each pooled connection (listings and counts), in KiB:
/// SQLite's own default, named so that the bound is written down.
const POOL_CACHE_KIB: i64 = 2_000;
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS docs (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    body BLOB NOT NULL,
    xattrs TEXT NOT NULL,
    cas INTEGER NOT NULL,
    lock_until_ms INTEGER,
    created_ms INTEGER,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cas_seq (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT OR IGNORE INTO cas_seq (id, value) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS ready_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at_ms INTEGER NOT NULL);
";

/// Whether opening may create a new database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file and its tables if absent.
    Create,
    /// The file must already exist (commands that only read).
    Existing,
}

/// A store in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pub(super) path: PathBuf,
    pub(super) buckets: Arc<(String, String)>,
    // A std Mutex: held only to push or pop a connection, never across await.
    pub(super) pool: Arc<Mutex<Vec<Connection>>>,
    /// Where mutations go (see `writer_loop`); the thread ends with the last handle.
    pub(super) writer: Arc<Mutex<std::sync::mpsc::Sender<Job>>>,
    /// Where single-document reads go (see `reader_loop`).
    pub(super) reader: Arc<Mutex<std::sync::mpsc::Sender<ReadJob>>>,
    /// Claims answered before their batch committed (see `early.rs`).
    pub(super) unsettled: Arc<Unsettled>,
    /// Whether the shard index exists (see `shard.rs`); without it, a
    /// shard is listed by a scan.
    pub(super) shard_index: bool,
    /// Whether the index of records by wallet exists (see `records.rs`);
    /// without it, a wallet's records are found by reading every record.
    pub(super) wallet_index: bool,
    /// Whether the indexes of the ledger's records by CAS exist.
    pub(super) changes_index: bool,
}

pub(super) fn connect(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(sql_error)?;
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
        .map_err(sql_error)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(sql_error)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(sql_error)?;
    conn.pragma_update(None, "cache_size", -POOL_CACHE_KIB)
        .map_err(sql_error)?;
    Ok(conn)
}

/// Adds `docs.created_ms` to a store made before it existed (its documents
/// keep an unknown creation time). Idempotent, and safe when several
/// processes open the store at once.
fn add_created_column(conn: &Connection) -> StoreResult<()> {
    let has = |conn: &Connection| -> StoreResult<bool> {
        conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('docs') WHERE name = 'created_ms'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(sql_error)
    };
    if has(conn)? {
        return Ok(());
    }
    match conn.execute_batch("ALTER TABLE docs ADD COLUMN created_ms INTEGER") {
        Ok(()) => Ok(()),
        // Another process added it first.
        Err(_) if has(conn)? => Ok(()),
        Err(e) => Err(sql_error(e)),
    }
}

impl SqliteStore {
    /// Opens (or with [`OpenMode::Create`] creates) the database at `path`.
    pub fn open(path: &Path, queue_bucket: &str, ledger_bucket: &str, mode: OpenMode) -> StoreResult<Self> {
        if mode == OpenMode::Existing && !path.exists() {
            return Err(StoreError::Permanent(format!(
                "no store at {} (create it with `ledgerd init`, or point --store at an existing one)",
                path.display()
            )));
        }
        // Faults name the file by its absolute path: the one an operator
        // looks for on the host, whatever directory the worker runs in.
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let path = absolute.as_path();
        let conn = connect(path)?;
        // Opening an existing store writes nothing, unless a table a newer
        // ledgerd added is missing; creating runs the whole schema.
        let missing: i64 = conn
            .query_row(
                "SELECT 3 - COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('docs', 'cas_seq', 'ready_probe')",
                [],
                |r| r.get(0),
            )
            .map_err(sql_error)?;
        if mode == OpenMode::Create || missing > 0 {
            conn.execute_batch(SCHEMA).map_err(sql_error)?;
        }
        let shard_index = shard::ensure_index(&conn);
        let wallet_index = records::ensure(&conn, ledger_bucket);
        let changes_index = changes::ensure(&conn);
        add_created_column(&conn)?;
        let writer_conn = connect(path)?;
        writer_conn
            .pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(sql_error)?;
        wal::configure(&writer_conn)?;
        let wal_bound = wal::WalBound::new(path, wal::WAL_BYTES_MAX);
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let database = path.to_path_buf();
        let unsettled = Arc::new(Unsettled::new());
        let writer_unsettled = unsettled.clone();
        std::thread::Builder::new()
            .name("ledgerd-sqlite-writer".into())
            .spawn(move || {
                // The fair busy handler lives on the writer's own thread.
                let installed = fairness::install(&writer_conn, &database, Duration::from_millis(BUSY_TIMEOUT_MS));
                if let Err(e) = installed {
                    tracing::warn!(error = %e, "SQLite writer: fair busy handler not installed; using SQLite's own");
                }
                writer_loop(
                    writer_conn,
                    queue,
                    fairness::hand_path(&database),
                    writer_unsettled,
                    wal_bound,
                )
            })
            .map_err(|e| StoreError::Permanent(format!("starting the SQLite writer: {e}")))?;
        let reader_conn = connect(path)?;
        reader_conn
            .pragma_update(None, "cache_size", -READER_CACHE_KIB)
            .map_err(sql_error)?;
        let (reads, read_queue) = std::sync::mpsc::channel::<ReadJob>();
        std::thread::Builder::new()
            .name("ledgerd-sqlite-reader".into())
            .spawn(move || reader_loop(reader_conn, read_queue))
            .map_err(|e| StoreError::Permanent(format!("starting the SQLite reader: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            buckets: Arc::new((queue_bucket.to_string(), ledger_bucket.to_string())),
            pool: Arc::new(Mutex::new(vec![conn])),
            writer: Arc::new(Mutex::new(jobs)),
            reader: Arc::new(Mutex::new(reads)),
            unsettled,
            shard_index,
            wallet_index,
            changes_index,
        })
    }

    /// Whether the file at `path` holds a ledgerd store (its tables).
    pub fn is_ledgerd_store(path: &Path) -> StoreResult<bool> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql_error)?;
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('docs', 'cas_seq')",
                [],
                |r| r.get(0),
            )
            .map_err(sql_error)?;
        Ok(tables == 2)
    }
}

//! The embedded store: one SQLite file, safe for several processes at once.
//!
//! Every mutation applies the shared document model (`model.rs`) to its
//! document inside a `BEGIN IMMEDIATE` transaction, so SQLite's write lock
//! makes each operation atomic across processes; a writer thread per
//! process groups the mutations waiting at one moment into one such
//! transaction (group commit, see `threads.rs`), which reads each document
//! at most once and writes each changed one back once, before COMMIT. WAL mode
//! lets readers proceed while one writer commits; `synchronous = FULL`
//! makes every committed write durable before it is acknowledged. Lock
//! expiry is judged by the machine's clock, the same for every process on
//! the machine.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection};
use serde_json::Value;

use super::group::{self, GroupCas, GroupResults, GroupWrite, WriteGroup};
use super::model::{self, Mutation, Slot};
use super::{Bucket, Cas, Census, Doc, DocTimes, DocWithXattrs, Store, StoreError, StoreResult, WriteMode};
use crate::domain::keys::ACTION_PREFIX;
use early::Unsettled;
use errors::sql_error;
use shard::{list_range_sql, list_shard_sql};
use threads::{apply_insert, apply_mutation, clock_ms, load, reader_loop, writer_loop, Job, ReadJob, Tx};

mod changes;
mod check;
mod early;
mod errors;
mod fairness;
mod records;
mod shard;
mod threads;
pub mod wal;

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
/// Idle connections kept for reuse: as many as the binary's blocking
/// threads (`BLOCKING_THREADS_MAX` in `commands/dispatch.rs`) use at once.
const POOL_IDLE_MAX: usize = 2;
const SCHEMA: &str = "
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

/// The write `/readyz` commits to prove that writes can commit (a full disk
/// fails it): one row, overwritten.
const PROBE_SQL: &str = "INSERT INTO ready_probe (id, at_ms) VALUES (1, ?1)
     ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms";

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
    path: PathBuf,
    buckets: Arc<(String, String)>,
    // A std Mutex: held only to push or pop a connection, never across await.
    pool: Arc<Mutex<Vec<Connection>>>,
    /// Where mutations go (see `writer_loop`); the thread ends with the last handle.
    writer: Arc<Mutex<std::sync::mpsc::Sender<Job>>>,
    /// Where single-document reads go (see `reader_loop`).
    reader: Arc<Mutex<std::sync::mpsc::Sender<ReadJob>>>,
    /// Claims answered before their batch committed (see `early.rs`).
    unsettled: Arc<Unsettled>,
    /// Whether the shard index exists (see `shard.rs`); without it, a
    /// shard is listed by a scan.
    shard_index: bool,
    /// Whether the index of records by wallet exists (see `records.rs`);
    /// without it, a wallet's records are found by reading every record.
    wallet_index: bool,
    /// Whether the indexes of the ledger's records by CAS exist.
    changes_index: bool,
}

fn connect(path: &Path) -> StoreResult<Connection> {
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

/// The key range `[prefix, upper)` of an ASCII prefix.
fn prefix_range(prefix: &str) -> StoreResult<(String, String)> {
    if !prefix.is_ascii() {
        return Err(StoreError::Permanent(format!("key prefix {prefix:?} is not ASCII")));
    }
    let mut upper = prefix.as_bytes().to_vec();
    match upper.last_mut() {
        Some(b) if *b < 0x7f => *b += 1,
        // An empty prefix (or one ending in DEL) has no ASCII successor: use
        // a bound above every valid UTF-8 key.
        _ => return Ok((prefix.to_string(), format!("{prefix}\u{10FFFF}"))),
    }
    let upper = String::from_utf8(upper).map_err(|e| StoreError::Permanent(e.to_string()))?;
    Ok((prefix.to_string(), upper))
}

/// Keys under a prefix from a seek point (see [`seek_from`]).
const LIST_KEYS_SQL: &str =
    "SELECT key FROM docs WHERE bucket = ?1 AND key >= ?2 AND key < ?3 AND key <> ?4 ORDER BY key LIMIT ?5";
/// Documents under a prefix from a seek point (see [`seek_from`]).
const READ_DOCS_SQL: &str =
    "SELECT key, body FROM docs WHERE bucket = ?1 AND key >= ?2 AND key < ?3 AND key <> ?4 ORDER BY key LIMIT ?5";

/// Where a listing of the keys from `lower` after `after` starts: keys
/// `>= from` and `<> skip`. One lower bound, not two: SQLite seeks the
/// primary key from only one of two lower bounds on a column and filters
/// with the other, so `key >= prefix AND key > after` walks every key of
/// the prefix before the cursor, on every page: a listing of n keys would
/// cost n^2 / page rows (at 2M ledger records, about 1,800 passes over the
/// file). `skip` is the cursor itself (or the empty string, never a key).
fn seek_from(lower: &str, after: Option<&str>) -> (String, String) {
    match after {
        Some(after) if after >= lower => (after.to_string(), after.to_string()),
        _ => (lower.to_string(), String::new()),
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

    fn bucket_name(&self, bucket: Bucket) -> String {
        match bucket {
            Bucket::Queue => self.buckets.0.clone(),
            Bucket::Ledger => self.buckets.1.clone(),
        }
    }

    /// Runs blocking SQLite work on a pooled connection off the async threads.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let pool = self.pool.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let taken = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut conn = match taken {
                Some(c) => c,
                None => connect(&path)?,
            };
            let out = work(&mut conn);
            let mut idle = pool.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < POOL_IDLE_MAX {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Permanent(format!("store task failed: {e}")))?
        .map_err(|e| placed(e, &self.path))
    }

    async fn mutate<T: Send + 'static>(
        &self,
        bucket: Bucket,
        key: &str,
        op: impl FnOnce(&mut Slot, u64, Cas) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (bucket, key) = (self.bucket_name(bucket), key.to_string());
        self.in_writer(move |tx| apply_mutation(tx, &bucket, &key, op)).await
    }

    /// One write, alone in the writer's next transaction: the same code as
    /// a write of a group.
    async fn write_one(&self, write: GroupWrite) -> StoreResult<Cas> {
        let bucket = self.bucket_name(write.bucket());
        self.in_writer(move |tx| group_write(tx, &bucket, &write, &GroupResults::new()))
            .await
    }

    /// Commits the readiness probe through the writer, as a mutation would.
    async fn commit_probe(&self) -> StoreResult<()> {
        self.in_writer(|tx| {
            tx.conn
                .prepare_cached(PROBE_SQL)
                .and_then(|mut stmt| stmt.execute([i64::try_from(tx.now_ms).unwrap_or(i64::MAX)]))
                .map(|_| ())
                .map_err(sql_error)
        })
        .await
    }

    /// Runs `work` in the writer's next transaction; answers once the
    /// transaction's fate is known (after COMMIT).
    async fn in_writer<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Tx<'_>) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (job, answered) = writer_job(work, Answered::Committed);
        hand_over(&self.writer, job, answered, "writer")
            .await
            .map_err(|e| placed(e, &self.path))
    }

    async fn read<T: Send + 'static>(
        &self,
        bucket: Bucket,
        key: &str,
        op: impl FnOnce(&Slot, u64) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (bucket, key) = (self.bucket_name(bucket), key.to_string());
        // Read-your-writes: a claim on this document answered early is seen.
        self.unsettled.key_settled(&bucket, &key).await;
        let (answer, answered) = tokio::sync::oneshot::channel::<StoreResult<T>>();
        let job: ReadJob = Box::new(move |conn: &Connection| {
            let result = load(conn, &bucket, &key).and_then(|slot| op(&slot, clock_ms()));
            let _ = answer.send(result);
        });
        hand_over(&self.reader, job, answered, "reader")
            .await
            .map_err(|e| placed(e, &self.path))
    }
}

/// A fault of the whole store, placed at the store's file.
fn placed(e: StoreError, path: &Path) -> StoreError {
    match e {
        StoreError::Fault(f) => StoreError::Fault(f.at(&path.display().to_string())),
        e => e,
    }
}

/// Sends `job` to the store's `thread` (writer or reader) and waits for its
/// answer; a thread that has stopped fails the call for good.
async fn hand_over<J, T>(
    thread: &Mutex<std::sync::mpsc::Sender<J>>,
    job: J,
    answered: tokio::sync::oneshot::Receiver<StoreResult<T>>,
    name: &str,
) -> StoreResult<T> {
    let stopped = || StoreError::Permanent(format!("the SQLite {name} has stopped"));
    thread
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| stopped())?;
    answered.await.map_err(|_| stopped())?
}

/// When the writer answers a job's caller.
#[derive(Clone, Copy)]
enum Answered {
    /// Once the transaction's fate is known (after COMMIT): every write.
    Committed,
    /// As soon as the job is applied: a claim (`early.rs`).
    Applied,
}

/// `work` as a job for the writer, and where its answer arrives.
fn writer_job<T: Send + 'static>(
    work: impl FnOnce(&Tx<'_>) -> StoreResult<T> + Send + 'static,
    when: Answered,
) -> (Job, tokio::sync::oneshot::Receiver<StoreResult<T>>) {
    let (answer, answered) = tokio::sync::oneshot::channel::<StoreResult<T>>();
    let job: Job = Box::new(move |tx: Option<&Tx<'_>>| {
        let result = match tx {
            Some(tx) => work(tx),
            None => Err(StoreError::Transient("not applied".into())),
        };
        match when {
            Answered::Committed => Box::new(move |committed: Result<(), StoreError>| {
                let _ = answer.send(committed.and(result));
            }),
            Answered::Applied => {
                let _ = answer.send(result);
                Box::new(|_: Result<(), StoreError>| {})
            }
        }
    });
    (job, answered)
}

/// A claim for the writer, answered as soon as it is applied (`early.rs`).
fn claim_job(bucket: String, key: String, lock: Duration) -> (Job, tokio::sync::oneshot::Receiver<StoreResult<Doc>>) {
    writer_job(
        move |tx| {
            apply_mutation(tx, &bucket, &key, |slot, now, cas| {
                model::get_and_lock(slot, &key, lock, now, cas)
            })
            .inspect(|_| tx.answering_early(&bucket, &key))
        },
        Answered::Applied,
    )
}

/// One write inside the writer's transaction, alone or as part of a group
/// (`results`: the group's writes before it).
fn group_write(tx: &Tx<'_>, bucket: &str, write: &GroupWrite, results: &GroupResults) -> StoreResult<Cas> {
    match write {
        GroupWrite::Insert { key, body, .. } => apply_insert(tx, bucket, key, |slot, now, cas| {
            model::insert(slot, key, body, now, cas)
        }),
        GroupWrite::Replace { key, body, cas, .. } => {
            let cas = group::resolve(*cas, results)?;
            apply_mutation(tx, bucket, key, |slot, now, new| {
                model::replace(slot, key, body, cas, now, new)
            })
        }
        GroupWrite::Remove { key, cas, .. } => {
            apply_mutation(tx, bucket, key, |slot, now, _| model::remove(slot, key, *cas, now)).map(|()| 0)
        }
        GroupWrite::WriteWithXattrs {
            key,
            body,
            xattrs,
            mode,
            ..
        } => {
            let refs = group::xattr_refs(xattrs);
            // A creation that only sets paths succeeds on an empty slot: one
            // statement. Removing a path from a document being created fails,
            // and must fail with `Exists` if the document is there: read it.
            let create_only = *mode == WriteMode::Insert && xattrs.iter().all(|(_, v)| v.is_some());
            let op = |slot: &mut Slot, now, cas| {
                let m = Mutation {
                    body,
                    xattrs: &refs,
                    mode: *mode,
                };
                model::write_with_xattrs(slot, key, m, now, cas)
            };
            match create_only {
                true => apply_insert(tx, bucket, key, op),
                false => apply_mutation(tx, bucket, key, op),
            }
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    async fn init(&self) -> StoreResult<()> {
        self.run(|conn| conn.execute_batch(SCHEMA).map_err(sql_error)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        // A fresh connection, not a pooled one: an open handle keeps working
        // on a file that has been deleted underneath it.
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            if !path.exists() {
                return Err(StoreError::Permanent(format!("{} is gone", path.display())));
            }
            let conn = connect(&path)?;
            conn.query_row("SELECT value FROM cas_seq WHERE id = 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
                .map_err(sql_error)
        })
        .await
        .map_err(|e| StoreError::Permanent(format!("store task failed: {e}")))?
        .map_err(|e| placed(e, &self.path))?;
        // Discovery's own statement, then a write committed by the writer
        // like any other (a full disk fails it).
        self.list_keys(Bucket::Queue, ACTION_PREFIX, None, 1)
            .await
            .map_err(|e| match e {
                StoreError::Fault(f) => StoreError::Fault(f),
                StoreError::Transient(m) => StoreError::Transient(format!("discovery of queued actions fails: {m}")),
                other => StoreError::Permanent(format!("discovery of queued actions fails: {other}")),
            })?;
        self.commit_probe().await.map_err(|e| match e {
            StoreError::Fault(f) => StoreError::Fault(f),
            other => StoreError::Permanent(format!("a write cannot commit: {other}")),
        })
    }

    async fn check(&self, depth: crate::store::check::Depth) -> Vec<crate::store::check::Finding> {
        let path = self.path.clone();
        let mut found = tokio::task::spawn_blocking(move || check::inspect(&path, depth))
            .await
            .unwrap_or_else(|e| {
                vec![crate::store::check::Finding::problem(
                    "file",
                    format!("the check task failed: {e}"),
                )]
            });
        // A damaged file is not written to, not even a probe.
        if found.iter().all(|f| f.ok) {
            found.push(check::writes(
                self.commit_probe().await.map_err(|e| placed(e, &self.path)),
            ));
        }
        found
    }

    async fn get(&self, bucket: Bucket, key: &str) -> StoreResult<Doc> {
        let owned = key.to_string();
        self.read(bucket, key, move |slot, now| model::get(slot, &owned, now))
            .await
    }

    async fn get_with_xattrs(&self, bucket: Bucket, key: &str, paths: &[&str]) -> StoreResult<DocWithXattrs> {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let owned = key.to_string();
        self.read(bucket, key, move |slot, now| {
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            model::get_with_xattrs(slot, &owned, &refs, now)
        })
        .await
    }

    /// Answered once applied, before its batch commits: see `early.rs`.
    async fn get_and_lock(&self, bucket: Bucket, key: &str, lock: Duration) -> StoreResult<Doc> {
        let (job, answered) = claim_job(self.bucket_name(bucket), key.to_string(), lock);
        hand_over(&self.writer, job, answered, "writer")
            .await
            .map_err(|e| placed(e, &self.path))
    }

    async fn unlock(&self, bucket: Bucket, key: &str, cas: Cas) -> StoreResult<()> {
        let owned = key.to_string();
        self.mutate(bucket, key, move |slot, now, _| model::unlock(slot, &owned, cas, now))
            .await
    }

    async fn insert(&self, bucket: Bucket, key: &str, body: &[u8]) -> StoreResult<Cas> {
        self.write_one(GroupWrite::Insert {
            bucket,
            key: key.to_string(),
            body: body.to_vec(),
        })
        .await
    }

    async fn replace(&self, bucket: Bucket, key: &str, body: &[u8], cas: Cas) -> StoreResult<Cas> {
        self.write_one(GroupWrite::Replace {
            bucket,
            key: key.to_string(),
            body: body.to_vec(),
            cas: GroupCas::Known(cas),
        })
        .await
    }

    async fn remove(&self, bucket: Bucket, key: &str, cas: Option<Cas>) -> StoreResult<()> {
        self.write_one(GroupWrite::Remove {
            bucket,
            key: key.to_string(),
            cas,
        })
        .await
        .map(|_| ())
    }

    async fn write_with_xattrs(
        &self,
        bucket: Bucket,
        key: &str,
        body: &[u8],
        xattrs: &[(&str, Option<Value>)],
        mode: WriteMode,
    ) -> StoreResult<Cas> {
        self.write_one(GroupWrite::WriteWithXattrs {
            bucket,
            key: key.to_string(),
            body: body.to_vec(),
            xattrs: xattrs.iter().map(|(p, v)| (p.to_string(), v.clone())).collect(),
            mode,
        })
        .await
    }

    async fn write_group(&self, group: &WriteGroup) -> GroupResults {
        let named: Vec<Vec<(String, GroupWrite)>> = group
            .iter()
            .map(|stage| {
                stage
                    .iter()
                    .map(|w| (self.bucket_name(w.bucket()), w.clone()))
                    .collect()
            })
            .collect();
        let shape: Vec<usize> = group.iter().map(Vec::len).collect();
        // One job: the whole group goes into one transaction, in order,
        // stopping after a stage in which a write failed.
        let ran = self
            .in_writer(move |tx| {
                let mut results: GroupResults = Vec::with_capacity(named.len());
                let mut failed = false;
                for stage in &named {
                    if failed {
                        results.push(stage.iter().map(|_| None).collect());
                        continue;
                    }
                    let mut done = Vec::with_capacity(stage.len());
                    for (bucket, write) in stage {
                        let result = group_write(tx, bucket, write, &results);
                        failed |= result.is_err();
                        done.push(Some(result));
                    }
                    results.push(done);
                }
                Ok(results)
            })
            .await;
        match ran {
            Ok(results) => results,
            // The transaction's fate: every write that was applied shares it.
            Err(e) => shape
                .iter()
                .map(|n| (0..*n).map(|_| Some(Err(e.clone()))).collect())
                .collect(),
        }
    }

    async fn remove_xattr(&self, bucket: Bucket, key: &str, path: &str) -> StoreResult<bool> {
        let (path, owned) = (path.to_string(), key.to_string());
        self.mutate(bucket, key, move |slot, now, cas| {
            model::remove_xattr(slot, &owned, &path, now, cas)
        })
        .await
    }

    async fn set_xattr(
        &self,
        bucket: Bucket,
        key: &str,
        path: &str,
        value: &Value,
        cas: Option<Cas>,
    ) -> StoreResult<Cas> {
        let (path, value, owned) = (path.to_string(), value.clone(), key.to_string());
        self.mutate(bucket, key, move |slot, now, new| {
            model::set_xattr(slot, &owned, &path, &value, cas, now, new)
        })
        .await
    }

    async fn doc_times(&self, bucket: Bucket, key: &str) -> StoreResult<DocTimes> {
        let owned = key.to_string();
        self.read(bucket, key, move |slot, now| model::times(slot, &owned, now))
            .await
    }

    async fn census(&self, bucket: Bucket, prefix: &str, path: &str, _probe_max: Option<u64>) -> StoreResult<Census> {
        let (lower, upper) = prefix_range(prefix)?;
        let bucket = self.bucket_name(bucket);
        let json_path = format!("$.{path}");
        // The one scan that sees locks: every claim answered early is seen.
        self.unsettled.all_settled().await;
        self.run(move |conn| {
            let now = i64::try_from(threads::clock_ms()).unwrap_or(i64::MAX);
            let (total, locked, marked, oldest): (i64, Option<i64>, Option<i64>, Option<i64>) = conn
                .query_row(
                    "SELECT COUNT(*),
                            SUM(lock_until_ms IS NOT NULL AND lock_until_ms > ?4 AND json_extract(xattrs, ?5) IS NULL),
                            SUM(json_extract(xattrs, ?5) IS NOT NULL),
                            MIN(created_ms)
                     FROM docs WHERE bucket = ?1 AND key >= ?2 AND key < ?3",
                    params![bucket, lower, upper, now, json_path],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(sql_error)?;
            let count = |n: Option<i64>| u64::try_from(n.unwrap_or(0)).unwrap_or(0);
            Ok(Census {
                total: u64::try_from(total).unwrap_or(0),
                locked: Some(count(locked)),
                marked: Some(count(marked)),
                oldest_created_ms: oldest.and_then(|o| u64::try_from(o).ok()),
            })
        })
        .await
    }

    async fn list_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let (lower, upper) = prefix_range(prefix)?;
        let (from, skip) = seek_from(&lower, after);
        let bucket = self.bucket_name(bucket);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(LIST_KEYS_SQL).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![bucket, from, upper, skip, limit], |r| r.get::<_, String>(0))
                .map_err(sql_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
        })
        .await
    }

    async fn read_docs(
        &self,
        bucket: Bucket,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<super::DocPage> {
        let (lower, upper) = prefix_range(prefix)?;
        let (from, skip) = seek_from(&lower, after);
        let bucket = self.bucket_name(bucket);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(READ_DOCS_SQL).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![bucket, from, upper, skip, limit], |r| {
                    Ok((r.get::<_, String>(0)?, threads::body_bytes(r.get_ref(1)?)?))
                })
                .map_err(sql_error)?;
            let docs = rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)?;
            let full = i64::try_from(docs.len()).is_ok_and(|n| n >= limit.max(1));
            let next = full.then(|| docs.last().map(|(k, _)| k.clone())).flatten();
            Ok((docs, next))
        })
        .await
    }

    async fn changed_since(
        &self,
        bucket: Bucket,
        prefix: &str,
        since: Cas,
        after: Option<(Cas, String)>,
        limit: usize,
    ) -> StoreResult<Vec<(Cas, String)>> {
        let Some(sql) = changes::list_sql(prefix).filter(|_| self.changes_index) else {
            return super::changed_since_by_scan(self, bucket, prefix, since, after, limit).await;
        };
        let (lower, upper) = prefix_range(prefix)?;
        let bucket = self.bucket_name(bucket);
        let as_sql = |cas: Cas| i64::try_from(cas).unwrap_or(i64::MAX);
        let (since, (after_cas, after_key)) =
            (as_sql(since), after.map_or((0, String::new()), |(c, k)| (as_sql(c), k)));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![bucket, lower, upper, since, after_cas, after_key, limit], |r| {
                    Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), r.get::<_, String>(1)?))
                })
                .map_err(sql_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
        })
        .await
    }

    async fn wallet_records(&self, hash: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        if !self.wallet_index {
            return super::wallet_records_by_scan(self, hash, after, limit).await;
        }
        let (hash, after) = (hash.to_string(), after.unwrap_or("").to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(records::LIST_SQL).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![hash, after, limit], |r| r.get::<_, String>(0))
                .map_err(sql_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
        })
        .await
    }

    async fn list_shard_range(
        &self,
        bucket: Bucket,
        prefix: &str,
        shards: std::ops::Range<u32>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        if prefix != ACTION_PREFIX || !self.shard_index {
            return super::list_shard_range_by_scan(self, bucket, prefix, shards, limit).await;
        }
        let bucket = self.bucket_name(bucket);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&list_range_sql()).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![bucket, shards.start, shards.end, limit], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(sql_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
        })
        .await
    }

    async fn list_shard_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        shard: u32,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        if prefix != ACTION_PREFIX || !self.shard_index {
            // Only queued actions are indexed by shard.
            return super::list_shard_keys_by_scan(self, bucket, prefix, shard, after, limit).await;
        }
        let bucket = self.bucket_name(bucket);
        let (from, skip) = seek_from(ACTION_PREFIX, after);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&list_shard_sql()).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![bucket, shard, from, skip, limit], |r| r.get::<_, String>(0))
                .map_err(sql_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
        })
        .await
    }

    async fn count_keys(&self, bucket: Bucket, prefix: &str) -> StoreResult<u64> {
        let (lower, upper) = prefix_range(prefix)?;
        let bucket = self.bucket_name(bucket);
        self.run(move |conn| {
            let n: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM docs WHERE bucket = ?1 AND key >= ?2 AND key < ?3",
                    params![bucket, lower, upper],
                    |r| r.get(0),
                )
                .map_err(sql_error)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use tokio::sync::oneshot;

    const LEASE: Duration = Duration::from_secs(10);

    /// A page after a late cursor starts at the cursor: the rows SQLite
    /// steps through follow the page, not the keys before it (a listing of
    /// the whole ledger would otherwise cost the square of its size).
    #[test]
    fn a_page_after_a_cursor_seeks_to_the_cursor() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(SCHEMA).expect("schema");
        conn.execute_batch(&shard::shard_index_sql()).expect("index");
        for n in 0..3000 {
            for (bucket, key) in [("ledger", format!("tx:{n:05}")), ("queue", format!("action:{n:05}"))] {
                conn.execute(
                    "INSERT INTO docs (bucket, key, body, xattrs, cas) VALUES (?1, ?2, x'7b7d', '{}', 1)",
                    params![bucket, key],
                )
                .expect("insert");
            }
        }
        let steps = |sql: &str, args: &[&dyn rusqlite::ToSql], expected: &[&str]| {
            let mut stmt = conn.prepare(sql).expect("prepare");
            let keys: Vec<String> = stmt
                .query_map(args, |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            assert_eq!(keys, expected, "{sql}");
            stmt.get_status(rusqlite::StatementStatus::VmStep)
        };
        let (from, skip) = seek_from("tx:", Some("tx:02990"));
        for sql in [LIST_KEYS_SQL, READ_DOCS_SQL] {
            let n = steps(sql, &[&"ledger", &from, &"tx;", &skip, &2], &["tx:02991", "tx:02992"]);
            assert!(n < 100, "{n} steps for a page of 2: {sql}");
        }
        let (from, skip) = seek_from("tx:", None);
        steps(
            LIST_KEYS_SQL,
            &[&"ledger", &from, &"tx;", &skip, &2],
            &["tx:00000", "tx:00001"],
        );
        let shard = crate::domain::shard::shard_of("action:02990");
        let (from, skip) = seek_from(ACTION_PREFIX, Some("action:02990"));
        let mut stmt = conn.prepare(&list_shard_sql()).expect("prepare");
        let keys: Vec<String> = stmt
            .query_map(params!["queue", shard, from, skip, 100], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert!(keys
            .iter()
            .all(|k| k.as_str() > "action:02990" && crate::domain::shard::shard_of(k) == shard));
        let n = stmt.get_status(rusqlite::StatementStatus::VmStep);
        assert!(n < 400, "{n} steps for the shard's last {} keys", keys.len());
    }

    async fn store() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("early.db"), "queue", "ledger", OpenMode::Create).expect("open");
        store.insert(Bucket::Queue, "action:a", b"{}").await.expect("queue");
        store.insert(Bucket::Ledger, "balance:w", b"1").await.expect("wallet");
        (store, dir)
    }

    fn send(store: &SqliteStore, job: Job) {
        store.writer.lock().expect("writer").send(job).expect("writer running");
    }

    /// A writer job that holds its batch open (before COMMIT) until released.
    fn hold(store: &SqliteStore) -> (oneshot::Receiver<()>, mpsc::Sender<()>) {
        let (entered, has_entered) = oneshot::channel();
        let (release, released) = mpsc::channel::<()>();
        send(
            store,
            Box::new(move |_tx: Option<&Tx<'_>>| {
                let _ = entered.send(());
                let _ = released.recv();
                Box::new(|_: Result<(), StoreError>| {})
            }),
        );
        (has_entered, release)
    }

    /// Holds the writer in a first batch and queues a claim of `action:a`
    /// behind it: the claim opens the next batch once the first is released.
    async fn claim_behind_a_held_batch(store: &SqliteStore) -> (oneshot::Receiver<StoreResult<Doc>>, mpsc::Sender<()>) {
        let (first_in, release_first) = hold(store);
        first_in.await.expect("first batch open");
        let (claim, claimed) = claim_job("queue".into(), "action:a".into(), LEASE);
        send(store, claim);
        (claimed, release_first)
    }

    async fn finishes<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(100), f).await.ok()
    }

    /// What must finish: a test that would hang fails instead.
    async fn finished<T>(f: impl std::future::Future<Output = T>, what: &str) -> T {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .unwrap_or_else(|_| panic!("{what} never finished"))
    }

    async fn locked(store: &SqliteStore) -> u64 {
        let census = store
            .census(Bucket::Queue, "action:", "ledger.blocked", None)
            .await
            .expect("census");
        census.locked.expect("locked")
    }

    /// The claim is answered while its batch is still open; a read of the
    /// claimed document waits for the commit (and then sees the lock); a
    /// read of another document does not wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_is_answered_before_its_batch_commits_and_its_document_is_read_after() {
        let (store, _dir) = store().await;
        // Batch 2: the claim, then a hold.
        let (claimed, release_first) = claim_behind_a_held_batch(&store).await;
        let (second_in, release_second) = hold(&store);
        release_first.send(()).expect("release the first batch");
        second_in.await.expect("second batch open");

        let doc = finishes(claimed)
            .await
            .expect("the claim is answered before its batch commits")
            .expect("answered")
            .expect("claimed");
        assert_eq!(doc.body, b"{}");
        let wallet = finishes(store.get(Bucket::Ledger, "balance:w"))
            .await
            .expect("another document is read at once");
        assert_eq!(wallet.expect("wallet").body, b"1");
        let reading = tokio::spawn({
            let store = store.clone();
            async move { store.get(Bucket::Queue, "action:a").await }
        });
        let counting = tokio::spawn({
            let store = store.clone();
            async move { locked(&store).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !reading.is_finished(),
            "a read of the claimed document waits for the commit"
        );
        assert!(!counting.is_finished(), "a census waits for the commit");
        release_second.send(()).expect("release the second batch");
        finished(reading, "the read")
            .await
            .expect("read")
            .expect("the action is there");
        assert_eq!(
            finished(counting, "the census").await.expect("census"),
            1,
            "the census sees the claim"
        );
        assert_eq!(
            store.get_and_lock(Bucket::Queue, "action:a", LEASE).await,
            Err(StoreError::Locked)
        );
    }

    /// A writer that dies in the middle of a batch (a panic in a job) leaves
    /// no read waiting for a batch that will never settle.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_that_dies_mid_batch_leaves_no_read_waiting() {
        let (store, _dir) = store().await;
        let (claimed, release_first) = claim_behind_a_held_batch(&store).await;
        send(
            &store,
            Box::new(|_tx: Option<&Tx<'_>>| -> threads::Answer { panic!("a job that panics, on purpose") }),
        );
        release_first.send(()).expect("release the first batch");
        finished(claimed, "the claim")
            .await
            .expect("answered")
            .expect("claimed");
        let read = finished(store.get(Bucket::Queue, "action:a"), "the read of the claimed document").await;
        assert!(read.is_ok(), "{read:?}");
        finished(locked(&store), "the census").await;
        assert!(
            store.insert(Bucket::Queue, "action:b", b"{}").await.is_err(),
            "the writer is gone"
        );
    }

    /// A claim answered in a batch that then rolls back is a lock lost: the
    /// action is not locked, and the CAS the claim showed is never handed
    /// out again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_whose_batch_rolls_back_is_lost_and_its_cas_never_reused() {
        let (store, _dir) = store().await;
        let (claimed, release_first) = claim_behind_a_held_batch(&store).await;
        // SQLite rolls a transaction back by itself after an I/O error.
        let (rolled, rolled_back) = oneshot::channel();
        send(
            &store,
            Box::new(move |tx: Option<&Tx<'_>>| {
                if let Some(tx) = tx {
                    let _ = tx.conn.execute_batch("ROLLBACK");
                }
                Box::new(move |outcome: Result<(), StoreError>| {
                    let _ = rolled.send(outcome);
                })
            }),
        );
        release_first.send(()).expect("release the first batch");
        let lost = finished(claimed, "the claim")
            .await
            .expect("answered")
            .expect("claimed");
        assert!(
            finished(rolled_back, "the batch").await.expect("outcome").is_err(),
            "the batch rolled back"
        );
        assert_eq!(locked(&store).await, 0, "the claim was lost with its batch");
        let again = store
            .get_and_lock(Bucket::Queue, "action:a", LEASE)
            .await
            .expect("claim again");
        assert!(
            again.cas > lost.cas,
            "CAS {} handed out again after {}",
            again.cas,
            lost.cas
        );
        store
            .unlock(Bucket::Queue, "action:a", again.cas)
            .await
            .expect("unlock");
        assert_eq!(
            store.remove(Bucket::Queue, "action:a", Some(lost.cas)).await,
            Err(StoreError::CasMismatch),
            "the lost claim's CAS matches nothing"
        );
    }
}

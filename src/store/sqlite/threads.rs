//! The embedded store's two threads per handle: the writer, which applies
//! mutations to the shared document model inside group-committed
//! transactions, and the reader, which serves point reads in batches.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use crate::store::model::{Entry, Slot};
use crate::store::{Cas, StoreError, StoreResult};

/// Most mutations committed in one transaction.
const GROUP_COMMIT_MAX: usize = 512;
/// One document, read on every operation.
const LOAD_SQL: &str = "SELECT body, xattrs, cas, lock_until_ms, created_ms FROM docs WHERE bucket = ?1 AND key = ?2";
/// One document written back.
const UPSERT_SQL: &str =
    "INSERT INTO docs (bucket, key, body, xattrs, cas, lock_until_ms, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (bucket, key) DO UPDATE SET body = excluded.body, xattrs = excluded.xattrs,
     cas = excluded.cas, lock_until_ms = excluded.lock_until_ms, created_ms = excluded.created_ms";
/// One document created, unless it exists.
const INSERT_SQL: &str =
    "INSERT INTO docs (bucket, key, body, xattrs, cas, lock_until_ms, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (bucket, key) DO NOTHING";
/// One document removed.
const DELETE_SQL: &str = "DELETE FROM docs WHERE bucket = ?1 AND key = ?2";

/// The machine's clock in Unix milliseconds: lock expiry is judged by it,
/// the same clock for every process on the machine.
pub(super) fn clock_ms() -> u64 {
    crate::domain::time::unix_ms_now()
}

pub(super) fn sql_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
        {
            StoreError::Transient(e.to_string())
        }
        _ => StoreError::Permanent(e.to_string()),
    }
}

/// A time column's value (SQLite integers are signed).
fn ms_column(ms: Option<u64>) -> Option<i64> {
    ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX))
}

fn i64_of(cas: Cas) -> StoreResult<i64> {
    i64::try_from(cas).map_err(|_| StoreError::CasMismatch)
}

/// A body as bytes, whether it was stored as a BLOB or, by another tool, as TEXT.
fn body_bytes(value: rusqlite::types::ValueRef<'_>) -> rusqlite::Result<Vec<u8>> {
    match value {
        rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => Ok(b.to_vec()),
        other => Err(rusqlite::Error::InvalidColumnType(0, "body".into(), other.data_type())),
    }
}

pub(super) fn load(conn: &Connection, bucket: &str, key: &str) -> StoreResult<Slot> {
    // Cached: this runs for every read and every write.
    let row = conn
        .prepare_cached(LOAD_SQL)
        .and_then(|mut stmt| {
            stmt.query_row(params![bucket, key], |r| {
                Ok((
                    body_bytes(r.get_ref(0)?)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })
            .optional()
        })
        .map_err(sql_error)?;
    let Some((body, xattrs, cas, lock_until_ms, created_ms)) = row else {
        return Ok(None);
    };
    let xattrs: Value = serde_json::from_str(&xattrs)
        .map_err(|e| StoreError::Permanent(format!("stored xattrs of {key:?} are not JSON: {e}")))?;
    Ok(Some(Entry {
        body,
        xattrs,
        cas: u64::try_from(cas).unwrap_or(0),
        lock_until_ms: lock_until_ms.map(|l| u64::try_from(l).unwrap_or(0)),
        created_ms: created_ms.and_then(|c| u64::try_from(c).ok()),
    }))
}

/// Runs `sql` (an insert of every column, ?1 to ?7) for one document;
/// returns the rows it changed.
fn write_row(conn: &Connection, sql: &str, bucket: &str, key: &str, e: &Entry) -> StoreResult<usize> {
    let cas = i64_of(e.cas)?;
    conn.prepare_cached(sql)
        .and_then(|mut stmt| {
            stmt.execute(params![
                bucket,
                key,
                e.body,
                e.xattrs.to_string(),
                cas,
                ms_column(e.lock_until_ms),
                ms_column(e.created_ms)
            ])
        })
        .map_err(sql_error)
}

fn save(conn: &Connection, bucket: &str, key: &str, slot: &Slot) -> StoreResult<()> {
    match slot {
        None => conn
            .prepare_cached(DELETE_SQL)
            .and_then(|mut stmt| stmt.execute(params![bucket, key]))
            .map(|_| ())
            .map_err(sql_error),
        Some(e) => write_row(conn, UPSERT_SQL, bucket, key, e).map(|_| ()),
    }
}

/// The writer's open transaction: one time and one run of CAS values for
/// every mutation in it (the write lock is held throughout, so no other
/// process can take CAS values meanwhile).
pub(super) struct Tx<'c> {
    pub(super) conn: &'c Connection,
    pub(super) now_ms: u64,
    last_cas: std::cell::Cell<i64>,
}

impl Tx<'_> {
    fn next_cas(&self) -> Cas {
        let next = self.last_cas.get().saturating_add(1);
        self.last_cas.set(next);
        u64::try_from(next).unwrap_or(0)
    }
}

/// One read-modify-write of a document, inside the writer's open
/// transaction. A failed operation writes nothing (it may use up a CAS
/// value, which is harmless: CAS values only need to be unique).
pub(super) fn apply_mutation<T>(
    tx: &Tx<'_>,
    bucket: &str,
    key: &str,
    op: impl FnOnce(&mut Slot, u64, Cas) -> StoreResult<T>,
) -> StoreResult<T> {
    let mut slot = load(tx.conn, bucket, key)?;
    let before = fingerprint(&slot);
    let out = op(&mut slot, tx.now_ms, tx.next_cas())?;
    if fingerprint(&slot) != before {
        save(tx.conn, bucket, key, &slot)?;
    }
    Ok(out)
}

/// What tells whether an operation changed a document, without cloning it:
/// the model gives every change of body or xattrs a new CAS, and a lock or
/// an unlock changes the lock's expiry (the memory store's contract cases
/// and this store's would fail on a change that escaped it).
fn fingerprint(slot: &Slot) -> Option<(Cas, Option<u64>)> {
    slot.as_ref().map(|e| (e.cas, e.lock_until_ms))
}

/// A creation, inside the writer's open transaction, in one statement: `op`
/// builds the document from nothing (it must succeed on an empty slot, as
/// an insert does), and the row is inserted unless one exists (`Exists`).
/// The same answer as `apply_mutation` with an insert, without reading the
/// row first.
pub(super) fn apply_insert<T>(
    tx: &Tx<'_>,
    bucket: &str,
    key: &str,
    op: impl FnOnce(&mut Slot, u64, Cas) -> StoreResult<T>,
) -> StoreResult<T> {
    let mut slot: Slot = None;
    let out = op(&mut slot, tx.now_ms, tx.next_cas())?;
    let Some(e) = slot else {
        return Err(StoreError::Permanent("an insert produced no document".into()));
    };
    if write_row(tx.conn, INSERT_SQL, bucket, key, &e)? == 0 {
        return Err(StoreError::Exists);
    }
    Ok(out)
}

/// Answers one caller once the fate of its batch is known.
type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A mutation for the writer: applied to the open transaction (`Some`), or
/// not applied at all (`None`); it returns how to answer its caller.
pub(super) type Job = Box<dyn FnOnce(Option<&Tx<'_>>) -> Answer + Send>;

/// Group commit: one thread per store handle takes every mutation waiting,
/// applies them in order inside ONE `BEGIN IMMEDIATE` transaction, commits
/// (one fsync for the batch), and only then answers each caller. Every
/// answer still means "durably committed"; the order is a valid serial
/// order; and other processes still see one writer at a time.
pub(super) fn writer_loop(conn: Connection, jobs: std::sync::mpsc::Receiver<Job>, hand: std::path::PathBuf) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let holding = std::time::Instant::now();
        let begun = conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
            conn.prepare_cached("SELECT value FROM cas_seq WHERE id = 1")
                .and_then(|mut stmt| stmt.query_row([], |r| r.get::<_, i64>(0)))
        });
        let first_cas = match begun {
            Ok(cas) => cas,
            Err(e) => {
                let e = sql_error(e);
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                for job in batch {
                    job(None)(Err(e.clone()));
                }
                continue;
            }
        };
        let tx = Tx {
            conn: &conn,
            now_ms: clock_ms(),
            last_cas: std::cell::Cell::new(first_cas),
        };
        let mut answers = Vec::with_capacity(batch.len());
        let mut rolled_back = false;
        for job in batch {
            if rolled_back {
                job(None)(Err(StoreError::Transient(
                    "not applied: SQLite rolled the batch back".into(),
                )));
                continue;
            }
            answers.push(job(Some(&tx)));
            // An I/O or full-disk error makes SQLite roll the whole
            // transaction back by itself: nothing in it was applied.
            rolled_back = conn.is_autocommit();
        }
        if !rolled_back && tx.last_cas.get() != first_cas {
            let saved = conn
                .prepare_cached("UPDATE cas_seq SET value = ?1 WHERE id = 1")
                .and_then(|mut stmt| stmt.execute([tx.last_cas.get()]));
            if saved.is_err() {
                let _ = conn.execute_batch("ROLLBACK");
                rolled_back = true;
            }
        }
        let outcome = if rolled_back {
            Err(StoreError::Transient(
                "not applied: SQLite rolled the batch back".into(),
            ))
        } else {
            conn.execute_batch("COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                // A failed COMMIT may or may not have reached the disk.
                StoreError::Ambiguous(format!("commit failed: {e}"))
            })
        };
        for answer in answers {
            answer(outcome.clone());
        }
        // Another process's writer is waiting for the lock: let it have a turn.
        if super::fairness::other_hand_raised(&hand, std::time::SystemTime::now()) {
            std::thread::sleep(super::fairness::pause_for(holding.elapsed()));
        }
    }
}

/// A single-document read for the reader thread.
pub(super) type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Most reads served from one read transaction.
const READ_BATCH_MAX: usize = 256;

/// Point reads: one thread per store handle takes every read waiting and
/// serves them all from ONE read transaction (one WAL snapshot, taken after
/// the last of them arrived, so each still sees every write acknowledged
/// before it was asked). This saves a thread hand-off per read and keeps
/// the connection's page cache across the batch. Scans (`list_keys`,
/// `count_keys`) run on pooled connections instead, so that a long one
/// never holds up point reads.
pub(super) fn reader_loop(conn: Connection, jobs: std::sync::mpsc::Receiver<ReadJob>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < READ_BATCH_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Without a transaction each read simply takes its own snapshot.
        let in_tx = conn.execute_batch("BEGIN").is_ok();
        for job in batch {
            job(&conn);
        }
        // Never keep an old snapshot open into the next batch: that would
        // serve stale reads.
        if in_tx && conn.execute_batch("COMMIT").is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
}

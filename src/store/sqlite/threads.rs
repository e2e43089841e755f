//! The embedded store's two threads per handle: the writer, which applies
//! mutations to the shared document model inside group-committed
//! transactions, and the reader, which serves point reads in batches.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::early::Unsettled;
use super::errors::{not_applied, sql_error, take_last_fault};
use crate::store::model::{Stored, StoredDoc};
use crate::store::{Cas, StoreError, StoreResult};

/// Most mutations committed in one transaction.
const GROUP_COMMIT_MAX: usize = 512;
/// One document, read on every operation.
const LOAD_SQL: &str = "SELECT body, xattrs, cas, lock_until_ms, created_ms FROM docs WHERE bucket = ?1 AND key = ?2";
/// One document created, unless it exists.
const INSERT_SQL: &str =
    "INSERT INTO docs (bucket, key, body, xattrs, cas, lock_until_ms, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (bucket, key) DO NOTHING";
/// One document removed.
const DELETE_SQL: &str = "DELETE FROM docs WHERE bucket = ?1 AND key = ?2";
/// One document that exists written back (one seek, where an upsert takes two).
const UPDATE_SQL: &str = "UPDATE docs SET body = ?3, xattrs = ?4, cas = ?5, lock_until_ms = ?6, created_ms = ?7
     WHERE bucket = ?1 AND key = ?2";
/// One document that does not exist written.
const CREATE_SQL: &str =
    "INSERT INTO docs (bucket, key, body, xattrs, cas, lock_until_ms, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// The machine's clock in Unix milliseconds: lock expiry is judged by it,
/// the same clock for every process on the machine.
pub(super) fn clock_ms() -> u64 {
    crate::domain::time::unix_ms_now()
}

/// A time column's value (SQLite integers are signed).
fn ms_column(ms: Option<u64>) -> Option<i64> {
    ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX))
}

fn i64_of(cas: Cas) -> StoreResult<i64> {
    i64::try_from(cas).map_err(|_| StoreError::CasMismatch)
}

/// A body as bytes, whether it was stored as a BLOB or, by another tool, as TEXT.
pub(super) fn body_bytes(value: rusqlite::types::ValueRef<'_>) -> rusqlite::Result<Vec<u8>> {
    match value {
        rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => Ok(b.to_vec()),
        other => Err(rusqlite::Error::InvalidColumnType(0, "body".into(), other.data_type())),
    }
}

pub(super) fn load(conn: &Connection, bucket: &str, key: &str) -> StoreResult<Stored> {
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
    Ok(Some(StoredDoc {
        body,
        xattrs,
        cas: u64::try_from(cas).unwrap_or(0),
        lock_until_ms: lock_until_ms.map(|l| u64::try_from(l).unwrap_or(0)),
        created_ms: created_ms.and_then(|c| u64::try_from(c).ok()),
    }))
}

/// Runs `sql` (an insert of every column, ?1 to ?7) for one document;
/// returns the rows it changed.
fn write_row(conn: &Connection, sql: &str, bucket: &str, key: &str, e: &StoredDoc) -> StoreResult<usize> {
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

/// A document as the open transaction has it.
struct Cached {
    slot: Stored,
    /// Whether the database holds a row for it (as this transaction left it).
    stored: bool,
    /// Whether `slot` differs from that row.
    dirty: bool,
}

/// The documents the open transaction has read or changed. A document is
/// read from the database at most once per transaction and written back at
/// most once, just before COMMIT (`Tx::write_back`): a record inserted and
/// then completed in one write group is an INSERT and an UPDATE (no read),
/// and k writes of one wallet in one batch are one read and one UPDATE.
#[derive(Default)]
struct TxDocs {
    by_bucket: HashMap<String, HashMap<String, Cached>>,
}

impl TxDocs {
    fn get_mut(&mut self, bucket: &str, key: &str) -> Option<&mut Cached> {
        self.by_bucket.get_mut(bucket)?.get_mut(key)
    }

    fn put(&mut self, bucket: &str, key: &str, cached: Cached) -> &mut Cached {
        self.by_bucket
            .entry(bucket.to_string())
            .or_default()
            .entry(key.to_string())
            .insert_entry(cached)
            .into_mut()
    }
}

/// The writer's open transaction: one time and one run of CAS values for
/// every mutation in it (the write lock is held throughout, so no other
/// process can take CAS values meanwhile), and the documents it has
/// touched, written back before it commits.
pub(super) struct Tx<'c> {
    pub(super) conn: &'c Connection,
    pub(super) now_ms: u64,
    /// This transaction's time on the CAS clock, in nanoseconds.
    now_ns: u64,
    last_cas: Cell<i64>,
    docs: RefCell<TxDocs>,
    /// An operation failed after changing its document: the model promises
    /// it never does, and the batch is rolled back if it ever did.
    broken: Cell<bool>,
    /// This batch's number, and where claims answered in it before it
    /// settles are noted (see `early.rs`).
    batch: u64,
    unsettled: &'c Unsettled,
}

impl Tx<'_> {
    /// Records that a claim on `key`, applied in this transaction, is being
    /// answered before the transaction commits.
    pub(super) fn answering_early(&self, bucket: &str, key: &str) {
        self.unsettled.note(bucket, key, self.batch);
    }

    /// The next CAS: the server's clock (see [`crate::store::model::next_cas`])
    /// at this transaction's time, after the last one handed out. SQLite
    /// keeps it as a signed integer, which holds a CAS until the year 2262.
    fn next_cas(&self) -> Cas {
        let last = u64::try_from(self.last_cas.get()).unwrap_or(0);
        let next = crate::store::model::next_cas(last, self.now_ns).min(i64::MAX as u64);
        self.last_cas.set(i64::try_from(next).unwrap_or(i64::MAX));
        next
    }

    /// Writes every changed document back, in key order: one statement each.
    fn write_back(&self) -> StoreResult<()> {
        if self.broken.get() {
            return Err(StoreError::Permanent(
                "a store operation failed after changing its document; the batch was rolled back".into(),
            ));
        }
        let docs = std::mem::take(&mut *self.docs.borrow_mut());
        let mut buckets: Vec<_> = docs.by_bucket.into_iter().collect();
        buckets.sort_by(|a, b| a.0.cmp(&b.0));
        for (bucket, docs) in buckets {
            let mut dirty: Vec<_> = docs.into_iter().filter(|(_, c)| c.dirty).collect();
            dirty.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, cached) in dirty {
                match (&cached.slot, cached.stored) {
                    (Some(e), true) => write_row(self.conn, UPDATE_SQL, &bucket, &key, e).map(|_| ())?,
                    (Some(e), false) => write_row(self.conn, CREATE_SQL, &bucket, &key, e).map(|_| ())?,
                    (None, true) => self
                        .conn
                        .prepare_cached(DELETE_SQL)
                        .and_then(|mut stmt| stmt.execute(params![bucket, key]))
                        .map(|_| ())
                        .map_err(sql_error)?,
                    (None, false) => {}
                }
            }
        }
        Ok(())
    }
}

/// Applies `op` to a document the transaction holds; a failed operation
/// leaves it as it was (it may use up a CAS value, which is harmless: CAS
/// values only need to be unique).
fn apply_cached<T>(
    tx: &Tx<'_>,
    cached: &mut Cached,
    op: impl FnOnce(&mut Stored, u64, Cas) -> StoreResult<T>,
) -> StoreResult<T> {
    let before = fingerprint(&cached.slot);
    let out = op(&mut cached.slot, tx.now_ms, tx.next_cas());
    let changed = fingerprint(&cached.slot) != before;
    match out {
        Ok(_) => cached.dirty |= changed,
        Err(_) if changed => tx.broken.set(true),
        Err(_) => {}
    }
    out
}

/// One read-modify-write of a document, inside the writer's open
/// transaction: read once per transaction, written back before COMMIT.
pub(super) fn apply_mutation<T>(
    tx: &Tx<'_>,
    bucket: &str,
    key: &str,
    op: impl FnOnce(&mut Stored, u64, Cas) -> StoreResult<T>,
) -> StoreResult<T> {
    let mut docs = tx.docs.borrow_mut();
    let cached = match docs.get_mut(bucket, key) {
        Some(cached) => cached,
        None => {
            let slot = load(tx.conn, bucket, key)?;
            let stored = slot.is_some();
            docs.put(
                bucket,
                key,
                Cached {
                    slot,
                    stored,
                    dirty: false,
                },
            )
        }
    };
    apply_cached(tx, cached, op)
}

/// What tells whether an operation changed a document, without cloning it:
/// the model gives every change of body or xattrs a new CAS, and a lock or
/// an unlock changes the lock's expiry (the memory store's contract cases
/// and this store's would fail on a change that escaped it).
fn fingerprint(slot: &Stored) -> Option<(Cas, Option<u64>)> {
    slot.as_ref().map(|e| (e.cas, e.lock_until_ms))
}

/// A creation, inside the writer's open transaction, in one statement: `op`
/// builds the document from nothing (it must succeed on an empty slot, as
/// an insert does), and the row is inserted unless one exists (`Exists`).
/// The same answer as `apply_mutation` with an insert, without reading the
/// row first. A document the transaction already holds is created (or
/// refused) there instead.
pub(super) fn apply_insert<T>(
    tx: &Tx<'_>,
    bucket: &str,
    key: &str,
    op: impl FnOnce(&mut Stored, u64, Cas) -> StoreResult<T>,
) -> StoreResult<T> {
    let mut docs = tx.docs.borrow_mut();
    if let Some(cached) = docs.get_mut(bucket, key) {
        return apply_cached(tx, cached, op);
    }
    let mut slot: Stored = None;
    let out = op(&mut slot, tx.now_ms, tx.next_cas())?;
    let Some(e) = &slot else {
        return Err(StoreError::Permanent("an insert produced no document".into()));
    };
    if write_row(tx.conn, INSERT_SQL, bucket, key, e)? == 0 {
        return Err(StoreError::Exists);
    }
    docs.put(
        bucket,
        key,
        Cached {
            slot,
            stored: true,
            dirty: false,
        },
    );
    Ok(out)
}

/// Answers one caller once the fate of its batch is known (a claim answered
/// early answers nothing more).
pub(super) type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A mutation for the writer: applied to the open transaction (`Some`), or
/// not applied at all (`None`); it returns how to answer its caller.
pub(super) type Job = Box<dyn FnOnce(Option<&Tx<'_>>) -> Answer + Send>;

/// Group commit: one thread per store handle takes every mutation waiting,
/// applies them in order inside ONE `BEGIN IMMEDIATE` transaction, commits
/// (one fsync for the batch), and only then answers each caller. Every
/// answer still means "durably committed" (except a claim's, answered once
/// applied: see `early.rs`); the order is a valid serial order; and other
/// processes still see one writer at a time.
pub(super) fn writer_loop(
    conn: Connection,
    jobs: std::sync::mpsc::Receiver<Job>,
    hand: std::path::PathBuf,
    unsettled: std::sync::Arc<Unsettled>,
    mut wal: super::wal::WalBound,
) {
    // However the writer ends (its store dropped, or a panic unwinding it
    // in the middle of a batch), no read waits for a batch that will never
    // settle: such a claim is lost, as a rolled-back one is.
    let _settle_on_exit = unsettled.settle_all_on_drop();
    let mut batch_number = 0u64;
    // The highest CAS value this writer has handed out. A batch that rolls
    // back leaves the stored sequence behind it, and a claim answered early
    // in that batch has shown its CAS to a caller: never hand it out again.
    let mut cas_floor = 0i64;
    while let Ok(first) = jobs.recv() {
        batch_number += 1;
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let holding = std::time::Instant::now();
        take_last_fault();
        let begun = conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
            conn.prepare_cached("SELECT value FROM cas_seq WHERE id = 1")
                .and_then(|mut stmt| stmt.query_row([], |r| r.get::<_, i64>(0)))
        });
        let first_cas = match begun {
            Ok(cas) => cas.max(cas_floor),
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
            now_ns: crate::store::model::unix_ns_now(),
            last_cas: Cell::new(first_cas),
            docs: RefCell::default(),
            broken: Cell::new(false),
            batch: batch_number,
            unsettled: &unsettled,
        };
        let mut answers = Vec::with_capacity(batch.len());
        let mut rolled_back = false;
        let rolled_back_error = || match take_last_fault() {
            Some(fault) => StoreError::Fault(fault),
            None => StoreError::Transient("not applied: SQLite rolled the batch back".into()),
        };
        let mut rollback_cause = None;
        for job in batch {
            if rolled_back {
                let cause = rollback_cause.get_or_insert_with(rolled_back_error).clone();
                job(None)(Err(cause));
                continue;
            }
            answers.push(job(Some(&tx)));
            // An I/O or full-disk error makes SQLite roll the whole
            // transaction back by itself: nothing in it was applied.
            rolled_back = conn.is_autocommit();
        }
        // The batch's documents, then the CAS sequence, written back; a
        // failure there rolls the whole batch back.
        let written = match rolled_back {
            true => Err(rollback_cause.take().unwrap_or_else(rolled_back_error)),
            false => tx.write_back().and_then(|()| match tx.last_cas.get() == first_cas {
                true => Ok(()),
                false => conn
                    .prepare_cached("UPDATE cas_seq SET value = ?1 WHERE id = 1")
                    .and_then(|mut stmt| stmt.execute([tx.last_cas.get()]))
                    .map(|_| ())
                    .map_err(sql_error),
            }),
        };
        let outcome = match written {
            Err(e) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                // Nothing in the batch was applied: worth another try,
                // unless the store broke its own model or faulted.
                Err(not_applied(e, tx.broken.get()))
            }
            Ok(()) => conn.execute_batch("COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                // A failed COMMIT may or may not have reached the disk. A
                // fault of the whole store says so by itself (see
                // `StoreError::Fault`): the attempt ends, and the next one
                // rolls forward from what is stored, as after a crash.
                match sql_error(e) {
                    StoreError::Fault(f) => StoreError::Fault(f),
                    e => StoreError::Ambiguous(format!("commit failed: {e}")),
                }
            }),
        };
        cas_floor = tx.last_cas.get();
        unsettled.settle(batch_number);
        let committed = outcome.is_ok();
        for answer in answers {
            answer(outcome.clone());
        }
        // Keep the WAL within its bound (see `wal.rs`); the batch is
        // answered first. A checkpoint that fails (a full disk) is tried
        // again after later commits; the commits stand.
        if committed {
            if let Err(e) = wal.after_commit(&conn) {
                tracing::warn!(error = %e, "SQLite WAL checkpoint failed; retried after later commits");
            }
        } else if matches!(&outcome, Err(StoreError::Fault(f)) if f.kind == crate::store::FaultKind::Full) {
            wal.after_full(&conn);
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

#[cfg(test)]
#[path = "threads_tests.rs"]
mod tests;

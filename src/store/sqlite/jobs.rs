//! Handing work to the store's threads: the writer (every mutation, in
//! its next transaction), the reader (single-document reads) and the pool
//! of connections for listings and counts, off the async threads.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::Connection;

use super::errors::sql_error;
use super::open::{connect, SqliteStore};
use super::threads::{apply_insert, apply_mutation, clock_ms, load, Job, ReadJob, Tx};
use crate::store::group::{self, GroupResults, GroupWrite};
use crate::store::model::{self, Mutation, Stored};
use crate::store::{Bucket, Cas, Doc, StoreError, StoreResult, WriteMode};

/// Idle connections kept for reuse: as many as the binary's blocking
/// threads (`BLOCKING_THREADS_MAX` in `commands/dispatch.rs`) use at once.
const POOL_IDLE_MAX: usize = 2;
/// The write `/readyz` commits to prove that writes can commit (a full disk
/// fails it): one row, overwritten.
const PROBE_SQL: &str = "INSERT INTO ready_probe (id, at_ms) VALUES (1, ?1)
     ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms";

impl SqliteStore {
    pub(super) fn bucket_name(&self, bucket: Bucket) -> String {
        match bucket {
            Bucket::Queue => self.buckets.0.clone(),
            Bucket::Ledger => self.buckets.1.clone(),
        }
    }

    /// Runs blocking SQLite work on a pooled connection off the async threads.
    pub(super) async fn run<T: Send + 'static>(
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

    pub(super) async fn mutate<T: Send + 'static>(
        &self,
        bucket: Bucket,
        key: &str,
        op: impl FnOnce(&mut Stored, u64, Cas) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (bucket, key) = (self.bucket_name(bucket), key.to_string());
        self.in_writer(move |tx| apply_mutation(tx, &bucket, &key, op)).await
    }

    /// One write, alone in the writer's next transaction: the same code as
    /// a write of a group.
    pub(super) async fn write_one(&self, write: GroupWrite) -> StoreResult<Cas> {
        let bucket = self.bucket_name(write.bucket());
        self.in_writer(move |tx| group_write(tx, &bucket, &write, &GroupResults::new()))
            .await
    }

    /// Commits the readiness probe through the writer, as a mutation would.
    pub(super) async fn commit_probe(&self) -> StoreResult<()> {
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
    pub(super) async fn in_writer<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Tx<'_>) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (job, answered) = writer_job(work, Answered::Committed);
        hand_over(&self.writer, job, answered, "writer")
            .await
            .map_err(|e| placed(e, &self.path))
    }

    pub(super) async fn read<T: Send + 'static>(
        &self,
        bucket: Bucket,
        key: &str,
        op: impl FnOnce(&Stored, u64) -> StoreResult<T> + Send + 'static,
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
pub(super) fn placed(e: StoreError, path: &Path) -> StoreError {
    match e {
        StoreError::Fault(f) => StoreError::Fault(f.at(&path.display().to_string())),
        e => e,
    }
}

/// Sends `job` to the store's `thread` (writer or reader) and waits for its
/// answer; a thread that has stopped fails the call for good.
pub(super) async fn hand_over<J, T>(
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
pub(super) enum Answered {
    /// Once the transaction's fate is known (after COMMIT): every write.
    Committed,
    /// As soon as the job is applied: a claim (`early.rs`).
    Applied,
}

/// `work` as a job for the writer, and where its answer arrives.
pub(super) fn writer_job<T: Send + 'static>(
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
pub(super) fn claim_job(
    bucket: String,
    key: String,
    lock: Duration,
) -> (Job, tokio::sync::oneshot::Receiver<StoreResult<Doc>>) {
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
pub(super) fn group_write(tx: &Tx<'_>, bucket: &str, write: &GroupWrite, results: &GroupResults) -> StoreResult<Cas> {
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
            let op = |slot: &mut Stored, now, cas| {
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

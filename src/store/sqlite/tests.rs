//! The embedded store's own tests: its listings' cost, its threads and its jobs.

use super::threads::{Job, Tx};
use super::*;
use rusqlite::Connection;
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

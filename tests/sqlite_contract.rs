//! The store contract against the embedded SQLite store, on a real file.

use std::time::Duration;

use async_trait::async_trait;
use ledgerd::store::contract::Harness;
use ledgerd::store::sqlite::{OpenMode, SqliteStore};
use ledgerd::store::Store;

struct SqliteHarness {
    store: SqliteStore,
    _dir: tempfile::TempDir,
}

#[async_trait]
impl Harness for SqliteHarness {
    fn store(&self) -> &dyn Store {
        &self.store
    }
    async fn advance(&self, by: Duration) {
        // SQLite judges locks by its own clock: real time has to pass.
        tokio::time::sleep(by).await;
    }
}

async fn harness() -> SqliteHarness {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        SqliteStore::open(&dir.path().join("contract.db"), "queue", "ledger", OpenMode::Create).expect("open sqlite");
    SqliteHarness { store, _dir: dir }
}

ledgerd::contract_tests!(harness);

#[tokio::test]
async fn a_second_handle_on_the_same_file_sees_the_same_documents() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shared.db");
    let a = SqliteStore::open(&path, "queue", "ledger", OpenMode::Create).expect("open");
    let b = SqliteStore::open(&path, "queue", "ledger", OpenMode::Existing).expect("open again");
    let cas = a
        .insert(ledgerd::store::Bucket::Queue, "k", b"v")
        .await
        .expect("insert");
    let lock = b
        .get_and_lock(ledgerd::store::Bucket::Queue, "k", Duration::from_secs(10))
        .await
        .expect("lock");
    assert_ne!(lock.cas, cas);
    assert_eq!(
        a.get_and_lock(ledgerd::store::Bucket::Queue, "k", Duration::from_secs(10))
            .await,
        Err(ledgerd::store::StoreError::Locked)
    );
    let missing = SqliteStore::open(&dir.path().join("nope.db"), "queue", "ledger", OpenMode::Existing);
    assert!(missing.is_err());
}

/// A store made before documents recorded their creation time opens, keeps
/// its documents (their age unknown), and records it for new ones.
#[tokio::test]
async fn a_store_of_an_earlier_release_gains_creation_times() {
    use ledgerd::store::{Bucket, Store};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch(
            "CREATE TABLE docs (bucket TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL, xattrs TEXT NOT NULL,
                 cas INTEGER NOT NULL, lock_until_ms INTEGER, PRIMARY KEY (bucket, key)) WITHOUT ROWID;
             CREATE TABLE cas_seq (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
             INSERT INTO cas_seq (id, value) VALUES (1, 7);
             INSERT INTO docs VALUES ('queue', 'action:old', X'7B7D', '{}', 7, NULL);",
        )
        .expect("old schema");
    }
    let store = SqliteStore::open(&path, "queue", "ledger", OpenMode::Existing).expect("open");
    assert_eq!(store.get(Bucket::Queue, "action:old").await.expect("kept").body, b"{}");
    let census = store
        .census(Bucket::Queue, "action:", "ledger.blocked", None)
        .await
        .expect("census");
    assert_eq!((census.total, census.oldest_created_ms), (1, None));
    store.insert(Bucket::Queue, "action:new", b"{}").await.expect("insert");
    let times = store.doc_times(Bucket::Queue, "action:new").await.expect("times");
    assert!(times.created_ms.is_some());
    let census = store
        .census(Bucket::Queue, "action:", "ledger.blocked", None)
        .await
        .expect("census");
    assert_eq!((census.total, census.oldest_created_ms), (2, times.created_ms));
    // Opening it again changes nothing more.
    drop(store);
    SqliteStore::open(&path, "queue", "ledger", OpenMode::Existing).expect("open again");
}

#[path = "common/steady_state.rs"]
mod steady_state;

/// The steady-state scenario the Couchbase suite runs on a server, run
/// here on a file, so that the scenario itself is known to work.
#[tokio::test]
async fn old_foreign_markers_go_in_the_credit_s_own_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        SqliteStore::open(&dir.path().join("steady.db"), "queue", "ledger", OpenMode::Create).expect("open sqlite");
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(store);
    steady_state::old_foreign_markers_go_in_the_credit_s_own_write(store, "steady").await;
}

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

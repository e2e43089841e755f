//! Choosing a store from its URL.

use std::path::Path;
use std::sync::Arc;

use super::couchbase::CouchbaseStore;
pub use super::sqlite::OpenMode;
use super::{memory::MemoryStore, sqlite::SqliteStore, Store, StoreError};
use crate::config::Settings;

/// Opens the store named by `settings.store` (connecting, for Couchbase).
pub async fn open(settings: &Settings, mode: OpenMode) -> Result<Arc<dyn Store>, StoreError> {
    let url = settings.store.as_str();
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::Permanent(
                "store URL sqlite:// needs a file path, e.g. sqlite://ledgerd.db".into(),
            ));
        }
        let store = SqliteStore::open(Path::new(path), &settings.queue_bucket, &settings.ledger_bucket, mode)?;
        return Ok(Arc::new(store));
    }
    if url == "memory://" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    if url.starts_with("couchbase://") || url.starts_with("couchbases://") {
        return Ok(Arc::new(CouchbaseStore::connect(settings).await?));
    }
    Err(StoreError::Permanent(format!(
        "unknown store URL {url:?}: expected sqlite://PATH, memory:// or couchbase://HOST"
    )))
}

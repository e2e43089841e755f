//! Choosing a store from its URL, and opening it.

use std::path::Path;
use std::sync::Arc;

use super::couchbase::CouchbaseStore;
pub use super::sqlite::OpenMode;
use super::{memory::MemoryStore, sqlite::SqliteStore, Store, StoreError};
use crate::config::Settings;

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store URL, or the store it names, is not usable as configured:
    /// fix the configuration (the process exits 2).
    #[error("{0}")]
    Config(String),
    /// The store was found but failed to open or answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens the store named by `settings.store.url` (connecting, for Couchbase).
/// Only [`OpenMode::Create`] (`ledgerd init`) creates an embedded store;
/// every other command needs one that exists.
pub async fn open(settings: &Settings, mode: OpenMode) -> Result<Arc<dyn Store>, OpenError> {
    let url = settings.store.url.as_str();
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(OpenError::Config(
                "store URL sqlite:// needs a file path, e.g. sqlite://ledgerd.db".into(),
            ));
        }
        let path = Path::new(path);
        if path.is_dir() {
            // SQLite would say "disk I/O error", naming neither the path
            // nor the mistake.
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            return Err(OpenError::Config(format!(
                "{} ({url}) is a directory: the store URL names the database file in it, e.g. sqlite://{}",
                absolute.display(),
                absolute.join("ledgerd.db").display()
            )));
        }
        if mode == OpenMode::Existing {
            check_existing(url, path)?;
        }
        let store = SqliteStore::open(path, &settings.store.queue_bucket, &settings.store.ledger_bucket, mode)?;
        return Ok(Arc::new(store));
    }
    if url == "memory://" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    if url.starts_with("couchbase://") || url.starts_with("couchbases://") {
        let wait_for_buckets = mode == OpenMode::Existing;
        return Ok(Arc::new(CouchbaseStore::connect(settings, wait_for_buckets).await?));
    }
    Err(OpenError::Config(format!(
        "unknown store URL {url:?}: expected sqlite://PATH, memory:// or couchbase://HOST"
    )))
}

/// An embedded store must exist, and be one, before any command but `init`
/// uses it: a typo in the path must not create an empty store that no
/// worker reads.
fn check_existing(url: &str, path: &Path) -> Result<(), OpenError> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if !path.exists() {
        return Err(OpenError::Config(format!(
            "no store at {} ({url}): create it with `ledgerd init --store {url}`, or point --store at an existing one",
            absolute.display()
        )));
    }
    match SqliteStore::is_ledgerd_store(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(OpenError::Config(format!(
            "{} is not a ledgerd store (it has no ledgerd tables): point --store at a ledgerd store, or create one with `ledgerd init`",
            absolute.display()
        ))),
        // A damaged or unreadable file is the store's fault, not the
        // configuration's: `ledgerd check` reports it.
        Err(e @ StoreError::Fault(_)) => Err(OpenError::Store(e)),
        Err(e) => Err(OpenError::Config(format!("{} cannot be read as a store: {e}", absolute.display()))),
    }
}

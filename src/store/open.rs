//! Choosing a store from its URL, and opening it.

use std::path::Path;
use std::sync::Arc;

use super::couchbase::CouchbaseStore;
pub use super::sqlite::OpenMode;
pub use super::types::OpenError;
use super::{memory::MemoryStore, sqlite::SqliteStore, Store, StoreError};
use crate::config::Settings;

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
        check_directory(url, path)?;
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

/// The directory an embedded store's file is in must exist: SQLite would
/// say "unable to open database file", naming neither the directory nor
/// what to do. `init` creates the file, never its directories (a typo in
/// a path must not grow a tree).
fn check_directory(url: &str, path: &Path) -> Result<(), OpenError> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let Some(dir) = absolute.parent() else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    Err(OpenError::Config(format!(
        "the directory {} of the store {url} does not exist: create it (mkdir -p {}) and run `ledgerd init --store {url}`, \
         or point --store at an existing store",
        dir.display(),
        dir.display()
    )))
}

/// Whether the file at `path` is empty (SQLite takes an empty file for an
/// empty database) or begins with the header every SQLite database file
/// begins with ("The Database Header", sqlite.org/fileformat.html: the 16
/// bytes "SQLite format 3\0"). A file that does not is some other file
/// (a wrong path), not a damaged store; one that does but fails to open
/// is damaged.
fn begins_like_sqlite(path: &Path) -> bool {
    use std::io::Read;
    const HEADER: &[u8; 16] = b"SQLite format 3\0";
    let mut start = Vec::with_capacity(HEADER.len());
    match std::fs::File::open(path).and_then(|f| f.take(HEADER.len() as u64).read_to_end(&mut start)) {
        Ok(_) => start.is_empty() || start == HEADER,
        // Unreadable: let SQLite say why (permissions are a fault it names).
        Err(_) => true,
    }
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
    if !begins_like_sqlite(path) {
        return Err(OpenError::Config(format!(
            "{} is not a SQLite database, so not a ledgerd store: point --store at a ledgerd store, or create one \
             with `ledgerd init --store sqlite://NEW-PATH`",
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

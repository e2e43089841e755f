//! The store contract: the Couchbase-shaped single-document primitives the
//! crediting protocol is built from. No SDK or SQL type crosses this trait.
//!
//! Semantics every implementation must have (pinned by [`contract`]):
//! - every successful mutation gives the document a new CAS, never reused;
//! - `get_and_lock` locks a document for a time the store enforces: a
//!   second lock, and any write without the lock's CAS, fail with
//!   [`StoreError::Locked`]; a plain `get` still reads it but returns
//!   [`LOCKED_CAS`], which allows no write; a write with the lock's CAS
//!   succeeds and releases the lock; the lock lapses by itself;
//! - a lapsed lock leaves the CAS as it was, so the lock's CAS still
//!   works until someone else writes or locks;
//! - `insert` fails with `Exists` when the key exists (locked or not);
//! - every request stays within Couchbase Server's limits ([`limits`]):
//!   what the server refuses, every store refuses with `LimitExceeded`;
//! - a full-document write (`insert`, `replace`) leaves no user xattrs.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

pub mod check;
#[cfg(any(test, feature = "test-kit"))]
pub mod contract;
pub mod couchbase;
pub mod fault;
#[cfg(any(test, feature = "test-kit"))]
pub mod faulty;
pub mod group;
pub mod hooked;
pub mod limits;
pub mod memory;
mod model;
pub mod open;
mod pages;
pub mod sqlite;
mod types;

pub use fault::{FaultKind, StoreFault};
pub use group::{GroupCas, GroupResults, GroupWrite, WriteGroup};
pub use open::{open, OpenError, OpenMode};
pub use pages::KeyPages;
pub use types::{
    Bucket, Cas, Census, Doc, DocPage, DocTimes, DocWithXattrs, StoreError, StoreResult, WriteMode, LOCKED_CAS,
};

/// Keys read per page by [`KeyPages`] unless told otherwise.
pub const KEY_PAGE: usize = 500;

/// The single-document operations ledgerd needs from a store.
#[async_trait]
pub trait Store: Send + Sync {
    /// A description for logs, with no secrets (e.g. `sqlite://ledgerd.db`).
    fn describe(&self) -> String;

    /// Creates whatever the store needs (tables, buckets, indexes). Idempotent.
    async fn init(&self) -> StoreResult<()>;

    /// Checks that the store can do what a worker needs (for `/readyz`):
    /// it answers, its buckets exist, discovery works, and (where the store
    /// itself can fail to commit, as an embedded file on a full disk) that
    /// a write commits.
    async fn ping(&self) -> StoreResult<()>;

    /// `ledgerd check`: what the store's own health checks find, one
    /// finding per thing looked at. By default, the probe `/readyz` runs.
    async fn check(&self, _depth: check::Depth) -> Vec<check::Finding> {
        vec![check::Finding::from_result(
            "store",
            self.ping().await,
            "the store answers as a worker needs",
        )]
    }

    /// Reads a document.
    async fn get(&self, bucket: Bucket, key: &str) -> StoreResult<Doc>;

    /// Reads a document's body and the xattrs at `paths`, atomically (at
    /// most [`limits::SUBDOC_SPECS_MAX`] - 1 paths: the body is a spec too).
    async fn get_with_xattrs(&self, bucket: Bucket, key: &str, paths: &[&str]) -> StoreResult<DocWithXattrs>;

    /// Reads and locks a document for `lock`, rounded up to whole seconds
    /// (1 to 30 s, else `LimitExceeded`). Fails with `Locked` if it is locked.
    async fn get_and_lock(&self, bucket: Bucket, key: &str, lock: Duration) -> StoreResult<Doc>;

    /// Releases a lock taken with `get_and_lock`; `cas` is the lock's CAS.
    /// Another CAS on a locked document fails with `Locked` or
    /// `CasMismatch` (the server answers "locked", and the Rust SDK reports
    /// that as a CAS mismatch: callers must not tell them apart); a
    /// document that is not locked fails with `CasMismatch`.
    async fn unlock(&self, bucket: Bucket, key: &str, cas: Cas) -> StoreResult<()>;

    /// Creates a document; fails with `Exists` if the key exists.
    async fn insert(&self, bucket: Bucket, key: &str, body: &[u8]) -> StoreResult<Cas>;

    /// Replaces a document's body if its CAS is still `cas`.
    async fn replace(&self, bucket: Bucket, key: &str, body: &[u8], cas: Cas) -> StoreResult<Cas>;

    /// Removes a document, under `cas` when given.
    async fn remove(&self, bucket: Bucket, key: &str, cas: Option<Cas>) -> StoreResult<()>;

    /// Writes a body and changes xattr paths in ONE atomic mutation:
    /// `Some(value)` sets a path, `None` removes one (which must exist, or
    /// the whole mutation fails with `PathNotFound`). At most
    /// [`limits::SUBDOC_SPECS_MAX`] - 1 paths: the body is a spec too.
    async fn write_with_xattrs(
        &self,
        bucket: Bucket,
        key: &str,
        body: &[u8],
        xattrs: &[(&str, Option<Value>)],
        mode: WriteMode,
    ) -> StoreResult<Cas>;

    /// Runs an ordered group of writes (see [`group`]): stage after stage,
    /// stopping after a stage in which a write failed. By default each is
    /// its own single-document call, a stage's side by side (Couchbase: one
    /// round trip a stage); SQLite commits the whole group at once.
    async fn write_group(&self, group: &WriteGroup) -> GroupResults {
        write_in_stages(self, group).await
    }

    /// Removes one xattr path; `Ok(false)` if the path was absent.
    async fn remove_xattr(&self, bucket: Bucket, key: &str, path: &str) -> StoreResult<bool>;

    /// Sets one xattr path, leaving the body as it is: under `cas` when
    /// given (with a lock's CAS it succeeds on the locked document and
    /// releases the lock, as any mutation with the lock's CAS does), else
    /// whatever the document's CAS (a locked document then fails with
    /// `Locked`). Writes to other paths never make it fail without a CAS:
    /// the server applies sub-document mutations one after the other.
    async fn set_xattr(
        &self,
        bucket: Bucket,
        key: &str,
        path: &str,
        value: &Value,
        cas: Option<Cas>,
    ) -> StoreResult<Cas>;

    /// When a document was created and until when it is locked, where the
    /// store can tell (`NotFound` if it is gone). By default it cannot
    /// (Couchbase Server), and answers at once, without reading anything.
    async fn doc_times(&self, _bucket: Bucket, _key: &str) -> StoreResult<DocTimes> {
        Ok(DocTimes::default())
    }

    /// Counts the documents under `prefix` written before the call: all,
    /// locked now and not carrying the xattr `path`, and carrying it. By
    /// default one lookup each, only when there are at most `probe_max`
    /// (`None`: no limit; beyond, only `total`). The embedded stores count
    /// in one scan; Couchbase in one SQL++ statement, without the locks.
    async fn census(&self, bucket: Bucket, prefix: &str, path: &str, probe_max: Option<u64>) -> StoreResult<Census> {
        census_by_lookups(self, bucket, prefix, path, probe_max).await
    }

    /// Up to `limit` keys starting with `prefix` and greater than `after`,
    /// in ascending byte order; a queued action written a moment before may
    /// be missing (Couchbase reads that index as it is), never from a count.
    async fn list_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>>;

    /// Up to `limit` keys starting with `prefix`, in `shard` (see
    /// [`crate::domain::shard`]) and greater than `after`, in ascending
    /// byte order. By default by listing every key and keeping the shard's:
    /// right, but it reads every key. The stores filter where the keys are,
    /// for queued actions (SQLite: an expression index; Couchbase: a GSI
    /// index over an expression on `META().id`).
    async fn list_shard_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        shard: u32,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        list_shard_keys_by_scan(self, bucket, prefix, shard, after, limit).await
    }

    /// Up to `limit` keys starting with `prefix` whose shard is in
    /// `shards`, in no set order: a member's whole share of a short queue
    /// in one call (fewer than `limit` keys back: that is all of them). By
    /// default by listing every key; the stores read only the range, from
    /// their shard index, for queued actions.
    async fn list_shard_range(
        &self,
        bucket: Bucket,
        prefix: &str,
        shards: std::ops::Range<u32>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        list_shard_range_by_scan(self, bucket, prefix, shards, limit).await
    }

    /// Up to `limit` keys, after `after`, in key order, of the ledger
    /// records that name wallet `hash`: transaction records (`tx:`) whose
    /// `credits` include it, and adjustments (`adj:`) of it. By default by
    /// reading every record (the whole ledger); the stores read an index
    /// by wallet (SQLite: a table kept by triggers; Couchbase: a GSI array
    /// index over the credits' hashes).
    async fn wallet_records(&self, hash: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        wallet_records_by_scan(self, hash, after, limit).await
    }

    /// The documents (key and body) among the first `limit` keys that
    /// start with `prefix` after `after`, in key order, and the key to
    /// read the next page after (`None`: this was the last page): one page
    /// of a sequential read. A document removed between the listing and
    /// its read is left out, so a page may hold fewer than `limit` with
    /// more to come. By default
    /// the page's keys are listed, then read with at most
    /// [`READ_DOCS_IN_FLIGHT`] gets at once (on Couchbase: pipelined
    /// key-value gets, never one round trip per document after another);
    /// the embedded store reads the page in one statement.
    async fn read_docs(&self, bucket: Bucket, prefix: &str, after: Option<&str>, limit: usize) -> StoreResult<DocPage> {
        read_docs_by_key(self, bucket, prefix, after, limit).await
    }

    /// How many keys start with `prefix`, counting every document written
    /// before the call (Couchbase waits for its index: `request_plus`).
    async fn count_keys(&self, bucket: Bucket, prefix: &str) -> StoreResult<u64>;

    /// Up to `limit` documents under `prefix` last written after the CAS
    /// `since`, as `(CAS, key)` in that order, after `after`: what changed
    /// since a point of the store's clock ([`Store::cas_floor`]). A CAS
    /// may be rounded (Couchbase: SQL++ returns it as a JSON number): read
    /// the document for its exact one. By default by reading every
    /// document under the prefix; the stores read an index over the
    /// ledger's CAS values (SQLite: a partial index on `docs(cas)`;
    /// Couchbase: a GSI index on `META().cas`).
    async fn changed_since(
        &self,
        bucket: Bucket,
        prefix: &str,
        since: Cas,
        after: Option<(Cas, String)>,
        limit: usize,
    ) -> StoreResult<Vec<(Cas, String)>> {
        changed_since_by_scan(self, bucket, prefix, since, after, limit).await
    }

    /// A point of the store's clock: a CAS that every write made after
    /// this call exceeds, in `bucket`. By default the CAS of a write made
    /// now (a probe document, removed again), which is that point for a
    /// store whose CAS values come from one counter (the embedded stores);
    /// Couchbase's come from each node's clock, and it subtracts the
    /// clocks' greatest drift.
    async fn cas_floor(&self, bucket: Bucket) -> StoreResult<Cas> {
        cas_of_a_write_now(self, bucket).await
    }
}

/// The CAS of a write made now: a probe document, inserted and removed
/// again (see [`Store::cas_floor`]).
pub async fn cas_of_a_write_now<S: Store + ?Sized>(store: &S, bucket: Bucket) -> StoreResult<Cas> {
    let key = format!("{CAS_PROBE_PREFIX}{:016x}", rand::random::<u64>());
    let cas = store.insert(bucket, &key, b"{}").await?;
    let _ = store.remove(bucket, &key, None).await;
    Ok(cas)
}

/// Keys of the probe documents [`Store::cas_floor`] writes (and removes).
pub const CAS_PROBE_PREFIX: &str = "audit:clock:";

/// [`Store::changed_since`] by reading every document under `prefix`.
pub async fn changed_since_by_scan<S: Store + ?Sized>(
    store: &S,
    bucket: Bucket,
    prefix: &str,
    since: Cas,
    after: Option<(Cas, String)>,
    limit: usize,
) -> StoreResult<Vec<(Cas, String)>> {
    let mut found = Vec::new();
    let mut pages = KeyPages::new(store, bucket, prefix);
    while let Some(page) = pages.next_page().await? {
        for key in page {
            match store.get(bucket, &key).await {
                Ok(doc) if doc.cas > since => found.push((doc.cas, key)),
                Ok(_) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
    }
    found.retain(|entry| after.as_ref().is_none_or(|a| entry > a));
    found.sort();
    found.truncate(limit);
    Ok(found)
}

/// Gets in flight at once in [`Store::read_docs`]'s default: enough to
/// hide a network round trip behind the others (64 reads of a 400-byte
/// record per 0.5 ms round trip is about 50 MB/s), few enough that one
/// reader never floods a node's queue.
pub const READ_DOCS_IN_FLIGHT: usize = 64;

/// [`Store::read_docs`] by listing the keys, then reading them with at
/// most [`READ_DOCS_IN_FLIGHT`] gets in flight, in key order.
pub async fn read_docs_by_key<S: Store + ?Sized>(
    store: &S,
    bucket: Bucket,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<DocPage> {
    use futures::{StreamExt, TryStreamExt};
    let keys = store.list_keys(bucket, prefix, after, limit).await?;
    let next = (keys.len() >= limit.max(1)).then(|| keys.last().cloned()).flatten();
    let docs: Vec<Option<(String, Vec<u8>)>> = futures::stream::iter(keys)
        .map(|key| async move {
            match store.get(bucket, &key).await {
                Ok(doc) => Ok(Some((key, doc.body))),
                Err(StoreError::NotFound) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffered(READ_DOCS_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok((docs.into_iter().flatten().collect(), next))
}

/// [`Store::list_shard_keys`] by listing every key under `prefix` and
/// keeping the shard's: what a store without a shard index does.
pub async fn list_shard_keys_by_scan<S: Store + ?Sized>(
    store: &S,
    bucket: Bucket,
    prefix: &str,
    shard: u32,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<String>> {
    list_shards_by_scan(store, bucket, prefix, shard..shard + 1, after, limit).await
}

/// [`Store::list_shard_range`] by listing every key under `prefix` and
/// keeping those of the range: what a store without a shard index does.
pub async fn list_shard_range_by_scan<S: Store + ?Sized>(
    store: &S,
    bucket: Bucket,
    prefix: &str,
    shards: std::ops::Range<u32>,
    limit: usize,
) -> StoreResult<Vec<String>> {
    list_shards_by_scan(store, bucket, prefix, shards, None, limit).await
}

/// Up to `limit` keys under `prefix` after `after` whose shard is in `shards`.
async fn list_shards_by_scan<S: Store + ?Sized>(
    store: &S,
    bucket: Bucket,
    prefix: &str,
    shards: std::ops::Range<u32>,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<String>> {
    let mut found = Vec::new();
    let mut cursor = after.map(str::to_string);
    while found.len() < limit {
        let page = store.list_keys(bucket, prefix, cursor.as_deref(), KEY_PAGE).await?;
        let last_page = page.len() < KEY_PAGE;
        cursor = page.last().cloned();
        let wanted = limit - found.len();
        found.extend(
            page.into_iter()
                .filter(|k| shards.contains(&crate::domain::shard::shard_of(k)))
                .take(wanted),
        );
        if last_page {
            break;
        }
    }
    Ok(found)
}

/// [`Store::wallet_records`] by reading every `adj:` and `tx:` record.
pub async fn wallet_records_by_scan<S: Store + ?Sized>(
    store: &S,
    hash: &str,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<String>> {
    use crate::domain::keys::{ADJ_PREFIX, TX_PREFIX};
    let mut found = Vec::new();
    // Key order: every `adj:` key sorts before every `tx:` key.
    for prefix in [ADJ_PREFIX, TX_PREFIX] {
        let mut cursor = after.filter(|a| a.starts_with(prefix)).map(str::to_string);
        if after.is_some_and(|a| a >= prefix && !a.starts_with(prefix)) {
            continue;
        }
        loop {
            let page = store
                .list_keys(Bucket::Ledger, prefix, cursor.as_deref(), KEY_PAGE)
                .await?;
            let last_page = page.len() < KEY_PAGE;
            cursor = page.last().cloned();
            for key in page {
                match store.get(Bucket::Ledger, &key).await {
                    Ok(doc) if crate::domain::keys::record_names(&key, &doc.body, hash) => {
                        found.push(key);
                        if found.len() >= limit {
                            return Ok(found);
                        }
                    }
                    Ok(_) | Err(StoreError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            if last_page {
                break;
            }
        }
    }
    Ok(found)
}

/// [`Store::census`] by reading each document (one lookup each), and only
/// when there are at most `probe_max`.
pub async fn census_by_lookups<S: Store + ?Sized>(
    store: &S,
    bucket: Bucket,
    prefix: &str,
    path: &str,
    probe_max: Option<u64>,
) -> StoreResult<Census> {
    let total = store.count_keys(bucket, prefix).await?;
    if probe_max.is_some_and(|max| total > max) {
        return Ok(Census {
            total,
            ..Census::default()
        });
    }
    let (mut all, mut locked, mut marked) = (0u64, 0u64, 0u64);
    let mut pages = KeyPages::new(store, bucket, prefix);
    while let Some(page) = pages.next_page().await? {
        for key in &page {
            match store.get_with_xattrs(bucket, key, &[path]).await {
                Ok(doc) if doc.xattrs.first().is_some_and(Option::is_some) => marked += 1,
                Ok(doc) => locked += u64::from(doc.cas == LOCKED_CAS),
                Err(StoreError::NotFound) => continue,
                Err(e) => return Err(e),
            }
            all += 1;
        }
    }
    Ok(Census {
        total: all,
        locked: Some(locked),
        marked: Some(marked),
        oldest_created_ms: None,
    })
}

/// Runs one write through the store's single-document call.
async fn run_one(store: &(impl Store + ?Sized), write: &GroupWrite, results: &GroupResults) -> StoreResult<Cas> {
    match write {
        GroupWrite::Insert { bucket, key, body } => store.insert(*bucket, key, body).await,
        GroupWrite::Replace { bucket, key, body, cas } => {
            let cas = group::resolve(*cas, results)?;
            store.replace(*bucket, key, body, cas).await
        }
        GroupWrite::Remove { bucket, key, cas } => store.remove(*bucket, key, *cas).await.map(|()| 0),
        GroupWrite::WriteWithXattrs {
            bucket,
            key,
            body,
            xattrs,
            mode,
        } => {
            store
                .write_with_xattrs(*bucket, key, body, &group::xattr_refs(xattrs), *mode)
                .await
        }
    }
}

/// The group run stage after stage, each write a single-document call, the
/// writes of a stage side by side; it stops after a stage in which a write
/// failed. What a store without transactions does.
pub async fn write_in_stages(store: &(impl Store + ?Sized), group: &WriteGroup) -> GroupResults {
    let mut results: GroupResults = Vec::with_capacity(group.len());
    let mut failed = false;
    for stage in group {
        if failed {
            results.push(stage.iter().map(|_| None).collect());
            continue;
        }
        let done: Vec<StoreResult<Cas>> =
            futures::future::join_all(stage.iter().map(|w| run_one(store, w, &results))).await;
        failed = done.iter().any(Result::is_err);
        results.push(done.into_iter().map(Some).collect());
    }
    results
}

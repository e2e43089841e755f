//! The in-memory store: fast, deterministic, and with a clock tests can move.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::model::{self, Mutation, Stored};
use super::{Bucket, Cas, Census, Doc, DocTimes, DocWithXattrs, Store, StoreError, StoreResult, WriteMode};

/// Where the memory store reads the time for lock expiry.
#[derive(Debug, Clone)]
pub enum Clock {
    /// Wall-clock milliseconds.
    System,
    /// Virtual milliseconds that only move when told to.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock starting at zero, and the handle that moves it.
    pub fn manual() -> (Clock, Arc<AtomicU64>) {
        let handle = Arc::new(AtomicU64::new(0));
        (Clock::Manual(handle.clone()), handle)
    }

    fn now_ms(&self) -> u64 {
        match self {
            Clock::System => crate::domain::time::unix_ms_now(),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// The time the next CAS is taken from ([`model::next_cas`]), in
    /// nanoseconds since the epoch. A manual clock's zero stands for
    /// [`MANUAL_CLOCK_ZERO_NS`], so that its CAS values are in the
    /// server's range too, and the same in every run.
    fn cas_time_ns(&self) -> u64 {
        match self {
            Clock::System => model::unix_ns_now(),
            Clock::Manual(ms) => {
                MANUAL_CLOCK_ZERO_NS.saturating_add(ms.load(Ordering::SeqCst).saturating_mul(1_000_000))
            }
        }
    }
}

/// Where a manual clock's zero is on the server's clock, for CAS values:
/// 2024-10-15T13:46:40Z, in nanoseconds since the epoch.
pub const MANUAL_CLOCK_ZERO_NS: u64 = 1_729_000_000_000_000_000;

#[derive(Default)]
struct Inner {
    queue: BTreeMap<String, model::StoredDoc>,
    ledger: BTreeMap<String, model::StoredDoc>,
    last_cas: Cas,
}

impl Inner {
    fn bucket(&mut self, bucket: Bucket) -> &mut BTreeMap<String, model::StoredDoc> {
        match bucket {
            Bucket::Queue => &mut self.queue,
            Bucket::Ledger => &mut self.ledger,
        }
    }

    /// Runs `op` on one key's slot and stores the slot back.
    fn with_slot<T>(
        &mut self,
        bucket: Bucket,
        key: &str,
        now_ns: u64,
        op: impl FnOnce(&mut Stored, Cas) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.last_cas = model::next_cas(self.last_cas, now_ns);
        let new_cas = self.last_cas;
        let map = self.bucket(bucket);
        let mut slot = map.get(key).cloned();
        let out = op(&mut slot, new_cas)?;
        match slot {
            Some(entry) => map.insert(key.to_string(), entry),
            None => map.remove(key),
        };
        Ok(out)
    }
}

/// A store held in process memory. Cloning shares the same data.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    clock: Clock,
    /// Whether its census leaves locks out, as Couchbase's does.
    census_without_locks: bool,
}

impl MemoryStore {
    /// An empty store on the wall clock.
    pub fn new() -> Self {
        Self::with_clock(Clock::System)
    }

    /// An empty store on the given clock.
    pub fn with_clock(clock: Clock) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            clock,
            census_without_locks: false,
        }
    }

    /// The same store (its data shared), counting the queue as Couchbase
    /// does: a census that cannot see locks (`locked` is `None`), which the
    /// data service keeps in memory, out of the indexer's sight.
    pub fn census_without_locks(&self) -> Self {
        Self {
            census_without_locks: true,
            ..self.clone()
        }
    }

    // A std Mutex, not a tokio one: no await happens while it is held.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every document of a bucket as `(key, body)`, for checkers and tests.
    pub fn snapshot(&self, bucket: Bucket) -> Vec<(String, Vec<u8>)> {
        self.lock()
            .bucket(bucket)
            .iter()
            .map(|(k, e)| (k.clone(), e.body.clone()))
            .collect()
    }

    /// One document's body, if it exists, read without any lock rules.
    pub fn peek(&self, bucket: Bucket, key: &str) -> Option<Vec<u8>> {
        self.lock().bucket(bucket).get(key).map(|e| e.body.clone())
    }

    /// The whole xattr object of one document, for checkers and tests.
    pub fn xattrs(&self, bucket: Bucket, key: &str) -> Option<Value> {
        self.lock().bucket(bucket).get(key).map(|e| e.xattrs.clone())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

/// The keys under `prefix` after `after`, in order.
fn keys_after<'a>(
    map: &'a BTreeMap<String, model::StoredDoc>,
    prefix: &'a str,
    after: Option<&str>,
) -> impl Iterator<Item = &'a String> + 'a {
    let start = match after {
        Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_string()),
        _ => std::ops::Bound::Included(prefix.to_string()),
    };
    map.range((start, std::ops::Bound::Unbounded))
        .map(|(k, _)| k)
        .take_while(move |k| k.starts_with(prefix))
}

#[async_trait]
impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory://".to_string()
    }

    async fn init(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn get(&self, bucket: Bucket, key: &str) -> StoreResult<Doc> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        model::get(&inner.bucket(bucket).get(key).cloned(), key, now)
    }

    async fn get_with_xattrs(&self, bucket: Bucket, key: &str, paths: &[&str]) -> StoreResult<DocWithXattrs> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        model::get_with_xattrs(&inner.bucket(bucket).get(key).cloned(), key, paths, now)
    }

    async fn get_and_lock(&self, bucket: Bucket, key: &str, lock: Duration) -> StoreResult<Doc> {
        let now = self.clock.now_ms();
        self.lock()
            .with_slot(bucket, key, self.clock.cas_time_ns(), |slot, cas| {
                model::get_and_lock(slot, key, lock, now, cas)
            })
    }

    async fn unlock(&self, bucket: Bucket, key: &str, cas: Cas) -> StoreResult<()> {
        let now = self.clock.now_ms();
        self.lock().with_slot(bucket, key, self.clock.cas_time_ns(), |slot, _| {
            model::unlock(slot, key, cas, now)
        })
    }

    async fn insert(&self, bucket: Bucket, key: &str, body: &[u8]) -> StoreResult<Cas> {
        let now = self.clock.now_ms();
        self.lock()
            .with_slot(bucket, key, self.clock.cas_time_ns(), |slot, cas| {
                model::insert(slot, key, body, now, cas)
            })
    }

    async fn replace(&self, bucket: Bucket, key: &str, body: &[u8], cas: Cas) -> StoreResult<Cas> {
        let now = self.clock.now_ms();
        self.lock()
            .with_slot(bucket, key, self.clock.cas_time_ns(), |slot, new| {
                model::replace(slot, key, body, cas, now, new)
            })
    }

    async fn remove(&self, bucket: Bucket, key: &str, cas: Option<Cas>) -> StoreResult<()> {
        let now = self.clock.now_ms();
        self.lock().with_slot(bucket, key, self.clock.cas_time_ns(), |slot, _| {
            model::remove(slot, key, cas, now)
        })
    }

    async fn write_with_xattrs(
        &self,
        bucket: Bucket,
        key: &str,
        body: &[u8],
        xattrs: &[(&str, Option<Value>)],
        mode: WriteMode,
    ) -> StoreResult<Cas> {
        let now = self.clock.now_ms();
        self.lock()
            .with_slot(bucket, key, self.clock.cas_time_ns(), |slot, cas| {
                model::write_with_xattrs(slot, key, Mutation { body, xattrs, mode }, now, cas)
            })
    }

    async fn remove_xattr(&self, bucket: Bucket, key: &str, path: &str) -> StoreResult<bool> {
        let now = self.clock.now_ms();
        self.lock()
            .with_slot(bucket, key, self.clock.cas_time_ns(), |slot, cas| {
                model::remove_xattr(slot, key, path, now, cas)
            })
    }

    async fn set_xattr(
        &self,
        bucket: Bucket,
        key: &str,
        path: &str,
        value: &Value,
        cas: Option<Cas>,
    ) -> StoreResult<Cas> {
        let now = self.clock.now_ms();
        self.lock()
            .with_slot(bucket, key, self.clock.cas_time_ns(), |slot, new| {
                model::set_xattr(slot, key, path, value, cas, now, new)
            })
    }

    async fn doc_times(&self, bucket: Bucket, key: &str) -> StoreResult<DocTimes> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        model::times(&inner.bucket(bucket).get(key).cloned(), key, now)
    }

    async fn census(&self, bucket: Bucket, prefix: &str, path: &str, _probe_max: Option<u64>) -> StoreResult<Census> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let mut census = Census::default();
        let (mut locked, mut marked) = (0, 0);
        for (_, e) in inner
            .bucket(bucket)
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            census.total += 1;
            if e.has_xattr(path) {
                marked += 1;
                continue;
            }
            locked += u64::from(e.locked(now));
            census.oldest_created_ms = match (census.oldest_created_ms, e.created_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        (census.locked, census.marked) = (Some(locked), Some(marked));
        if self.census_without_locks {
            census.locked = None;
        }
        Ok(census)
    }

    async fn list_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let mut inner = self.lock();
        Ok(keys_after(inner.bucket(bucket), prefix, after)
            .take(limit)
            .cloned()
            .collect())
    }

    // Keys are filed by shard as Couchbase's index files them, counting
    // bytes (`shard_of_bytes`): the workers trust the listing, never
    // `shard_of`, and so must work whichever the store uses.
    async fn list_shard_range(
        &self,
        bucket: Bucket,
        prefix: &str,
        shards: std::ops::Range<u32>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let mut inner = self.lock();
        Ok(keys_after(inner.bucket(bucket), prefix, None)
            .filter(|k| shards.contains(&crate::domain::shard::shard_of_bytes(k)))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn list_shard_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        shard: u32,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let mut inner = self.lock();
        Ok(keys_after(inner.bucket(bucket), prefix, after)
            .filter(|k| crate::domain::shard::shard_of_bytes(k) == shard)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn count_keys(&self, bucket: Bucket, prefix: &str) -> StoreResult<u64> {
        let mut inner = self.lock();
        let n = inner
            .bucket(bucket)
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .count();
        u64::try_from(n).map_err(|e| StoreError::Permanent(e.to_string()))
    }

    async fn changed_since(
        &self,
        bucket: Bucket,
        prefix: &str,
        since: Cas,
        after: Option<(Cas, String)>,
        limit: usize,
    ) -> StoreResult<Vec<(Cas, String)>> {
        let mut inner = self.lock();
        let mut found: Vec<(Cas, String)> = inner
            .bucket(bucket)
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.cas > since)
            .map(|(k, e)| (e.cas, k.clone()))
            .filter(|entry| after.as_ref().is_none_or(|a| entry > a))
            .collect();
        found.sort();
        found.truncate(limit);
        Ok(found)
    }
}

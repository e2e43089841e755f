//! The Couchbase store, on the official SDK: key-value operations,
//! sub-document lookups and mutations with xattrs, CAS, get-and-lock and
//! durability levels; SQL++ only for discovery, listing and counts.
//!
//! Facts about the SDK this adapter is built around:
//! - it puts no deadline on key-value operations (a locked document, an
//!   unknown bucket or a wrong password can block forever), so every call is
//!   wrapped in `kv_timeout_ms`; a lapsed deadline on a write is "ambiguous";
//! - a sub-document insert on an existing document reports a CAS mismatch,
//!   which means "exists" when the call carried no CAS (see `errors.rs`);
//! - writes to a locked document are retried until the lock lapses by the
//!   default strategy, so every call uses one that surfaces "locked" at once.

mod check;
pub mod errors;
mod init;
pub mod statements;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use couchbase::authenticator::PasswordAuthenticator;
use couchbase::cluster::Cluster;
use couchbase::collection::Collection;
use couchbase::durability_level::DurabilityLevel;
use couchbase::options::cluster_options::ClusterOptions;
use couchbase::options::kv_options::{
    GetAndLockOptions, GetOptions, InsertOptions, LookupInOptions, MutateInOptions, RemoveOptions, ReplaceOptions,
    StoreSemantics, UnlockOptions,
};
use couchbase::options::query_options::{QueryOptions, ScanConsistency};
use couchbase::retry::RetryStrategy;
use couchbase::subdoc::lookup_in_specs::{GetSpecOptions, LookupInSpec};
use couchbase::subdoc::mutate_in_specs::{MutateInSpec, RemoveSpecOptions, UpsertSpecOptions};
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{limits, Bucket, Cas, Census, Doc, DocWithXattrs, Store, StoreError, StoreResult, WriteMode};
use crate::config::Settings;
use crate::domain::keys::{ACTION_PREFIX, BLOCKED_XATTR};
use errors::{deadline_error, map_error, map_query_error, Call, FailFastOnLock};

/// The durability level named in settings.
pub fn durability(name: &str) -> Result<DurabilityLevel, StoreError> {
    match name {
        "majority" => Ok(DurabilityLevel::MAJORITY),
        "majority_and_persist_active" => Ok(DurabilityLevel::MAJORITY_AND_PERSIST_ACTIVE),
        "persist_to_majority" => Ok(DurabilityLevel::PERSIST_TO_MAJORITY),
        "none" => Ok(DurabilityLevel::NONE),
        other => Err(StoreError::Permanent(format!("unknown durability level {other:?}"))),
    }
}

/// A lock time in whole seconds, as Couchbase counts them (rounded up). A
/// time outside 1 to 30 s is refused here: the server would silently lock
/// for its default of 15 s instead (see `limits::LOCK_SECS_MAX`).
pub fn lock_time(lock: Duration) -> StoreResult<Duration> {
    limits::lock_secs(lock).map(Duration::from_secs)
}

/// Couchbase's flags for a body: JSON when it parses as JSON, else binary.
fn flags_for(body: &[u8]) -> u32 {
    let json = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
    let encoded = if json {
        couchbase::transcoding::raw_json::encode(&body).map(|(_, f)| f)
    } else {
        couchbase::transcoding::raw_binary::encode(body).map(|(_, f)| f)
    };
    encoded.unwrap_or(0)
}

/// The store on a Couchbase cluster.
pub struct CouchbaseStore {
    cluster: Cluster,
    queue: Collection,
    ledger: Collection,
    names: (String, String),
    url: String,
    durability: DurabilityLevel,
    kv_timeout: Duration,
    query_timeout: Duration,
    retry: Arc<dyn RetryStrategy>,
    lock_retry: Arc<dyn RetryStrategy>,
    bucket_ram_mb: u64,
    bucket_replicas: u32,
}

impl CouchbaseStore {
    /// Connects with the settings' URL, credentials and bucket names.
    pub async fn connect(settings: &Settings) -> StoreResult<Self> {
        let durability_level = durability(&settings.couchbase_durability)?;
        if durability_level == DurabilityLevel::NONE {
            tracing::warn!("couchbase_durability = none: a node failure can lose acknowledged credits; use it only for single-node development");
        }
        let username = settings.couchbase_username.clone().unwrap_or_default();
        let password = settings
            .couchbase_password
            .as_ref()
            .map(|s| s.expose().to_string())
            .unwrap_or_default();
        if username.is_empty() {
            return Err(StoreError::Permanent(
                "Couchbase needs a user name: set couchbase_username or LEDGERD_COUCHBASE_USERNAME".into(),
            ));
        }
        let retry = FailFastOnLock::shared();
        let options = ClusterOptions::new(PasswordAuthenticator::new(username, password).into())
            .default_retry_strategy(retry.clone());
        let connect_timeout = Duration::from_millis(settings.couchbase_connect_timeout_ms);
        let cluster = match tokio::time::timeout(connect_timeout, Cluster::connect(&settings.store, options)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(StoreError::Permanent(format!(
                    "connecting to {}: {e}",
                    redact(&settings.store)
                )))
            }
            Err(_) => {
                return Err(StoreError::Permanent(format!(
                    "connecting to {}: no answer within {} ms (address, credentials or TLS?)",
                    redact(&settings.store),
                    settings.couchbase_connect_timeout_ms
                )))
            }
        };
        Ok(Self {
            queue: cluster.bucket(settings.queue_bucket.clone()).default_collection(),
            ledger: cluster.bucket(settings.ledger_bucket.clone()).default_collection(),
            cluster,
            names: (settings.queue_bucket.clone(), settings.ledger_bucket.clone()),
            url: redact(&settings.store),
            durability: durability_level,
            kv_timeout: Duration::from_millis(settings.kv_timeout_ms),
            query_timeout: Duration::from_millis(settings.query_timeout_ms),
            retry,
            lock_retry: FailFastOnLock::for_lock_attempts(),
            bucket_ram_mb: settings.couchbase_bucket_ram_mb,
            bucket_replicas: settings.couchbase_bucket_replicas,
        })
    }

    fn collection(&self, bucket: Bucket) -> &Collection {
        match bucket {
            Bucket::Queue => &self.queue,
            Bucket::Ledger => &self.ledger,
        }
    }

    fn bucket_name(&self, bucket: Bucket) -> &str {
        match bucket {
            Bucket::Queue => &self.names.0,
            Bucket::Ledger => &self.names.1,
        }
    }

    /// Runs one key-value call under the deadline and maps its error.
    async fn kv<T>(
        &self,
        call: Call,
        what: &str,
        fut: impl Future<Output = couchbase::error::Result<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(self.kv_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_error(&e, call)),
            Err(_) => Err(deadline_error(call, what, self.kv_timeout.as_millis() as u64)),
        }
    }

    /// Runs a SQL++ statement over `bucket` with named parameters and
    /// collects its rows. Queue listings read the index as it is
    /// (`not_bounded`): discovery must never wait for the indexer, and an
    /// action written a moment ago is found on the next pass. Ledger
    /// listings (`audit`, `history`, `adjust`, `balances`, the sweep) wait
    /// until the index holds every mutation made before the request
    /// (`request_plus`): an operator's answer, or the sum an adjustment is
    /// planned from, must include every record written before it was asked.
    /// (SQL++ "Scan Consistency": https://docs.couchbase.com/server/current/n1ql/n1ql-manage/query-settings.html)
    async fn query_in<T: DeserializeOwned>(
        &self,
        bucket: Bucket,
        statement: String,
        params: &[(&str, Value)],
    ) -> StoreResult<Vec<T>> {
        let consistency = match bucket {
            Bucket::Queue => ScanConsistency::NotBounded,
            Bucket::Ledger => ScanConsistency::RequestPlus,
        };
        self.query_with(consistency, statement, params).await
    }

    /// Runs a SQL++ statement over the system keyspaces (index states,
    /// the server's version), reading them as they are.
    async fn query<T: DeserializeOwned>(&self, statement: String, params: &[(&str, Value)]) -> StoreResult<Vec<T>> {
        self.query_with(ScanConsistency::NotBounded, statement, params).await
    }

    async fn query_with<T: DeserializeOwned>(
        &self,
        consistency: ScanConsistency,
        statement: String,
        params: &[(&str, Value)],
    ) -> StoreResult<Vec<T>> {
        let mut options = QueryOptions::new()
            .scan_consistency(consistency)
            .server_timeout(self.query_timeout)
            .retry_strategy(self.retry.clone());
        for (name, value) in params {
            options = options
                .add_named_parameter(*name, value)
                .map_err(|e| StoreError::Permanent(e.to_string()))?;
        }
        let run = async {
            let mut result = self.cluster.query(statement.clone(), options).await?;
            result.rows::<T>().try_collect::<Vec<T>>().await
        };
        match tokio::time::timeout(self.query_timeout, run).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(map_query_error(&e)),
            Err(_) => Err(deadline_error(
                Call::Read,
                "query",
                self.query_timeout.as_millis() as u64,
            )),
        }
    }
}

/// The URL without any user information, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[async_trait]
impl Store for CouchbaseStore {
    fn describe(&self) -> String {
        format!("{} (buckets {} and {})", self.url, self.names.0, self.names.1)
    }

    async fn init(&self) -> StoreResult<()> {
        init::run(self).await
    }

    async fn check(&self, _depth: crate::store::check::Depth) -> Vec<crate::store::check::Finding> {
        check::run(self).await
    }

    async fn ping(&self) -> StoreResult<()> {
        // A key-value read in each bucket: "not found" proves the cluster
        // answers and the bucket exists.
        for bucket in [Bucket::Queue, Bucket::Ledger] {
            match self.get(bucket, "ledgerd:ping").await {
                Ok(_) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        // And the discovery query, through its index.
        self.list_keys(Bucket::Queue, ACTION_PREFIX, None, 1).await.map(|_| ())
    }

    async fn get(&self, bucket: Bucket, key: &str) -> StoreResult<Doc> {
        let options = GetOptions::new().retry_strategy(self.retry.clone());
        let r = self
            .kv(Call::Read, "get", self.collection(bucket).get(key, options))
            .await?;
        Ok(Doc {
            body: r.content_as_raw().0.to_vec(),
            cas: r.cas(),
        })
    }

    async fn get_with_xattrs(&self, bucket: Bucket, key: &str, paths: &[&str]) -> StoreResult<DocWithXattrs> {
        // Xattr lookups must come before body lookups.
        let mut specs: Vec<LookupInSpec> = paths
            .iter()
            .map(|p| LookupInSpec::get(*p, GetSpecOptions::new().xattr(true)))
            .collect();
        specs.push(LookupInSpec::get("", None));
        let options = LookupInOptions::new().retry_strategy(self.retry.clone());
        let r = self
            .kv(
                Call::Read,
                "lookup_in",
                self.collection(bucket).lookup_in(key, &specs, options),
            )
            .await?;
        let mut xattrs = Vec::with_capacity(paths.len());
        for i in 0..paths.len() {
            let present = r.exists(i).map_err(|e| map_error(&e, Call::Read))?;
            xattrs.push(if present {
                Some(r.content_as::<Value>(i).map_err(|e| map_error(&e, Call::Read))?)
            } else {
                None
            });
        }
        let body = r
            .content_as_raw(paths.len())
            .map_err(|e| map_error(&e, Call::Read))?
            .to_vec();
        Ok(DocWithXattrs {
            body,
            xattrs,
            cas: r.cas(),
        })
    }

    async fn get_and_lock(&self, bucket: Bucket, key: &str, lock: Duration) -> StoreResult<Doc> {
        let lock = lock_time(lock)?;
        let options = GetAndLockOptions::new().retry_strategy(self.lock_retry.clone());
        // A lapsed deadline here may have taken a lock we never learn of: it
        // lapses by itself, so the call is treated as a read that failed.
        let r = self
            .kv(
                Call::Read,
                "get_and_lock",
                self.collection(bucket).get_and_lock(key, lock, options),
            )
            .await?;
        Ok(Doc {
            body: r.content_as_raw().0.to_vec(),
            cas: r.cas(),
        })
    }

    async fn unlock(&self, bucket: Bucket, key: &str, cas: Cas) -> StoreResult<()> {
        let options = UnlockOptions::new().retry_strategy(self.retry.clone());
        self.kv(
            Call::WriteWithCas,
            "unlock",
            self.collection(bucket).unlock(key, cas, options),
        )
        .await
    }

    async fn insert(&self, bucket: Bucket, key: &str, body: &[u8]) -> StoreResult<Cas> {
        let options = InsertOptions::new()
            .durability_level(self.durability.clone())
            .retry_strategy(self.retry.clone());
        let r = self
            .kv(
                Call::Write,
                "insert",
                self.collection(bucket).insert_raw(key, body, flags_for(body), options),
            )
            .await?;
        Ok(r.cas())
    }

    async fn replace(&self, bucket: Bucket, key: &str, body: &[u8], cas: Cas) -> StoreResult<Cas> {
        let options = ReplaceOptions::new()
            .cas(cas)
            .durability_level(self.durability.clone())
            .retry_strategy(self.retry.clone());
        let r = self
            .kv(
                Call::WriteWithCas,
                "replace",
                self.collection(bucket).replace_raw(key, body, flags_for(body), options),
            )
            .await?;
        Ok(r.cas())
    }

    async fn remove(&self, bucket: Bucket, key: &str, cas: Option<Cas>) -> StoreResult<()> {
        let mut options = RemoveOptions::new()
            .durability_level(self.durability.clone())
            .retry_strategy(self.retry.clone());
        let call = match cas {
            Some(c) => {
                options = options.cas(c);
                Call::WriteWithCas
            }
            None => Call::Write,
        };
        self.kv(call, "remove", self.collection(bucket).remove(key, options))
            .await
            .map(|_| ())
    }

    async fn write_with_xattrs(
        &self,
        bucket: Bucket,
        key: &str,
        body: &[u8],
        xattrs: &[(&str, Option<Value>)],
        mode: WriteMode,
    ) -> StoreResult<Cas> {
        // Xattr mutations first, then the whole body (an empty path is a
        // full-document set): one atomic mutation.
        let mut specs: Vec<MutateInSpec> = xattrs
            .iter()
            .map(|(path, value)| match value {
                Some(value) => {
                    let bytes = serde_json::to_vec(value).unwrap_or_default();
                    MutateInSpec::upsert_raw(*path, bytes, UpsertSpecOptions::new().xattr(true).create_path(true))
                }
                None => MutateInSpec::remove(*path, RemoveSpecOptions::new().xattr(true)),
            })
            .collect();
        specs.push(MutateInSpec::replace_raw("", body.to_vec(), None));
        let mut options = MutateInOptions::new()
            .durability_level(self.durability.clone())
            .retry_strategy(self.retry.clone());
        let call = match mode {
            WriteMode::Insert => {
                options = options.store_semantics(StoreSemantics::Insert);
                Call::Write
            }
            WriteMode::Replace(cas) => {
                options = options.store_semantics(StoreSemantics::Replace).cas(cas);
                Call::WriteWithCas
            }
        };
        let r = self
            .kv(
                call,
                "mutate_in",
                self.collection(bucket).mutate_in(key, &specs, options),
            )
            .await?;
        Ok(r.cas())
    }

    async fn remove_xattr(&self, bucket: Bucket, key: &str, path: &str) -> StoreResult<bool> {
        let specs = [MutateInSpec::remove(path, RemoveSpecOptions::new().xattr(true))];
        let options = MutateInOptions::new()
            .durability_level(self.durability.clone())
            .retry_strategy(self.retry.clone());
        let call = self.collection(bucket).mutate_in(key, &specs, options);
        match tokio::time::timeout(self.kv_timeout, call).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if matches!(e.kind(), couchbase::error::ErrorKind::PathNotFound) => Ok(false),
            Ok(Err(e)) => Err(map_error(&e, Call::Write)),
            Err(_) => Err(deadline_error(
                Call::Write,
                "mutate_in",
                self.kv_timeout.as_millis() as u64,
            )),
        }
    }

    async fn set_xattr(
        &self,
        bucket: Bucket,
        key: &str,
        path: &str,
        value: &Value,
        cas: Option<Cas>,
    ) -> StoreResult<Cas> {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        let specs = [MutateInSpec::upsert_raw(
            path,
            bytes,
            UpsertSpecOptions::new().xattr(true).create_path(true),
        )];
        let options = MutateInOptions::new()
            .durability_level(self.durability.clone())
            .retry_strategy(self.retry.clone())
            .store_semantics(StoreSemantics::Replace);
        let (options, call) = match cas {
            Some(cas) => (options.cas(cas), Call::WriteWithCas),
            None => (options, Call::Write),
        };
        let r = self
            .kv(
                call,
                "mutate_in",
                self.collection(bucket).mutate_in(key, &specs, options),
            )
            .await?;
        Ok(r.cas())
    }

    async fn list_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let statement = statements::list_keys(self.bucket_name(bucket), prefix);
        let params = [
            ("after", Value::from(after.unwrap_or(""))),
            ("limit", Value::from(limit as u64)),
        ];
        self.query_in::<String>(bucket, statement, &params).await
    }

    async fn wallet_records(&self, hash: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        use crate::domain::keys::{ADJ_PREFIX, TX_PREFIX};
        let bucket = self.bucket_name(Bucket::Ledger);
        let mut found = Vec::new();
        // Key order: every `adj:` key sorts before every `tx:` key.
        for (prefix, statement) in [
            (ADJ_PREFIX, statements::wallet_adjustments(bucket)),
            (TX_PREFIX, statements::wallet_credits(bucket)),
        ] {
            if found.len() >= limit || after.is_some_and(|a| a >= prefix && !a.starts_with(prefix)) {
                continue;
            }
            let cursor = after.filter(|a| a.starts_with(prefix)).unwrap_or("");
            let params = [
                ("hash", Value::from(hash)),
                ("after", Value::from(cursor)),
                ("limit", Value::from((limit - found.len()) as u64)),
            ];
            found.extend(self.query_in::<String>(Bucket::Ledger, statement, &params).await?);
        }
        Ok(found)
    }

    async fn list_shard_range(
        &self,
        bucket: Bucket,
        prefix: &str,
        shards: std::ops::Range<u32>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        if prefix != ACTION_PREFIX {
            // Only queued actions are indexed by shard.
            return super::list_shard_range_by_scan(self, bucket, prefix, shards, limit).await;
        }
        let statement = statements::list_shard_range(self.bucket_name(bucket));
        let params = [
            ("lo", Value::from(shards.start)),
            ("hi", Value::from(shards.end)),
            ("limit", Value::from(limit as u64)),
        ];
        self.query_in::<String>(bucket, statement, &params).await
    }

    async fn list_shard_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        shard: u32,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        if prefix != ACTION_PREFIX {
            // Only queued actions are indexed by shard.
            return super::list_shard_keys_by_scan(self, bucket, prefix, shard, after, limit).await;
        }
        let statement = statements::list_shard_keys(self.bucket_name(bucket));
        let params = [
            ("shard", Value::from(shard)),
            ("after", Value::from(after.unwrap_or(""))),
            ("limit", Value::from(limit as u64)),
        ];
        self.query_in::<String>(bucket, statement, &params).await
    }

    /// The queue by state in one SQL++ statement over the state index
    /// ([`statements::queue_census`]): no lookup per action, at any queue
    /// size. Locks are out of SQL++'s sight (`locked` is `None`); the
    /// oldest is the action least recently written. Anything else is
    /// counted by lookups.
    async fn census(&self, bucket: Bucket, prefix: &str, path: &str, probe_max: Option<u64>) -> StoreResult<Census> {
        if bucket != Bucket::Queue || prefix != ACTION_PREFIX || path != BLOCKED_XATTR {
            return super::census_by_lookups(self, bucket, prefix, path, probe_max).await;
        }
        #[derive(serde::Deserialize)]
        struct Row {
            total: u64,
            blocked: u64,
            oldest_cas: Option<f64>,
        }
        let statement = statements::queue_census(self.bucket_name(bucket));
        let row = self
            .query_in::<Row>(bucket, statement, &[])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Transient("the queue census returned no row".into()))?;
        Ok(Census {
            total: row.total,
            locked: None,
            marked: Some(row.blocked),
            oldest_created_ms: row.oldest_cas.and_then(cas_to_unix_ms),
        })
    }

    async fn changed_since(
        &self,
        bucket: Bucket,
        prefix: &str,
        since: Cas,
        after: Option<(Cas, String)>,
        limit: usize,
    ) -> StoreResult<Vec<(Cas, String)>> {
        #[derive(serde::Deserialize)]
        struct Row {
            cas: f64,
            id: String,
        }
        let statement = statements::changed_since(self.bucket_name(bucket), prefix);
        let (after_cas, after_id) = after.unwrap_or((0, String::new()));
        let params = [
            ("since", Value::from(since)),
            ("after_cas", Value::from(after_cas)),
            ("after_id", Value::from(after_id)),
            ("limit", Value::from(limit as u64)),
        ];
        Ok(self
            .query_in::<Row>(bucket, statement, &params)
            .await?
            .into_iter()
            .map(|row| (row.cas.max(0.0) as Cas, row.id))
            .collect())
    }

    /// The CAS of a probe written now, less [`CLOCK_DRIFT_MAX`]: a CAS is
    /// the writing node's clock (see [`statements::queue_census`]), and
    /// another node's may run behind it.
    async fn cas_floor(&self, bucket: Bucket) -> StoreResult<Cas> {
        let cas = super::cas_of_a_write_now(self, bucket).await?;
        let drift = u64::try_from(CLOCK_DRIFT_MAX.as_nanos()).unwrap_or(u64::MAX);
        Ok(cas.saturating_sub(drift))
    }

    async fn count_keys(&self, bucket: Bucket, prefix: &str) -> StoreResult<u64> {
        let statement = statements::count_keys(self.bucket_name(bucket), prefix);
        Ok(self
            .query_in::<u64>(bucket, statement, &[])
            .await?
            .first()
            .copied()
            .unwrap_or(0))
    }
}

/// How far apart the clocks of a cluster's nodes may be, for
/// [`Store::cas_floor`]. Couchbase Server does not bound it: it counts
/// writes whose clock is ahead or behind by more than its thresholds
/// (`hlc_drift_ahead_threshold_us`, `hlc_drift_behind_threshold_us`: the
/// `kv_ep_hlc_drift_*` statistics) and recommends synchronising nodes with
/// NTP. A minute is far more than NTP leaves; an audit that starts from a
/// lower point only reads more.
pub const CLOCK_DRIFT_MAX: Duration = Duration::from_secs(60);

/// A CAS as SQL++ returns it (a JSON number: nanoseconds since the epoch,
/// see [`statements::queue_census`]) in Unix milliseconds; `None` for a
/// value that is no time (negative, not finite, or beyond the year 2554).
fn cas_to_unix_ms(cas: f64) -> Option<u64> {
    let ms = (cas / 1e6).floor();
    (ms.is_finite() && ms >= 0.0 && ms < u64::MAX as f64 / 1e6).then_some(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cas_reads_as_the_time_of_the_write() {
        // A CAS as a query returns it (2015-10-21T18:27:36.379Z).
        assert_eq!(cas_to_unix_ms(1.4454516563790397e18), Some(1_445_451_656_379));
        assert_eq!(cas_to_unix_ms(-1.0), None);
        assert_eq!(cas_to_unix_ms(f64::NAN), None);
    }

    #[test]
    fn locks_are_whole_seconds_from_1_to_30_and_nothing_else_is_sent() {
        assert_eq!(lock_time(Duration::from_millis(1)), Ok(Duration::from_secs(1)));
        assert_eq!(lock_time(Duration::from_millis(1_000)), Ok(Duration::from_secs(1)));
        assert_eq!(lock_time(Duration::from_millis(1_001)), Ok(Duration::from_secs(2)));
        assert_eq!(lock_time(Duration::from_millis(15_000)), Ok(Duration::from_secs(15)));
        assert!(matches!(
            lock_time(Duration::from_secs(90)),
            Err(StoreError::LimitExceeded(_))
        ));
        assert!(matches!(lock_time(Duration::ZERO), Err(StoreError::LimitExceeded(_))));
    }

    #[test]
    fn durability_names() {
        assert_eq!(durability("majority"), Ok(DurabilityLevel::MAJORITY));
        assert_eq!(durability("none"), Ok(DurabilityLevel::NONE));
        assert!(durability("most").is_err());
        for name in crate::config::DURABILITY_LEVELS {
            assert!(durability(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn urls_lose_their_credentials_in_logs() {
        assert_eq!(redact("couchbase://user:pw@db1,db2"), "couchbase://db1,db2");
        assert_eq!(redact("couchbases://db.example.com"), "couchbases://db.example.com");
    }

    #[test]
    fn bodies_are_flagged_by_content() {
        assert_ne!(flags_for(b"{\"a\":1}"), flags_for(b"\xff not json"));
        assert_eq!(flags_for(b"12"), flags_for(b"{}"));
    }
}

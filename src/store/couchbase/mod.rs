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

pub mod auth_watch;
mod check;
mod client;
pub mod errors;
mod init;
pub mod plans;
pub mod statements;

use std::time::Duration;

use async_trait::async_trait;
use couchbase::options::kv_options::{
    GetAndLockOptions, GetOptions, InsertOptions, LookupInOptions, MutateInOptions, RemoveOptions, ReplaceOptions,
    StoreSemantics, UnlockOptions,
};
use couchbase::subdoc::lookup_in_specs::{GetSpecOptions, LookupInSpec};
use couchbase::subdoc::mutate_in_specs::{MutateInSpec, RemoveSpecOptions, UpsertSpecOptions};
use serde_json::Value;

use super::{Bucket, Cas, Census, Doc, DocWithXattrs, Store, StoreError, StoreResult, WriteMode};
use crate::domain::keys::{ACTION_PREFIX, BLOCKED_XATTR};
use client::flags_for;
pub use client::{durability, lock_time, CouchbaseStore};
use errors::{deadline_error, map_error, Call};

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
        let statement = statements::list_keys(self.bucket_name(bucket), prefix, after);
        let params = [("limit", Value::from(limit as u64))];
        self.query_in::<String>(bucket, statement, &params).await
    }

    async fn wallet_records(&self, hash: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        use crate::domain::keys::{ADJ_PREFIX, TX_PREFIX};
        let bucket = self.bucket_name(Bucket::Ledger);
        let mut found = Vec::new();
        // Key order: every `adj:` key sorts before every `tx:` key.
        let statements: [(&str, fn(&str, Option<&str>) -> String); 2] = [
            (ADJ_PREFIX, statements::wallet_adjustments),
            (TX_PREFIX, statements::wallet_credits),
        ];
        for (prefix, statement) in statements {
            if found.len() >= limit || after.is_some_and(|a| a >= prefix && !a.starts_with(prefix)) {
                continue;
            }
            let cursor = after.filter(|a| a.starts_with(prefix));
            let params = [
                ("hash", Value::from(hash)),
                ("limit", Value::from((limit - found.len()) as u64)),
            ];
            found.extend(
                self.query_in::<String>(Bucket::Ledger, statement(bucket, cursor), &params)
                    .await?,
            );
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
        let statement = statements::list_shard_keys(self.bucket_name(bucket), after);
        let params = [("shard", Value::from(shard)), ("limit", Value::from(limit as u64))];
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
        let statement = statements::queue_census(self.bucket_name(bucket));
        let row = self
            .query_exact::<statements::CensusRow>(bucket, statement, &[])
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
        let (after_cas, after_id) = statements::changed_since_cursor(prefix, since, after);
        let statement = statements::changed_since(self.bucket_name(bucket), prefix, (after_cas, &after_id));
        let params = [("limit", Value::from(limit as u64))];
        Ok(self
            .query_in::<statements::ChangedRow>(bucket, statement, &params)
            .await?
            .into_iter()
            .map(|row| (row.cas, row.id))
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
            .query_exact::<u64>(bucket, statement, &[])
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

/// A CAS (nanoseconds since the epoch, see [`statements::queue_census`])
/// in Unix milliseconds; `None` for the CAS of a locked document, which
/// is no time.
fn cas_to_unix_ms(cas: Cas) -> Option<u64> {
    (cas != crate::store::LOCKED_CAS).then_some(cas / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cas_reads_as_the_time_of_the_write() {
        // 2015-10-21T18:27:36.379Z, as a server's clock writes it.
        assert_eq!(cas_to_unix_ms(1_445_451_656_379_039_744), Some(1_445_451_656_379));
        assert_eq!(cas_to_unix_ms(crate::store::LOCKED_CAS), None);
    }
}

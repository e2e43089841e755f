//! The embedded store: one SQLite file, safe for several processes at once.
//!
//! Every mutation applies the shared document model (`model.rs`) to its
//! document inside a `BEGIN IMMEDIATE` transaction, so SQLite's write lock
//! makes each operation atomic across processes; a writer thread per
//! process groups the mutations waiting at one moment into one such
//! transaction (group commit, see `threads.rs`), which reads each document
//! at most once and writes each changed one back once, before COMMIT. WAL mode
//! lets readers proceed while one writer commits; `synchronous = FULL`
//! makes every committed write durable before it is acknowledged. Lock
//! expiry is judged by the machine's clock, the same for every process on
//! the machine.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;
use serde_json::Value;

use super::group::{GroupCas, GroupResults, GroupWrite, WriteGroup};
use super::model;
use super::{Bucket, Cas, Census, Doc, DocTimes, DocWithXattrs, Store, StoreError, StoreResult, WriteMode};
use crate::domain::keys::ACTION_PREFIX;
use errors::sql_error;
use jobs::{claim_job, group_write, hand_over, placed};
use open::{connect, SCHEMA};
pub use open::{OpenMode, SqliteStore};
use shard::{list_range_sql, list_shard_sql, prefix_range, seek_from, LIST_KEYS_SQL, READ_DOCS_SQL};

mod changes;
mod check;
mod early;
mod errors;
mod fairness;
mod jobs;
mod open;
mod records;
mod shard;
mod threads;
pub mod wal;

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    async fn init(&self) -> StoreResult<()> {
        self.run(|conn| conn.execute_batch(SCHEMA).map_err(sql_error)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        // A fresh connection, not a pooled one: an open handle keeps working
        // on a file that has been deleted underneath it.
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            if !path.exists() {
                return Err(StoreError::Permanent(format!("{} is gone", path.display())));
            }
            let conn = connect(&path)?;
            conn.query_row("SELECT value FROM cas_seq WHERE id = 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
                .map_err(sql_error)
        })
        .await
        .map_err(|e| StoreError::Permanent(format!("store task failed: {e}")))?
        .map_err(|e| placed(e, &self.path))?;
        // Discovery's own statement, then a write committed by the writer
        // like any other (a full disk fails it).
        self.list_keys(Bucket::Queue, ACTION_PREFIX, None, 1)
            .await
            .map_err(|e| match e {
                StoreError::Fault(f) => StoreError::Fault(f),
                StoreError::Transient(m) => StoreError::Transient(format!("discovery of queued actions fails: {m}")),
                other => StoreError::Permanent(format!("discovery of queued actions fails: {other}")),
            })?;
        self.commit_probe().await.map_err(|e| match e {
            StoreError::Fault(f) => StoreError::Fault(f),
            other => StoreError::Permanent(format!("a write cannot commit: {other}")),
        })
    }

    async fn check(&self, depth: crate::store::check::Depth) -> Vec<crate::store::check::Finding> {
        let path = self.path.clone();
        let mut found = tokio::task::spawn_blocking(move || check::inspect(&path, depth))
            .await
            .unwrap_or_else(|e| {
                vec![crate::store::check::Finding::problem(
                    "file",
                    format!("the check task failed: {e}"),
                )]
            });
        // A damaged file is not written to, not even a probe.
        if found.iter().all(|f| f.ok) {
            found.push(check::writes(
                self.commit_probe().await.map_err(|e| placed(e, &self.path)),
            ));
        }
        found
    }

    async fn get(&self, bucket: Bucket, key: &str) -> StoreResult<Doc> {
        let owned = key.to_string();
        self.read(bucket, key, move |slot, now| model::get(slot, &owned, now))
            .await
    }

    async fn get_with_xattrs(&self, bucket: Bucket, key: &str, paths: &[&str]) -> StoreResult<DocWithXattrs> {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let owned = key.to_string();
        self.read(bucket, key, move |slot, now| {
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            model::get_with_xattrs(slot, &owned, &refs, now)
        })
        .await
    }

    /// Answered once applied, before its batch commits: see `early.rs`.
    async fn get_and_lock(&self, bucket: Bucket, key: &str, lock: Duration) -> StoreResult<Doc> {
        let (job, answered) = claim_job(self.bucket_name(bucket), key.to_string(), lock);
        hand_over(&self.writer, job, answered, "writer")
            .await
            .map_err(|e| placed(e, &self.path))
    }

    async fn unlock(&self, bucket: Bucket, key: &str, cas: Cas) -> StoreResult<()> {
        let owned = key.to_string();
        self.mutate(bucket, key, move |slot, now, _| model::unlock(slot, &owned, cas, now))
            .await
    }

    async fn insert(&self, bucket: Bucket, key: &str, body: &[u8]) -> StoreResult<Cas> {
        self.write_one(GroupWrite::Insert {
            bucket,
            key: key.to_string(),
            body: body.to_vec(),
        })
        .await
    }

    async fn replace(&self, bucket: Bucket, key: &str, body: &[u8], cas: Cas) -> StoreResult<Cas> {
        self.write_one(GroupWrite::Replace {
            bucket,
            key: key.to_string(),
            body: body.to_vec(),
            cas: GroupCas::Known(cas),
        })
        .await
    }

    async fn remove(&self, bucket: Bucket, key: &str, cas: Option<Cas>) -> StoreResult<()> {
        self.write_one(GroupWrite::Remove {
            bucket,
            key: key.to_string(),
            cas,
        })
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
        self.write_one(GroupWrite::WriteWithXattrs {
            bucket,
            key: key.to_string(),
            body: body.to_vec(),
            xattrs: xattrs.iter().map(|(p, v)| (p.to_string(), v.clone())).collect(),
            mode,
        })
        .await
    }

    async fn write_group(&self, group: &WriteGroup) -> GroupResults {
        let named: Vec<Vec<(String, GroupWrite)>> = group
            .iter()
            .map(|stage| {
                stage
                    .iter()
                    .map(|w| (self.bucket_name(w.bucket()), w.clone()))
                    .collect()
            })
            .collect();
        let shape: Vec<usize> = group.iter().map(Vec::len).collect();
        // One job: the whole group goes into one transaction, in order,
        // stopping after a stage in which a write failed.
        let ran = self
            .in_writer(move |tx| {
                let mut results: GroupResults = Vec::with_capacity(named.len());
                let mut failed = false;
                for stage in &named {
                    if failed {
                        results.push(stage.iter().map(|_| None).collect());
                        continue;
                    }
                    let mut done = Vec::with_capacity(stage.len());
                    for (bucket, write) in stage {
                        let result = group_write(tx, bucket, write, &results);
                        failed |= result.is_err();
                        done.push(Some(result));
                    }
                    results.push(done);
                }
                Ok(results)
            })
            .await;
        match ran {
            Ok(results) => results,
            // The transaction's fate: every write that was applied shares it.
            Err(e) => shape
                .iter()
                .map(|n| (0..*n).map(|_| Some(Err(e.clone()))).collect())
                .collect(),
        }
    }

    async fn remove_xattr(&self, bucket: Bucket, key: &str, path: &str) -> StoreResult<bool> {
        let (path, owned) = (path.to_string(), key.to_string());
        self.mutate(bucket, key, move |slot, now, cas| {
            model::remove_xattr(slot, &owned, &path, now, cas)
        })
        .await
    }

    async fn set_xattr(
        &self,
        bucket: Bucket,
        key: &str,
        path: &str,
        value: &Value,
        cas: Option<Cas>,
    ) -> StoreResult<Cas> {
        let (path, value, owned) = (path.to_string(), value.clone(), key.to_string());
        self.mutate(bucket, key, move |slot, now, new| {
            model::set_xattr(slot, &owned, &path, &value, cas, now, new)
        })
        .await
    }

    async fn doc_times(&self, bucket: Bucket, key: &str) -> StoreResult<DocTimes> {
        let owned = key.to_string();
        self.read(bucket, key, move |slot, now| model::times(slot, &owned, now))
            .await
    }

    async fn census(&self, bucket: Bucket, prefix: &str, path: &str, _probe_max: Option<u64>) -> StoreResult<Census> {
        let (lower, upper) = prefix_range(prefix)?;
        let bucket = self.bucket_name(bucket);
        let json_path = format!("$.{path}");
        // The one scan that sees locks: every claim answered early is seen.
        self.unsettled.all_settled().await;
        self.run(move |conn| {
            let now = i64::try_from(threads::clock_ms()).unwrap_or(i64::MAX);
            let (total, locked, marked, oldest): (i64, Option<i64>, Option<i64>, Option<i64>) = conn
                .query_row(
                    "SELECT COUNT(*),
                            SUM(lock_until_ms IS NOT NULL AND lock_until_ms > ?4 AND json_extract(xattrs, ?5) IS NULL),
                            SUM(json_extract(xattrs, ?5) IS NOT NULL),
                            MIN(CASE WHEN json_extract(xattrs, ?5) IS NULL THEN created_ms END)
                     FROM docs WHERE bucket = ?1 AND key >= ?2 AND key < ?3",
                    params![bucket, lower, upper, now, json_path],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(sql_error)?;
            let count = |n: Option<i64>| u64::try_from(n.unwrap_or(0)).unwrap_or(0);
            Ok(Census {
                total: u64::try_from(total).unwrap_or(0),
                locked: Some(count(locked)),
                marked: Some(count(marked)),
                oldest_created_ms: oldest.and_then(|o| u64::try_from(o).ok()),
            })
        })
        .await
    }

    async fn list_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let (lower, upper) = prefix_range(prefix)?;
        let (from, skip) = seek_from(&lower, after);
        let bucket = self.bucket_name(bucket);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(LIST_KEYS_SQL).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![bucket, from, upper, skip, limit], |r| r.get::<_, String>(0))
                .map_err(sql_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
        })
        .await
    }

    async fn read_docs(
        &self,
        bucket: Bucket,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<super::DocPage> {
        let (lower, upper) = prefix_range(prefix)?;
        let (from, skip) = seek_from(&lower, after);
        let bucket = self.bucket_name(bucket);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(READ_DOCS_SQL).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![bucket, from, upper, skip, limit], |r| {
                    Ok((r.get::<_, String>(0)?, threads::body_bytes(r.get_ref(1)?)?))
                })
                .map_err(sql_error)?;
            let docs = rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)?;
            let full = i64::try_from(docs.len()).is_ok_and(|n| n >= limit.max(1));
            let next = full.then(|| docs.last().map(|(k, _)| k.clone())).flatten();
            Ok((docs, next))
        })
        .await
    }

    async fn changed_since(
        &self,
        bucket: Bucket,
        prefix: &str,
        since: Cas,
        after: Option<(Cas, String)>,
        limit: usize,
    ) -> StoreResult<Vec<(Cas, String)>> {
        let Some(sql) = changes::list_sql(prefix).filter(|_| self.changes_index) else {
            return super::changed_since_by_scan(self, bucket, prefix, since, after, limit).await;
        };
        let (lower, upper) = prefix_range(prefix)?;
        let bucket = self.bucket_name(bucket);
        let as_sql = |cas: Cas| i64::try_from(cas).unwrap_or(i64::MAX);
        let (since, (after_cas, after_key)) =
            (as_sql(since), after.map_or((0, String::new()), |(c, k)| (as_sql(c), k)));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![bucket, lower, upper, since, after_cas, after_key, limit], |r| {
                    Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), r.get::<_, String>(1)?))
                })
                .map_err(sql_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
        })
        .await
    }

    async fn wallet_records(&self, hash: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        if !self.wallet_index {
            return super::wallet_records_by_scan(self, hash, after, limit).await;
        }
        let (hash, after) = (hash.to_string(), after.unwrap_or("").to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(records::LIST_SQL).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![hash, after, limit], |r| r.get::<_, String>(0))
                .map_err(sql_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
        })
        .await
    }

    async fn list_shard_range(
        &self,
        bucket: Bucket,
        prefix: &str,
        shards: std::ops::Range<u32>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        if prefix != ACTION_PREFIX || !self.shard_index {
            return super::list_shard_range_by_scan(self, bucket, prefix, shards, limit).await;
        }
        let bucket = self.bucket_name(bucket);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&list_range_sql()).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![bucket, shards.start, shards.end, limit], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(sql_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
        })
        .await
    }

    async fn list_shard_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        shard: u32,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        if prefix != ACTION_PREFIX || !self.shard_index {
            // Only queued actions are indexed by shard.
            return super::list_shard_keys_by_scan(self, bucket, prefix, shard, after, limit).await;
        }
        let bucket = self.bucket_name(bucket);
        let (from, skip) = seek_from(ACTION_PREFIX, after);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&list_shard_sql()).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![bucket, shard, from, skip, limit], |r| r.get::<_, String>(0))
                .map_err(sql_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
        })
        .await
    }

    async fn count_keys(&self, bucket: Bucket, prefix: &str) -> StoreResult<u64> {
        let (lower, upper) = prefix_range(prefix)?;
        let bucket = self.bucket_name(bucket);
        self.run(move |conn| {
            let n: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM docs WHERE bucket = ?1 AND key >= ?2 AND key < ?3",
                    params![bucket, lower, upper],
                    |r| r.get(0),
                )
                .map_err(sql_error)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }
}

#[cfg(test)]
mod tests;

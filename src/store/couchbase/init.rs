//! `ledgerd init` on Couchbase: buckets, then indexes, each only if absent.

use std::time::Duration;

use couchbase::error::ErrorKind;
use couchbase::management::buckets::bucket_settings::BucketSettings;
use serde_json::Value;

use super::{statements, CouchbaseStore};
use crate::store::{StoreError, StoreResult};

/// How long init waits for a new bucket or index to become usable.
const READY_WAIT_MS_MAX: u64 = 180_000;
/// Pause between readiness checks.
const READY_POLL_MS: u64 = 1_000;

pub(super) async fn run(store: &CouchbaseStore) -> StoreResult<()> {
    for name in [store.names.0.clone(), store.names.1.clone()] {
        ensure_bucket(store, &name).await?;
    }
    ensure_indexes(store).await
}

async fn ensure_bucket(store: &CouchbaseStore, name: &str) -> StoreResult<()> {
    let manager = store.cluster.buckets();
    match manager.get_bucket(name, None).await {
        Ok(_) => {
            tracing::info!(bucket = name, "bucket exists");
        }
        Err(e) if matches!(e.kind(), ErrorKind::BucketNotFound) => {
            // create_bucket needs an explicit RAM quota.
            let settings = BucketSettings::new(name)
                .ram_quota_mb(store.bucket_ram_mb)
                .num_replicas(store.bucket_replicas)
                .flush_enabled(false);
            match manager.create_bucket(settings, None).await {
                Ok(()) => tracing::info!(
                    bucket = name,
                    ram_mb = store.bucket_ram_mb,
                    replicas = store.bucket_replicas,
                    "bucket created"
                ),
                // Another `init` created it first.
                Err(e) if matches!(e.kind(), ErrorKind::BucketExists) => {}
                Err(e) => return Err(StoreError::Permanent(format!("creating bucket {name}: {e}"))),
            }
        }
        Err(e) => return Err(StoreError::Permanent(format!("looking up bucket {name}: {e}"))),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(READY_WAIT_MS_MAX);
    let bucket = store.cluster.bucket(name.to_string());
    loop {
        let ready =
            tokio::time::timeout(Duration::from_millis(READY_POLL_MS * 10), bucket.wait_until_ready(None)).await;
        if matches!(ready, Ok(Ok(()))) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(StoreError::Transient(format!(
                "bucket {name} not ready after {READY_WAIT_MS_MAX} ms"
            )));
        }
        tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
    }
}

async fn ensure_indexes(store: &CouchbaseStore) -> StoreResult<()> {
    for (_, name, statement) in statements::create_indexes(&store.names.0, &store.names.1) {
        store
            .query::<Value>(statement, &[])
            .await
            .map_err(|e| with_context(e, name))?;
    }
    // Deferred indexes of one bucket build together, in one scan of its data.
    for bucket in [store.names.0.clone(), store.names.1.clone()] {
        let params = [("bucket", Value::from(bucket.clone()))];
        let deferred: Vec<String> = store.query(statements::deferred_indexes().to_string(), &params).await?;
        if !deferred.is_empty() {
            store
                .query::<Value>(statements::build_indexes(&bucket, &deferred), &[])
                .await?;
            tracing::info!(bucket, indexes = ?deferred, "building indexes");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(READY_WAIT_MS_MAX);
        loop {
            let states: Vec<String> = store.query(statements::index_states().to_string(), &params).await?;
            if !states.is_empty() && states.iter().all(|s| s == "online") {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StoreError::Transient(format!(
                    "indexes of {bucket} not online: {states:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
        }
    }
    Ok(())
}

fn with_context(e: StoreError, index: &str) -> StoreError {
    match e {
        StoreError::Permanent(m) => StoreError::Permanent(format!("creating index {index}: {m}")),
        other => other,
    }
}

//! `ledgerd init` on Couchbase: buckets, then indexes, each only if absent.

use std::time::Duration;

use couchbase::error::ErrorKind;
use couchbase::management::buckets::bucket_settings::BucketSettings;
use serde_json::Value;

use super::client::CouchbaseStore;
use super::statements;
use crate::store::{StoreError, StoreResult};

/// How long init waits for a new bucket or index to become usable.
const READY_WAIT_MS_MAX: u64 = 180_000;
/// Pause between readiness checks.
const READY_POLL_MS: u64 = 1_000;
/// The oldest Couchbase Server ledgerd supports. It needs durable writes
/// (6.5), xattrs in sub-document calls (5.0), get-and-lock, and SQL++ with
/// partial GSI indexes on `META().id`, which every 7.x server has; the
/// binding constraint is the SDK: the Rust SDK 1.x supports Server 7.6 and
/// later, and not 7.0–7.2 (its compatibility matrix).
pub const SERVER_VERSION_MIN: (u32, u32, u32) = (7, 6, 0);

pub(super) async fn run(store: &CouchbaseStore) -> StoreResult<()> {
    check_server_version(store).await?;
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
        let names = statements::index_names(&store.names.0, &store.names.1, &bucket);
        let params = [
            ("bucket", Value::from(bucket.clone())),
            ("names", Value::from(names.clone())),
        ];
        let deferred: Vec<String> = store.query(statements::deferred_indexes(), &params).await?;
        if !deferred.is_empty() {
            store
                .query::<Value>(statements::build_indexes(&bucket, &deferred), &[])
                .await?;
            tracing::info!(bucket, indexes = ?deferred, "building indexes");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(READY_WAIT_MS_MAX);
        loop {
            #[derive(serde::Deserialize, Debug)]
            struct Row {
                name: String,
                state: String,
            }
            let states: Vec<Row> = store.query(statements::index_names_and_states(), &params).await?;
            let online = |name: &str| states.iter().any(|r| r.name == name && r.state == "online");
            if names.iter().all(|name| online(name)) {
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

/// Refuses a server older than [`SERVER_VERSION_MIN`]; a version it cannot
/// read is reported and let through (a proxy may hide it).
async fn check_server_version(store: &CouchbaseStore) -> StoreResult<()> {
    let rows: Vec<Value> = store.query(statements::server_version().to_string(), &[]).await?;
    let text = rows.first().and_then(Value::as_str).unwrap_or_default().to_string();
    match version_supported(&text) {
        Some(true) => {
            tracing::info!(version = text, "Couchbase Server version supported");
            Ok(())
        }
        Some(false) => Err(StoreError::Permanent(format!(
            "Couchbase Server {text} is older than {}.{}.{}, the oldest ledgerd supports: upgrade the cluster",
            SERVER_VERSION_MIN.0, SERVER_VERSION_MIN.1, SERVER_VERSION_MIN.2
        ))),
        None => {
            tracing::warn!(
                answer = ?rows,
                "could not read the Couchbase Server version; ledgerd supports 7.6.0 and later"
            );
            Ok(())
        }
    }
}

/// Whether a version such as `"7.6.2-3721-enterprise"` is supported;
/// `None` when it cannot be read.
pub fn version_supported(text: &str) -> Option<bool> {
    let release = text.split('-').next()?;
    let mut parts = release.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().unwrap_or(Some(0))?;
    Some((major, minor, patch) >= SERVER_VERSION_MIN)
}

fn with_context(e: StoreError, index: &str) -> StoreError {
    match e {
        StoreError::Permanent(m) => StoreError::Permanent(format!("creating index {index}: {m}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::version_supported;

    #[test]
    fn versions_from_7_6_are_supported() {
        assert_eq!(version_supported("7.6.2-3721-enterprise"), Some(true));
        assert_eq!(version_supported("8.0.0-1234-community"), Some(true));
        assert_eq!(version_supported("7.6.0"), Some(true));
        assert_eq!(version_supported("7.2.4-7070-enterprise"), Some(false));
        assert_eq!(version_supported("6.6.5"), Some(false));
        assert_eq!(version_supported("7.10"), Some(true));
        assert_eq!(version_supported(""), None);
        assert_eq!(version_supported("unknown"), None);
    }
}

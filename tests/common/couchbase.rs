//! Shared pieces of the tests that need a real Couchbase.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ledgerd::config::Settings;
use ledgerd::domain::keys::{action_key, balance_key, failed_key};
use ledgerd::domain::Units;
use ledgerd::store::contract::Harness;
use ledgerd::store::couchbase::CouchbaseStore;
use ledgerd::store::{Bucket, Store, StoreError};
use ledgerd::worker::{self, WorkerConfig};

/// Settings for a test cluster: `url`, credentials, and test bucket names.
pub fn settings(url: &str, username: &str, password: &str) -> Settings {
    let durability = std::env::var("LEDGERD_TEST_COUCHBASE_DURABILITY").unwrap_or_else(|_| "majority".into());
    let overrides = vec![
        ("store", url.to_string()),
        ("couchbase_username", username.to_string()),
        ("couchbase_password", password.to_string()),
        ("queue_bucket", "ledgerd_test_queue".to_string()),
        ("ledger_bucket", "ledgerd_test_ledger".to_string()),
        ("couchbase_durability", durability),
        ("couchbase_bucket_replicas", "0".to_string()),
        ("couchbase_bucket_ram_mb", "128".to_string()),
    ];
    Settings::load(None, &overrides).expect("test settings")
}

/// Settings from LEDGERD_TEST_COUCHBASE_URL (+ _USERNAME, _PASSWORD), or
/// `None` when it is not set.
pub fn settings_from_env() -> Option<Settings> {
    let url = std::env::var("LEDGERD_TEST_COUCHBASE_URL").ok()?;
    let user = std::env::var("LEDGERD_TEST_COUCHBASE_USERNAME").unwrap_or_else(|_| "Administrator".into());
    let pass = std::env::var("LEDGERD_TEST_COUCHBASE_PASSWORD").unwrap_or_else(|_| "password".into());
    Some(settings(&url, &user, &pass))
}

/// Runs a test body on a runtime of its own (two worker threads, as the
/// other store tests use).
pub fn block_on<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(body)
}

/// A connected store with its buckets and indexes in place.
pub async fn ready_store(settings: &Settings) -> CouchbaseStore {
    let store = CouchbaseStore::connect(settings, false)
        .await
        .expect("connect to Couchbase");
    store.init().await.expect("ledgerd init on Couchbase");
    store
}

pub struct CouchbaseHarness(pub CouchbaseStore);

#[async_trait]
impl Harness for CouchbaseHarness {
    fn store(&self) -> &dyn Store {
        &self.0
    }
    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }
}

/// Enqueues 200 actions under a run-unique prefix, runs three workers to
/// idle (again while the index catches up), and checks every balance.
pub async fn end_to_end(settings: &Settings) {
    let run = format!("e2e{}", rand::random::<u32>());
    let store: Arc<dyn Store> = Arc::new(ready_store(settings).await);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut invalid = Vec::new();
    for i in 0..200u64 {
        let id = format!("{run}-{i:03}");
        let body = if i % 20 == 0 {
            invalid.push(id.clone());
            r#"{"beneficiaries":{"x":0.000000001}}"#.to_string()
        } else {
            let wallet = format!("{run}-w{}", i % 7);
            let units = 1 + i * 1_000_003;
            *expected.entry(wallet.clone()).or_default() += units;
            format!(
                r#"{{"beneficiaries":{{"{wallet}":"{}"}}}}"#,
                Units::new(units).expect("valid").to_tokens_string()
            )
        };
        store
            .insert(Bucket::Queue, &action_key(&id), body.as_bytes())
            .await
            .expect("enqueue");
    }
    let cfg = WorkerConfig {
        concurrency: 16,
        lease: Duration::from_secs(5),
        page_size: 256,
        idle_backoff_max: Duration::from_millis(500),
        exit_when_idle: true,
        shutdown_grace: Duration::from_secs(10),
        member_timeout: ledgerd::worker::membership::MEMBER_TIMEOUT,
        partition: true,
    };
    for _round in 0..20 {
        let mut runs = Vec::new();
        for _ in 0..3 {
            let handle: Arc<dyn Store> = Arc::new(CouchbaseStore::connect(settings, false).await.expect("connect"));
            runs.push(worker::run(
                handle,
                cfg.clone(),
                Arc::default(),
                std::future::pending::<()>(),
            ));
        }
        futures::future::join_all(runs).await;
        let mut left = 0;
        for i in 0..200u64 {
            if store
                .get(Bucket::Queue, &action_key(&format!("{run}-{i:03}")))
                .await
                .is_ok()
            {
                left += 1;
            }
        }
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for (wallet, units) in &expected {
        let doc = store
            .get(Bucket::Ledger, &balance_key(wallet))
            .await
            .expect("credited wallet");
        assert_eq!(
            Units::parse_balance(&doc.body).expect("balance").get(),
            *units,
            "wallet {wallet}"
        );
    }
    for id in &invalid {
        assert!(
            store.get(Bucket::Queue, &failed_key(id)).await.is_ok(),
            "{id} preserved as failed"
        );
        assert_eq!(
            store.get(Bucket::Queue, &action_key(id)).await.map(|_| ()),
            Err(StoreError::NotFound)
        );
    }
}

//! The connection to a Couchbase cluster: its collections, deadlines and
//! retry strategies, and the calls every operation goes through.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use couchbase::authenticator::PasswordAuthenticator;
use couchbase::cluster::Cluster;
use couchbase::collection::Collection;
use couchbase::durability_level::DurabilityLevel;
use couchbase::options::cluster_options::ClusterOptions;
use couchbase::options::diagnostic_options::WaitUntilReadyOptions;
use couchbase::options::query_options::{QueryOptions, ScanConsistency};
use couchbase::retry::RetryStrategy;
use couchbase::service_type::ServiceType;
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::errors::{deadline_error, map_error, map_query_error, Call, FailFastOnLock};
use crate::config::{Durability, Settings};
use crate::store::types::OpenError;
use crate::store::{limits, Bucket, StoreError, StoreResult};

/// The SDK's durability level for the settings' one.
pub fn durability(level: Durability) -> DurabilityLevel {
    match level {
        Durability::Majority => DurabilityLevel::MAJORITY,
        Durability::MajorityAndPersistActive => DurabilityLevel::MAJORITY_AND_PERSIST_ACTIVE,
        Durability::PersistToMajority => DurabilityLevel::PERSIST_TO_MAJORITY,
        Durability::None => DurabilityLevel::NONE,
    }
}

/// A lock time in whole seconds, as Couchbase counts them (rounded up). A
/// time outside 1 to 30 s is refused here: the server would silently lock
/// for its default of 15 s instead (see `limits::LOCK_SECS_MAX`).
pub fn lock_time(lock: Duration) -> StoreResult<Duration> {
    limits::lock_secs(lock).map(Duration::from_secs)
}

/// Couchbase's flags for a body: JSON when it parses as JSON, else binary.
pub(super) fn flags_for(body: &[u8]) -> u32 {
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
    pub(super) cluster: Cluster,
    pub(super) queue: Collection,
    pub(super) ledger: Collection,
    pub(super) names: (String, String),
    pub(super) url: String,
    pub(super) durability: DurabilityLevel,
    pub(super) kv_timeout: Duration,
    pub(super) query_timeout: Duration,
    pub(super) retry: Arc<dyn RetryStrategy>,
    pub(super) lock_retry: Arc<dyn RetryStrategy>,
    pub(super) bucket_ram_mb: u64,
    pub(super) bucket_replicas: u32,
}

impl CouchbaseStore {
    /// Connects with the settings' URL, credentials and bucket names, all
    /// within `couchbase_connect_timeout_ms`: a refused login fails at
    /// once, naming the user. With `wait_for_buckets`, it also waits until
    /// both buckets' data service answers, so that a command's first write
    /// does not spend its own deadline on the SDK's logins (`init`, which
    /// may create the buckets, does not wait).
    pub async fn connect(settings: &Settings, wait_for_buckets: bool) -> Result<Self, OpenError> {
        let cb = &settings.couchbase;
        let url = &settings.store.url;
        let durability_level = durability(cb.durability);
        if cb.durability == Durability::None {
            tracing::warn!("couchbase_durability = none: a node failure can lose acknowledged credits; use it only for single-node development");
        }
        let username = cb.username.clone().unwrap_or_default();
        let password = cb.password.as_ref().map(|s| s.expose().to_string()).unwrap_or_default();
        if username.is_empty() {
            return Err(OpenError::Config(
                "Couchbase needs a user name: set couchbase_username or LEDGERD_COUCHBASE_USERNAME".into(),
            ));
        }
        let retry = FailFastOnLock::shared();
        let options = ClusterOptions::new(PasswordAuthenticator::new(username.clone(), password).into())
            .default_retry_strategy(retry.clone());
        let connecting = Connecting {
            url: redact(url),
            username,
            deadline: tokio::time::Instant::now() + cb.connect_timeout,
            timeout: cb.connect_timeout,
        };
        let cluster = match connecting.step(Cluster::connect(url, options)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(StoreError::Permanent(format!("connecting to {}: {e}", connecting.url)).into()),
            Err(early) => return Err(connecting.failed(early, "no answer")),
        };
        let store = Self {
            queue: cluster.bucket(settings.store.queue_bucket.clone()).default_collection(),
            ledger: cluster
                .bucket(settings.store.ledger_bucket.clone())
                .default_collection(),
            cluster,
            names: (
                settings.store.queue_bucket.clone(),
                settings.store.ledger_bucket.clone(),
            ),
            url: connecting.url.clone(),
            durability: durability_level,
            kv_timeout: cb.kv_timeout,
            query_timeout: cb.query_timeout,
            retry,
            lock_retry: FailFastOnLock::for_lock_attempts(),
            bucket_ram_mb: cb.bucket_ram_mb,
            bucket_replicas: cb.bucket_replicas,
        };
        if wait_for_buckets {
            store.wait_for_buckets(&connecting).await?;
        }
        Ok(store)
    }

    /// Waits, within the connect deadline, until both buckets' data
    /// service answers (the SDK's `wait_until_ready`).
    async fn wait_for_buckets(&self, connecting: &Connecting) -> Result<(), OpenError> {
        let ready = async {
            for name in [&self.names.0, &self.names.1] {
                let options = WaitUntilReadyOptions::new().service_types(vec![ServiceType::KV]);
                self.cluster.bucket(name.clone()).wait_until_ready(options).await?;
            }
            Ok::<(), couchbase::error::Error>(())
        };
        match connecting.step(ready).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Permanent(format!(
                "connecting to {}: the buckets {} and {} are not ready: {e} (run `ledgerd init` if they do not exist)",
                self.url, self.names.0, self.names.1
            ))
            .into()),
            Err(early) => Err(connecting.failed(early, "the buckets' data service did not answer")),
        }
    }

    pub(super) fn collection(&self, bucket: Bucket) -> &Collection {
        match bucket {
            Bucket::Queue => &self.queue,
            Bucket::Ledger => &self.ledger,
        }
    }

    pub(super) fn bucket_name(&self, bucket: Bucket) -> &str {
        match bucket {
            Bucket::Queue => &self.names.0,
            Bucket::Ledger => &self.names.1,
        }
    }

    /// Runs one key-value call under the deadline and maps its error.
    pub(super) async fn kv<T>(
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
    pub(super) async fn query_in<T: DeserializeOwned>(
        &self,
        bucket: Bucket,
        statement: String,
        params: &[(&str, Value)],
    ) -> StoreResult<Vec<T>> {
        self.query_with(consistency(bucket, Answer::Listing), statement, params)
            .await
    }

    /// Runs a SQL++ statement over `bucket` whose answer must hold every
    /// mutation made before it was asked (`request_plus`), in either
    /// bucket: counts and the census. With the queue's index behind by
    /// half a second, a count read as it is said "98 actions were not
    /// processed" of a queue that was empty, and a census counted 3 of 5.
    pub(super) async fn query_exact<T: DeserializeOwned>(
        &self,
        bucket: Bucket,
        statement: String,
        params: &[(&str, Value)],
    ) -> StoreResult<Vec<T>> {
        self.query_with(consistency(bucket, Answer::Exact), statement, params)
            .await
    }

    /// Runs a SQL++ statement over the system keyspaces (index states,
    /// the server's version), reading them as they are.
    pub(super) async fn query<T: DeserializeOwned>(
        &self,
        statement: String,
        params: &[(&str, Value)],
    ) -> StoreResult<Vec<T>> {
        self.query_with(ScanConsistency::NotBounded, statement, params).await
    }

    /// The server's plan for `statement` (`EXPLAIN`), for the Couchbase
    /// suite's check of `plans.rs`.
    #[cfg(any(test, feature = "test-kit"))]
    pub async fn explain(&self, statement: &str, params: &[(&str, Value)]) -> StoreResult<Value> {
        self.query_for_tests(&format!("EXPLAIN {statement}"), params)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Permanent("EXPLAIN returned no plan".into()))
    }

    /// Any statement's rows, for the Couchbase suite (another
    /// application's index, the state of one).
    #[cfg(any(test, feature = "test-kit"))]
    pub async fn query_for_tests(&self, statement: &str, params: &[(&str, Value)]) -> StoreResult<Vec<Value>> {
        self.query_with(ScanConsistency::RequestPlus, statement.to_string(), params)
            .await
    }

    pub(super) async fn query_with<T: DeserializeOwned>(
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

/// A connection being made: every step within one deadline, and each
/// stopped at once when the server refuses the login.
struct Connecting {
    url: String,
    username: String,
    deadline: tokio::time::Instant,
    timeout: Duration,
}

/// Why a step of connecting ended before its answer.
enum Early {
    /// The server refused the credentials (see `auth_watch`).
    Refused,
    /// The deadline passed.
    Late,
}

impl Connecting {
    /// Runs one step, until the deadline or a refused login.
    async fn step<T>(&self, step: impl Future<Output = T>) -> Result<T, Early> {
        tokio::select! {
            done = tokio::time::timeout_at(self.deadline, step) => done.map_err(|_| Early::Late),
            () = super::auth_watch::refused() => Err(Early::Refused),
        }
    }

    /// The error for a step that ended early; `what` says what did not
    /// answer in time.
    fn failed(&self, early: Early, what: &str) -> OpenError {
        match early {
            // Wrong credentials are the configuration's fault (exit 2).
            Early::Refused => OpenError::Config(format!(
                "authentication failed: {} refused user {:?}: check couchbase_username and couchbase_password \
                 (LEDGERD_COUCHBASE_USERNAME, LEDGERD_COUCHBASE_PASSWORD), and that the user exists on the cluster",
                self.url, self.username
            )),
            Early::Late => OpenError::Store(StoreError::Permanent(format!(
                "connecting to {}: {what} within {} ms (couchbase_connect_timeout_ms): is the address right, \
                 the cluster up and reachable, and TLS (couchbases://) as the cluster expects?",
                self.url,
                self.timeout.as_millis()
            ))),
        }
    }
}

/// What a statement's answer is for: see [`consistency`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    /// A listing: discovery reads the queue as its index is.
    Listing,
    /// A count or a census: every mutation made before it was asked.
    Exact,
}

/// The scan consistency of a statement over `bucket` (SQL++ "Scan
/// Consistency"): `not_bounded` only for listings of the queue, which
/// discovery repeats (an action written a moment ago is found on the next
/// pass, and discovery never waits for the indexer); `request_plus` for
/// everything else.
pub(super) fn consistency(bucket: Bucket, answer: Answer) -> ScanConsistency {
    match (bucket, answer) {
        (Bucket::Queue, Answer::Listing) => ScanConsistency::NotBounded,
        _ => ScanConsistency::RequestPlus,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(durability(Durability::Majority), DurabilityLevel::MAJORITY);
        assert_eq!(durability(Durability::None), DurabilityLevel::NONE);
        for level in Durability::ALL {
            assert_eq!(Durability::parse(level.name()), Some(level));
        }
        assert_eq!(Durability::parse("most"), None);
    }

    #[test]
    fn counts_and_censuses_wait_for_the_index_listings_of_the_queue_do_not() {
        assert_eq!(consistency(Bucket::Queue, Answer::Listing), ScanConsistency::NotBounded);
        assert_eq!(consistency(Bucket::Queue, Answer::Exact), ScanConsistency::RequestPlus);
        assert_eq!(
            consistency(Bucket::Ledger, Answer::Listing),
            ScanConsistency::RequestPlus
        );
        assert_eq!(consistency(Bucket::Ledger, Answer::Exact), ScanConsistency::RequestPlus);
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

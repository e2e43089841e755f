//! The settings, typed and grouped by concern: what the rest of ledgerd
//! reads (the flat keys of the file, environment and flags are `Keys`, in
//! the parent module).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A value that is never printed or logged.
#[derive(Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON lines otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Every setting, typed and grouped by concern. The file, the environment
/// and the flags name each one by its flat key (`lease_ms`,
/// `couchbase_durability`, ...): `Keys` is that layout, converted here once
/// it is valid.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the documents are.
    pub store: StoreSettings,
    /// How a worker takes actions.
    pub worker: WorkerSettings,
    /// Logging.
    pub log: LogSettings,
    /// Couchbase's connection, durability and deadlines.
    pub couchbase: CouchbaseSettings,
    /// Metrics and health.
    pub ops: OpsSettings,
}

/// Where the documents are.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Store URL (`store`): `sqlite://PATH`, `memory://` or `couchbase://HOST[,HOST…]`.
    pub url: String,
    /// Bucket holding `action:` and `failed:` documents (`queue_bucket`).
    pub queue_bucket: String,
    /// Bucket holding `balance:` and `tx:` documents (`ledger_bucket`).
    pub ledger_bucket: String,
}

/// How a worker takes actions.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Actions one process works on at once (`concurrency`).
    pub concurrency: usize,
    /// How long a claimed action stays locked to its worker (`lease_ms`).
    pub lease: Duration,
    /// How long a replica's heartbeat may stay unchanged before the others
    /// take it for dead and divide its share of the queue (it writes one
    /// every fifth of this) (`member_timeout_ms`).
    pub member_timeout: Duration,
    /// Longest pause between discovery passes when the queue is idle
    /// (`idle_backoff_ms_max`).
    pub idle_backoff_max: Duration,
    /// Keys read per discovery query (`discovery_page_size`).
    pub discovery_page_size: usize,
    /// How long in-flight actions may take to finish after SIGTERM/SIGINT
    /// (`shutdown_grace_ms`).
    pub shutdown_grace: Duration,
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Log filter when neither `--log-level` nor `RUST_LOG` is given (`log_level`).
    pub level: String,
    /// Log format (`log_format`).
    pub format: LogFormat,
}

/// Couchbase's connection, durability and deadlines.
#[derive(Debug, Clone)]
pub struct CouchbaseSettings {
    /// User name (`couchbase_username`).
    pub username: Option<String>,
    /// Password, never logged (`couchbase_password`).
    pub password: Option<Secret>,
    /// Durability of every write (`couchbase_durability`).
    pub durability: Durability,
    /// Deadline of every key-value operation (`kv_timeout_ms`).
    pub kv_timeout: Duration,
    /// Deadline of every SQL++ query: discovery, counts, index management
    /// (`query_timeout_ms`).
    pub query_timeout: Duration,
    /// How long connecting may take (`couchbase_connect_timeout_ms`).
    pub connect_timeout: Duration,
    /// RAM quota of each bucket `ledgerd init` creates (`couchbase_bucket_ram_mb`).
    pub bucket_ram_mb: u64,
    /// Replicas of each bucket `ledgerd init` creates (`couchbase_bucket_replicas`).
    pub bucket_replicas: u32,
}

/// Metrics and health.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`metrics_addr`).
    pub metrics_addr: MetricsAddr,
    /// How often `run` samples the queue by state for `/metrics` (`queue_sample_ms`).
    pub queue_sample: Duration,
}

/// Where the metrics and health listener is, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddr {
    /// No listener (`off`).
    Off,
    /// Listen here.
    At(std::net::SocketAddr),
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddr::Off => f.write_str("off"),
            MetricsAddr::At(addr) => write!(f, "{addr}"),
        }
    }
}

/// How many copies of a write Couchbase makes before it answers (Couchbase
/// docs, "Durability"): the credit is acknowledged only then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// In memory on a majority of the replicas (`majority`, the default).
    Majority,
    /// That, and on disk on the active node (`majority_and_persist_active`).
    MajorityAndPersistActive,
    /// On disk on a majority (`persist_to_majority`).
    PersistToMajority,
    /// No guarantee: a node failure can lose acknowledged credits
    /// (`none`; single-node development only).
    None,
}

impl Durability {
    /// Every level, in the order the settings list them.
    pub const ALL: [Durability; 4] = [
        Durability::Majority,
        Durability::MajorityAndPersistActive,
        Durability::PersistToMajority,
        Durability::None,
    ];

    /// The level's name in settings.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Majority => "majority",
            Durability::MajorityAndPersistActive => "majority_and_persist_active",
            Durability::PersistToMajority => "persist_to_majority",
            Durability::None => "none",
        }
    }

    /// The level named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

//! Layered settings: defaults < file (`--config`, TOML) < `LEDGERD_*` environment < flags.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use settings::{
    CouchbaseSettings, Durability, LogFormat, LogSettings, MetricsAddr, OpsSettings, Secret, Settings, StoreSettings,
    WorkerSettings,
};

mod settings;

/// Default store: the embedded SQLite file in the working directory.
pub const DEFAULT_STORE_URL: &str = "sqlite://ledgerd.db";
/// Prefix of the environment variables read as settings.
pub const ENV_PREFIX: &str = "LEDGERD";
/// Longest lease the store's lock allows (Couchbase caps locks at 30 s).
pub const LEASE_MS_MAX: u64 = 30_000;
/// Shortest lease; Couchbase locks have a resolution of one second.
pub const LEASE_MS_MIN: u64 = 1_000;
/// Most actions one process works on at once.
pub const CONCURRENCY_MAX: usize = 1_024;
/// Shortest membership timeout: five heartbeats of 200 ms.
pub const MEMBER_TIMEOUT_MS_MIN: u64 = 1_000;
/// Longest membership timeout: a dead replica's share waits at most this
/// (and a lease) for the others.
pub const MEMBER_TIMEOUT_MS_MAX: u64 = 60_000;
/// Most keys read by one discovery query.
pub const DISCOVERY_PAGE_SIZE_MAX: usize = 10_000;

/// The settings as the file, the environment and the flags name them: one
/// flat table, every key a field.
#[derive(Debug, Clone, Deserialize)]
struct Keys {
    store: String,
    queue_bucket: String,
    ledger_bucket: String,
    concurrency: usize,
    lease_ms: u64,
    member_timeout_ms: u64,
    idle_backoff_ms_max: u64,
    discovery_page_size: usize,
    shutdown_grace_ms: u64,
    log_level: String,
    log_format: LogFormat,
    couchbase_username: Option<String>,
    couchbase_password: Option<Secret>,
    couchbase_durability: String,
    kv_timeout_ms: u64,
    query_timeout_ms: u64,
    couchbase_connect_timeout_ms: u64,
    metrics_addr: String,
    queue_sample_ms: u64,
    couchbase_bucket_ram_mb: u64,
    couchbase_bucket_replicas: u32,
}

/// Log levels a filter may name.
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Checks a log filter such as `info`, `warn,ledgerd=debug` or
/// `ledgerd::worker=trace`. A bare word must be a level: the filter syntax
/// would otherwise take a typo such as `inf` for a target name and silence
/// every other line, errors included.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let is_level = |s: &str| LOG_LEVELS.contains(&s.trim().to_ascii_lowercase().as_str());
    if filter.trim().is_empty() {
        return Err(format!("is empty; use one of {}", LOG_LEVELS.join(", ")));
    }
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            // Span and field filters (`target[span{f=1}]=debug`) are passed on as written.
            _ if directive.contains('[') => continue,
            Some((target, level)) if !target.is_empty() => level,
            _ => directive,
        };
        if !is_level(level) {
            return Err(format!(
                "{filter:?}: {level:?} is not a log level (use {}, optionally as TARGET=LEVEL)",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Keys a config file may contain: the fields of `Keys`.
const KEYS: &[&str] = &[
    "store",
    "queue_bucket",
    "ledger_bucket",
    "concurrency",
    "lease_ms",
    "member_timeout_ms",
    "idle_backoff_ms_max",
    "discovery_page_size",
    "shutdown_grace_ms",
    "log_level",
    "log_format",
    "couchbase_username",
    "couchbase_password",
    "couchbase_durability",
    "kv_timeout_ms",
    "query_timeout_ms",
    "couchbase_connect_timeout_ms",
    "couchbase_bucket_ram_mb",
    "couchbase_bucket_replicas",
    "metrics_addr",
    "queue_sample_ms",
];

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file or a value could not be read. (Not a `#[source]`:
    /// the message already holds it, and an error chain would print it twice.)
    #[error("configuration: {0}")]
    Source(config::ConfigError),
    /// The config file has a key we do not know (probably a typo).
    #[error("configuration file {file}: unknown key `{key}` (known keys: {known})")]
    UnknownKey {
        /// The file.
        file: String,
        /// The unknown key.
        key: String,
        /// The known keys.
        known: String,
    },
    /// A value is out of its allowed range.
    #[error("configuration: `{key}` {why}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        why: String,
    },
}

impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        ConfigError::Source(e)
    }
}

impl Settings {
    /// Loads settings from defaults, an optional TOML file, the environment
    /// and `overrides` (flags), in that order of precedence.
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
        Self::build(file, true, overrides)
    }

    /// The defaults alone: no file, no environment, no flags.
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::build(None, false, &[])
    }

    fn build(file: Option<&Path>, environment: bool, overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .set_default("store", DEFAULT_STORE_URL)?
            .set_default("queue_bucket", "queue")?
            .set_default("ledger_bucket", "ledger")?
            .set_default("concurrency", 64)?
            .set_default("lease_ms", 15_000)?
            .set_default("member_timeout_ms", 10_000)?
            .set_default("idle_backoff_ms_max", 1_000)?
            .set_default("discovery_page_size", 256)?
            .set_default("shutdown_grace_ms", 10_000)?
            .set_default("log_level", "info")?
            .set_default("log_format", "auto")?
            .set_default("couchbase_durability", "majority")?
            .set_default("kv_timeout_ms", 2_500)?
            .set_default("query_timeout_ms", 10_000)?
            .set_default("couchbase_connect_timeout_ms", 15_000)?
            .set_default("couchbase_bucket_ram_mb", 256)?
            .set_default("couchbase_bucket_replicas", 1)?
            .set_default("metrics_addr", "127.0.0.1:9464")?
            .set_default("queue_sample_ms", 15_000)?;
        if let Some(path) = file {
            check_file_keys(path)?;
            builder = builder.add_source(config::File::from(path).required(true));
        }
        if environment {
            builder = builder.add_source(config::Environment::with_prefix(ENV_PREFIX));
        }
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.as_str())?;
        }
        let keys: Keys = builder.build()?.try_deserialize()?;
        keys.settings()
    }
}

impl Keys {
    /// The settings these keys give, or the first key whose value is wrong.
    fn settings(self) -> Result<Settings, ConfigError> {
        let (durability, metrics_addr) = self.validate()?;
        let ms = Duration::from_millis;
        Ok(Settings {
            store: StoreSettings {
                url: self.store,
                queue_bucket: self.queue_bucket,
                ledger_bucket: self.ledger_bucket,
            },
            worker: WorkerSettings {
                concurrency: self.concurrency,
                lease: ms(self.lease_ms),
                member_timeout: ms(self.member_timeout_ms),
                idle_backoff_max: ms(self.idle_backoff_ms_max),
                discovery_page_size: self.discovery_page_size,
                shutdown_grace: ms(self.shutdown_grace_ms),
            },
            log: LogSettings {
                level: self.log_level,
                format: self.log_format,
            },
            couchbase: CouchbaseSettings {
                username: self.couchbase_username,
                password: self.couchbase_password,
                durability,
                kv_timeout: ms(self.kv_timeout_ms),
                query_timeout: ms(self.query_timeout_ms),
                connect_timeout: ms(self.couchbase_connect_timeout_ms),
                bucket_ram_mb: self.couchbase_bucket_ram_mb,
                bucket_replicas: self.couchbase_bucket_replicas,
            },
            ops: OpsSettings {
                metrics_addr,
                queue_sample: ms(self.queue_sample_ms),
            },
        })
    }

    /// Checks every key, in the order the errors are reported; returns the
    /// values a check had to parse (the durability level, the metrics
    /// address), so that they are parsed once.
    fn validate(&self) -> Result<(Durability, MetricsAddr), ConfigError> {
        let invalid = |key, why: String| Err(ConfigError::Invalid { key, why });
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            return invalid(
                "concurrency",
                format!("must be 1 to {CONCURRENCY_MAX}, got {}", self.concurrency),
            );
        }
        if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&self.lease_ms) {
            return invalid(
                "lease_ms",
                format!("must be {LEASE_MS_MIN} to {LEASE_MS_MAX}, got {}", self.lease_ms),
            );
        }
        if !(MEMBER_TIMEOUT_MS_MIN..=MEMBER_TIMEOUT_MS_MAX).contains(&self.member_timeout_ms) {
            return invalid(
                "member_timeout_ms",
                format!(
                    "must be {MEMBER_TIMEOUT_MS_MIN} to {MEMBER_TIMEOUT_MS_MAX}, got {}",
                    self.member_timeout_ms
                ),
            );
        }
        if !(1..=DISCOVERY_PAGE_SIZE_MAX).contains(&self.discovery_page_size) {
            return invalid(
                "discovery_page_size",
                format!(
                    "must be 1 to {DISCOVERY_PAGE_SIZE_MAX}, got {}",
                    self.discovery_page_size
                ),
            );
        }
        if let Err(why) = check_log_filter(&self.log_level) {
            return invalid("log_level", why);
        }
        if self.idle_backoff_ms_max == 0 {
            return invalid("idle_backoff_ms_max", "must be at least 1".into());
        }
        for (key, ms) in [
            ("kv_timeout_ms", self.kv_timeout_ms),
            ("query_timeout_ms", self.query_timeout_ms),
            ("couchbase_connect_timeout_ms", self.couchbase_connect_timeout_ms),
        ] {
            if ms == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        let Some(durability) = Durability::parse(&self.couchbase_durability) else {
            let names: Vec<&str> = Durability::ALL.iter().map(|d| d.name()).collect();
            return invalid(
                "couchbase_durability",
                format!(
                    "must be one of {}, got {:?}",
                    names.join(", "),
                    self.couchbase_durability
                ),
            );
        };
        if self.couchbase_bucket_ram_mb < 100 {
            return invalid(
                "couchbase_bucket_ram_mb",
                "must be at least 100 (Couchbase's minimum)".into(),
            );
        }
        let metrics_addr = match self.metrics_addr.as_str() {
            "off" => MetricsAddr::Off,
            addr => match addr.parse() {
                Ok(addr) => MetricsAddr::At(addr),
                Err(_) => {
                    return invalid(
                        "metrics_addr",
                        format!("must be HOST:PORT (e.g. 0.0.0.0:9464) or off, got {addr:?}"),
                    )
                }
            },
        };
        if self.queue_sample_ms < 1_000 {
            return invalid("queue_sample_ms", "must be at least 1000".into());
        }
        if self.couchbase_bucket_replicas > 3 {
            return invalid("couchbase_bucket_replicas", "must be 0 to 3".into());
        }
        for (key, name) in [
            ("queue_bucket", &self.queue_bucket),
            ("ledger_bucket", &self.ledger_bucket),
        ] {
            if name.is_empty()
                || name.len() > 100
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.%".contains(c))
            {
                return invalid(key, format!("{name:?} is not a valid bucket name"));
            }
        }
        if self.queue_bucket == self.ledger_bucket {
            return invalid("ledger_bucket", "must differ from queue_bucket".into());
        }
        Ok((durability, metrics_addr))
    }
}

fn check_file_keys(path: &Path) -> Result<(), ConfigError> {
    let table = config::Config::builder()
        .add_source(config::File::from(path).required(true))
        .build()?
        .try_deserialize::<std::collections::HashMap<String, config::Value>>()?;
    let mut keys: Vec<&String> = table.keys().collect();
    keys.sort();
    match keys.into_iter().find(|k| !KEYS.contains(&k.as_str())) {
        Some(key) => Err(ConfigError::UnknownKey {
            file: path.display().to_string(),
            key: key.clone(),
            known: KEYS.join(", "),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let f = file("concurrency = 4\nlease_ms = 5000\ncouchbase_password = \"hunter2\"\n");
        let s = Settings::load(Some(f.path()), &[("lease_ms", "7000".into())]).expect("loads");
        assert_eq!(s.worker.concurrency, 4);
        assert_eq!(s.worker.lease, Duration::from_millis(7000));
        assert_eq!(s.store.queue_bucket, "queue");
        assert_eq!(s.couchbase.durability, Durability::Majority);
        assert_eq!(s.ops.metrics_addr.to_string(), "127.0.0.1:9464");
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2"), "secret printed: {debug}");
    }

    #[test]
    fn errors_name_the_key() {
        let f = file("concurency = 4\n");
        let err = Settings::load(Some(f.path()), &[]).expect_err("typo").to_string();
        assert!(err.contains("unknown key `concurency`"), "{err}");
        let f = file("concurrency = \"many\"\n");
        let err = Settings::load(Some(f.path()), &[]).expect_err("bad type").to_string();
        assert!(err.contains("concurrency"), "{err}");
        let err = Settings::load(None, &[("lease_ms", "60000".into())])
            .expect_err("range")
            .to_string();
        assert!(err.contains("`lease_ms` must be 1000 to 30000"), "{err}");
        let err = Settings::load(None, &[("queue_bucket", "ledger".into())])
            .expect_err("same")
            .to_string();
        assert!(err.contains("ledger_bucket"), "{err}");
        let err = Settings::load(None, &[("couchbase_durability", "most".into())])
            .expect_err("not a level")
            .to_string();
        assert!(
            err.contains("`couchbase_durability` must be one of majority, majority_and_persist_active"),
            "{err}"
        );
        let err = Settings::load(None, &[("metrics_addr", "localhost".into())])
            .expect_err("no port")
            .to_string();
        assert!(err.contains("`metrics_addr` must be HOST:PORT"), "{err}");
        let off = Settings::load(None, &[("metrics_addr", "off".into())]).expect("off");
        assert_eq!(off.ops.metrics_addr, MetricsAddr::Off);
        let err = Settings::load(None, &[("log_level", "inf".into())])
            .expect_err("a typo")
            .to_string();
        assert!(
            err.contains("`log_level`") && err.contains("\"inf\" is not a log level"),
            "{err}"
        );
    }

    #[test]
    fn log_filters_must_name_levels() {
        for good in [
            "info",
            "WARN",
            "warn,ledgerd=debug",
            "ledgerd::worker=trace",
            "off",
            "x[span]=debug",
        ] {
            assert_eq!(check_log_filter(good), Ok(()), "{good}");
        }
        for bad in ["inf", "verbose", "", "ledgerd=loud", "info,debugg"] {
            assert!(check_log_filter(bad).is_err(), "{bad}");
        }
    }
}

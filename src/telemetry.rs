//! Logging set-up: JSON lines for machines, readable lines for people.

use std::io::IsTerminal;

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Starts the global subscriber, writing to stderr (stdout carries command
/// output). `filter` is an `EnvFilter` directive such as `info` or
/// `ledgerd=debug`; an invalid one falls back to `info` with a warning.
pub fn init(filter: &str, format: LogFormat) {
    // A bare level keeps the Couchbase SDK's own chatter at WARN; a full
    // directive (`info,couchbase=debug`) is taken as written.
    let filter = if filter.contains('=') || filter.contains(',') {
        filter.to_string()
    } else {
        format!("{filter},couchbase=warn,couchbase_core=warn")
    };
    let filter = filter.as_str();
    let (env_filter, bad_filter) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // The filter is the output's alone: the SDK's refusal of a login is
    // heard whatever level the output shows (see `auth_watch`).
    let output = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let output = if json {
        output
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(env_filter)
            .boxed()
    } else {
        // Colour only where a person reads it: `--log-format pretty` into
        // a pipe or a file gets plain text.
        output
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(env_filter)
            .boxed()
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = tracing_subscriber::registry()
        .with(output)
        .with(crate::store::couchbase::auth_watch::layer())
        .try_init();
    if let Some(e) = bad_filter {
        tracing::warn!(filter, error = %e, "invalid log filter, using info");
    }
}

/// The target of the one line per action (`action done`, rejected,
/// blocked, failed attempts), apart from the worker's lifecycle lines, so
/// that it can be turned down alone: `--log-level info,ledgerd::action=warn`.
pub const ACTION_TARGET: &str = "ledgerd::action";

/// The target of the worker's lifecycle lines ([`lifecycle!`]), wherever
/// in the code they are written, as docs/operations.md promises: a filter
/// or a log pipeline matches them by it.
pub const LIFECYCLE_TARGET: &str = "ledgerd::worker";

/// Which worker wrote a line: carried by the lifecycle lines (started,
/// listening, shutdown, stopped), so that the lines of many replicas can be
/// told apart once collected.
#[derive(Debug)]
pub struct Identity {
    /// The host name (in Kubernetes, the pod's name).
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// The ledgerd version.
    pub version: &'static str,
}

/// This process's identity, read once.
pub fn identity() -> &'static Identity {
    static IDENTITY: std::sync::OnceLock<Identity> = std::sync::OnceLock::new();
    IDENTITY.get_or_init(|| Identity {
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// A lifecycle line with the worker's identity, under
/// [`LIFECYCLE_TARGET`]: at INFO, or at the level given first (`lifecycle!(level: tracing::Level::ERROR, …)`).
#[macro_export]
macro_rules! lifecycle {
    (level: $level:expr, $($field:tt)*) => {{
        let id = $crate::telemetry::identity();
        tracing::event!(
            target: $crate::telemetry::LIFECYCLE_TARGET,
            $level,
            host = id.host.as_str(),
            pid = id.pid,
            version = id.version,
            $($field)*
        )
    }};
    ($($field:tt)*) => {
        $crate::lifecycle!(level: tracing::Level::INFO, $($field)*)
    };
}

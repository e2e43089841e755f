//! `ledgerd init` and `ledgerd run`.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;

use super::{Exit, Usage};
use crate::config::{MetricsAddr, Settings};
use crate::ops::health::Health;
use crate::ops::{http, metrics, sampler};
use crate::store::hooked::Hooked;
use crate::store::{open, OpenMode, Store};
use crate::worker::{self, WorkerConfig};

/// Creates what the store needs.
pub async fn init(settings: &Settings) -> anyhow::Result<Exit> {
    let store = open(settings, OpenMode::Create).await.context("opening the store")?;
    store.init().await.context("initialising the store")?;
    writeln!(std::io::stdout(), "initialised {}", store.describe())?;
    Ok(Exit::Success)
}

/// The worker configuration from settings.
pub fn worker_config(settings: &Settings, exit_when_idle: bool) -> WorkerConfig {
    WorkerConfig {
        concurrency: settings.worker.concurrency,
        lease: settings.worker.lease,
        page_size: settings.worker.discovery_page_size,
        idle_backoff_max: settings.worker.idle_backoff_max,
        exit_when_idle,
        shutdown_grace: settings.worker.shutdown_grace,
        member_timeout: settings.worker.member_timeout,
        partition: true,
    }
}

/// The first SIGTERM/SIGINT stops claiming; a second one exits at once
/// (still safe: whatever was in flight is finished by the next worker).
async fn shutdown_requested() {
    worker::shutdown_signal().await;
    tokio::spawn(async {
        worker::shutdown_signal().await;
        eprintln!("ledgerd: second signal: exiting now");
        std::process::exit(130);
    });
}

/// Starts the metrics and health listener unless `metrics_addr` is `off`.
/// An address that cannot be bound (in use by a second worker on the same
/// host, say) stops the worker at start, as bad configuration: running
/// without the endpoints would leave probes and scrapes on another worker.
async fn serve_ops(
    settings: &Settings,
    store: Arc<dyn Store>,
    health: Arc<Health>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let MetricsAddr::At(addr) = settings.ops.metrics_addr else {
        return Ok(None);
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (another worker on this host?): give each worker its own --metrics-addr, or `off` for none"
            } else {
                ": choose another --metrics-addr, or `off` for none"
            };
            return Err(Usage(format!("cannot listen on metrics_addr {addr}: {e}{hint}")).into());
        }
    };
    let handle = metrics::install()
        .map_err(anyhow::Error::msg)
        .context("installing the metrics recorder")?;
    crate::lifecycle!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    Ok(Some(tokio::spawn(http::serve(
        listener,
        http::Endpoints {
            metrics: handle,
            store,
            health,
        },
        async {
            let _ = stopped.await;
        },
    ))))
}

/// Runs the worker until SIGINT/SIGTERM (or idle, with `exit_when_idle`),
/// serving metrics and health on `metrics_addr` unless it is `off`.
pub async fn run(
    settings: &Settings,
    exit_when_idle: bool,
    bench_report: Option<&std::path::Path>,
) -> anyhow::Result<Exit> {
    // Only `init` creates a store: a worker started on a mistyped path must
    // fail, not drain an empty queue of its own.
    let store = open(settings, OpenMode::Existing).await.context("opening the store")?;
    let (stop_listener, listener_stopped) = tokio::sync::oneshot::channel::<()>();
    let health = Arc::new(Health::default());
    let mut sampler = None;
    let listener = serve_ops(settings, store.clone(), health.clone(), listener_stopped).await?;
    let store: Arc<dyn Store> = if listener.is_some() {
        sampler = Some(tokio::spawn(sampler::sample_queue(
            store.clone(),
            health.clone(),
            settings.ops.queue_sample,
        )));
        Arc::new(Hooked::new(store, metrics::StoreMetrics))
    } else {
        store
    };
    let counter = bench_report.map(|_| Arc::new(Hooked::new(store.clone(), super::counter::OpCounter::default())));
    let store: Arc<dyn Store> = match &counter {
        Some(counter) => counter.clone(),
        None => store,
    };
    let cfg = worker_config(settings, exit_when_idle);
    let stopping = health.clone();
    let shutdown = async move {
        shutdown_requested().await;
        // Not ready from now on: orchestrators see the worker draining.
        stopping.stopping();
    };
    let stats = worker::run(store, cfg, health, shutdown).await;
    if let (Some(path), Some(counter)) = (bench_report, &counter) {
        let report = super::counter::ProcessReport::new(&stats, &counter.hook);
        std::fs::write(path, serde_json::to_vec(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    let _ = stop_listener.send(());
    if let Some(listener) = listener {
        let _ = listener.await;
    }
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    if let Some(why) = stats.stopped {
        return Err(anyhow::Error::msg(why));
    }
    match stats.left {
        Some(left) if left.needs_attention() => Err(anyhow::Error::msg(left_behind_message(&left))),
        _ => Ok(Exit::Success),
    }
}

/// Why `--exit-when-idle` ends as a failure, and what to do.
fn left_behind_message(left: &worker::LeftBehind) -> String {
    let mut parts = Vec::new();
    if left.blocked > 0 {
        parts.push(format!(
            "{} blocked (see `ledgerd queue --state blocked`: repair the wallet named in the reason with `ledgerd adjust`)",
            left.blocked
        ));
    }
    if left.after_errors > 0 {
        parts.push(format!(
            "{} put off after errors (see the log; run again once the store answers)",
            left.after_errors
        ));
    }
    if let Some(why) = &left.unknown {
        parts.push(why.clone());
    }
    if left.locked > 0 {
        parts.push(format!("{} locked by other workers", left.locked));
    }
    format!("the queue is idle but not empty: {}", parts.join("; "))
}

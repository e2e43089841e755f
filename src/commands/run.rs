//! `ledgerd init` and `ledgerd run`.

use std::time::Duration;

use anyhow::Context;

use super::Exit;
use crate::config::Settings;
use crate::store::{open, OpenMode};
use crate::worker::{self, WorkerConfig};

/// Creates what the store needs.
pub async fn init(settings: &Settings) -> anyhow::Result<Exit> {
    let store = open(settings, OpenMode::Create)
        .await
        .context("opening the store")?;
    store.init().await.context("initialising the store")?;
    println!("initialised {}", store.describe());
    Ok(Exit::Success)
}

/// The worker configuration from settings.
pub fn worker_config(settings: &Settings, exit_when_idle: bool) -> WorkerConfig {
    WorkerConfig {
        concurrency: settings.concurrency,
        lease: Duration::from_millis(settings.lease_ms),
        page_size: settings.discovery_page_size,
        idle_backoff_max: Duration::from_millis(settings.idle_backoff_ms_max),
        exit_when_idle,
        shutdown_grace: Duration::from_millis(settings.shutdown_grace_ms),
    }
}

/// Runs the worker until SIGINT/SIGTERM (or idle, with `exit_when_idle`).
pub async fn run(settings: &Settings, exit_when_idle: bool) -> anyhow::Result<Exit> {
    let store = open(settings, OpenMode::Create)
        .await
        .context("opening the store")?;
    store.init().await.context("initialising the store")?;
    worker::run(
        store,
        worker_config(settings, exit_when_idle),
        worker::shutdown_signal(),
    )
    .await;
    Ok(Exit::Success)
}

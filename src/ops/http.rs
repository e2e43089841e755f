//! The operations listener: `/metrics`, `/healthz` and `/readyz` on one
//! address, served by axum on hyper (HTTP/1.1: GET and HEAD, keep-alive,
//! bounded request times, graceful shutdown). The metrics text itself comes
//! from the Prometheus exporter.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;

use crate::ops::health::{self, Health};
use crate::store::Store;

/// The paths served, for probes and scrapers (and the manifests that name them).
pub const METRICS_PATH: &str = "/metrics";
/// Liveness: the process answers.
pub const HEALTH_PATH: &str = "/healthz";
/// Readiness: the worker can discover actions and the store can do what `run` needs.
pub const READY_PATH: &str = "/readyz";

/// How long a client has to send a request's head. It also closes a
/// keep-alive connection idle this long: longer than Prometheus's default
/// 15 s scrape interval, so scrapes reuse their connection.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a request may take once its head is read; a slower answer is a
/// 503 (the store check inside `/readyz` gives up sooner, at
/// [`health::READY_TIMEOUT`]).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, how long requests already being answered may take to finish.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
/// How often histograms are compacted.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the listener needs to answer.
#[derive(Clone)]
pub struct Endpoints {
    /// Renders the metrics.
    pub metrics: PrometheusHandle,
    /// The store `/readyz` checks.
    pub store: Arc<dyn Store>,
    /// What the worker reports about its own ability to work.
    pub health: Arc<Health>,
}

/// The three endpoints. axum answers HEAD wherever GET is routed (same
/// status and headers, no body) and 405 with `Allow` for other methods.
pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route(METRICS_PATH, get(metrics))
        .route(HEALTH_PATH, get(healthz))
        .route(READY_PATH, get(readyz))
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            RESPONSE_TIMEOUT,
        ))
        .with_state(endpoints)
}

/// Serves until `shutdown` completes, then stops accepting and gives the
/// requests being answered up to [`SHUTDOWN_DRAIN`] to finish.
pub async fn serve(listener: TcpListener, endpoints: Endpoints, shutdown: impl Future<Output = ()>) {
    let upkeep = {
        let handle = endpoints.metrics.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        })
    };
    let service = TowerToHyperService::new(router(endpoints));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(REQUEST_HEAD_TIMEOUT)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "ops listener: connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, typically: say so, and do not spin.
                    tracing::warn!(error = %e, "ops listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    upkeep.abort();
    if tokio::time::timeout(SHUTDOWN_DRAIN, graceful.shutdown()).await.is_err() {
        tracing::debug!("ops listener: requests still open at shutdown were cut");
    }
}

async fn metrics(State(endpoints): State<Endpoints>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        endpoints.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(endpoints): State<Endpoints>) -> Response {
    match health::readiness(endpoints.store.as_ref(), &endpoints.health).await {
        Ok(()) => "ready\n".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

//! The operations listener: `/metrics`, `/healthz` and `/readyz` on one
//! address. A deliberately tiny HTTP/1.1 responder (GET only, one request
//! per connection, bounded reads), because these three endpoints are all it
//! serves; the metrics text itself comes from the Prometheus exporter.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::ops::health::Health;
use crate::store::Store;

/// Largest request head read, in bytes.
const REQUEST_BYTES_MAX: usize = 8_192;
/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/readyz` waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often histograms are compacted.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

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

/// Serves until `shutdown` completes.
pub async fn serve(listener: TcpListener, endpoints: Endpoints, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = upkeep.tick() => endpoints.metrics.run_upkeep(),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let endpoints = endpoints.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &endpoints).await {
                            tracing::debug!(error = %e, "ops listener: request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ops listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Ready when the worker's discovery works and the store can do what
/// `run` needs (`Store::ping`: for Couchbase, key-value access to both
/// buckets and the discovery query; for SQLite, a write that commits).
async fn readiness(endpoints: &Endpoints) -> Result<(), String> {
    if let Some(problem) = endpoints.health.problem() {
        return Err(problem);
    }
    match tokio::time::timeout(READY_TIMEOUT, endpoints.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the store did not answer within {} s", READY_TIMEOUT.as_secs())),
    }
}

/// The path of a `GET` request head, if it is one.
fn request_path(head: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => Some(path.split('?').next().unwrap_or(path)),
        _ => None,
    }
}

async fn answer(mut stream: TcpStream, endpoints: &Endpoints) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_BYTES_MAX {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let (status, content_type, body) = match request_path(&head) {
        Some("/metrics") => ("200 OK", "text/plain; version=0.0.4", endpoints.metrics.render()),
        Some("/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        Some("/readyz") => match readiness(endpoints).await {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("not ready: {why}\n")),
        },
        Some(_) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        None => ("405 Method Not Allowed", "text/plain", "GET only\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_get_requests() {
        assert_eq!(
            request_path(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("/metrics")
        );
        assert_eq!(request_path(b"GET /readyz?verbose=1 HTTP/1.1\r\n\r\n"), Some("/readyz"));
        assert_eq!(request_path(b"POST /metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_path(b"\xff\xfe"), None);
        assert_eq!(request_path(b""), None);
    }
}

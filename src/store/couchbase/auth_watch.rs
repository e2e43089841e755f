//! Hearing the server refuse the credentials.
//!
//! The Rust SDK (couchbase-core 1.1, `agent.rs`) bootstraps by logging in
//! to each node; when the server answers a login with "authentication
//! error" (status 0x20), the SDK logs it at WARN ("Failed to connect to
//! endpoint: … authentication error, status: 0x20, opcode: SASL step"),
//! drops the error and tries again, until the caller gives up. So a wrong
//! password read as a timeout, 15 s later. The log line is the only place
//! the SDK says what the server said: this layer listens for it, and
//! [`CouchbaseStore::connect`](super::CouchbaseStore::connect) stops at
//! once with an error that names the user and the settings to check.
//!
//! Only the fact is kept, never the line: it holds no password (the SDK
//! never logs one), but nothing here needs more than "refused".

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

static REFUSED: AtomicBool = AtomicBool::new(false);
static HEARD: Notify = Notify::const_new();

/// What the SDK's log says when the server refuses a login: the text of
/// memcached's status 0x20 (couchbase-core `memdx/status.rs`:
/// `Status::AuthError => "authentication error"`) and of a failed SCRAM
/// exchange (`scram/mod.rs`: "SCRAM authentication error").
const REFUSAL: &str = "authentication error";

/// A layer that notes a login refused by the server, from the SDK's own
/// log lines (targets `couchbase…`, WARN and above), whatever the log
/// filter lets through to the output.
pub fn layer<S: Subscriber>() -> impl Layer<S> {
    AuthWatch
}

struct AuthWatch;

impl<S: Subscriber> Layer<S> for AuthWatch {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !meta.target().starts_with("couchbase") || *meta.level() > tracing::Level::WARN {
            return;
        }
        let mut found = Refusal(false);
        event.record(&mut found);
        if found.0 {
            note_refused();
        }
    }
}

/// Looks for [`REFUSAL`] in an event's fields.
struct Refusal(bool);

impl Visit for Refusal {
    fn record_debug(&mut self, _field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0 && format!("{value:?}").to_ascii_lowercase().contains(REFUSAL) {
            self.0 = true;
        }
    }

    fn record_str(&mut self, _field: &Field, value: &str) {
        if !self.0 && value.to_ascii_lowercase().contains(REFUSAL) {
            self.0 = true;
        }
    }
}

/// Notes that the server refused a login.
fn note_refused() {
    REFUSED.store(true, Ordering::SeqCst);
    HEARD.notify_waiters();
}

/// Completes once the server has refused a login (at once if it already
/// did): the credentials are wrong, and retrying cannot help.
pub async fn refused() {
    loop {
        let heard = HEARD.notified();
        if REFUSED.load(Ordering::SeqCst) {
            return;
        }
        heard.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[tokio::test]
    async fn a_refused_login_in_the_sdks_log_is_heard_and_nothing_else() {
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "couchbase_core::agent", "Failed to connect to endpoint: connection refused");
            tracing::warn!(target: "ledgerd", "authentication error, but not the SDK's");
            tracing::info!(target: "couchbase_core::agent", "authentication error at INFO is no refusal");
        });
        assert!(!REFUSED.load(Ordering::SeqCst));
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                target: "couchbase_core::agent",
                "Failed to connect to endpoint: {} - {}",
                "bootstrap failed",
                "authentication error, status: 0x20, opcode: SASL step"
            );
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), refused())
            .await
            .expect("heard");
    }
}

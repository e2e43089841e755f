//! A claimed action: its body and the lock's current CAS, renewed before
//! the lease lapses while the action is worked on.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::ops::names as m;
use crate::store::{Bucket, Cas, Doc, Store};

/// The action we hold: its body as claimed, and the CAS of our lock, which
/// changes when the lease is renewed.
pub(crate) struct Claim {
    pub body: Vec<u8>,
    cas: AtomicU64,
}

impl Claim {
    pub fn new(doc: Doc) -> Self {
        Self {
            body: doc.body,
            cas: AtomicU64::new(doc.cas),
        }
    }

    /// The CAS of our lock now.
    pub fn cas(&self) -> Cas {
        self.cas.load(Ordering::SeqCst)
    }
}

/// Renews the lock every two thirds of the lease, for as long as it is
/// polled. Renewal is unlock then lock again (Couchbase cannot extend a
/// lock); if another worker takes the action in between, or the body
/// changed, the claim is reported lost and renewal stops. Nothing depends on
/// it for safety: a lost claim only means two workers may run the action,
/// which the protocol makes harmless.
pub(crate) async fn renew(store: &dyn Store, key: &str, claim: &Claim, lease: Duration) -> Infallible {
    let every = lease * 2 / 3;
    loop {
        tokio::time::sleep(every).await;
        let renewed = match store.unlock(Bucket::Queue, key, claim.cas()).await {
            Ok(()) => match store.get_and_lock(Bucket::Queue, key, lease).await {
                Ok(doc) if doc.body == claim.body => {
                    claim.cas.store(doc.cas, Ordering::SeqCst);
                    true
                }
                Ok(doc) => {
                    // Rewritten by a producer: not ours to hold; `finish` sees it.
                    let _ = store.unlock(Bucket::Queue, key, doc.cas).await;
                    false
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        metrics::counter!(m::LEASE_RENEWALS, "result" => if renewed { "renewed" } else { "lost" }).increment(1);
        if !renewed {
            tracing::warn!(
                key,
                lease_ms = lease.as_millis() as u64,
                "lease renewal failed: another worker may take this action over (safe)"
            );
            return std::future::pending().await;
        }
        tracing::debug!(key, "lease renewed");
    }
}

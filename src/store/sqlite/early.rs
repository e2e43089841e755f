//! Claims answered before their batch commits.
//!
//! The writer answers a claim (`get_and_lock`) as soon as it has applied it
//! in its open transaction, without waiting for the COMMIT and its fsync,
//! so that the worker reads the action's wallets while the batch is still
//! being written. A lock is not durable on Couchbase either: libcouchbase's
//! documentation of locking says "Locks are not persistent across nodes (if
//! a node fails over, the lock is not transferred to a replica)", and the
//! Rust SDK's `GetAndLockOptions` take no durability level, unlike its
//! mutations' options. The protocol never depends on a lock for safety
//! (a lock only avoids wasted work), so a claim whose batch then fails to
//! commit is a lock lost, as on a failover: the action stays queued, and
//! the claim's CAS matches nothing (the writer never hands out a CAS value
//! twice, see `writer_loop`).
//!
//! What early answers must not break is read-your-writes within the
//! process: a point read of a document with a claim answered but not yet
//! settled (committed or rolled back) waits until it is; a scan waits for
//! every claim answered before it began. Reads of other documents (the
//! action's wallets) do not wait: that is the point.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;

/// The claims answered before their batch settled.
pub(super) struct Unsettled {
    /// bucket → key → the batch of the latest claim answered early on it.
    keys: Mutex<HashMap<String, HashMap<String, u64>>>,
    /// The last batch whose fate is known (batches are numbered from 1).
    settled: watch::Sender<u64>,
    /// The last batch in which a claim was answered early.
    latest: AtomicU64,
}

impl Unsettled {
    pub(super) fn new() -> Self {
        Self {
            keys: Mutex::default(),
            settled: watch::Sender::new(0),
            latest: AtomicU64::new(0),
        }
    }

    /// The writer, about to answer a claim on `key` applied in `batch`.
    pub(super) fn note(&self, bucket: &str, key: &str, batch: u64) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(bucket.to_string())
            .or_default()
            .insert(key.to_string(), batch);
        self.latest.fetch_max(batch, Ordering::SeqCst);
    }

    /// The writer, once `batch` has committed or rolled back (batches
    /// settle in order, so every earlier one has too).
    pub(super) fn settle(&self, batch: u64) {
        // First the fate, then the entries: a reader that still finds an
        // entry of this batch finds it settled.
        self.settled.send_replace(batch);
        // At most one entry per claim in flight.
        for in_bucket in self.keys.lock().unwrap_or_else(|p| p.into_inner()).values_mut() {
            in_bucket.retain(|_, noted| *noted > batch);
        }
    }

    /// A guard that, when dropped, settles every batch for good.
    pub(super) fn settle_all_on_drop(&self) -> SettleAllOnDrop<'_> {
        SettleAllOnDrop(self)
    }

    /// Waits until no claim answered early on this document is unsettled.
    pub(super) async fn key_settled(&self, bucket: &str, key: &str) {
        let batch = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(bucket)
            .and_then(|in_bucket| in_bucket.get(key))
            .copied();
        if let Some(batch) = batch {
            self.settled_to(batch).await;
        }
    }

    /// Waits until every claim answered early so far is settled.
    pub(super) async fn all_settled(&self) {
        self.settled_to(self.latest.load(Ordering::SeqCst)).await;
    }

    async fn settled_to(&self, batch: u64) {
        let mut settled = self.settled.subscribe();
        // The sender lives as long as `self`: an error cannot happen here.
        let _ = settled.wait_for(|s| *s >= batch).await;
    }
}

/// See [`Unsettled::settle_all_on_drop`].
pub(super) struct SettleAllOnDrop<'a>(&'a Unsettled);

impl Drop for SettleAllOnDrop<'_> {
    fn drop(&mut self) {
        self.0.settled.send_replace(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn finishes(f: impl std::future::Future<Output = ()>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), f).await.is_ok()
    }

    /// A read of a document claimed early waits for that batch; reads of
    /// other documents and of settled batches do not.
    #[tokio::test]
    async fn a_read_waits_only_for_an_unsettled_claim_on_its_own_document() {
        let u = Unsettled::new();
        assert!(finishes(u.key_settled("q", "a")).await);
        assert!(finishes(u.all_settled()).await);
        u.note("q", "a", 1);
        assert!(
            !finishes(u.key_settled("q", "a")).await,
            "the claim's batch is not settled"
        );
        assert!(!finishes(u.all_settled()).await, "a scan waits for every early claim");
        assert!(
            finishes(u.key_settled("q", "b")).await,
            "another document does not wait"
        );
        assert!(
            finishes(u.key_settled("l", "a")).await,
            "the same key in another bucket does not wait"
        );
        u.settle(1);
        assert!(finishes(u.key_settled("q", "a")).await);
        assert!(finishes(u.all_settled()).await);
        let left: usize = u.keys.lock().expect("lock").values().map(HashMap::len).sum();
        assert_eq!(left, 0, "settled entries are dropped");
    }

    /// A document claimed again in a later batch keeps waiting for the
    /// later batch when the earlier one settles.
    #[tokio::test]
    async fn a_later_claim_of_the_same_document_is_not_settled_by_an_earlier_batch() {
        let u = Unsettled::new();
        u.note("q", "a", 1);
        u.note("q", "a", 2);
        u.settle(1);
        assert!(!finishes(u.key_settled("q", "a")).await);
        u.settle(2);
        assert!(finishes(u.key_settled("q", "a")).await);
    }
}

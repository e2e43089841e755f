//! What the contract suite needs of a store under test, and unique keys.

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;

use crate::store::Store;

/// A store under test and a way to let its lock clock move.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The store.
    fn store(&self) -> &dyn Store;
    /// Lets at least `by` pass on the store's clock (sleep, or move a manual clock).
    async fn advance(&self, by: Duration);
}

/// A key no other case or run uses.
pub(super) fn fresh(name: &str) -> String {
    format!("ct:{}:{name}", rand::thread_rng().gen::<u64>())
}

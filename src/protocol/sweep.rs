//! A full pass that prunes every marker whose action is completed.

use serde_json::Value;

use super::apply::prune_if_completed;
use super::Result;
use crate::domain::keys::{BALANCE_PREFIX, MARKERS_XATTR};
use crate::store::{Bucket, Store, StoreError};

/// Wallets read per page of the sweep.
const SWEEP_PAGE_SIZE: usize = 500;

/// Visits every wallet and removes markers of completed actions; returns
/// how many it removed. Markers of actions still in progress stay.
pub async fn sweep_markers(store: &dyn Store) -> Result<u64> {
    let mut removed = 0;
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_keys(Bucket::Ledger, BALANCE_PREFIX, after.as_deref(), SWEEP_PAGE_SIZE)
            .await?;
        let Some(last) = page.last().cloned() else {
            return Ok(removed);
        };
        for key in &page {
            let doc = match store.get_with_xattrs(Bucket::Ledger, key, &[MARKERS_XATTR]).await {
                Ok(doc) => doc,
                Err(StoreError::NotFound) => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(Some(Value::Object(markers))) = doc.xattrs.first() else {
                continue;
            };
            let hash = &key[BALANCE_PREFIX.len()..];
            for (name, value) in markers {
                let Some(action) = value.get("tx").and_then(Value::as_str) else {
                    continue;
                };
                if prune_if_completed(store, hash, &format!("{MARKERS_XATTR}.{name}"), action).await {
                    removed += 1;
                }
            }
        }
        after = Some(last);
    }
}

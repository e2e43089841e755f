//! A full pass that prunes every marker whose action is completed (and
//! every adjustment's marker whose record is applied).

use serde_json::Value;

use super::apply::prune_if_completed;
use super::records::{AdjRecord, AdjState};
use super::Result;
use crate::domain::keys::{adj_key, balance_key, BALANCE_PREFIX, MARKERS_XATTR};
use crate::store::{Bucket, KeyPages, Store, StoreError};

/// Wallets read per page of the sweep.
const SWEEP_PAGE_SIZE: usize = 500;

/// Removes an adjustment's marker if its record says `applied` (`audit`
/// then counts it by its record).
async fn prune_adj_if_applied(store: &dyn Store, hash: &str, path: &str, adj_id: &str) -> bool {
    let key = adj_key(adj_id);
    let applied = match store.get(Bucket::Ledger, &key).await {
        Ok(doc) => AdjRecord::parse(adj_id, &doc.body).is_ok_and(|a| a.state == AdjState::Applied),
        Err(_) => false,
    };
    applied
        && matches!(
            store.remove_xattr(Bucket::Ledger, &balance_key(hash), path).await,
            Ok(true)
        )
}

/// Visits every wallet and removes markers of completed actions; returns
/// how many it removed. Markers of actions still in progress stay.
pub async fn sweep_markers(store: &dyn Store) -> Result<u64> {
    let mut removed = 0;
    let mut pages = KeyPages::sized(store, Bucket::Ledger, BALANCE_PREFIX, SWEEP_PAGE_SIZE);
    while let Some(page) = pages.next_page().await? {
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
                let path = format!("{MARKERS_XATTR}.{name}");
                let pruned = match (value.get("tx"), value.get("adj")) {
                    (Some(Value::String(action)), _) => prune_if_completed(store, hash, &path, action).await,
                    (_, Some(Value::String(adj))) => prune_adj_if_applied(store, hash, &path, adj).await,
                    _ => false,
                };
                removed += u64::from(pruned);
            }
        }
    }
    Ok(removed)
}

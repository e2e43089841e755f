//! A full pass that prunes every marker whose action is completed (and
//! every adjustment's marker whose record is applied).

use super::records::AdjRecord;
use super::wallet::{self, Prune};
use super::Result;
use crate::domain::keys::{adj_key, BALANCE_PREFIX, MARKERS_XATTR};
use crate::domain::{Marker, Markers};
use crate::store::{Bucket, KeyPages, Store, StoreError};

/// Wallets read per page of the sweep.
const SWEEP_PAGE_SIZE: usize = 500;

/// Visits every wallet and removes markers of completed actions (and of
/// applied adjustments); returns how many it removed. Markers of actions
/// still in progress stay.
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
            let markers = Markers::from_xattr(doc.xattrs.into_iter().next().flatten());
            let hash = &key[BALANCE_PREFIX.len()..];
            for (name, marker) in markers.iter() {
                let pruned = match marker {
                    Marker::Credit { action, .. } => {
                        wallet::prune_if_completed(store, hash, name.to_name(), action).await
                    }
                    Marker::Adjustment { id, .. } => {
                        let prune = match store.get(Bucket::Ledger, &adj_key(id)).await {
                            Ok(doc) => AdjRecord::parse(id, &doc.body)
                                .ok()
                                .and_then(|record| Prune::by_adjustment(name.to_name(), id, &record)),
                            Err(_) => None,
                        };
                        match prune {
                            Some(prune) => wallet::remove_marker(store, hash, &prune).await,
                            None => false,
                        }
                    }
                    Marker::Unknown => false,
                };
                removed += u64::from(pruned);
            }
        }
    }
    Ok(removed)
}

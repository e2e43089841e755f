//! `ledgerd failed requeue` and `ledgerd failed purge`: what an operator
//! does with rejected actions once the cause is understood.

use std::io::Write;

use anyhow::Context;
use serde_json::{json, Value};

use super::Exit;
use crate::domain::keys::{action_key, failed_key};
use crate::protocol::records::failed_original;
use crate::store::{Bucket, Store, StoreError};

/// Puts each failed action back in the queue — its original bytes, or
/// `replacement` (a corrected body, for one id) — and only then removes the
/// failed document, so nothing is lost if this is interrupted.
pub async fn requeue(
    store: &dyn Store,
    ids: &[String],
    replacement: Option<Vec<u8>>,
    mut out: impl Write,
) -> anyhow::Result<Exit> {
    if replacement.is_some() && ids.len() != 1 {
        anyhow::bail!("--doc replaces the body of exactly one action; give one id");
    }
    let mut requeued = 0u64;
    let mut exit = Exit::Success;
    for id in ids {
        let failed = match store.get(Bucket::Queue, &failed_key(id)).await {
            Ok(doc) => doc,
            Err(StoreError::NotFound) => {
                eprintln!("{id}: no failed action with this id");
                exit = Exit::Rejected;
                continue;
            }
            Err(e) => return Err(e).context(format!("reading {}", failed_key(id))),
        };
        let body = match &replacement {
            Some(body) => body.clone(),
            None => {
                let doc: Value = serde_json::from_slice(&failed.body).unwrap_or(Value::Null);
                match failed_original(&doc) {
                    Some(original) => original,
                    None => {
                        eprintln!("{id}: the failed document holds no original body; use --doc");
                        exit = Exit::Rejected;
                        continue;
                    }
                }
            }
        };
        match store.insert(Bucket::Queue, &action_key(id), &body).await {
            Ok(_) => {}
            Err(StoreError::Exists) => {
                eprintln!("{id}: already queued; left as it is");
                exit = Exit::Rejected;
                continue;
            }
            Err(e) => return Err(e).context(format!("writing {}", action_key(id))),
        }
        match store.remove(Bucket::Queue, &failed_key(id), Some(failed.cas)).await {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => eprintln!("{id}: requeued, but the failed document stays: {e}"),
        }
        requeued += 1;
    }
    writeln!(out, "{}", json!({"requeued": requeued}))?;
    Ok(exit)
}

/// Deletes failed documents for good.
pub async fn purge(store: &dyn Store, ids: &[String], mut out: impl Write) -> anyhow::Result<Exit> {
    let mut purged = 0u64;
    let mut exit = Exit::Success;
    for id in ids {
        match store.remove(Bucket::Queue, &failed_key(id), None).await {
            Ok(()) => purged += 1,
            Err(StoreError::NotFound) => {
                eprintln!("{id}: no failed action with this id");
                exit = Exit::Rejected;
            }
            Err(e) => return Err(e).context(format!("removing {}", failed_key(id))),
        }
    }
    writeln!(out, "{}", json!({"purged": purged}))?;
    Ok(exit)
}

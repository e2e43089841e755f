//! `ledgerd adjust`: repair one wallet safely, with a trail.

use std::io::Write;

use anyhow::Context;

use super::Exit;
use crate::protocol::adjust::{self, Adjusted, Change};
use crate::protocol::records::now_ms;
use crate::store::Store;

/// A fresh adjustment id: the time, and randomness against collisions.
fn fresh_id() -> String {
    format!("{}-{:08x}", now_ms(), rand::random::<u32>())
}

/// Adjusts one wallet and prints the adjustment record as JSON; a refusal
/// (the balance would leave 0..supply, or `--by` on a wallet that does not
/// hold what the ledger explains) prints why and exits 1, changing nothing.
pub async fn run(
    store: &dyn Store,
    hash: &str,
    change: Change,
    reason: &str,
    id: Option<String>,
    mut out: impl Write,
) -> anyhow::Result<Exit> {
    let id = id.unwrap_or_else(fresh_id);
    match adjust::adjust(store, &id, hash, change, reason)
        .await
        .with_context(|| format!("adjusting wallet {hash}"))?
    {
        Adjusted::Applied(record) => {
            writeln!(out, "{}", serde_json::to_string(&record)?)?;
            Ok(Exit::Success)
        }
        Adjusted::Refused(why) => {
            eprintln!("ledgerd: not adjusted: {why}");
            Ok(Exit::Rejected)
        }
    }
}

//! Read-only views: `balance`, `balances`, `status`; `sweep`.

use std::io::Write;

use anyhow::Context;
use serde_json::json;

use super::Exit;
use crate::domain::keys::{balance_key, BALANCE_PREFIX, FAILED_PREFIX, TX_PREFIX};
use crate::domain::Units;
use crate::store::{Bucket, KeyPages, Store, StoreError};
use crate::worker::membership::MEMBER_TIMEOUT;

/// Pages through the keys under a prefix (see [`KeyPages`]), with errors
/// for a person.
pub(crate) struct Keys<'a>(KeyPages<'a, dyn Store + 'a>);

impl<'a> Keys<'a> {
    pub(crate) fn new(store: &'a dyn Store, bucket: Bucket, prefix: &'static str) -> Self {
        Self(KeyPages::new(store, bucket, prefix))
    }

    /// The next page, or `None` at the end.
    pub(crate) async fn next_page(&mut self) -> anyhow::Result<Option<Vec<String>>> {
        self.0.next_page().await.context("listing keys")
    }
}

/// Reads a document that may have vanished since it was listed.
pub(crate) async fn read(store: &dyn Store, bucket: Bucket, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
    match store.get(bucket, key).await {
        Ok(doc) => Ok(Some(doc.body)),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e).context(format!("reading {key}")),
    }
}

/// `ledgerd balance HASH…`: the human form.
pub async fn balance(store: &dyn Store, hashes: &[String], mut out: impl Write) -> anyhow::Result<Exit> {
    let mut exit = Exit::Success;
    for hash in hashes {
        match store.get(Bucket::Ledger, &balance_key(hash)).await {
            Ok(doc) => match Units::parse_balance(&doc.body) {
                Ok(units) => writeln!(
                    out,
                    "{hash}  {} tokens  ({} units)",
                    units.to_tokens_string(),
                    units.get()
                )?,
                Err(e) => {
                    writeln!(out, "{hash}  INVALID balance document: {e}")?;
                    exit = Exit::Rejected;
                }
            },
            Err(StoreError::NotFound) => {
                writeln!(out, "{hash}  no wallet (never credited, or a mistyped hash)")?;
                exit = Exit::Rejected;
            }
            Err(e) => return Err(e).context(format!("reading {}", balance_key(hash))),
        }
    }
    Ok(exit)
}

/// `ledgerd balances`: JSON Lines sorted by hash.
pub async fn balances(store: &dyn Store, out: &mut (dyn Write + Send)) -> anyhow::Result<Exit> {
    let mut exit = Exit::Success;
    let mut keys = Keys::new(store, Bucket::Ledger, BALANCE_PREFIX);
    while let Some(page) = keys.next_page().await? {
        for key in page {
            let Some(body) = read(store, Bucket::Ledger, &key).await? else {
                continue;
            };
            let hash = &key[BALANCE_PREFIX.len()..];
            let line = match Units::parse_balance(&body) {
                Ok(u) => json!({"hash": hash, "units": u.get(), "tokens": u.to_tokens_string()}),
                Err(e) => {
                    exit = Exit::Rejected;
                    json!({"hash": hash, "error": format!("invalid balance document: {e}")})
                }
            };
            writeln!(out, "{line}")?;
        }
    }
    Ok(exit)
}

/// `ledgerd sweep`: removes every marker whose action is completed; prints how many.
pub async fn sweep(store: &dyn Store, mut out: impl Write) -> anyhow::Result<Exit> {
    let removed = crate::protocol::sweep_markers(store)
        .await
        .context("sweeping markers")?;
    writeln!(out, "removed {removed} markers of completed actions")?;
    Ok(Exit::Success)
}

/// `ledgerd status`: document counts, and the queue by state. Reads every
/// queued action once on a store that cannot count them by state in one
/// scan (Couchbase).
pub async fn status(store: &dyn Store, as_json: bool, mut out: impl Write) -> anyhow::Result<Exit> {
    let count = |bucket, prefix: &'static str| async move {
        store
            .count_keys(bucket, prefix)
            .await
            .with_context(|| format!("counting {prefix} documents"))
    };
    let census = crate::worker::membership::queue_census(store, None, None)
        .await
        .context("counting queued actions by state")?;
    let failed = count(Bucket::Queue, FAILED_PREFIX).await?;
    let transactions = count(Bucket::Ledger, TX_PREFIX).await?;
    let wallets = count(Bucket::Ledger, BALANCE_PREFIX).await?;
    let (ready, locked, blocked) = match census.locked.zip(census.marked) {
        Some((locked, blocked)) => (
            Some(census.total.saturating_sub(locked).saturating_sub(blocked)),
            Some(locked),
            Some(blocked),
        ),
        None => (None, None, None),
    };
    let oldest_age_s = census
        .oldest_created_ms
        .map(|ms| crate::domain::time::unix_ms_now().saturating_sub(ms) / 1000);
    let members = members_json(store).await?;
    if as_json {
        writeln!(
            out,
            "{}",
            json!({
                "queued": census.total, "ready": ready, "locked": locked, "blocked": blocked,
                "oldest_queued_age_s": oldest_age_s,
                "failed": failed, "transactions": transactions, "wallets": wallets,
                "members": members,
            })
        )?;
    } else {
        let shown = |n: Option<u64>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
        writeln!(out, "store         {}", store.describe())?;
        writeln!(
            out,
            "queued        {} ({} ready, {} locked, {} blocked)",
            census.total,
            shown(ready),
            shown(locked),
            shown(blocked)
        )?;
        writeln!(
            out,
            "oldest        {}",
            match (oldest_age_s, census.total) {
                (_, 0) => "-".to_string(),
                (Some(age), _) => format!("{age} s ago"),
                (None, _) => "unknown (the store does not record when actions were queued)".to_string(),
            }
        )?;
        writeln!(out, "failed        {failed}")?;
        writeln!(out, "transactions  {transactions}")?;
        writeln!(out, "wallets       {wallets}")?;
        let silent = members.iter().filter(|m| m["silent"] == true).count();
        writeln!(
            out,
            "members       {} listed, {silent} silent for {} s or more",
            members.len(),
            MEMBER_TIMEOUT.as_secs()
        )?;
        for m in &members {
            writeln!(
                out,
                "  {} {} pid {} ({}), {} shards, last heartbeat {} s ago",
                m["id"].as_str().unwrap_or("?"),
                m["host"].as_str().unwrap_or("?"),
                m["pid"],
                m["version"].as_str().unwrap_or("?"),
                m["shards"],
                m["heartbeat_age_s"]
            )?;
        }
    }
    Ok(Exit::Success)
}

/// The replicas the members document lists, for operators: who, how many
/// shards each owns, and how long ago its last heartbeat was written (by
/// its own clock against this host's; silent for [`MEMBER_TIMEOUT`], the
/// default timeout, it is probably dead).
async fn members_json(store: &dyn Store) -> anyhow::Result<Vec<serde_json::Value>> {
    let now_ms = crate::domain::time::unix_ms_now();
    let listed = crate::worker::membership::listed(store)
        .await
        .context("reading the members document")?;
    Ok(listed
        .into_iter()
        .map(|(id, beat)| {
            let age_s = now_ms.saturating_sub(beat.at_ms) / 1000;
            json!({
                "id": id, "host": beat.host, "pid": beat.pid, "version": beat.version,
                "shards": beat.shards, "heartbeat_age_s": age_s,
                "silent": age_s >= MEMBER_TIMEOUT.as_secs(),
            })
        })
        .collect())
}

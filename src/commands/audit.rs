//! `ledgerd audit`: recompute every wallet from the transaction records and
//! compare with its balance; `tx` and `history` read the same records.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::inspect::{read, Keys};
use super::Exit;
use crate::domain::keys::{balance_key, marker_path, tx_key, BALANCE_PREFIX, TX_PREFIX};
use crate::domain::Units;
use crate::protocol::records::{now_ms, TxRecord, TxState};
use crate::store::{Bucket, Store, StoreError};

/// The ledger document holding balances that came from outside ledgerd.
pub const OPENING_KEY: &str = "audit:opening";
/// Documents between two progress updates.
const PROGRESS_EVERY: u64 = 500;

/// A progress line on stderr, only when stderr is a terminal.
struct Progress {
    label: &'static str,
    count: u64,
    shown: bool,
}

impl Progress {
    fn new(label: &'static str) -> Self {
        Self {
            label,
            count: 0,
            shown: std::io::stderr().is_terminal(),
        }
    }
    fn tick(&mut self) {
        self.count += 1;
        if self.shown && self.count % PROGRESS_EVERY == 0 {
            eprint!("\r{}: {} …", self.label, self.count);
        }
    }
    fn done(&self) {
        if self.shown && self.count >= PROGRESS_EVERY {
            eprintln!("\r{}: {}  ", self.label, self.count);
        }
    }
}

/// Units each wallet received from ledgerd: every completed record, plus
/// the credits of records still in progress whose marker is on the wallet.
async fn credited(store: &dyn Store) -> anyhow::Result<(BTreeMap<String, u128>, u64)> {
    let mut sums: BTreeMap<String, u128> = BTreeMap::new();
    let mut records = 0;
    let mut progress = Progress::new("transactions");
    let mut keys = Keys::new(store, Bucket::Ledger, TX_PREFIX);
    while let Some(page) = keys.next_page().await? {
        for key in page {
            let id = &key[TX_PREFIX.len()..];
            let Some(body) = read(store, Bucket::Ledger, &key).await? else {
                continue;
            };
            let tx = TxRecord::parse(id, &body)
                .map_err(anyhow::Error::msg)
                .with_context(|| key.clone())?;
            records += 1;
            progress.tick();
            for c in &tx.credits {
                let applied = tx.state == TxState::Completed || has_marker(store, &c.hash, id).await?;
                if applied {
                    *sums.entry(c.hash.clone()).or_default() += u128::from(c.units.get());
                }
            }
        }
    }
    progress.done();
    Ok((sums, records))
}

async fn has_marker(store: &dyn Store, hash: &str, action_id: &str) -> anyhow::Result<bool> {
    let path = marker_path(action_id);
    match store
        .get_with_xattrs(Bucket::Ledger, &balance_key(hash), &[&path])
        .await
    {
        Ok(doc) => Ok(doc.xattrs.first().is_some_and(Option::is_some)),
        Err(StoreError::NotFound) => Ok(false),
        Err(e) => Err(e).context(format!("reading {}", balance_key(hash))),
    }
}

/// Every balance, by hash; invalid documents are reported, not skipped.
async fn balances(store: &dyn Store) -> anyhow::Result<BTreeMap<String, Result<u64, String>>> {
    let mut out = BTreeMap::new();
    let mut progress = Progress::new("wallets");
    let mut keys = Keys::new(store, Bucket::Ledger, BALANCE_PREFIX);
    while let Some(page) = keys.next_page().await? {
        for key in page {
            let Some(body) = read(store, Bucket::Ledger, &key).await? else {
                continue;
            };
            progress.tick();
            let parsed = Units::parse_balance(&body).map(Units::get).map_err(|e| e.to_string());
            out.insert(key[BALANCE_PREFIX.len()..].to_string(), parsed);
        }
    }
    progress.done();
    Ok(out)
}

async fn opening(store: &dyn Store) -> anyhow::Result<BTreeMap<String, u64>> {
    match store.get(Bucket::Ledger, OPENING_KEY).await {
        Ok(doc) => {
            let v: Value = serde_json::from_slice(&doc.body).context("audit:opening is not JSON")?;
            let mut out = BTreeMap::new();
            for (hash, units) in v.get("balances").and_then(Value::as_object).into_iter().flatten() {
                let units = units
                    .as_u64()
                    .with_context(|| format!("audit:opening: balance of {hash:?} is not an integer"))?;
                out.insert(hash.clone(), units);
            }
            Ok(out)
        }
        Err(StoreError::NotFound) => Ok(BTreeMap::new()),
        Err(e) => Err(e).context("reading audit:opening"),
    }
}

/// Compares every balance with its opening balance plus its credits.
pub async fn audit(store: &dyn Store, mut out: impl Write) -> anyhow::Result<Exit> {
    let (credits, records) = credited(store).await?;
    let opening = opening(store).await?;
    let balances = balances(store).await?;
    let mut mismatches = 0u64;
    let (mut total_balances, mut total_expected) = (0u128, 0u128);
    let mut hashes: Vec<&String> = balances.keys().chain(credits.keys()).chain(opening.keys()).collect();
    hashes.sort();
    hashes.dedup();
    for hash in hashes {
        let open = u128::from(opening.get(hash).copied().unwrap_or(0));
        let credit = credits.get(hash).copied().unwrap_or(0);
        let expected = open + credit;
        total_expected += expected;
        let line = match balances.get(hash) {
            Some(Ok(units)) if u128::from(*units) == expected => {
                total_balances += u128::from(*units);
                continue;
            }
            Some(Ok(units)) => {
                total_balances += u128::from(*units);
                format!(
                    "MISMATCH {hash}: balance {units} units, expected {expected} (opening {open} + credits {credit})"
                )
            }
            Some(Err(e)) => {
                format!("MISMATCH {hash}: the balance document is invalid ({e}); expected {expected} units")
            }
            None if expected == 0 => continue,
            None => format!("MISMATCH {hash}: no balance document, expected {expected} units"),
        };
        mismatches += 1;
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "audit: {} wallets, {records} transactions, balances {total_balances} units, expected {total_expected} units, {mismatches} mismatches{}",
        balances.len(),
        if opening.is_empty() { String::new() } else { format!(" (opening snapshot of {} wallets)", opening.len()) }
    )?;
    Ok(if mismatches == 0 { Exit::Success } else { Exit::Rejected })
}

/// Records, as the opening snapshot, what each wallet holds beyond its
/// recorded credits (balances that came from elsewhere).
pub async fn snapshot(store: &dyn Store, mut out: impl Write) -> anyhow::Result<Exit> {
    let (credits, _) = credited(store).await?;
    let mut opening = serde_json::Map::new();
    for (hash, balance) in balances(store).await? {
        let balance = balance
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("wallet {hash}"))?;
        let credit = credits.get(&hash).copied().unwrap_or(0);
        let Some(extra) = u128::from(balance).checked_sub(credit) else {
            bail!("wallet {hash} holds {balance} units, less than the {credit} credited to it: audit it first");
        };
        if extra > 0 {
            opening.insert(hash, json!(u64::try_from(extra)?));
        }
    }
    let doc = json!({"taken_at": crate::domain::time::rfc3339_from_unix_ms(now_ms()), "balances": opening});
    match store
        .insert(Bucket::Ledger, OPENING_KEY, doc.to_string().as_bytes())
        .await
    {
        Ok(_) => {}
        Err(StoreError::Exists) => {
            bail!("an opening snapshot exists already ({OPENING_KEY}); it is never overwritten")
        }
        Err(e) => return Err(e).context("writing audit:opening"),
    }
    writeln!(
        out,
        "opening snapshot taken: {} wallets with balances from outside ledgerd",
        opening.len()
    )?;
    Ok(Exit::Success)
}

/// `ledgerd tx ID`: one transaction record.
pub async fn tx(store: &dyn Store, id: &str, mut out: impl Write) -> anyhow::Result<Exit> {
    match store.get(Bucket::Ledger, &tx_key(id)).await {
        Ok(doc) => {
            let v: Value = serde_json::from_slice(&doc.body).context("the record is not JSON")?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            Ok(Exit::Success)
        }
        Err(StoreError::NotFound) => {
            writeln!(out, "no transaction record for action {id:?}")?;
            Ok(Exit::Rejected)
        }
        Err(e) => Err(e).context(format!("reading {}", tx_key(id))),
    }
}

/// `ledgerd history HASH`: a wallet's credits, one JSON line each. Reads
/// every transaction record (there is no index by wallet).
pub async fn history(store: &dyn Store, hash: &str, mut out: impl Write) -> anyhow::Result<Exit> {
    let mut keys = Keys::new(store, Bucket::Ledger, TX_PREFIX);
    while let Some(page) = keys.next_page().await? {
        for key in page {
            let Ok(doc) = store.get(Bucket::Ledger, &key).await else {
                continue;
            };
            let Ok(tx) = TxRecord::parse(&key[TX_PREFIX.len()..], &doc.body) else {
                continue;
            };
            if let Some(c) = tx.credits.iter().find(|c| c.hash == hash) {
                let line = json!({
                    "action_id": tx.action_id,
                    "units": c.units.get(),
                    "tokens": c.units.to_tokens_string(),
                    "state": tx.state,
                    "created_at": tx.created_at,
                    "completed_at": tx.completed_at,
                });
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(Exit::Success)
}

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

/// The ledger document holding balances that came from outside ledgerd
/// (the first part of them, and how many parts there are).
pub const OPENING_KEY: &str = "audit:opening";
/// Wallets per part of the opening snapshot: at most about 280 bytes each
/// (a 242-byte hash and a 20-digit balance), so a part stays far below
/// Couchbase's 20 MiB item limit however many wallets the ledger holds.
const OPENING_PART_WALLETS_MAX: usize = 50_000;

/// The key of part `n` (from 1) of the opening snapshot after the first.
fn opening_part_key(n: usize) -> String {
    format!("{OPENING_KEY}:{n}")
}
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
        if self.shown && self.count.is_multiple_of(PROGRESS_EVERY) {
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

/// The opening snapshot: every part's balances, by hash (empty if none).
async fn opening(store: &dyn Store) -> anyhow::Result<BTreeMap<String, u64>> {
    let head = match store.get(Bucket::Ledger, OPENING_KEY).await {
        Ok(doc) => doc,
        Err(StoreError::NotFound) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).context("reading audit:opening"),
    };
    let head: Value = serde_json::from_slice(&head.body).context("audit:opening is not JSON")?;
    let mut out = BTreeMap::new();
    add_balances(&head, OPENING_KEY, &mut out)?;
    let parts = head.get("parts").and_then(Value::as_u64).unwrap_or(1);
    for n in 1..usize::try_from(parts)? {
        let key = opening_part_key(n);
        let doc = store
            .get(Bucket::Ledger, &key)
            .await
            .with_context(|| format!("reading {key}, part {n} of the {parts} of the opening snapshot"))?;
        let part: Value = serde_json::from_slice(&doc.body).with_context(|| format!("{key} is not JSON"))?;
        add_balances(&part, &key, &mut out)?;
    }
    Ok(out)
}

fn add_balances(doc: &Value, key: &str, out: &mut BTreeMap<String, u64>) -> anyhow::Result<()> {
    for (hash, units) in doc.get("balances").and_then(Value::as_object).into_iter().flatten() {
        let units = units
            .as_u64()
            .with_context(|| format!("{key}: balance of {hash:?} is not an integer"))?;
        out.insert(hash.clone(), units);
    }
    Ok(())
}

/// Writes the opening snapshot in parts of at most `part_wallets` wallets:
/// the later parts first (replacing any left by an attempt that died before
/// its end), then the first part, which names how many there are. Its
/// insert is the commit point, and it is never overwritten.
async fn write_opening(
    store: &dyn Store,
    opening: serde_json::Map<String, Value>,
    part_wallets: usize,
) -> anyhow::Result<()> {
    if store.get(Bucket::Ledger, OPENING_KEY).await.is_ok() {
        bail!("an opening snapshot exists already ({OPENING_KEY}); it is never overwritten");
    }
    let entries: Vec<(String, Value)> = opening.into_iter().collect();
    let mut parts: Vec<serde_json::Map<String, Value>> = entries
        .chunks(part_wallets.max(1))
        .map(|chunk| chunk.iter().cloned().collect())
        .collect();
    if parts.is_empty() {
        parts.push(serde_json::Map::new());
    }
    for (n, part) in parts.iter().enumerate().skip(1) {
        let (key, body) = (opening_part_key(n), json!({ "balances": part }).to_string());
        let written = match store.get(Bucket::Ledger, &key).await {
            Ok(stale) => store.replace(Bucket::Ledger, &key, body.as_bytes(), stale.cas).await,
            Err(StoreError::NotFound) => store.insert(Bucket::Ledger, &key, body.as_bytes()).await,
            Err(e) => Err(e),
        };
        written.with_context(|| format!("writing {key}"))?;
    }
    let head = json!({
        "taken_at": crate::domain::time::rfc3339_from_unix_ms(now_ms()),
        "parts": parts.len(),
        "balances": parts[0],
    });
    match store
        .insert(Bucket::Ledger, OPENING_KEY, head.to_string().as_bytes())
        .await
    {
        Ok(_) => Ok(()),
        Err(StoreError::Exists) => {
            bail!("an opening snapshot exists already ({OPENING_KEY}); it is never overwritten")
        }
        Err(e) => Err(e).context("writing audit:opening"),
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
    let wallets = opening.len();
    write_opening(store, opening, OPENING_PART_WALLETS_MAX).await?;
    writeln!(
        out,
        "opening snapshot taken: {wallets} wallets with balances from outside ledgerd"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn an_opening_snapshot_in_parts_reads_back_whole_and_is_never_overwritten() {
        let store = MemoryStore::new();
        let wallets: serde_json::Map<String, Value> = (0..5).map(|i| (format!("w{i}"), json!(i + 1))).collect();
        write_opening(&store, wallets.clone(), 2).await.expect("snapshot");
        assert!(
            store.peek(Bucket::Ledger, &opening_part_key(2)).is_some(),
            "three parts"
        );
        let read = opening(&store).await.expect("read");
        let expected: BTreeMap<String, u64> = (0..5).map(|i| (format!("w{i}"), i + 1)).collect();
        assert_eq!(read, expected);
        let again = write_opening(&store, wallets, 2).await;
        assert!(again.is_err_and(|e| e.to_string().contains("never overwritten")));
        assert_eq!(opening(&store).await.expect("read"), expected);
    }
}

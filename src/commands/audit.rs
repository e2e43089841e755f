//! `ledgerd audit`: every wallet against what the ledger explains for it
//! (opening snapshot, transaction records, adjustments), taken consistently
//! while workers run (`protocol::accounting`); `audit --snapshot`, `tx` and
//! `history` read the same records.

use std::io::{IsTerminal, Write};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::Exit;
use crate::domain::keys::{adj_key, balance_key, tx_key, ADJ_PREFIX, TX_PREFIX};
use crate::protocol::accounting::{self, opening_part_key, since, OPENING_KEY};
use crate::protocol::records::{now_ms, AdjRecord, TxRecord};
use crate::store::{Bucket, Store, StoreError};

/// Wallets per part of the opening snapshot: at most about 280 bytes each
/// (a 242-byte hash and a 20-digit balance), so a part stays far below
/// Couchbase's 20 MiB item limit however many wallets the ledger holds.
const OPENING_PART_WALLETS_MAX: usize = 50_000;

/// Says what the audit is doing, on a terminal only.
fn progress(what: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("audit: {what} …");
    }
}

/// What an audit has found so far, over the passes.
#[derive(Default)]
struct Tally {
    wallets: u64,
    adjusted: u64,
    mismatches: u64,
    total_balances: u128,
    total_expected: i128,
    records: Option<u64>,
    opening_wallets: usize,
    unsettled: Vec<String>,
    /// Records not final, for a checkpoint (bounded: see `accounting::PENDING_MAX`).
    pending: std::collections::BTreeSet<String>,
}

impl Tally {
    /// Writes the mismatches of one range's cut and counts the rest.
    fn add(&mut self, cut: accounting::Cut, out: &mut impl Write) -> std::io::Result<()> {
        // Every pass reads every record: the count is the first's.
        self.records.get_or_insert(cut.records);
        self.opening_wallets += cut.opening_wallets;
        self.unsettled.extend(cut.unsettled);
        if self.pending.len() <= accounting::PENDING_MAX {
            self.pending.extend(cut.pending);
        }
        for (hash, (view, explained)) in &cut.wallets {
            let expected = explained.total();
            self.total_expected += expected;
            self.adjusted += u64::from(explained.adjustments != 0);
            let sources = format!(
                "opening {} + credits {} + adjustments {}",
                explained.opening, explained.credits, explained.adjustments
            );
            let line = match view.found() {
                Some(Ok(units)) => {
                    self.wallets += 1;
                    self.total_balances += u128::from(units);
                    if i128::from(units) == expected {
                        continue;
                    }
                    format!("MISMATCH {hash}: balance {units} units, expected {expected} ({sources})")
                }
                Some(Err(e)) => {
                    self.wallets += 1;
                    format!(
                        "MISMATCH {hash}: the balance document is invalid ({e}); expected {expected} units ({sources})"
                    )
                }
                None if expected == 0 => continue,
                None => format!("MISMATCH {hash}: no balance document, expected {expected} units ({sources})"),
            };
            self.mismatches += 1;
            writeln!(out, "{line}")?;
        }
        out.flush()
    }
}

/// Compares every balance with what the ledger explains for it, holding
/// at most `wallets_per_pass` wallets at once
/// ([`accounting::cut_in_passes`]): mismatches are printed as each range
/// is done, in hash order, then the totals. With `checkpoint`, a clean
/// audit begins a new line of checkpoints for `audit --since`.
pub async fn audit(
    store: &dyn Store,
    wallets_per_pass: usize,
    checkpoint: bool,
    mut out: impl Write,
) -> anyhow::Result<Exit> {
    // Before anything is read: every record written after it has a greater CAS.
    let floor = match checkpoint {
        true => Some(
            store
                .cas_floor(Bucket::Ledger)
                .await
                .context("reading the store's clock")?,
        ),
        false => None,
    };
    progress("reading the wallets and the records");
    let mut tally = Tally::default();
    accounting::cut_in_passes(store, wallets_per_pass, |cut| -> anyhow::Result<()> {
        tally.add(cut, &mut out).context("writing the audit")
    })
    .await
    .context("reading the ledger")?;
    let Tally {
        wallets,
        adjusted,
        mismatches,
        total_balances,
        total_expected,
        records,
        opening_wallets,
        unsettled,
        pending,
    } = tally;
    for hash in &unsettled {
        writeln!(
            out,
            "UNCHECKED {hash}: the wallet changed during every reading, even locked; run the audit again"
        )?;
    }
    writeln!(
        out,
        "audit: {wallets} wallets, {} transactions, balances {total_balances} units, expected {total_expected} units, {mismatches} mismatches{}{}{}",
        records.unwrap_or(0),
        if adjusted == 0 { String::new() } else { format!(" ({adjusted} wallets adjusted)") },
        if opening_wallets == 0 {
            String::new()
        } else {
            format!(" (opening snapshot of {opening_wallets} wallets)")
        },
        if unsettled.is_empty() {
            String::new()
        } else {
            format!(", {} unchecked", unsettled.len())
        }
    )?;
    let clean = mismatches == 0 && unsettled.is_empty();
    if let (Some(floor), true) = (floor, clean) {
        let first = since::first(floor, pending).context("taking the checkpoint")?;
        since::write_checkpoint(store, &first)
            .await
            .context("writing the checkpoint")?;
        writeln!(
            out,
            "checkpoint {}: run `ledgerd audit --since {}` (or `--since last`) to check only what changes after it",
            first.name(),
            first.name()
        )?;
    }
    Ok(if clean { Exit::Success } else { Exit::Rejected })
}

/// `audit --since CHECKPOINT`: checks only the wallets that may have
/// changed since the last clean audit's checkpoint (`None`: whichever it
/// is), against their settled sums and their records since
/// ([`since::check`]); if every one matches, moves the checkpoint on.
pub async fn audit_since(store: &dyn Store, name: Option<u64>, mut out: impl Write) -> anyhow::Result<Exit> {
    let Some(checkpoint) = since::read_checkpoint(store).await.context("reading the checkpoint")? else {
        bail!(
            "there is no checkpoint ({}): run `ledgerd audit --checkpoint` once, a full audit that takes one",
            since::CHECKPOINT_KEY
        );
    };
    if let Some(name) = name {
        if checkpoint.through_cas()? != name {
            bail!(
                "checkpoint {name} is not the last clean audit's, which is {}: run `ledgerd audit --since {}`, or a full `ledgerd audit --checkpoint`",
                checkpoint.name(),
                checkpoint.name()
            );
        }
    }
    progress("reading what changed since the checkpoint");
    let found = since::check(store, &checkpoint).await.context("reading the ledger")?;
    let mut mismatches = 0u64;
    for (hash, checked) in &found.wallets {
        let expected = checked.expected;
        let line = match &checked.balance {
            Some(Ok(units)) if i128::from(*units) == expected => continue,
            Some(Ok(units)) => format!("MISMATCH {hash}: balance {units} units, expected {expected}"),
            Some(Err(e)) => {
                format!("MISMATCH {hash}: the balance document is invalid ({e}); expected {expected} units")
            }
            None if expected == 0 => continue,
            None => format!("MISMATCH {hash}: no balance document, expected {expected} units"),
        };
        mismatches += 1;
        writeln!(out, "{line}")?;
    }
    for hash in &found.unsettled {
        writeln!(
            out,
            "UNCHECKED {hash}: the wallet changed during every reading, even locked; run the audit again"
        )?;
    }
    writeln!(
        out,
        "audit since checkpoint {}: {} wallets changed, {} records read ({} wallets read in full, first seen since the last full audit), {mismatches} mismatches{}",
        checkpoint.name(),
        found.wallets.len() + found.unsettled.len(),
        found.records,
        found.from_the_start,
        if found.unsettled.is_empty() {
            String::new()
        } else {
            format!(", {} unchecked", found.unsettled.len())
        }
    )?;
    if mismatches > 0 || !found.unsettled.is_empty() {
        return Ok(Exit::Rejected);
    }
    let next = since::settle(store, &checkpoint, &found)
        .await
        .context("writing the checkpoint")?;
    writeln!(
        out,
        "checkpoint {}: run `ledgerd audit --since {}` next",
        next.name(),
        next.name()
    )?;
    Ok(Exit::Success)
}

/// Records, as the opening snapshot, what each wallet holds beyond what the
/// records explain (balances that came from elsewhere). Taken consistently
/// while workers run: a credit in flight is counted as a credit, never as
/// an opening balance. Holds at most `wallets_per_pass` wallets' states at
/// once, and the wallets with balances from outside.
pub async fn snapshot(store: &dyn Store, wallets_per_pass: usize, mut out: impl Write) -> anyhow::Result<Exit> {
    if store.get(Bucket::Ledger, OPENING_KEY).await.is_ok() {
        bail!("an opening snapshot exists already ({OPENING_KEY}); it is never overwritten");
    }
    progress("reading the wallets and the records");
    let mut opening = serde_json::Map::new();
    accounting::cut_in_passes(store, wallets_per_pass, |cut| -> anyhow::Result<()> {
        if let Some(hash) = cut.unsettled.first() {
            bail!("wallet {hash} changed during every reading, even locked: take the snapshot again");
        }
        for (hash, (view, explained)) in cut.wallets {
            let balance = match view.found() {
                None => continue,
                Some(Ok(units)) => units,
                Some(Err(e)) => {
                    bail!("wallet {hash}: the balance document is invalid ({e}): repair it with `ledgerd adjust` first")
                }
            };
            let extra = i128::from(balance) - explained.total();
            if extra < 0 {
                bail!(
                    "wallet {hash} holds {balance} units, less than the {} the ledger explains: audit it first",
                    explained.total()
                );
            }
            if extra > 0 {
                opening.insert(hash, json!(u64::try_from(extra)?));
            }
        }
        Ok(())
    })
    .await
    .context("reading the ledger")?;
    let wallets = opening.len();
    write_opening(store, opening, OPENING_PART_WALLETS_MAX).await?;
    writeln!(
        out,
        "opening snapshot taken: {wallets} wallets with balances from outside ledgerd"
    )?;
    Ok(Exit::Success)
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

/// `ledgerd tx ID`: one transaction record, pretty-printed.
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

/// `ledgerd history HASH`: a wallet's credits and adjustments as JSON Lines,
/// adjustments first, then credits, each in key order. Reads the wallet's
/// own records through the store's index by wallet (`Store::wallet_records`),
/// a page at a time: its cost follows the wallet, not the ledger.
pub async fn history(store: &dyn Store, hash: &str, mut out: impl Write) -> anyhow::Result<Exit> {
    let mut lines = 0u64;
    accounting::for_each_wallet_record(store, hash, |key, body| -> anyhow::Result<()> {
        lines += 1;
        if let Some(id) = key.strip_prefix(TX_PREFIX) {
            let tx = TxRecord::parse(id, body)
                .map_err(anyhow::Error::msg)
                .with_context(|| key.to_string())?;
            for c in tx.credits.iter().filter(|c| c.hash == hash) {
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
        } else if let Some(id) = key.strip_prefix(ADJ_PREFIX) {
            let adj = AdjRecord::parse(id, body)
                .map_err(anyhow::Error::msg)
                .with_context(|| adj_key(id))?;
            if adj.hash == hash {
                writeln!(out, "{}", json!({"adjustment": adj, "delta": adj.delta().to_string()}))?;
            }
        }
        Ok(())
    })
    .await
    .with_context(|| format!("reading the records of wallet {hash}"))?;
    if lines == 0 {
        // Nothing to list: say whether there is no such wallet, as
        // `ledgerd balance` does (on stderr: stdout is JSON Lines).
        match store.get(Bucket::Ledger, &balance_key(hash)).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => {
                eprintln!("ledgerd: {hash}: no records and no wallet (never credited, or a mistyped hash)");
                return Ok(Exit::Rejected);
            }
            Err(e) => return Err(e).context(format!("reading {}", balance_key(hash))),
        }
    }
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn an_opening_snapshot_in_parts_reads_back_whole_and_is_never_overwritten() {
        let store = MemoryStore::new();
        let wallets: serde_json::Map<String, Value> = (0..5).map(|i| (format!("w{i}"), json!(i + 1))).collect();
        write_opening(&store, wallets.clone(), 2).await.expect("snapshot");
        assert!(
            store.peek(Bucket::Ledger, &opening_part_key(2)).is_some(),
            "three parts"
        );
        let read = accounting::read_opening(&store).await.expect("read");
        let expected: BTreeMap<String, u64> = (0..5).map(|i| (format!("w{i}"), i + 1)).collect();
        assert_eq!(read, expected);
        let again = write_opening(&store, wallets, 2).await;
        assert!(again.is_err_and(|e| e.to_string().contains("never overwritten")));
        assert_eq!(accounting::read_opening(&store).await.expect("read"), expected);
    }
}

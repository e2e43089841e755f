//! The state checker, run after the system quiesces.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::keys::{action_key, failed_key, sha256_hex, tx_key, BALANCE_PREFIX, TX_PREFIX};
use crate::domain::{plan_action, Units};
use crate::protocol::dead_letters::DeadLetters;
use crate::protocol::records::{TxRecord, TxState};
use crate::store::memory::MemoryStore;
use crate::store::Bucket;

/// One body the producer put under an id.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The bytes.
    pub body: Vec<u8>,
    /// Replaced by the producer itself before anyone claimed it.
    pub superseded: bool,
}

/// What the run did that the checker needs to know.
pub struct Facts<'a> {
    /// Balances before the run.
    pub initial: &'a BTreeMap<String, u64>,
    /// Every delivery per action id.
    pub deliveries: &'a BTreeMap<String, Vec<Delivery>>,
    /// Wallets corrupted by someone else.
    pub corrupted: &'a BTreeSet<String>,
    /// Actions the final clean pass reported as blocked, with the reason.
    pub blocked: &'a BTreeMap<String, String>,
}

/// Every body preserved in `failed:<id>`.
fn failed_bodies(store: &MemoryStore, id: &str) -> Vec<Vec<u8>> {
    let Some(body) = store.peek(Bucket::Queue, &failed_key(id)) else {
        return Vec::new();
    };
    DeadLetters::parse(&body).entries.into_iter().map(|e| e.body).collect()
}

/// Whether wallet `hash` carries the marker of action `id`.
pub(super) fn carries_marker(store: &MemoryStore, hash: &str, id: &str) -> bool {
    let marker = crate::domain::MarkerName::of_action(id);
    store
        .xattrs(Bucket::Ledger, &crate::domain::keys::balance_key(hash))
        .and_then(|x| x.pointer(&format!("/ledger/applied/{marker}")).cloned())
        .is_some()
}

/// Checks every invariant; returns the violations.
pub fn check(store: &MemoryStore, facts: &Facts<'_>) -> Vec<String> {
    let mut bad = Vec::new();
    let mut records: BTreeMap<String, TxRecord> = BTreeMap::new();
    for (key, body) in store.snapshot(Bucket::Ledger) {
        let Some(id) = key.strip_prefix(TX_PREFIX) else {
            continue;
        };
        match TxRecord::parse(id, &body) {
            Ok(tx) => {
                records.insert(id.to_string(), tx);
            }
            Err(e) => bad.push(format!("{key}: {e}")),
        }
    }

    // Every delivery is accounted for; every record is of a delivered body.
    for (id, deliveries) in facts.deliveries {
        let tx = records.get(id);
        let failed = failed_bodies(store, id);
        let queued = store.peek(Bucket::Queue, &action_key(id));
        for d in deliveries.iter().filter(|d| !d.superseded) {
            let accepted = tx.is_some_and(|t| t.digest == sha256_hex(&d.body));
            let preserved = failed.contains(&d.body);
            let waiting = queued.as_deref() == Some(&d.body[..]);
            if !(accepted || preserved || waiting) {
                bad.push(format!(
                    "action {id}: a delivered body was lost: {:?}",
                    String::from_utf8_lossy(&d.body)
                ));
            }
        }
        if let Some(tx) = tx {
            match deliveries.iter().find(|d| sha256_hex(&d.body) == tx.digest) {
                None => bad.push(format!("tx:{id} records a body that was never delivered")),
                Some(d) => match plan_action(&d.body) {
                    Ok(plan) if plan.credits == tx.credits => {}
                    Ok(_) => bad.push(format!("tx:{id} credits differ from its body's plan")),
                    Err(e) => bad.push(format!("tx:{id} records an invalid body: {e}")),
                },
            }
        }
        if queued.is_some() {
            match facts.blocked.get(id) {
                Some(reason)
                    if facts.corrupted.iter().any(|h| reason.contains(&format!("balance:{h}")))
                        || reason.contains("total supply") => {}
                Some(reason) => bad.push(format!("action {id} blocked for no good reason: {reason}")),
                None => bad.push(format!("action {id} is still queued and not reported as blocked")),
            }
        }
    }

    // Balances: the opening balance plus each completed record once, plus
    // the marked credits of records still committed (blocked part-way).
    let mut oracle: BTreeMap<String, u128> = facts.initial.iter().map(|(h, u)| (h.clone(), u128::from(*u))).collect();
    for (id, tx) in &records {
        let marker = crate::domain::MarkerName::of_action(id);
        for c in &tx.credits {
            let marked = || {
                store
                    .xattrs(Bucket::Ledger, &crate::domain::keys::balance_key(&c.hash))
                    .and_then(|x| x.pointer(&format!("/ledger/applied/{marker}")).cloned())
                    .is_some()
            };
            if tx.state == TxState::Completed || marked() {
                *oracle.entry(c.hash.clone()).or_default() += u128::from(c.units.get());
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (key, body) in store.snapshot(Bucket::Ledger) {
        let Some(hash) = key.strip_prefix(BALANCE_PREFIX) else {
            continue;
        };
        seen.insert(hash.to_string());
        if facts.corrupted.contains(hash) {
            continue;
        }
        let want = oracle.get(hash).copied().unwrap_or(0);
        match Units::parse_balance(&body) {
            Ok(got) if u128::from(got.get()) == want => {}
            Ok(got) => bad.push(format!("wallet {hash}: balance {} units, expected {want}", got.get())),
            Err(e) => bad.push(format!("wallet {hash}: not a valid balance: {e}")),
        }
        // After the sweep, only markers of records still committed remain.
        let markers = store
            .xattrs(Bucket::Ledger, &key)
            .and_then(|x| x.pointer("/ledger/applied").cloned());
        for (name, marker) in crate::domain::Markers::from_xattr(markers).iter() {
            let action = marker.action().unwrap_or("?");
            if records.get(action).map(|t| t.state) != Some(TxState::Committed) {
                bad.push(format!("wallet {hash}: marker {name} of {action} left after the sweep"));
            }
        }
    }
    for (hash, want) in &oracle {
        if !seen.contains(hash) && *want != 0 {
            bad.push(format!("wallet {hash}: missing, expected {want} units"));
        }
    }
    for (id, tx) in &records {
        if tx.state == TxState::Completed && store.peek(Bucket::Ledger, &tx_key(id)).is_none() {
            bad.push(format!("tx:{id} vanished"));
        }
        // The completion goes beside the removal: a record left committed
        // with its action gone and every credit marked is finished by
        // whoever meets it, and the sweep meets them all.
        let every_credit_marked = tx.credits.iter().all(|c| carries_marker(store, &c.hash, id));
        if tx.state == TxState::Committed && every_credit_marked && store.peek(Bucket::Queue, &action_key(id)).is_none()
        {
            bad.push(format!(
                "tx:{id} left committed after the sweep, its action gone and every credit marked"
            ));
        }
    }
    bad
}

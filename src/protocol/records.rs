//! The documents the protocol writes: transaction records, adjustment
//! records and idempotency markers, with their checks (failed documents:
//! `dead_letters`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::time::rfc3339_from_unix_ms;
use crate::domain::{Credit, Mode, Plan, Units};

/// Where a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TxState {
    /// The plan is fixed; credits may be partly applied.
    Committed,
    /// Every credit is applied.
    Completed,
}

/// `tx:<id>`: the plan of one action, fixed at the commit point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRecord {
    /// The action id.
    pub action_id: String,
    /// SHA-256 of the action body the plan was made from.
    pub digest: String,
    /// How the body was read.
    pub mode: Mode,
    /// Credits in hash order.
    pub credits: Vec<Credit>,
    /// Sum of the credits.
    pub total_units: Units,
    /// Committed or completed.
    pub state: TxState,
    /// When the record was committed (informational).
    pub created_at: String,
    /// When the credits were all applied (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

thread_local! {
    /// A virtual clock replacing the wall clock on this thread (the simulator).
    static VIRTUAL_CLOCK: std::cell::RefCell<Option<Arc<AtomicU64>>> = const { std::cell::RefCell::new(None) };
}

/// Makes [`now_ms`] read `clock` on this thread (or the wall clock with `None`).
pub fn use_virtual_clock(clock: Option<Arc<AtomicU64>>) {
    VIRTUAL_CLOCK.with(|c| *c.borrow_mut() = clock);
}

/// Unix milliseconds now, for informational timestamps and marker ages.
pub fn now_ms() -> u64 {
    if let Some(ms) = VIRTUAL_CLOCK.with(|c| c.borrow().as_ref().map(|a| a.load(Ordering::SeqCst))) {
        return ms;
    }
    crate::domain::time::unix_ms_now()
}

impl TxRecord {
    /// A committed record of `plan`.
    pub fn committed(action_id: &str, plan: &Plan) -> Self {
        Self {
            action_id: action_id.to_string(),
            digest: plan.digest.clone(),
            mode: plan.mode,
            credits: plan.credits.clone(),
            total_units: plan.total,
            state: TxState::Committed,
            created_at: rfc3339_from_unix_ms(now_ms()),
            completed_at: None,
        }
    }

    /// This record marked completed now.
    pub fn completed_now(&self) -> Self {
        Self {
            state: TxState::Completed,
            completed_at: Some(rfc3339_from_unix_ms(now_ms())),
            ..self.clone()
        }
    }

    /// Parses a stored record and checks what must hold of any record.
    pub fn parse(action_id: &str, body: &[u8]) -> Result<Self, String> {
        let tx: TxRecord = serde_json::from_slice(body).map_err(|e| format!("transaction record is not valid: {e}"))?;
        if tx.action_id != action_id {
            return Err(format!("transaction record names action {:?}", tx.action_id));
        }
        if tx.credits.is_empty() || tx.credits.iter().any(|c| c.units == Units::ZERO) {
            return Err("transaction record has an empty or zero credit".into());
        }
        if !tx.credits.windows(2).all(|w| w[0].hash < w[1].hash) {
            return Err("transaction record credits are not in strict hash order".into());
        }
        let sum: u128 = tx.credits.iter().map(|c| u128::from(c.units.get())).sum();
        if sum != u128::from(tx.total_units.get()) {
            return Err("transaction record credits do not add up to its total".into());
        }
        Ok(tx)
    }

    /// The body to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Where an adjustment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdjState {
    /// Recorded; the wallet may not carry it yet (its marker tells).
    Recorded,
    /// The wallet carries it.
    Applied,
}

/// `adj:<id>`: an operator's repair of one wallet, recorded before the
/// wallet is written. `audit` counts `after - expected`: restoring a wallet
/// to what the records explain counts 0, a deliberate change its amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjRecord {
    /// The adjustment's id.
    pub id: String,
    /// The wallet.
    pub hash: String,
    /// The balance it held before (`None`: no valid balance document).
    pub before: Option<u64>,
    /// What the records explained at that moment, in units.
    pub expected: u64,
    /// The balance it holds after.
    pub after: u64,
    /// Why, in the operator's words.
    pub reason: String,
    /// Recorded or applied.
    pub state: AdjState,
    /// When it was recorded (informational).
    pub at: String,
    /// When the wallet took it (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// What the operator asked for, as `to N` or `by +N`/`by -N`, so that
    /// the same id given again with other arguments is refused (absent in
    /// records of earlier releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
}

impl AdjRecord {
    /// What it changes beyond what the records explained.
    pub fn delta(&self) -> i128 {
        i128::from(self.after) - i128::from(self.expected)
    }

    /// Parses a stored adjustment.
    pub fn parse(id: &str, body: &[u8]) -> Result<Self, String> {
        let adj: AdjRecord =
            serde_json::from_slice(body).map_err(|e| format!("adjustment record is not valid: {e}"))?;
        if adj.id != id {
            return Err(format!("adjustment record names id {:?}", adj.id));
        }
        Ok(adj)
    }

    /// The body to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan_action;

    #[test]
    fn records_round_trip_and_are_checked() {
        let plan = plan_action(br#"{"beneficiaries":{"b":1,"a":"0.5"}}"#).expect("valid");
        let tx = TxRecord::committed("x", &plan);
        assert_eq!(TxRecord::parse("x", &tx.to_bytes()), Ok(tx.clone()));
        assert!(TxRecord::parse("y", &tx.to_bytes()).is_err());
        let mut bad = tx.clone();
        bad.total_units = Units::new(1).expect("valid");
        assert!(TxRecord::parse("x", &bad.to_bytes()).is_err());
        let mut bad = tx;
        bad.credits.reverse();
        assert!(TxRecord::parse("x", &bad.to_bytes()).is_err());
        assert!(TxRecord::parse("x", b"{").is_err());
    }
}

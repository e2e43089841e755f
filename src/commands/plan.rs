//! `ledgerd plan`: check one action document without touching a store.

use std::io::{Read, Write};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use super::Exit;
use crate::domain::{action::ACTION_BYTES_MAX, plan_action, Mode, Plan};

/// One credit as printed: units and the same amount in tokens.
#[derive(Debug, Serialize)]
pub struct CreditView<'a> {
    /// Wallet hash.
    pub hash: &'a str,
    /// Base units.
    pub units: u64,
    /// Exact token amount, 8 decimals.
    pub tokens: String,
}

/// The plan as `ledgerd plan` prints it.
#[derive(Debug, Serialize)]
pub struct PlanView<'a> {
    /// `amount` or `split`.
    pub mode: Mode,
    /// Credits in hash order.
    pub credits: Vec<CreditView<'a>>,
    /// Sum of the credits.
    pub total_units: u64,
    /// SHA-256 of the body.
    pub digest: &'a str,
}

impl<'a> PlanView<'a> {
    /// The view of a plan.
    pub fn new(plan: &'a Plan) -> Self {
        let credits = plan
            .credits
            .iter()
            .map(|c| CreditView {
                hash: &c.hash,
                units: c.units.get(),
                tokens: c.units.to_tokens_string(),
            })
            .collect();
        Self {
            mode: plan.mode,
            credits,
            total_units: plan.total.get(),
            digest: &plan.digest,
        }
    }
}

/// Reads one action body from `input` and writes its plan or its error as JSON.
pub fn run(input: impl Read, mut out: impl Write) -> anyhow::Result<Exit> {
    // Read one byte past the limit so that an oversized body is reported as such.
    let mut body = Vec::new();
    input
        .take(ACTION_BYTES_MAX as u64 + 1)
        .read_to_end(&mut body)
        .context("reading the action from stdin")?;
    let (line, exit) = match plan_action(super::without_bom(&body)) {
        Ok(plan) => (serde_json::to_string(&PlanView::new(&plan))?, Exit::Success),
        Err(e) => (json!({"error": e.to_string()}).to_string(), Exit::Rejected),
    };
    writeln!(out, "{line}").context("writing the plan")?;
    Ok(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_plan_or_the_error() {
        let mut out = Vec::new();
        let exit = run(&br#"{"beneficiaries":[{"a":0.29},{"b":"1.15"}]}"#[..], &mut out).expect("runs");
        assert_eq!(exit, Exit::Success);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["credits"][0]["units"], 29_000_000);
        assert_eq!(v["credits"][1]["tokens"], "1.15000000");
        assert_eq!(v["total_units"], 144_000_000);
        assert_eq!(v["mode"], "amount");

        // A file an editor saved with a byte order mark, as `enqueue` takes it.
        let mut out = Vec::new();
        let with_bom = b"\xEF\xBB\xBF{\"beneficiaries\":{\"a\":\"1\"}}";
        assert_eq!(run(&with_bom[..], &mut out).expect("runs"), Exit::Success);

        let mut out = Vec::new();
        assert_eq!(run(&b"nope"[..], &mut out).expect("runs"), Exit::Rejected);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert!(v["error"]
            .as_str()
            .expect("error text")
            .starts_with("body is not valid JSON"));
    }
}

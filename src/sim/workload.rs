//! Random actions, valid and invalid, crowded onto a few hot wallets, with
//! amounts at the edges.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::domain::units::{TOTAL_SUPPLY_UNITS, UNITS_PER_TOKEN};

/// Wallets most actions credit.
pub const HOT_WALLETS: usize = 4;

/// What a seed starts with.
pub struct Workload {
    /// Wallet balances before the run (absent wallets are not listed).
    pub initial: BTreeMap<String, u64>,
    /// `(id, body)` in the order the producer delivers them.
    pub actions: Vec<(String, String)>,
}

fn hot(rng: &mut StdRng) -> String {
    format!("h{}", rng.gen_range(0..HOT_WALLETS))
}

/// A share of `units` as a producer might write it.
fn amount_text(rng: &mut StdRng, units: u64) -> String {
    let plain = format!("{}.{:08}", units / UNITS_PER_TOKEN, units % UNITS_PER_TOKEN);
    match rng.gen_range(0..4) {
        0 => format!("\"{plain}\""),
        1 => format!("{units}e-8"),
        _ => plain,
    }
}

fn edge_units(rng: &mut StdRng) -> u64 {
    match rng.gen_range(0..6) {
        0 => 1,
        1 => 100 * UNITS_PER_TOKEN,
        _ => rng.gen_range(1..=100 * UNITS_PER_TOKEN),
    }
}

const INVALID: &[&str] = &[
    r#"{"beneficiaries":{"h0":0.000000001}}"#,
    r#"{"beneficiaries":{"h1":100.00000001}}"#,
    r#"{"beneficiaries":{"h0":1,"h0":2}}"#,
    r#"{"beneficiaries":[]}"#,
    r#"{"reward":"1","beneficiaries":{"h0":60,"h1":41}}"#,
    r#"{"beneficiaries":{"h2":-1}}"#,
    "not json",
    r#"[1,2,3]"#,
];

/// One action body: invalid one time in ten, split mode one in five.
pub fn body(rng: &mut StdRng) -> String {
    let roll = rng.gen_range(0..10);
    if roll == 0 {
        return INVALID.choose(rng).copied().unwrap_or("{}").to_string();
    }
    if roll <= 2 {
        let reward = edge_units(rng);
        let n = rng.gen_range(1..=3);
        let mut left: u64 = 100 * UNITS_PER_TOKEN;
        let mut entries = Vec::new();
        for _ in 0..n {
            let share = rng.gen_range(1..=left.max(1));
            left = left.saturating_sub(share);
            entries.push(format!(
                r#"{{"hash":"{}","share":{}}}"#,
                hot(rng),
                amount_text(rng, share)
            ));
        }
        let reward = amount_text(rng, reward);
        return format!(r#"{{"reward":{reward},"beneficiaries":[{}]}}"#, entries.join(","));
    }
    let n = rng.gen_range(1..=4);
    let entries: Vec<String> = (0..n)
        .map(|_| {
            let units = edge_units(rng);
            format!(r#"{{"{}":{}}}"#, hot(rng), amount_text(rng, units))
        })
        .collect();
    format!(r#"{{"beneficiaries":[{}]}}"#, entries.join(","))
}

/// Actions of an ordinary seed.
const ACTIONS: std::ops::RangeInclusive<usize> = 8..=24;
/// Actions of a crowded seed: enough that one worker's credits to one
/// wallet exceed what one write may carry.
const ACTIONS_CROWDED: std::ops::RangeInclusive<usize> = 40..=72;

/// The workload of one seed.
pub fn generate(rng: &mut StdRng, crowded: bool) -> Workload {
    let mut initial = BTreeMap::new();
    for i in 0..HOT_WALLETS {
        match rng.gen_range(0..8) {
            0 | 1 => {}
            // Near the total supply: some credits will not fit.
            2 => {
                initial.insert(
                    format!("h{i}"),
                    TOTAL_SUPPLY_UNITS - rng.gen_range(0..=200 * UNITS_PER_TOKEN),
                );
            }
            _ => {
                initial.insert(format!("h{i}"), rng.gen_range(0..=1_000_000 * UNITS_PER_TOKEN));
            }
        }
    }
    let count = rng.gen_range(if crowded { ACTIONS_CROWDED } else { ACTIONS });
    let actions = (0..count).map(|i| (format!("a{i:03}"), body(rng))).collect();
    Workload { initial, actions }
}

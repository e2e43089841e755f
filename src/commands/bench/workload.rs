//! The generated workload: actions of a chosen shape, queued all at once
//! (a backlog) or at a set rate (a steady state), and the check that every
//! wallet ends with exactly what they credit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::domain::keys::{action_key, balance_key, BALANCE_PREFIX, MARKERS_XATTR};
use crate::domain::Units;
use crate::store::{Bucket, Store};

/// Wallets the `uniform` scenario draws from.
const UNIFORM_WALLETS: u64 = 100_000;
/// Inserts written at once while generating.
const GENERATE_CONCURRENCY: usize = 64;
/// Units each beneficiary of a generated action receives (0.00001 token).
const SHARE_UNITS: u64 = 1_000;
/// Wallets read at once while checking the balances.
const CHECK_CONCURRENCY: usize = 64;
/// How often a steady producer queues its next batch.
const PRODUCE_TICK: Duration = Duration::from_millis(10);

/// The workload shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// 3 beneficiaries drawn from a large wallet population.
    Uniform,
    /// Every action credits one shared wallet plus 2 others.
    Hot,
    /// 50 beneficiaries per action.
    Wide,
}

impl Scenario {
    /// Credits per action.
    pub fn credits(self) -> f64 {
        match self {
            Scenario::Uniform | Scenario::Hot => 3.0,
            Scenario::Wide => 50.0,
        }
    }
}

/// The beneficiaries of one generated action (repeats are summed, as
/// the parser does); each receives [`SHARE_UNITS`].
fn beneficiaries(scenario: Scenario, rng: &mut StdRng) -> Vec<String> {
    let wallet = |rng: &mut StdRng| format!("b{:06}", rng.gen_range(0..UNIFORM_WALLETS));
    match scenario {
        Scenario::Uniform => (0..3).map(|_| wallet(rng)).collect(),
        Scenario::Hot => std::iter::once("hot".to_string())
            .chain((0..2).map(|_| wallet(rng)))
            .collect(),
        Scenario::Wide => (0..50).map(|_| wallet(rng)).collect(),
    }
}

/// A bijection of the action number onto all of `u64` (SplitMix64's
/// finaliser): ids land all over the key space, as producers' random ids
/// do, so that on a large ledger each transaction record goes to a page of
/// its own rather than to the end of the index.
fn spread(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn body(entries: &[String]) -> String {
    let list: Vec<String> = entries.iter().map(|h| format!(r#"{{"{h}":"0.00001"}}"#)).collect();
    format!(r#"{{"beneficiaries":[{}]}}"#, list.join(","))
}

/// The generated actions, `(id, body)`, and what each wallet must end with.
pub struct Workload {
    /// The actions, in the order they are queued.
    pub actions: Vec<(String, String)>,
    /// Units each wallet is owed.
    pub expected: BTreeMap<String, u64>,
}

/// `n` actions of `scenario`, the same for the same `n`.
pub fn generate(scenario: Scenario, n: u64) -> Workload {
    let mut rng = StdRng::seed_from_u64(1);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let actions = (0..n)
        .map(|i| {
            let entries = beneficiaries(scenario, &mut rng);
            for hash in &entries {
                *expected.entry(hash.clone()).or_default() += SHARE_UNITS;
            }
            (format!("bench-{:016x}", spread(i)), body(&entries))
        })
        .collect();
    Workload { actions, expected }
}

/// Actions that credit every wallet of `expected` once, three a time (the
/// warm-up of `bench --warm`), added to what each must end with.
pub fn warm_up(expected: &mut BTreeMap<String, u64>) -> Vec<(String, String)> {
    let wallets: Vec<String> = expected.keys().cloned().collect();
    for units in expected.values_mut() {
        *units += SHARE_UNITS;
    }
    wallets
        .chunks(3)
        .enumerate()
        .map(|(i, entries)| (format!("warm-{:016x}", spread(i as u64)), body(entries)))
        .collect()
}

/// Queues `actions`, [`GENERATE_CONCURRENCY`] inserts at a time.
pub async fn queue(store: &Arc<dyn Store>, actions: Vec<(String, String)>) -> anyhow::Result<()> {
    stream::iter(actions)
        .map(|(id, body)| {
            let store = store.clone();
            async move { store.insert(Bucket::Queue, &action_key(&id), body.as_bytes()).await }
        })
        .buffer_unordered(GENERATE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("generating actions")?;
    Ok(())
}

/// Queues `actions` at `rate` a second, a batch every [`PRODUCE_TICK`]
/// (each batch as many as the rate owes by then), until all are queued.
pub async fn produce(store: Arc<dyn Store>, actions: Vec<(String, String)>, rate: u64) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let mut rest = actions.into_iter();
    let mut queued: u64 = 0;
    let mut tick = tokio::time::interval(PRODUCE_TICK);
    loop {
        tick.tick().await;
        let owed = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        let batch: Vec<(String, String)> = rest.by_ref().take(owed.saturating_sub(queued) as usize).collect();
        if batch.is_empty() && rest.len() == 0 {
            return Ok(());
        }
        queued += batch.len() as u64;
        queue(&store, batch).await?;
    }
}

/// Checks that every wallet holds exactly the total of its credits in the
/// generated actions (a bench store starts empty), and returns the most
/// markers any of them still carries.
pub async fn check_balances(store: &dyn Store, expected: &BTreeMap<String, u64>) -> anyhow::Result<usize> {
    let results: Vec<anyhow::Result<usize>> = stream::iter(expected)
        .map(|(hash, units)| async move {
            let doc = store
                .get_with_xattrs(Bucket::Ledger, &balance_key(hash), &[MARKERS_XATTR])
                .await
                .with_context(|| format!("reading wallet {hash}"))?;
            let balance = Units::parse_balance(&doc.body).map_err(|e| anyhow::anyhow!("wallet {hash}: {e}"))?;
            anyhow::ensure!(
                balance.get() == *units,
                "wallet {hash} holds {} units where the generated actions credit {units}",
                balance.get()
            );
            Ok(doc
                .xattrs
                .first()
                .and_then(|m| m.as_ref())
                .and_then(|m| m.as_object())
                .map_or(0, |m| m.len()))
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect()
        .await;
    let mut markers_max = 0;
    for result in results {
        markers_max = markers_max.max(result?);
    }
    let wallets = store.count_keys(Bucket::Ledger, BALANCE_PREFIX).await?;
    anyhow::ensure!(
        wallets == expected.len() as u64,
        "{wallets} wallets exist where the generated actions credit {}",
        expected.len()
    );
    Ok(markers_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_ids_are_unique_and_scattered() {
        let ids: std::collections::BTreeSet<u64> = (0..100_000).map(spread).collect();
        assert_eq!(ids.len(), 100_000, "a bijection: no two actions share an id");
        // Consecutive actions land far apart in the key space.
        let near = (0..1_000u64)
            .filter(|&i| spread(i).abs_diff(spread(i + 1)) < u64::MAX / 1_000)
            .count();
        assert!(near < 10, "{near} of 1,000 neighbours stay close");
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_producer_queues_at_its_rate() {
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::new());
        let work = generate(Scenario::Uniform, 500);
        let producer = tokio::spawn(produce(store.clone(), work.actions, 1_000));
        tokio::time::sleep(Duration::from_millis(255)).await;
        let queued = store.count_keys(Bucket::Queue, "action:").await.expect("count");
        assert!(
            (240..=260).contains(&queued),
            "{queued} queued after a quarter of a second"
        );
        producer.await.expect("join").expect("produce");
        assert_eq!(store.count_keys(Bucket::Queue, "action:").await.expect("count"), 500);
    }
}

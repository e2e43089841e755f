//! `ledgerd demo`: a self-contained run in a temporary store.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Exit;
use crate::domain::keys::{action_key, balance_key, FAILED_PREFIX};
use crate::domain::{plan_action, Units};
use crate::protocol::dead_letters::DeadLetters;
use crate::store::sqlite::{OpenMode, SqliteStore};
use crate::store::{Bucket, Store};
use crate::worker::{self, WorkerConfig};

/// Wallets the demo credits.
const DEMO_WALLETS: usize = 40;
/// Most actions or workers a demo runs.
const DEMO_ACTIONS_MAX: usize = 100_000;
const DEMO_WORKERS_MAX: usize = 16;

/// One generated action body (valid or not).
fn body(rng: &mut StdRng, i: usize) -> String {
    let wallet = |rng: &mut StdRng| format!("w{:02}", rng.gen_range(0..DEMO_WALLETS));
    let tokens = |rng: &mut StdRng| {
        let units: u64 = rng.gen_range(1..=100 * 100_000_000);
        format!("{}.{:08}", units / 100_000_000, units % 100_000_000)
    };
    match i % 20 {
        0 => format!(r#"{{"beneficiaries":{{"{}":0.000000001}}}}"#, wallet(rng)),
        1 => format!(r#"{{"beneficiaries":{{"{}":150}}}}"#, wallet(rng)),
        2 => "not json at all".to_string(),
        3 => r#"{"beneficiaries":{"a":1,"a":2}}"#.to_string(),
        4..=6 => {
            let (a, b) = (wallet(rng), wallet(rng));
            format!(
                r#"{{"reward":"{}","beneficiaries":{{"{a}":60,"{b}":"30.5"}}}}"#,
                tokens(rng)
            )
        }
        _ => {
            let n = rng.gen_range(1..=4);
            let entries: Vec<String> = (0..n)
                .map(|_| format!(r#"{{"{}":"{}"}}"#, wallet(rng), tokens(rng)))
                .collect();
            format!(r#"{{"click":{i},"beneficiaries":[{}]}}"#, entries.join(","))
        }
    }
}

/// Runs the demo and prints its summary.
pub async fn run(actions: usize, workers: usize) -> anyhow::Result<Exit> {
    let actions = actions.clamp(1, DEMO_ACTIONS_MAX);
    let workers = workers.clamp(1, DEMO_WORKERS_MAX);
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let path = dir.path().join("demo.db");
    let store = SqliteStore::open(&path, "queue", "ledger", OpenMode::Create).context("creating the demo store")?;
    // Written, not printed: a reader that goes away (`ledgerd demo | head
    // -1`) ends the demo quietly (the temporary store is still removed,
    // with `dir`), where `println!` would panic.
    let mut out = std::io::stdout();
    writeln!(
        out,
        "ledgerd demo: {actions} actions into a temporary store, {workers} workers"
    )?;

    // Generate, and work out independently what every wallet should end with.
    let mut rng = StdRng::seed_from_u64(7);
    let mut expected: BTreeMap<String, u128> = BTreeMap::new();
    for i in 0..actions {
        let text = body(&mut rng, i);
        if let Ok(plan) = plan_action(text.as_bytes()) {
            for c in plan.credits {
                *expected.entry(c.hash).or_default() += u128::from(c.units.get());
            }
        }
        store
            .insert(Bucket::Queue, &action_key(&format!("demo-{i:05}")), text.as_bytes())
            .await?;
    }

    let started = Instant::now();
    let cfg = WorkerConfig {
        concurrency: 8,
        lease: Duration::from_secs(10),
        page_size: 128,
        idle_backoff_max: Duration::from_millis(200),
        exit_when_idle: true,
        shutdown_grace: Duration::from_secs(10),
        member_timeout: crate::worker::membership::MEMBER_TIMEOUT,
        partition: true,
    };
    let mut runs = Vec::new();
    for _ in 0..workers {
        let handle: Arc<dyn Store> = Arc::new(SqliteStore::open(&path, "queue", "ledger", OpenMode::Existing)?);
        runs.push(worker::run(
            handle,
            cfg.clone(),
            Arc::default(),
            std::future::pending::<()>(),
        ));
    }
    let stats = futures::future::join_all(runs).await;
    if let Some(why) = stats.iter().find_map(|s| s.stopped.clone()) {
        anyhow::bail!(why);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let completed: u64 = stats.iter().map(|s| s.completed).sum();
    let failed: u64 = stats.iter().map(|s| s.failed).sum();
    writeln!(
        out,
        "processed     {} in {elapsed:.2} s ({:.0} actions/s)",
        completed + failed,
        (completed + failed) as f64 / elapsed.max(1e-9)
    )?;
    writeln!(out, "completed     {completed}")?;
    writeln!(out, "failed        {failed}, preserved with their reasons, e.g.:")?;
    for key in store.list_keys(Bucket::Queue, FAILED_PREFIX, None, 4).await? {
        // Read as every command reads it: one entry per rejected body.
        let letters = DeadLetters::parse(&store.get(Bucket::Queue, &key).await?.body);
        for entry in &letters.entries {
            writeln!(out, "  {key}: {}", entry.reason)?;
        }
    }

    let mut mismatches = 0;
    for (hash, want) in &expected {
        let got = match store.get(Bucket::Ledger, &balance_key(hash)).await {
            Ok(doc) => Units::parse_balance(&doc.body)
                .map(|u| u128::from(u.get()))
                .unwrap_or(u128::MAX),
            Err(_) => 0,
        };
        if got != *want {
            mismatches += 1;
            writeln!(out, "  MISMATCH {hash}: expected {want} units, found {got}")?;
        }
    }
    let queued = store.count_keys(Bucket::Queue, "action:").await?;
    writeln!(
        out,
        "balances      {} wallets; every balance equals the sum of its accepted actions: {}",
        expected.len(),
        if mismatches == 0 { "yes" } else { "NO" }
    )?;
    for (hash, units) in expected.iter().take(3) {
        let units = Units::new(u64::try_from(*units).unwrap_or(u64::MAX)).unwrap_or(Units::SUPPLY);
        writeln!(out, "  {hash}  {} tokens", units.to_tokens_string())?;
    }
    writeln!(out, "queue         {queued} actions left")?;
    drop(store);
    dir.close().context("removing the demo store")?;
    writeln!(out, "the temporary store is removed")?;
    Ok(if mismatches == 0 && queued == 0 {
        Exit::Success
    } else {
        Exit::Rejected
    })
}

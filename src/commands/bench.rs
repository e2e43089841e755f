//! `ledgerd bench`: generate a workload into a fresh store, run workers,
//! and measure throughput, latency, store operations and memory.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::Exit;
use crate::config::Settings;
use crate::domain::keys::{action_key, balance_key, ACTION_PREFIX, BALANCE_PREFIX, MARKERS_XATTR};
use crate::domain::Units;
use crate::store::hooked::{Fault, Hook, Hooked, InFlight, OpKind};
use crate::store::{open, Bucket, OpenMode, Store, StoreError};
use crate::worker::{self, Latencies, WorkerConfig};

/// Wallets the `uniform` scenario draws from.
const UNIFORM_WALLETS: u64 = 100_000;
/// Inserts written at once while generating.
const GENERATE_CONCURRENCY: usize = 64;
/// Units each beneficiary of a generated action receives (0.00001 token).
const SHARE_UNITS: u64 = 1_000;
/// Wallets read at once while checking the balances.
const CHECK_CONCURRENCY: usize = 64;

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

/// Counts store operations by what they cost: reads, writes, conflicts,
/// and the wallet writes among the writes.
#[derive(Default)]
pub struct OpCounter {
    reads: AtomicU64,
    writes: AtomicU64,
    wallet_writes: AtomicU64,
    conflicts: AtomicU64,
    round_trips: AtomicU64,
}

/// What one `ledgerd run --bench-report FILE` process did: its latencies
/// and its store operations.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct ProcessReport {
    /// Claim-to-completion of the actions it completed (a fixed-size
    /// histogram, whatever the number of actions).
    pub latencies: Latencies,
    /// Store reads.
    pub reads: u64,
    /// Store writes.
    pub writes: u64,
    /// Wallet writes among them.
    pub wallet_writes: u64,
    /// CAS mismatches, exists and locked answers.
    pub conflicts: u64,
    /// Sequential round trips on the actions' paths: a store call that
    /// starts while none of its action is in flight begins one, and a write
    /// group counts one per stage, as Couchbase runs it.
    #[serde(default)]
    pub round_trips: u64,
    /// The process's peak resident memory.
    #[serde(default)]
    pub peak_rss_bytes: u64,
}

impl ProcessReport {
    /// The report of a worker that ran with `counter`.
    pub fn new(latencies: &Latencies, counter: &OpCounter) -> Self {
        Self {
            latencies: latencies.clone(),
            reads: counter.reads.load(Ordering::Relaxed),
            writes: counter.writes.load(Ordering::Relaxed),
            wallet_writes: counter.wallet_writes.load(Ordering::Relaxed),
            conflicts: counter.conflicts.load(Ordering::Relaxed),
            round_trips: counter.round_trips.load(Ordering::Relaxed),
            peak_rss_bytes: peak_rss_bytes(),
        }
    }

    fn add(&mut self, other: ProcessReport) {
        self.latencies.merge(&other.latencies);
        self.reads += other.reads;
        self.writes += other.writes;
        self.wallet_writes += other.wallet_writes;
        self.conflicts += other.conflicts;
        self.round_trips += other.round_trips;
        self.peak_rss_bytes = self.peak_rss_bytes.max(other.peak_rss_bytes);
    }
}

#[async_trait::async_trait]
impl Hook for OpCounter {
    async fn before(&self, _kind: OpKind, _key: &str) -> Fault {
        if InFlight::begin() {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        Fault::Pass
    }
    fn watches_only(&self) -> bool {
        true
    }
    fn counts_round_trips(&self) -> bool {
        true
    }
    fn after(&self, kind: OpKind, _key: &str, error: Option<&StoreError>) {
        InFlight::end();
        let counter = if kind.is_write() { &self.writes } else { &self.reads };
        counter.fetch_add(1, Ordering::Relaxed);
        if kind == OpKind::WriteWithXattrs {
            self.wallet_writes.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(
            error,
            Some(StoreError::CasMismatch | StoreError::Exists | StoreError::Locked)
        ) {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize)]
struct OpsPerAction {
    reads: f64,
    writes: f64,
    wallet_writes: f64,
    conflicts: f64,
    round_trips: f64,
}

#[derive(Serialize)]
struct Report {
    scenario: Scenario,
    store: String,
    actions: u64,
    actions_per_sec: f64,
    credits_per_sec: f64,
    /// Across every worker process.
    latency_ms: Latency,
    /// Across every worker process.
    store_ops_per_action: OpsPerAction,
    /// Worker processes.
    processes: usize,
    /// This process's (with one process, the worker's too: it runs here,
    /// beside the generated workload the bench keeps for its checks).
    peak_rss_bytes: u64,
    /// With several processes, the largest worker process's: what a worker
    /// needs, whatever the queue's length.
    worker_peak_rss_bytes: Option<u64>,
    /// Every wallet checked against the totals of the generated actions.
    balances_exact: bool,
    /// The most idempotency markers left on any wallet at the end.
    wallet_markers_max: usize,
}

/// This process's peak resident memory (Linux), else 0.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// What `ledgerd bench` was asked to do.
pub struct BenchArgs {
    /// Workload shape.
    pub scenario: Scenario,
    /// Actions to generate.
    pub actions: u64,
    /// Concurrency of each worker.
    pub concurrency: usize,
    /// Worker processes (1 runs the worker in this process and counts its operations).
    pub processes: usize,
    /// Store URL; `None` for a fresh embedded store in a temporary directory.
    pub target: Option<String>,
    /// Print one JSON object.
    pub json: bool,
}

/// Runs the benchmark and prints its report.
pub async fn run(settings: &Settings, args: BenchArgs) -> anyhow::Result<Exit> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut settings = settings.clone();
    settings.store = args
        .target
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    settings.metrics_addr = "off".into();
    let store = open(&settings, OpenMode::Create)
        .await
        .context("opening the bench store")?;
    store.init().await.context("initialising the bench store")?;
    if store.count_keys(Bucket::Queue, ACTION_PREFIX).await? > 0
        || store.count_keys(Bucket::Ledger, BALANCE_PREFIX).await? > 0
    {
        anyhow::bail!("the bench store already has queued actions or wallets; give --target a fresh store");
    }
    let mut rng = StdRng::seed_from_u64(1);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let bodies: Vec<(String, String)> = (0..args.actions)
        .map(|i| {
            let entries = beneficiaries(args.scenario, &mut rng);
            for hash in &entries {
                *expected.entry(hash.clone()).or_default() += SHARE_UNITS;
            }
            (format!("bench-{:016x}", spread(i)), body(&entries))
        })
        .collect();
    let credits_per_action = match args.scenario {
        Scenario::Uniform | Scenario::Hot => 3.0,
        Scenario::Wide => 50.0,
    };
    stream::iter(bodies)
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

    let progress = show_progress(store.clone(), args.actions);
    let cfg = WorkerConfig {
        concurrency: args.concurrency,
        exit_when_idle: true,
        ..super::run::worker_config(&settings, true)
    };
    let started = Instant::now();
    let merged = if args.processes <= 1 {
        let counter = Arc::new(Hooked::new(store.clone(), OpCounter::default()));
        let stats = worker::run(counter.clone(), cfg, Arc::default(), std::future::pending::<()>()).await;
        if let Some(why) = stats.stopped {
            anyhow::bail!(why);
        }
        ProcessReport::new(&stats.latencies, &counter.hook)
    } else {
        run_processes(&settings, &args, dir.path())?
    };
    let secs = started.elapsed().as_secs_f64();
    progress.abort();
    let left = store.count_keys(Bucket::Queue, ACTION_PREFIX).await?;
    if left > 0 {
        anyhow::bail!("{left} actions were not processed");
    }
    let wallet_markers_max = check_balances(store.as_ref(), &expected).await?;
    let done = args.actions as f64;
    let report = Report {
        scenario: args.scenario,
        store: if args.target.is_some() {
            store.describe()
        } else {
            "embedded (sqlite, temporary)".into()
        },
        actions: args.actions,
        actions_per_sec: done / secs,
        credits_per_sec: done * credits_per_action / secs,
        latency_ms: Latency {
            p50: merged.latencies.quantile_ms(0.5),
            p99: merged.latencies.quantile_ms(0.99),
            max: merged.latencies.max_ms(),
        },
        store_ops_per_action: OpsPerAction {
            reads: merged.reads as f64 / done,
            writes: merged.writes as f64 / done,
            wallet_writes: merged.wallet_writes as f64 / done,
            conflicts: merged.conflicts as f64 / done,
            round_trips: merged.round_trips as f64 / done,
        },
        processes: args.processes.max(1),
        peak_rss_bytes: peak_rss_bytes(),
        worker_peak_rss_bytes: (args.processes > 1).then_some(merged.peak_rss_bytes),
        balances_exact: true,
        wallet_markers_max,
    };
    print_report(&report, args.json)?;
    Ok(Exit::Success)
}

/// Checks that every wallet holds exactly the total of its credits in the
/// generated actions (a bench store starts empty), and returns the most
/// markers any of them still carries.
async fn check_balances(store: &dyn Store, expected: &BTreeMap<String, u64>) -> anyhow::Result<usize> {
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
            Ok(doc.xattrs[0]
                .as_ref()
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

/// Runs `processes` `ledgerd run --exit-when-idle` children on the store,
/// and merges what they report.
fn run_processes(settings: &Settings, args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<ProcessReport> {
    let exe = std::env::current_exe().context("finding the ledgerd binary")?;
    let concurrency = args.concurrency.to_string();
    let reports: Vec<std::path::PathBuf> = (0..args.processes)
        .map(|i| dir.join(format!("process-{i}.json")))
        .collect();
    let children: Vec<_> = reports
        .iter()
        .map(|report| {
            std::process::Command::new(&exe)
                .args([
                    "--store",
                    &settings.store,
                    "--log-level",
                    "error",
                    "run",
                    "--exit-when-idle",
                ])
                .args(["--metrics-addr", "off", "--concurrency", &concurrency])
                .arg("--bench-report")
                .arg(report)
                .stdout(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()
        .context("starting worker processes")?;
    for mut child in children {
        let status = child.wait()?;
        anyhow::ensure!(status.success(), "a worker process failed: {status}");
    }
    let mut merged = ProcessReport::default();
    for report in &reports {
        let text = std::fs::read(report).with_context(|| format!("reading {}", report.display()))?;
        merged.add(serde_json::from_slice(&text).with_context(|| format!("reading {}", report.display()))?);
    }
    Ok(merged)
}

/// A progress line on a terminal while the queue drains.
fn show_progress(store: Arc<dyn Store>, total: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !std::io::stderr().is_terminal() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(left) = store.count_keys(Bucket::Queue, ACTION_PREFIX).await {
                let done = total.saturating_sub(left);
                let width = 30 * done / total.max(1);
                eprint!(
                    "\r[{}{}] {done}/{total}",
                    "#".repeat(width as usize),
                    ".".repeat(30 - width as usize)
                );
            }
        }
    })
}

fn print_report(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    eprintln!();
    println!("scenario        {:?}", r.scenario);
    println!("store           {}", r.store);
    println!("actions         {}", r.actions);
    println!("actions/s       {:.0}", r.actions_per_sec);
    println!("credits/s       {:.0}", r.credits_per_sec);
    println!("processes       {}", r.processes);
    let l = &r.latency_ms;
    println!("latency ms      p50 {:.1}  p99 {:.1}  max {:.1}", l.p50, l.p99, l.max);
    let o = &r.store_ops_per_action;
    println!(
        "ops/action      reads {:.2}  writes {:.2} (wallet writes {:.2})  conflicts {:.2}",
        o.reads, o.writes, o.wallet_writes, o.conflicts
    );
    println!("round trips     {:.2} per action", o.round_trips);
    println!(
        "balances        exact ({} markers at most on a wallet)",
        r.wallet_markers_max
    );
    println!("peak RSS        {:.1} MiB", r.peak_rss_bytes as f64 / 1_048_576.0);
    if let Some(worker) = r.worker_peak_rss_bytes {
        println!("worker RSS      {:.1} MiB at most", worker as f64 / 1_048_576.0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::hooked::IN_FLIGHT;
    use crate::store::memory::MemoryStore;

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

    /// The memory store answers on the first poll: without `as_if_remote`
    /// the first of two joined reads would end before the second began,
    /// and they would count as two round trips.
    #[tokio::test]
    async fn calls_started_together_are_one_round_trip_however_fast_the_store() {
        let store = Hooked::new(Arc::new(MemoryStore::new()), OpCounter::default());
        let trips = |store: &Hooked<OpCounter>| ProcessReport::new(&Latencies::new(), &store.hook).round_trips;
        IN_FLIGHT
            .scope(Default::default(), async {
                let (a, b) = tokio::join!(
                    store.get(Bucket::Ledger, "balance:a"),
                    store.get(Bucket::Ledger, "balance:b")
                );
                assert!(matches!((a, b), (Err(StoreError::NotFound), Err(StoreError::NotFound))));
                assert_eq!(trips(&store), 1, "joined calls");
                let _ = store.get(Bucket::Ledger, "balance:a").await;
                let _ = store.get(Bucket::Ledger, "balance:b").await;
                assert_eq!(trips(&store), 3, "one after the other");
            })
            .await;
    }
}

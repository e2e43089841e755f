//! `ledgerd bench`: generate a workload into a fresh store, run workers,
//! and measure throughput, latency, store operations, claims, discovery
//! reads and memory.
//!
//! Workers are replicas in this process (`--replicas N`: each with its own
//! discovery, coalescer and membership identity, as separate processes
//! would have) or real `ledgerd run` processes (`--processes N`). The
//! workload is queued all at once (a backlog) or at a set rate while the
//! workers run (`--rate R`: a steady state). `--store-latency-ms L` makes
//! every store call of the replicas wait L ms first, so that many replicas
//! on a small machine behave as round-trip bound, as on Couchbase.

use std::io::IsTerminal;
use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

pub use super::counter::{peak_rss_bytes, OpCounter, ProcessReport};
use super::Exit;
use crate::config::{MetricsAddr, Settings};
use crate::domain::keys::{ACTION_PREFIX, BALANCE_PREFIX};
use crate::store::hooked::Hooked;
use crate::store::{open, Bucket, OpenMode, Store};
use crate::worker::{self, WorkerConfig};
pub use workload::Scenario;

mod workload;

/// How often the driver looks whether the queue is empty.
const DRAINED_POLL: Duration = Duration::from_millis(20);
/// Longest pause of an idle replica between passes.
const REPLICA_IDLE_BACKOFF_MAX: Duration = Duration::from_millis(50);
/// Longest wait for the replicas to join the membership.
const CONVERGE_MAX: Duration = Duration::from_secs(60);

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
    /// The membership's heartbeats (reads and writes of one document).
    membership: f64,
}

#[derive(Serialize)]
struct Report {
    scenario: Scenario,
    store: String,
    actions: u64,
    /// `backlog` (queued before the workers start) or `steady` (queued at
    /// `rate` while they run).
    mode: &'static str,
    /// Actions queued a second in the steady state.
    rate: Option<u64>,
    /// With `--warm`: the seconds waited after every wallet was credited
    /// once by other replicas (their markers that old when the measure
    /// began); `None`: fresh wallets.
    warm_s: Option<u64>,
    actions_per_sec: f64,
    credits_per_sec: f64,
    /// Across every worker.
    latency_ms: Latency,
    /// Across every worker.
    store_ops_per_action: OpsPerAction,
    /// Claims tried per action finished (1 when no claim met another
    /// worker's lock or a removed action).
    claim_attempts_per_action: f64,
    /// Keys read by discovery per action finished.
    discovery_keys_per_action: f64,
    /// Worker processes.
    processes: usize,
    /// Replicas in this process.
    replicas: usize,
    /// What every store call of the replicas waited first.
    store_latency_ms: u64,
    /// Whether the workers divided the queue between them.
    partitioned: bool,
    /// This process's (with replicas, the workers' too: they run here,
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

/// What `ledgerd bench` was asked to do.
pub struct BenchSpec {
    /// Workload shape.
    pub scenario: Scenario,
    /// Actions to generate.
    pub actions: u64,
    /// Concurrency of each worker.
    pub concurrency: usize,
    /// Worker processes (each a `ledgerd run`); more than 1 excludes replicas.
    pub processes: usize,
    /// Replicas in this process.
    pub replicas: usize,
    /// What every store call of the replicas waits first.
    pub store_latency: Duration,
    /// Actions queued a second while the workers run; `None`: all first.
    pub rate: Option<u64>,
    /// Workers divide the queue (else each races for every action).
    pub partition: bool,
    /// Store URL; `None` for a fresh embedded store in a temporary directory.
    pub target: Option<String>,
    /// Print one JSON object.
    pub json: bool,
    /// Warm the wallets first (see `--warm`), then wait this long.
    pub warm: Option<Duration>,
}

/// Runs the benchmark and prints its report.
pub async fn run(settings: &Settings, args: BenchSpec) -> anyhow::Result<Exit> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut settings = settings.clone();
    settings.store.url = args
        .target
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    settings.ops.metrics_addr = MetricsAddr::Off;
    let store = open(&settings, OpenMode::Create)
        .await
        .context("opening the bench store")?;
    store.init().await.context("initialising the bench store")?;
    if store.count_keys(Bucket::Queue, ACTION_PREFIX).await? > 0
        || store.count_keys(Bucket::Ledger, BALANCE_PREFIX).await? > 0
    {
        anyhow::bail!("the bench store already has queued actions or wallets; give --target a fresh store");
    }
    let mut work = workload::generate(args.scenario, args.actions);
    if let Some(wait) = args.warm {
        warm_up(&settings, &args, &store, &mut work).await?;
        tokio::time::sleep(wait).await;
    }
    let progress = show_progress(store.clone(), args.actions);
    let (merged, secs) = if args.processes > 1 {
        workload::queue(&store, work.actions).await?;
        let started = Instant::now();
        let merged = run_processes(&settings, &args, dir.path())?;
        (merged, started.elapsed().as_secs_f64())
    } else {
        run_replicas(&settings, &args, &store, work.actions).await?
    };
    progress.abort();
    let left = store.count_keys(Bucket::Queue, ACTION_PREFIX).await?;
    if left > 0 {
        anyhow::bail!("{left} actions were not processed");
    }
    let wallet_markers_max = workload::check_balances(store.as_ref(), &work.expected).await?;
    let done = args.actions as f64;
    let finished = (merged.finished as f64).max(1.0);
    let report = Report {
        scenario: args.scenario,
        store: if args.target.is_some() {
            store.describe()
        } else {
            "embedded (sqlite, temporary)".into()
        },
        actions: args.actions,
        mode: if args.rate.is_some() { "steady" } else { "backlog" },
        rate: args.rate,
        warm_s: args.warm.map(|w| w.as_secs()),
        actions_per_sec: done / secs,
        credits_per_sec: done * args.scenario.credits() / secs,
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
            membership: merged.membership as f64 / done,
        },
        claim_attempts_per_action: merged.claim_attempts as f64 / finished,
        discovery_keys_per_action: merged.discovery_keys as f64 / finished,
        processes: args.processes.max(1),
        replicas: if args.processes > 1 { 0 } else { args.replicas.max(1) },
        store_latency_ms: u64::try_from(args.store_latency.as_millis()).unwrap_or(u64::MAX),
        partitioned: args.partition,
        peak_rss_bytes: peak_rss_bytes(),
        worker_peak_rss_bytes: (args.processes > 1).then_some(merged.peak_rss_bytes),
        balances_exact: true,
        wallet_markers_max,
    };
    print_report(&report, args.json)?;
    Ok(Exit::Success)
}

/// Runs `args.replicas` workers in this process: once they all see each
/// other, queues `actions` (all at once, or at the rate) and lets them run
/// until the queue is empty; returns what they did, merged, and the
/// seconds from the first action queued to the last one finished.
async fn run_replicas(
    settings: &Settings,
    args: &BenchSpec,
    store: &Arc<dyn Store>,
    actions: Vec<(String, String)>,
) -> anyhow::Result<(ProcessReport, f64)> {
    let replicas_n = args.replicas.max(1);
    // A lone worker on a backlog ends as `run --exit-when-idle` does, the
    // moment the queue is idle. Replicas run until the queue is empty, as
    // a deployment's do, and look for work often (a pause of up to the
    // configured second would count against them).
    let lone = replicas_n == 1 && args.rate.is_none();
    let cfg = WorkerConfig {
        concurrency: args.concurrency,
        idle_backoff_max: if lone {
            settings.worker.idle_backoff_max
        } else {
            REPLICA_IDLE_BACKOFF_MAX
        },
        partition: args.partition,
        ..super::run::worker_config(settings, lone)
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let replicas: Vec<Arc<Hooked<OpCounter>>> = (0..replicas_n)
        .map(|_| Arc::new(Hooked::new(store.clone(), OpCounter::with_latency(args.store_latency))))
        .collect();
    let mut actions = Some(actions);
    if lone {
        workload::queue(store, actions.take().unwrap_or_default()).await?;
    }
    let workers: Vec<_> = replicas
        .iter()
        .map(|replica| {
            let (replica, cfg, mut stopped) = (replica.clone(), cfg.clone(), stopped.clone());
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                worker::run(replica, cfg, Arc::default(), shutdown).await
            })
        })
        .collect();
    let started = if lone {
        Instant::now()
    } else {
        if args.partition {
            converge(store.as_ref(), replicas_n, cfg.member_timeout).await?;
        }
        let started = Instant::now();
        let actions = actions.take().unwrap_or_default();
        match args.rate {
            None => workload::queue(store, actions).await?,
            Some(rate) => workload::produce(store.clone(), actions, rate).await?,
        }
        while store.count_keys(Bucket::Queue, ACTION_PREFIX).await? > 0 {
            tokio::time::sleep(DRAINED_POLL).await;
        }
        let _ = stop.send(true);
        started
    };
    let mut merged = ProcessReport::default();
    for (worker, replica) in workers.into_iter().zip(&replicas) {
        let stats = worker.await.context("a replica")?;
        if let Some(why) = &stats.stopped {
            anyhow::bail!("a replica stopped: {why}");
        }
        merged.add(ProcessReport::new(&stats, &replica.hook));
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((merged, secs))
}

/// Credits every wallet of `work` once, through replicas of their own
/// (their own coalescers and lists of completed actions, as other
/// processes have), as many as will be measured; counts the credits in
/// what each wallet must end with. Not measured.
async fn warm_up(
    settings: &Settings,
    args: &BenchSpec,
    store: &Arc<dyn Store>,
    work: &mut workload::Workload,
) -> anyhow::Result<()> {
    let actions = workload::warm_up(&mut work.expected);
    let warm = BenchSpec {
        rate: None,
        processes: 1,
        replicas: args.replicas.max(args.processes),
        warm: None,
        json: true,
        target: None,
        ..*args
    };
    run_replicas(settings, &warm, store, actions).await?;
    Ok(())
}

/// Waits until the membership lists `replicas` members and each has read
/// it again since (two heartbeats), so that the measure starts with the
/// queue divided, as in a deployment that has been up for a while.
async fn converge(store: &dyn Store, replicas: usize, member_timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONVERGE_MAX;
    while crate::worker::membership::listed(store).await?.len() < replicas {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the replicas did not all join the membership"
        );
        tokio::time::sleep(DRAINED_POLL).await;
    }
    tokio::time::sleep(member_timeout * 2 / crate::worker::membership::HEARTBEATS_PER_TIMEOUT).await;
    Ok(())
}

/// Runs `processes` `ledgerd run --exit-when-idle` children on the store,
/// and merges what they report.
fn run_processes(settings: &Settings, args: &BenchSpec, dir: &std::path::Path) -> anyhow::Result<ProcessReport> {
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
                    &settings.store.url,
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
    let mut out = std::io::stdout();
    if json {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
        return Ok(());
    }
    eprintln!();
    writeln!(out, "scenario        {:?}", r.scenario)?;
    writeln!(out, "store           {}", r.store)?;
    match r.rate {
        Some(rate) => writeln!(out, "actions         {} at {rate}/s (steady state)", r.actions)?,
        None => writeln!(out, "actions         {} (a backlog)", r.actions)?,
    }
    match r.warm_s {
        Some(s) => writeln!(
            out,
            "wallets         warm: each credited by other replicas {s} s before"
        )?,
        None => writeln!(out, "wallets         fresh")?,
    }
    writeln!(out, "actions/s       {:.0}", r.actions_per_sec)?;
    writeln!(out, "credits/s       {:.0}", r.credits_per_sec)?;
    if r.processes > 1 {
        writeln!(out, "processes       {}", r.processes)?;
    } else {
        writeln!(out, "replicas        {}", r.replicas)?;
    }
    if r.store_latency_ms > 0 {
        writeln!(out, "store latency   {} ms a call", r.store_latency_ms)?;
    }
    let l = &r.latency_ms;
    writeln!(
        out,
        "latency ms      p50 {:.1}  p99 {:.1}  max {:.1}",
        l.p50, l.p99, l.max
    )?;
    let o = &r.store_ops_per_action;
    writeln!(
        out,
        "ops/action      reads {:.2}  writes {:.2} (wallet writes {:.2})  conflicts {:.2}  membership {:.3}",
        o.reads, o.writes, o.wallet_writes, o.conflicts, o.membership
    )?;
    writeln!(out, "round trips     {:.2} per action", o.round_trips)?;
    writeln!(
        out,
        "claims          {:.3} per action; discovery read {:.2} keys per action",
        r.claim_attempts_per_action, r.discovery_keys_per_action
    )?;
    writeln!(
        out,
        "balances        exact ({} markers at most on a wallet)",
        r.wallet_markers_max
    )?;
    writeln!(out, "peak RSS        {:.1} MiB", r.peak_rss_bytes as f64 / 1_048_576.0)?;
    if let Some(worker) = r.worker_peak_rss_bytes {
        writeln!(out, "worker RSS      {:.1} MiB at most", worker as f64 / 1_048_576.0)?;
    }
    Ok(())
}

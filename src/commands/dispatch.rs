//! From a parsed command line to a finished command: the log filter, the
//! runtime, one library call per subcommand, and the exit code. The binary
//! only parses and calls these.

use anyhow::Context;

use super::{Exit, Usage};
use crate::cli::{Checkpoint, Cli, Command, FailedAction, FailedSelection, QueueAction};
use crate::config::Settings;
use crate::protocol::adjust::Change;
use crate::store::check::Depth;
use crate::store::{open, OpenError, OpenMode};

/// Threads the runtime keeps for blocking work (SQLite's pooled reads:
/// listings, counts, the queue census, readiness probes; stdin for
/// `enqueue`), where tokio's default is 512. Few, and kept for the
/// process's life ([`BLOCKING_THREAD_KEEP_ALIVE`]): every thread that
/// allocates gets an allocator heap of its own (mimalloc's for ledgerd's
/// memory, a glibc arena for SQLite's), and a thread that exits leaves its
/// pages behind for the others to reclaim. tokio's default (idle threads
/// exit after 10 s, new ones start with the next burst) made a worker's
/// resident memory creep by about 8 bytes per action over 1,500,000
/// actions; two threads kept for good held it level, at the same
/// throughput (BENCHMARKS.md, the soak). A worker's own blocking work is a
/// read at a time; more wait their turn.
const BLOCKING_THREADS_MAX: usize = 2;
/// How long an idle blocking thread is kept: for good, in practice (a day
/// of no blocking work at all), so that the threads do not come and go.
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// The log filter: `--log-level`, else a valid `RUST_LOG`, else the
/// command's own quieter default, else the settings'. An invalid
/// `RUST_LOG` is a configuration error (exit 2).
pub fn log_filter(cli: &Cli, settings: &Settings) -> Result<String, String> {
    Ok(match (&cli.global.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => level.clone(),
        (None, Ok(env)) if !env.is_empty() => {
            crate::config::check_log_filter(&env).map_err(|why| format!("RUST_LOG {why}"))?;
            env
        }
        // The demo and bench print their own summaries; their workers' logs
        // (the demo's rejections are its own invalid examples) would bury them.
        _ if matches!(cli.command, Command::Demo(_)) => "error".to_string(),
        _ if matches!(cli.command, Command::Bench(_)) => "warn".to_string(),
        // The simulated workers' warnings are the faults it injects.
        #[cfg(feature = "simulate")]
        _ if matches!(cli.command, Command::Simulate(_)) => "error".to_string(),
        _ => settings.log.level.clone(),
    })
}

/// The process's exit code for a command's result, saying why it failed
/// if it did.
pub fn exit_code(result: anyhow::Result<Exit>) -> u8 {
    match result {
        Ok(exit) => exit.code(),
        // A reader that went away (`ledgerd balances | head`) is not a failure.
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            report_failure(&e);
            failure_code(&e)
        }
    }
}

/// 2 when the configuration or the usage is at fault (a store URL, an
/// embedded store that does not exist, arguments that do not go together),
/// else 1.
fn failure_code(e: &anyhow::Error) -> u8 {
    let misconfigured = e.chain().any(|cause| {
        matches!(cause.downcast_ref::<OpenError>(), Some(OpenError::Config(_)))
            || cause.downcast_ref::<Usage>().is_some()
    });
    if misconfigured {
        2
    } else {
        1
    }
}

/// Says once why the command failed, in the one shape every failure of
/// every command ends with, whatever the log format: a last line
/// `ledgerd: …` on stderr, as usage and configuration errors are said
/// before logging starts. (Where logs were JSON lines, a failure to open
/// the store used to be one more of them, in another shape than the
/// rest.)
fn report_failure(e: &anyhow::Error) {
    eprintln!("ledgerd: {e:#}");
}

/// Runs one subcommand.
pub fn dispatch(command: Command, settings: Settings) -> anyhow::Result<Exit> {
    if let Command::Plan = command {
        return super::plan::run(std::io::stdin().lock(), std::io::stdout().lock());
    }
    #[cfg(feature = "simulate")]
    if let Command::Simulate(args) = &command {
        use crate::cli::SabotageArg;
        use crate::sim::Sabotage;
        let sabotage = match args.sabotage {
            SabotageArg::None => Sabotage::None,
            SabotageArg::SkipMarkerCheck => Sabotage::SkipMarkerCheck,
            SabotageArg::RemoveOnClaim => Sabotage::RemoveOnClaim,
        };
        let out = std::io::stdout().lock();
        if args.exhaustive {
            let bounds = crate::sim::explore::Bounds {
                preemptions: usize::try_from(args.preemptions).unwrap_or(usize::MAX),
                faults: usize::try_from(args.faults).unwrap_or(usize::MAX),
                schedules_max: u64::MAX,
                sweep: !args.no_sweep,
            };
            return super::simulate::exhaustive(bounds, args.schedule.as_deref(), out);
        }
        return super::simulate::run(args.seeds, args.from, args.seed, args.trace, sabotage, out);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let existing = || async { open(&settings, OpenMode::Existing).await.context("opening the store") };
        let mut stdout = std::io::stdout();
        match command {
            Command::Plan => unreachable!("handled above"),
            #[cfg(feature = "simulate")]
            Command::Simulate(_) => unreachable!("handled above"),
            Command::Init => super::run::init(&settings).await,
            Command::Run(args) => super::run::run(&settings, args.exit_when_idle, args.bench_report.as_deref()).await,
            Command::Enqueue => super::enqueue::run(existing().await?, tokio::io::stdin()).await,
            Command::Balance { hashes } => super::inspect::balance(existing().await?.as_ref(), &hashes, stdout).await,
            Command::Balances => super::inspect::balances(existing().await?.as_ref(), &mut stdout).await,
            Command::Failed {
                filters,
                counts,
                action: None,
            } => {
                let store = existing().await?;
                if counts {
                    super::failed::counts(store.as_ref(), &filters, &mut stdout).await
                } else {
                    super::failed::list(store.as_ref(), &filters, &mut stdout).await
                }
            }
            Command::Failed {
                action: Some(FailedAction::Show { id }),
                ..
            } => super::failed::show(existing().await?.as_ref(), &id, stdout).await,
            Command::Failed {
                action: Some(FailedAction::Requeue { which, doc }),
                ..
            } => {
                let replacement = match doc {
                    Some(path) => Some(
                        std::fs::read(&path).map_err(|e| Usage(format!("--doc: reading {}: {e}", path.display())))?,
                    ),
                    None => None,
                };
                let which = selection(which)?;
                super::failed::requeue(existing().await?.as_ref(), &which, replacement, stdout).await
            }
            Command::Failed {
                action: Some(FailedAction::Purge { which }),
                ..
            } => {
                let which = selection(which)?;
                super::failed::purge(existing().await?.as_ref(), &which, stdout).await
            }
            Command::Audit {
                snapshot: true,
                wallets_per_pass,
                ..
            } => super::audit::snapshot(existing().await?.as_ref(), passes(wallets_per_pass), stdout).await,
            Command::Audit { since: Some(since), .. } => {
                let name = match since {
                    Checkpoint::Last => None,
                    Checkpoint::Named(n) => Some(n),
                };
                super::audit::audit_since(existing().await?.as_ref(), name, stdout).await
            }
            Command::Audit {
                wallets_per_pass,
                checkpoint,
                ..
            } => super::audit::audit(existing().await?.as_ref(), passes(wallets_per_pass), checkpoint, stdout).await,
            Command::Adjust(args) => {
                let change = match (args.to, args.by) {
                    (Some(units), _) => Change::To(units),
                    (None, Some(delta)) => Change::By(delta),
                    (None, None) => anyhow::bail!("adjust needs --to or --by"),
                };
                let store = existing().await?;
                super::adjust::run(store.as_ref(), &args.hash, change, &args.reason, args.id, stdout).await
            }
            Command::Tx { id } => super::audit::tx(existing().await?.as_ref(), &id, stdout).await,
            Command::History { hash } => super::audit::history(existing().await?.as_ref(), &hash, stdout).await,
            Command::Sweep => super::inspect::sweep(existing().await?.as_ref(), stdout).await,
            Command::Queue {
                state,
                json,
                action: None,
            } => super::queue::list(existing().await?.as_ref(), state, json, stdout).await,
            Command::Queue {
                action: Some(QueueAction::Show { id }),
                ..
            } => super::queue::show(existing().await?.as_ref(), &id, stdout).await,
            Command::Status { json } => super::inspect::status(existing().await?.as_ref(), json, stdout).await,
            Command::Check { full, json } => {
                let depth = if full { Depth::Full } else { Depth::Quick };
                super::check::run(&settings, depth, json, stdout).await
            }
            Command::Demo(args) => super::demo::run(args.actions, args.workers).await,
            Command::Bench(args) => {
                if args.processes > 1 && args.store_latency_ms > 0 {
                    return Err(Usage(
                        "--store-latency-ms slows the replicas of this process; it cannot reach \
                         --processes (separate `ledgerd run` processes): use --replicas N"
                            .into(),
                    )
                    .into());
                }
                let args = super::bench::BenchSpec {
                    scenario: args.scenario,
                    actions: args.actions.max(1),
                    concurrency: args.concurrency.clamp(1, crate::config::CONCURRENCY_MAX),
                    processes: args.processes.clamp(1, 64),
                    replicas: usize::from(args.replicas),
                    store_latency: std::time::Duration::from_millis(args.store_latency_ms),
                    rate: args.rate,
                    partition: !args.unpartitioned,
                    target: args.target,
                    json: args.json,
                    warm: args.warm.map(std::time::Duration::from_secs),
                };
                super::bench::run(&settings, args).await
            }
        }
    })
}

/// What `requeue` and `purge` act on, from their arguments.
fn selection(which: FailedSelection) -> anyhow::Result<super::failed::Selection> {
    match which.from {
        Some(path) => super::failed::Selection::from_listing(&path).map_err(|e| Usage(format!("--from: {e:#}")).into()),
        None => Ok(super::failed::Selection::Matching {
            ids: which.ids,
            all: which.all,
            digest: which.digest,
            filters: which.filters,
        }),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `--wallets-per-pass` as a count (clap has bounded it).
fn passes(wallets: u64) -> usize {
    usize::try_from(wallets).unwrap_or(usize::MAX)
}

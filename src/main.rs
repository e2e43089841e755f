//! The `ledgerd` binary: parse the command line, load settings, start
//! logging, and hand over to one library function per subcommand.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ledgerd::cli::{Cli, Command, FailedAction, QueueAction, SabotageArg};
use ledgerd::commands::{self, Exit};
use ledgerd::config::Settings;
use ledgerd::sim::Sabotage;
use ledgerd::store::check::Depth;
use ledgerd::store::{open, OpenError, OpenMode};

/// mimalloc, not the system allocator: a worker allocates on one thread
/// and frees on another (async tasks, the SQLite threads) all the time,
/// which glibc's allocator serves slowly. On the memory store, where the
/// worker's own CPU is the limit, it is 1.4x faster (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.global.config.as_deref(), &cli.overrides()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ledgerd: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match (&cli.global.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => level.clone(),
        (None, Ok(env)) if !env.is_empty() => {
            if let Err(why) = ledgerd::config::check_log_filter(&env) {
                eprintln!("ledgerd: RUST_LOG {why}");
                return ExitCode::from(2);
            }
            env
        }
        // The demo and bench print their own summaries; their workers' logs
        // (the demo's rejections are its own invalid examples) would bury them.
        _ if matches!(cli.command, Command::Demo(_)) => "error".to_string(),
        _ if matches!(cli.command, Command::Bench(_)) => "warn".to_string(),
        // The simulated workers' warnings are the faults it injects.
        _ if matches!(cli.command, Command::Simulate(_)) => "error".to_string(),
        _ => settings.log_level.clone(),
    };
    ledgerd::telemetry::init(&filter, settings.log_format);
    match dispatch(cli.command, settings) {
        Ok(exit) => ExitCode::from(exit.code()),
        // A reader that went away (`ledgerd balances | head`) is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            report_failure(&e);
            ExitCode::from(failure_code(&e))
        }
    }
}

/// 2 when the configuration or the usage is at fault (a store URL, an
/// embedded store that does not exist, arguments that do not go together),
/// else 1.
fn failure_code(e: &anyhow::Error) -> u8 {
    let misconfigured = e.chain().any(|cause| {
        matches!(cause.downcast_ref::<OpenError>(), Some(OpenError::Config(_)))
            || cause.downcast_ref::<commands::Usage>().is_some()
    });
    if misconfigured {
        2
    } else {
        1
    }
}

/// Says once why the command failed: plainly to a person at a terminal,
/// else as a log line (JSON when logs are), where log collectors look. A
/// filter that silences errors still gets the plain line.
fn report_failure(e: &anyhow::Error) {
    let text = format!("{e:#}");
    if std::io::stderr().is_terminal() || !tracing::enabled!(tracing::Level::ERROR) {
        eprintln!("ledgerd: {text}");
    } else {
        tracing::error!(error = text, "command failed");
    }
}

fn dispatch(command: Command, settings: Settings) -> anyhow::Result<Exit> {
    if let Command::Plan = command {
        return commands::plan::run(std::io::stdin().lock(), std::io::stdout().lock());
    }
    if let Command::Simulate(args) = &command {
        let sabotage = match args.sabotage {
            SabotageArg::None => Sabotage::None,
            SabotageArg::SkipMarkerCheck => Sabotage::SkipMarkerCheck,
            SabotageArg::RemoveOnClaim => Sabotage::RemoveOnClaim,
        };
        let out = std::io::stdout().lock();
        return commands::simulate::run(args.seeds, args.from, args.seed, args.trace, sabotage, out);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let existing = || async { open(&settings, OpenMode::Existing).await.context("opening the store") };
        let mut stdout = std::io::stdout();
        match command {
            Command::Plan | Command::Simulate(_) => unreachable!("handled above"),
            Command::Init => commands::run::init(&settings).await,
            Command::Run(args) => {
                commands::run::run(&settings, args.exit_when_idle, args.bench_report.as_deref()).await
            }
            Command::Enqueue => commands::enqueue::run(existing().await?, tokio::io::stdin()).await,
            Command::Balance { hashes } => {
                commands::inspect::balance(existing().await?.as_ref(), &hashes, stdout).await
            }
            Command::Balances => commands::inspect::balances(existing().await?.as_ref(), &mut stdout).await,
            Command::Failed {
                filters,
                counts,
                action: None,
            } => {
                let store = existing().await?;
                if counts {
                    commands::failed::counts(store.as_ref(), &filters, &mut stdout).await
                } else {
                    commands::failed::list(store.as_ref(), &filters, &mut stdout).await
                }
            }
            Command::Failed {
                action: Some(FailedAction::Show { id }),
                ..
            } => commands::failed::show(existing().await?.as_ref(), &id, stdout).await,
            Command::Failed {
                action: Some(FailedAction::Requeue { which, doc }),
                ..
            } => {
                let replacement = match doc {
                    Some(path) => Some(
                        std::fs::read(&path)
                            .map_err(|e| commands::Usage(format!("--doc: reading {}: {e}", path.display())))?,
                    ),
                    None => None,
                };
                let which = selection(which)?;
                commands::failed::requeue(existing().await?.as_ref(), &which, replacement, stdout).await
            }
            Command::Failed {
                action: Some(FailedAction::Purge { which }),
                ..
            } => {
                let which = selection(which)?;
                commands::failed::purge(existing().await?.as_ref(), &which, stdout).await
            }
            Command::Audit {
                snapshot: true,
                wallets_per_pass,
                ..
            } => commands::audit::snapshot(existing().await?.as_ref(), passes(wallets_per_pass), stdout).await,
            Command::Audit { since: Some(since), .. } => {
                let name = match since {
                    ledgerd::cli::Checkpoint::Last => None,
                    ledgerd::cli::Checkpoint::Named(n) => Some(n),
                };
                commands::audit::audit_since(existing().await?.as_ref(), name, stdout).await
            }
            Command::Audit {
                wallets_per_pass,
                checkpoint,
                ..
            } => commands::audit::audit(existing().await?.as_ref(), passes(wallets_per_pass), checkpoint, stdout).await,
            Command::Adjust(args) => {
                let change = match (args.to, args.by) {
                    (Some(units), _) => ledgerd::protocol::adjust::Change::To(units),
                    (None, Some(delta)) => ledgerd::protocol::adjust::Change::By(delta),
                    (None, None) => anyhow::bail!("adjust needs --to or --by"),
                };
                let store = existing().await?;
                commands::adjust::run(store.as_ref(), &args.hash, change, &args.reason, args.id, stdout).await
            }
            Command::Tx { id } => commands::audit::tx(existing().await?.as_ref(), &id, stdout).await,
            Command::History { hash } => commands::audit::history(existing().await?.as_ref(), &hash, stdout).await,
            Command::Sweep => commands::inspect::sweep(existing().await?.as_ref(), stdout).await,
            Command::Queue {
                state,
                json,
                action: None,
            } => commands::queue::list(existing().await?.as_ref(), state, json, stdout).await,
            Command::Queue {
                action: Some(QueueAction::Show { id }),
                ..
            } => commands::queue::show(existing().await?.as_ref(), &id, stdout).await,
            Command::Status { json } => commands::inspect::status(existing().await?.as_ref(), json, stdout).await,
            Command::Check { full, json } => {
                let depth = if full { Depth::Full } else { Depth::Quick };
                commands::check::run(&settings, depth, json, stdout).await
            }
            Command::Demo(args) => commands::demo::run(args.actions, args.workers).await,
            Command::Bench(args) => {
                let args = commands::bench::BenchArgs {
                    scenario: args.scenario,
                    actions: args.actions.max(1),
                    concurrency: args.concurrency.clamp(1, ledgerd::config::CONCURRENCY_MAX),
                    processes: args.processes.clamp(1, 64),
                    replicas: usize::from(args.replicas),
                    store_latency: std::time::Duration::from_millis(args.store_latency_ms),
                    rate: args.rate,
                    partition: !args.unpartitioned,
                    target: args.target,
                    json: args.json,
                };
                commands::bench::run(&settings, args).await
            }
        }
    })
}

/// What `requeue` and `purge` act on, from their arguments.
fn selection(which: ledgerd::cli::FailedSelection) -> anyhow::Result<commands::failed::Selection> {
    match which.from {
        Some(path) => commands::failed::Selection::from_listing(&path)
            .map_err(|e| commands::Usage(format!("--from: {e:#}")).into()),
        None => Ok(commands::failed::Selection::Matching {
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

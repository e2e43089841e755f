//! The command line: one subcommand per job, each backed by one library function.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::LogFormat;

mod args;

use args::parse_checkpoint;
pub use args::{
    parse_instant, parse_signed_units, AdjustArgs, BenchArgs, Checkpoint, DemoArgs, FailedAction, FailedFilters,
    FailedSelection, QueueAction, RunArgs,
};
#[cfg(feature = "simulate")]
pub use args::{SabotageArg, SimulateArgs};

/// ledgerd credits click rewards to token balances, exactly once.
///
/// Producers write `action:<id>` documents into the queue bucket; any number
/// of `ledgerd run` workers credit `balance:<hash>` in the ledger bucket and
/// remove each action only after all its credits are committed.
///
/// Settings come from defaults, then `--config FILE`, then `LEDGERD_*`
/// environment variables (e.g. LEDGERD_STORE, LEDGERD_CONCURRENCY), then flags.
#[derive(Debug, Parser)]
#[command(name = "ledgerd", version, propagate_version = true)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Store URL: sqlite://PATH (default sqlite://ledgerd.db), memory://, or
    /// couchbase://HOST[,HOST…]. Also LEDGERD_STORE.
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
    /// TOML settings file; its keys are the setting names (e.g. `concurrency = 8`).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter: a level (trace, debug, info, warn, error, off), or
    /// TARGET=LEVEL pairs, e.g. `warn,ledgerd=debug` (default info; overrides RUST_LOG).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format on stderr: auto (pretty on a terminal, JSON lines otherwise; the default), json, pretty.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create what the store needs (tables, buckets, indexes). Idempotent.
    Init,
    /// Run the worker: claim queued actions, credit them, remove them.
    Run(RunArgs),
    /// Queue actions from JSON Lines on stdin: {"id":"…","doc":{…}},
    /// {"id":"…","raw":"…"} or {"id":"…","raw_base64":"…"}.
    ///
    /// `doc` is stored byte for byte as written (no re-serialisation); `raw`
    /// stores the string's bytes (for non-JSON bodies), `raw_base64` the
    /// bytes it encodes (for bodies that are not UTF-8). Ids already queued
    /// are skipped. Prints {"enqueued":N,"skipped":M,"invalid":K,"not_written":L,"blank":B,"lines":T};
    /// bad lines are reported with their line number and do not stop the
    /// others (exit 1 if any); a write the store refuses stops the rest.
    Enqueue,
    /// Check ONE action document from stdin and print its plan as JSON.
    ///
    /// Prints {"mode":…,"credits":[{"hash","units","tokens"}],"total_units":N,"digest":…}
    /// and exits 0, or prints {"error":"<reason>"} and exits 1. Reads nothing
    /// from the store.
    Plan,
    /// Show the balance of one or more wallets, in tokens and units; exit 1
    /// if one has no balance document (never credited, or a mistyped hash)
    /// or an invalid one.
    Balance {
        /// Wallet hashes.
        #[arg(required = true)]
        hashes: Vec<String>,
    },
    /// Print every balance as JSON Lines sorted by hash: {"hash","units","tokens"}.
    Balances,
    /// List rejected action bodies (dead letters) as JSON Lines, or show,
    /// requeue or purge them.
    ///
    /// Every body of an id that was rejected is kept in `failed:<id>`, each
    /// with when and why. Each line: {"id","digest","failed_at","kind",
    /// "reason","original" or "original_base64"} ("requeued_at" on an
    /// entry whose requeue was interrupted). `--counts` prints one line per
    /// kind of rejection instead.
    #[command(args_conflicts_with_subcommands = true)]
    Failed {
        /// Which entries to list.
        #[command(flatten)]
        filters: FailedFilters,
        /// Count the entries by kind of rejection instead of listing them.
        #[arg(long)]
        counts: bool,
        /// What to do (default: list).
        #[command(subcommand)]
        action: Option<FailedAction>,
    },
    /// Recompute every wallet from the transaction records and compare it
    /// with its balance; exit 1 on any mismatch.
    ///
    /// A wallet is expected to hold its opening balance (see --snapshot) plus
    /// every completed credit, plus the credits of actions in progress whose
    /// marker is already on it. On a live system an action finishing during
    /// the audit can show as a passing mismatch: run it again.
    Audit {
        /// Record what each wallet holds beyond its credits as the opening
        /// balances (for a ledger that started with balances from elsewhere).
        #[arg(long, conflicts_with_all = ["checkpoint", "since"])]
        snapshot: bool,
        /// After a clean audit, take a checkpoint: later audits can then
        /// check only what changed since (`--since`).
        #[arg(long, conflicts_with = "since")]
        checkpoint: bool,
        /// Check only the wallets that changed since the last clean
        /// audit's checkpoint (the number it printed, or `last`): a day's
        /// changes cost a day's records, not the ledger's. If all match,
        /// the checkpoint moves on. Needs a first `audit --checkpoint`.
        #[arg(long, value_name = "CHECKPOINT", value_parser = parse_checkpoint)]
        since: Option<Checkpoint>,
        /// Wallets checked per pass over the ledger's records: what the
        /// audit holds in memory (about 1 KiB each) is bounded by this,
        /// and a ledger with more wallets is read once per this many.
        #[arg(long, default_value_t = crate::protocol::accounting::WALLETS_PER_PASS as u64,
              value_parser = clap::value_parser!(u64).range(2..=100_000_000))]
        wallets_per_pass: u64,
    },
    /// Repair one wallet safely: set (--to) or change (--by) its balance,
    /// keeping its idempotency markers, and record the adjustment
    /// (`adj:<id>`), which `audit` counts and `history` lists.
    ///
    /// Never write a balance document by hand: a whole-document write drops
    /// the wallet's markers, and an action still in progress would then
    /// credit the wallet again. `--to` with the value `audit` expects
    /// restores a damaged wallet (it counts 0 in the audit); `--by` makes a
    /// deliberate change (it counts its amount). Prints the record as JSON;
    /// exits 1, changing nothing, if the adjustment is refused.
    Adjust(AdjustArgs),
    /// Show one transaction record.
    Tx {
        /// Action id.
        id: String,
    },
    /// List a wallet's adjustments and credits as JSON Lines.
    ///
    /// Reads only that wallet's records, through the store's index by
    /// wallet: its cost follows the wallet, not the ledger.
    History {
        /// Wallet hash.
        hash: String,
    },
    /// Remove every idempotency marker whose action is completed.
    ///
    /// Visits every wallet and reads the record of each marker it carries;
    /// markers of actions still in progress stay. Safe at any time, beside
    /// running workers. Workers prune markers as they go; this pass catches
    /// wallets that are rarely credited (run it from a timer, e.g. daily).
    Sweep,
    /// List queued actions with their state: ready, locked (until when,
    /// where the store can tell), or blocked (why, and when it is retried).
    ///
    /// Text: one line per action, then the counts. --json: one object per
    /// line, {"id","state","shard","locked_until","queued_at","age_s","blocked",
    /// "bytes"} (null where the store cannot tell: Couchbase knows neither
    /// lock expiry nor enqueue time). Reads each action once; changes
    /// nothing.
    #[command(args_conflicts_with_subcommands = true)]
    Queue {
        /// Only actions in this state.
        #[arg(long, value_enum)]
        state: Option<crate::commands::queue::State>,
        /// JSON Lines instead of text.
        #[arg(long)]
        json: bool,
        /// Show one action.
        #[command(subcommand)]
        action: Option<QueueAction>,
    },
    /// Print counts: queued (ready, locked, blocked, the oldest's age),
    /// failed, transactions, wallets.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check that the store is sound; exit 1 on any problem.
    ///
    /// Embedded store: the file, the ledgerd tables, SQLite's integrity
    /// check (quick by default: every page and b-tree; --full also matches
    /// every index to its table), the WAL's size, and a probe write (not on
    /// a damaged file). The integrity check reads the whole file: on a
    /// large store it takes minutes, beside running workers. Couchbase: the
    /// server's version, each bucket (management service and a key-value
    /// read), the ledgerd indexes and their states, and the Query service.
    /// One line per check; --json: one {"check","ok","detail"} per line.
    Check {
        /// The full integrity check (SQLite's integrity_check, not quick_check).
        #[arg(long)]
        full: bool,
        /// JSON Lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a self-contained demonstration in a temporary store and remove it.
    Demo(DemoArgs),
    /// Prove exactly-once: run the crediting protocol under injected faults.
    ///
    /// Each seed runs several workers against an in-memory store with
    /// ambiguous writes, transient errors, reordering, lapsing locks, workers
    /// that die, duplicate and rewritten deliveries and a corrupted wallet,
    /// then checks every balance and action. A failing seed prints the command
    /// that replays it. Touches no real store.
    #[cfg(feature = "simulate")]
    Simulate(SimulateArgs),
    /// Measure throughput, latency (p50, p99, max), store operations and
    /// round trips per action, and peak memory on a generated workload in a fresh store (a temporary embedded one unless
    /// --target names another), then check every wallet's balance.
    Bench(BenchArgs),
}

impl Cli {
    /// Settings overrides given as flags, as `(key, value)` pairs.
    pub fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(store) = &self.global.store {
            out.push(("store", store.clone()));
        }
        if let Some(level) = &self.global.log_level {
            out.push(("log_level", level.clone()));
        }
        if let Some(format) = self.global.log_format {
            let name = match format {
                LogFormat::Auto => "auto",
                LogFormat::Json => "json",
                LogFormat::Pretty => "pretty",
            };
            out.push(("log_format", name.to_string()));
        }
        if let Command::Run(run) = &self.command {
            if let Some(n) = run.concurrency {
                out.push(("concurrency", n.to_string()));
            }
            if let Some(ms) = run.lease_ms {
                out.push(("lease_ms", ms.to_string()));
            }
            if let Some(ms) = run.member_timeout_ms {
                out.push(("member_timeout_ms", ms.to_string()));
            }
            if let Some(addr) = &run.metrics_addr {
                out.push(("metrics_addr", addr.clone()));
            }
            if let Some(ms) = run.shutdown_grace_ms {
                out.push(("shutdown_grace_ms", ms.to_string()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_become_overrides() {
        let cli = Cli::parse_from(["ledgerd", "--store", "memory://", "run", "--lease-ms", "2000"]);
        assert_eq!(
            cli.overrides(),
            vec![("store", "memory://".to_string()), ("lease_ms", "2000".to_string())]
        );
    }

    #[test]
    fn a_balance_to_set_is_read_with_what_to_do_instead() {
        let adjust = |to: &str| Cli::try_parse_from(["ledgerd", "adjust", "w1", "--to", to, "--reason", "r"]);
        match adjust("250").map(|cli| cli.command) {
            Ok(Command::Adjust(args)) => assert_eq!(args.to, Some(250)),
            other => panic!("{other:?}"),
        }
        let negative = adjust("-5").expect_err("refused").to_string();
        assert!(negative.contains("use --by -5"), "{negative}");
        assert!(!negative.contains("'-- -5'"), "{negative}");
        let huge = adjust("18446744073709551616").expect_err("refused").to_string();
        assert!(
            huge.contains("more than the total supply, 10000000000000000000 units"),
            "{huge}"
        );
        assert!(adjust("10000000000000000001").is_err());
        assert!(adjust("10000000000000000000").is_ok());
    }
}

//! The command line: one subcommand per job, each backed by one library function.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::LogFormat;

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
    Simulate(SimulateArgs),
    /// Measure throughput, latency (p50, p99, max), store operations and
    /// round trips per action, and peak memory on a generated workload in a fresh store (a temporary embedded one unless
    /// --target names another), then check every wallet's balance.
    Bench(BenchArgs),
}

/// Options of `ledgerd bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workload: uniform (3 wallets of 100,000), hot (one shared wallet + 2), wide (50 wallets).
    #[arg(long, value_enum, default_value_t = crate::commands::bench::Scenario::Uniform)]
    pub scenario: crate::commands::bench::Scenario,
    /// Actions to generate.
    #[arg(long, default_value_t = 5_000, value_name = "N")]
    pub actions: u64,
    /// Actions each worker process works on at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub concurrency: usize,
    /// Worker processes (each a `ledgerd run` on the store); latency, store
    /// operations and memory are reported across all of them.
    #[arg(long, default_value_t = 1, value_name = "N", conflicts_with = "replicas")]
    pub processes: usize,
    /// Replicas in this process, each with its own discovery, coalescer and
    /// membership identity, as separate processes would have (1 to 256).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub replicas: u16,
    /// Make every store call of the replicas wait this long first, as a
    /// call over a network does (Couchbase is round-trip bound).
    #[arg(long, default_value_t = 0, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub store_latency_ms: u64,
    /// Queue the actions at this rate (a second) while the workers run: a
    /// steady state. Without it, all are queued first: a backlog.
    #[arg(long, value_name = "PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Workers do not divide the queue: each lists every key and claims
    /// whatever it finds, racing the others (how discovery worked before
    /// the membership; for comparison). Replicas only.
    #[arg(long, conflicts_with = "processes")]
    pub unpartitioned: bool,
    /// Store URL to benchmark (must have no queued actions and no wallets:
    /// every balance is checked at the end); default: a fresh temporary
    /// embedded store.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Options of `ledgerd simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub from: u64,
    /// Run only this seed (replay).
    #[arg(long, value_name = "S", conflicts_with_all = ["seeds", "from"])]
    pub seed: Option<u64>,
    /// Print the whole trace of the run (with --seed) or of the first failure.
    #[arg(long)]
    pub trace: bool,
    /// Break the protocol on purpose, to watch the checker catch it.
    #[arg(long, value_enum, default_value_t = SabotageArg::None)]
    pub sabotage: SabotageArg,
}

/// A deliberate defect for `ledgerd simulate --sabotage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SabotageArg {
    /// No defect.
    None,
    /// Workers never see idempotency markers.
    SkipMarkerCheck,
    /// Actions are removed as soon as they are claimed.
    RemoveOnClaim,
}

/// `ledgerd queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// One queued action as JSON: its state, body, what a worker would
    /// make of it (plan), and what the ledger holds for its id.
    Show {
        /// Action id.
        id: String,
    },
}

/// `ledgerd failed` subcommands.
#[derive(Debug, Subcommand)]
pub enum FailedAction {
    /// Show every rejected body of one id, with whether the id is queued
    /// or credited, as one JSON object.
    Show {
        /// Action id.
        id: String,
    },
    /// Put rejected bodies back in the queue, then remove their entries.
    ///
    /// One body per id: the one entry that matches, or the one --digest
    /// names. The body queued (the entry's, or --doc) must pass `ledgerd
    /// plan` and must not conflict with a credit already made under the
    /// id; otherwise the id is refused and nothing changes. Prints
    /// {"requeued","refused"}; exit 1 if any id is refused.
    Requeue {
        /// Which entries.
        #[command(flatten)]
        which: FailedSelection,
        /// Queue the corrected body in FILE instead of the entry's (one id).
        #[arg(long, value_name = "FILE")]
        doc: Option<PathBuf>,
    },
    /// Delete rejected bodies for good.
    ///
    /// Removes only the entries it selected when it read each id (or those
    /// listed in --from), under CAS: a body rejected while it runs stays.
    /// Prints {"purged"}; exit 1 if a named id had nothing to purge.
    Purge {
        /// Which entries.
        #[command(flatten)]
        which: FailedSelection,
    },
}

/// Filters on dead letters; all given must hold.
#[derive(Debug, Args, Default, Clone)]
pub struct FailedFilters {
    /// Entries whose kind or reason contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Entries rejected before TIME: RFC 3339 (2026-11-24T08:00:00Z), a
    /// UTC date or date and time (2026-11-24, 2026-11-24 08:00), or a
    /// time ago (90m, 2h, 7d).
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub before: Option<i64>,
    /// Entries rejected at or after TIME (same forms as --before).
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub after: Option<i64>,
}

/// Which dead letters `requeue` and `purge` act on.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["ids", "all", "from"]))]
pub struct FailedSelection {
    /// Action ids.
    pub ids: Vec<String>,
    /// Every failed action (that the filters select).
    #[arg(long, conflicts_with_all = ["ids", "from"])]
    pub all: bool,
    /// Exactly the entries listed in FILE, by id and digest: JSON Lines as
    /// `ledgerd failed` prints them ("-" reads stdin).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ids", "digest"])]
    pub from: Option<PathBuf>,
    /// Only the body whose digest starts with HEX (8 or more digits).
    #[arg(long, value_name = "HEX", value_parser = parse_digest)]
    pub digest: Option<String>,
    /// Only the entries these select.
    #[command(flatten)]
    pub filters: FailedFilters,
}

fn parse_digest(text: &str) -> Result<String, String> {
    let min = crate::protocol::dead_letters::DIGEST_PREFIX_MIN;
    if text.len() < min || text.len() > 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "must be {min} to 64 hex digits of a digest `ledgerd failed` shows"
        ));
    }
    Ok(text.to_ascii_lowercase())
}

/// An instant in Unix milliseconds: RFC 3339, a UTC civil date (and time),
/// or a span ago ("2h", "7d").
pub fn parse_instant(text: &str) -> Result<i64, String> {
    if let Ok(at) = text.parse::<jiff::Timestamp>() {
        return Ok(at.as_millisecond());
    }
    if let Ok(civil) = text.parse::<jiff::civil::DateTime>() {
        if let Ok(zoned) = civil.to_zoned(jiff::tz::TimeZone::UTC) {
            return Ok(zoned.timestamp().as_millisecond());
        }
    }
    if let Ok(span) = text.parse::<jiff::Span>() {
        if let Ok(ago) = span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()) {
            if let Ok(at) = jiff::Timestamp::now().checked_sub(ago.abs()) {
                return Ok(at.as_millisecond());
            }
        }
    }
    Err(format!(
        "{text:?} is not a time: give RFC 3339 (2026-11-24T08:00:00Z), a UTC date (2026-11-24) or a time ago (2h, 7d)"
    ))
}

/// Options of `ledgerd run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Actions worked on at once by this process, 1–1024 (default 64).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Lock time of a claimed action, 1000–30000 ms, rounded up to whole
    /// seconds as Couchbase counts them (default 15000).
    #[arg(long, value_name = "MS")]
    pub lease_ms: Option<u64>,
    /// How long a replica's heartbeat may stay unchanged before the other
    /// replicas take it for dead and divide its share of the queue,
    /// 1000–60000 ms (default 10000); heartbeats go every fifth of it.
    #[arg(long, value_name = "MS")]
    pub member_timeout_ms: Option<u64>,
    /// Exit 0 once a full pass over the queue finds nothing to claim and
    /// nothing is in flight (for batch jobs and tests). Exit 1, with the
    /// cause, if discovery cannot work: at once when it will not heal by
    /// itself, after 30 s of passing failures.
    #[arg(long)]
    pub exit_when_idle: bool,
    /// Where to serve /metrics, /healthz and /readyz (default 127.0.0.1:9464), or `off`.
    /// An address that cannot be bound (another worker on it?) stops the worker
    /// at start with exit code 2.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Time in-flight actions get to finish after SIGTERM/SIGINT (default 10000).
    /// A second signal exits at once.
    #[arg(long, value_name = "MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// For `ledgerd bench`: at exit, write this process's per-action
    /// latencies and store operation counts to FILE as JSON.
    #[arg(long, value_name = "FILE", hide = true)]
    pub bench_report: Option<PathBuf>,
}

/// Options of `ledgerd adjust`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("change").required(true).args(["to", "by"])))]
pub struct AdjustArgs {
    /// Wallet hash.
    #[arg(value_parser = parse_hash)]
    pub hash: String,
    /// Set the balance to this many units (1 token = 100000000 units).
    #[arg(long, value_name = "UNITS")]
    pub to: Option<u64>,
    /// Change the balance by this many units, e.g. +250 or -3.
    #[arg(long, value_name = "[+|-]UNITS", allow_hyphen_values = true, value_parser = parse_signed_units)]
    pub by: Option<i128>,
    /// Why: kept in the record.
    #[arg(long, value_parser = parse_reason)]
    pub reason: String,
    /// The adjustment's id (default: generated). Give the id of an
    /// interrupted adjustment to finish it; an applied one is never applied
    /// twice.
    #[arg(long, value_parser = parse_adj_id)]
    pub id: Option<String>,
}

fn parse_hash(text: &str) -> Result<String, String> {
    crate::domain::keys::check_hash(text)
        .map(|()| text.to_string())
        .map_err(|e| format!("a wallet hash {e}"))
}

/// A signed whole number of units: one sign (`+` or `-`) or none, then
/// digits only. (Rust's own parser takes a sign too, so stripping a `+`
/// first let `+-5` through as -5.)
pub fn parse_signed_units(text: &str) -> Result<i128, String> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'+') => (false, &text[1..]),
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    let not_a_number = || format!("{text:?} is not a whole number of units with one sign or none, e.g. +250 or -3");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_number());
    }
    match digits.parse::<u128>() {
        Ok(n) if n != 0 && n <= u128::from(crate::domain::TOTAL_SUPPLY_UNITS) => {
            let n = i128::try_from(n).map_err(|_| not_a_number())?;
            Ok(if negative { -n } else { n })
        }
        Ok(_) => Err("must be a non-zero number of units within the total supply".into()),
        Err(_) => Err(not_a_number()),
    }
}

fn parse_reason(text: &str) -> Result<String, String> {
    match text.trim() {
        "" => Err("must say why".into()),
        reason if reason.len() > 2_048 => Err("must be at most 2048 bytes".into()),
        reason => Ok(reason.to_string()),
    }
}

fn parse_adj_id(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 200 || text.chars().any(char::is_control) {
        return Err("must be 1 to 200 bytes without control characters".into());
    }
    Ok(text.to_string())
}

/// Options of `ledgerd demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many actions to generate.
    #[arg(long, default_value_t = 400, value_name = "N")]
    pub actions: usize,
    /// How many workers share the queue.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub workers: usize,
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
}

/// What `audit --since` was given: a checkpoint's number, or `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// The last clean audit's checkpoint, whichever it is.
    Last,
    /// This one, which must be the last.
    Named(u64),
}

fn parse_checkpoint(text: &str) -> Result<Checkpoint, String> {
    match text {
        "last" => Ok(Checkpoint::Last),
        n => n
            .parse()
            .map(Checkpoint::Named)
            .map_err(|_| format!("{n:?} is not a checkpoint: give the number a clean audit printed, or `last`")),
    }
}

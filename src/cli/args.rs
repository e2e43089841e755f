//! The options of each subcommand and the parsers of their values.

use std::path::PathBuf;

use clap::{Args, Subcommand};

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
    /// call over a network does (Couchbase is round-trip bound). Replicas
    /// only: not with --processes above 1.
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
    /// Measure production's steady state: first every wallet of the
    /// workload is credited once by other replicas (as by other processes,
    /// whose completions the measured workers never saw), then the bench
    /// waits SECS (62 if not given: a worker checks another process's marker
    /// once it is a minute old), so that the wallets carry old markers of
    /// others, as in production. The warm-up is not measured.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "62",
          value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub warm: Option<u64>,
}

/// Options of `ledgerd simulate`.
#[cfg(feature = "simulate")]
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
    /// Instead of random seeds, run every schedule within the bounds below:
    /// 2 workers, 2 actions sharing a wallet and one sweep; every order of
    /// their store calls with at most --preemptions switches, and every
    /// fault at every call, up to --faults (docs/protocol.md).
    #[arg(long, conflicts_with_all = ["seeds", "from", "seed", "sabotage"])]
    pub exhaustive: bool,
    /// With --exhaustive: switches away from a worker that could go on.
    #[arg(long, default_value_t = 2, value_name = "N", requires = "exhaustive",
          value_parser = clap::value_parser!(u64).range(0..=8))]
    pub preemptions: u64,
    /// With --exhaustive: faults in one schedule (2 with 2 preemptions and
    /// the sweep is hours; 1 is minutes).
    #[arg(long, default_value_t = 1, value_name = "N", requires = "exhaustive",
          value_parser = clap::value_parser!(u64).range(0..=4))]
    pub faults: u64,
    /// With --exhaustive: leave out the run of `sweep` interleaved with the
    /// workers (fewer schedules).
    #[arg(long, requires = "exhaustive")]
    pub no_sweep: bool,
    /// With --exhaustive: run only this schedule (its choices, comma
    /// separated, as a failing one is printed) and print its trace.
    #[arg(long, value_name = "CHOICES", requires = "exhaustive", value_delimiter = ',')]
    pub schedule: Option<Vec<usize>>,
}

/// A deliberate defect for `ledgerd simulate --sabotage`.
#[cfg(feature = "simulate")]
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

pub(super) fn parse_digest(text: &str) -> Result<String, String> {
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
    #[arg(long, value_name = "UNITS", allow_hyphen_values = true, value_parser = parse_balance_units)]
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

pub(super) fn parse_hash(text: &str) -> Result<String, String> {
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

/// A balance in units: digits only, 0 up to the total supply. A negative
/// one is taken (not left to clap, whose advice "use '-- -5'" does not
/// work here) and refused with what to do instead.
pub fn parse_balance_units(text: &str) -> Result<u64, String> {
    let supply = crate::domain::TOTAL_SUPPLY_UNITS;
    if let Some(taken) = text.strip_prefix('-') {
        return Err(format!(
            "a balance cannot be negative: to take {taken} units away, use --by -{taken}"
        ));
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a whole number of units, e.g. 250"));
    }
    match text.parse::<u128>() {
        Ok(n) if n <= u128::from(supply) => u64::try_from(n).map_err(|e| e.to_string()),
        _ => Err(format!("{text} units is more than the total supply, {supply} units")),
    }
}

pub(super) fn parse_reason(text: &str) -> Result<String, String> {
    match text.trim() {
        "" => Err("must say why".into()),
        reason if reason.len() > 2_048 => Err("must be at most 2048 bytes".into()),
        reason => Ok(reason.to_string()),
    }
}

pub(super) fn parse_adj_id(text: &str) -> Result<String, String> {
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

/// What `audit --since` was given: a checkpoint's number, or `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// The last clean audit's checkpoint, whichever it is.
    Last,
    /// This one, which must be the last.
    Named(u64),
}

pub(super) fn parse_checkpoint(text: &str) -> Result<Checkpoint, String> {
    match text {
        "last" => Ok(Checkpoint::Last),
        n => n
            .parse()
            .map(Checkpoint::Named)
            .map_err(|_| format!("{n:?} is not a checkpoint: give the number a clean audit printed, or `last`")),
    }
}

//! The `ledgerd` binary: parse the command line, load settings, start
//! logging, and hand over to the library (`commands::dispatch`).

use std::process::ExitCode;

use clap::Parser;
use ledgerd::cli::Cli;
use ledgerd::commands::dispatch::{dispatch, exit_code, log_filter};
use ledgerd::config::Settings;

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
    let filter = match log_filter(&cli, &settings) {
        Ok(filter) => filter,
        Err(why) => {
            eprintln!("ledgerd: {why}");
            return ExitCode::from(2);
        }
    };
    ledgerd::telemetry::init(&filter, settings.log.format);
    ExitCode::from(exit_code(dispatch(cli.command, settings)))
}

//! The `ledgerd` binary: parse the command line, load settings, start
//! logging, and hand over to one library function per subcommand.

use std::process::ExitCode;

use clap::Parser;
use ledgerd::cli::{Cli, Command};
use ledgerd::commands::{self, Exit};
use ledgerd::config::Settings;

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
        (None, Ok(env)) if !env.is_empty() => env,
        _ => settings.log_level.clone(),
    };
    ledgerd::telemetry::init(&filter, settings.log_format);
    match dispatch(cli.command, settings) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "command failed");
            eprintln!("ledgerd: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command, _settings: Settings) -> anyhow::Result<Exit> {
    match command {
        Command::Plan => commands::plan::run(std::io::stdin().lock(), std::io::stdout().lock()),
        other => {
            eprintln!("ledgerd: {other:?} is not implemented yet");
            Ok(Exit::NotImplemented)
        }
    }
}

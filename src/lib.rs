//! ledgerd credits click rewards to token balances exactly once.
//!
//! Layout:
//! - [`domain`]: money, keys, action parsing and split math; pure (no async, no I/O).
//! - [`config`]: layered, typed settings.
//! - [`telemetry`]: logging set-up.
//! - [`cli`]: the command line.
//! - [`commands`]: one function per subcommand (the only `anyhow` users).

pub mod cli;
pub mod commands;
pub mod config;
pub mod domain;
pub mod protocol;
pub mod store;
pub mod telemetry;
pub mod worker;

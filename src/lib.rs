//! ledgerd credits click rewards to token balances exactly once.
//!
//! Layout:
//! - [`domain`]: money, keys, action parsing and split math; pure code.
//! - [`store`]: the store trait (Couchbase-shaped single-document
//!   operations), its memory and SQLite implementations, the contract suite
//!   every implementation passes, and a fault-injecting wrapper.
//! - [`protocol`]: the crediting protocol, written once against the trait.
//! - [`worker`]: discovery, concurrency, retries and graceful shutdown.
//! - [`config`]: layered, typed settings.
//! - [`telemetry`]: logging set-up.
//! - [`cli`]: the command line.
//! - [`commands`]: one function per subcommand (the only `anyhow` users).

pub mod cli;
pub mod commands;
pub mod config;
pub mod domain;
pub mod ops;
pub mod protocol;
#[cfg(feature = "simulate")]
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod worker;

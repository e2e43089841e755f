//! The application layer: one function per subcommand. Errors here are
//! `anyhow` with context, because they end at the user's terminal.

pub mod adjust;
pub mod audit;
pub mod bench;
pub mod check;
pub mod counter;
pub mod demo;
pub mod dispatch;
pub mod enqueue;
pub mod failed;
pub mod inspect;
pub mod plan;
pub mod queue;
pub mod run;
#[cfg(feature = "simulate")]
pub mod simulate;

/// A command used wrongly (arguments that do not go together, an input
/// file it cannot use): the process exits 2, as for a flag clap refuses.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// `bytes` without the UTF-8 byte order mark some editors write at the
/// start of a file: it is not part of the data (`enqueue` and `plan` read
/// what such editors save).
pub fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// What a command tells the process to exit with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything worked.
    Success,
    /// The command ran but found a problem in its input (e.g. a rejected plan).
    Rejected,
    /// The command is not available yet.
    NotImplemented,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Rejected => 1,
            Exit::NotImplemented => 2,
        }
    }
}

//! `ledgerd check`: is the store sound? The store's own checks (see
//! [`Store::check`]), one line each, and an exit code: 0 sound, 1 a
//! problem (or a store that cannot be opened), 2 bad usage or settings.

use std::io::Write;

use super::Exit;
use crate::config::Settings;
use crate::store::check::{Depth, Finding};
use crate::store::{open, FaultKind, OpenError, OpenMode, StoreError};

/// Opens the store and prints what its checks find.
pub async fn run(settings: &Settings, depth: Depth, json: bool, out: impl Write) -> anyhow::Result<Exit> {
    let found = match open(settings, OpenMode::Existing).await {
        Ok(store) => store.check(depth).await,
        Err(OpenError::Config(why)) => return Err(OpenError::Config(why).into()),
        // A store that cannot even be opened is the check's answer.
        Err(OpenError::Store(StoreError::Fault(fault))) if fault.kind == FaultKind::Corrupt => vec![Finding::problem(
            "open",
            format!(
                "{}; stop every worker on this store and restore it from a backup (docs/deployment.md)",
                fault.what()
            ),
        )],
        Err(OpenError::Store(e)) => vec![Finding::problem("open", e.to_string())],
    };
    report(&found, json, out)
}

fn report(found: &[Finding], json: bool, mut out: impl Write) -> anyhow::Result<Exit> {
    let problems = found.iter().filter(|f| !f.ok).count();
    if json {
        for finding in found {
            serde_json::to_writer(&mut out, finding)?;
            writeln!(out)?;
        }
    } else {
        let width = found.iter().map(|f| f.check.len()).max().unwrap_or(0);
        for f in found {
            let verdict = if f.ok { "ok" } else { "PROBLEM" };
            writeln!(out, "{verdict:<8} {:<width$}  {}", f.check, f.detail)?;
        }
        match problems {
            0 => writeln!(out, "the store is sound ({} checks)", found.len())?,
            n => writeln!(
                out,
                "{n} {} found (of {} checks)",
                if n == 1 { "problem" } else { "problems" },
                found.len()
            )?,
        }
    }
    out.flush()?;
    Ok(if problems == 0 { Exit::Success } else { Exit::Rejected })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_exits_1_and_is_counted() {
        let found = [
            Finding::ok("file", "fine"),
            Finding::problem("integrity", "the store is damaged"),
        ];
        let mut out = Vec::new();
        assert_eq!(report(&found, false, &mut out).expect("report"), Exit::Rejected);
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("PROBLEM  integrity  the store is damaged"), "{text}");
        assert!(text.ends_with("1 problem found (of 2 checks)\n"), "{text}");
        let mut out = Vec::new();
        assert_eq!(report(&found[..1], true, &mut out).expect("report"), Exit::Success);
        let line: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(line, serde_json::json!({"check": "file", "ok": true, "detail": "fine"}));
    }
}

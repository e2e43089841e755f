//! `ledgerd check` on the embedded store: the file, the schema, SQLite's
//! own integrity check, the WAL, and a write.
//!
//! The integrity check reads every page of the file: its cost is the
//! store's size (it answers a question about every page), so it is run by
//! an operator, never by a worker at start. SQLite documents both checks:
//! `quick_check` verifies every page and b-tree but not that each index
//! matches its table; `integrity_check` does that too
//! (<https://www.sqlite.org/pragma.html#pragma_integrity_check>).

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::errors::sql_error;
use super::wal::{wal_bytes, WAL_BYTES_MAX};
use crate::store::check::{Depth, Finding};
use crate::store::StoreError;

/// Most problems the integrity check reports: SQLite stops at this many,
/// and a damaged store needs a restore, not a list of every page.
pub const INTEGRITY_PROBLEMS_MAX: usize = 20;

/// Problems quoted in the finding; the count says how many more.
const PROBLEMS_SHOWN: usize = 3;

/// The tables every ledgerd store has.
const TABLES: [&str; 3] = ["docs", "cas_seq", "ready_probe"];

/// The findings that need only the file (everything but the write).
pub(super) fn inspect(path: &Path, depth: Depth) -> Vec<Finding> {
    let mut found = Vec::new();
    let conn = match Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY) {
        Ok(conn) => conn,
        Err(e) => {
            found.push(Finding::problem(
                "file",
                format!("{}: {}", path.display(), sql_error(e)),
            ));
            return found;
        }
    };
    found.push(file(&conn, path));
    found.push(schema(&conn));
    found.push(integrity(&conn, depth));
    found.push(wal(path));
    found
}

fn file(conn: &Connection, path: &Path) -> Finding {
    let pragma = |name: &str| conn.pragma_query_value(None, name, |r| r.get::<_, i64>(0));
    match (pragma("page_count"), pragma("page_size"), pragma("freelist_count")) {
        (Ok(pages), Ok(size), Ok(free)) => Finding::ok(
            "file",
            format!(
                "{}: {} pages of {size} bytes ({} MiB), {free} free",
                path.display(),
                pages,
                pages.saturating_mul(size) / (1024 * 1024)
            ),
        ),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            Finding::problem("file", format!("{}: {}", path.display(), sql_error(e)))
        }
    }
}

fn schema(conn: &Connection) -> Finding {
    let present = |table: &str| {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get::<_, i64>(0),
        )
    };
    let mut missing = Vec::new();
    for table in TABLES {
        match present(table) {
            Ok(1) => {}
            Ok(_) => missing.push(table),
            Err(e) => return Finding::problem("schema", sql_error(e).to_string()),
        }
    }
    if missing.is_empty() {
        Finding::ok(
            "schema",
            format!("the ledgerd tables are present ({})", TABLES.join(", ")),
        )
    } else {
        Finding::problem(
            "schema",
            format!(
                "tables missing: {} (not a ledgerd store, or one from an older release: `ledgerd init` adds them)",
                missing.join(", ")
            ),
        )
    }
}

fn integrity(conn: &Connection, depth: Depth) -> Finding {
    let (pragma, what) = match depth {
        Depth::Quick => (
            "quick_check",
            "every page and b-tree read back sound (quick; --full also matches every index to its table)",
        ),
        Depth::Full => ("integrity_check", "every page, b-tree and index read back sound (full)"),
    };
    let statement = format!("PRAGMA {pragma}({INTEGRITY_PROBLEMS_MAX})");
    let rows = conn.prepare(&statement).and_then(|mut stmt| {
        stmt.query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<String>, _>>()
    });
    match rows {
        Ok(rows) if rows == ["ok"] => Finding::ok("integrity", what),
        Ok(rows) => {
            // One row may hold several problems, a line each, under a
            // header naming the database.
            let problems: Vec<&str> = rows
                .iter()
                .flat_map(|r| r.lines())
                .filter(|l| !l.is_empty() && !l.starts_with("*** in database"))
                .collect();
            let shown = problems.len().min(PROBLEMS_SHOWN);
            Finding::problem(
                "integrity",
                format!(
                    "the store is damaged: SQLite's {pragma} found {}{} problems (first: {}); stop every worker on it and restore it from a backup (docs/deployment.md)",
                    problems.len(),
                    if problems.len() >= INTEGRITY_PROBLEMS_MAX { " or more" } else { "" },
                    problems[..shown].join("; ")
                ),
            )
        }
        Err(e) => Finding::problem(
            "integrity",
            format!("SQLite's {pragma} could not run: {}", sql_error(e)),
        ),
    }
}

fn wal(path: &Path) -> Finding {
    let bytes = wal_bytes(path);
    let mib = |b: u64| b / (1024 * 1024);
    // Above its bound only while a reader holds a checkpoint off, or after
    // a worker stopped mid-way: not damage (so not a problem), but a sign
    // to look for a long-running reader.
    if bytes > WAL_BYTES_MAX {
        Finding::ok(
            "wal",
            format!(
                "{} MiB, above its bound of {} MiB: a long-running reader (a `sqlite3` shell, a backup) holds checkpoints off; end it",
                mib(bytes),
                mib(WAL_BYTES_MAX)
            ),
        )
    } else {
        Finding::ok("wal", format!("{} MiB (bound {} MiB)", mib(bytes), mib(WAL_BYTES_MAX)))
    }
}

/// The finding for a probe write.
pub(super) fn writes(result: Result<(), StoreError>) -> Finding {
    Finding::from_result("writes", result, "a write commits")
}

#![allow(clippy::print_stdout)] // a measuring tool: one line of JSON, read whole by a script
//! The reference `scripts/audit-size` measures `ledgerd audit` against:
//! plain reading of the same rows. It reads every transaction record of
//! an embedded store in key order with one SQL statement, parses each body
//! as JSON, and sums the completed credits by wallet in a hash map: the
//! least any audit of the file must do, with no protocol, no consistency
//! (no wallet is read), and all wallets in memory at once.
//!
//! usage: audit_reference STORE.db
//!
//! Prints one JSON line: `records`, `wallets`, `seconds`, `records_per_sec`.

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};
use serde::Deserialize;

#[derive(Deserialize)]
struct Credit {
    hash: String,
    units: u64,
}

#[derive(Deserialize)]
struct Record {
    credits: Vec<Credit>,
    state: String,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let path = std::env::args().nth(1).ok_or("usage: audit_reference STORE.db")?;
    let conn =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| format!("{path}: {e}"))?;
    let started = Instant::now();
    let mut stmt = conn
        .prepare("SELECT key, body FROM docs WHERE bucket = 'ledger' AND key >= 'tx:' AND key < 'tx;' ORDER BY key")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let (mut records, mut sums) = (0u64, HashMap::<String, u128>::new());
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        // A body is stored as a BLOB or as TEXT: the bytes either way.
        let body = match row.get_ref(1).map_err(|e| e.to_string())? {
            rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => b,
            other => return Err(format!("a body of type {:?}", other.data_type())),
        };
        let record: Record = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        records += 1;
        if record.state == "completed" {
            for c in record.credits {
                *sums.entry(c.hash).or_default() += u128::from(c.units);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"records\":{records},\"wallets\":{},\"seconds\":{seconds:.3},\"records_per_sec\":{:.0}}}",
        sums.len(),
        records as f64 / seconds.max(1e-9)
    );
    Ok(())
}

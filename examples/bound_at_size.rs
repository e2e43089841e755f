#![allow(clippy::print_stdout)] // a measuring tool: one line of JSON, read whole by a script
//! The plain-SQL bound of `sqlite-bound`, on a ledger that already holds
//! records: the reference `scripts/ledger-size` measures ledgerd against at
//! each ledger size, so that a fall with size is split into SQLite's own
//! cost of a larger file (which the bound pays too) and ledgerd's.
//!
//! The work per action is sqlite-bound's (read the action, credit each
//! wallet with a create-or-add, insert a transaction record, delete the
//! action: one thread, `synchronous = FULL`, WAL, a 32 MiB page cache,
//! BATCH actions per transaction, no protocol), with two differences that
//! a ledger of real size needs: the ledger starts with RECORDS completed
//! transaction records of the size a real credit leaves, and action ids are
//! random, as producers' are (sequential ids would append every record at
//! the end of the table, a cost no real ledger has).
//!
//! usage: bound_at_size DIR RECORDS [ACTIONS=20000] [BENEFICIARIES=3] [WALLETS=100000] [BATCH=256]
//!
//! The filled ledger is made once per size (DIR/filled-RECORDS.db) and
//! copied for each run; prints one JSON line with `actions_per_sec`.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection};

/// The body of a completed transaction record with three credits, as
/// ledgerd writes it (351 bytes).
const RECORD: &str = r#"{"action_id":"' || id || '","digest":"7c335cb0f4debaba25aa5be30d3f1cb4f918cf1c4515f22b70bd8a0096234c9e","mode":"amount","credits":[{"hash":"f042797","units":1000},{"hash":"f069123","units":1000},{"hash":"f097424","units":1000}],"total_units":3000,"state":"completed","created_at":"2026-01-01T00:00:00.000Z","completed_at":"2026-01-01T00:00:00.000Z"}"#;

fn arg(args: &[String], i: usize, default: u64) -> Result<u64, String> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| format!("argument {i} ({s:?}) is not a whole number")),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        eprintln!("usage: bound_at_size DIR RECORDS [ACTIONS=20000] [BENEFICIARIES=3] [WALLETS=100000] [BATCH=256]");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).ok_or("no DIR")?;
    let records = arg(&args, 2, u64::MAX)?;
    if records == u64::MAX {
        return Err("no RECORDS".into());
    }
    let (n, k, wallets) = (
        arg(&args, 3, 20_000)?,
        arg(&args, 4, 3)?,
        arg(&args, 5, 100_000)?.max(1),
    );
    let batch = usize::try_from(arg(&args, 6, 256)?.max(1)).map_err(|e| e.to_string())?;
    let filled = format!("{dir}/filled-{records}.db");
    if !std::path::Path::new(&filled).exists() {
        fill(&filled, records).map_err(|e| format!("filling {filled}: {e}"))?;
    }
    let path = format!("{dir}/run.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    std::fs::copy(&filled, &path).map_err(|e| format!("copying {filled}: {e}"))?;
    let rate = credit(&path, n, k, wallets, batch).map_err(|e| e.to_string())?;
    println!(
        "{{\"records\":{records},\"actions\":{n},\"beneficiaries\":{k},\"wallets\":{wallets},\"batch\":{batch},\"actions_per_sec\":{rate:.0}}}"
    );
    Ok(())
}

/// Makes the bound's two tables with `records` completed records in the
/// ledger, ids spread over the key space, in one statement.
fn fill(path: &str, records: u64) -> rusqlite::Result<()> {
    let c = Connection::open(path)?;
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; PRAGMA cache_size = -4000000;
         CREATE TABLE queue(key TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
         CREATE TABLE ledger(key TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;",
    )?;
    c.execute(
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1),
             ids(id) AS (SELECT 'bench-' || lower(hex(randomblob(8))) FROM n WHERE ?1 > 0)
             INSERT OR IGNORE INTO ledger (key, body) SELECT 'tx:' || id, '{RECORD}' FROM ids"
        ),
        [records],
    )?;
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
}

/// Queues `n` actions, then times sqlite-bound's work on them.
fn credit(path: &str, n: u64, k: u64, wallets: u64, batch: usize) -> rusqlite::Result<f64> {
    let mut c = Connection::open(path)?;
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-32768;")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut keys = Vec::new();
    let tx = c.transaction()?;
    for _ in 0..n {
        let mut b = serde_json::Map::new();
        for _ in 0..k {
            b.insert(format!("w{:06}", rng.gen_range(0..wallets)), "1.25".into());
        }
        let key = format!("action:bench-{:016x}", rng.gen::<u64>());
        let body = serde_json::json!({ "beneficiaries": b }).to_string();
        tx.execute("INSERT OR IGNORE INTO queue VALUES (?1, ?2)", params![key, body])?;
        keys.push(key);
    }
    tx.commit()?;

    let start = Instant::now();
    for chunk in keys.chunks(batch) {
        let tx = c.transaction()?;
        {
            let mut get = tx.prepare_cached("SELECT body FROM queue WHERE key = ?1")?;
            let mut credit = tx.prepare_cached(
                "INSERT INTO ledger VALUES (?1, ?2) ON CONFLICT(key) \
                 DO UPDATE SET body = CAST(body AS INTEGER) + CAST(excluded.body AS INTEGER)",
            )?;
            let mut record = tx.prepare_cached("INSERT INTO ledger VALUES (?1, ?2)")?;
            let mut delete = tx.prepare_cached("DELETE FROM queue WHERE key = ?1")?;
            for key in chunk {
                let body: String = get.query_row([key], |r| r.get(0))?;
                let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let mut credits = Vec::new();
                for hash in doc["beneficiaries"].as_object().into_iter().flat_map(|b| b.keys()) {
                    let units: i64 = 125_000_000;
                    credit.execute(params![format!("balance:{hash}"), units])?;
                    credits.push(serde_json::json!({ "hash": hash, "units": units }));
                }
                let id = key.trim_start_matches("action:");
                let rec = serde_json::json!({
                    "action_id": id, "digest": "7c335cb0f4debaba25aa5be30d3f1cb4f918cf1c4515f22b70bd8a0096234c9e",
                    "mode": "amount", "credits": credits, "total_units": 375_000_000, "state": "completed",
                    "created_at": "2026-01-01T00:00:00.000Z", "completed_at": "2026-01-01T00:00:00.000Z",
                });
                record.execute(params![format!("tx:{id}"), rec.to_string()])?;
                delete.execute([key])?;
            }
        }
        tx.commit()?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

//! The ledger's documents by CAS: what changed since a point of the
//! store's clock, for `ledgerd audit --since` (see
//! [`crate::store::Store::changed_since`]).
//!
//! CAS values come from one counter (`cas_seq`) and every write takes the
//! next one, so a range scan over `(bucket, cas, key)` from a CAS lists
//! exactly the documents written since, oldest first. The index is
//! partial: only keys from `adj:` to `tx:` (adjustments, the audit's own
//! documents, wallets, transaction records; in the queue bucket only the
//! rare `failed:` and the members document), so queued actions, the
//! busiest documents, cost it nothing. A write of an indexed document
//! moves its entry to the end of the index.

use rusqlite::Connection;

/// The index's name.
const INDEX: &str = "docs_ledger_cas";

/// The index's key range, as SQL: the same text in the index and in the
/// query lets the planner use the index (SQLite, "Partial Indexes", 2:
/// "the terms in the WHERE clause of the query must ... imply the WHERE
/// clause of the index").
const RANGE: &str = "key >= 'adj:' AND key < 'tx;'";

fn index_sql() -> String {
    format!("CREATE INDEX IF NOT EXISTS {INDEX} ON docs (bucket, cas, key) WHERE {RANGE}")
}

/// Up to `?7` `(cas, key)` of bucket `?1` with keys in `[?2, ?3)` and a
/// CAS above `?4`, after `(?5, ?6)` in `(cas, key)` order.
pub(super) fn list_sql() -> String {
    format!(
        "SELECT cas, key FROM docs WHERE bucket = ?1 AND {RANGE} AND key >= ?2 AND key < ?3 \
         AND cas > ?4 AND (cas, key) > (?5, ?6) ORDER BY cas, key LIMIT ?7"
    )
}

/// Whether every key under `prefix` lies inside the index's range (then
/// [`list_sql`] answers for it).
pub(super) fn covers(prefix: &str) -> bool {
    let mut upper = prefix.as_bytes().to_vec();
    match upper.last_mut() {
        Some(b) if *b < 0x7f => *b += 1,
        _ => return false,
    }
    prefix >= "adj:" && upper.as_slice() <= b"tx;".as_slice()
}

/// Creates the index if a store made by an earlier release lacks it (once:
/// one pass over the ledger), and says whether it exists. A store where it
/// cannot be made is still opened: `audit --since` then reads every
/// document, and the cause is logged.
pub(super) fn ensure(conn: &Connection) -> bool {
    let exists = |conn: &Connection| {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
            [INDEX],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n > 0)
    };
    if exists(conn) {
        return true;
    }
    match conn.execute_batch(&index_sql()) {
        Ok(()) => true,
        Err(_) if exists(conn) => true,
        Err(e) => {
            tracing::warn!(
                error = %e,
                index = INDEX,
                "the store's index of changes cannot be created: `ledgerd audit --since` will read every document"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_prefixes_are_in_the_range_and_the_queue_is_not() {
        for prefix in ["adj:", "audited:", "balance:", "tx:"] {
            assert!(covers(prefix), "{prefix}");
        }
        for prefix in ["action:", "tx", "", "z:"] {
            assert!(!covers(prefix), "{prefix}");
        }
    }

    #[test]
    fn a_listing_seeks_the_index_from_its_cursor() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE docs (bucket TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL, xattrs TEXT NOT NULL,
                 cas INTEGER NOT NULL, lock_until_ms INTEGER, created_ms INTEGER, PRIMARY KEY (bucket, key));",
        )
        .expect("schema");
        assert!(ensure(&conn));
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", list_sql()))
            .expect("plan")
            .query_map(rusqlite::params!["ledger", "tx:", "tx;", 5, 7, "tx:a", 10], |r| {
                r.get::<_, String>(3)
            })
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("read");
        assert!(plan.iter().any(|p| p.contains(INDEX) && p.contains("cas")), "{plan:?}");
    }
}

//! The ledger's records by CAS: what changed since a point of the store's
//! clock, for `ledgerd audit --since` (see
//! [`crate::store::Store::changed_since`]).
//!
//! CAS values come from one clock (`cas_seq` holds the last one handed
//! out: see `threads.rs`) and every write takes a greater one, so a range scan over `(bucket, cas, key)` from a CAS lists
//! exactly the documents written since, oldest first. The indexes are
//! partial, one per record prefix (`tx:`, `adj:`): wallets, the busiest
//! ledger documents, and queued actions cost them nothing. A record is
//! written twice (committed, then completed), each time moving its entry
//! to the end of the index.

use rusqlite::Connection;

/// The indexes: name, and the key range each covers, as SQL. The same
/// text in the index and in the query lets the planner use the index
/// (SQLite, "Partial Indexes", 2: "the terms in the WHERE clause of the
/// query must ... imply the WHERE clause of the index").
const INDEXES: [(&str, &str, &str); 2] = [
    ("docs_tx_cas", "tx:", "key >= 'tx:' AND key < 'tx;'"),
    ("docs_adj_cas", "adj:", "key >= 'adj:' AND key < 'adj;'"),
];

fn index_sql(name: &str, range: &str) -> String {
    format!("CREATE INDEX IF NOT EXISTS {name} ON docs (bucket, cas, key) WHERE {range}")
}

/// The listing for `prefix`, if an index covers it: up to `?7` `(cas,
/// key)` of bucket `?1` with keys in `[?2, ?3)` and a CAS above `?4`,
/// after `(?5, ?6)` in `(cas, key)` order.
pub(super) fn list_sql(prefix: &str) -> Option<String> {
    let (_, _, range) = INDEXES.iter().find(|(_, p, _)| prefix.starts_with(p))?;
    Some(format!(
        "SELECT cas, key FROM docs WHERE bucket = ?1 AND {range} AND key >= ?2 AND key < ?3 \
         AND cas > ?4 AND (cas, key) > (?5, ?6) ORDER BY cas, key LIMIT ?7"
    ))
}

/// Creates the indexes if a store made by an earlier release lacks them
/// (once: one pass over the ledger), and says whether they exist. A store
/// where they cannot be made is still opened: `audit --since` then reads
/// every record, and the cause is logged.
pub(super) fn ensure(conn: &Connection) -> bool {
    let exists = |conn: &Connection| {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name IN (?1, ?2)",
            [INDEXES[0].0, INDEXES[1].0],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n == 2)
    };
    if exists(conn) {
        return true;
    }
    let sql: String = INDEXES
        .iter()
        .map(|(name, _, range)| index_sql(name, range) + ";")
        .collect();
    match conn.execute_batch(&sql) {
        Ok(()) => true,
        Err(_) if exists(conn) => true,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "the store's index of records by CAS cannot be created: `ledgerd audit --since` will read every record"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_covered_and_nothing_else_is() {
        for prefix in ["adj:", "tx:", "tx:abc"] {
            assert!(list_sql(prefix).is_some(), "{prefix}");
        }
        for prefix in ["action:", "balance:", "audit:opening", "tx", ""] {
            assert!(list_sql(prefix).is_none(), "{prefix}");
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
            .prepare(&format!("EXPLAIN QUERY PLAN {}", list_sql("tx:").expect("covered")))
            .expect("plan")
            .query_map(rusqlite::params!["ledger", "tx:", "tx;", 5, 7, "tx:a", 10], |r| {
                r.get::<_, String>(3)
            })
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("read");
        assert!(
            plan.iter().any(|p| p.contains("docs_tx_cas") && p.contains("cas")),
            "{plan:?}"
        );
    }
}

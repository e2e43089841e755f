//! Queued actions by shard (see [`crate::domain::shard`]): the expression
//! index a replica's discovery reads its own shards through, written with
//! SQLite's built-in functions only, so that every connection (another
//! process, the `sqlite3` shell) can maintain it; and the key-range
//! listings every prefix is read through.

use crate::store::{StoreError, StoreResult};

/// A queued action's shard (see [`crate::domain::shard`]) as SQLite
/// computes it: `instr` gives a character's 1-based place in the alphabet
/// (0 if absent), `substr(key, -k, 1)` the `k`th character from the end.
/// Action keys have at least 8 characters, so all four exist. The same text
/// in the index and in the query lets the planner use the index.
pub(super) fn shard_sql() -> String {
    use crate::domain::shard::{SHARDS, SHARD_ALPHABET, SHARD_WEIGHTS};
    let terms: Vec<String> = SHARD_WEIGHTS
        .iter()
        .enumerate()
        .map(|(k, weight)| format!("instr('{SHARD_ALPHABET}', substr(key, -{}, 1)) * {weight}", k + 1))
        .collect();
    format!("(({}) % {SHARDS})", terms.join(" + "))
}

/// The index that serves a replica's discovery of its own shards: queued
/// actions by bucket, shard and key, so that a listing of one shard reads
/// that shard's keys and no others.
const SHARD_INDEX: &str = "docs_action_shard";

pub(super) fn shard_index_sql() -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS {SHARD_INDEX} ON docs (bucket, {}, key) WHERE key >= 'action:' AND key < 'action;'",
        shard_sql()
    )
}

/// Creates the shard index if a store made by an earlier release lacks it
/// (once: one pass over the queued actions), and says whether it exists.
/// A store where it cannot be made (a read-only file, a damaged table) is
/// still opened: shards are then listed by a scan, and the cause logged.
pub(super) fn ensure_index(conn: &rusqlite::Connection) -> bool {
    let exists = |conn: &rusqlite::Connection| {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
            [SHARD_INDEX],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n > 0)
    };
    if exists(conn) {
        return true;
    }
    match conn.execute_batch(&shard_index_sql()) {
        Ok(()) => true,
        // Another process made it first.
        Err(_) if exists(conn) => true,
        Err(e) => {
            tracing::warn!(
                error = %e,
                index = SHARD_INDEX,
                "the store's shard index cannot be created: replicas will read every queued key to find their share"
            );
            false
        }
    }
}

/// Queued actions of a range of shards, in index order (shard, then key),
/// through the index: a range scan over the shard, stopped at the limit.
pub(super) fn list_range_sql() -> String {
    let shard = shard_sql();
    format!(
        "SELECT key FROM docs WHERE bucket = ?1 AND key >= 'action:' AND key < 'action;' AND {shard} >= ?2 AND {shard} < ?3 LIMIT ?4"
    )
}

/// One shard's queued actions from a key (`?3`, at least `action:`) but
/// not `?4` (the cursor), in order, through the index: one lower bound on
/// the key, so that the seek starts at the cursor (see `seek_from`).
pub(super) fn list_shard_sql() -> String {
    format!(
        "SELECT key FROM docs WHERE bucket = ?1 AND key >= ?3 AND key < 'action;' AND {} = ?2 AND key <> ?4 ORDER BY key LIMIT ?5",
        shard_sql()
    )
}

/// The key range `[prefix, upper)` of an ASCII prefix.
pub(super) fn prefix_range(prefix: &str) -> StoreResult<(String, String)> {
    if !prefix.is_ascii() {
        return Err(StoreError::Permanent(format!("key prefix {prefix:?} is not ASCII")));
    }
    let mut upper = prefix.as_bytes().to_vec();
    match upper.last_mut() {
        Some(b) if *b < 0x7f => *b += 1,
        // An empty prefix (or one ending in DEL) has no ASCII successor: use
        // a bound above every valid UTF-8 key.
        _ => return Ok((prefix.to_string(), format!("{prefix}\u{10FFFF}"))),
    }
    let upper = String::from_utf8(upper).map_err(|e| StoreError::Permanent(e.to_string()))?;
    Ok((prefix.to_string(), upper))
}

/// Keys under a prefix from a seek point (see [`seek_from`]).
pub(super) const LIST_KEYS_SQL: &str =
    "SELECT key FROM docs WHERE bucket = ?1 AND key >= ?2 AND key < ?3 AND key <> ?4 ORDER BY key LIMIT ?5";
/// Documents under a prefix from a seek point (see [`seek_from`]).
pub(super) const READ_DOCS_SQL: &str =
    "SELECT key, body FROM docs WHERE bucket = ?1 AND key >= ?2 AND key < ?3 AND key <> ?4 ORDER BY key LIMIT ?5";

/// Where a listing of the keys from `lower` after `after` starts: keys
/// `>= from` and `<> skip`. One lower bound, not two: SQLite seeks the
/// primary key from only one of two lower bounds on a column and filters
/// with the other, so `key >= prefix AND key > after` walks every key of
/// the prefix before the cursor, on every page: a listing of n keys would
/// cost n^2 / page rows (at 2M ledger records, about 1,800 passes over the
/// file). `skip` is the cursor itself (or the empty string, never a key).
pub(super) fn seek_from(lower: &str, after: Option<&str>) -> (String, String) {
    match after {
        Some(after) if after >= lower => (after.to_string(), after.to_string()),
        _ => (lower.to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::shard::shard_of;
    use proptest::prelude::*;
    use rusqlite::Connection;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(super::super::SCHEMA).expect("schema");
        conn.execute_batch(&shard_index_sql()).expect("index");
        conn
    }

    proptest! {
        /// SQLite's expression and the Rust function agree on every action
        /// key, whatever its characters.
        #[test]
        fn sqlite_computes_the_shard_as_rust_does(id in "\\PC{1,12}") {
            let key = format!("action:{id}");
            let conn = Connection::open_in_memory().expect("open");
            let sql = format!("SELECT {} FROM (SELECT ?1 AS key)", shard_sql());
            let shard: u32 = conn.query_row(&sql, [&key], |r| r.get(0)).expect("shard");
            prop_assert_eq!(shard, shard_of(&key), "{}", key);
        }
    }

    #[test]
    fn a_shard_is_read_through_its_index_in_key_order() {
        let conn = db();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", list_shard_sql()))
            .expect("plan")
            .query_map(rusqlite::params!["queue", 7, "action:", "", 10], |r| {
                r.get::<_, String>(3)
            })
            .expect("plan rows")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        let plan = plan.join("; ");
        assert!(plan.contains(SHARD_INDEX), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
    }

    #[test]
    fn a_range_of_shards_is_read_through_the_index() {
        let conn = db();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", list_range_sql()))
            .expect("plan")
            .query_map(rusqlite::params!["queue", 16, 32, 10], |r| r.get::<_, String>(3))
            .expect("plan rows")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        let plan = plan.join("; ");
        assert!(plan.contains(SHARD_INDEX), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
    }
}

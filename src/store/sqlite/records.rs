//! The ledger's records by wallet: `wallet_records (hash, key)`, one row
//! per wallet a transaction record credits (`credits[*].hash` of `tx:`)
//! and per adjustment (`hash` of `adj:`), kept by triggers on `docs`, so
//! that `ledgerd history HASH` reads one wallet's records and no others.
//!
//! Triggers, not code in the writer: every writer of the file (another
//! release, the `sqlite3` shell, a restore) keeps the table right, and the
//! triggers use SQLite's built-in JSON functions only. A record's wallets
//! never change after it is written (a completion rewrites its state, not
//! its credits): an update that keeps them touches nothing; one that
//! changes them is handled as a delete and an insert.

use rusqlite::Connection;

/// The table's name.
pub(super) const TABLE: &str = "wallet_records";

/// SQL that lists the `(hash, key)` pairs of a document `doc` (`new` or
/// `old` in a trigger) of the ledger bucket `bucket`.
fn pairs_sql(doc: &str, bucket: &str) -> String {
    let bucket = bucket.replace('\'', "''");
    let body = format!("CAST({doc}.body AS TEXT)");
    format!(
        "SELECT json_extract(c.value, '$.hash') AS hash, {doc}.key AS key
           FROM json_each(CASE WHEN json_valid({body}) THEN {body} ELSE '{{}}' END, '$.credits') AS c
          WHERE {doc}.bucket = '{bucket}' AND {doc}.key >= 'tx:' AND {doc}.key < 'tx;'
            AND json_type(c.value, '$.hash') = 'text'
         UNION ALL
         SELECT json_extract({body}, '$.hash'), {doc}.key
          WHERE {doc}.bucket = '{bucket}' AND {doc}.key >= 'adj:' AND {doc}.key < 'adj;'
            AND json_valid({body}) AND json_type({body}, '$.hash') = 'text'"
    )
}

/// When a trigger fires: for a record (`tx:`, `adj:`) of the ledger
/// bucket only, so that a write of any other document (a wallet, an
/// action) costs nothing more.
fn record_when(doc: &str, bucket: &str) -> String {
    let bucket = bucket.replace('\'', "''");
    format!(
        "{doc}.bucket = '{bucket}' AND (({doc}.key >= 'tx:' AND {doc}.key < 'tx;') OR ({doc}.key >= 'adj:' AND {doc}.key < 'adj;'))"
    )
}

/// Removes the rows of the record `old`: by its wallets' hashes and its
/// key, each one seek of the primary key (a row-value `IN` over a
/// subquery would scan the whole table for each write).
fn delete_sql(bucket: &str) -> String {
    format!(
        "DELETE FROM {TABLE} WHERE key = old.key AND hash IN (SELECT hash FROM ({}));",
        pairs_sql("old", bucket)
    )
}

/// The table, its triggers, and the rows of records already stored.
fn schema_sql(bucket: &str) -> String {
    let insert = pairs_sql("new", bucket);
    let delete = delete_sql(bucket);
    let (when_new, when_old) = (record_when("new", bucket), record_when("old", bucket));
    // A completion rewrites a record's state, never its wallets: then
    // nothing is deleted and inserted again.
    let wallets = |doc: &str| {
        let body = format!("CAST({doc}.body AS TEXT)");
        format!("CASE WHEN json_valid({body}) THEN json_array(json_extract({body}, '$.credits'), json_extract({body}, '$.hash')) END")
    };
    let changed = format!(
        "(old.key IS NOT new.key OR ({}) IS NOT ({}))",
        wallets("old"),
        wallets("new")
    );
    format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (hash TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (hash, key)) WITHOUT ROWID;
         CREATE TRIGGER IF NOT EXISTS {TABLE}_insert AFTER INSERT ON docs WHEN {when_new} BEGIN
           INSERT OR IGNORE INTO {TABLE} (hash, key) {insert};
         END;
         CREATE TRIGGER IF NOT EXISTS {TABLE}_delete AFTER DELETE ON docs WHEN {when_old} BEGIN
           {delete}
         END;
         CREATE TRIGGER IF NOT EXISTS {TABLE}_update AFTER UPDATE OF body ON docs
           WHEN ({when_old} OR {when_new}) AND {changed} BEGIN
           {delete}
           INSERT OR IGNORE INTO {TABLE} (hash, key) {insert};
         END;
         INSERT OR IGNORE INTO {TABLE} (hash, key)
           SELECT hash, key FROM ({});",
        backfill_sql(bucket)
    )
}

/// Every `(hash, key)` pair of the records already stored.
fn backfill_sql(bucket: &str) -> String {
    let bucket = bucket.replace('\'', "''");
    format!(
        "SELECT json_extract(c.value, '$.hash') AS hash, d.key AS key
           FROM docs AS d, json_each(CASE WHEN json_valid(CAST(d.body AS TEXT)) THEN CAST(d.body AS TEXT) ELSE '{{}}' END, '$.credits') AS c
          WHERE d.bucket = '{bucket}' AND d.key >= 'tx:' AND d.key < 'tx;' AND json_type(c.value, '$.hash') = 'text'
         UNION ALL
         SELECT json_extract(CAST(d.body AS TEXT), '$.hash'), d.key FROM docs AS d
          WHERE d.bucket = '{bucket}' AND d.key >= 'adj:' AND d.key < 'adj;'
            AND json_valid(CAST(d.body AS TEXT)) AND json_type(CAST(d.body AS TEXT), '$.hash') = 'text'"
    )
}

/// Creates the table and its triggers if a store made by an earlier
/// release lacks them, filling the table from the records already stored
/// (once: one pass over the ledger, in the same transaction, so that no
/// record written meanwhile is missed), and says whether they exist. A
/// store where they cannot be made is still opened: `history` then reads
/// every record, and the cause is logged.
pub(super) fn ensure(conn: &Connection, bucket: &str) -> bool {
    let exists = |conn: &Connection| {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE ?1",
            [format!("{TABLE}_%")],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n == 3)
    };
    if exists(conn) {
        return true;
    }
    let made = conn
        .execute_batch(&format!("BEGIN IMMEDIATE; {} COMMIT;", schema_sql(bucket)))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        });
    match made {
        Ok(()) => true,
        // Another process made them first.
        Err(_) if exists(conn) => true,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "the store's index of records by wallet cannot be created: `ledgerd history` will read every record"
            );
            false
        }
    }
}

/// One wallet's record keys after a key, in order.
pub(super) const LIST_SQL: &str = "SELECT key FROM wallet_records WHERE hash = ?1 AND key > ?2 ORDER BY key LIMIT ?3";

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(super::super::SCHEMA).expect("schema");
        conn
    }

    fn put(conn: &Connection, bucket: &str, key: &str, body: &str) {
        conn.execute(
            "INSERT INTO docs (bucket, key, body, xattrs, cas) VALUES (?1, ?2, CAST(?3 AS BLOB), '{}', 1)",
            (bucket, key, body),
        )
        .expect("insert");
    }

    fn records(conn: &Connection, hash: &str) -> Vec<String> {
        conn.prepare(LIST_SQL)
            .expect("prepare")
            .query_map(rusqlite::params![hash, "", 100], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    #[test]
    fn records_are_found_by_wallet_from_before_and_after_the_index() {
        let conn = db();
        put(
            &conn,
            "ledger",
            "tx:old",
            r#"{"credits":[{"hash":"a","units":1},{"hash":"b","units":2}]}"#,
        );
        assert!(ensure(&conn, "ledger"));
        assert!(ensure(&conn, "ledger"), "idempotent");
        put(
            &conn,
            "ledger",
            "tx:new",
            r#"{"credits":[{"hash":"a","units":3}],"state":"committed"}"#,
        );
        put(&conn, "ledger", "adj:fix", r#"{"hash":"b","before":2,"after":5}"#);
        // Not records of a wallet: other buckets, other prefixes, bad JSON.
        put(
            &conn,
            "queue",
            "tx:elsewhere",
            r#"{"credits":[{"hash":"a","units":1}]}"#,
        );
        put(&conn, "ledger", "balance:a", "4");
        put(&conn, "ledger", "tx:broken", "not json");
        assert_eq!(records(&conn, "a"), ["tx:new", "tx:old"]);
        assert_eq!(records(&conn, "b"), ["adj:fix", "tx:old"]);
        // A completion keeps the wallets; a removal takes them away.
        conn.execute(
            "UPDATE docs SET body = CAST(?1 AS BLOB) WHERE key = 'tx:new'",
            [r#"{"credits":[{"hash":"a","units":3}],"state":"completed"}"#],
        )
        .expect("update");
        assert_eq!(records(&conn, "a"), ["tx:new", "tx:old"]);
        // A rewrite that changes the wallets moves the record.
        conn.execute(
            "UPDATE docs SET body = CAST(?1 AS BLOB) WHERE key = 'adj:fix'",
            [r#"{"hash":"c","before":2,"after":5}"#],
        )
        .expect("update");
        assert_eq!(records(&conn, "c"), ["adj:fix"]);
        conn.execute(
            "UPDATE docs SET body = CAST(?1 AS BLOB) WHERE key = 'adj:fix'",
            [r#"{"hash":"b","before":2,"after":5}"#],
        )
        .expect("update");
        assert!(records(&conn, "c").is_empty());
        conn.execute("DELETE FROM docs WHERE key = 'tx:old'", [])
            .expect("delete");
        assert_eq!(records(&conn, "a"), ["tx:new"]);
        assert_eq!(records(&conn, "b"), ["adj:fix"]);
    }

    /// A write costs the same however many records the table holds: a
    /// wallet's write fires nothing, a record's write seeks its own rows.
    #[test]
    fn a_write_does_not_read_the_whole_table() {
        let conn = db();
        assert!(ensure(&conn, "ledger"));
        for n in 0..2000 {
            put(
                &conn,
                "ledger",
                &format!("tx:{n:05}"),
                &format!(r#"{{"credits":[{{"hash":"w{n}","units":1}},{{"hash":"x{n}","units":1}}]}}"#),
            );
        }
        put(&conn, "ledger", "balance:w1", "1");
        let steps = |sql: &str, args: &[&dyn rusqlite::ToSql]| {
            let mut stmt = conn.prepare(sql).expect("prepare");
            stmt.execute(args).expect("execute");
            stmt.get_status(rusqlite::StatementStatus::VmStep)
        };
        let update = "UPDATE docs SET body = CAST(?1 AS BLOB) WHERE bucket = 'ledger' AND key = ?2";
        for (key, body) in [
            ("balance:w1", "2"),
            (
                "tx:01000",
                r#"{"credits":[{"hash":"w1000","units":1},{"hash":"x1000","units":1}],"state":"completed"}"#,
            ),
        ] {
            let n = steps(update, &[&body, &key]);
            assert!(n < 300, "{n} steps to update {key}");
        }
        let n = steps("DELETE FROM docs WHERE bucket = 'ledger' AND key = ?1", &[&"tx:01001"]);
        assert!(n < 300, "{n} steps to remove a record");
        assert_eq!(records(&conn, "w1000"), ["tx:01000"]);
        assert!(records(&conn, "w1001").is_empty());
    }

    #[test]
    fn a_wallet_is_read_through_the_primary_key() {
        let conn = db();
        assert!(ensure(&conn, "ledger"));
        let plan: String = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {LIST_SQL}"))
            .expect("plan")
            .query_map(rusqlite::params!["a", "", 10], |r| r.get::<_, String>(3))
            .expect("rows")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows")
            .join("; ");
        assert!(plan.contains("PRIMARY KEY") && !plan.contains("TEMP B-TREE"), "{plan}");
    }
}

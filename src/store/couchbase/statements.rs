//! Every SQL++ statement ledgerd sends, in one place.
//!
//! Discovery and listing are range scans on `META().id`, served by covering
//! GSI indexes: only the id is read, never a document. The queue has a
//! partial index over `action:` keys alone, so the hot discovery path scans
//! live actions and nothing else; each bucket also has an index over every
//! id for the other prefixes (`failed:`, `balance:`, `tx:`). Prefixes are
//! ledgerd's own constants; they are still escaped.

/// Name of the partial index over queued actions.
pub const INDEX_QUEUE_ACTIONS: &str = "ix_ledgerd_queue_action";
/// Name of the index over every id in the queue bucket.
pub const INDEX_QUEUE_IDS: &str = "ix_ledgerd_queue_id";
/// Name of the index over every id in the ledger bucket.
pub const INDEX_LEDGER_IDS: &str = "ix_ledgerd_ledger_id";
/// Name of the partial index over queued actions by shard.
pub const INDEX_QUEUE_SHARDS: &str = "ix_ledgerd_queue_shard";
/// Name of the array index over the wallets transaction records credit.
pub const INDEX_LEDGER_CREDITS: &str = "ix_ledgerd_ledger_credit";
/// Name of the index over the wallet of each adjustment.
pub const INDEX_LEDGER_ADJUSTMENTS: &str = "ix_ledgerd_ledger_adj";
/// Name of the index over the ledger's documents by CAS.
pub const INDEX_LEDGER_CHANGES: &str = "ix_ledgerd_ledger_cas";
/// Name of the partial index over queued actions' last writes and block
/// notes, from which the queue is counted by state.
pub const INDEX_QUEUE_STATES: &str = "ix_ledgerd_queue_state";

/// The user xattr path of the block note on a queued action, as SQL++
/// reads it (`META().xattrs.<attribute>.<path>`: "Indexing Metadata
/// Information", https://docs.couchbase.com/server/current/n1ql/n1ql-language-reference/indexing-meta-info.html;
/// before 8.0 an index may cover one xattr attribute, and this one covers
/// only `ledger`). Its `retry_after` is always written with the note.
fn blocked_note() -> String {
    let mut path = String::from("META().xattrs");
    for part in crate::domain::keys::BLOCKED_XATTR.split('.') {
        path.push('.');
        path.push_str(&ident(part));
    }
    path.push_str(".`retry_after`");
    path
}

/// A bucket name as a SQL++ identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A string as a SQL++ literal.
pub fn literal(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The index definitions: `(bucket, index name, statement)`, all deferred.
pub fn create_indexes(queue: &str, ledger: &str) -> Vec<(String, &'static str, String)> {
    let defer = r#"WITH {"defer_build": true}"#;
    vec![
        (
            queue.to_string(),
            INDEX_QUEUE_ACTIONS,
            format!(
                "CREATE INDEX {INDEX_QUEUE_ACTIONS} IF NOT EXISTS ON {}(META().id) WHERE META().id LIKE \"action:%\" {defer}",
                ident(queue)
            ),
        ),
        (
            queue.to_string(),
            INDEX_QUEUE_SHARDS,
            format!(
                "CREATE INDEX {INDEX_QUEUE_SHARDS} IF NOT EXISTS ON {}({}, META().id) WHERE META().id LIKE \"action:%\" {defer}",
                ident(queue),
                shard_expression()
            ),
        ),
        (
            queue.to_string(),
            INDEX_QUEUE_IDS,
            format!("CREATE INDEX {INDEX_QUEUE_IDS} IF NOT EXISTS ON {}(META().id) {defer}", ident(queue)),
        ),
        (
            ledger.to_string(),
            INDEX_LEDGER_IDS,
            format!("CREATE INDEX {INDEX_LEDGER_IDS} IF NOT EXISTS ON {}(META().id) {defer}", ident(ledger)),
        ),
        (
            ledger.to_string(),
            INDEX_LEDGER_CREDITS,
            format!(
                "CREATE INDEX {INDEX_LEDGER_CREDITS} IF NOT EXISTS ON {}(DISTINCT ARRAY c.`hash` FOR c IN credits END, META().id) \
                 WHERE META().id LIKE \"tx:%\" {defer}",
                ident(ledger)
            ),
        ),
        (
            ledger.to_string(),
            INDEX_LEDGER_ADJUSTMENTS,
            format!(
                "CREATE INDEX {INDEX_LEDGER_ADJUSTMENTS} IF NOT EXISTS ON {}(`hash`, META().id) WHERE META().id LIKE \"adj:%\" {defer}",
                ident(ledger)
            ),
        ),
        (
            ledger.to_string(),
            INDEX_LEDGER_CHANGES,
            format!(
                "CREATE INDEX {INDEX_LEDGER_CHANGES} IF NOT EXISTS ON {}(META().cas, META().id) {defer}",
                ident(ledger)
            ),
        ),
        (
            queue.to_string(),
            INDEX_QUEUE_STATES,
            format!(
                "CREATE INDEX {INDEX_QUEUE_STATES} IF NOT EXISTS ON {}(META().cas, {}) WHERE META().id LIKE \"action:%\" {defer}",
                ident(queue),
                blocked_note()
            ),
        ),
    ]
}

/// The version of the server answering the query, e.g.
/// `"7.6.2-3721-enterprise"`: SQL++'s `DS_VERSION()` (couchbase/query,
/// `expression/func_meta.go`: "returns the current version of the server").
pub fn server_version() -> &'static str {
    "SELECT RAW ds_version()"
}

/// Names of a bucket's indexes still waiting to be built.
pub fn deferred_indexes() -> &'static str {
    "SELECT RAW name FROM system:indexes WHERE keyspace_id = $bucket AND state = \"deferred\""
}

/// States of a bucket's ledgerd indexes.
pub fn index_states() -> &'static str {
    "SELECT RAW state FROM system:indexes WHERE keyspace_id = $bucket AND name LIKE \"ix_ledgerd_%\""
}

/// Names and states of a bucket's ledgerd indexes (`ledgerd check`).
pub fn index_names_and_states() -> &'static str {
    "SELECT name, state FROM system:indexes WHERE keyspace_id = $bucket AND name LIKE \"ix_ledgerd_%\""
}

/// Builds the named deferred indexes of a bucket in one pass.
pub fn build_indexes(bucket: &str, names: &[String]) -> String {
    let list: Vec<String> = names.iter().map(|n| ident(n)).collect();
    format!("BUILD INDEX ON {}({})", ident(bucket), list.join(", "))
}

/// The key range of a prefix: `[prefix, upper)`, for ASCII prefixes.
fn upper_bound(prefix: &str) -> String {
    let mut upper = prefix.to_string();
    match upper.pop() {
        Some(last) if (last as u32) < 0x7f => upper.push(char::from_u32(last as u32 + 1).unwrap_or('\u{10FFFF}')),
        Some(last) => {
            upper.push(last);
            upper.push('\u{10FFFF}');
        }
        None => upper.push('\u{10FFFF}'),
    }
    upper
}

/// A `LIKE` pattern matching ids that start with `prefix` (backslash escapes).
fn like_prefix(prefix: &str) -> String {
    format!(
        "{}%",
        prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
    )
}

/// Up to `$limit` ids under `prefix` after `$after`, in order. The literal
/// `LIKE` lets the planner choose the partial index for `action:`.
pub fn list_keys(bucket: &str, prefix: &str) -> String {
    format!(
        "SELECT RAW META().id FROM {} WHERE META().id LIKE {} AND META().id >= {} AND META().id < {} \
         AND META().id > $after ORDER BY META().id LIMIT $limit",
        ident(bucket),
        literal(&like_prefix(prefix)),
        literal(prefix),
        literal(&upper_bound(prefix)),
    )
}

/// A queued action's shard (see `domain::shard`) in SQL++: `POSITION`
/// gives a character's 0-based place in the alphabet (-1 if absent),
/// `SUBSTR(id, LENGTH(id) - k, 1)` the `k`th character from the end (SQL++
/// "String Functions": `SUBSTR` and `POSITION` are zero-based). Each term is
/// guarded with `IFMISSINGORNULL` so that no key can make the index key
/// MISSING (a document whose leading index key is MISSING is left out of
/// the index, and its action would never be listed by shard). The same
/// text in the index and in the query lets the planner match them.
pub fn shard_expression() -> String {
    use crate::domain::shard::{SHARDS, SHARD_ALPHABET, SHARD_WEIGHTS};
    let terms: Vec<String> = SHARD_WEIGHTS
        .iter()
        .enumerate()
        .map(|(k, weight)| {
            format!(
                "(1 + IFMISSINGORNULL(POSITION({}, SUBSTR(META().id, LENGTH(META().id) - {}, 1)), -1)) * {weight}",
                literal(SHARD_ALPHABET),
                k + 1
            )
        })
        .collect();
    format!("(({}) % {SHARDS})", terms.join(" + "))
}

/// Up to `$limit` queued actions of shard `$shard` after `$after`, in
/// order, from the shard index: equality on its leading key, then the id
/// range, so the index answers in id order and reads no other shard.
pub fn list_shard_keys(bucket: &str) -> String {
    format!(
        "SELECT RAW META().id FROM {} WHERE META().id LIKE \"action:%\" AND {} = $shard \
         AND META().id > $after ORDER BY META().id LIMIT $limit",
        ident(bucket),
        shard_expression(),
    )
}

/// Up to `$limit` queued actions whose shard is in `[$lo, $hi)`, in the
/// index's order (shard, then id): a range on the shard index's leading
/// key, so the index reads one member's share and stops at the limit.
pub fn list_shard_range(bucket: &str) -> String {
    let shard = shard_expression();
    format!(
        "SELECT RAW META().id FROM {} WHERE META().id LIKE \"action:%\" AND {shard} >= $lo AND {shard} < $hi LIMIT $limit",
        ident(bucket),
    )
}

/// Up to `$limit` transaction records that credit wallet `$hash`, after
/// `$after`, in id order: the array index's span for one hash, covering
/// (SQL++ "Array Indexing": `ANY ... SATISFIES` on a `DISTINCT ARRAY`
/// index key).
pub fn wallet_credits(bucket: &str) -> String {
    format!(
        "SELECT RAW META().id FROM {} WHERE META().id LIKE \"tx:%\" \
         AND ANY c IN credits SATISFIES c.`hash` = $hash END AND META().id > $after ORDER BY META().id LIMIT $limit",
        ident(bucket)
    )
}

/// Up to `$limit` adjustments of wallet `$hash`, after `$after`, in id order.
pub fn wallet_adjustments(bucket: &str) -> String {
    format!(
        "SELECT RAW META().id FROM {} WHERE META().id LIKE \"adj:%\" AND `hash` = $hash \
         AND META().id > $after ORDER BY META().id LIMIT $limit",
        ident(bucket)
    )
}

/// The queue by state in one statement, from the state index (covering:
/// no document is read): every queued action, those carrying a block note,
/// and the least CAS. A CAS is the time of the document's last write in
/// nanoseconds since the epoch (a hybrid logical clock: ep-engine
/// MB-21617, "The CAS is generated as a nanosecond value"); SQL++ returns
/// it as a JSON number, which keeps its milliseconds. Locks are not seen:
/// the data service keeps them in memory, out of the indexer's reach.
pub fn queue_census(bucket: &str) -> String {
    format!(
        "SELECT COUNT(*) AS total, COUNT({}) AS blocked, MIN(META().cas) AS oldest_cas \
         FROM {} WHERE META().id LIKE \"action:%\" AND META().cas IS NOT NULL",
        blocked_note(),
        ident(bucket),
    )
}

/// Up to `$limit` ids under `prefix` written after the CAS `$since`, with
/// their CAS, in `(cas, id)` order after `($after_cas, $after_id)`: a
/// range on the CAS index's leading key, covering.
pub fn changed_since(bucket: &str, prefix: &str) -> String {
    format!(
        "SELECT META().cas AS cas, META().id AS id FROM {} WHERE META().cas > $since \
         AND META().id LIKE {} AND META().id >= {} AND META().id < {} \
         AND (META().cas > $after_cas OR (META().cas = $after_cas AND META().id > $after_id)) \
         ORDER BY META().cas, META().id LIMIT $limit",
        ident(bucket),
        literal(&like_prefix(prefix)),
        literal(prefix),
        literal(&upper_bound(prefix)),
    )
}

/// How many ids start with `prefix`.
pub fn count_keys(bucket: &str, prefix: &str) -> String {
    format!(
        "SELECT RAW COUNT(*) FROM {} WHERE META().id LIKE {} AND META().id >= {} AND META().id < {}",
        ident(bucket),
        literal(&like_prefix(prefix)),
        literal(prefix),
        literal(&upper_bound(prefix)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_uses_the_partial_index_predicate() {
        assert_eq!(
            list_keys("queue", "action:"),
            "SELECT RAW META().id FROM `queue` WHERE META().id LIKE \"action:%\" AND META().id >= \"action:\" \
             AND META().id < \"action;\" AND META().id > $after ORDER BY META().id LIMIT $limit"
        );
        assert_eq!(
            count_keys("ledger", "balance:"),
            "SELECT RAW COUNT(*) FROM `ledger` WHERE META().id LIKE \"balance:%\" AND META().id >= \"balance:\" AND META().id < \"balance;\""
        );
    }

    #[test]
    fn index_definitions() {
        let all = create_indexes("queue", "ledger");
        assert_eq!(all.len(), 8);
        assert_eq!(
            all[0].2,
            "CREATE INDEX ix_ledgerd_queue_action IF NOT EXISTS ON `queue`(META().id) WHERE META().id LIKE \"action:%\" WITH {\"defer_build\": true}"
        );
        assert_eq!(all[3].0, "ledger");
        assert_eq!(
            build_indexes("queue", &["a".into(), "b".into()]),
            "BUILD INDEX ON `queue`(`a`, `b`)"
        );
    }

    #[test]
    fn the_shard_listing_uses_the_shard_index_expression() {
        let index = &create_indexes("queue", "ledger")[1].2;
        assert!(index.contains(&format!("ON `queue`({}, META().id)", shard_expression())));
        assert!(list_shard_keys("queue").contains(&format!("AND {} = $shard", shard_expression())));
        assert!(list_shard_range("queue").contains(&format!("AND {} >= $lo", shard_expression())));
        assert!(shard_expression().starts_with(
            "(((1 + IFMISSINGORNULL(POSITION(\"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.:\", SUBSTR(META().id, LENGTH(META().id) - 1, 1)), -1)) * 1 + "
        ));
        assert!(shard_expression().ends_with(" * 1331) % 256)"));
    }

    #[test]
    fn a_wallets_records_are_read_from_their_indexes() {
        let all = create_indexes("queue", "ledger");
        assert!(all[4]
            .2
            .contains("ON `ledger`(DISTINCT ARRAY c.`hash` FOR c IN credits END, META().id)"));
        assert!(all[5]
            .2
            .contains("ON `ledger`(`hash`, META().id) WHERE META().id LIKE \"adj:%\""));
        assert!(wallet_credits("ledger").contains("ANY c IN credits SATISFIES c.`hash` = $hash END"));
        assert!(wallet_adjustments("ledger").contains("`hash` = $hash"));
    }

    #[test]
    fn the_published_index_file_matches_what_init_runs() {
        let mut text = String::new();
        for (_, _, statement) in create_indexes("queue", "ledger") {
            text.push_str(&statement);
            text.push_str(";\n");
        }
        text.push_str(&build_indexes(
            "queue",
            &[
                INDEX_QUEUE_ACTIONS.into(),
                INDEX_QUEUE_SHARDS.into(),
                INDEX_QUEUE_IDS.into(),
                INDEX_QUEUE_STATES.into(),
            ],
        ));
        text.push_str(";\n");
        text.push_str(&build_indexes(
            "ledger",
            &[
                INDEX_LEDGER_IDS.into(),
                INDEX_LEDGER_CREDITS.into(),
                INDEX_LEDGER_ADJUSTMENTS.into(),
                INDEX_LEDGER_CHANGES.into(),
            ],
        ));
        text.push_str(";\n");
        assert_eq!(include_str!("../../../couchbase-init/indexes.n1ql"), text);
    }

    #[test]
    fn the_queue_is_counted_by_state_from_its_state_index() {
        let index = &create_indexes("queue", "ledger")[7];
        assert_eq!(
            index.2,
            "CREATE INDEX ix_ledgerd_queue_state IF NOT EXISTS ON `queue`(META().cas, META().xattrs.`ledger`.`blocked`.`retry_after`) \
             WHERE META().id LIKE \"action:%\" WITH {\"defer_build\": true}"
        );
        let census = queue_census("queue");
        // The same expressions as the index's keys and predicate, so that
        // the index covers it.
        assert!(census.contains("COUNT(META().xattrs.`ledger`.`blocked`.`retry_after`) AS blocked"));
        assert!(census.contains("MIN(META().cas) AS oldest_cas"));
        assert!(census.contains("WHERE META().id LIKE \"action:%\""));
    }

    #[test]
    fn changes_are_read_from_the_cas_index() {
        let index = &create_indexes("queue", "ledger")[6];
        assert_eq!(
            index.2,
            "CREATE INDEX ix_ledgerd_ledger_cas IF NOT EXISTS ON `ledger`(META().cas, META().id) WITH {\"defer_build\": true}"
        );
        let query = changed_since("ledger", "tx:");
        assert!(query.starts_with("SELECT META().cas AS cas, META().id AS id FROM `ledger` WHERE META().cas > $since"));
        assert!(query.contains("ORDER BY META().cas, META().id LIMIT $limit"));
    }

    #[test]
    fn names_and_strings_are_escaped() {
        assert_eq!(ident("we`ird"), "`we``ird`");
        assert_eq!(literal("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert!(list_keys("q", "ct_1%:").contains(r#"LIKE "ct\\_1\\%:%""#));
    }
}

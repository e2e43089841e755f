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

/// The names of the indexes ledgerd makes in `bucket` (see
/// [`create_indexes`]).
pub fn index_names(queue: &str, ledger: &str, bucket: &str) -> Vec<&'static str> {
    create_indexes(queue, ledger)
        .into_iter()
        .filter(|(b, _, _)| b == bucket)
        .map(|(_, name, _)| name)
        .collect()
}

/// Which rows of `system:indexes` are indexes of bucket `$bucket` itself
/// (its default collection, where ledgerd keeps its documents): those
/// without a `bucket_id` whose keyspace is the bucket, or, named by
/// collection, `$bucket._default._default`. A collection of another
/// bucket that shares the bucket's name has a `bucket_id`
/// (couchbase/query `datastore/index_info.go`, `IndexInfoDoc`: `bucket_id`
/// and `scope_id` are set only for an index on a collection); the SDKs
/// list a bucket's deferred indexes with the same condition
/// (couchbase-cxx-client, gocb: `QueryIndexManager`).
const IN_THE_BUCKET: &str = "((bucket_id IS MISSING AND keyspace_id = $bucket) \
     OR (bucket_id = $bucket AND scope_id = \"_default\" AND keyspace_id = \"_default\"))";

/// Names of the indexes `$names` of bucket `$bucket` still waiting to be
/// built: ledgerd's own, never another application's, and in the bucket
/// itself, never in a collection.
pub fn deferred_indexes() -> String {
    format!("SELECT RAW name FROM system:indexes WHERE {IN_THE_BUCKET} AND name IN $names AND state = \"deferred\"")
}

/// Names and states of the indexes `$names` of bucket `$bucket` (`init`
/// waits for them, `ledgerd check` reports them).
pub fn index_names_and_states() -> String {
    format!("SELECT name, state FROM system:indexes WHERE {IN_THE_BUCKET} AND name IN $names")
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

/// The cursor of a listing in key order: `AND META().id > "<after>"`, the
/// key written into the statement as a string literal, or nothing on a
/// first page.
///
/// Why a literal and not a parameter: each of these statements also
/// bounds `META().id` from below by its prefix (the `LIKE` that selects
/// the partial index, and the key range). Of two lower bounds on one index
/// key, the planner keeps the greater when both are constants, and the
/// span stays exact; when one is a parameter it cannot compare them
/// before they have values, keeps both in a `GREATEST`, and marks the span
/// inexact (couchbase/query `planner/spans_term.go`, `constrainRange`).
/// An inexact span costs the `LIMIT` its push-down to the indexer
/// (`planner/build_scan_pushdowns.go`, `checkExactSpans`), and an array
/// index its covering of `ANY ... SATISFIES` (`build_scan_covering.go`,
/// `indexCoverExpressions`): `history` would fetch every record of the
/// wallet. Statements are sent ad hoc (the SDK's default), so a literal
/// costs no cached plan. [`literal`] escapes as the query lexer reads
/// (`parser/n1ql/util.go`, `ProcessEscapeSequences`).
fn id_after(after: Option<&str>) -> String {
    after.map_or_else(String::new, |after| format!(" AND META().id > {}", literal(after)))
}

/// Up to `$limit` ids under `prefix` after `after`, in order. The literal
/// `LIKE` lets the planner choose the partial index for `action:`.
pub fn list_keys(bucket: &str, prefix: &str, after: Option<&str>) -> String {
    format!(
        "SELECT RAW META().id FROM {} WHERE META().id LIKE {} AND META().id >= {} AND META().id < {}{} \
         ORDER BY META().id LIMIT $limit",
        ident(bucket),
        literal(&like_prefix(prefix)),
        literal(prefix),
        literal(&upper_bound(prefix)),
        id_after(after),
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

/// Up to `$limit` queued actions of shard `$shard` after `after`, in
/// order, from the shard index: equality on its leading key, then the id
/// range, so the index answers in id order and reads no other shard.
pub fn list_shard_keys(bucket: &str, after: Option<&str>) -> String {
    format!(
        "SELECT RAW META().id FROM {} WHERE META().id LIKE \"action:%\" AND {} = $shard{} \
         ORDER BY META().id LIMIT $limit",
        ident(bucket),
        shard_expression(),
        id_after(after),
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
/// `after`, in id order: the array index's span for one hash, covering
/// (SQL++ "Array Indexing": `ANY ... SATISFIES` on a `DISTINCT ARRAY`
/// index key, covered only when every span is exact: see [`id_after`]).
pub fn wallet_credits(bucket: &str, after: Option<&str>) -> String {
    format!(
        "SELECT RAW META().id FROM {} WHERE META().id LIKE \"tx:%\" \
         AND ANY c IN credits SATISFIES c.`hash` = $hash END{} ORDER BY META().id LIMIT $limit",
        ident(bucket),
        id_after(after),
    )
}

/// Up to `$limit` adjustments of wallet `$hash`, after `after`, in id order.
pub fn wallet_adjustments(bucket: &str, after: Option<&str>) -> String {
    format!(
        "SELECT RAW META().id FROM {} WHERE META().id LIKE \"adj:%\" AND `hash` = $hash{} \
         ORDER BY META().id LIMIT $limit",
        ident(bucket),
        id_after(after),
    )
}

/// The queue by state in one statement, from the state index (covering:
/// no document is read): every queued action, those carrying a block note,
/// and the least CAS of those without one. A CAS is the time of the
/// document's last write in nanoseconds since the epoch (a hybrid logical
/// clock: ep-engine MB-21617, "The CAS is generated as a nanosecond
/// value"), which for an action without a note is its producer's write (a
/// lock is no mutation, and the note is the only write a worker makes to
/// an action); SQL++ returns it as a JSON integer with every digit. Locks
/// are not seen: the data service keeps them in memory, out of the
/// indexer's reach.
pub fn queue_census(bucket: &str) -> String {
    let note = blocked_note();
    format!(
        "SELECT COUNT(*) AS total, COUNT({note}) AS blocked, \
         MIN(CASE WHEN {note} IS MISSING THEN META().cas END) AS oldest_cas \
         FROM {} WHERE META().id LIKE \"action:%\" AND META().cas IS NOT NULL",
        ident(bucket),
    )
}

/// The row of [`queue_census`]; the CAS read as the integer it is (see
/// [`ChangedRow`]).
#[derive(Debug, serde::Deserialize)]
pub struct CensusRow {
    /// Queued actions.
    pub total: u64,
    /// Those carrying a block note.
    pub blocked: u64,
    /// The least CAS among them (`null` when there are none).
    pub oldest_cas: Option<u64>,
}

/// Up to `$limit` ids under `prefix` with their CAS, in `(cas, id)` order
/// after the cursor `(after_cas, after_id)`: a range on the CAS index's
/// leading key, covering. The cursor is the statement's only lower bound
/// on the CAS, written as literals (see [`id_after`]): with two lower
/// bounds on one index key that the planner cannot compare (the point
/// asked for and the cursor, as parameters), it keeps whichever it met
/// first (`planner/spans_term.go`, `constrainRange`), and a first page
/// with a cursor of 0 scanned the whole index. The first page's cursor
/// starts at the point asked for ([`changed_since_cursor`]).
pub fn changed_since(bucket: &str, prefix: &str, (after_cas, after_id): (u64, &str)) -> String {
    format!(
        "SELECT META().cas AS cas, META().id AS id FROM {} \
         WHERE META().id LIKE {} AND META().id >= {} AND META().id < {} \
         AND (META().cas > {after_cas} OR (META().cas = {after_cas} AND META().id > {})) \
         ORDER BY META().cas, META().id LIMIT $limit",
        ident(bucket),
        literal(&like_prefix(prefix)),
        literal(prefix),
        literal(&upper_bound(prefix)),
        literal(after_id),
    )
}

/// The cursor of [`changed_since`] for the page after `after`, or for the
/// first page of the changes after the CAS `since`: `(since, the key
/// range's upper bound)`, which every id under `prefix` sorts before, so
/// that the first page lists exactly the CAS values above `since`.
pub fn changed_since_cursor(prefix: &str, since: u64, after: Option<(u64, String)>) -> (u64, String) {
    after.unwrap_or_else(|| (since, upper_bound(prefix)))
}

/// One row of [`changed_since`]. SQL++ returns `META().cas` as a JSON
/// integer with every digit (the query service holds it as a 64-bit
/// integer: couchbase/query `value/value.go`, `NewValue`); it is read as
/// one, never through a float, which would move a CAS near 1.7 × 10^18 by
/// up to 128 ns and make the cursor skip the records in between.
#[derive(Debug, serde::Deserialize)]
pub struct ChangedRow {
    /// The document's CAS.
    pub cas: u64,
    /// The document's key.
    pub id: String,
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
#[path = "statements_tests.rs"]
mod tests;

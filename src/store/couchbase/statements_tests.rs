//! The statements' shapes, pinned: what the planner is given.

use super::*;

#[test]
fn discovery_uses_the_partial_index_predicate() {
    assert_eq!(
        list_keys("queue", "action:", None),
        "SELECT RAW META().id FROM `queue` WHERE META().id LIKE \"action:%\" AND META().id >= \"action:\" \
         AND META().id < \"action;\" ORDER BY META().id LIMIT $limit"
    );
    assert_eq!(
        list_keys("queue", "action:", Some("action:7")),
        "SELECT RAW META().id FROM `queue` WHERE META().id LIKE \"action:%\" AND META().id >= \"action:\" \
         AND META().id < \"action;\" AND META().id > \"action:7\" ORDER BY META().id LIMIT $limit"
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
    assert!(list_shard_keys("queue", None).contains(&format!("AND {} = $shard ORDER BY", shard_expression())));
    assert!(list_shard_keys("queue", Some("action:9")).contains(&format!(
        "AND {} = $shard AND META().id > \"action:9\" ORDER BY",
        shard_expression()
    )));
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
    assert!(wallet_credits("ledger", None).contains("ANY c IN credits SATISFIES c.`hash` = $hash END"));
    assert!(wallet_adjustments("ledger", None).contains("`hash` = $hash"));
}

#[test]
fn cursors_are_constants_so_that_every_span_is_exact() {
    // A parameter beside the prefix's constant bound on the same key
    // makes the span inexact: the array index would no longer cover
    // `ANY`, and no LIMIT would reach the indexer.
    for first in [
        list_keys("queue", "action:", None),
        list_shard_keys("queue", None),
        wallet_credits("ledger", None),
        wallet_adjustments("ledger", None),
    ] {
        assert!(!first.contains("$after"), "{first}");
        assert!(!first.contains("META().id > "), "a first page has no cursor: {first}");
    }
    assert_eq!(
        wallet_credits("ledger", Some("tx:a\"b")),
        "SELECT RAW META().id FROM `ledger` WHERE META().id LIKE \"tx:%\" \
         AND ANY c IN credits SATISFIES c.`hash` = $hash END AND META().id > \"tx:a\\\"b\" ORDER BY META().id LIMIT $limit"
    );
    assert_eq!(
        wallet_adjustments("ledger", Some("adj:x")),
        "SELECT RAW META().id FROM `ledger` WHERE META().id LIKE \"adj:%\" AND `hash` = $hash \
         AND META().id > \"adj:x\" ORDER BY META().id LIMIT $limit"
    );
}

/// The query lexer's reading of a double-quoted string literal
/// (couchbase/query `parser/n1ql/util.go`, `ProcessEscapeSequences`),
/// for the escapes [`literal`] writes.
fn as_the_lexer_reads(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    let (mut out, mut chars) = (String::new(), inner.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                c @ ('\\' | '"' | '/' | '\'' | '`') => out.push(c),
                _ => return None,
            },
            // An unescaped quote would end the literal early.
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

proptest::proptest! {
    #[test]
    fn a_cursor_reaches_the_server_as_the_key_it_is(key in "\\PC{0,40}") {
        proptest::prop_assert_eq!(as_the_lexer_reads(&literal(&key)), Some(key));
    }
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
    // The oldest of those without a note: writing the note rewrites
    // the CAS, which would make a blocked action look new.
    assert!(census.contains(
        "MIN(CASE WHEN META().xattrs.`ledger`.`blocked`.`retry_after` IS MISSING THEN META().cas END) AS oldest_cas"
    ));
    assert!(census.contains("WHERE META().id LIKE \"action:%\""));
}

#[test]
fn changes_are_read_from_the_cas_index() {
    let index = &create_indexes("queue", "ledger")[6];
    assert_eq!(
        index.2,
        "CREATE INDEX ix_ledgerd_ledger_cas IF NOT EXISTS ON `ledger`(META().cas, META().id) WITH {\"defer_build\": true}"
    );
    let since = 1_729_000_000_000_000_129;
    let (cas, id) = changed_since_cursor("tx:", since, None);
    let query = changed_since("ledger", "tx:", (cas, &id));
    assert_eq!(
        query,
        "SELECT META().cas AS cas, META().id AS id FROM `ledger` WHERE META().id LIKE \"tx:%\" \
         AND META().id >= \"tx:\" AND META().id < \"tx;\" \
         AND (META().cas > 1729000000000000129 OR (META().cas = 1729000000000000129 AND META().id > \"tx;\")) \
         ORDER BY META().cas, META().id LIMIT $limit"
    );
    // One lower bound on the CAS, the cursor's, and it starts at the
    // point asked for: no second bound for the planner to start from.
    assert_eq!(query.matches("META().cas >").count(), 1);
    assert!(
        !query.contains('$') || query.matches('$').count() == 1,
        "only $limit: {query}"
    );
}

#[test]
fn the_first_page_of_changes_starts_at_the_point_asked_for() {
    // Every id under the prefix sorts before the range's upper bound,
    // so (since, upper) lists exactly the CAS values above `since`.
    let since = 1_729_000_000_000_000_129;
    assert_eq!(changed_since_cursor("tx:", since, None), (since, "tx;".to_string()));
    assert!("tx:\u{10FFFF}" < "tx;");
    assert_eq!(
        changed_since_cursor("tx:", since, Some((since + 5, "tx:a".into()))),
        (since + 5, "tx:a".to_string())
    );
}

#[test]
fn a_cas_comes_back_from_a_query_with_every_digit() {
    // A server CAS: 1729000000000000129 is …256 once through an f64.
    let rows: Vec<ChangedRow> = serde_json::from_str(r#"[{"cas": 1729000000000000129, "id": "tx:a"}]"#).expect("rows");
    assert_eq!(rows[0].cas, 1_729_000_000_000_000_129);
    assert_eq!(rows[0].id, "tx:a");
    let census: CensusRow =
        serde_json::from_str(r#"{"total": 2, "blocked": 0, "oldest_cas": 1729000000000000129}"#).expect("row");
    assert_eq!(census.oldest_cas, Some(1_729_000_000_000_000_129));
}

#[test]
fn init_reads_and_builds_only_its_own_indexes_in_the_bucket_itself() {
    assert_eq!(
        index_names("queue", "ledger", "queue"),
        [
            INDEX_QUEUE_ACTIONS,
            INDEX_QUEUE_SHARDS,
            INDEX_QUEUE_IDS,
            INDEX_QUEUE_STATES
        ]
    );
    assert_eq!(index_names("queue", "ledger", "ledger").len(), 4);
    for statement in [deferred_indexes(), index_names_and_states()] {
        // Named, not matched: `_` is LIKE's one-character wildcard, and
        // another application's `ix_ledgerd_x` is not ledgerd's.
        assert!(statement.contains("AND name IN $names"), "{statement}");
        assert!(!statement.contains("LIKE"), "{statement}");
        // The bucket's default collection, not a collection named like it.
        assert!(
            statement.contains(
                "((bucket_id IS MISSING AND keyspace_id = $bucket) \
                 OR (bucket_id = $bucket AND scope_id = \"_default\" AND keyspace_id = \"_default\"))"
            ),
            "{statement}"
        );
    }
    assert!(deferred_indexes().ends_with("AND state = \"deferred\""));
}

#[test]
fn names_and_strings_are_escaped() {
    assert_eq!(ident("we`ird"), "`we``ird`");
    assert_eq!(literal("a\"b\\c"), "\"a\\\"b\\\\c\"");
    assert!(list_keys("q", "ct_1%:", None).contains(r#"LIKE "ct\\_1\\%:%""#));
}

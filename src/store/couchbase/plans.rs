//! Every SQL++ statement the Couchbase store sends, with the index that
//! serves it and whether that index covers it (no document is fetched).
//! docs/couchbase.md lists the same table, and a test holds the two
//! together; where a cluster is reachable, the Couchbase suite asks the
//! server to `EXPLAIN` each statement and checks both claims.

use super::statements as s;
use crate::domain::keys::{ACTION_PREFIX, ADJ_PREFIX, BALANCE_PREFIX, FAILED_PREFIX, TX_PREFIX};

/// One statement, as `ledgerd` sends it with the default bucket names.
#[derive(Debug, Clone)]
pub struct Planned {
    /// What sends it, as docs/couchbase.md names it.
    pub name: &'static str,
    /// The statement (a later page's cursor as a literal, where it has one).
    pub statement: String,
    /// Its named parameters, with values of the right type.
    pub params: Vec<(&'static str, serde_json::Value)>,
    /// The index that serves it; `None` for the system keyspaces and DDL.
    pub index: Option<&'static str>,
    /// Whether the index covers it.
    pub covered: bool,
}

fn planned(
    name: &'static str,
    statement: String,
    params: &[(&'static str, serde_json::Value)],
    index: Option<&'static str>,
    covered: bool,
) -> Planned {
    Planned {
        name,
        statement,
        params: params.to_vec(),
        index,
        covered,
    }
}

/// Every statement over the buckets `queue` and `ledger`, in the order
/// docs/couchbase.md lists them.
pub fn catalogue(queue: &str, ledger: &str) -> Vec<Planned> {
    use serde_json::json;
    let limit = ("limit", json!(256));
    let mut all = vec![
        planned(
            "discovery, the head of the queue and `--exit-when-idle`'s last pass (`list_keys action:`)",
            s::list_keys(queue, ACTION_PREFIX, Some("action:a")),
            std::slice::from_ref(&limit),
            Some(s::INDEX_QUEUE_ACTIONS),
            true,
        ),
        planned(
            "discovery, a member's share (`list_shard_range`)",
            s::list_shard_range(queue),
            &[("lo", json!(0)), ("hi", json!(64)), limit.clone()],
            Some(s::INDEX_QUEUE_SHARDS),
            true,
        ),
        planned(
            "discovery, one shard of a backlog (`list_shard_keys`)",
            s::list_shard_keys(queue, Some("action:a")),
            &[("shard", json!(7)), limit.clone()],
            Some(s::INDEX_QUEUE_SHARDS),
            true,
        ),
        planned(
            "`status`, the gauges, `--exit-when-idle` (`queue_census`)",
            s::queue_census(queue),
            &[],
            Some(s::INDEX_QUEUE_STATES),
            true,
        ),
        planned(
            "`failed`, `queue` listings (`list_keys failed:`)",
            s::list_keys(queue, FAILED_PREFIX, Some("failed:a")),
            std::slice::from_ref(&limit),
            Some(s::INDEX_QUEUE_IDS),
            true,
        ),
        planned(
            "`status`, `bench` (`count_keys action:`)",
            s::count_keys(queue, ACTION_PREFIX),
            &[],
            Some(s::INDEX_QUEUE_ACTIONS),
            true,
        ),
        planned(
            "`status`, the gauges (`count_keys failed:`)",
            s::count_keys(queue, FAILED_PREFIX),
            &[],
            Some(s::INDEX_QUEUE_IDS),
            true,
        ),
        planned(
            "`history`, `adjust` (`wallet_credits`)",
            s::wallet_credits(ledger, Some("tx:a")),
            &[("hash", json!("w1")), limit.clone()],
            Some(s::INDEX_LEDGER_CREDITS),
            true,
        ),
        planned(
            "`history`, `adjust` (`wallet_adjustments`)",
            s::wallet_adjustments(ledger, Some("adj:a")),
            &[("hash", json!("w1")), limit.clone()],
            Some(s::INDEX_LEDGER_ADJUSTMENTS),
            true,
        ),
    ];
    for prefix in [TX_PREFIX, ADJ_PREFIX] {
        all.push(planned(
            "`audit --since` (`changed_since`)",
            s::changed_since(ledger, prefix, (1_729_000_000_000_000_129, &format!("{prefix}a"))),
            std::slice::from_ref(&limit),
            Some(s::INDEX_LEDGER_CHANGES),
            true,
        ));
    }
    for prefix in [BALANCE_PREFIX, TX_PREFIX, ADJ_PREFIX] {
        all.push(planned(
            "`audit`, `balances`, `sweep` (`list_keys` in the ledger)",
            s::list_keys(ledger, prefix, Some(&format!("{prefix}a"))),
            std::slice::from_ref(&limit),
            Some(s::INDEX_LEDGER_IDS),
            true,
        ));
    }
    for prefix in [BALANCE_PREFIX, TX_PREFIX] {
        all.push(planned(
            "`status`, `bench` (`count_keys` in the ledger)",
            s::count_keys(ledger, prefix),
            &[],
            Some(s::INDEX_LEDGER_IDS),
            true,
        ));
    }
    all.push(planned(
        "`init`, `check`: the server's version (`server_version`)",
        s::server_version().to_string(),
        &[],
        None,
        false,
    ));
    for bucket in [queue, ledger] {
        let names = s::index_names(queue, ledger, bucket);
        let params = [("bucket", json!(bucket)), ("names", json!(names))];
        all.push(planned(
            "`init`: ledgerd's deferred indexes (`deferred_indexes`)",
            s::deferred_indexes(),
            &params,
            None,
            false,
        ));
        all.push(planned(
            "`init`, `check`: ledgerd's indexes' states (`index_names_and_states`)",
            s::index_names_and_states(),
            &params,
            None,
            false,
        ));
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        all.push(planned(
            "`init` (`build_indexes`)",
            s::build_indexes(bucket, &names),
            &[],
            None,
            false,
        ));
    }
    for (_, _, statement) in s::create_indexes(queue, ledger) {
        all.push(planned("`init` (`create_indexes`)", statement, &[], None, false));
    }
    all
}

/// The indexes a plan (the answer to `EXPLAIN`) scans, in the order met.
pub fn indexes_scanned(plan: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    walk(plan, &mut |op| {
        let scans = op["#operator"].as_str().is_some_and(|o| o.starts_with("IndexScan"));
        if let (true, Some(index)) = (scans, op["index"].as_str()) {
            found.push(index.to_string());
        }
    });
    found
}

/// Whether a plan fetches documents (a `Fetch` operator): not covered.
pub fn fetches(plan: &serde_json::Value) -> bool {
    let mut fetched = false;
    walk(plan, &mut |op| fetched |= op["#operator"] == "Fetch");
    fetched
}

/// Calls `visit` on every object of a plan.
fn walk(value: &serde_json::Value, visit: &mut impl FnMut(&serde_json::Value)) {
    match value {
        serde_json::Value::Object(map) => {
            visit(value);
            map.values().for_each(|v| walk(v, visit));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, visit)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_table_lists_every_statement_with_its_index() {
        let doc = include_str!("../../../docs/couchbase.md");
        for p in catalogue("queue", "ledger") {
            let Some(index) = p.index else { continue };
            let covered = if p.covered { "covered" } else { "fetches" };
            let row = format!("| {} | `{index}` | {covered} |", p.name);
            assert!(doc.contains(&row), "docs/couchbase.md has no row\n{row}");
        }
    }

    #[test]
    fn a_plan_says_which_index_it_scans_and_whether_it_fetches() {
        // The shape of the query service's EXPLAIN (a Sequence of
        // operators; a covered scan lists its `covers`).
        let covered = serde_json::json!({"plan": {"#operator": "Sequence", "~children": [
            {"#operator": "IndexScan3", "index": "ix_ledgerd_ledger_credit", "covers": ["cover ((meta(`ledger`).`id`))"]},
            {"#operator": "Parallel", "~child": {"#operator": "Sequence", "~children": [
                {"#operator": "Filter"}, {"#operator": "InitialProject"}]}}]}});
        assert_eq!(indexes_scanned(&covered), ["ix_ledgerd_ledger_credit"]);
        assert!(!fetches(&covered));
        let fetched = serde_json::json!({"plan": {"#operator": "Sequence", "~children": [
            {"#operator": "IndexScan3", "index": "ix_ledgerd_ledger_credit"},
            {"#operator": "Fetch", "keyspace": "ledger"}]}});
        assert!(fetches(&fetched));
    }

    #[test]
    fn every_statement_that_reads_documents_names_its_index() {
        let all = catalogue("queue", "ledger");
        for p in &all {
            let reads_a_bucket =
                p.statement.starts_with("SELECT") && p.statement.contains(" FROM ") && !p.statement.contains("system:");
            assert_eq!(reads_a_bucket, p.index.is_some(), "{}", p.statement);
        }
        // Every SQL++ builder of `statements` is here.
        assert_eq!(all.len(), 31);
    }
}

//! The store contract and an end-to-end run against a real Couchbase
//! cluster named by LEDGERD_TEST_COUCHBASE_URL (with _USERNAME and
//! _PASSWORD; buckets `ledgerd_test_queue` and `ledgerd_test_ledger` are
//! created if absent). Without it, every test is reported as ignored, with
//! the reason; with LEDGERD_TEST_REQUIRE_COUCHBASE=1 (the GitHub workflow)
//! a missing cluster is a failure instead.

#[path = "common/couchbase.rs"]
mod cb;
#[path = "common/steady_state.rs"]
mod steady_state;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

const REASON: &str = "needs a Couchbase cluster: set LEDGERD_TEST_COUCHBASE_URL";

fn main() {
    let args = Arguments::from_args();
    let settings = cb::settings_from_env();
    let required = std::env::var("LEDGERD_TEST_REQUIRE_COUCHBASE").is_ok_and(|v| v == "1");
    let available = move || -> Result<Option<ledgerd::config::Settings>, Failed> {
        match (settings.clone(), required) {
            (Some(s), _) => Ok(Some(s)),
            (None, true) => Err(format!("LEDGERD_TEST_REQUIRE_COUCHBASE=1 but {REASON}").into()),
            (None, false) => Ok(None),
        }
    };
    let mut trials = Vec::new();
    for case in ledgerd::store::contract::cases() {
        let available = available.clone();
        trials.push(Trial::ignorable_test(format!("contract::{}", case.name), move || {
            let Some(settings) = available()? else {
                return Ok(Completion::ignored_with(REASON));
            };
            cb::block_on(async move {
                let harness = cb::CouchbaseHarness(cb::ready_store(&settings).await);
                (case.run)(&harness).await;
            });
            Ok(Completion::Completed)
        }));
    }
    let explain = available.clone();
    trials.push(Trial::ignorable_test("statements_plan_as_documented", move || {
        let Some(settings) = explain()? else {
            return Ok(Completion::ignored_with(REASON));
        };
        cb::block_on(async move {
            let store = cb::ready_store(&settings).await;
            let (queue, ledger) = (&settings.store.queue_bucket, &settings.store.ledger_bucket);
            for p in ledgerd::store::couchbase::plans::catalogue(queue, ledger) {
                let Some(index) = p.index else { continue };
                let params: Vec<(&str, serde_json::Value)> = p.params.iter().map(|(k, v)| (*k, v.clone())).collect();
                let plan = store.explain(&p.statement, &params).await.expect("EXPLAIN");
                let scanned = ledgerd::store::couchbase::plans::indexes_scanned(&plan);
                assert_eq!(scanned, [index], "{}: {plan}", p.name);
                assert_eq!(
                    !ledgerd::store::couchbase::plans::fetches(&plan),
                    p.covered,
                    "{}: {plan}",
                    p.name
                );
            }
        });
        Ok(Completion::Completed)
    }));
    let foreign = available.clone();
    trials.push(Trial::ignorable_test("init_builds_only_its_own_indexes", move || {
        let Some(settings) = foreign()? else {
            return Ok(Completion::ignored_with(REASON));
        };
        cb::block_on(async move {
            use ledgerd::store::Store;
            let store = cb::ready_store(&settings).await;
            let bucket = settings.store.queue_bucket.clone();
            // Another application's deferred index in the same bucket.
            let ident = format!("`{}`", bucket.replace('`', "``"));
            store
                .query_for_tests(
                    &format!("CREATE INDEX ix_other_app IF NOT EXISTS ON {ident}(other_field) WITH {{\"defer_build\": true}}"),
                    &[],
                )
                .await
                .expect("another application's index");
            store.init().await.expect("ledgerd init");
            let states = store
                .query_for_tests(
                    "SELECT RAW state FROM system:indexes WHERE name = \"ix_other_app\" AND keyspace_id = $bucket AND bucket_id IS MISSING",
                    &[("bucket", serde_json::Value::from(bucket.clone()))],
                )
                .await
                .expect("its state");
            let _ = store.query_for_tests(&format!("DROP INDEX ix_other_app ON {ident}"), &[]).await;
            assert_eq!(states, [serde_json::json!("deferred")], "init built another application's index");
        });
        Ok(Completion::Completed)
    }));
    let steady = available.clone();
    trials.push(Trial::ignorable_test("steady_state_steps_on_couchbase", move || {
        let Some(settings) = steady()? else {
            return Ok(Completion::ignored_with(REASON));
        };
        cb::block_on(async move {
            let store: std::sync::Arc<dyn ledgerd::store::Store> =
                std::sync::Arc::new(cb::ready_store(&settings).await);
            let run = format!("steady{}", rand::random::<u32>());
            steady_state::old_foreign_markers_go_in_the_credit_s_own_write(store, &run).await;
        });
        Ok(Completion::Completed)
    }));
    trials.push(Trial::ignorable_test("end_to_end_on_couchbase", move || {
        let Some(settings) = available()? else {
            return Ok(Completion::ignored_with(REASON));
        };
        cb::block_on(cb::end_to_end(&settings));
        Ok(Completion::Completed)
    }));
    libtest_mimic::run(&args, trials).exit();
}

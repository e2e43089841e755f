//! The store contract and an end-to-end run against a real Couchbase
//! cluster named by LEDGERD_TEST_COUCHBASE_URL (with _USERNAME and
//! _PASSWORD; buckets `ledgerd_test_queue` and `ledgerd_test_ledger` are
//! created if absent). Without it, every test prints why it skips.

#[path = "common/couchbase.rs"]
mod cb;

async fn harness() -> Option<cb::CouchbaseHarness> {
    let settings = cb::settings_from_env()?;
    Some(cb::CouchbaseHarness(cb::ready_store(&settings).await))
}

ledgerd::contract_tests!(harness);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_couchbase() {
    let Some(settings) = cb::settings_from_env() else {
        return;
    };
    cb::end_to_end(&settings).await;
}

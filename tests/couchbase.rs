//! The store contract and an end-to-end run against a real Couchbase
//! cluster named by LEDGERD_TEST_COUCHBASE_URL (with _USERNAME and
//! _PASSWORD; buckets `ledgerd_test_queue` and `ledgerd_test_ledger` are
//! created if absent). Without it, every test is reported as ignored, with
//! the reason; with LEDGERD_TEST_REQUIRE_COUCHBASE=1 (the GitHub workflow)
//! a missing cluster is a failure instead.

#[path = "common/couchbase.rs"]
mod cb;

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
    trials.push(Trial::ignorable_test("end_to_end_on_couchbase", move || {
        let Some(settings) = available()? else {
            return Ok(Completion::ignored_with(REASON));
        };
        cb::block_on(cb::end_to_end(&settings));
        Ok(Completion::Completed)
    }));
    libtest_mimic::run(&args, trials).exit();
}

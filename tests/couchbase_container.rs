//! Starts Couchbase Server in Docker (testcontainers), initialises the
//! cluster, and runs the whole store contract and an end-to-end run on it.
//! Where no Docker engine answers, the test is reported as ignored with the
//! reason; with LEDGERD_TEST_REQUIRE_DOCKER=1 (the GitHub workflow) that is
//! a failure instead.

#[path = "common/couchbase.rs"]
mod cb;

use std::time::Duration;

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use testcontainers::core::{ExecCommand, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};

/// The image the deployment files use too.
const IMAGE: (&str, &str) = ("couchbase/server", "community-7.6.2");
/// Ports the SDK reaches; mapped to the same host ports because the
/// cluster map names them.
const PORTS: &[u16] = &[8091, 8092, 8093, 8094, 8095, 8096, 11210];
const REASON: &str = "needs a Docker engine: `docker info` does not answer";

fn docker_available() -> bool {
    std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() {
    let args = Arguments::from_args();
    let trial = Trial::ignorable_test("contract_and_end_to_end_on_a_fresh_couchbase_container", || {
        if !docker_available() {
            if std::env::var("LEDGERD_TEST_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
                return Err(Failed::from(format!(
                    "LEDGERD_TEST_REQUIRE_DOCKER=1 but the test {REASON}"
                )));
            }
            return Ok(Completion::ignored_with(REASON));
        }
        cb::block_on(on_a_fresh_container());
        Ok(Completion::Completed)
    });
    libtest_mimic::run(&args, vec![trial]).exit();
}

async fn on_a_fresh_container() {
    let mut image = GenericImage::new(IMAGE.0, IMAGE.1)
        .with_wait_for(WaitFor::message_on_stdout("Starting Couchbase Server"))
        .with_startup_timeout(Duration::from_secs(300));
    for port in PORTS {
        image = image.with_mapped_port(*port, port.tcp());
    }
    let container = image.start().await.expect("start Couchbase");
    // Same steps as couchbase-init/init.sh, retried until the REST API is up.
    let init = [
        "/opt/couchbase/bin/couchbase-cli",
        "cluster-init",
        "-c",
        "127.0.0.1",
        "--cluster-username",
        "Administrator",
        "--cluster-password",
        "password",
        "--services",
        "data,index,query",
        "--cluster-ramsize",
        "1024",
        "--cluster-index-ramsize",
        "256",
        "--index-storage-setting",
        "default",
    ];
    let mut initialised = false;
    for _ in 0..60 {
        let mut run = container.exec(ExecCommand::new(init)).await.expect("exec");
        let _ = run.stdout_to_vec().await;
        if run.exit_code().await.ok().flatten() == Some(0) {
            initialised = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(initialised, "couchbase-cli cluster-init never succeeded");

    let settings = cb::settings("couchbase://127.0.0.1", "Administrator", "password");
    let h = cb::CouchbaseHarness(cb::ready_store(&settings).await);
    for case in ledgerd::store::contract::cases() {
        eprintln!("contract case {} on the container", case.name);
        (case.run)(&h).await;
    }
    cb::end_to_end(&settings).await;
}

//! The examples applications are pointed to run, where their language is
//! installed: the Node.js balance reader parses 10^19 units exactly
//! (docs/reading-balances.md). Without `node` on PATH the test is reported
//! as ignored, with the reason, never as passed.

use std::process::Command;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test(
        "the_node_example_reads_the_whole_supply_exactly",
        the_node_example_reads_the_whole_supply_exactly,
    )];
    libtest_mimic::run(&args, trials).exit();
}

fn the_node_example_reads_the_whole_supply_exactly() -> Result<Completion, Failed> {
    let version = Command::new("node").arg("--version").output();
    let Some(version) = version.ok().filter(|o| o.status.success()) else {
        return Ok(Completion::ignored_with("needs node (Node.js 18 or later) on PATH"));
    };
    let major: u32 = String::from_utf8_lossy(&version.stdout)
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 18 {
        return Ok(Completion::ignored_with(format!(
            "needs Node.js 18 or later (node:test), found {}",
            String::from_utf8_lossy(&version.stdout).trim()
        )));
    }
    let out = Command::new("node")
        .args(["--test", "examples/node/read-balance.test.mjs"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map_err(|e| Failed::from(format!("running node: {e}")))?;
    if !out.status.success() {
        return Err(Failed::from(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(Completion::Completed)
}

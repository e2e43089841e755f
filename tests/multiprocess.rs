//! Several real `ledgerd run` processes share one SQLite file; some are
//! killed with SIGKILL mid-run and restarted. Every balance must still
//! equal totals computed here, independently of ledgerd's parser.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{balances, json_lines, stderr, Freezer, Scratch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ACTIONS: usize = 2_000;
const WALLETS: usize = 40;
const PROCESSES: usize = 4;

/// A share of `units` base units written the way a producer might.
fn share_text(rng: &mut StdRng, units: u64) -> String {
    let plain = format!("{}.{:08}", units / 100_000_000, units % 100_000_000);
    match rng.gen_range(0..4) {
        0 => format!("\"{plain}\""),
        1 if units.is_multiple_of(100_000_000) => format!("{}", units / 100_000_000),
        2 => format!("{units}e-8"),
        _ => plain,
    }
}

struct Workload {
    lines: String,
    expected: BTreeMap<String, u64>,
    invalid: BTreeSet<String>,
    valid: usize,
}

fn workload() -> Workload {
    let mut rng = StdRng::seed_from_u64(2026);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut invalid = BTreeSet::new();
    let mut lines = String::new();
    let mut valid = 0;
    for i in 0..ACTIONS {
        let id = format!("mp-{i:05}");
        let wallet = |rng: &mut StdRng| format!("w{:02}", rng.gen_range(0..WALLETS));
        let doc = match i % 25 {
            0 => {
                invalid.insert(id.clone());
                format!(r#"{{"beneficiaries":{{"{}":"0.000000001"}}}}"#, wallet(&mut rng))
            }
            1 => {
                // Split mode with shares that divide exactly: 25% and 75% of 4k units.
                let reward_units = 4 * rng.gen_range(1..=1_000_000u64);
                let (a, b) = (wallet(&mut rng), wallet(&mut rng));
                *expected.entry(a.clone()).or_default() += reward_units / 4;
                *expected.entry(b.clone()).or_default() += reward_units / 4 * 3;
                valid += 1;
                let reward = format!("{}.{:08}", reward_units / 100_000_000, reward_units % 100_000_000);
                format!(
                    r#"{{"reward":"{reward}","beneficiaries":[{{"hash":"{a}","share":25}},{{"hash":"{b}","share":"75"}}]}}"#
                )
            }
            _ => {
                let n = rng.gen_range(1..=4);
                let mut entries = Vec::new();
                for _ in 0..n {
                    let w = wallet(&mut rng);
                    let units = rng.gen_range(1..=10_000_000_000u64);
                    *expected.entry(w.clone()).or_default() += units;
                    entries.push(format!(r#"{{"{w}":{}}}"#, share_text(&mut rng, units)));
                }
                valid += 1;
                format!(r#"{{"beneficiaries":[{}]}}"#, entries.join(","))
            }
        };
        lines.push_str(&format!("{{\"id\":\"{id}\",\"doc\":{doc}}}\n"));
    }
    Workload {
        lines,
        expected,
        invalid,
        valid,
    }
}

fn start_worker(s: &Scratch) -> Child {
    s.cmd(&[
        "run",
        "--exit-when-idle",
        "--lease-ms",
        "1000",
        "--concurrency",
        "8",
        "--log-level",
        "warn",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start worker")
}

fn queued(s: &Scratch) -> u64 {
    json_lines(&s.run(&["status", "--json"], ""))[0]["queued"]
        .as_u64()
        .expect("queued")
}

fn wait_all(children: Vec<Child>) {
    let deadline = Instant::now() + Duration::from_secs(600);
    for mut child in children {
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "a worker failed: {status:?}");
                break;
            }
            assert!(Instant::now() < deadline, "workers did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn killed_and_restarted_processes_credit_every_action_exactly_once() {
    let s = Scratch::new();
    let w = workload();
    let out = s.run(&["enqueue"], &w.lines);
    assert!(out.status.success(), "{}", stderr(&out));

    // The workers run only when the test lets them: every kill happens while
    // they hold claims on work that remains, by construction.
    let freezer = Freezer::new(&s);
    let mut workers: Vec<Child> = (0..PROCESSES).map(|_| start_worker(&s)).collect();
    freezer.stop(&workers);
    let mut kills = 0;
    for _step in 0..100_000 {
        if kills >= 4 {
            break;
        }
        freezer.step(&workers);
        if freezer.claimed(&workers) == 0 {
            continue;
        }
        assert!(freezer.queued_while(&workers) > 0);
        // SIGKILL two workers mid-action, then start replacements.
        for victim in workers.iter_mut().take(2) {
            victim.kill().expect("SIGKILL");
            victim.wait().expect("reap");
            kills += 1;
        }
        workers.drain(..2);
        workers.push(start_worker(&s));
        workers.push(start_worker(&s));
        freezer.stop(&workers);
        // Some progress before the next kill.
        for _ in 0..20 {
            freezer.step(&workers);
        }
    }
    assert_eq!(kills, 4, "the workers never held a claim");
    freezer.resume(&workers);
    wait_all(workers);
    // Actions locked by a killed worker wait for its lease to lapse.
    std::thread::sleep(Duration::from_millis(1_200));
    let last = s.run(&["run", "--exit-when-idle", "--lease-ms", "1000"], "");
    assert!(last.status.success(), "{}", stderr(&last));

    assert_eq!(queued(&s), 0, "the queue is drained");
    assert_eq!(balances(&s), w.expected, "every wallet holds exactly its total");
    let failed: BTreeSet<String> = json_lines(&s.run(&["failed"], ""))
        .iter()
        .map(|f| f["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(failed, w.invalid, "every rejected action is preserved");
    let status = &json_lines(&s.run(&["status", "--json"], ""))[0];
    assert_eq!(status["transactions"].as_u64(), Some(w.valid as u64));
}

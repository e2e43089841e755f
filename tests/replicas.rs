//! Replicas that divide the queue between them, through the real binary:
//! one killed mid-run has its share taken over by the others, and one
//! paused past its heartbeat, then resumed, credits nothing twice. The
//! workers run only when the test lets them (SIGSTOP, SIGCONT), so every
//! fault lands while work remains, whatever the machine's speed.

mod common;

use std::process::{Child, Stdio};

use common::{balances, free_port, get, metric_sample, sigterm, stdout, Freezer, Scratch};
use ledgerd::domain::shard::{owned_shards, shard_of};

const ACTIONS: u64 = 1_500;
const WALLETS: u64 = 50;

/// `ACTIONS` actions of one unit each, over `WALLETS` wallets; what each
/// wallet must end with.
fn workload() -> (String, std::collections::BTreeMap<String, u64>) {
    let mut expected = std::collections::BTreeMap::new();
    let lines = (0..ACTIONS)
        .map(|i| {
            let wallet = format!("w{:02}", i % WALLETS);
            *expected.entry(wallet.clone()).or_default() += 1;
            format!("{{\"id\":\"rep-{i:05}\",\"doc\":{{\"beneficiaries\":{{\"{wallet}\":\"0.00000001\"}}}}}}\n")
        })
        .collect();
    (lines, expected)
}

/// A replica with a one-second lease and membership timeout, its ops
/// listener on a free port.
fn replica(s: &Scratch) -> (Child, u16) {
    let port = free_port();
    let child = s
        .cmd(&[
            "run",
            "--lease-ms",
            "1000",
            "--member-timeout-ms",
            "1000",
            "--concurrency",
            "4",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "info,ledgerd::action=warn",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(s.path().join(format!("replica-{port}.log"))).expect("a log file"))
        .spawn()
        .expect("start a replica");
    wait(s, "the replica's listener answers", || get(port, "/healthz").is_some());
    (child, port)
}

/// Waits until `ok`, or fails showing the end of every replica's log.
fn wait(s: &Scratch, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ok() {
        if std::time::Instant::now() > deadline {
            let mut logs = String::new();
            for entry in std::fs::read_dir(s.path()).expect("scratch").flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("replica-") {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    logs.push_str(&format!(
                        "--- {name}\n{}\n",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
            }
            panic!("timed out waiting until {what}\n{logs}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The live members a replica counts, from its metrics.
fn members_seen(port: u16) -> Option<f64> {
    get(port, "/metrics").and_then(|(_, body)| metric_sample(&body, "ledgerd_members"))
}

/// Queued keys in the shards the member with `pid` owns, among the members
/// listed, read while `frozen` are stopped.
fn queued_in_share_of(freezer: &Freezer, frozen: &[Child], pid: u32) -> usize {
    let members = freezer.members(frozen);
    let Some(place) = members.iter().position(|(_, p)| *p == u64::from(pid)) else {
        return 0;
    };
    let shards = owned_shards(place, members.len());
    freezer
        .queued_keys(frozen)
        .iter()
        .filter(|k| shards.contains(&shard_of(k)))
        .count()
}

/// Stops the replicas, checks that they exit cleanly, that every wallet
/// holds exactly its total, and that the audit accounts for every unit.
fn finish(s: &Scratch, replicas: Vec<(Child, u16)>, expected: &std::collections::BTreeMap<String, u64>) {
    for (child, _) in &replicas {
        sigterm(child);
    }
    for (mut child, port) in replicas {
        let status = child.wait().expect("a replica exits");
        let log = std::fs::read_to_string(s.path().join(format!("replica-{port}.log"))).unwrap_or_default();
        assert!(status.success(), "{log}");
    }
    assert_eq!(&balances(s), expected, "every wallet holds exactly its total");
    let audit = s.run(&["audit"], "");
    assert!(audit.status.success(), "{}", stdout(&audit));
}

#[test]
fn a_killed_replica_has_its_share_taken_over_and_nothing_is_lost() {
    let s = Scratch::new();
    let (lines, expected) = workload();
    assert!(s.run(&["enqueue"], &lines).status.success());
    let freezer = Freezer::new(&s);
    let (mut children, mut ports): (Vec<Child>, Vec<u16>) = (0..3).map(|_| replica(&s)).unzip();
    freezer.stop(&children);
    // In slow motion until all three are members, then the victim dies
    // while its share still holds work.
    let mut steps = 0;
    while freezer.members(&children).len() < 3 {
        freezer.step(&children);
        steps += 1;
        assert!(steps < 100_000, "the replicas never all joined");
    }
    let victim_pid = children[0].id();
    assert!(
        queued_in_share_of(&freezer, &children, victim_pid) > 0,
        "the victim's share holds work when it dies"
    );
    let mut victim = children.remove(0);
    ports.remove(0);
    victim.kill().expect("SIGKILL");
    victim.wait().expect("reap");
    freezer.resume(&children);
    wait(&s, "the survivors see two members", || {
        ports.iter().all(|port| members_seen(*port) == Some(2.0))
    });
    wait(&s, "the queue is drained", || freezer.queued() == 0);
    // `status` shows the survivors dividing the 256 shards (the victim's
    // entry stays, silent, until it is forgotten).
    wait(&s, "the survivors' heartbeats say 128 shards each", || {
        let status = &common::json_lines(&s.run(&["status", "--json"], ""))[0];
        let shards: Vec<u64> = status["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter(|m| m["pid"] != u64::from(victim_pid))
            .map(|m| m["shards"].as_u64().expect("shards"))
            .collect();
        shards == [128, 128]
    });
    finish(&s, children.into_iter().zip(ports).collect(), &expected);
}

#[test]
fn a_replica_paused_past_its_heartbeat_then_resumed_credits_nothing_twice() {
    let s = Scratch::new();
    let (lines, expected) = workload();
    assert!(s.run(&["enqueue"], &lines).status.success());
    let freezer = Freezer::new(&s);
    // Alone at first, so that the claims seen are its own: paused while it
    // holds some, between two writes of its (SQLite has one write lock per
    // file: a process frozen while it holds it would stall the other one,
    // a limit of the embedded store that Couchbase does not have).
    let (paused, paused_port) = replica(&s);
    let alone = std::slice::from_ref(&paused);
    freezer.stop(alone);
    while freezer.claimed(alone) == 0 || !freezer.write_lock_free(alone) {
        freezer.step(alone);
    }
    assert!(freezer.queued_while(alone) > 0, "work remains when it is paused");
    // Another takes its share once its heartbeat lapses, and its claims
    // once their lease lapses, and drains the queue.
    let (other, other_port) = replica(&s);
    wait(&s, "the other sees one member", || {
        members_seen(other_port) == Some(1.0)
    });
    wait(&s, "the other drains the queue", || freezer.queued() == 0);
    // Resumed with its old view and its old in-flight actions.
    freezer.resume(alone);
    wait(&s, "the resumed one sees both", || {
        members_seen(paused_port) == Some(2.0)
    });
    finish(&s, vec![(paused, paused_port), (other, other_port)], &expected);
}

//! `audit` and `audit --snapshot` while workers credit: a producer keeps
//! the queue fed until every audit has finished, so the workers are
//! crediting (hot wallets included) for the whole of each one, by
//! construction. The snapshot must find no balance from outside ledgerd,
//! every audit must find no mismatch, and the ledger must audit clean and
//! hold exactly what was produced once the queue is drained.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{balances, sigterm, stderr, stdout, wait_until, Freezer, Scratch};

const WALLETS: u64 = 12;
/// Most actions waiting in the queue while the audits run.
const BACKLOG: u64 = 400;

fn start_worker(s: &Scratch) -> Child {
    s.cmd(&["run", "--metrics-addr", "off", "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start worker")
}

/// Feeds `ledgerd enqueue` until `stop`, keeping at most [`BACKLOG`] actions
/// queued; returns what each wallet must hold in the end.
fn produce(s: &Scratch, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<BTreeMap<String, u64>> {
    let mut enqueue = s
        .cmd(&["enqueue"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start enqueue");
    let queue = Freezer::new(s);
    std::thread::spawn(move || {
        let mut stdin = enqueue.stdin.take().expect("stdin");
        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        let mut n: u64 = 0;
        while !stop.load(Ordering::SeqCst) {
            if queue.queued() >= BACKLOG {
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            for _ in 0..50 {
                n += 1;
                // Wallet w00 is in every action: a hot wallet.
                let (other, units) = (format!("w{:02}", 1 + n % (WALLETS - 1)), 1 + n % 997);
                *expected.entry("w00".into()).or_default() += units;
                *expected.entry(other.clone()).or_default() += units * 3;
                writeln!(
                    stdin,
                    r#"{{"id":"live-{n}","doc":{{"beneficiaries":{{"w00":{units}e-8,"{other}":{}e-8}}}}}}"#,
                    units * 3
                )
                .expect("write to enqueue");
            }
            stdin.flush().expect("flush");
        }
        drop(stdin);
        let out = enqueue.wait_with_output().expect("enqueue");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        expected
    })
}

#[test]
fn audits_taken_while_workers_credit_are_exact() {
    let s = Scratch::new();
    let queue = Freezer::new(&s);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce(&s, stop.clone());
    let workers = [start_worker(&s), start_worker(&s)];
    let transactions = || {
        let status = &common::json_lines(&s.run(&["status", "--json"], ""))[0];
        status["transactions"].as_u64().expect("transactions")
    };
    wait_until("the workers have credited", || transactions() >= 200);

    let snapshot = s.run(&["audit", "--snapshot"], "");
    let audits: Vec<_> = (0..3).map(|_| s.run(&["audit"], "")).collect();

    stop.store(true, Ordering::SeqCst);
    let expected = producer.join().expect("producer");
    wait_until("the queue is drained", || queue.queued() == 0);
    for worker in &workers {
        sigterm(worker);
    }
    for worker in workers {
        let out = worker.wait_with_output().expect("worker");
        assert!(out.status.success(), "{}", stderr(&out));
    }

    assert!(snapshot.status.success(), "{}", stderr(&snapshot));
    assert_eq!(
        stdout(&snapshot).trim(),
        "opening snapshot taken: 0 wallets with balances from outside ledgerd"
    );
    for audit in &audits {
        assert!(audit.status.success(), "{}{}", stdout(audit), stderr(audit));
        assert!(stdout(audit).contains(", 0 mismatches"), "{}", stdout(audit));
    }
    let last = s.run(&["audit"], "");
    assert!(last.status.success(), "{}{}", stdout(&last), stderr(&last));
    assert_eq!(balances(&s), expected);
}

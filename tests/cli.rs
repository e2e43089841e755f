//! The command-line contract, through the real binary.

mod common;

use common::{balances, json_lines, stderr, stdout, Scratch};

#[test]
fn plan_prints_exact_units() {
    let s = Scratch::new();
    let out = s.run(&["plan"], r#"{"beneficiaries":[{"a":0.29},{"b":"1.15"}]}"#);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = &json_lines(&out)[0];
    assert_eq!(plan["mode"], "amount");
    assert_eq!(plan["credits"][0]["units"], 29_000_000u64);
    assert_eq!(plan["credits"][1]["units"], 115_000_000u64);
    assert_eq!(plan["credits"][1]["tokens"], "1.15000000");
    assert_eq!(plan["total_units"], 144_000_000u64);
    assert!(
        stdout(&out).starts_with(r#"{"mode":"amount","credits":[{"hash":"a","units":29000000,"tokens":"0.29000000"}"#)
    );
}

#[test]
fn plan_rejects_with_a_reason_and_exit_1() {
    let s = Scratch::new();
    let out = s.run(&["plan"], r#"{"beneficiaries":{"a":1,"a":2}}"#);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_lines(&out)[0]["error"], "duplicate key \"a\" in \"beneficiaries\"");
    let out = s.run(&["plan"], "\u{0}\u{1}garbage");
    assert_eq!(out.status.code(), Some(1));
    assert!(json_lines(&out)[0]["error"]
        .as_str()
        .expect("error")
        .starts_with("body is not valid JSON"));
}

#[test]
fn every_subcommand_has_help() {
    let s = Scratch::new();
    for cmd in [
        "init", "run", "enqueue", "plan", "balance", "balances", "failed", "status", "demo", "simulate", "audit", "tx",
        "history", "bench", "sweep", "adjust", "queue",
    ] {
        let out = s.run(&[cmd, "--help"], "");
        assert!(out.status.success(), "{cmd} --help");
        assert!(stdout(&out).contains("Usage: ledgerd"), "{cmd}: {}", stdout(&out));
    }
    let out = s.run(&["--help"], "");
    assert!(stdout(&out).contains("LEDGERD_STORE"));
    // The defaults `--help` states are the ones in force.
    let defaults = ledgerd::config::Settings::defaults().expect("defaults");
    let help = stdout(&s.run(&["run", "--help"], ""));
    for stated in [
        format!("(default {})", defaults.worker.concurrency),
        format!("(default {})", defaults.worker.lease.as_millis()),
        format!("(default {})", defaults.worker.shutdown_grace.as_millis()),
        format!("(default {})", defaults.ops.metrics_addr),
        format!("(default {};", defaults.log.level),
        format!("(default {})", defaults.store.url),
    ] {
        assert!(help.contains(&stated), "{stated}: {help}");
    }
}

#[test]
fn bad_configuration_fails_at_start_naming_the_key() {
    let s = Scratch::new();
    let out = s.run_with(
        {
            let mut c = s.cmd(&["status"]);
            c.env("LEDGERD_CONCURRENCY", "lots");
            c
        },
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("concurrency"), "{}", stderr(&out));

    std::fs::write(s.path().join("ledgerd.toml"), "lease_ms = 15000\nleas_ms = 3\n").expect("write");
    let out = s.run(&["--config", "ledgerd.toml", "status"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown key `leas_ms`"), "{}", stderr(&out));

    let out = s.run(&["run", "--lease-ms", "60000"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("lease_ms"), "{}", stderr(&out));

    for url in ["postgres://x", "sqllite://ledgerd.db", "sqlite://"] {
        let out = s.run(&["--store", url, "init"], "");
        assert_eq!(out.status.code(), Some(2), "{url}");
        assert!(stderr(&out).contains("store URL"), "{}", stderr(&out));
    }
    for filter in ["inf", "verbose"] {
        let out = s.run(&["--log-level", filter, "status"], "");
        assert_eq!(out.status.code(), Some(2), "{filter}");
        assert!(stderr(&out).contains("is not a log level"), "{}", stderr(&out));
    }
    std::fs::write(s.path().join("verbose.toml"), "log_level = \"verbose\"\n").expect("write");
    let out = s.run(&["--config", "verbose.toml", "status"], "");
    assert_eq!(out.status.code(), Some(2));
    let mut cmd = s.cmd(&["status"]);
    cmd.env("RUST_LOG", "inf");
    let out = s.run_with(cmd, "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("RUST_LOG"), "{}", stderr(&out));
}

/// Only `init` creates a store: a mistyped path is refused by every other
/// command, with exit 2, the path, and what to do; nothing is created.
#[test]
fn only_init_creates_a_store() {
    let s = Scratch::empty();
    for args in [
        &["balances"][..],
        &[
            "--store",
            "sqlite://ledgr.db",
            "run",
            "--exit-when-idle",
            "--metrics-addr",
            "off",
        ],
        &["--store", "sqlite://ledgr.db", "enqueue"],
        &["--store", "sqlite://ledgr.db", "status"],
    ] {
        let out = s.run(args, r#"{"id":"x","doc":{"beneficiaries":{"w":1}}}"#);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("no store at") && err.contains("ledgerd init"), "{err}");
        assert_eq!(err.matches("no store at").count(), 1, "said once: {err}");
    }
    assert!(
        !s.db().exists() && !s.path().join("ledgr.db").exists(),
        "nothing created"
    );
    // A file that is not a ledgerd store is not taken for one.
    std::fs::write(s.path().join("notes.db"), b"").expect("write");
    let out = s.run(&["--store", "sqlite://notes.db", "status"], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(s.run(&["init"], "").status.success());
    assert!(s.run(&["status"], "").status.success());
}

#[test]
fn enqueue_run_and_inspect() {
    let s = Scratch::new();
    assert!(s.run(&["init"], "").status.success());
    let input = [
        r#"{"id":"c1","doc":{"beneficiaries":[{"a":0.29},{"b":"1.15"}]}}"#,
        r#"{"id":"c2","doc":{"reward":"10","beneficiaries":{"a":50,"c":"25"}}}"#,
        r#"{"id":"c3","doc":{"beneficiaries":{"a":100.000000001}}}"#,
        r#"{"id":"c4","raw":"not json"}"#,
        "",
        "this line is broken",
        r#"{"id":"c1","doc":{"beneficiaries":{"zzz":1}}}"#,
    ]
    .join("\n");
    let out = s.run(&["enqueue"], &input);
    assert_eq!(out.status.code(), Some(1), "a bad line makes enqueue exit 1");
    assert_eq!(
        stdout(&out).trim(),
        r#"{"enqueued":4,"skipped":1,"invalid":1,"not_written":0,"blank":1,"lines":7}"#
    );
    // The line and the column in it (serde's own "line 1" would be the
    // line's line).
    assert!(
        stderr(&out).contains("line 6, column 2: not a valid line"),
        "{}",
        stderr(&out)
    );

    let out = s.run(&["status", "--json"], "");
    let status = &json_lines(&out)[0];
    assert!(status["oldest_queued_age_s"].as_u64().is_some(), "{status}");
    let mut status = status.clone();
    status["oldest_queued_age_s"] = serde_json::json!(0);
    assert_eq!(
        status,
        serde_json::json!({"queued":4,"ready":4,"locked":0,"blocked":0,"oldest_queued_age_s":0,
            "failed":0,"transactions":0,"wallets":0,"members":[]})
    );

    let out = s.run(&["run", "--exit-when-idle"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    // One JSON log line per action, with its outcome.
    let logs: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("action").is_some())
        .collect();
    assert_eq!(logs.len(), 4, "{}", stderr(&out));
    assert!(logs
        .iter()
        .all(|l| l.get("outcome").is_some() && l.get("duration_ms").is_some()));

    let got = balances(&s);
    assert_eq!(got.get("a"), Some(&529_000_000));
    assert_eq!(got.get("b"), Some(&115_000_000));
    assert_eq!(got.get("c"), Some(&250_000_000));

    let failed = json_lines(&s.run(&["failed"], ""));
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["id"], "c3");
    // The body is kept byte for byte: no float ever touched it.
    assert_eq!(failed[0]["original"], r#"{"beneficiaries":{"a":100.000000001}}"#);
    assert_eq!(
        failed[0]["reason"],
        "beneficiary \"a\": share 100.000000001 has more than 8 decimal places"
    );
    assert_eq!(failed[1]["original"], "not json");

    let out = s.run(&["status", "--json"], "");
    assert_eq!(
        json_lines(&out)[0],
        serde_json::json!({"queued":0,"ready":0,"locked":0,"blocked":0,"oldest_queued_age_s":null,
            "failed":2,"transactions":2,"wallets":3,"members":[]})
    );

    // The last writes' markers are still on the wallets; the sweep takes
    // them, and a second sweep finds nothing; balances do not move.
    let swept = |s: &Scratch| -> u64 {
        let out = s.run(&["sweep"], "");
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        text.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected sweep output: {text}"))
    };
    assert!(swept(&s) >= 1);
    assert_eq!(swept(&s), 0);
    assert_eq!(balances(&s).get("a"), Some(&529_000_000));

    let out = s.run(&["balance", "a", "nobody"], "");
    assert!(
        stdout(&out).contains("a  5.29000000 tokens  (529000000 units)"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("nobody  no wallet"), "{}", stdout(&out));
    assert_eq!(out.status.code(), Some(1), "an unknown wallet is not a zero balance");

    // An audit a few wallets at a time says what one pass says.
    let whole = s.run(&["audit"], "");
    assert!(whole.status.success(), "{}", stdout(&whole));
    assert!(
        stdout(&whole).starts_with("audit: 3 wallets, 2 transactions,"),
        "{}",
        stdout(&whole)
    );
    let passes = s.run(&["audit", "--wallets-per-pass", "2"], "");
    assert_eq!(stdout(&passes), stdout(&whole));
    let out = s.run(&["audit", "--wallets-per-pass", "1"], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--wallets-per-pass"), "{}", stderr(&out));
}

#[test]
fn a_daily_audit_checks_what_changed_since_the_last_clean_one() {
    let s = Scratch::new();
    s.run(&["enqueue"], r#"{"id":"1","doc":{"beneficiaries":{"a":"1","b":"2"}}}"#);
    assert!(s.run(&["run", "--exit-when-idle"], "").status.success());
    let out = s.run(&["audit", "--since", "last"], "");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("ledgerd audit --checkpoint"), "{}", stderr(&out));
    let out = s.run(&["audit", "--since", "yesterday"], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a checkpoint"), "{}", stderr(&out));

    let full = s.run(&["audit", "--checkpoint"], "");
    assert!(full.status.success(), "{}", stdout(&full));
    let checkpoint = stdout(&full)
        .lines()
        .find_map(|l| {
            l.strip_prefix("checkpoint ")
                .and_then(|r| r.split(':').next())
                .map(str::to_string)
        })
        .expect("a checkpoint is printed");
    s.run(&["enqueue"], r#"{"id":"2","doc":{"beneficiaries":{"b":"1","c":"1"}}}"#);
    assert!(s.run(&["run", "--exit-when-idle"], "").status.success());
    let out = s.run(&["audit", "--since", &checkpoint], "");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("2 wallets changed"), "{}", stdout(&out));
    // The checkpoint moved on: the old one is refused, naming the new.
    let out = s.run(&["audit", "--since", &checkpoint], "");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("is not the last clean audit's"),
        "{}",
        stderr(&out)
    );
    let out = s.run(&["audit", "--since", "last", "--checkpoint"], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn a_duplicate_delivery_credits_nothing_more() {
    let s = Scratch::new();
    let line = r#"{"id":"once","doc":{"beneficiaries":{"w":"12.5"}}}"#;
    s.run(&["enqueue"], line);
    assert!(s.run(&["run", "--exit-when-idle"], "").status.success());
    assert_eq!(balances(&s).get("w"), Some(&1_250_000_000));
    // Delivered again after completion: removed, nothing credited.
    assert_eq!(
        stdout(&s.run(&["enqueue"], line)).trim(),
        r#"{"enqueued":1,"skipped":0,"invalid":0,"not_written":0,"blank":0,"lines":1}"#
    );
    let out = s.run(&["run", "--exit-when-idle"], "");
    assert!(stderr(&out).contains(r#""outcome":"duplicate""#), "{}", stderr(&out));
    assert_eq!(balances(&s).get("w"), Some(&1_250_000_000));
    let status = json_lines(&s.run(&["status", "--json"], ""));
    assert_eq!(status[0]["queued"], 0);
    assert_eq!(status[0]["failed"], 0);
}

#[test]
fn environment_and_flags_choose_the_store() {
    let s = Scratch::empty();
    let mut init = s.cmd(&["init"]);
    init.env("LEDGERD_STORE", "sqlite://other.db");
    assert!(s.run_with(init, "").status.success());
    let mut cmd = s.cmd(&["enqueue"]);
    cmd.env("LEDGERD_STORE", "sqlite://other.db");
    s.run_with(cmd, r#"{"id":"x","doc":{"beneficiaries":{"w":1}}}"#);
    assert!(s.path().join("other.db").exists());
    assert!(!s.db().exists());
    let out = s.run(&["--store", "sqlite://other.db", "status", "--json"], "");
    assert_eq!(json_lines(&out)[0]["queued"], 1);
}

#[test]
fn a_store_url_naming_a_directory_says_so() {
    let s = Scratch::empty();
    std::fs::create_dir(s.path().join("data")).expect("a directory");
    for args in [
        &["--store", "sqlite://data", "init"][..],
        &["--store", "sqlite://data", "status"],
    ] {
        let out = s.run(args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("is a directory") && err.contains("data/ledgerd.db"),
            "{err}"
        );
    }
}

#[test]
fn a_wrong_path_is_told_from_a_damaged_store() {
    let s = Scratch::empty();
    // A file that is no database at all: a wrong path, not damage.
    std::fs::write(s.path().join("notes.txt"), "hello\n").expect("a file");
    for args in [
        &["--store", "sqlite://notes.txt", "balances"][..],
        &["--store", "sqlite://notes.txt", "check"],
    ] {
        let out = s.run(args, "");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("is not a SQLite database") && !err.contains("backup"),
            "{err}"
        );
    }
    // A directory that does not exist, for `init` as for the rest.
    for args in [
        &["--store", "sqlite://nowhere/ledgerd.db", "init"][..],
        &["--store", "sqlite://nowhere/ledgerd.db", "run", "--exit-when-idle"],
    ] {
        let out = s.run(args, "");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("/nowhere of the store") && err.contains("does not exist") && err.contains("mkdir -p"),
            "{err}"
        );
    }
    // A damaged store: `check` says what to do, not to run `check`.
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend(std::iter::repeat_n(0xA5u8, 4096));
    std::fs::write(s.path().join("damaged.db"), bytes).expect("a damaged file");
    let out = s.run(&["--store", "sqlite://damaged.db", "check"], "");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("damaged") && text.contains("backup"), "{text}");
    assert!(!text.contains("ledgerd check"), "{text}");
}

#[test]
fn every_failure_ends_with_one_plain_line_and_pretty_logs_carry_no_colour_into_a_pipe() {
    let s = Scratch::new();
    // A usage error, a configuration error, a store that cannot be opened,
    // and a refused command: the same last line whatever the log format.
    for (args, code) in [
        (&["adjust", "w1", "--to", "-5", "--reason", "r"][..], 2),
        (&["--store", "sqlite://nowhere/x.db", "status"], 2),
        (&["--store", "ftp://x", "status"], 2),
        (
            &["--log-format", "json", "--store", "sqlite://nowhere/x.db", "status"],
            2,
        ),
    ] {
        let out = s.run(args, "");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
        // clap's usage errors keep clap's shape; everything else ends so.
        if args[0] != "adjust" {
            assert!(last.starts_with("ledgerd: "), "{args:?}: {err}");
        }
    }
    // Forced pretty logs, written into a pipe: plain text.
    let out = s.run(&["--log-format", "pretty", "run", "--exit-when-idle"], "");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("worker started"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
}

#[test]
fn history_of_an_unknown_wallet_says_so_as_balance_does() {
    let s = Scratch::new();
    let out = s.run(&["history", "nobody-at-all"], "");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "", "stdout stays JSON Lines");
    assert!(
        stderr(&out).contains("nobody-at-all: no records and no wallet"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn demo_runs_and_cleans_up() {
    let s = Scratch::empty();
    let out = s.run(&["demo", "--actions", "60", "--workers", "2"], "");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(stderr(&out), "", "the summary is not buried under log lines");
    let text = stdout(&out);
    assert!(text.trim_end().ends_with("the temporary store is removed"), "{text}");
    assert!(
        text.contains("every balance equals the sum of its accepted actions: yes"),
        "{text}"
    );
    assert!(text.contains("queue         0 actions left"), "{text}");
    // Every rejected action shown with its reason, never a placeholder.
    let reasons: Vec<&str> = text.lines().filter(|l| l.starts_with("  failed:")).collect();
    assert!(!reasons.is_empty(), "{text}");
    for line in reasons {
        let (_, reason) = line.split_once(": ").expect("key: reason");
        assert!(reason.len() > 3 && reason != "?", "{line}");
    }
    assert!(!s.db().exists());
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    use std::io::BufRead;
    // `ledgerd demo | head -1`: the demo's first line is read, then the
    // pipe is closed while the demo still has lines to write.
    let s = Scratch::empty();
    let mut child = s
        .cmd(&["demo", "--actions", "60", "--workers", "2"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the demo");
    let mut first = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    reader.read_line(&mut first).expect("the first line");
    assert!(first.starts_with("ledgerd demo: "), "{first}");
    drop(reader);
    let out = child.wait_with_output().expect("the demo ends");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
}

#[test]
fn sigterm_stops_the_worker_cleanly() {
    let s = Scratch::new();
    s.run(&["enqueue"], r#"{"id":"t1","doc":{"beneficiaries":{"w":1}}}"#);
    let child = s
        .cmd(&["run", "--log-format", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    // Wait until the queued action is done, then ask the worker to stop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while balances(&s).get("w") != Some(&100_000_000) {
        assert!(std::time::Instant::now() < deadline, "worker made no progress");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let child_pid = child.id();
    let pid = child_pid.to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = child.wait_with_output().expect("exit");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    let line = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {lines:?}"))
    };
    // Lifecycle lines say which worker wrote them.
    for message in ["worker started", "shutdown requested: no new claims", "worker stopped"] {
        let l = line(message);
        assert_eq!(l["pid"], child_pid, "{l}");
        assert_eq!(l["version"], env!("CARGO_PKG_VERSION"), "{l}");
        assert!(l["host"].as_str().is_some_and(|h| !h.is_empty()), "{l}");
        assert_eq!(l["target"], "ledgerd::worker", "{l}");
    }
    // The line per action has a target of its own.
    assert_eq!(line("action done")["target"], "ledgerd::action");
}

#[test]
fn lifecycle_lines_keep_their_target_wherever_they_are_written() {
    let s = Scratch::new();
    s.run(&["enqueue"], r#"{"id":"t1","doc":{"beneficiaries":{"w":1}}}"#);
    let out = s.run(&["run", "--exit-when-idle", "--log-format", "json"], "");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    // Written in more than one module of the worker.
    for message in ["worker started", "queue idle: exiting", "worker stopped"] {
        let l = lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {lines:?}"));
        assert_eq!(l["target"], "ledgerd::worker", "{l}");
    }
}

#[test]
fn the_line_per_action_can_be_turned_down_alone() {
    let s = Scratch::new();
    s.run(&["enqueue"], r#"{"id":"t1","doc":{"beneficiaries":{"w":1}}}"#);
    let out = s.run(
        &[
            "run",
            "--exit-when-idle",
            "--log-format",
            "json",
            "--log-level",
            "info,ledgerd::action=warn",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("\"worker started\""), "{err}");
    assert!(err.contains("\"worker stopped\""), "{err}");
    assert!(!err.contains("action done"), "{err}");
    assert_eq!(balances(&s).get("w"), Some(&100_000_000));
}

#[test]
fn simulate_passes_and_catches_sabotage() {
    let s = Scratch::new();
    let out = s.run(&["simulate", "--seeds", "20"], "");
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("20 seeds (0..20), 0 with violations"),
        "{}",
        stdout(&out)
    );
    let out = s.run(&["simulate", "--seeds", "30", "--sabotage", "skip-marker-check"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("replay with: ledgerd simulate --seed"),
        "{}",
        stdout(&out)
    );
    let out = s.run(&["simulate", "--seed", "7", "--trace"], "");
    assert!(out.status.success());
    assert!(stdout(&out).contains("producer delivers"), "{}", stdout(&out));
}

#[test]
fn simulate_exhaustive_explores_and_replays_a_schedule() {
    let s = Scratch::new();
    let out = s.run(&["simulate", "--exhaustive", "--preemptions", "0", "--faults", "1"], "");
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("every schedule within 0 preemptions and 1 faults, with a sweep:")
            && stdout(&out).contains("0 with violations"),
        "{}",
        stdout(&out)
    );
    // One schedule: its third choice has the first worker die before its
    // second store call.
    let out = s.run(
        &[
            "simulate",
            "--exhaustive",
            "--preemptions",
            "0",
            "--faults",
            "1",
            "--schedule",
            "0,0,1",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("  2. w0 get_with_xattrs balance:own1  <- the worker dies before it"),
        "{}",
        stdout(&out)
    );
    // The bounds belong to --exhaustive.
    let out = s.run(&["simulate", "--faults", "1"], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn bench_reports_in_the_documented_shape() {
    let s = Scratch::empty();
    let out = s.run(&["bench", "--actions", "40", "--concurrency", "4", "--json"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let r = &json_lines(&out)[0];
    assert_eq!(r["scenario"], "uniform");
    assert_eq!(r["actions"], 40);
    assert!(r["actions_per_sec"].as_f64().is_some_and(|x| x > 0.0));
    assert!(r["credits_per_sec"].as_f64().is_some_and(|x| x > 0.0));
    for k in ["p50", "p99", "max"] {
        assert!(r["latency_ms"][k].as_f64().is_some(), "{r}");
    }
    // 2N + 4 for N = 3, undisturbed: 3 reads (the wallets; the claim is
    // counted as a write) and 7 writes per action. Reads also include the
    // discovery queries, a fraction per action.
    let reads = r["store_ops_per_action"]["reads"].as_f64().expect("reads");
    assert!((3.0..3.5).contains(&reads), "{r}");
    assert_eq!(r["store_ops_per_action"]["writes"], 7.0, "{r}");
    assert_eq!(r["store_ops_per_action"]["wallet_writes"], 3.0, "{r}");
    // 5 sequential round trips, as Couchbase would run them (the record's
    // lookup and the wallet reads go together, and so do the record's
    // completion and the action's removal), more only after a conflict.
    // The count does not depend on the machine's speed: a store that
    // answers at once still has an action's reads in flight together (a
    // loaded machine used to show 7.75 here, when they were 7).
    assert_eq!(r["store_ops_per_action"]["round_trips"], 5.0, "{r}");
    assert_eq!(r["balances_exact"], true, "{r}");
    assert!(r["wallet_markers_max"].as_u64().is_some(), "{r}");
    assert!(r["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(!s.db().exists(), "bench uses its own temporary store");
    assert_eq!(r["processes"], 1);
    assert_eq!(r["warm_s"], serde_json::Value::Null, "fresh wallets: {r}");

    // Warm wallets: each was credited once by other replicas first, and
    // ends with that credit too (the balances are checked exactly).
    let out = s.run(
        &[
            "bench",
            "--actions",
            "40",
            "--concurrency",
            "4",
            "--warm",
            "0",
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r = &json_lines(&out)[0];
    assert_eq!(r["warm_s"], 0, "{r}");
    assert_eq!(r["balances_exact"], true, "{r}");

    // Several processes: latency and operations across all of them.
    let out = s.run(
        &[
            "bench",
            "--actions",
            "60",
            "--concurrency",
            "4",
            "--processes",
            "2",
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r = &json_lines(&out)[0];
    assert_eq!(r["processes"], 2);
    for k in ["p50", "p99", "max"] {
        assert!(r["latency_ms"][k].as_f64().is_some_and(|ms| ms > 0.0), "{r}");
    }
    assert_eq!(r["store_ops_per_action"]["wallet_writes"], 3.0, "{r}");
    assert!(
        r["store_ops_per_action"]["round_trips"]
            .as_f64()
            .is_some_and(|t| t >= 5.0),
        "{r}"
    );
    assert!(r["worker_peak_rss_bytes"].as_u64().is_some_and(|b| b > 0), "{r}");

    // A store latency cannot reach other processes: said, not ignored.
    let out = s.run(&["bench", "--processes", "2", "--store-latency-ms", "5"], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--replicas"), "{}", stderr(&out));
}

/// A hot wallet credited by 1,024 actions in flight at once, on the
/// embedded store with Couchbase's limits: every action completes, every
/// wallet holds exactly its credits (bench checks each one), no write
/// carries more than the limit allows, and markers stay bounded.
#[test]
fn a_hot_wallet_at_concurrency_1024_ends_exact_within_the_limits() {
    let s = Scratch::empty();
    let out = s.run(
        &[
            "bench",
            "--scenario",
            "hot",
            "--actions",
            "2048",
            "--concurrency",
            "1024",
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r = &json_lines(&out)[0];
    assert_eq!(
        (r["actions"].as_u64(), r["balances_exact"].as_bool()),
        (Some(2048), Some(true)),
        "{r}"
    );
    // The 2,048 hot credits needed writes of at most 256 credits each (the
    // most one whole-object write carries).
    let wallet_writes = r["store_ops_per_action"]["wallet_writes"]
        .as_f64()
        .expect("wallet writes");
    assert!(wallet_writes >= 2.0 + 1.0 / 256.0, "{r}");
    // The soft maximum (256) plus the actions in flight at the end.
    assert!(r["wallet_markers_max"].as_u64().is_some_and(|m| m <= 256 + 1024), "{r}");
}

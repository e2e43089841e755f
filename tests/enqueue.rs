//! `ledgerd enqueue` through the real binary: bad lines (not UTF-8
//! included) are reported and skipped while the rest is written; bodies
//! that are not UTF-8 arrive byte for byte; a store that refuses writes
//! stops enqueue with one summary, and the same input run again completes.

mod common;

use std::process::Command;

use common::{json_lines, stderr, stdout, Scratch};

fn line(id: &str) -> String {
    format!("{{\"id\":\"{id}\",\"doc\":{{\"beneficiaries\":{{\"w\":\"0.00000001\"}}}}}}\n")
}

#[test]
fn a_line_that_is_not_utf8_is_skipped_and_the_others_are_written() {
    let s = Scratch::new();
    let mut input = line("u1").into_bytes();
    input.extend_from_slice(b"{\"id\":\"u2\",\"raw\":\"caf\xe9\"}\n");
    input.extend_from_slice(line("u3").as_bytes());
    input.extend_from_slice(b"{\"id\":\"u4\",\"raw_base64\":\"Y2Fm6Q==\"}\n");
    let out = s.run_bytes(s.cmd(&["enqueue"]), &input);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        r#"{"enqueued":3,"skipped":0,"invalid":1,"not_written":0,"blank":0,"lines":4}"#
    );
    let err = stderr(&out);
    assert!(err.contains("line 2: not UTF-8") && err.contains("raw_base64"), "{err}");
    // The body given in base64 arrives byte for byte: it is rejected (not
    // JSON), and kept with its exact bytes.
    let run = s.run(&["run", "--exit-when-idle", "--metrics-addr", "off"], "");
    assert!(run.status.success(), "{}", stderr(&run));
    let failed = json_lines(&s.run(&["failed"], ""));
    let u4 = failed.iter().find(|f| f["id"] == "u4").expect("u4 preserved");
    assert_eq!(u4["original_base64"], "Y2Fm6Q==", "{u4}");
}

#[test]
fn a_store_that_refuses_writes_stops_enqueue_with_one_summary() {
    let s = Scratch::new();
    let input: String = (0..20_000).map(|i| line(&format!("f{i:05}"))).collect();
    // A file-size limit of 64 KiB stands in for a full disk: the store's
    // write-ahead log soon cannot grow, and every write fails.
    let mut limited = Command::new("bash");
    limited
        .args(["-c", "trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_ledgerd"))
        .arg("enqueue")
        .current_dir(s.path());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("LEDGERD_")) {
        limited.env_remove(key);
    }
    let out = s.run_bytes(limited, input.as_bytes());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let summary = &json_lines(&out)[0];
    let (enqueued, not_written) = (
        summary["enqueued"].as_u64().expect("enqueued"),
        summary["not_written"].as_u64().expect("not_written"),
    );
    assert!(not_written > 0 && enqueued < 20_000, "{summary}");
    let counted: u64 = ["enqueued", "skipped", "invalid", "not_written", "blank"]
        .iter()
        .map(|k| summary[k].as_u64().expect("a count"))
        .sum();
    assert_eq!(counted, 20_000, "every line read is counted once: {summary}");
    assert_eq!(summary["lines"], 20_000);
    assert_eq!(err.matches("stopped at line").count(), 1, "one message: {err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("line ")).count(), 0, "{err}");

    // With room again, the same input completes: what was written is skipped.
    let out = s.run(&["enqueue"], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = &json_lines(&out)[0];
    assert_eq!(
        again["enqueued"].as_u64().expect("enqueued") + again["skipped"].as_u64().expect("skipped"),
        20_000
    );
    let status = &json_lines(&s.run(&["status", "--json"], ""))[0];
    assert_eq!(status["queued"], 20_000);
}

#[test]
fn a_byte_order_mark_before_the_first_line_is_not_data() {
    let s = Scratch::new();
    let input = format!("\u{feff}{}", line("bom1"));
    let out = s.run(&["enqueue"], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["enqueued"], 1);
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&s.run(&["queue", "show", "bom1"], ""))).expect("one JSON object");
    assert!(shown["body"].as_str().is_some_and(|b| b.starts_with('{')), "{shown}");
}

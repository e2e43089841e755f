//! `ledgerd enqueue`: JSON Lines on stdin into `action:<id>` documents,
//! streamed: each line is read as bytes, checked and written while the
//! next ones are read, so input of any length takes bounded memory (bar the
//! set of ids seen, to settle repeats).

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;

use base64::Engine as _;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};

use super::Exit;
use crate::domain::keys::{action_key, check_action_id};
use crate::store::{Bucket, Store, StoreError};

/// Inserts written at once.
const ENQUEUE_CONCURRENCY: usize = 32;
/// Longest input line accepted, in bytes.
const LINE_BYTES_MAX: usize = 2 * 1_048_576;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    id: String,
    #[serde(borrow, default)]
    doc: Option<&'a RawValue>,
    #[serde(default)]
    raw: Option<String>,
    #[serde(default)]
    raw_base64: Option<String>,
}

/// What one line asks for: the id and the exact body bytes.
fn parse_line(line: &[u8]) -> Result<(String, Vec<u8>), String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "not UTF-8 (at byte {}); a body that is not UTF-8 goes in \"raw_base64\"",
            e.valid_up_to()
        )
    })?;
    let parsed: Line<'_> = serde_json::from_str(text).map_err(|e| {
        // serde's position counts lines within the line given it: only
        // the column means anything to the reader ("line 3, column 2").
        let what = e.to_string();
        let what = what.rfind(" at line ").map_or(what.as_str(), |at| &what[..at]);
        format!("column {}: not a valid line: {what}", e.column())
    })?;
    check_action_id(&parsed.id).map_err(|e| format!("id {:?} {e}", parsed.id))?;
    let body = match (parsed.doc, parsed.raw, parsed.raw_base64) {
        (Some(doc), None, None) => doc.get().as_bytes().to_vec(),
        (None, Some(raw), None) => raw.into_bytes(),
        (None, None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("\"raw_base64\" is not base64: {e}"))?,
        _ => return Err("give exactly one of \"doc\", \"raw\" or \"raw_base64\"".into()),
    };
    Ok((parsed.id, body))
}

/// One line of input, or what made it unusable.
enum Read {
    /// A line's bytes (without its end).
    Line(Vec<u8>),
    /// A line longer than [`LINE_BYTES_MAX`], skipped.
    TooLong,
}

/// Reads the next line, keeping at most [`LINE_BYTES_MAX`] bytes of it.
async fn next_line(input: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<Option<Read>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let chunk = input.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if too_long {
                Some(Read::TooLong)
            } else if line.is_empty() {
                None
            } else {
                Some(Read::Line(line))
            });
        }
        let (taken, end) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if line.len() + taken > LINE_BYTES_MAX {
            too_long = true;
            line.clear();
        } else if !too_long {
            line.extend_from_slice(&chunk[..taken]);
        }
        input.consume(taken + usize::from(end));
        if end {
            if too_long {
                return Ok(Some(Read::TooLong));
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(Read::Line(line)));
        }
    }
}

/// What enqueueing did.
#[derive(Default)]
struct Tally {
    enqueued: u64,
    skipped: u64,
    invalid: u64,
    /// The first line whose write failed, and why.
    failed: Option<(u64, StoreError)>,
    /// Lines not written because a write failed: the failed line, and the
    /// lines read after it (and any write in flight that failed too).
    not_written: u64,
    /// Blank lines, passed over.
    blank: u64,
}

/// Reads lines from `input` and writes their actions as they come; prints
/// one summary line. Bad lines are reported with their number and skipped;
/// the first failed write stops the rest.
pub async fn run(store: Arc<dyn Store>, input: impl AsyncRead + Unpin) -> anyhow::Result<Exit> {
    let mut input = BufReader::new(input);
    let mut tally = Tally::default();
    // Writes run concurrently, so a repeated id is settled here: the first
    // line with an id wins, as it would if the lines were written in order.
    let mut seen = HashSet::new();
    let mut writes = FuturesUnordered::new();
    let mut number = 0u64;
    loop {
        while writes.len() >= ENQUEUE_CONCURRENCY {
            settle(writes.next().await, &mut tally);
        }
        let read = match next_line(&mut input).await {
            Ok(Some(read)) => read,
            Ok(None) => break,
            Err(e) => {
                eprintln!(
                    "line {}: reading stdin failed: {e}; nothing after it was read",
                    number + 1
                );
                tally.invalid += 1;
                break;
            }
        };
        number += 1;
        if tally.failed.is_some() {
            tally.not_written += 1;
            continue;
        }
        let line = match read {
            Read::TooLong => {
                eprintln!("line {number}: longer than {LINE_BYTES_MAX} bytes");
                tally.invalid += 1;
                continue;
            }
            // A byte order mark that an editor put before the first line
            // is not part of the data.
            Read::Line(line) if number == 1 => super::without_bom(&line).to_vec(),
            Read::Line(line) => line,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            tally.blank += 1;
            continue;
        }
        let (id, body) = match parse_line(&line) {
            Ok(job) => job,
            Err(e) => {
                eprintln!("line {number}{}{e}", if e.starts_with("column ") { ", " } else { ": " });
                tally.invalid += 1;
                continue;
            }
        };
        if !seen.insert(id.clone()) {
            tally.skipped += 1;
            continue;
        }
        let store = store.clone();
        writes.push(async move { (number, store.insert(Bucket::Queue, &action_key(&id), &body).await) });
    }
    while let Some(done) = writes.next().await {
        settle(Some(done), &mut tally);
    }
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::json!({
            "enqueued": tally.enqueued,
            "skipped": tally.skipped,
            "invalid": tally.invalid,
            "not_written": tally.not_written,
            "blank": tally.blank,
            "lines": number,
        })
    )?;
    if let Some((line, e)) = &tally.failed {
        eprintln!(
            "ledgerd: stopped at line {line}: the store refused a write: {e}. {} lines were written, {} were not (line {line}, and every line read after it or written at the same time). Once the store works, run the same input again: ids already queued are skipped.",
            tally.enqueued, tally.not_written
        );
    }
    Ok(if tally.invalid == 0 && tally.failed.is_none() {
        Exit::Success
    } else {
        Exit::Rejected
    })
}

/// Counts one finished write; the first failure stops further writes.
fn settle(done: Option<(u64, Result<u64, StoreError>)>, tally: &mut Tally) {
    match done {
        Some((_, Ok(_))) => tally.enqueued += 1,
        Some((_, Err(StoreError::Exists))) => tally.skipped += 1,
        Some((line, Err(e))) => {
            // Every failed write is a line not written, the first included.
            tally.not_written += 1;
            if tally.failed.as_ref().is_none_or(|(first, _)| line < *first) {
                tally.failed = Some((line, e));
            }
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_the_exact_bytes() {
        let (id, body) = parse_line(br#"{"id":"a1","doc":{"beneficiaries":{"x":100.000000001}}}"#).expect("valid");
        assert_eq!(id, "a1");
        assert_eq!(body, br#"{"beneficiaries":{"x":100.000000001}}"#);
        let (_, body) = parse_line(br#"{"id":"a2","raw":"not json \u00ff"}"#).expect("valid");
        assert_eq!(body, "not json \u{ff}".as_bytes());
        let (_, body) = parse_line(br#"{"id":"a3","raw_base64":"/wA="}"#).expect("valid");
        assert_eq!(body, b"\xff\x00");
        assert!(parse_line(br#"{"id":"a3"}"#).is_err());
        // The position is the column: "line 1" would be the line's own.
        assert_eq!(
            parse_line(b"{bad").err().as_deref(),
            Some("column 2: not a valid line: key must be a string")
        );
        assert!(parse_line(br#"{"id":"a3","doc":1,"raw":"x"}"#).is_err());
        assert!(parse_line(br#"{"id":"a3","raw_base64":"%%%"}"#).is_err());
        assert!(parse_line(br#"{"id":"","doc":1}"#).is_err());
        assert!(parse_line(br#"{"id":"a\u0001","doc":1}"#).is_err());
        assert!(parse_line(br#"{"id":"a","doc":1,"extra":2}"#).is_err());
        assert!(parse_line(b"nope").is_err());
        assert!(parse_line(b"{\"id\":\"a\",\"raw\":\"\xff\"}")
            .is_err_and(|e| e.contains("not UTF-8") && e.contains("raw_base64")));
    }

    #[tokio::test]
    async fn long_lines_are_skipped_whole() {
        let mut input = Vec::new();
        input.extend_from_slice(b"first\r\n");
        input.extend(std::iter::repeat_n(b'x', LINE_BYTES_MAX + 10));
        input.extend_from_slice(b"\nlast");
        let mut reader = BufReader::with_capacity(1024, input.as_slice());
        assert!(matches!(next_line(&mut reader).await, Ok(Some(Read::Line(l))) if l == b"first"));
        assert!(matches!(next_line(&mut reader).await, Ok(Some(Read::TooLong))));
        assert!(matches!(next_line(&mut reader).await, Ok(Some(Read::Line(l))) if l == b"last"));
        assert!(matches!(next_line(&mut reader).await, Ok(None)));
    }
}

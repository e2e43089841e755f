//! `ledgerd enqueue`: JSON Lines on stdin into `action:<id>` documents.

use std::sync::Arc;

use anyhow::Context;
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

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
}

/// What one line asks for: the id and the exact body bytes.
fn parse_line(line: &str) -> Result<(String, Vec<u8>), String> {
    let parsed: Line<'_> = serde_json::from_str(line).map_err(|e| format!("not a valid line: {e}"))?;
    check_action_id(&parsed.id).map_err(|e| format!("id {:?} {e}", parsed.id))?;
    let body = match (parsed.doc, parsed.raw) {
        (Some(doc), None) => doc.get().as_bytes().to_vec(),
        (None, Some(raw)) => raw.into_bytes(),
        _ => return Err("give exactly one of \"doc\" or \"raw\"".into()),
    };
    Ok((parsed.id, body))
}

/// Reads lines from `input`, writes the actions, returns the summary line.
pub async fn run(store: Arc<dyn Store>, input: impl AsyncRead + Unpin) -> anyhow::Result<Exit> {
    let mut lines = BufReader::new(input).lines();
    let mut jobs = Vec::new();
    // Writes run concurrently, so a repeated id is settled here: the first
    // line with an id wins, as it would if the lines were written in order.
    let mut seen = std::collections::HashSet::new();
    let mut repeats = 0u64;
    let mut bad = 0u64;
    let mut number = 0u64;
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > LINE_BYTES_MAX {
            eprintln!("line {number}: longer than {LINE_BYTES_MAX} bytes");
            bad += 1;
            continue;
        }
        match parse_line(&line) {
            Ok(job) if !seen.insert(job.0.clone()) => repeats += 1,
            Ok(job) => jobs.push((number, job)),
            Err(e) => {
                eprintln!("line {number}: {e}");
                bad += 1;
            }
        }
    }
    let results: Vec<_> = stream::iter(jobs)
        .map(|(number, (id, body))| {
            let store = store.clone();
            async move { (number, store.insert(Bucket::Queue, &action_key(&id), &body).await) }
        })
        .buffer_unordered(ENQUEUE_CONCURRENCY)
        .collect()
        .await;
    let (mut enqueued, mut skipped) = (0u64, repeats);
    for (number, result) in results {
        match result {
            Ok(_) => enqueued += 1,
            Err(StoreError::Exists) => skipped += 1,
            Err(e) => {
                eprintln!("line {number}: not written: {e}");
                bad += 1;
            }
        }
    }
    println!("{}", serde_json::json!({"enqueued": enqueued, "skipped": skipped}));
    Ok(if bad == 0 { Exit::Success } else { Exit::Rejected })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_the_exact_bytes() {
        let (id, body) = parse_line(r#"{"id":"a1","doc":{"beneficiaries":{"x":100.000000001}}}"#).expect("valid");
        assert_eq!(id, "a1");
        assert_eq!(body, br#"{"beneficiaries":{"x":100.000000001}}"#);
        let (_, body) = parse_line(r#"{"id":"a2","raw":"not json \u00ff"}"#).expect("valid");
        assert_eq!(body, "not json \u{ff}".as_bytes());
        assert!(parse_line(r#"{"id":"a3"}"#).is_err());
        assert!(parse_line(r#"{"id":"a3","doc":1,"raw":"x"}"#).is_err());
        assert!(parse_line(r#"{"id":"","doc":1}"#).is_err());
        assert!(parse_line(r#"{"id":"a\u0001","doc":1}"#).is_err());
        assert!(parse_line(r#"{"id":"a","doc":1,"extra":2}"#).is_err());
        assert!(parse_line("nope").is_err());
    }
}

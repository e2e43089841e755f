//! `ledgerd queue`: every queued action with its state, and `queue show
//! ID`. Read-only: it takes no lock and changes nothing.

use std::io::Write;

use anyhow::Context;
use base64::Engine as _;
use serde_json::{json, Value};

use super::inspect::Keys;
use super::Exit;
use crate::domain::keys::{action_key, failed_key, sha256_hex, tx_key, ACTION_PREFIX};
use crate::domain::plan_action;
use crate::domain::time::{rfc3339_from_unix_ms, unix_ms_now};
use crate::protocol::dead_letters::DeadLetters;
use crate::protocol::records::TxRecord;
use crate::protocol::BLOCKED_XATTR;
use crate::store::{Bucket, Store, StoreError, LOCKED_CAS};

/// The state of a queued action, for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum State {
    /// A worker may claim it now.
    Ready,
    /// A worker holds it (or held it and died: until its lease lapses).
    Locked,
    /// Its last attempt was blocked (see the reason): locked until its
    /// retry time, so that no replica tries it sooner, then tried again.
    Blocked,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Locked => "locked",
            State::Blocked => "blocked",
        }
    }
}

/// One queued action as read.
struct Queued {
    id: String,
    state: State,
    body: Vec<u8>,
    blocked: Option<Value>,
    locked_until_ms: Option<u64>,
    created_ms: Option<u64>,
}

impl Queued {
    fn line(&self, now_ms: u64) -> Value {
        json!({
            "id": self.id,
            "state": self.state.name(),
            "shard": crate::domain::shard::shard_of(&action_key(&self.id)),
            "locked_until": self.locked_until_ms.map(rfc3339_from_unix_ms),
            "queued_at": self.created_ms.map(rfc3339_from_unix_ms),
            "age_s": self.created_ms.map(|c| now_ms.saturating_sub(c) / 1000),
            "blocked": self.blocked,
            "bytes": self.body.len(),
        })
    }

    /// One line of the text listing.
    fn text(&self, now_ms: u64) -> String {
        let age = self
            .created_ms
            .map_or_else(|| "-".to_string(), |c| format!("{}s", now_ms.saturating_sub(c) / 1000));
        let detail = match self.state {
            State::Locked => match self.locked_until_ms {
                Some(until) => format!("until {}", rfc3339_from_unix_ms(until)),
                None => "until its lease lapses (the store does not say when; at most 30 s)".into(),
            },
            State::Ready | State::Blocked => String::new(),
        };
        let blocked = self.blocked.as_ref().map(|b| {
            let field = |name: &str| b.get(name).and_then(Value::as_str).unwrap_or("?").to_string();
            format!("blocked: {} (retry after {})", field("reason"), field("retry_after"))
        });
        let detail = [Some(detail).filter(|d| !d.is_empty()), blocked]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        format!("{:<24} {:<8} {:>8}  {detail}", self.id, self.state.name(), age)
    }
}

/// Reads one queued action; `None` if it is gone.
async fn read(store: &dyn Store, id: &str) -> anyhow::Result<Option<Queued>> {
    let key = action_key(id);
    let doc = match store.get_with_xattrs(Bucket::Queue, &key, &[BLOCKED_XATTR]).await {
        Ok(doc) => doc,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {key}")),
    };
    let times = match store.doc_times(Bucket::Queue, &key).await {
        Ok(times) => times,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {key}")),
    };
    let blocked = doc.xattrs.into_iter().next().flatten();
    let locked = doc.cas == LOCKED_CAS;
    let state = if blocked.is_some() {
        State::Blocked
    } else if locked {
        State::Locked
    } else {
        State::Ready
    };
    Ok(Some(Queued {
        id: id.to_string(),
        state,
        body: doc.body,
        blocked,
        locked_until_ms: times.locked_until_ms.filter(|_| locked),
        created_ms: times.created_ms,
    }))
}

/// `ledgerd queue [--state S] [--json]`: every queued action (in key
/// order) with its state; text ends with the counts.
pub async fn list(store: &dyn Store, state: Option<State>, as_json: bool, mut out: impl Write) -> anyhow::Result<Exit> {
    let now = unix_ms_now();
    let mut counts = [0u64; 3];
    let mut keys = Keys::new(store, Bucket::Queue, ACTION_PREFIX);
    if !as_json {
        writeln!(out, "{:<24} {:<8} {:>8}  DETAIL", "ID", "STATE", "AGE")?;
    }
    while let Some(page) = keys.next_page().await? {
        for key in page {
            let Some(queued) = read(store, &key[ACTION_PREFIX.len()..]).await? else {
                continue;
            };
            counts[queued.state as usize] += 1;
            if state.is_some_and(|s| s != queued.state) {
                continue;
            }
            if as_json {
                writeln!(out, "{}", queued.line(now))?;
            } else {
                writeln!(out, "{}", queued.text(now))?;
            }
        }
    }
    if !as_json {
        let [ready, locked, blocked] = counts;
        writeln!(
            out,
            "{} queued: {ready} ready, {locked} locked, {blocked} blocked",
            ready + locked + blocked
        )?;
    }
    Ok(Exit::Success)
}

/// `ledgerd queue show ID`: one queued action, its body, what a worker
/// would make of it, and what the ledger already holds for its id.
pub async fn show(store: &dyn Store, id: &str, mut out: impl Write) -> anyhow::Result<Exit> {
    let Some(queued) = read(store, id).await? else {
        eprintln!("{id}: no queued action with this id (see `ledgerd failed show {id}` and `ledgerd tx {id}`)");
        return Ok(Exit::Rejected);
    };
    let mut doc = queued.line(unix_ms_now());
    match std::str::from_utf8(&queued.body) {
        Ok(text) => doc["body"] = json!(text),
        Err(_) => doc["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&queued.body)),
    }
    doc["digest"] = json!(sha256_hex(&queued.body));
    doc["plan"] = match plan_action(&queued.body) {
        Ok(plan) => json!({"valid": true, "credits": plan.credits.len(), "total_units": plan.total.get()}),
        Err(e) => json!({"valid": false, "reason": e.to_string()}),
    };
    doc["transaction"] = match store.get(Bucket::Ledger, &tx_key(id)).await {
        Ok(found) => match TxRecord::parse(id, &found.body) {
            Ok(tx) => {
                json!({"state": tx.state, "digest": tx.digest, "same_body": tx.digest == sha256_hex(&queued.body)})
            }
            Err(e) => json!({"error": e}),
        },
        Err(StoreError::NotFound) => Value::Null,
        Err(e) => return Err(e).context(format!("reading {}", tx_key(id))),
    };
    doc["rejected_bodies"] = match store.get(Bucket::Queue, &failed_key(id)).await {
        Ok(found) => json!(DeadLetters::parse(&found.body).entries.len()),
        Err(StoreError::NotFound) => json!(0),
        Err(e) => return Err(e).context(format!("reading {}", failed_key(id))),
    };
    writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    Ok(Exit::Success)
}

//! `failed:<id>`: the dead letters of one action id. Every body of the id
//! that was rejected is kept, each with when and why it was rejected, until
//! an operator requeues or purges it; no write of a worker ever drops one.
//!
//! ```json
//! {"id": "x1", "entries": [
//!   {"digest": "<SHA-256 of the body>", "failed_at": "2026-11-24T08:00:00.000Z",
//!    "kind": "share has more than N decimal places", "reason": "…",
//!    "original": "<the body as text>"}
//! ]}
//! ```
//!
//! Entries are oldest first; a body is kept as text (`original`) when it is
//! UTF-8 and that is not larger than base64, else as `original_base64`. The
//! same body rejected again is kept once. Earlier releases wrote one body
//! at the top level and older ones under `previous`: such documents are
//! read as entries, oldest first, and rewritten in this form on the next
//! change. Whatever cannot be read is kept whole, as an entry of its own.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::records::now_ms;
use crate::domain::keys::sha256_hex;
use crate::domain::time::rfc3339_from_unix_ms;

/// Largest `failed:<id>` document: Couchbase's item limit (it carries no
/// xattrs). A rejection that would need more leaves the action queued.
pub const FAILED_DOC_BYTES_MAX: usize = crate::store::limits::ITEM_BYTES_MAX;
/// Longest reason stored or logged, in bytes; longer ones are cut.
pub const REASON_BYTES_MAX: usize = 2_048;
/// Shortest digest prefix accepted to pick an entry.
pub const DIGEST_PREFIX_MIN: usize = 8;
/// The kind of entries read from a document of an earlier release.
pub const KIND_UNKNOWN: &str = "unknown (rejected by an earlier release)";
/// The kind of bytes that could not be read as an entry, kept whole.
pub const KIND_UNREADABLE: &str = "unreadable failed document";

/// `reason` cut to [`REASON_BYTES_MAX`] bytes on a character boundary.
pub fn bounded_reason(reason: &str) -> String {
    if reason.len() <= REASON_BYTES_MAX {
        return reason.to_string();
    }
    let mut end = REASON_BYTES_MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (reason cut at {REASON_BYTES_MAX} bytes)", &reason[..end])
}

/// One rejected body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The bytes as the producer wrote them.
    pub body: Vec<u8>,
    /// SHA-256 of `body`, hex: names the entry.
    pub digest: String,
    /// When it was rejected (absent only for unreadable bytes kept whole).
    pub failed_at: Option<String>,
    /// What kind of rejection (see `ActionError::kind`).
    pub kind: String,
    /// Why, in full (bounded).
    pub reason: String,
    /// Set by `ledgerd failed requeue` before it queues the body, cleared
    /// by a worker that rejects the body again; the requeue removes the
    /// entry only while it still carries its mark. An entry left marked
    /// was requeued by a run that was interrupted (run it again).
    pub requeued_at: Option<String>,
}

impl Entry {
    /// A body rejected now.
    pub fn new(body: &[u8], kind: &str, reason: &str) -> Self {
        Self {
            body: body.to_vec(),
            digest: sha256_hex(body),
            failed_at: Some(rfc3339_from_unix_ms(now_ms())),
            kind: kind.to_string(),
            reason: bounded_reason(reason),
            requeued_at: None,
        }
    }

    /// Bytes that could not be read as an entry, kept whole.
    fn unreadable(bytes: &[u8], why: &str) -> Self {
        Self {
            body: bytes.to_vec(),
            digest: sha256_hex(bytes),
            failed_at: None,
            kind: KIND_UNREADABLE.into(),
            reason: format!("{why}; its bytes are kept whole as this entry's body"),
            requeued_at: None,
        }
    }

    /// When it was rejected, in Unix milliseconds, if known.
    pub fn failed_at_ms(&self) -> Option<i64> {
        let at: jiff::Timestamp = self.failed_at.as_deref()?.parse().ok()?;
        Some(at.as_millisecond())
    }

    /// The body in the stored form: `original` or `original_base64`.
    fn body_fields(&self, into: &mut Map<String, Value>) {
        let b64 = || base64::engine::general_purpose::STANDARD.encode(&self.body);
        match std::str::from_utf8(&self.body) {
            // A JSON string escapes control characters six-fold: base64 may be smaller.
            Ok(text) => {
                let as_text = Value::from(text);
                if as_text.to_string().len() <= self.body.len().div_ceil(3) * 4 + 2 {
                    into.insert("original".into(), as_text);
                } else {
                    into.insert("original_base64".into(), json!(b64()));
                }
            }
            Err(_) => {
                into.insert("original_base64".into(), json!(b64()));
            }
        }
    }

    /// The entry as stored (and as `ledgerd failed show` prints it).
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("digest".into(), json!(self.digest));
        if let Some(at) = &self.failed_at {
            map.insert("failed_at".into(), json!(at));
        }
        map.insert("kind".into(), json!(self.kind));
        map.insert("reason".into(), json!(self.reason));
        if let Some(at) = &self.requeued_at {
            map.insert("requeued_at".into(), json!(at));
        }
        self.body_fields(&mut map);
        Value::Object(map)
    }

    /// The entry as `ledgerd failed` lists it.
    pub fn listing(&self, id: &str) -> Value {
        let mut line = json!({"id": id});
        if let (Value::Object(line), Value::Object(entry)) = (&mut line, self.to_json()) {
            line.extend(entry);
        }
        line
    }

    /// Reads one stored entry (either release's form); what cannot be read
    /// is kept whole.
    fn from_json(value: &Value, default_kind: &str) -> Self {
        let body = if let Some(text) = value.get("original").and_then(Value::as_str) {
            Some(text.as_bytes().to_vec())
        } else {
            value
                .get("original_base64")
                .and_then(Value::as_str)
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        };
        let Some(body) = body else {
            let text = serde_json::to_vec(value).unwrap_or_default();
            return Self::unreadable(&text, "an entry without a readable body");
        };
        let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_string);
        Self {
            digest: sha256_hex(&body),
            body,
            failed_at: text("failed_at"),
            kind: text("kind").unwrap_or_else(|| default_kind.to_string()),
            reason: text("reason").unwrap_or_default(),
            requeued_at: text("requeued_at"),
        }
    }
}

/// Every rejected body of one id, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetters {
    /// The entries.
    pub entries: Vec<Entry>,
}

impl DeadLetters {
    /// Reads a stored `failed:<id>`, of either release; never fails: bytes
    /// that cannot be read are kept whole as an entry.
    pub fn parse(bytes: &[u8]) -> Self {
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(bytes) else {
            return Self {
                entries: vec![Entry::unreadable(bytes, "a failed document that is not a JSON object")],
            };
        };
        let mut entries = Vec::new();
        if let Some(list) = doc.get("entries") {
            match list.as_array() {
                Some(list) => entries.extend(list.iter().map(|e| Entry::from_json(e, KIND_UNKNOWN))),
                None => entries.push(Entry::unreadable(
                    bytes,
                    "a failed document whose entries are not a list",
                )),
            }
            return Self { entries }.deduplicated();
        }
        // An earlier release: older bodies under `previous`, the latest on top.
        let doc = Value::Object(doc);
        collect_legacy(&doc, &mut entries);
        Self { entries }.deduplicated()
    }

    /// The stored form.
    pub fn encode(&self, id: &str) -> Vec<u8> {
        let entries: Vec<Value> = self.entries.iter().map(Entry::to_json).collect();
        serde_json::to_vec(&json!({"id": id, "entries": entries})).unwrap_or_default()
    }

    /// Whether a body with this digest is kept.
    pub fn holds(&self, digest: &str) -> bool {
        self.entries.iter().any(|e| e.digest == digest)
    }

    /// Adds a rejected body, unless the same body is kept already.
    pub fn add(&mut self, entry: Entry) {
        if !self.holds(&entry.digest) {
            self.entries.push(entry);
        }
    }

    /// Records a worker's rejection of `entry`'s body; false if there is
    /// nothing to write (the body is kept already, not being requeued: an
    /// earlier attempt that died before removing the action kept it, or
    /// the same bytes were rejected before). A body kept but marked as
    /// being requeued was requeued and rejected again: it becomes a
    /// rejection again, so the requeue does not remove it.
    pub fn reject(&mut self, entry: Entry) -> bool {
        match self.entries.iter_mut().find(|e| e.digest == entry.digest) {
            Some(kept) if kept.requeued_at.is_none() => false,
            Some(kept) => {
                *kept = entry;
                true
            }
            None => {
                self.entries.push(entry);
                true
            }
        }
    }

    /// Removes the entries with these digests.
    pub fn remove(&mut self, digests: &[String]) {
        self.entries.retain(|e| !digests.contains(&e.digest));
    }

    fn deduplicated(self) -> Self {
        let mut out = Self::default();
        for entry in self.entries {
            out.add(entry);
        }
        out
    }
}

/// Entries of an earlier release's document, oldest first: its `previous`
/// (a list, or one nested document), then its own body.
fn collect_legacy(doc: &Value, into: &mut Vec<Entry>) {
    match doc.get("previous") {
        Some(Value::Array(list)) => list.iter().for_each(|p| collect_legacy(p, into)),
        Some(prev @ Value::Object(_)) => collect_legacy(prev, into),
        _ => {}
    }
    if let Some(text) = doc.get("unreadable_failed_doc").and_then(Value::as_str) {
        into.push(Entry::unreadable(
            text.as_bytes(),
            "a failed document an earlier release could not read",
        ));
    }
    if doc.get("original").is_some() || doc.get("original_base64").is_some() {
        into.push(Entry::from_json(doc, KIND_UNKNOWN));
    } else if doc.get("unreadable_failed_doc").is_none() {
        let text = serde_json::to_vec(doc).unwrap_or_default();
        into.push(Entry::unreadable(&text, "a failed document in no known form"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &[u8], reason: &str) -> Entry {
        Entry::new(body, "test", reason)
    }

    #[test]
    fn every_body_round_trips_as_text_or_base64() {
        let controls: Vec<u8> = (0u8..32).cycle().take(300).collect();
        for body in [&b"not json"[..], b"\xff\x00", &controls, b""] {
            let mut letters = DeadLetters::default();
            letters.add(entry(body, "bad"));
            let back = DeadLetters::parse(&letters.encode("a"));
            assert_eq!(back, letters);
            assert_eq!(back.entries[0].body, body);
        }
    }

    #[test]
    fn the_same_body_is_kept_once_and_others_all() {
        let mut letters = DeadLetters::default();
        letters.add(entry(b"1", "first"));
        letters.add(entry(b"2", "second"));
        letters.add(entry(b"1", "again"));
        assert_eq!(letters.entries.len(), 2);
        assert_eq!(letters.entries[0].reason, "first");
        letters.remove(&[sha256_hex(b"1")]);
        assert_eq!(letters.entries[0].body, b"2");
    }

    #[test]
    fn a_body_rejected_again_while_requeued_loses_its_mark() {
        let mut letters = DeadLetters::default();
        assert!(letters.reject(entry(b"1", "first")));
        assert!(!letters.reject(entry(b"1", "again")), "kept already");
        letters.entries[0].requeued_at = Some("2026-11-24T00:00:00.000Z".into());
        let back = DeadLetters::parse(&letters.encode("a"));
        assert_eq!(back, letters, "the mark is stored");
        assert!(letters.reject(entry(b"1", "rejected again")));
        assert_eq!(letters.entries.len(), 1);
        assert_eq!(letters.entries[0].requeued_at, None);
        assert_eq!(letters.entries[0].reason, "rejected again");
    }

    #[test]
    fn an_earlier_release_document_is_read_oldest_first() {
        let legacy = json!({
            "id": "x1", "reason": "latest", "failed_at": "2026-11-23T00:00:02.000Z", "original": "{\"c\":3}",
            "previous": [
                {"id": "x1", "reason": "oldest", "failed_at": "2026-11-23T00:00:00.000Z", "original_base64": "/w=="},
                {"unreadable_failed_doc": "junk"},
                {"id": "x1", "reason": "middle", "failed_at": "2026-11-23T00:00:01.000Z", "original": "{\"b\":2}"},
            ],
        });
        let letters = DeadLetters::parse(&serde_json::to_vec(&legacy).expect("json"));
        let bodies: Vec<&[u8]> = letters.entries.iter().map(|e| &e.body[..]).collect();
        assert_eq!(bodies, [&b"\xff"[..], b"junk", br#"{"b":2}"#, br#"{"c":3}"#]);
        assert_eq!(letters.entries[3].reason, "latest");
        assert_eq!(letters.entries[3].kind, KIND_UNKNOWN);
        assert_eq!(letters.entries[1].kind, KIND_UNREADABLE);
        assert_eq!(letters.entries[0].failed_at_ms(), Some(1_795_392_000_000));
    }

    #[test]
    fn bytes_in_no_known_form_are_kept_whole() {
        for bytes in [&b"\xff not json"[..], b"[1,2]", br#"{"entries": 5}"#, br#"{"id":"x"}"#] {
            let letters = DeadLetters::parse(bytes);
            assert_eq!(letters.entries.len(), 1, "{bytes:?}");
            let kept = &letters.entries[0];
            assert_eq!(kept.kind, KIND_UNREADABLE);
            if bytes != br#"{"id":"x"}"# {
                assert_eq!(kept.body, bytes);
            }
        }
        let letters = DeadLetters::parse(br#"{"id":"x","entries":[{"reason":"no body"}]}"#);
        assert_eq!(letters.entries[0].body, br#"{"reason":"no body"}"#);
    }

    #[test]
    fn reasons_are_bounded_on_a_character_boundary() {
        let long = "é".repeat(REASON_BYTES_MAX);
        let cut = bounded_reason(&long);
        assert!(cut.len() < REASON_BYTES_MAX + 64);
        assert!(cut.ends_with("(reason cut at 2048 bytes)"));
    }
}

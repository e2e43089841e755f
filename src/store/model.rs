//! The document model shared by the memory and SQLite stores: one
//! document's state, and every contract operation as a function over it.
//! Both stores apply these same functions, so their semantics cannot drift
//! apart; they differ only in where the state lives and what time it is.
//!
//! Every function first checks the request against Couchbase Server's
//! limits (`limits.rs`), as the server validates a request before it looks
//! at the document, then applies it; a write is refused if the document it
//! would leave does not fit in one item.

use std::time::Duration;

use serde_json::{Map, Value};

use super::limits;
use super::{Cas, Doc, DocTimes, DocWithXattrs, StoreError, StoreResult, WriteMode, LOCKED_CAS};

/// Bits of a Couchbase CAS that count logical ticks. A CAS is the
/// vBucket's hybrid logical clock (kv_engine `engines/ep/src/hlc.h`,
/// `nextHLC` and `getMasked48`): the time in nanoseconds since the epoch
/// with these low bits cleared, or the last CAS plus one when that is not
/// greater. So a CAS is near 1.7 × 10^18 today, far above 2^53: a CAS that
/// passes through an `f64` comes back changed.
pub(crate) const CAS_LOGICAL_BITS: u32 = 16;

/// The CAS a write at `now_ns` (nanoseconds since the epoch) takes after
/// `last`, as the server's clock hands them out: strictly increasing, in
/// the server's range. The server's first CAS of a tick has a logical part
/// of 0; these stores start it at 1, a value the server hands out too
/// (under load), so that no CAS of theirs survives a trip through an `f64`
/// and a path that takes one through a float fails their tests.
pub(crate) fn next_cas(last: Cas, now_ns: u64) -> Cas {
    let physical = now_ns & !((1u64 << CAS_LOGICAL_BITS) - 1);
    let next = physical.saturating_add(1).max(last.saturating_add(1));
    // Never the value a read of a locked document returns.
    next.min(LOCKED_CAS - 1)
}

/// Nanoseconds since the epoch on the machine's clock, for [`next_cas`].
pub(crate) fn unix_ns_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One stored document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredDoc {
    pub body: Vec<u8>,
    /// A JSON object; paths are dotted (`ledger.applied.m…`).
    pub xattrs: Value,
    pub cas: Cas,
    /// Until when (store time, ms) the document is locked, if ever locked.
    pub lock_until_ms: Option<u64>,
    /// When (store time, ms) the document was created, where known (an
    /// embedded store made by an earlier release did not record it).
    pub created_ms: Option<u64>,
}

/// What is stored under a key: a document, or `None` when there is none.
pub(crate) type Stored = Option<StoredDoc>;

impl StoredDoc {
    fn new(body: &[u8], cas: Cas, now_ms: u64) -> Self {
        Self {
            body: body.to_vec(),
            xattrs: Value::Object(Map::new()),
            cas,
            lock_until_ms: None,
            created_ms: Some(now_ms),
        }
    }

    /// Whether the xattr `path` is set.
    pub(crate) fn has_xattr(&self, path: &str) -> bool {
        get_path(&self.xattrs, path).is_some()
    }

    pub(crate) fn locked(&self, now_ms: u64) -> bool {
        self.lock_until_ms.is_some_and(|until| now_ms < until)
    }

    /// May a write with `cas` (or none) change this document now?
    fn check_write(&self, cas: Option<Cas>, now_ms: u64) -> StoreResult<()> {
        if self.locked(now_ms) {
            return match cas {
                Some(c) if c == self.cas => Ok(()),
                _ => Err(StoreError::Locked),
            };
        }
        match cas {
            Some(c) if c != self.cas => Err(StoreError::CasMismatch),
            _ => Ok(()),
        }
    }

    fn commit(&mut self, new_cas: Cas) -> Cas {
        self.cas = new_cas;
        self.lock_until_ms = None;
        new_cas
    }
}

fn existing(slot: &Stored) -> StoreResult<&StoredDoc> {
    slot.as_ref().ok_or(StoreError::NotFound)
}

fn existing_mut(slot: &mut Stored) -> StoreResult<&mut StoredDoc> {
    slot.as_mut().ok_or(StoreError::NotFound)
}

pub(crate) fn get(slot: &Stored, key: &str, now_ms: u64) -> StoreResult<Doc> {
    limits::check_key(key)?;
    let e = existing(slot)?;
    let cas = if e.locked(now_ms) { LOCKED_CAS } else { e.cas };
    Ok(Doc {
        body: e.body.clone(),
        cas,
    })
}

pub(crate) fn get_with_xattrs(slot: &Stored, key: &str, paths: &[&str], now_ms: u64) -> StoreResult<DocWithXattrs> {
    limits::check_lookup(paths)?;
    let doc = get(slot, key, now_ms)?;
    let e = existing(slot)?;
    let xattrs = paths.iter().map(|p| get_path(&e.xattrs, p).cloned()).collect();
    Ok(DocWithXattrs {
        body: doc.body,
        xattrs,
        cas: doc.cas,
    })
}

pub(crate) fn get_and_lock(
    slot: &mut Stored,
    key: &str,
    lock: Duration,
    now_ms: u64,
    new_cas: Cas,
) -> StoreResult<Doc> {
    limits::check_key(key)?;
    // Couchbase counts locks in whole seconds.
    let lock_ms = limits::lock_secs(lock)?.saturating_mul(1000);
    let e = existing_mut(slot)?;
    if e.locked(now_ms) {
        return Err(StoreError::Locked);
    }
    e.cas = new_cas;
    e.lock_until_ms = Some(now_ms.saturating_add(lock_ms));
    Ok(Doc {
        body: e.body.clone(),
        cas: new_cas,
    })
}

pub(crate) fn unlock(slot: &mut Stored, key: &str, cas: Cas, now_ms: u64) -> StoreResult<()> {
    limits::check_key(key)?;
    let e = existing_mut(slot)?;
    // As the server does: another CAS on a locked document answers
    // "locked"; a document that is not locked answers "not locked".
    match (e.locked(now_ms), e.cas == cas) {
        (true, true) => {
            e.lock_until_ms = None;
            Ok(())
        }
        (true, false) => Err(StoreError::Locked),
        (false, _) => Err(StoreError::CasMismatch),
    }
}

pub(crate) fn insert(slot: &mut Stored, key: &str, body: &[u8], now_ms: u64, new_cas: Cas) -> StoreResult<Cas> {
    limits::check_key(key)?;
    limits::check_item(body, &Value::Null)?;
    if slot.is_some() {
        return Err(StoreError::Exists);
    }
    *slot = Some(StoredDoc::new(body, new_cas, now_ms));
    Ok(new_cas)
}

pub(crate) fn replace(
    slot: &mut Stored,
    key: &str,
    body: &[u8],
    cas: Cas,
    now_ms: u64,
    new_cas: Cas,
) -> StoreResult<Cas> {
    limits::check_key(key)?;
    limits::check_item(body, &Value::Null)?;
    let e = existing_mut(slot)?;
    e.check_write(Some(cas), now_ms)?;
    // A full-document write drops user xattrs, as Couchbase does.
    e.body = body.to_vec();
    e.xattrs = Value::Object(Map::new());
    Ok(e.commit(new_cas))
}

pub(crate) fn remove(slot: &mut Stored, key: &str, cas: Option<Cas>, now_ms: u64) -> StoreResult<()> {
    limits::check_key(key)?;
    existing(slot)?.check_write(cas, now_ms)?;
    *slot = None;
    Ok(())
}

/// One sub-document multi-mutation: xattr changes and the whole body.
pub(crate) struct Mutation<'a> {
    pub body: &'a [u8],
    pub xattrs: &'a [(&'a str, Option<Value>)],
    pub mode: WriteMode,
}

pub(crate) fn write_with_xattrs(
    slot: &mut Stored,
    key: &str,
    m: Mutation<'_>,
    now_ms: u64,
    new_cas: Cas,
) -> StoreResult<Cas> {
    limits::check_key(key)?;
    limits::check_mutation(m.xattrs.iter().map(|(p, _)| *p))?;
    let mut next = match m.mode {
        WriteMode::Insert => {
            if slot.is_some() {
                return Err(StoreError::Exists);
            }
            StoredDoc::new(m.body, new_cas, now_ms)
        }
        WriteMode::Replace(cas) => {
            let e = existing(slot)?;
            e.check_write(Some(cas), now_ms)?;
            let mut next = e.clone();
            next.body = m.body.to_vec();
            next
        }
    };
    for (path, value) in m.xattrs {
        match value {
            Some(value) => set_path(&mut next.xattrs, path, value.clone())?,
            None if remove_path(&mut next.xattrs, path) => {}
            // As Couchbase does: removing a missing path fails the mutation.
            None => return Err(StoreError::PathNotFound(path.to_string())),
        }
    }
    limits::check_item(&next.body, &next.xattrs)?;
    next.commit(new_cas);
    *slot = Some(next);
    Ok(new_cas)
}

pub(crate) fn remove_xattr(slot: &mut Stored, key: &str, path: &str, now_ms: u64, new_cas: Cas) -> StoreResult<bool> {
    limits::check_key(key)?;
    limits::check_mutation(std::iter::once(path))?;
    let e = existing_mut(slot)?;
    e.check_write(None, now_ms)?;
    if !remove_path(&mut e.xattrs, path) {
        return Ok(false);
    }
    e.commit(new_cas);
    Ok(true)
}

/// Sets one xattr path (under `cas` when given), leaving the body as it
/// is. With the CAS of a lock it succeeds on the locked document and
/// releases the lock, as every mutation with the lock's CAS does on
/// Couchbase.
pub(crate) fn set_xattr(
    slot: &mut Stored,
    key: &str,
    path: &str,
    value: &Value,
    cas: Option<Cas>,
    now_ms: u64,
    new_cas: Cas,
) -> StoreResult<Cas> {
    limits::check_key(key)?;
    limits::check_mutation(std::iter::once(path))?;
    let e = existing(slot)?;
    e.check_write(cas, now_ms)?;
    let mut next = e.clone();
    set_path(&mut next.xattrs, path, value.clone())?;
    limits::check_item(&next.body, &next.xattrs)?;
    next.commit(new_cas);
    *slot = Some(next);
    Ok(new_cas)
}

/// Until when the document is locked (if it is now), and when it was created.
pub(crate) fn times(slot: &Stored, key: &str, now_ms: u64) -> StoreResult<DocTimes> {
    limits::check_key(key)?;
    let e = existing(slot)?;
    Ok(DocTimes {
        locked_until_ms: e.lock_until_ms.filter(|_| e.locked(now_ms)),
        created_ms: e.created_ms,
    })
}

fn get_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |node, part| node.as_object()?.get(part))
}

fn set_path(root: &mut Value, path: &str, value: Value) -> StoreResult<()> {
    let mismatch = || StoreError::Permanent(format!("xattr path {path:?} crosses a non-object"));
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().filter(|p| !p.is_empty()).ok_or_else(mismatch)?;
    let mut node = root;
    for part in parts {
        let map = node.as_object_mut().ok_or_else(mismatch)?;
        node = map.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
    node.as_object_mut()
        .ok_or_else(mismatch)?
        .insert(last.to_string(), value);
    Ok(())
}

fn remove_path(root: &mut Value, path: &str) -> bool {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else {
        return false;
    };
    let mut node = root;
    for part in parts {
        match node.as_object_mut().and_then(|m| m.get_mut(part)) {
            Some(next) => node = next,
            None => return false,
        }
    }
    node.as_object_mut().and_then(|m| m.remove(last)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_nest_and_unnest() {
        let mut root = json!({});
        set_path(&mut root, "ledger.applied.m1", json!(1)).expect("set");
        set_path(&mut root, "ledger.applied.m2", json!(2)).expect("set");
        assert_eq!(get_path(&root, "ledger.applied"), Some(&json!({"m1": 1, "m2": 2})));
        assert!(remove_path(&mut root, "ledger.applied.m1"));
        assert!(!remove_path(&mut root, "ledger.applied.m1"));
        assert!(!remove_path(&mut root, "nope.x"));
        assert_eq!(get_path(&root, "ledger.applied.m2"), Some(&json!(2)));
        let mut scalar = json!({"a": 5});
        assert!(set_path(&mut scalar, "a.b", json!(1)).is_err());
    }

    #[test]
    fn a_cas_is_a_server_clock_value_no_float_keeps() {
        // 2024-10-15T13:46:40.000000129Z, as the server's clock reads it.
        let now_ns = 1_729_000_000_000_000_129;
        let first = next_cas(0, now_ns);
        assert_eq!(first, 1_728_999_999_999_967_233);
        assert!(first > 1 << 53);
        assert_ne!(first as f64 as u64, first);
        // Within a tick, and with the clock behind: one more each time.
        assert_eq!(next_cas(first, now_ns), first + 1);
        assert_eq!(next_cas(first + 1, now_ns - 1_000_000_000), first + 2);
        // A clock that moved on starts a new tick.
        assert_eq!(next_cas(first + 2, now_ns + 1_000_000), 1_729_000_000_000_950_273);
        // Never the CAS a read of a locked document returns.
        assert_eq!(next_cas(LOCKED_CAS - 1, now_ns), LOCKED_CAS - 1);
    }
}

//! Couchbase Server's data-service limits, each a named constant with its
//! source, and the checks with which the memory and SQLite stores refuse
//! what the server refuses (with the [`StoreError`] class the Couchbase
//! adapter maps the server's answer to). A proof that passes only because a
//! store is more forgiving than the server would prove nothing.
//!
//! Sources, cited by name below:
//! - [size limits]: Couchbase Server docs, "Size Limits"
//!   (learn/clusters-and-availability/size-limitations) and "Data"
//!   (learn/data/data: keys, values);
//! - [subdoc]: kv_engine `docs/SubDocument.md`, section "Limits", and
//!   `include/memcached/protocol_binary.h`;
//! - [xattrs]: kv_engine `docs/ExtendedAttributes.md`, "XATTR Features";
//! - [getl]: ep-engine's get-locked handler (`getl_max_timeout`,
//!   `getl_default_timeout`) and the SDK docs of get-and-lock;
//! - [validators]: kv_engine `daemon/subdocument_validators.cc`.

use std::time::Duration;

use serde_json::Value;

use super::{StoreError, StoreResult};
pub use crate::domain::keys::KEY_BYTES_MAX;

/// Most specs in one sub-document multi-mutation or multi-lookup, the body
/// spec included. [subdoc]: `PROTOCOL_BINARY_SUBDOC_MULTI_MAX_PATHS = 16`;
/// [validators] answer more with SUBDOC_INVALID_COMBO ("Request must contain
/// at most 16 paths"), which the SDK reports as an invalid argument.
pub const SUBDOC_SPECS_MAX: usize = 16;
/// Longest sub-document path, in bytes. [subdoc]: 1024
/// (`SUBDOC_MAX_PATH_LENGTH`); [validators] answer a longer one with EINVAL.
pub const SUBDOC_PATH_BYTES_MAX: usize = 1024;
/// Most components in a sub-document path. [subdoc]: 32 (subjson
/// `MAX_COMPONENTS`); a deeper path is refused as too deep.
pub const SUBDOC_PATH_COMPONENTS_MAX: usize = 32;
/// Longest extended-attribute key (the first component of an xattr path),
/// in bytes. [xattrs]: "a Modified UTF-8 string up to 16 bytes in length".
pub const XATTR_KEY_BYTES_MAX: usize = 16;
/// Largest item: the body and the user xattrs together, in bytes.
/// [size limits]: "Max value size 20 MB" ("The maximum size of a value is
/// 20 MiB"); [xattrs]: "User XATTRs share the same item limit
/// (`max_item_size`) as the document body". The server answers E2BIG, which
/// the SDK reports as "value too large".
pub const ITEM_BYTES_MAX: usize = 20 * 1024 * 1024;
/// Shortest lock, in seconds. [getl]: the server counts locks in whole
/// seconds (the SDK sends `lock_time.as_secs()`) and replaces 0 by the
/// default of 15 s.
pub const LOCK_SECS_MIN: u64 = 1;
/// Longest lock, in seconds. [getl]: "the maximum supported by the server is
/// 30 seconds"; a longer one is silently replaced by the default of 15 s.
/// Because the server would shorten such a lease without saying so, every
/// store refuses a lock time outside 1–30 s instead.
pub const LOCK_SECS_MAX: u64 = 30;
/// The longest lock, [`LOCK_SECS_MAX`], as a duration.
pub const LOCK_MAX: Duration = Duration::from_secs(LOCK_SECS_MAX);

fn refused(what: String) -> StoreError {
    StoreError::LimitExceeded(what)
}

/// A document key must be 1 to [`KEY_BYTES_MAX`] bytes ([size limits]: "Max
/// key length 250 bytes" in the default collection, which ledgerd uses).
pub fn check_key(key: &str) -> StoreResult<()> {
    if key.is_empty() {
        return Err(refused("a document key must not be empty".into()));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(refused(format!(
            "key of {} bytes: Couchbase allows at most {KEY_BYTES_MAX}",
            key.len()
        )));
    }
    Ok(())
}

/// The lock time in whole seconds (rounded up), if it is one the server
/// honours: 1 to 30 s.
pub fn lock_secs(lock: Duration) -> StoreResult<u64> {
    let secs = u64::try_from(lock.as_millis().div_ceil(1000)).unwrap_or(u64::MAX);
    if !(LOCK_SECS_MIN..=LOCK_SECS_MAX).contains(&secs) {
        return Err(refused(format!(
            "lock time of {} ms: Couchbase locks for {LOCK_SECS_MIN} to {LOCK_SECS_MAX} s (it replaces any other value by 15 s)",
            lock.as_millis()
        )));
    }
    Ok(secs)
}

/// A multi-lookup of `paths` plus the body fits in one request.
pub fn check_lookup(paths: &[&str]) -> StoreResult<()> {
    check_spec_count(paths.len() + 1, "lookup")?;
    paths.iter().try_for_each(|p| check_xattr_path(p))
}

/// A multi-mutation of `paths` plus the body fits in one request.
pub fn check_mutation<'a>(paths: impl ExactSizeIterator<Item = &'a str>) -> StoreResult<()> {
    check_spec_count(paths.len() + 1, "mutation")?;
    paths.into_iter().try_for_each(check_xattr_path)
}

fn check_spec_count(specs: usize, what: &str) -> StoreResult<()> {
    if specs > SUBDOC_SPECS_MAX {
        return Err(refused(format!(
            "sub-document {what} of {specs} specs: Couchbase allows at most {SUBDOC_SPECS_MAX} (subdoc invalid combo)"
        )));
    }
    Ok(())
}

/// An xattr path the server accepts from a user without special
/// privileges: a user xattr key of 1 to 16 bytes, then dotted components,
/// within the path length and depth limits.
pub fn check_xattr_path(path: &str) -> StoreResult<()> {
    if path.len() > SUBDOC_PATH_BYTES_MAX {
        return Err(refused(format!(
            "sub-document path of {} bytes: Couchbase allows at most {SUBDOC_PATH_BYTES_MAX}",
            path.len()
        )));
    }
    let parts: Vec<&str> = path.split('.').collect();
    if parts.len() > SUBDOC_PATH_COMPONENTS_MAX {
        return Err(refused(format!(
            "sub-document path of {} components: Couchbase allows at most {SUBDOC_PATH_COMPONENTS_MAX}",
            parts.len()
        )));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(refused(format!("sub-document path {path:?} has an empty component")));
    }
    let xkey = parts[0];
    if xkey.len() > XATTR_KEY_BYTES_MAX {
        return Err(refused(format!(
            "xattr key {xkey:?} of {} bytes: Couchbase allows at most {XATTR_KEY_BYTES_MAX}",
            xkey.len()
        )));
    }
    // [xattrs]: keys starting with punctuation or a control character are
    // reserved (`_` system, `$` virtual); these stores model user xattrs only.
    if xkey.starts_with(|c: char| c.is_ascii_punctuation() || c.is_control()) {
        return Err(refused(format!("xattr key {xkey:?} is not a user xattr key")));
    }
    Ok(())
}

/// The bytes a document's user xattrs take in its item, laid out as
/// kv_engine stores them: a 4-byte total length, then per key a 4-byte
/// length, the key, a NUL, the JSON value and a NUL. (The server's own
/// count may differ by the rendering of the JSON; the limit is far above
/// anything ledgerd writes, see `protocol::coalesce`.)
pub fn xattr_bytes(xattrs: &Value) -> usize {
    match xattrs.as_object() {
        Some(map) if !map.is_empty() => {
            4 + map
                .iter()
                .map(|(k, v)| 4 + k.len() + 1 + v.to_string().len() + 1)
                .sum::<usize>()
        }
        _ => 0,
    }
}

/// A document of `body` and `xattrs` fits in one item.
pub fn check_item(body: &[u8], xattrs: &Value) -> StoreResult<()> {
    let bytes = body.len() + xattr_bytes(xattrs);
    if bytes > ITEM_BYTES_MAX {
        return Err(refused(format!(
            "document of {bytes} bytes (body and xattrs): Couchbase allows at most {ITEM_BYTES_MAX} (value too large)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn is_refused<T: std::fmt::Debug>(r: StoreResult<T>) -> bool {
        matches!(r, Err(StoreError::LimitExceeded(_)))
    }

    #[test]
    fn keys() {
        assert!(check_key(&"k".repeat(250)).is_ok());
        assert!(is_refused(check_key(&"k".repeat(251))));
        assert!(is_refused(check_key("")));
    }

    #[test]
    fn lock_times_are_whole_seconds_from_1_to_30() {
        assert_eq!(lock_secs(Duration::from_millis(1)).ok(), Some(1));
        assert_eq!(lock_secs(Duration::from_millis(1_001)).ok(), Some(2));
        assert_eq!(lock_secs(Duration::from_secs(30)).ok(), Some(30));
        assert!(is_refused(lock_secs(Duration::from_millis(30_001))));
        assert!(is_refused(lock_secs(Duration::ZERO)));
    }

    #[test]
    fn paths() {
        assert!(check_xattr_path("ledger.applied.m1").is_ok());
        assert!(check_xattr_path(&format!("{}.x", "k".repeat(16))).is_ok());
        assert!(is_refused(check_xattr_path(&format!("{}.x", "k".repeat(17)))));
        assert!(is_refused(check_xattr_path(&format!("a.{}", "b".repeat(1023)))));
        assert!(is_refused(check_xattr_path(&vec!["a"; 33].join("."))));
        assert!(check_xattr_path(&vec!["a"; 32].join(".")).is_ok());
        assert!(is_refused(check_xattr_path("a..b")));
        assert!(is_refused(check_xattr_path("_sys.x")));
        assert!(is_refused(check_xattr_path("$document")));
    }

    #[test]
    fn spec_counts_include_the_body() {
        let fifteen: Vec<String> = (0..15).map(|i| format!("a.m{i}")).collect();
        let refs: Vec<&str> = fifteen.iter().map(String::as_str).collect();
        assert!(check_lookup(&refs).is_ok());
        assert!(check_mutation(refs.iter().copied()).is_ok());
        let mut sixteen = refs.clone();
        sixteen.push("a.m15");
        assert!(is_refused(check_lookup(&sixteen)));
        assert!(is_refused(check_mutation(sixteen.iter().copied())));
    }

    #[test]
    fn xattrs_count_against_the_item() {
        assert_eq!(xattr_bytes(&json!({})), 0);
        // 4 + (4 + "a" + NUL + "1" + NUL)
        assert_eq!(xattr_bytes(&json!({"a": 1})), 12);
        let body = vec![b'1'; ITEM_BYTES_MAX - 12];
        assert!(check_item(&body, &json!({"a": 1})).is_ok());
        assert!(is_refused(check_item(&body, &json!({"a": 12}))));
        assert!(is_refused(check_item(&vec![b'1'; ITEM_BYTES_MAX + 1], &json!({}))));
    }
}

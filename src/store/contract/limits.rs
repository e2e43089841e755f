//! One contract case per Couchbase Server limit (see `store::limits` for
//! each limit's source). The numbers here are Couchbase's documented ones,
//! written out rather than taken from the constants, so that a store (or a
//! constant) that drifts from the server fails here. Each case must fail on
//! a store whose model lacks its limit; on Couchbase they show that the
//! adapter maps the server's refusal to the same class.

use std::fmt::Debug;
use std::time::Duration;

use serde_json::json;

use super::harness::{fresh, Harness};
use crate::store::{Bucket, StoreError, StoreResult, WriteMode, LOCKED_CAS};

/// Couchbase's specs per sub-document call (the body spec counts).
const SPECS_MAX: usize = 16;
/// Couchbase's longest key, in bytes.
const KEY_BYTES_MAX: usize = 250;
/// Couchbase's largest item (body and user xattrs), in bytes.
const ITEM_BYTES_MAX: usize = 20 * 1024 * 1024;

fn refused<T: Debug>(result: StoreResult<T>, what: &str) {
    assert!(
        matches!(result, Err(StoreError::LimitExceeded(_))),
        "{what}: expected a refusal by the store's limits, got {result:?}"
    );
}

/// A fresh key of exactly `bytes` bytes.
fn key_of(bytes: usize) -> String {
    let base = fresh("len");
    format!("{base}{}", "k".repeat(bytes - base.len()))
}

/// At most 16 specs in one sub-document mutation or lookup, the body
/// included; a refused mutation changes nothing.
pub async fn sub_document_calls_take_at_most_16_specs(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("specs");
    let paths: Vec<String> = (0..SPECS_MAX).map(|i| format!("ledger.applied.m{i}")).collect();
    let sets = |n: usize| -> Vec<(&str, Option<serde_json::Value>)> {
        paths[..n].iter().map(|p| (p.as_str(), Some(json!(1)))).collect()
    };
    let cas = ok!(s
        .write_with_xattrs(Bucket::Ledger, &key, b"1", &sets(SPECS_MAX - 1), WriteMode::Insert)
        .await);
    let too_many = s
        .write_with_xattrs(Bucket::Ledger, &key, b"2", &sets(SPECS_MAX), WriteMode::Replace(cas))
        .await;
    refused(too_many, "a mutation of 16 xattr specs and the body");
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let read = ok!(s.get_with_xattrs(Bucket::Ledger, &key, &refs[..SPECS_MAX - 1]).await);
    assert_eq!((read.body.as_slice(), read.cas), (&b"1"[..], cas), "nothing changed");
    assert!(read.xattrs.iter().all(Option::is_some), "{:?}", read.xattrs);
    refused(
        s.get_with_xattrs(Bucket::Ledger, &key, &refs).await,
        "a lookup of 16 xattr paths and the body",
    );
}

/// A key is at most 250 bytes, for every operation.
pub async fn keys_take_at_most_250_bytes(h: &dyn Harness) {
    let s = h.store();
    let longest = key_of(KEY_BYTES_MAX);
    ok!(s.insert(Bucket::Queue, &longest, b"1").await);
    ok!(s.get(Bucket::Queue, &longest).await);
    let over = key_of(KEY_BYTES_MAX + 1);
    refused(s.insert(Bucket::Queue, &over, b"1").await, "insert");
    refused(s.get(Bucket::Queue, &over).await, "get");
    refused(
        s.get_and_lock(Bucket::Queue, &over, Duration::from_secs(5)).await,
        "get_and_lock",
    );
    refused(s.remove(Bucket::Queue, &over, None).await, "remove");
    refused(
        s.write_with_xattrs(
            Bucket::Ledger,
            &over,
            b"1",
            &[("ledger.applied.m", Some(json!(1)))],
            WriteMode::Insert,
        )
        .await,
        "write_with_xattrs",
    );
    ok!(s.remove(Bucket::Queue, &longest, None).await);
}

/// A document is at most 20 MiB; a refused write changes nothing.
pub async fn documents_take_at_most_20_mib(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("big");
    refused(
        s.insert(Bucket::Queue, &key, &vec![b'x'; ITEM_BYTES_MAX + 1]).await,
        "insert of 20 MiB + 1",
    );
    assert_eq!(s.get(Bucket::Queue, &key).await, Err(StoreError::NotFound));
    let fits = vec![b'x'; ITEM_BYTES_MAX - 4096];
    let cas = ok!(s.insert(Bucket::Queue, &key, &fits).await);
    refused(
        s.replace(Bucket::Queue, &key, &vec![b'y'; ITEM_BYTES_MAX + 1], cas)
            .await,
        "replace with 20 MiB + 1",
    );
    let doc = ok!(s.get(Bucket::Queue, &key).await);
    assert!(doc.cas == cas && doc.body == fits, "nothing changed");
    ok!(s.remove(Bucket::Queue, &key, None).await);
}

/// User xattrs count against the same 20 MiB as the body.
pub async fn xattrs_count_against_the_document_size(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("xbig");
    // A JSON string body 2 KiB short of the limit.
    let body = format!("\"{}\"", "x".repeat(ITEM_BYTES_MAX - 2048 - 2)).into_bytes();
    let small = [("ledger.small", Some(json!(1)))];
    let cas = ok!(s
        .write_with_xattrs(Bucket::Ledger, &key, &body, &small, WriteMode::Insert)
        .await);
    let big = [("ledger.big", Some(json!("y".repeat(4096))))];
    refused(
        s.write_with_xattrs(Bucket::Ledger, &key, &body, &big, WriteMode::Replace(cas))
            .await,
        "4 KiB of xattrs on a body 2 KiB short of the limit",
    );
    let read = ok!(s
        .get_with_xattrs(Bucket::Ledger, &key, &["ledger.big", "ledger.small"])
        .await);
    assert_eq!(
        (read.cas, read.xattrs),
        (cas, vec![None, Some(json!(1))]),
        "nothing changed"
    );
    ok!(s.remove(Bucket::Ledger, &key, None).await);
}

/// A lock lasts 1 to 30 s; any other time is refused, and locks nothing
/// (the server itself would lock for 15 s instead, without a word).
pub async fn locks_last_1_to_30_seconds(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("locktime");
    ok!(s.insert(Bucket::Queue, &key, b"1").await);
    refused(
        s.get_and_lock(Bucket::Queue, &key, Duration::from_secs(31)).await,
        "a 31 s lock",
    );
    refused(s.get_and_lock(Bucket::Queue, &key, Duration::ZERO).await, "a 0 s lock");
    assert_ne!(ok!(s.get(Bucket::Queue, &key).await).cas, LOCKED_CAS, "not locked");
    let lock = ok!(s.get_and_lock(Bucket::Queue, &key, Duration::from_secs(30)).await);
    ok!(s.unlock(Bucket::Queue, &key, lock.cas).await);
    ok!(s.remove(Bucket::Queue, &key, None).await);
}

/// A full-document write leaves no user xattrs: a wallet written whole
/// loses its markers (why no tool of ledgerd writes a wallet that way).
pub async fn a_full_document_write_drops_user_xattrs(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("drop");
    let marker = [("ledger.applied.m1", Some(json!({"tx": "a"})))];
    let cas = ok!(s
        .write_with_xattrs(Bucket::Ledger, &key, b"5", &marker, WriteMode::Insert)
        .await);
    ok!(s.replace(Bucket::Ledger, &key, b"6", cas).await);
    let read = ok!(s
        .get_with_xattrs(Bucket::Ledger, &key, &["ledger.applied.m1", "ledger.applied"])
        .await);
    assert_eq!((read.body.as_slice(), read.xattrs), (&b"6"[..], vec![None, None]));
}

/// A write that removes a path that is not there fails as a whole with
/// `PathNotFound` (the caller's view is stale), and changes nothing.
pub async fn removing_a_missing_path_fails_the_whole_write(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("gone");
    let marker = [("ledger.applied.m1", Some(json!(1)))];
    let cas = ok!(s
        .write_with_xattrs(Bucket::Ledger, &key, b"5", &marker, WriteMode::Insert)
        .await);
    let changes = [("ledger.applied.m2", Some(json!(2))), ("ledger.applied.gone", None)];
    let result = s
        .write_with_xattrs(Bucket::Ledger, &key, b"7", &changes, WriteMode::Replace(cas))
        .await;
    assert!(matches!(result, Err(StoreError::PathNotFound(_))), "{result:?}");
    let read = ok!(s.get_with_xattrs(Bucket::Ledger, &key, &["ledger.applied.m2"]).await);
    assert_eq!(
        (read.body.as_slice(), read.cas, read.xattrs),
        (&b"5"[..], cas, vec![None])
    );
}

/// A sub-document path is at most 1024 bytes and of bounded depth.
pub async fn sub_document_paths_are_bounded(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("paths");
    let cas = ok!(s
        .write_with_xattrs(Bucket::Ledger, &key, b"1", &[], WriteMode::Insert)
        .await);
    let longest = format!("ledger.{}", "p".repeat(1024 - "ledger.".len()));
    let cas = ok!(s
        .write_with_xattrs(
            Bucket::Ledger,
            &key,
            b"1",
            &[(longest.as_str(), Some(json!(1)))],
            WriteMode::Replace(cas)
        )
        .await);
    let too_long = format!("{longest}q");
    refused(
        s.write_with_xattrs(
            Bucket::Ledger,
            &key,
            b"1",
            &[(too_long.as_str(), Some(json!(1)))],
            WriteMode::Replace(cas),
        )
        .await,
        "a path of 1025 bytes",
    );
    // Couchbase allows 32 components; 30 fit however the xattr key is
    // counted, 40 fit under no reading.
    let deep = |n: usize| format!("ledger.{}", vec!["d"; n - 1].join("."));
    let cas = ok!(s
        .write_with_xattrs(
            Bucket::Ledger,
            &key,
            b"1",
            &[(deep(30).as_str(), Some(json!(1)))],
            WriteMode::Replace(cas)
        )
        .await);
    refused(
        s.write_with_xattrs(
            Bucket::Ledger,
            &key,
            b"1",
            &[(deep(40).as_str(), Some(json!(1)))],
            WriteMode::Replace(cas),
        )
        .await,
        "a path of 40 components",
    );
    refused(
        s.get_with_xattrs(Bucket::Ledger, &key, &[too_long.as_str()]).await,
        "a lookup of a 1025-byte path",
    );
}

//! The contract every [`Store`] must meet, as one suite of cases.
//!
//! Run it against a store with [`contract_tests!`](crate::contract_tests),
//! which makes one `#[tokio::test]` per case. Each case uses fresh random
//! keys, so the suite can share buckets with other runs (Couchbase).

use std::time::Duration;

use serde_json::json;

use super::{Bucket, StoreError, WriteMode, LOCKED_CAS};

/// Shortest lock the contract uses: stores may count locks in whole seconds.
const LOCK: Duration = Duration::from_secs(1);
/// How long to wait for a one-second lock to lapse, with slack for
/// stores that expire locks on a coarse timer.
const LAPSE: Duration = Duration::from_millis(2_600);

/// Unwraps a store result in a test, naming the operation on failure.
macro_rules! ok {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => panic!("{} failed: {err:?}", stringify!($e)),
        }
    };
}

mod harness;
mod limits;
use harness::fresh;
pub use harness::Harness;
pub use limits::*;

/// An xattr-only write changes the xattr under CAS and leaves the body; with
/// a lock's CAS it succeeds on the locked document and releases the lock.
pub async fn xattr_only_writes_keep_the_body(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("sx");
    let mark = json!({"reason": "r", "attempts": 1});
    assert_eq!(
        s.set_xattr(Bucket::Queue, &key, "ledger.blocked", &mark, Some(1)).await,
        Err(StoreError::NotFound)
    );
    let cas = ok!(s.insert(Bucket::Queue, &key, b"\xffraw").await);
    assert_eq!(
        s.set_xattr(Bucket::Queue, &key, "ledger.blocked", &mark, Some(cas ^ 1))
            .await,
        Err(StoreError::CasMismatch)
    );
    let cas2 = ok!(s
        .set_xattr(Bucket::Queue, &key, "ledger.blocked", &mark, Some(cas))
        .await);
    assert_ne!(cas2, cas);
    let doc = ok!(s.get_with_xattrs(Bucket::Queue, &key, &["ledger.blocked"]).await);
    assert_eq!(doc.body, b"\xffraw");
    assert_eq!(doc.xattrs, vec![Some(mark.clone())]);

    let lock = ok!(s.get_and_lock(Bucket::Queue, &key, LOCK * 10).await);
    assert_eq!(
        s.set_xattr(Bucket::Queue, &key, "ledger.blocked", &json!(2), Some(cas2))
            .await,
        Err(StoreError::Locked)
    );
    ok!(s
        .set_xattr(Bucket::Queue, &key, "ledger.blocked", &json!(3), Some(lock.cas))
        .await);
    // The write released the lock: the document can be locked again at once.
    let again = ok!(s.get_and_lock(Bucket::Queue, &key, LOCK).await);
    ok!(s.unlock(Bucket::Queue, &key, again.cas).await);
    let doc = ok!(s.get_with_xattrs(Bucket::Queue, &key, &["ledger.blocked"]).await);
    assert_eq!(doc.body, b"\xffraw");
    assert_eq!(doc.xattrs, vec![Some(json!(3))]);
}

/// What a store that cannot tell times answers.
fn ledgerd_times_unknown() -> super::DocTimes {
    super::DocTimes::default()
}

/// The census counts documents under a prefix by state: locked now, and
/// not locked but carrying the path; lock expiry where the store knows it;
/// and the oldest of those not carrying the path (a block note is a write,
/// which on Couchbase makes the document look new).
pub async fn census_counts_by_state(h: &dyn Harness) {
    let s = h.store();
    let prefix = fresh("census:");
    let key = |n: &str| format!("{prefix}{n}");
    // The oldest document, blocked: not the oldest waiting.
    let cas = ok!(s.insert(Bucket::Queue, &key("blocked"), b"2").await);
    h.advance(Duration::from_millis(5)).await;
    ok!(s.insert(Bucket::Queue, &key("ready"), b"1").await);
    ok!(s
        .set_xattr(
            Bucket::Queue,
            &key("blocked"),
            "ledger.blocked",
            &json!({"r": 1}),
            Some(cas)
        )
        .await);
    // A lock that lapsed is no lock.
    ok!(s.insert(Bucket::Queue, &key("lapsed"), b"4").await);
    ok!(s.get_and_lock(Bucket::Queue, &key("lapsed"), LOCK).await);
    h.advance(LAPSE).await;
    ok!(s.insert(Bucket::Queue, &key("locked"), b"3").await);
    ok!(s.get_and_lock(Bucket::Queue, &key("locked"), LOCK * 10).await);
    // Blocked and held until its retry time: blocked, not locked.
    let cas = ok!(s.insert(Bucket::Queue, &key("held"), b"5").await);
    ok!(s
        .set_xattr(
            Bucket::Queue,
            &key("held"),
            "ledger.blocked",
            &json!({"r": 2}),
            Some(cas)
        )
        .await);
    ok!(s.get_and_lock(Bucket::Queue, &key("held"), LOCK * 10).await);

    let census = ok!(s.census(Bucket::Queue, &prefix, "ledger.blocked", None).await);
    assert_eq!(census.total, 5);
    assert_eq!(census.marked, Some(2));
    // A store that cannot see locks (Couchbase's SQL++) says so.
    assert!(census.locked.is_none() || census.locked == Some(1), "{census:?}");
    let bounded = ok!(s.census(Bucket::Queue, &prefix, "ledger.blocked", Some(2)).await);
    assert_eq!(bounded.total, 5);
    assert!(bounded.marked.is_none() || bounded.marked == Some(2), "{bounded:?}");
    assert!(bounded.locked.is_none() || bounded.locked == Some(1), "{bounded:?}");

    let locked = ok!(s.doc_times(Bucket::Queue, &key("locked")).await);
    let ready = ok!(s.doc_times(Bucket::Queue, &key("ready")).await);
    if census.oldest_created_ms.is_some() && ready.created_ms.is_some() {
        assert_eq!(census.oldest_created_ms, ready.created_ms, "the oldest not blocked");
    }
    assert_eq!(ready.locked_until_ms, None);
    if let (Some(until), Some(created)) = (locked.locked_until_ms, locked.created_ms) {
        assert!(until > created, "{locked:?}");
    }
    let gone = s.doc_times(Bucket::Queue, &key("gone")).await;
    assert!(
        matches!(gone, Err(StoreError::NotFound)) || gone == Ok(ledgerd_times_unknown()),
        "{gone:?}"
    );
}

/// Reads return exactly the bytes written, and CAS values change on writes.
pub async fn read_your_writes(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("rw");
    assert_eq!(s.get(Bucket::Queue, &key).await, Err(StoreError::NotFound));
    let body = b"{\"x\": 100.000000001}\xff\x00 raw".to_vec();
    let cas = ok!(s.insert(Bucket::Queue, &key, &body).await);
    let doc = ok!(s.get(Bucket::Queue, &key).await);
    assert_eq!(doc.body, body);
    assert_eq!(doc.cas, cas);
    assert_ne!(cas, LOCKED_CAS);
    // The same key in the other bucket is another document.
    assert_eq!(s.get(Bucket::Ledger, &key).await, Err(StoreError::NotFound));
    let cas2 = ok!(s.replace(Bucket::Queue, &key, b"2", cas).await);
    assert_ne!(cas2, cas);
    assert_eq!(ok!(s.get(Bucket::Queue, &key).await).body, b"2");
}

/// Insert fails on an existing key; of racing inserts exactly one wins.
pub async fn insert_is_exclusive(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("ins");
    ok!(s.insert(Bucket::Ledger, &key, b"1").await);
    assert_eq!(s.insert(Bucket::Ledger, &key, b"2").await, Err(StoreError::Exists));
    assert_eq!(ok!(s.get(Bucket::Ledger, &key).await).body, b"1");

    let key = fresh("race");
    let results = futures_join(8, |i| {
        let key = key.clone();
        async move { (i, s.insert(Bucket::Ledger, &key, i.to_string().as_bytes()).await) }
    })
    .await;
    let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results.iter().all(|(_, r)| r.is_ok() || *r == Err(StoreError::Exists)),
        "{results:?}"
    );
    let stored = ok!(s.get(Bucket::Ledger, &key).await).body;
    assert_eq!(stored, winners[0].0.to_string().into_bytes());
}

/// Replace and remove obey the CAS; of racing replaces under one CAS exactly one wins.
pub async fn cas_guards_writes(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("cas");
    let cas = ok!(s.insert(Bucket::Ledger, &key, b"1").await);
    let cas2 = ok!(s.replace(Bucket::Ledger, &key, b"2", cas).await);
    assert_eq!(
        s.replace(Bucket::Ledger, &key, b"3", cas).await,
        Err(StoreError::CasMismatch)
    );
    assert_eq!(
        s.remove(Bucket::Ledger, &key, Some(cas)).await,
        Err(StoreError::CasMismatch)
    );
    assert_eq!(ok!(s.get(Bucket::Ledger, &key).await).body, b"2");

    let results = futures_join(8, |i| {
        let key = key.clone();
        async move { s.replace(Bucket::Ledger, &key, i.to_string().as_bytes(), cas2).await }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(
        results.iter().all(|r| r.is_ok() || *r == Err(StoreError::CasMismatch)),
        "{results:?}"
    );

    ok!(s.remove(Bucket::Ledger, &key, None).await);
    assert_eq!(s.get(Bucket::Ledger, &key).await, Err(StoreError::NotFound));
    assert_eq!(s.remove(Bucket::Ledger, &key, None).await, Err(StoreError::NotFound));
    assert_eq!(
        s.replace(Bucket::Ledger, &key, b"x", cas2).await,
        Err(StoreError::NotFound)
    );
    // A removed key can be inserted again, with a CAS never seen before.
    let cas3 = ok!(s.insert(Bucket::Ledger, &key, b"new").await);
    assert!(cas3 != cas && cas3 != cas2);
}

/// A locked document refuses a second lock and every write without the lock's CAS.
pub async fn locks_exclude_others(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("lock");
    assert_eq!(
        s.get_and_lock(Bucket::Queue, &key, LOCK * 10).await,
        Err(StoreError::NotFound)
    );
    let cas0 = ok!(s.insert(Bucket::Queue, &key, b"body").await);
    let locked = ok!(s.get_and_lock(Bucket::Queue, &key, LOCK * 10).await);
    assert_eq!(locked.body, b"body");
    assert_ne!(locked.cas, cas0, "locking changes the CAS");
    assert_eq!(
        s.get_and_lock(Bucket::Queue, &key, LOCK * 10).await,
        Err(StoreError::Locked)
    );
    let read = ok!(s.get(Bucket::Queue, &key).await);
    assert_eq!(read.body, b"body");
    assert_eq!(read.cas, LOCKED_CAS, "a plain read of a locked document hides its CAS");
    let looked_up = ok!(s.get_with_xattrs(Bucket::Queue, &key, &["a.b"]).await);
    assert_eq!((looked_up.body.as_slice(), looked_up.cas), (&b"body"[..], LOCKED_CAS));
    assert_eq!(
        s.replace(Bucket::Queue, &key, b"x", read.cas).await,
        Err(StoreError::Locked)
    );
    assert_eq!(
        s.replace(Bucket::Queue, &key, b"x", cas0).await,
        Err(StoreError::Locked)
    );
    assert_eq!(s.remove(Bucket::Queue, &key, None).await, Err(StoreError::Locked));
    assert_eq!(s.insert(Bucket::Queue, &key, b"x").await, Err(StoreError::Exists));
    let write = s
        .write_with_xattrs(
            Bucket::Queue,
            &key,
            b"x",
            &[("a.b", Some(json!(1)))],
            WriteMode::Replace(cas0),
        )
        .await;
    assert_eq!(write, Err(StoreError::Locked));
    assert_eq!(
        s.remove_xattr(Bucket::Queue, &key, "a.b").await,
        Err(StoreError::Locked)
    );
    assert_eq!(ok!(s.get(Bucket::Queue, &key).await).body, b"body");
    // The lock's CAS writes, and the write releases the lock.
    let cas2 = ok!(s.replace(Bucket::Queue, &key, b"next", locked.cas).await);
    let relocked = ok!(s.get_and_lock(Bucket::Queue, &key, LOCK * 10).await);
    assert_ne!(relocked.cas, cas2);
    ok!(s.remove(Bucket::Queue, &key, Some(relocked.cas)).await);
    assert_eq!(s.get(Bucket::Queue, &key).await, Err(StoreError::NotFound));
}

/// Unlock needs the lock's CAS: a wrong one answers "locked" and leaves the
/// lock in place; unlocking a document that is not locked answers
/// `CasMismatch` (the server's "not locked").
pub async fn unlock_needs_the_lock_cas(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("unlock");
    let cas0 = ok!(s.insert(Bucket::Queue, &key, b"b").await);
    assert_eq!(s.unlock(Bucket::Queue, &key, cas0).await, Err(StoreError::CasMismatch));
    let locked = ok!(s.get_and_lock(Bucket::Queue, &key, LOCK * 10).await);
    // The server answers "locked", which the Rust SDK reports as a CAS
    // mismatch (couchbase-core's `UnlockResponse`): either may come back,
    // and no caller tells them apart.
    let other = s.unlock(Bucket::Queue, &key, cas0).await;
    assert!(
        matches!(other, Err(StoreError::Locked | StoreError::CasMismatch)),
        "{other:?}"
    );
    assert_eq!(
        s.get_and_lock(Bucket::Queue, &key, LOCK * 10).await,
        Err(StoreError::Locked)
    );
    ok!(s.unlock(Bucket::Queue, &key, locked.cas).await);
    let again = ok!(s.get_and_lock(Bucket::Queue, &key, LOCK * 10).await);
    ok!(s.unlock(Bucket::Queue, &key, again.cas).await);
    ok!(s.remove(Bucket::Queue, &key, None).await);
}

/// A lock lapses by itself; until someone else writes, its CAS still works.
pub async fn locks_lapse(h: &dyn Harness) {
    let s = h.store();
    let (a, b) = (fresh("lapse-a"), fresh("lapse-b"));
    ok!(s.insert(Bucket::Queue, &a, b"a").await);
    ok!(s.insert(Bucket::Queue, &b, b"b").await);
    let lock_a = ok!(s.get_and_lock(Bucket::Queue, &a, LOCK).await);
    let lock_b = ok!(s.get_and_lock(Bucket::Queue, &b, LOCK).await);
    h.advance(LAPSE).await;
    // a: someone else locks after the lapse; the stale lock CAS no longer writes.
    let other = ok!(s.get_and_lock(Bucket::Queue, &a, LOCK * 10).await);
    assert_ne!(other.cas, lock_a.cas);
    assert_eq!(
        s.remove(Bucket::Queue, &a, Some(lock_a.cas)).await,
        Err(StoreError::Locked)
    );
    ok!(s.remove(Bucket::Queue, &a, Some(other.cas)).await);
    // b: nobody touched it; the lapsed lock's CAS still removes it.
    assert_ne!(ok!(s.get(Bucket::Queue, &b).await).cas, LOCKED_CAS);
    ok!(s.remove(Bucket::Queue, &b, Some(lock_b.cas)).await);
}

/// Body and xattrs change together in one write, under insert or CAS rules.
pub async fn xattr_writes_are_atomic(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("x");
    let paths = ["ledger.applied.m1", "ledger.applied"];
    assert_eq!(
        s.get_with_xattrs(Bucket::Ledger, &key, &paths).await,
        Err(StoreError::NotFound)
    );
    let missing = s
        .write_with_xattrs(Bucket::Ledger, &key, b"1", &[], WriteMode::Replace(1))
        .await;
    assert_eq!(missing, Err(StoreError::NotFound));
    let cas = ok!(s
        .write_with_xattrs(
            Bucket::Ledger,
            &key,
            b"5",
            &[("ledger.applied.m1", Some(json!({"u": 5})))],
            WriteMode::Insert
        )
        .await);
    let again = s
        .write_with_xattrs(
            Bucket::Ledger,
            &key,
            b"9",
            &[("ledger.applied.m9", Some(json!(1)))],
            WriteMode::Insert,
        )
        .await;
    assert_eq!(again, Err(StoreError::Exists));
    let read = ok!(s.get_with_xattrs(Bucket::Ledger, &key, &paths).await);
    assert_eq!(read.body, b"5");
    assert_eq!(read.cas, cas);
    assert_eq!(read.xattrs, vec![Some(json!({"u": 5})), Some(json!({"m1": {"u": 5}}))]);
    assert_eq!(
        ok!(s.get(Bucket::Ledger, &key).await).body,
        b"5",
        "xattrs are not part of the body"
    );

    let stale = s
        .write_with_xattrs(
            Bucket::Ledger,
            &key,
            b"8",
            &[("ledger.applied.m2", Some(json!(3)))],
            WriteMode::Replace(cas + 1),
        )
        .await;
    assert_eq!(stale, Err(StoreError::CasMismatch));
    let cas2 = ok!(s
        .write_with_xattrs(
            Bucket::Ledger,
            &key,
            b"8",
            &[("ledger.applied.m2", Some(json!(3)))],
            WriteMode::Replace(cas)
        )
        .await);
    assert_ne!(cas2, cas);
    let read = ok!(s
        .get_with_xattrs(Bucket::Ledger, &key, &["ledger.applied", "ledger.nope"])
        .await);
    assert_eq!(read.body, b"8");
    assert_eq!(read.xattrs, vec![Some(json!({"m1": {"u": 5}, "m2": 3})), None]);

    assert!(ok!(s.remove_xattr(Bucket::Ledger, &key, "ledger.applied.m1").await));
    assert!(!ok!(s.remove_xattr(Bucket::Ledger, &key, "ledger.applied.m1").await));
    let read = ok!(s.get_with_xattrs(Bucket::Ledger, &key, &["ledger.applied"]).await);
    assert_eq!(read.body, b"8");
    assert_eq!(read.xattrs, vec![Some(json!({"m2": 3}))]);
    assert_eq!(
        s.remove_xattr(Bucket::Ledger, &fresh("none"), "a.b").await,
        Err(StoreError::NotFound)
    );

    // One write can set one path and remove another; removing a path that
    // is not there fails the whole write and changes nothing.
    let changes = [("ledger.applied.m3", Some(json!(4))), ("ledger.applied.m2", None)];
    let cas3 = ok!(s
        .write_with_xattrs(Bucket::Ledger, &key, b"9", &changes, WriteMode::Replace(read.cas))
        .await);
    let read = ok!(s.get_with_xattrs(Bucket::Ledger, &key, &["ledger.applied"]).await);
    assert_eq!((read.body.as_slice(), read.cas), (&b"9"[..], cas3));
    assert_eq!(read.xattrs, vec![Some(json!({"m3": 4}))]);
    let missing = [("ledger.applied.m2", None)];
    let refused = s
        .write_with_xattrs(Bucket::Ledger, &key, b"10", &missing, WriteMode::Replace(cas3))
        .await;
    assert!(matches!(refused, Err(StoreError::PathNotFound(_))), "{refused:?}");
    assert_eq!(ok!(s.get(Bucket::Ledger, &key).await).body, b"9");

    // Racing inserts with xattrs: exactly one creates the document.
    let key = fresh("xrace");
    let results = futures_join(8, |i| {
        let key = key.clone();
        async move {
            let path = format!("ledger.applied.m{i}");
            s.write_with_xattrs(
                Bucket::Ledger,
                &key,
                b"1",
                &[(path.as_str(), Some(json!(i)))],
                WriteMode::Insert,
            )
            .await
        }
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(
        results.iter().all(|r| r.is_ok() || *r == Err(StoreError::Exists)),
        "{results:?}"
    );
}

/// Keys list in ascending order by prefix, in pages after a cursor.
pub async fn keys_list_in_pages(h: &dyn Harness) {
    let s = h.store();
    let prefix = format!("{}:", fresh("list"));
    let mut keys: Vec<String> = (0..25).map(|i| format!("{prefix}{i:02}")).collect();
    for k in &keys {
        ok!(s.insert(Bucket::Queue, k, b"1").await);
    }
    ok!(s.insert(Bucket::Queue, &prefix, b"the prefix itself").await);
    ok!(s
        .insert(Bucket::Queue, &format!("{}x", &prefix[..prefix.len() - 1]), b"outside")
        .await);
    ok!(s.insert(Bucket::Ledger, &format!("{prefix}other-bucket"), b"1").await);
    keys.insert(0, prefix.clone());
    // Listing may trail writes (Couchbase answers from an index): wait
    // until the index has caught up before checking the pages.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ok!(s.count_keys(Bucket::Queue, &prefix).await) < 26 && std::time::Instant::now() < deadline {
        h.advance(Duration::from_millis(200)).await;
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = ok!(s.list_keys(Bucket::Queue, &prefix, after.as_deref(), 10).await);
        assert!(page.len() <= 10);
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        seen.extend(page);
    }
    assert_eq!(seen, keys);
    assert_eq!(ok!(s.count_keys(Bucket::Queue, &prefix).await), 26);
    let tail = ok!(s
        .list_keys(Bucket::Queue, &prefix, Some(&format!("{prefix}22")), 10)
        .await);
    assert_eq!(tail, vec![format!("{prefix}23"), format!("{prefix}24")]);
}

/// An xattr set without a CAS (a member's heartbeat): writers of other
/// paths at the same time never fail it, and a locked document refuses it.
pub async fn xattrs_set_without_a_cas(h: &dyn Harness) {
    let s = h.store();
    let key = fresh("nocas");
    assert_eq!(
        s.set_xattr(Bucket::Queue, &key, "ledger.members.a", &json!(1), None)
            .await,
        Err(StoreError::NotFound)
    );
    ok!(s.insert(Bucket::Queue, &key, b"{}").await);
    let key_ref = key.as_str();
    let writes = futures_join(8, |i| async move {
        s.set_xattr(
            Bucket::Queue,
            key_ref,
            &format!("ledger.members.m{i}"),
            &json!({"beat": i}),
            None,
        )
        .await
    })
    .await;
    assert!(writes.iter().all(Result::is_ok), "{writes:?}");
    let doc = ok!(s.get_with_xattrs(Bucket::Queue, &key, &["ledger.members"]).await);
    let members = doc.xattrs[0]
        .as_ref()
        .and_then(|m| m.as_object())
        .map_or(0, |m| m.len());
    assert_eq!(members, 8, "every writer's path is there");
    assert_eq!(doc.body, b"{}", "the body is left as it was");
    let lock = ok!(s.get_and_lock(Bucket::Queue, &key, LOCK * 10).await);
    assert_eq!(
        s.set_xattr(Bucket::Queue, &key, "ledger.members.m0", &json!(9), None)
            .await,
        Err(StoreError::Locked)
    );
    ok!(s.unlock(Bucket::Queue, &key, lock.cas).await);
    ok!(s.remove(Bucket::Queue, &key, None).await);
}

/// A shard's listing holds exactly the queued actions of that shard
/// ([`crate::domain::shard::shard_of`]), in key order, in pages.
pub async fn shards_list_their_own_keys(h: &dyn Harness) {
    use crate::domain::keys::ACTION_PREFIX;
    use crate::domain::shard::shard_of;
    let s = h.store();
    let prefix = format!("{ACTION_PREFIX}{}:", fresh("shard"));
    // Endings of every common shape: digits, hex, letters, separators.
    let keys: Vec<String> = (0..48u64)
        .map(|i| format!("{prefix}{:x}-{}", i.wrapping_mul(0x9E37_79B9), i * 7))
        .collect();
    for k in &keys {
        ok!(s.insert(Bucket::Queue, k, b"{}").await);
    }
    ok!(s.insert(Bucket::Ledger, &keys[0], b"another bucket").await);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ok!(s.count_keys(Bucket::Queue, &prefix).await) < 48 && std::time::Instant::now() < deadline {
        h.advance(Duration::from_millis(200)).await;
    }
    let mut shards: Vec<u32> = keys.iter().map(|k| shard_of(k)).collect();
    shards.sort_unstable();
    shards.dedup();
    assert!(shards.len() > 10, "the keys fall in many shards");
    for shard in shards {
        let mut expected: Vec<String> = keys.iter().filter(|k| shard_of(k) == shard).cloned().collect();
        expected.sort();
        // Pages of 2, from just before this run's keys until past them.
        let (mut seen, mut after) = (Vec::new(), prefix.clone());
        loop {
            let page = ok!(s
                .list_shard_keys(Bucket::Queue, ACTION_PREFIX, shard, Some(&after), 2)
                .await);
            assert!(page.len() <= 2);
            assert!(page.iter().all(|k| shard_of(k) == shard), "shard {shard}: {page:?}");
            let ours: Vec<String> = page.iter().filter(|k| k.starts_with(&prefix)).cloned().collect();
            let done = page.len() < 2 || ours.len() < page.len();
            seen.extend(ours);
            match page.last() {
                Some(last) if !done => after = last.clone(),
                _ => break,
            }
        }
        assert_eq!(seen, expected, "shard {shard}");
    }
    // A range of shards: every key of this run in it (in any order), and
    // no more than the limit.
    let range = 64..192;
    let mut expected: Vec<String> = keys.iter().filter(|k| range.contains(&shard_of(k))).cloned().collect();
    expected.sort();
    let mut listed = ok!(s
        .list_shard_range(Bucket::Queue, ACTION_PREFIX, range.clone(), 1_000_000)
        .await);
    assert!(listed.iter().all(|k| range.contains(&shard_of(k))), "{listed:?}");
    listed.retain(|k| k.starts_with(&prefix));
    listed.sort();
    assert_eq!(listed, expected);
    let few = ok!(s.list_shard_range(Bucket::Queue, ACTION_PREFIX, range.clone(), 3).await);
    assert!(
        few.len() == 3 && few.iter().all(|k| range.contains(&shard_of(k))),
        "{few:?}"
    );
}

/// What changed after a CAS is listed exactly, in `(CAS, key)` order, page
/// by page, each record once: none at or before the CAS, none skipped. A
/// CAS is a server clock value above 2^53 (see `model::next_cas`), so a
/// cursor that went through a float would skip or repeat records here.
pub async fn changes_list_exactly_after_a_cas(h: &dyn Harness) {
    let s = h.store();
    let prefix = format!("tx:{}-", fresh("chg").replace(':', "-"));
    let mut written = Vec::new();
    for n in 0..6 {
        let key = format!("{prefix}{n}");
        let cas = ok!(s.insert(Bucket::Ledger, &key, b"{}").await);
        assert!(cas > 1 << 53 && cas < LOCKED_CAS, "a CAS in the server's range: {cas}");
        written.push((cas, key));
    }
    // Rewritten: listed once, at its new CAS.
    let cas = ok!(s
        .replace(Bucket::Ledger, &written[0].1, b"{\"again\":1}", written[0].0)
        .await);
    written[0].0 = cas;
    written.sort();
    let since = written[1].0;
    let expected: Vec<(u64, String)> = written.iter().filter(|(cas, _)| *cas > since).cloned().collect();
    // Indexes may trail writes (Couchbase's ledger reads wait for them).
    let (mut seen, mut after) = (Vec::new(), None::<(u64, String)>);
    for _ in 0..=expected.len() {
        let page = ok!(s.changed_since(Bucket::Ledger, &prefix, since, after.clone(), 1).await);
        assert!(page.len() <= 1);
        match page.last() {
            Some(last) => after = Some(last.clone()),
            None => break,
        }
        seen.extend(page);
    }
    assert_eq!(seen, expected);
}

/// Endings of keys for which Couchbase's shard (by bytes) and
/// [`crate::domain::shard::shard_of`] (by characters) may differ:
/// multi-byte characters, emoji, combining marks, the last code point.
pub const KEY_ENDINGS_BEYOND_ASCII: [&str; 12] = [
    "é",
    "ñ1",
    "日本",
    "🎉",
    "x🎉",
    "e\u{301}",
    "a\u{308}b",
    "\u{10FFFF}",
    "ß0-",
    "ab1é",
    "9z",
    "-_.:",
];

/// Keys that end in any characters (multi-byte ones, emoji, combining
/// marks) each have exactly one owner among any number of members: each
/// is in exactly one shard's listing and in exactly one member's share.
/// The store may file a key under another shard than
/// [`crate::domain::shard::shard_of`] says (Couchbase's SQL++ counts
/// bytes): the workers trust the listing, so what matters is that the
/// listings divide the keys, and that no key is left for the stale path.
pub async fn keys_ending_in_any_characters_have_one_owner(h: &dyn Harness) {
    use crate::domain::keys::ACTION_PREFIX;
    use crate::domain::shard::{owned_shards, SHARDS};
    let s = h.store();
    let prefix = format!("{ACTION_PREFIX}{}:", fresh("owner"));
    let keys: Vec<String> = KEY_ENDINGS_BEYOND_ASCII
        .iter()
        .map(|e| format!("{prefix}{e}"))
        .collect();
    for k in &keys {
        ok!(s.insert(Bucket::Queue, k, b"{}").await);
    }
    let ours = |page: Vec<String>| -> Vec<String> { page.into_iter().filter(|k| k.starts_with(&prefix)).collect() };
    // Listings may trail writes (Couchbase): wait until they show all.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ours(ok!(s
        .list_shard_range(Bucket::Queue, ACTION_PREFIX, 0..SHARDS, 1_000_000)
        .await))
    .len()
        < keys.len()
        && std::time::Instant::now() < deadline
    {
        h.advance(Duration::from_millis(200)).await;
    }
    let mut by_shard = std::collections::BTreeMap::<String, Vec<u32>>::new();
    for shard in 0..SHARDS {
        for k in ours(ok!(s
            .list_shard_keys(Bucket::Queue, ACTION_PREFIX, shard, None, 1_000)
            .await))
        {
            by_shard.entry(k).or_default().push(shard);
        }
    }
    for k in &keys {
        assert_eq!(
            by_shard.get(k).map(Vec::len),
            Some(1),
            "{k:?} is in one shard: {by_shard:?}"
        );
    }
    for members in [1usize, 2, 3, 7, 64] {
        let mut owners = std::collections::BTreeMap::<String, usize>::new();
        for place in 0..members {
            let share = owned_shards(place, members);
            for k in ours(ok!(s
                .list_shard_range(Bucket::Queue, ACTION_PREFIX, share.clone(), 1_000_000)
                .await))
            {
                // The member's share and its shard by shard listing (a
                // backlog) agree on which keys are its own.
                let shard = by_shard.get(&k).and_then(|s| s.first()).copied();
                assert!(
                    shard.is_some_and(|shard| share.contains(&shard)),
                    "{k:?}: {shard:?} not in {share:?}"
                );
                *owners.entry(k).or_default() += 1;
            }
        }
        for k in &keys {
            assert_eq!(owners.get(k), Some(&1), "{k:?} among {members} members");
        }
    }
}

/// A wallet's records are its transaction records and adjustments, and
/// only those, in key order, in pages.
pub async fn records_list_by_wallet(h: &dyn Harness) {
    let s = h.store();
    let run = fresh("hist").replace(':', "-");
    let (a, b) = (format!("{run}-a"), format!("{run}-b"));
    let tx = |n: u32, hashes: &[&str]| {
        let credits: Vec<_> = hashes.iter().map(|h| json!({"hash": h, "units": 1})).collect();
        (
            format!("tx:{run}-{n:02}"),
            json!({"action_id": format!("{run}-{n:02}"), "credits": credits}),
        )
    };
    let mut expected_a = Vec::new();
    for n in 0..7 {
        let hashes: Vec<&str> = if n % 2 == 0 { vec![&a, &b] } else { vec![&b] };
        let (key, body) = tx(n, &hashes);
        ok!(s.insert(Bucket::Ledger, &key, body.to_string().as_bytes()).await);
        if n % 2 == 0 {
            expected_a.push(key);
        }
    }
    let adj = format!("adj:{run}-fix");
    ok!(s
        .insert(
            Bucket::Ledger,
            &adj,
            json!({"id": format!("{run}-fix"), "hash": a}).to_string().as_bytes()
        )
        .await);
    expected_a.insert(0, adj);
    // Neither: another bucket, a balance, a body that is not JSON.
    ok!(s
        .insert(
            Bucket::Queue,
            &format!("tx:{run}-queue"),
            tx(9, &[a.as_str()]).1.to_string().as_bytes()
        )
        .await);
    ok!(s.insert(Bucket::Ledger, &format!("balance:{a}"), b"4").await);
    ok!(s.insert(Bucket::Ledger, &format!("tx:{run}-broken"), b"not json").await);
    // Indexes may trail writes (Couchbase): wait until they show all.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ok!(s.wallet_records(&a, None, 100).await).len() < expected_a.len() && std::time::Instant::now() < deadline {
        h.advance(Duration::from_millis(200)).await;
    }
    let (mut seen, mut after) = (Vec::new(), None::<String>);
    loop {
        let page = ok!(s.wallet_records(&a, after.as_deref(), 2).await);
        assert!(page.len() <= 2);
        after = page.last().cloned();
        let done = page.len() < 2;
        seen.extend(page);
        if done {
            break;
        }
    }
    assert_eq!(seen, expected_a);
    assert_eq!(ok!(s.wallet_records(&b, None, 100).await).len(), 7);
    assert!(ok!(s.wallet_records(&format!("{run}-nobody"), None, 100).await).is_empty());
}

/// `read_docs` pages through the documents under a prefix in key order,
/// bodies as stored, and nothing else: what `audit` reads the ledger with.
pub async fn documents_read_in_key_order_by_page(h: &dyn Harness) {
    let s = h.store();
    let run = fresh("page").replace(':', "-");
    let prefix = format!("tx:{run}-");
    let mut expected = Vec::new();
    // Written out of order; one removed again, one locked, one elsewhere.
    for n in [4u32, 0, 3, 1, 2, 6, 5] {
        let key = format!("{prefix}{n}");
        let body = format!("{{\"n\":{n}}}");
        ok!(s.insert(Bucket::Ledger, &key, body.as_bytes()).await);
        expected.push((key, body.into_bytes()));
    }
    ok!(s.remove(Bucket::Ledger, &format!("{prefix}3"), None).await);
    expected.retain(|(k, _)| !k.ends_with("-3"));
    ok!(s
        .get_and_lock(Bucket::Ledger, &format!("{prefix}5"), Duration::from_secs(5))
        .await);
    ok!(s.insert(Bucket::Queue, &format!("{prefix}9"), b"{}").await);
    ok!(s.insert(Bucket::Ledger, &format!("tx:{run}+after"), b"{}").await);
    expected.sort();
    let (mut seen, mut after) = (Vec::new(), None::<String>);
    loop {
        let (page, next) = ok!(s.read_docs(Bucket::Ledger, &prefix, after.as_deref(), 2).await);
        assert!(page.len() <= 2, "a page holds at most its limit");
        seen.extend(page);
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, expected);
}

/// One contract case: its name and how to run it on a harness.
pub struct Case {
    /// The case's function name.
    pub name: &'static str,
    /// Runs the case; it panics on a breach of the contract.
    pub run: for<'a> fn(&'a dyn Harness) -> futures::future::BoxFuture<'a, ()>,
}

macro_rules! case_list {
    ($($case:ident),* $(,)?) => {
        /// Every contract case, for harnesses that build their own test list
        /// (the Couchbase tests decide at run time whether they can run).
        pub fn cases() -> Vec<Case> {
            vec![$(Case { name: stringify!($case), run: |h| Box::pin($case(h)) }),*]
        }
    };
}

/// The stages a group of the protocol's shape begins with: insert `record`
/// (body `1`); write `wallet` (`body`, one marker, `mode`); replace the
/// record (body `2`) under the CAS its insert left.
fn record_wallet_record(
    record: &str,
    wallet: &str,
    body: &[u8],
    marker: serde_json::Value,
    mode: WriteMode,
) -> super::WriteGroup {
    use super::{GroupCas, GroupWrite};
    vec![
        vec![GroupWrite::Insert {
            bucket: Bucket::Ledger,
            key: record.to_string(),
            body: b"1".to_vec(),
        }],
        vec![GroupWrite::WriteWithXattrs {
            bucket: Bucket::Ledger,
            key: wallet.to_string(),
            body: body.to_vec(),
            xattrs: vec![("ledger.applied.m".into(), Some(marker))],
            mode,
        }],
        vec![GroupWrite::Replace {
            bucket: Bucket::Ledger,
            key: record.to_string(),
            body: b"2".to_vec(),
            cas: GroupCas::LeftBy(0, 0),
        }],
    ]
}

/// A write group runs its stages in order, a later write using the CAS an
/// earlier one left; each write answers as its single-document call does.
pub async fn write_groups_run_in_order(h: &dyn Harness) {
    use super::GroupWrite;
    let s = h.store();
    let (record, wallet, action) = (fresh("gr"), fresh("gw"), fresh("ga"));
    ok!(s.insert(Bucket::Queue, &action, b"{}").await);
    let claim = ok!(s.get_and_lock(Bucket::Queue, &action, LOCK * 10).await);
    let mut group = record_wallet_record(&record, &wallet, b"5", json!({"tx": "t"}), WriteMode::Insert);
    group.push(vec![GroupWrite::Remove {
        bucket: Bucket::Queue,
        key: action.clone(),
        cas: Some(claim.cas),
    }]);
    let results = s.write_group(&group).await;
    assert_eq!(results.len(), 4, "{results:?}");
    assert!(
        results.iter().flatten().all(|r| matches!(r, Some(Ok(_)))),
        "{results:?}"
    );
    let doc = ok!(s.get(Bucket::Ledger, &record).await);
    assert_eq!(doc.body, b"2");
    assert_eq!(results[2][0], Some(Ok(doc.cas)), "a write answers the CAS it left");
    let w = ok!(s.get_with_xattrs(Bucket::Ledger, &wallet, &["ledger.applied.m"]).await);
    assert_eq!(
        (w.body.as_slice(), w.xattrs[0].clone()),
        (&b"5"[..], Some(json!({"tx": "t"})))
    );
    assert_eq!(s.get(Bucket::Queue, &action).await, Err(StoreError::NotFound));
}

/// A write group stops after the first stage in which a write fails: the
/// stages before stay applied, the failing write changed nothing and
/// answers as its single-document call would, later stages do not run.
pub async fn write_groups_stop_after_a_failed_stage(h: &dyn Harness) {
    use super::GroupWrite;
    let s = h.store();
    let (record, wallet, taken) = (fresh("gr"), fresh("gw"), fresh("gt"));
    let wallet_cas = ok!(s.insert(Bucket::Ledger, &wallet, b"7").await);
    ok!(s.insert(Bucket::Ledger, &taken, b"x").await);
    let group = record_wallet_record(&record, &wallet, b"8", json!(1), WriteMode::Replace(wallet_cas ^ 1));
    let results = s.write_group(&group).await;
    assert!(matches!(results[0][0], Some(Ok(_))), "{results:?}");
    assert_eq!(results[1][0], Some(Err(StoreError::CasMismatch)));
    assert_eq!(results[2][0], None, "a stage after a failed one does not run");
    assert_eq!(ok!(s.get(Bucket::Ledger, &record).await).body, b"1");
    let w = ok!(s.get(Bucket::Ledger, &wallet).await);
    assert_eq!((w.body.as_slice(), w.cas), (&b"7"[..], wallet_cas));

    // A failing first stage: nothing after it runs, nothing is written.
    let other = fresh("go");
    let results = s
        .write_group(&vec![
            vec![GroupWrite::Insert {
                bucket: Bucket::Ledger,
                key: taken.clone(),
                body: b"y".to_vec(),
            }],
            vec![GroupWrite::Insert {
                bucket: Bucket::Ledger,
                key: other.clone(),
                body: b"z".to_vec(),
            }],
        ])
        .await;
    assert_eq!(results, vec![vec![Some(Err(StoreError::Exists))], vec![None]]);
    assert_eq!(s.get(Bucket::Ledger, &other).await, Err(StoreError::NotFound));
    assert_eq!(ok!(s.get(Bucket::Ledger, &taken).await).body, b"x");
}

case_list!(
    read_your_writes,
    insert_is_exclusive,
    xattr_only_writes_keep_the_body,
    census_counts_by_state,
    cas_guards_writes,
    locks_exclude_others,
    unlock_needs_the_lock_cas,
    locks_lapse,
    xattr_writes_are_atomic,
    keys_list_in_pages,
    shards_list_their_own_keys,
    keys_ending_in_any_characters_have_one_owner,
    changes_list_exactly_after_a_cas,
    xattrs_set_without_a_cas,
    records_list_by_wallet,
    documents_read_in_key_order_by_page,
    sub_document_calls_take_at_most_16_specs,
    keys_take_at_most_250_bytes,
    documents_take_at_most_20_mib,
    xattrs_count_against_the_document_size,
    locks_last_1_to_30_seconds,
    a_full_document_write_drops_user_xattrs,
    removing_a_missing_path_fails_the_whole_write,
    sub_document_paths_are_bounded,
    write_groups_run_in_order,
    write_groups_stop_after_a_failed_stage,
);

/// Runs `n` copies of a future concurrently and collects their results.
async fn futures_join<T, Fut: std::future::Future<Output = T>>(n: u64, make: impl Fn(u64) -> Fut) -> Vec<T> {
    futures::future::join_all((0..n).map(make)).await
}

/// Makes one `#[tokio::test]` per contract case for a harness.
///
/// `contract_tests!(make_harness)` where `make_harness().await` returns a
/// value implementing [`Harness`]. For stores that may be unavailable at
/// run time (Couchbase), build the test list from [`cases`] instead, so that
/// an unavailable store is reported as ignored, never as passed.
#[macro_export]
macro_rules! contract_tests {
    ($make:expr) => {
        $crate::contract_tests!(@cases $make;
            read_your_writes, insert_is_exclusive, xattr_only_writes_keep_the_body,
            census_counts_by_state, cas_guards_writes, locks_exclude_others,
            unlock_needs_the_lock_cas, locks_lapse, xattr_writes_are_atomic, keys_list_in_pages,
            shards_list_their_own_keys, keys_ending_in_any_characters_have_one_owner,
            changes_list_exactly_after_a_cas,
            xattrs_set_without_a_cas, records_list_by_wallet,
            documents_read_in_key_order_by_page,
            sub_document_calls_take_at_most_16_specs, keys_take_at_most_250_bytes,
            documents_take_at_most_20_mib, xattrs_count_against_the_document_size,
            locks_last_1_to_30_seconds, a_full_document_write_drops_user_xattrs,
            removing_a_missing_path_fails_the_whole_write, sub_document_paths_are_bounded,
            write_groups_run_in_order, write_groups_stop_after_a_failed_stage);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $make().await;
                $crate::store::contract::$case(&harness).await;
            }
        )*

        #[test]
        fn every_contract_case_runs_on_this_store() {
            let here: Vec<&str> = vec![$(stringify!($case)),*];
            let all: Vec<&str> = $crate::store::contract::cases().iter().map(|c| c.name).collect();
            assert_eq!(here, all, "contract_tests! and contract::cases() must list the same cases");
        }
    };
}

#[cfg(test)]
mod memory_contract {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::store::memory::{Clock, MemoryStore};
    use crate::store::Store;

    struct MemoryHarness(MemoryStore, Arc<AtomicU64>);

    #[async_trait]
    impl Harness for MemoryHarness {
        fn store(&self) -> &dyn Store {
            &self.0
        }
        async fn advance(&self, by: Duration) {
            self.1
                .fetch_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
        }
    }

    async fn harness() -> MemoryHarness {
        let (clock, handle) = Clock::manual();
        MemoryHarness(MemoryStore::with_clock(clock), handle)
    }

    crate::contract_tests!(harness);
}

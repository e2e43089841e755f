use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::domain::shard::SHARDS;
use crate::store::memory::MemoryStore;

fn entries(list: &[(&str, u64, u64)]) -> Map<String, Value> {
    list.iter()
        .map(|(id, beat, at_ms)| (id.to_string(), json!({"beat": beat, "at_ms": at_ms, "view": 7})))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_member_lives_while_its_heartbeat_changes_and_is_forgotten_long_after() {
    let mut roster = Roster::new(MEMBER_TIMEOUT);
    let now_ms = 1_000_000_000;
    let t0 = Instant::now();
    let r = roster.observe("me", &entries(&[("a", 1, now_ms), ("b", 1, now_ms)]), t0, now_ms);
    assert_eq!(r.live, ["a", "b", "me"]);
    assert_eq!(r.views, [7, 7]);
    // a beats on, b falls silent.
    let t1 = t0 + MEMBER_TIMEOUT;
    let r = roster.observe("me", &entries(&[("a", 2, now_ms), ("b", 1, now_ms)]), t1, now_ms);
    assert_eq!(r.live, ["a", "me"], "b silent for the whole timeout");
    assert!(r.forget.is_empty());
    let t2 = t0 + MEMBER_FORGET_AFTER;
    let r = roster.observe("me", &entries(&[("a", 3, now_ms), ("b", 1, now_ms)]), t2, now_ms);
    assert_eq!(r.forget, ["b"]);
    // Once the document no longer lists b, nothing of it is kept.
    roster.observe("me", &entries(&[("a", 4, now_ms)]), t2, now_ms);
    assert_eq!(roster.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_entry_first_seen_is_judged_by_its_own_time() {
    let mut roster = Roster::new(MEMBER_TIMEOUT);
    let now_ms = 1_000_000_000;
    let timeout_ms = MEMBER_TIMEOUT.as_millis() as u64;
    let forget_ms = MEMBER_FORGET_AFTER.as_millis() as u64;
    let list = entries(&[
        ("fresh", 5, now_ms - 1_000),
        ("silent", 5, now_ms - timeout_ms),
        ("ancient", 5, now_ms - forget_ms),
        ("skewed", 5, now_ms + 60_000),
    ]);
    let mut list = list;
    list.insert("not-a-heartbeat".into(), json!("garbage"));
    let r = roster.observe("me", &list, Instant::now(), now_ms);
    assert_eq!(r.live, ["fresh", "me", "skewed"]);
    assert_eq!(
        r.forget,
        ["ancient"],
        "an entry that is not a heartbeat is never removed"
    );
}

async fn two_members(store: &Arc<MemoryStore>) -> (Membership, Membership) {
    let (mut a, mut b) = (
        Membership::new(store.clone(), MEMBER_TIMEOUT),
        Membership::new(store.clone(), MEMBER_TIMEOUT),
    );
    a.refresh().await;
    b.refresh().await;
    tokio::time::advance(MEMBER_TIMEOUT / HEARTBEATS_PER_TIMEOUT).await;
    a.refresh().await;
    b.refresh().await;
    (a, b)
}

#[tokio::test(start_paused = true)]
async fn members_divide_every_shard_and_take_over_a_silent_ones_share() {
    let store = Arc::new(MemoryStore::new());
    let (mut a, b) = two_members(&store).await;
    assert_eq!(a.view().members.len(), 2);
    assert_eq!(a.view().members, b.view().members);
    assert_eq!(a.view().distinct, 1, "they agree");
    let (sa, sb) = (a.view().shards.clone(), b.view().shards.clone());
    assert_eq!(sa.len() + sb.len(), SHARDS as usize);
    assert!(sa.iter().all(|s| !b.view().owns(*s)), "no shard is owned twice");
    assert_eq!(listed(store.as_ref()).await.expect("listed").len(), 2);

    // b stops (SIGSTOP, SIGKILL): a takes every shard within the timeout
    // and one heartbeat after b's last.
    for _ in 0..=HEARTBEATS_PER_TIMEOUT {
        tokio::time::advance(MEMBER_TIMEOUT / HEARTBEATS_PER_TIMEOUT).await;
        a.refresh().await;
    }
    assert_eq!(a.view().members, [a.id().to_string()]);
    assert_eq!(a.view().shards.len(), SHARDS as usize);
    // Long after, b's entry goes from the document.
    tokio::time::advance(MEMBER_FORGET_AFTER).await;
    a.refresh().await;
    let ids: Vec<String> = listed(store.as_ref())
        .await
        .expect("listed")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, [a.id().to_string()]);
}

#[tokio::test(start_paused = true)]
async fn a_member_that_leaves_hands_its_shards_over_at_the_next_heartbeat() {
    let store = Arc::new(MemoryStore::new());
    let (mut a, mut b) = two_members(&store).await;
    b.leave().await;
    tokio::time::advance(MEMBER_TIMEOUT / HEARTBEATS_PER_TIMEOUT).await;
    a.refresh().await;
    assert_eq!(a.view().shards.len(), SHARDS as usize);
}

#[tokio::test(start_paused = true)]
async fn a_member_that_cannot_reach_the_membership_works_alone_after_the_timeout() {
    use crate::store::hooked::{Fault, Hook, Hooked, OpKind};
    struct Down(std::sync::atomic::AtomicBool);
    #[async_trait::async_trait]
    impl Hook for Down {
        async fn before(&self, _kind: OpKind, _key: &str) -> Fault {
            if self.0.load(std::sync::atomic::Ordering::SeqCst) {
                Fault::FailBefore(StoreError::Transient("unreachable".into()))
            } else {
                Fault::Pass
            }
        }
    }
    let store = Arc::new(MemoryStore::new());
    let hooked = Arc::new(Hooked::new(store.clone(), Down(false.into())));
    let (mut a, mut b) = (
        Membership::new(hooked.clone(), MEMBER_TIMEOUT),
        Membership::new(store.clone(), MEMBER_TIMEOUT),
    );
    a.refresh().await;
    b.refresh().await;
    tokio::time::advance(MEMBER_TIMEOUT / HEARTBEATS_PER_TIMEOUT).await;
    a.refresh().await;
    b.refresh().await;
    assert_eq!(a.view().members.len(), 2);
    hooked.hook.0.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::advance(MEMBER_TIMEOUT / HEARTBEATS_PER_TIMEOUT).await;
    a.refresh().await;
    assert_eq!(a.view().members.len(), 2, "a short failure keeps the last view");
    for _ in 0..HEARTBEATS_PER_TIMEOUT {
        tokio::time::advance(MEMBER_TIMEOUT / HEARTBEATS_PER_TIMEOUT).await;
        a.refresh().await;
    }
    assert_eq!(a.view().shards.len(), SHARDS as usize, "alone: every shard");
}

#[test]
fn where_locks_are_not_seen_the_live_members_claims_are_the_locked_ones() {
    let now_ms = 1_000_000_000;
    let beat = |in_flight, age_ms| Heartbeat {
        beat: 1,
        host: String::new(),
        pid: 0,
        version: String::new(),
        started_ms: 0,
        at_ms: now_ms - age_ms,
        view: 0,
        shards: 0,
        in_flight,
    };
    let members = vec![
        ("a".to_string(), beat(3, 1_000)),
        ("b".to_string(), beat(4, 20_000)),
        // Silent for longer than any member timeout: dead, its claims lapse.
        ("c".to_string(), beat(50, crate::config::MEMBER_TIMEOUT_MS_MAX + 1)),
    ];
    let census = Census {
        total: 100,
        marked: Some(10),
        ..Census::default()
    };
    assert_eq!(held_by_members(&census, &members, now_ms), 7);
    // Never more than the actions that are not blocked.
    let small = Census {
        total: 12,
        marked: Some(10),
        ..Census::default()
    };
    assert_eq!(held_by_members(&small, &members, now_ms), 2);
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_publishes_the_claims_in_flight() {
    let store = Arc::new(MemoryStore::new());
    let mut a = Membership::with_id(store.clone(), MEMBER_TIMEOUT, "a".into());
    a.note_in_flight(5);
    a.refresh().await;
    let listed = listed(store.as_ref()).await.expect("listed");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1.in_flight, 5);
}

#[tokio::test(start_paused = true)]
async fn a_worker_about_to_exit_never_counts_its_own_heartbeat_as_locks() {
    // A store that cannot see locks (as Couchbase's census cannot), ten
    // queued actions, and two heartbeats: this worker's, from the middle
    // of its last pass, and another live member's.
    let inner = MemoryStore::new();
    for i in 0..10 {
        let key = crate::domain::keys::action_key(&format!("q{i}"));
        inner.insert(Bucket::Queue, &key, b"{}").await.expect("enqueue");
    }
    let store = inner.census_without_locks();
    let mut me = Membership::with_id(Arc::new(store.clone()), MEMBER_TIMEOUT, "me".into());
    me.note_in_flight(8);
    me.refresh().await;
    let mut other = Membership::with_id(Arc::new(store.clone()), MEMBER_TIMEOUT, "other".into());
    other.note_in_flight(1);
    other.refresh().await;
    let everyone = queue_census(&store, None, None).await.expect("census");
    assert_eq!(everyone.locked, Some(9), "an operator hears every heartbeat");
    // The worker holds nothing now, whatever its last heartbeat said.
    let leaving = queue_census(&store, None, Some("me")).await.expect("census");
    assert_eq!(leaving.locked, Some(1));
    assert_eq!(leaving.total, 10);
}

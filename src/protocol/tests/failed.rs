//! Rejections whose `failed:<id>` would not fit in one Couchbase item: the
//! action stays queued and blocked, and nothing is lost or overwritten.

use super::*;
use crate::store::limits::ITEM_BYTES_MAX;

#[tokio::test]
async fn a_body_too_large_to_preserve_stays_queued_and_blocked() {
    let w = World::new();
    // Not JSON, and no encoding of it fits in 20 MiB: base64 alone is 21 MiB.
    let body = vec![1u8; 16 * 1024 * 1024];
    w.store
        .insert(Bucket::Queue, &action_key("big"), &body)
        .await
        .expect("enqueue");
    let outcome = w.process("big").await.expect("processes");
    assert!(
        matches!(&outcome, Outcome::Blocked { reason } if reason.contains("stays queued") && reason.contains("failed:big")),
        "{outcome:?}"
    );
    assert_eq!(
        w.store.peek(Bucket::Queue, &action_key("big")),
        Some(body),
        "nothing lost"
    );
    assert!(!w.has(Bucket::Queue, &failed_key("big")));
}

#[tokio::test]
async fn earlier_failures_cannot_grow_a_failed_document_past_the_limit() {
    let w = World::new();
    let earlier = serde_json::json!({
        "id": "x1",
        "reason": "earlier",
        "original": "y".repeat(ITEM_BYTES_MAX - 100),
    });
    let earlier = serde_json::to_vec(&earlier).expect("json");
    w.store
        .insert(Bucket::Queue, &failed_key("x1"), &earlier)
        .await
        .expect("earlier failure");
    w.enqueue("x1", r#"{"beneficiaries":{"bob":-5}}"#).await;
    let outcome = w.process("x1").await.expect("processes");
    assert!(
        matches!(&outcome, Outcome::Blocked { reason } if reason.contains("must be greater than 0")),
        "the reason names the rejection too: {outcome:?}"
    );
    assert!(w.has(Bucket::Queue, &action_key("x1")), "the action stays queued");
    assert_eq!(
        w.store.peek(Bucket::Queue, &failed_key("x1")),
        Some(earlier),
        "the earlier failure is untouched"
    );
}

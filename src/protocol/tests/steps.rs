//! The rule that picks an action's next step, on its own: a pure function
//! of what is known, so every state is checked without a store.

use super::super::steps::{next, Known, Record, Step, STEPS_MAX};
use super::*;
use crate::domain::plan_action;

fn found(state: TxState, same_body: bool) -> Known {
    let plan = plan_action(BODY.as_bytes()).expect("plan");
    let mut tx = TxRecord::committed("1", &plan);
    tx.state = state;
    let mut k = Known::new("1");
    k.found_completed = state == TxState::Completed;
    k.completed = k.found_completed;
    k.record = Record::Found {
        tx,
        cas: 1,
        observed: None,
        same_body,
    };
    k
}

/// Folds into `k` what each step leaves when it succeeds, as the flow does,
/// and returns the path taken.
fn walk(mut k: Known) -> Vec<Step> {
    let mut path = Vec::new();
    loop {
        let step = next(&k);
        assert!(!path.contains(&step), "{step:?} picked twice: {path:?}");
        path.push(step);
        match step {
            Step::Reject | Step::Done | Step::LookUp | Step::Commit => return path,
            Step::Apply => k.applied = true,
            Step::CompleteAndRemove => k.paired = true,
            Step::Complete => k.completed = true,
            Step::Remove => k.removed = Some(None),
        }
        assert!(path.len() <= STEPS_MAX);
    }
}

#[test]
fn an_action_is_looked_up_first_and_a_bad_id_is_rejected_before_anything() {
    assert_eq!(next(&Known::new("1")), Step::LookUp);
    assert_eq!(next(&Known::new("bad\nid")), Step::Reject);
}

#[test]
fn an_absent_record_is_committed_or_the_body_rejected() {
    let mut k = Known::new("1");
    k.record = Record::Absent(Ok((plan_action(BODY.as_bytes()).expect("plan"), Vec::new())));
    assert_eq!(next(&k), Step::Commit);
    k.record = Record::Absent(plan_action(b"not json").map(|p| (p, Vec::new())));
    assert_eq!(next(&k), Step::Reject);
    assert!(!k.rejection().1.is_empty());
}

#[test]
fn a_committed_record_is_applied_completed_and_removed_in_order() {
    use Step::*;
    assert_eq!(
        walk(found(TxState::Committed, true)),
        [Apply, CompleteAndRemove, Complete, Remove, Done]
    );
    // Another body under the same id: completed alone, then judged by step 6.
    assert_eq!(walk(found(TxState::Committed, false)), [Apply, Complete, Remove, Done]);
    // Removed beside a completion that failed: completed alone, once.
    let mut k = found(TxState::Committed, true);
    (k.applied, k.paired, k.removed) = (true, true, Some(None));
    assert_eq!(walk(k), [Complete, Done]);
}

#[test]
fn a_completed_record_is_only_removed() {
    use Step::*;
    assert_eq!(walk(found(TxState::Completed, true)), [Remove, Done]);
    let mut k = found(TxState::Completed, true);
    k.removed = Some(None);
    assert_eq!(walk(k), [Done]);
}

#[test]
fn what_a_group_did_is_never_done_again() {
    use Step::*;
    // The three-stage group applied, completed and removed.
    let mut k = found(TxState::Committed, true);
    (k.applied, k.completed, k.removed) = (true, true, Some(None));
    assert_eq!(walk(k), [Done]);
    // It applied and completed; the removal failed.
    let mut k = found(TxState::Committed, true);
    (k.applied, k.completed) = (true, true);
    assert_eq!(walk(k), [Remove, Done]);
    // It applied and removed; the completion failed: completed alone.
    let mut k = found(TxState::Committed, true);
    (k.applied, k.removed) = (true, Some(None));
    assert_eq!(walk(k), [Complete, Done]);
    // A wallet write failed: step 4 again, through the coalescer.
    let k = found(TxState::Committed, true);
    assert_eq!(walk(k)[0], Apply);
}

#[test]
fn the_outcome_says_duplicate_only_for_a_record_found_completed() {
    let mut k = found(TxState::Completed, true);
    assert_eq!(k.outcome(), Outcome::Duplicate);
    let mut k = found(TxState::Committed, true);
    k.credited = (2, 7);
    assert_eq!(k.outcome(), Outcome::Completed { credits: 2, units: 7 });
    let mut k = found(TxState::Committed, true);
    k.removed = Some(Some(Outcome::Skipped(Skip::Changed)));
    assert_eq!(k.outcome(), Outcome::Skipped(Skip::Changed));
}

#[test]
fn a_credit_prunes_in_spare_slots_and_defers_when_more_are_wanted_than_known() {
    use super::super::grouped::plan_one;
    assert_eq!(plan_one(3, 0, 256), Some(0));
    assert_eq!(plan_one(3, 20, 256), Some(14));
    assert_eq!(plan_one(300, 20, 256), Some(14));
    assert_eq!(plan_one(300, 0, 256), None);
}

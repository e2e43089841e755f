use super::*;

/// A bound small enough for the suite: every schedule with at most one
/// preemption and one fault.
const SMALL: Bounds = Bounds {
    preemptions: 1,
    faults: 1,
    schedules_max: 1_000_000,
    sweep: true,
};

#[test]
fn every_schedule_within_a_small_bound_keeps_every_invariant() {
    let e = explore(SMALL);
    if let Some(f) = &e.failing {
        panic!(
            "schedule {:?} broke {:?}:\n{}",
            f.choices,
            f.violations,
            f.trace.join("\n")
        );
    }
    assert!(e.complete, "{e:?}");
}

#[test]
fn a_defect_is_caught_and_its_schedule_replays_exactly() {
    let e = explore_with(SMALL, Sabotage::RemoveOnClaim);
    let failing = e.failing.expect("the defect is caught");
    assert!(
        failing
            .violations
            .iter()
            .any(|v| v.contains("removed before its credits")),
        "{:?}",
        failing.violations
    );
    let again = replay_with(SMALL, Sabotage::RemoveOnClaim, &failing.choices);
    assert_eq!(again.trace, failing.trace);
    assert_eq!(again.violations, failing.violations);
}

#[test]
fn depth_first_choices_visit_every_option_once() {
    // Two choices of 2 and 3 options: 6 schedules, in order.
    let mut seen = Vec::new();
    let mut prefix = Some(Vec::new());
    while let Some(p) = prefix.take() {
        let mut c = Choices {
            prefix: p,
            made: Vec::new(),
        };
        let first = c.choose(2);
        let second = c.choose(3);
        seen.push((first, second));
        prefix = c.next();
    }
    assert_eq!(seen, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
}

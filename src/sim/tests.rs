use super::*;

/// Seeds in the quick mode that runs with every `cargo test`.
const QUICK_SEEDS: u64 = 200;

fn explain(report: &Report) -> String {
    let tail: Vec<&String> = report
        .trace
        .iter()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!(
        "seed {} violated: {:#?}\nreplay: {}\nlast operations:\n{}",
        report.seed,
        report.violations,
        replay_command(report.seed),
        tail.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
    )
}

#[test]
fn quick_mode_finds_no_violation() {
    for seed in 0..QUICK_SEEDS {
        let report = run_seed(seed, Sabotage::None);
        assert!(report.violations.is_empty(), "{}", explain(&report));
        assert!(report.deliveries > 0);
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17, 99] {
        let a = run_seed(seed, Sabotage::None);
        let b = run_seed(seed, Sabotage::None);
        assert_eq!(a.trace, b.trace, "seed {seed} is not deterministic");
        assert!(a.trace.len() > 50, "a run does real work");
    }
}

/// The first seed below `limit` on which the checker objects.
fn first_caught(sabotage: Sabotage, limit: u64) -> Option<u64> {
    (0..limit).find(|seed| !run_seed(*seed, sabotage).violations.is_empty())
}

#[test]
fn skipping_the_marker_check_is_caught() {
    let seed = first_caught(Sabotage::SkipMarkerCheck, QUICK_SEEDS);
    assert!(
        seed.is_some(),
        "the checker missed double credits in {QUICK_SEEDS} seeds"
    );
}

#[test]
fn removing_the_action_before_completing_is_caught() {
    let seed = first_caught(Sabotage::RemoveOnClaim, QUICK_SEEDS);
    assert!(
        seed.is_some(),
        "the checker missed early removal in {QUICK_SEEDS} seeds"
    );
}

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

/// No violation in the quick mode's seeds, and they reach the paths the
/// store's limits shape: some seed fills a write to the spec limit, some
/// writes a batch's markers whole (more than the paths of one write can
/// carry), and some writes remove markers of completed actions as they add
/// others.
#[test]
fn quick_mode_finds_no_violation() {
    let mut reports = Vec::new();
    for seed in 0..QUICK_SEEDS {
        let report = run_seed(seed, Sabotage::None);
        assert!(report.violations.is_empty(), "{}", explain(&report));
        assert!(report.deliveries > 0);
        reports.push(report);
    }
    assert!(reports.iter().any(|r| r.crowded) && reports.iter().any(|r| !r.crowded));
    assert_eq!(
        reports.iter().map(|r| r.xattr_specs_max).max(),
        Some(crate::store::limits::SUBDOC_SPECS_MAX - 1),
        "no seed filled a write to the spec limit"
    );
    let crowded_pruning: u64 = reports.iter().filter(|r| r.crowded).map(|r| r.pruning_writes).sum();
    assert!(crowded_pruning > 0, "no crowded seed pruned markers while crediting");
    assert!(
        reports.iter().any(|r| r.whole_writes > 0),
        "no seed wrote a batch's markers whole"
    );
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

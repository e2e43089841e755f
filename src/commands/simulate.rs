//! `ledgerd simulate`: the fault-injection simulator from the command line.

use std::io::Write;
use std::time::Instant;

use super::Exit;
use crate::sim::explore::{self, Bounds, Schedule};
use crate::sim::{replay_command, run_seed, Report, Sabotage};

/// Operations of a failing run's trace printed when not asked for all.
const TRACE_TAIL_LINES: usize = 60;

fn print_failure(out: &mut impl Write, report: &Report, full_trace: bool) -> std::io::Result<()> {
    writeln!(out, "seed {} VIOLATED:", report.seed)?;
    for v in &report.violations {
        writeln!(out, "  {v}")?;
    }
    writeln!(out, "replay with: {}", replay_command(report.seed))?;
    let skip = if full_trace {
        0
    } else {
        report.trace.len().saturating_sub(TRACE_TAIL_LINES)
    };
    writeln!(
        out,
        "trace ({} of {} operations):",
        report.trace.len() - skip,
        report.trace.len()
    )?;
    for line in &report.trace[skip..] {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

/// Runs seeds `from..from+seeds` (or just `seed`) on every core and reports.
pub fn run(
    seeds: u64,
    from: u64,
    seed: Option<u64>,
    trace: bool,
    sabotage: Sabotage,
    mut out: impl Write,
) -> anyhow::Result<Exit> {
    if let Some(seed) = seed {
        let report = run_seed(seed, sabotage);
        if report.violations.is_empty() {
            if trace {
                for line in &report.trace {
                    writeln!(out, "  {line}")?;
                }
            }
            writeln!(
                out,
                "seed {seed}: no violation ({} deliveries, {} operations)",
                report.deliveries,
                report.trace.len()
            )?;
            return Ok(Exit::Success);
        }
        print_failure(&mut out, &report, trace)?;
        return Ok(Exit::Rejected);
    }
    let started = Instant::now();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
        .min(seeds.max(1));
    let failures: Vec<Report> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (from + t..from + seeds)
                        .step_by(threads as usize)
                        .map(|s| run_seed(s, sabotage))
                        .filter(|r| !r.violations.is_empty())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let secs = started.elapsed().as_secs_f64();
    if let Some(first) = failures.iter().min_by_key(|r| r.seed) {
        print_failure(&mut out, first, trace)?;
    }
    writeln!(
        out,
        "{seeds} seeds ({from}..{}), {} with violations, {secs:.1} s, {:.0} seeds/s",
        from + seeds,
        failures.len(),
        seeds as f64 / secs.max(1e-9)
    )?;
    Ok(if failures.is_empty() {
        Exit::Success
    } else {
        Exit::Rejected
    })
}

/// The command that replays one explored schedule.
fn replay_schedule_command(bounds: &Bounds, choices: &[usize]) -> String {
    let choices: Vec<String> = choices.iter().map(usize::to_string).collect();
    format!(
        "ledgerd simulate --exhaustive --preemptions {} --faults {}{} --schedule {}",
        bounds.preemptions,
        bounds.faults,
        if bounds.sweep { "" } else { " --no-sweep" },
        if choices.is_empty() {
            "0".to_string()
        } else {
            choices.join(",")
        }
    )
}

fn print_schedule(out: &mut impl Write, schedule: &Schedule) -> std::io::Result<()> {
    for line in &schedule.trace {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

/// `simulate --exhaustive`: every schedule within `bounds`, or the one
/// `schedule` names.
pub fn exhaustive(bounds: Bounds, schedule: Option<&[usize]>, mut out: impl Write) -> anyhow::Result<Exit> {
    if let Some(choices) = schedule {
        let s = explore::replay(bounds, choices);
        print_schedule(&mut out, &s)?;
        if s.violations.is_empty() {
            writeln!(out, "schedule: no violation ({} store calls)", s.trace.len())?;
            return Ok(Exit::Success);
        }
        for v in &s.violations {
            writeln!(out, "VIOLATED: {v}")?;
        }
        return Ok(Exit::Rejected);
    }
    let e = explore::explore(bounds);
    let (p, f) = (bounds.preemptions, bounds.faults);
    match &e.failing {
        None => {
            writeln!(
                out,
                "every schedule within {p} preemptions and {f} faults{}: {} schedules (at most {} choices each), \
                 0 with violations, {:.1} s",
                if bounds.sweep { ", with a sweep" } else { "" },
                e.schedules,
                e.depth_max,
                e.elapsed.as_secs_f64()
            )?;
            Ok(Exit::Success)
        }
        Some(s) => {
            writeln!(out, "schedule {} of the exploration VIOLATED:", e.schedules)?;
            for v in &s.violations {
                writeln!(out, "  {v}")?;
            }
            writeln!(out, "replay with: {}", replay_schedule_command(&bounds, &s.choices))?;
            writeln!(out, "store calls, in order:")?;
            print_schedule(&mut out, s)?;
            Ok(Exit::Rejected)
        }
    }
}

//! Collapses repeated log lines: the first line of a cause in an interval
//! is logged in full; the same cause again within the interval is only
//! counted, and one line at the end of the interval says how many times it
//! came back. A store that fails every write for a minute then costs a few
//! lines per cause, not one per attempt.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long one line stands for the repeats of its cause.
pub const COLLAPSE_INTERVAL: Duration = Duration::from_secs(10);
/// Most causes with an open window. Causes are messages with the action id
/// taken out, but a message may still name a wallet, a key or a CAS: a
/// store failing in many ways at once must cost a bounded table (and a
/// bounded number of lines), not one entry per distinct message.
pub const COLLAPSE_CAUSES_MAX: usize = 64;
/// The cause that stands for every cause beyond [`COLLAPSE_CAUSES_MAX`].
pub const OTHER_CAUSES: &str = "other causes (more distinct causes than are collapsed one by one)";

/// Repeats of one cause since its last full line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeats {
    /// The cause, as logged.
    pub cause: String,
    /// How many lines were not logged.
    pub count: u64,
    /// The last action among them.
    pub last_action: String,
    /// Since when they were counted.
    pub since: Instant,
}

/// Per cause: when its window opened, and what was held back since.
#[derive(Debug, Default)]
pub struct Collapser {
    windows: HashMap<String, (Instant, u64, String)>,
}

impl Collapser {
    /// Whether to log a line for `cause` now (about `action`); a repeat
    /// within the interval is counted instead.
    pub fn admit(&mut self, cause: &str, action: &str, now: Instant) -> bool {
        let cause = match self.windows.len() >= COLLAPSE_CAUSES_MAX && !self.windows.contains_key(cause) {
            true => OTHER_CAUSES,
            false => cause,
        };
        match self.windows.get_mut(cause) {
            Some((opened, held, last)) if now.duration_since(*opened) < COLLAPSE_INTERVAL => {
                *held += 1;
                *last = action.to_string();
                false
            }
            _ => {
                self.windows.insert(cause.to_string(), (now, 0, String::new()));
                true
            }
        }
    }

    /// The causes whose interval is over (all of them with `all`) and that
    /// held lines back; their windows close.
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<Repeats> {
        let mut out = Vec::new();
        self.windows.retain(|cause, (opened, held, last)| {
            let over = all || now.duration_since(*opened) >= COLLAPSE_INTERVAL;
            if over && *held > 0 {
                out.push(Repeats {
                    cause: cause.clone(),
                    count: *held,
                    last_action: std::mem::take(last),
                    since: *opened,
                });
            }
            !over
        });
        out.sort_by(|a, b| a.cause.cmp(&b.cause));
        out
    }

    /// How many causes have an open window (at most
    /// [`COLLAPSE_CAUSES_MAX`] + 1, the one for [`OTHER_CAUSES`]).
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether no cause has an open window.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

/// `message` with every occurrence of the action id made generic, so that
/// the same failure of two actions is one cause.
pub fn cause(message: &str, action: &str) -> String {
    if action.is_empty() {
        return message.to_string();
    }
    message.replace(action, "<action>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_per_interval_then_a_count() {
        let mut c = Collapser::default();
        let t0 = Instant::now();
        assert!(c.admit("disk full", "a", t0));
        assert!(c.admit("timeout", "a", t0));
        for (n, action) in ["b", "c", "d"].iter().enumerate() {
            assert!(!c.admit("disk full", action, t0 + Duration::from_millis(n as u64)));
        }
        assert!(
            c.due(t0 + Duration::from_secs(1), false).is_empty(),
            "interval not over"
        );
        let due = c.due(t0 + COLLAPSE_INTERVAL, false);
        assert_eq!(due.len(), 1, "timeout held nothing back: {due:?}");
        assert_eq!(
            (due[0].cause.as_str(), due[0].count, due[0].last_action.as_str()),
            ("disk full", 3, "d")
        );
        // A new interval starts with a full line again.
        assert!(c.admit("disk full", "e", t0 + COLLAPSE_INTERVAL));
        assert!(!c.admit("disk full", "f", t0 + COLLAPSE_INTERVAL));
        let rest = c.due(t0 + COLLAPSE_INTERVAL, true);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].count, 1);
    }

    #[test]
    fn distinct_causes_beyond_the_bound_share_one_window() {
        let mut c = Collapser::default();
        let t0 = Instant::now();
        for i in 0..COLLAPSE_CAUSES_MAX {
            assert!(c.admit(&format!("wallet w{i} is invalid"), "a", t0));
        }
        // The first cause beyond the bound is logged, the next ones counted.
        assert!(c.admit("wallet x is invalid", "a", t0));
        for i in 0..1_000 {
            assert!(!c.admit(&format!("wallet y{i} is invalid"), "b", t0));
        }
        assert_eq!(c.len(), COLLAPSE_CAUSES_MAX + 1);
        let due = c.due(t0 + COLLAPSE_INTERVAL, false);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!((due[0].cause.as_str(), due[0].count), (OTHER_CAUSES, 1_000));
        assert_eq!(c.len(), 0, "every window closed");
    }

    #[test]
    fn the_action_id_is_not_part_of_the_cause() {
        assert_eq!(
            cause("store: could not write failed:x17", "x17"),
            cause("store: could not write failed:y2", "y2")
        );
    }
}

//! The actions a worker has put off: blocked, or failed with an error, and
//! not to be tried again before a time. Bounded twice: an entry whose
//! action a whole pass of discovery did not list is gone from the queue
//! (completed by another worker, purged by an operator) and is dropped at
//! the end of that pass; and the table never holds more than
//! [`PUT_OFF_MAX`] entries. Forgetting an entry is always safe: the action
//! is only tried sooner than its delay (work, never money).

use std::collections::HashMap;
use std::time::Instant;

/// Most actions one worker keeps put off (about 100 bytes each with an id
/// of 40 bytes, so about 6 MiB at most). Beyond it the entry due soonest
/// is forgotten.
pub const PUT_OFF_MAX: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Waiting {
    until: Instant,
    attempts: u32,
    after_error: bool,
    /// The last pass that listed the action (or recorded an attempt on it).
    pass: u64,
}

/// Put-off actions by id, with the pass of discovery that last saw each.
#[derive(Debug, Default)]
pub(crate) struct PutOff {
    entries: HashMap<String, Waiting>,
    pass: u64,
}

impl PutOff {
    /// Notes that the current pass listed `id`; whether it is still to be
    /// left alone at `now`.
    pub(crate) fn listed_and_waiting(&mut self, id: &str, now: Instant) -> bool {
        match self.entries.get_mut(id) {
            Some(e) => {
                e.pass = self.pass;
                e.until > now
            }
            None => false,
        }
    }

    /// Attempts made on `id` so far by this worker (0 if none was put off).
    pub(crate) fn attempts(&self, id: &str) -> u32 {
        self.entries.get(id).map_or(0, |e| e.attempts)
    }

    /// Leaves `id` alone until `until`, after its attempt number `attempts`
    /// (`after_error`: that attempt failed with an error, not blocked).
    pub(crate) fn put_off(&mut self, id: String, until: Instant, attempts: u32, after_error: bool) {
        if self.entries.len() >= PUT_OFF_MAX && !self.entries.contains_key(&id) {
            let soonest = self.entries.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| k.clone());
            if let Some(k) = soonest {
                self.entries.remove(&k);
            }
        }
        let entry = Waiting {
            until,
            attempts,
            after_error,
            pass: self.pass,
        };
        self.entries.insert(id, entry);
    }

    /// Forgets `id` (its last attempt settled it, or it is gone).
    pub(crate) fn clear(&mut self, id: &str) {
        self.entries.remove(id);
    }

    /// A pass of discovery is over: every entry it did not see goes, and
    /// the next pass begins.
    pub(crate) fn pass_over(&mut self) {
        let pass = self.pass;
        self.entries.retain(|_, e| e.pass == pass);
        self.pass += 1;
    }

    /// The ids whose last attempt here failed with an error.
    pub(crate) fn after_errors(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(_, e)| e.after_error)
            .map(|(k, _)| k.as_str())
    }

    /// How many entries are of blocked actions.
    pub(crate) fn blocked(&self) -> u64 {
        self.entries.values().filter(|e| !e.after_error).count() as u64
    }

    /// How many entries it holds.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_entry_its_pass_did_not_list_is_dropped_at_the_end_of_the_pass() {
        let mut p = PutOff::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        p.put_off("stays".into(), later, 1, false);
        p.put_off("gone".into(), later, 2, true);
        p.pass_over();
        assert_eq!(p.len(), 2, "both were recorded in the pass that ended");
        // The next pass lists only one of them.
        assert!(p.listed_and_waiting("stays", now));
        assert!(!p.listed_and_waiting("never-put-off", now));
        p.pass_over();
        assert_eq!(p.len(), 1);
        assert_eq!((p.attempts("stays"), p.attempts("gone")), (1, 0));
        assert_eq!(p.after_errors().count(), 0);
        assert!(!p.listed_and_waiting("stays", later), "due at its time");
        p.clear("stays");
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn the_table_never_holds_more_than_its_bound() {
        let mut p = PutOff::default();
        let now = Instant::now();
        for i in 0..PUT_OFF_MAX + 10 {
            let until = now + Duration::from_millis(1_000 + i as u64);
            p.put_off(format!("a{i}"), until, 1, i % 2 == 0);
        }
        assert_eq!(p.len(), PUT_OFF_MAX);
        // The ones due soonest were forgotten.
        assert_eq!(p.attempts("a0"), 0);
        assert_eq!(p.attempts(&format!("a{}", PUT_OFF_MAX + 9)), 1);
    }
}

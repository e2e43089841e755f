//! One pass of discovery over the queue's keys.

/// One pass over the queue's keys, in key order, starting after `start`
/// and wrapping around to the head up to `start` (inclusive), so that every
/// key present throughout the pass is visited once. Workers start their
/// passes at different keys, so processes rarely read the same pages at the
/// same time.
#[derive(Debug, Clone)]
pub(crate) struct Pass {
    start: Option<String>,
    cursor: Option<String>,
    wrapped: bool,
}

impl Pass {
    /// A pass beginning after `start` (at the head with `None`).
    pub(crate) fn new(start: Option<String>) -> Self {
        Self {
            cursor: start.clone(),
            wrapped: start.is_none(),
            start,
        }
    }

    /// The key to list after next.
    pub(crate) fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// Takes the next listed page (keys after `cursor()`, in order); returns
    /// the keys of this pass in it, and whether the pass is over.
    pub(crate) fn take(&mut self, page: Vec<String>) -> (Vec<String>, bool) {
        let Some(last) = page.last().cloned() else {
            if self.wrapped {
                return (page, true);
            }
            // End of the key space: go on from the head up to the start.
            self.wrapped = true;
            self.cursor = None;
            return (page, false);
        };
        match (&self.start, self.wrapped) {
            (Some(start), true) if last >= *start => {
                let keys = page.into_iter().filter(|k| k <= start).collect();
                (keys, true)
            }
            _ => {
                self.cursor = Some(last);
                (page, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::Pass;

    /// Runs one pass over `keys` with a lister that answers like the stores.
    fn visit(keys: &BTreeSet<String>, start: Option<String>, page_size: usize) -> Vec<String> {
        let mut pass = Pass::new(start);
        let mut visited = Vec::new();
        for _ in 0..10_000 {
            let page: Vec<String> = keys
                .iter()
                .filter(|k| pass.cursor().is_none_or(|c| k.as_str() > c))
                .take(page_size)
                .cloned()
                .collect();
            let (taken, over) = pass.take(page);
            visited.extend(taken);
            if over {
                return visited;
            }
        }
        panic!("the pass never ended");
    }

    proptest! {
        #[test]
        fn a_pass_visits_every_key_once_from_any_start(
            keys in proptest::collection::btree_set("[a-e]{1,3}", 0..40),
            start in proptest::option::of("[a-f]{0,3}"),
            pick in any::<proptest::sample::Index>(),
            use_key in any::<bool>(),
            page_size in 1usize..6,
        ) {
            // Start after a key of the set, or after an arbitrary string.
            let start = if use_key && !keys.is_empty() {
                keys.iter().nth(pick.index(keys.len())).cloned()
            } else {
                start
            };
            let mut visited = visit(&keys, start, page_size);
            visited.sort();
            let expected: Vec<String> = keys.iter().cloned().collect();
            prop_assert_eq!(visited, expected);
        }
    }

    #[test]
    fn a_pass_begins_after_its_start_and_wraps_to_the_head() {
        let keys: BTreeSet<String> = ["a", "b", "c", "d"].iter().map(|k| k.to_string()).collect();
        assert_eq!(visit(&keys, Some("b".into()), 2), ["c", "d", "a", "b"]);
        assert_eq!(visit(&keys, None, 3), ["a", "b", "c", "d"]);
        assert_eq!(visit(&BTreeSet::new(), Some("b".into()), 2), Vec::<String>::new());
    }
}

//! One pass of discovery: what to list next, and which listed keys to try.
//!
//! A pass first lists this member's share: one range scan of the shard
//! index over its shards ([`Listing::Share`]). If that page is short, it is
//! the member's whole share of the queue, read in one call whatever the
//! number of replicas, and the pass is over once those keys are tried. If
//! it is full (a backlog), the pass lists the member's shards one after
//! the other, page by page in key order ([`Listing::Shard`]), and tries
//! what they hold. Other members' keys are never read by a pass.
//!
//! Apart from passes, a member reads the head of the queue (its first
//! [`HEAD_KEYS`] keys, every shard) every quarter of its stale bound: a key
//! of another member's shard that stays there for the stale bound (a lease
//! and a membership timeout, 25 s by default) is tried by this member too.
//! Its owner is slow, stopped, or unknown to this member's view; the
//! claim's lock keeps the attempt safe whoever owns it.
//!
//! An "everything" pass (for `--exit-when-idle`, before it exits) lists
//! every key from the head and tries them all, as a lone worker would.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::membership::View;
use crate::domain::shard::shard_of;

/// Keys read at the head of the queue for the stale rule: few, since each
/// replica reads them, at a pace that does not grow with the actions.
pub(crate) const HEAD_KEYS: usize = 16;

/// What to list next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Listing {
    /// The first [`HEAD_KEYS`] keys of the whole queue, for the stale rule
    /// (read between listings of a pass, never by one).
    Head,
    /// One page of this member's share (every one of its shards).
    Share,
    /// A page of one shard, after a key.
    Shard {
        /// The shard.
        shard: u32,
        /// The last key listed before, if any.
        after: Option<String>,
    },
    /// A page of the whole queue, after a key.
    All {
        /// The last key listed before, if any.
        after: Option<String>,
    },
}

/// One pass over the queue.
#[derive(Debug)]
pub(crate) struct Pass {
    next: Option<Listing>,
    /// This member's shards not listed yet.
    shards: VecDeque<u32>,
    /// Whether it lists every key, whoever owns it.
    everything: bool,
    /// For an everything pass that began after a key: that key, and
    /// whether the listing has wrapped around to the head since.
    start: Option<String>,
    wrapped: bool,
}

impl Pass {
    /// A pass over this member's `shards` (in the order given): its share
    /// first, then shard by shard if the share is a backlog.
    pub(crate) fn new(shards: Vec<u32>) -> Self {
        Self {
            next: (!shards.is_empty()).then_some(Listing::Share),
            shards: shards.into(),
            everything: false,
            start: None,
            wrapped: false,
        }
    }

    /// A pass over every key, whoever owns it.
    pub(crate) fn everything() -> Self {
        Self::everything_from(None)
    }

    /// A pass over every key, beginning after `start` and wrapping around
    /// to the head up to it: how every worker discovered before the queue
    /// was divided (`WorkerConfig::partition` off), each from a random key.
    pub(crate) fn everything_from(start: Option<String>) -> Self {
        Self {
            next: Some(Listing::All { after: start.clone() }),
            shards: VecDeque::new(),
            everything: true,
            wrapped: start.is_none(),
            start,
        }
    }

    /// Whether this is an everything pass.
    pub(crate) fn is_everything(&self) -> bool {
        self.everything
    }

    /// What to list next; `None` once the pass is over.
    pub(crate) fn listing(&self) -> Option<&Listing> {
        self.next.as_ref()
    }

    /// Takes the page answered to [`Pass::listing`] (at most `page_size`
    /// keys) and returns the keys to try.
    pub(crate) fn take(&mut self, page: Vec<String>, page_size: usize) -> Vec<String> {
        let full = page.len() >= page_size;
        let Some(listing) = self.next.take() else {
            return Vec::new();
        };
        match listing {
            Listing::Head => Vec::new(),
            Listing::Share => {
                if full {
                    // A backlog: the shard listings bring these keys again,
                    // in order and page by page.
                    self.next_shard(None);
                    Vec::new()
                } else {
                    page
                }
            }
            Listing::Shard { shard, .. } => {
                if full {
                    self.next_shard(page.last().cloned().map(|after| (shard, after)));
                } else {
                    self.next_shard(None);
                }
                page
            }
            Listing::All { .. } => {
                let page = match (&self.start, self.wrapped) {
                    // Back at the start: the pass is over.
                    (Some(start), true) if page.last().is_some_and(|last| last >= start) => {
                        return page.into_iter().filter(|k| k <= start).collect();
                    }
                    _ => page,
                };
                if full {
                    self.next = Some(Listing::All {
                        after: page.last().cloned(),
                    });
                } else if !self.wrapped {
                    // The end of the keys: on from the head up to the start.
                    self.wrapped = true;
                    self.next = Some(Listing::All { after: None });
                }
                page
            }
        }
    }

    /// Goes on in `shard` after a key, or to the next shard (or ends).
    fn next_shard(&mut self, go_on: Option<(u32, String)>) {
        self.next = match go_on {
            Some((shard, after)) => Some(Listing::Shard {
                shard,
                after: Some(after),
            }),
            None => self
                .shards
                .pop_front()
                .map(|shard| Listing::Shard { shard, after: None }),
        };
    }
}

/// When this member first saw each key now at the head of the queue: a
/// key of another member's shard that stays there for `stale_after` is
/// tried by this member too. Bounded by [`HEAD_KEYS`]: keys no longer at
/// the head are forgotten.
#[derive(Debug)]
pub(crate) struct Sightings {
    first_seen: HashMap<String, Instant>,
    stale_after: Duration,
    /// When the head was last read.
    read: Option<Instant>,
}

impl Sightings {
    /// Keys become stale after `stale_after` at the head.
    pub(crate) fn new(stale_after: Duration) -> Self {
        Self {
            first_seen: HashMap::new(),
            stale_after,
            read: None,
        }
    }

    /// Whether the head is due to be read again: every quarter of the
    /// stale bound, so that a key is seen stale at most a quarter late.
    pub(crate) fn head_due(&self, now: Instant) -> bool {
        self.read
            .is_none_or(|at| now.saturating_duration_since(at) >= self.stale_after / 4)
    }

    /// Notes the keys at the head, forgetting those no longer there, and
    /// returns those of other members' shards (by `view`) that are stale.
    pub(crate) fn saw(&mut self, head: &[String], view: &View, now: Instant) -> Vec<String> {
        self.read = Some(now);
        let mut seen: HashMap<String, Instant> = HashMap::with_capacity(head.len());
        for key in head {
            let first = self.first_seen.get(key).copied().unwrap_or(now);
            seen.insert(key.clone(), first);
        }
        self.first_seen = seen;
        head.iter()
            .filter(|k| !view.owns(shard_of(k)) && self.is_stale(k, now))
            .cloned()
            .collect()
    }

    /// Whether `key` has been at the head for `stale_after`.
    fn is_stale(&self, key: &str, now: Instant) -> bool {
        self.first_seen
            .get(key)
            .is_some_and(|first| now.saturating_duration_since(*first) >= self.stale_after)
    }

    /// Keys remembered (at most [`HEAD_KEYS`]).
    pub(crate) fn len(&self) -> usize {
        self.first_seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4;

    fn view_of(place: usize, members: usize) -> View {
        let ids: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
        View::of(&ids[place].clone(), ids)
    }

    /// Keys of shards owned (`mine`) or not by member 0 of 2.
    fn keys(mine: bool, n: usize) -> Vec<String> {
        let view = view_of(0, 2);
        (0..)
            .map(|i| format!("action:k{i:04}"))
            .filter(|k| view.owns(shard_of(k)) == mine)
            .take(n)
            .collect()
    }

    #[test]
    fn a_short_share_is_all_of_it_in_one_listing() {
        let mine = keys(true, 3);
        let mut pass = Pass::new(view_of(0, 2).shards);
        assert_eq!(pass.listing(), Some(&Listing::Share));
        assert_eq!(pass.take(mine.clone(), PAGE), mine);
        assert_eq!(pass.listing(), None, "one listing: the pass is over");
        assert_eq!(Pass::new(Vec::new()).listing(), None, "no shard, nothing to list");
    }

    #[test]
    fn a_full_share_is_a_backlog_read_shard_by_shard() {
        let mut pass = Pass::new(vec![3, 5]);
        assert!(pass.take(keys(true, PAGE), PAGE).is_empty(), "the shards bring them");
        assert_eq!(pass.listing(), Some(&Listing::Shard { shard: 3, after: None }));
        let page: Vec<String> = (0..PAGE).map(|i| format!("k{i}")).collect();
        assert_eq!(pass.take(page.clone(), PAGE), page);
        assert_eq!(
            pass.listing(),
            Some(&Listing::Shard {
                shard: 3,
                after: Some("k3".into())
            })
        );
        pass.take(vec!["k9".into()], PAGE);
        assert_eq!(pass.listing(), Some(&Listing::Shard { shard: 5, after: None }));
        pass.take(Vec::new(), PAGE);
        assert_eq!(pass.listing(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_of_another_shard_is_tried_once_it_stays_at_the_head() {
        let view = view_of(0, 2);
        let stale_after = Duration::from_secs(24);
        let mut sightings = Sightings::new(stale_after);
        let (mine, theirs) = (keys(true, 1), keys(false, 1));
        let head: Vec<String> = [mine.clone(), theirs.clone()].concat();
        let t0 = Instant::now();
        assert!(sightings.head_due(t0));
        assert!(sightings.saw(&head, &view, t0).is_empty());
        assert!(!sightings.head_due(t0 + stale_after / 8));
        assert!(sightings.head_due(t0 + stale_after / 4));
        let later = t0 + stale_after;
        assert_eq!(
            sightings.saw(&head, &view, later),
            theirs,
            "its own key is never stale to it"
        );
        // A key that left the head is forgotten, and starts over if it is back.
        sightings.saw(&mine, &view, later);
        assert_eq!(sightings.len(), 1);
        assert!(sightings.saw(&head, &view, later).is_empty());
    }

    #[test]
    fn an_everything_pass_reads_every_key_in_pages() {
        let mut pass = Pass::everything();
        let all: Vec<String> = [keys(true, 3), keys(false, 3)].concat();
        let first: Vec<String> = all[..PAGE].to_vec();
        assert_eq!(pass.take(first.clone(), PAGE), first);
        assert_eq!(
            pass.listing(),
            Some(&Listing::All {
                after: first.last().cloned()
            })
        );
        let rest: Vec<String> = all[PAGE..].to_vec();
        assert_eq!(pass.take(rest.clone(), PAGE), rest);
        assert_eq!(pass.listing(), None);
        assert!(pass.is_everything(), "still known for one once over");
    }

    #[test]
    fn an_everything_pass_from_a_key_wraps_around_to_it() {
        let all: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
        let mut pass = Pass::everything_from(Some("k3".into()));
        let mut seen = Vec::new();
        while let Some(listing) = pass.listing().cloned() {
            let Listing::All { after } = listing else {
                panic!("an everything pass lists all keys");
            };
            let page: Vec<String> = all
                .iter()
                .filter(|k| after.as_ref().is_none_or(|a| *k > a))
                .take(PAGE)
                .cloned()
                .collect();
            seen.extend(pass.take(page, PAGE));
        }
        assert_eq!(seen, ["k4", "k5", "k0", "k1", "k2", "k3"]);
    }
}

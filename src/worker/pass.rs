//! One pass of discovery: what to list next, and which listed keys to try.
//!
//! A pass first lists the head of the queue (one page, every shard). If
//! that page is short, it is the whole queue: the pass tries this member's
//! own keys in it and is over, one listing whatever the number of
//! replicas. If it is full (a backlog), the pass lists this member's shards
//! one after the other, page by page, each from its head, and tries what
//! they hold: other members' keys are never read. Either way, a key of
//! another member's shard that has stayed at the head of the queue for
//! [`Sightings::stale_after`] is tried too: its owner is slow, stopped, or
//! unknown to this member's view, and the claim's lock keeps the attempt
//! safe whoever owns it.
//!
//! An "everything" pass (for `--exit-when-idle`, before it exits) lists
//! every key from the head and tries them all, as a lone worker would.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::membership::View;
use crate::domain::shard::shard_of;

/// What to list next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Listing {
    /// The first page of the whole queue.
    Head,
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
    /// Keys listed in all (the pass's cost in keys read).
    pub(crate) keys_read: u64,
}

impl Pass {
    /// A pass over the head (when `with_head`), then this member's
    /// `shards` in the order given.
    pub(crate) fn new(shards: Vec<u32>, with_head: bool) -> Self {
        let mut shards: VecDeque<u32> = shards.into();
        let next = if with_head {
            Some(Listing::Head)
        } else {
            shards.pop_front().map(|shard| Listing::Shard { shard, after: None })
        };
        Self {
            next,
            shards,
            everything: false,
            start: None,
            wrapped: false,
            keys_read: 0,
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
            keys_read: 0,
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
    pub(crate) fn take(
        &mut self,
        page: Vec<String>,
        page_size: usize,
        view: &View,
        sightings: &mut Sightings,
        now: Instant,
    ) -> Vec<String> {
        self.keys_read += page.len() as u64;
        let full = page.len() >= page_size;
        let Some(listing) = self.next.take() else {
            return Vec::new();
        };
        match listing {
            Listing::Head => {
                sightings.saw(&page, full, now);
                let keys = page
                    .into_iter()
                    .filter(|k| {
                        let own = view.owns(shard_of(k));
                        // A full head page is a backlog: the shard listings
                        // bring this member's own keys.
                        (own && !full) || (!own && sightings.is_stale(k, now))
                    })
                    .collect();
                if full {
                    self.next_shard(None);
                }
                keys
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

/// How often the head of the queue is read while it shows a backlog:
/// often enough to see keys that stay there for a stale bound (a lease and
/// a membership timeout, 25 s by default), rarely enough that the head's
/// page costs little beside the shards' own listings.
pub(crate) const HEAD_RECHECK: Duration = Duration::from_secs(5);

/// When this member first saw each key now at the head of the queue: a
/// key of another member's shard that stays there for `stale_after` is
/// tried by this member too. Bounded by one page: keys no longer at the
/// head are forgotten.
#[derive(Debug)]
pub(crate) struct Sightings {
    first_seen: HashMap<String, Instant>,
    stale_after: Duration,
    /// When the head was last read, and whether it was full (a backlog).
    read: Option<(Instant, bool)>,
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

    /// Whether the next pass reads the head: always, but while a backlog
    /// was seen less than [`HEAD_RECHECK`] ago (its shards bring this
    /// member's keys then).
    pub(crate) fn head_due(&self, now: Instant) -> bool {
        self.read
            .is_none_or(|(at, full)| !full || now.saturating_duration_since(at) >= HEAD_RECHECK)
    }

    /// Notes the keys of a head page, forgetting those no longer in it.
    pub(crate) fn saw(&mut self, head: &[String], full: bool, now: Instant) {
        self.read = Some((now, full));
        let mut seen: HashMap<String, Instant> = HashMap::with_capacity(head.len());
        for key in head {
            let first = self.first_seen.get(key).copied().unwrap_or(now);
            seen.insert(key.clone(), first);
        }
        self.first_seen = seen;
    }

    /// Whether `key` has been at the head for `stale_after`.
    pub(crate) fn is_stale(&self, key: &str, now: Instant) -> bool {
        self.first_seen
            .get(key)
            .is_some_and(|first| now.saturating_duration_since(*first) >= self.stale_after)
    }

    /// Keys remembered (at most one page).
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

    #[tokio::test(start_paused = true)]
    async fn a_short_head_is_the_whole_queue_and_only_own_keys_are_tried() {
        let view = view_of(0, 2);
        let mut sightings = Sightings::new(Duration::from_secs(25));
        let (mine, theirs) = (keys(true, 1), keys(false, 2));
        let head: Vec<String> = [mine.clone(), theirs].concat();
        let mut pass = Pass::new(view.shards.clone(), true);
        assert_eq!(pass.listing(), Some(&Listing::Head));
        let tried = pass.take(head, PAGE, &view, &mut sightings, Instant::now());
        assert_eq!(tried, mine);
        assert_eq!(pass.listing(), None, "one listing: the pass is over");
        assert_eq!(pass.keys_read, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_head_is_a_backlog_read_shard_by_shard() {
        let view = view_of(1, 2);
        let mut sightings = Sightings::new(Duration::from_secs(25));
        let mut pass = Pass::new(vec![3, 5], true);
        let head = keys(true, PAGE);
        assert!(pass.take(head, PAGE, &view, &mut sightings, Instant::now()).is_empty());
        assert_eq!(pass.listing(), Some(&Listing::Shard { shard: 3, after: None }));
        let page: Vec<String> = (0..PAGE).map(|i| format!("k{i}")).collect();
        assert_eq!(
            pass.take(page.clone(), PAGE, &view, &mut sightings, Instant::now()),
            page
        );
        assert_eq!(
            pass.listing(),
            Some(&Listing::Shard {
                shard: 3,
                after: Some("k3".into())
            })
        );
        pass.take(vec!["k9".into()], PAGE, &view, &mut sightings, Instant::now());
        assert_eq!(pass.listing(), Some(&Listing::Shard { shard: 5, after: None }));
        pass.take(Vec::new(), PAGE, &view, &mut sightings, Instant::now());
        assert_eq!(pass.listing(), None);
        // While the backlog lasts, the next passes go straight to the
        // shards, and read the head again after a while.
        assert!(!sightings.head_due(Instant::now()));
        assert_eq!(
            Pass::new(vec![7], sightings.head_due(Instant::now())).listing(),
            Some(&Listing::Shard { shard: 7, after: None })
        );
        assert!(sightings.head_due(Instant::now() + HEAD_RECHECK));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_of_another_shard_is_tried_once_it_stays_at_the_head() {
        let view = view_of(0, 2);
        let stale_after = Duration::from_secs(25);
        let mut sightings = Sightings::new(stale_after);
        let (mine, theirs) = (keys(true, 1), keys(false, 1));
        let head: Vec<String> = [mine.clone(), theirs.clone()].concat();
        let t0 = Instant::now();
        assert_eq!(
            Pass::new(vec![], true).take(head.clone(), PAGE, &view, &mut sightings, t0),
            mine
        );
        let later = t0 + stale_after;
        assert_eq!(
            Pass::new(vec![], true).take(head.clone(), PAGE, &view, &mut sightings, later),
            head,
            "the other member's key waited too long"
        );
        // A key that left the head is forgotten, and starts over if it is back.
        Pass::new(vec![], true).take(mine.clone(), PAGE, &view, &mut sightings, later);
        assert_eq!(sightings.len(), 1);
        assert_eq!(
            Pass::new(vec![], true).take(head, PAGE, &view, &mut sightings, later),
            mine
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_everything_pass_reads_every_key_in_pages() {
        let view = view_of(0, 2);
        let mut sightings = Sightings::new(Duration::from_secs(25));
        let mut pass = Pass::everything();
        let all: Vec<String> = [keys(true, 3), keys(false, 3)].concat();
        let first: Vec<String> = all[..PAGE].to_vec();
        assert_eq!(
            pass.take(first.clone(), PAGE, &view, &mut sightings, Instant::now()),
            first
        );
        assert_eq!(
            pass.listing(),
            Some(&Listing::All {
                after: first.last().cloned()
            })
        );
        let rest: Vec<String> = all[PAGE..].to_vec();
        assert_eq!(
            pass.take(rest.clone(), PAGE, &view, &mut sightings, Instant::now()),
            rest
        );
        assert_eq!(pass.listing(), None);
        assert!(pass.is_everything(), "still known for one once over");
    }

    #[tokio::test(start_paused = true)]
    async fn an_everything_pass_from_a_key_wraps_around_to_it() {
        let view = view_of(0, 1);
        let mut sightings = Sightings::new(Duration::from_secs(25));
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
            seen.extend(pass.take(page, PAGE, &view, &mut sightings, Instant::now()));
        }
        assert_eq!(seen, ["k4", "k5", "k0", "k1", "k2", "k3"]);
    }
}

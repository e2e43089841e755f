//! The membership: which replicas are alive, so that they divide the
//! queue's shards (see `domain::shard`) instead of racing for the same
//! actions.
//!
//! One document in the queue bucket ([`MEMBERS_KEY`]) carries one xattr
//! path per member ([`MEMBERS_XATTR`]`.<id>`): its heartbeat, a counter it
//! raises every fifth of the timeout from its discovery loop, with who it
//! is and the view it holds. Every member reads the document at the same
//! pace (one read and one sub-document write per interval, whatever the
//! number of members), and takes for alive the members whose counter it
//! saw change within [`MEMBER_TIMEOUT`] by its own clock: no two hosts'
//! clocks are ever compared, except to judge an entry first seen, whose
//! own time says whether it was already silent (a skewed clock only delays
//! that judgement by one timeout). The same idea as the heartbeat
//! documents of Trendyol's go-dcp consumer groups, in one document so that
//! a read costs the same for 2 members as for 64.
//!
//! Nothing here decides safety. The lock of a claim arbitrates every
//! action; a member whose view is stale, wrong or missing claims actions
//! another also claims, which costs a refused claim, never money. A member
//! that cannot read the membership for longer than [`MEMBER_TIMEOUT`] takes
//! every shard as its own, as the others, no longer seeing its heartbeat,
//! divide its shards between them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::domain::keys::{ACTION_PREFIX, BLOCKED_XATTR, MEMBERS_KEY, MEMBERS_XATTR};
use crate::domain::shard::owned_shards;
use crate::ops::names as m;
use crate::store::{Bucket, Census, Store, StoreError, StoreResult};

/// A member whose heartbeat has not changed for this long is taken for
/// dead, and its shards go to the others, unless configured otherwise
/// (`member_timeout_ms`).
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeats per timeout: a member is taken for dead after this many
/// missed heartbeats.
pub const HEARTBEATS_PER_TIMEOUT: u32 = 5;
/// A member silent for this long is removed from the document, so that it
/// lists only recent members (five times the longest timeout).
pub const MEMBER_FORGET_AFTER: Duration = Duration::from_secs(300);
/// Most members the document lists (about 200 bytes each: 200 KiB at
/// most, within Couchbase's 1 MiB of user xattrs per document). A replica
/// that finds it full is not listed, and works as if alone: safe, and
/// wasteful only for it.
pub const MEMBERS_MAX: usize = 1_024;
/// While the membership cannot be read, it is logged at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What a member publishes about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Raised at every heartbeat: others judge liveness by seeing it change.
    pub beat: u64,
    /// The member's host name (in Kubernetes, the pod's name).
    #[serde(default)]
    pub host: String,
    /// Its process id.
    #[serde(default)]
    pub pid: u32,
    /// Its ledgerd version.
    #[serde(default)]
    pub version: String,
    /// When it started, by its own clock (Unix ms).
    #[serde(default)]
    pub started_ms: u64,
    /// When it wrote this heartbeat, by its own clock (Unix ms).
    #[serde(default)]
    pub at_ms: u64,
    /// The fingerprint of the live members it saw ([`View::id`]).
    #[serde(default)]
    pub view: u32,
    /// How many shards it owns in that view.
    #[serde(default)]
    pub shards: u32,
    /// Actions it held claimed when it wrote this heartbeat: summed over
    /// the live members, the queue's locked actions where the store cannot
    /// count locks itself (Couchbase: see [`queue_census`]).
    #[serde(default)]
    pub in_flight: u64,
}

/// One member's view of the membership: who is alive, and its shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Live member ids, sorted (this member among them).
    pub members: Vec<String>,
    /// This member's shards, a contiguous range (see `domain::shard`).
    pub range: std::ops::Range<u32>,
    /// The same shards, ascending.
    pub shards: Vec<u32>,
    /// A fingerprint of `members`: equal views have equal ids.
    pub id: u32,
    /// Distinct views the live members last published (1: they agree).
    pub distinct: usize,
}

impl View {
    /// The view of `me` among the live `members` (sorted, `me` included).
    pub fn of(me: &str, members: Vec<String>) -> Self {
        let place = members.iter().position(|m| m == me).unwrap_or(0);
        let range = owned_shards(place, members.len());
        let shards = range.clone().collect();
        let digest = crate::domain::keys::sha256_hex(members.join("\n").as_bytes());
        let id = u32::from_str_radix(&digest[..8], 16).unwrap_or(0);
        Self {
            members,
            range,
            shards,
            id,
            distinct: 1,
        }
    }

    /// Whether this member owns `shard`.
    pub fn owns(&self, shard: u32) -> bool {
        self.range.contains(&shard)
    }
}

/// When this member last saw another's heartbeat change.
#[derive(Debug, Clone, Copy)]
struct Sighting {
    beat: u64,
    changed: Instant,
}

/// The members this one has seen, judged by its own clock. Bounded by the
/// document: an id no longer listed is dropped.
#[derive(Debug)]
pub struct Roster {
    seen: HashMap<String, Sighting>,
    timeout: Duration,
}

/// What one reading of the document says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Live members, sorted, `me` included.
    pub live: Vec<String>,
    /// Members silent for [`MEMBER_FORGET_AFTER`]: to remove.
    pub forget: Vec<String>,
    /// The views the live members (other than `me`) published.
    pub views: Vec<u32>,
}

impl Roster {
    /// A roster that takes a member silent for `timeout` for dead.
    pub fn new(timeout: Duration) -> Self {
        Self {
            seen: HashMap::new(),
            timeout,
        }
    }

    /// Reads the members' entries at `now` (`now_ms` by the wall clock).
    pub fn observe(&mut self, me: &str, entries: &Map<String, Value>, now: Instant, now_ms: u64) -> Reading {
        let mut reading = Reading {
            live: vec![me.to_string()],
            forget: Vec::new(),
            views: Vec::new(),
        };
        self.seen.retain(|id, _| entries.contains_key(id));
        for (id, entry) in entries {
            if id == me {
                continue;
            }
            // An entry that is not a heartbeat (a newer release's, or
            // damaged) is left alone: not counted, not removed.
            let Ok(beat) = serde_json::from_value::<Heartbeat>(entry.clone()) else {
                continue;
            };
            let sighting = self.seen.entry(id.clone()).or_insert_with(|| {
                // First seen: as silent as its own time says, at most long
                // enough to be forgotten.
                let silent = Duration::from_millis(now_ms.saturating_sub(beat.at_ms)).min(MEMBER_FORGET_AFTER);
                Sighting {
                    beat: beat.beat,
                    changed: now.checked_sub(silent).unwrap_or(now),
                }
            });
            if sighting.beat != beat.beat {
                *sighting = Sighting {
                    beat: beat.beat,
                    changed: now,
                };
            }
            let silent = now.saturating_duration_since(sighting.changed);
            if silent < self.timeout {
                reading.live.push(id.clone());
                reading.views.push(beat.view);
            } else if silent >= MEMBER_FORGET_AFTER {
                reading.forget.push(id.clone());
            }
        }
        reading.live.sort();
        reading
    }

    /// Members remembered (at most as many as the document lists).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// This replica's membership: its heartbeat, and its view of the others.
pub struct Membership {
    store: Arc<dyn Store>,
    me: String,
    timeout: Duration,
    started_ms: u64,
    beat: u64,
    roster: Roster,
    view: View,
    /// When the next exchange is due.
    due: Option<Instant>,
    /// When an exchange last worked.
    worked: Option<Instant>,
    /// When a failure was last logged.
    failure_logged: Option<Instant>,
    /// Actions this member holds claimed (published in its heartbeat).
    in_flight: u64,
}

impl Membership {
    /// A new member with a random id, alone until its first exchange,
    /// that takes another for dead after `timeout` without a heartbeat.
    pub fn new(store: Arc<dyn Store>, timeout: Duration) -> Self {
        Self::with_id(store, timeout, format!("{:016x}", rand::random::<u64>()))
    }

    /// A new member with the id `me` (a path component: letters, digits).
    pub fn with_id(store: Arc<dyn Store>, timeout: Duration, me: String) -> Self {
        let view = View::of(&me, vec![me.clone()]);
        Self {
            store,
            me,
            timeout,
            started_ms: crate::protocol::records::now_ms(),
            beat: 0,
            roster: Roster::new(timeout),
            view,
            due: None,
            worked: None,
            failure_logged: None,
            in_flight: 0,
        }
    }

    /// Notes how many actions this member holds claimed, for its next
    /// heartbeat.
    pub fn note_in_flight(&mut self, n: usize) {
        self.in_flight = u64::try_from(n).unwrap_or(u64::MAX);
    }

    /// This member's id.
    pub fn id(&self) -> &str {
        &self.me
    }

    /// The view in force.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// How often this member writes its heartbeat.
    pub fn interval(&self) -> Duration {
        self.timeout / HEARTBEATS_PER_TIMEOUT
    }

    /// Whether a heartbeat is due (then [`Membership::refresh`] exchanges).
    pub fn due(&self) -> bool {
        self.due.is_none_or(|due| Instant::now() >= due)
    }

    /// Members remembered by the roster (bounded by the document).
    pub fn remembered(&self) -> usize {
        self.roster.len()
    }

    /// Writes the heartbeat and reads the others', if an interval has
    /// passed since the last time; returns the view in force.
    pub async fn refresh(&mut self) -> &View {
        let now = Instant::now();
        if self.due.is_some_and(|due| now < due) {
            return &self.view;
        }
        self.due = Some(now + self.interval());
        match self.exchange(now).await {
            Ok(view) => {
                if self.worked.is_none_or(|at| now.duration_since(at) >= MEMBER_TIMEOUT)
                    || view.members != self.view.members
                {
                    tracing::info!(
                        member = self.me.as_str(),
                        members = view.members.len(),
                        shards = view.shards.len(),
                        "membership: view changed"
                    );
                }
                self.view = view;
                self.worked = Some(now);
                self.failure_logged = None;
            }
            Err(e) => self.failed(&e, now),
        }
        metrics::gauge!(m::MEMBERS).set(self.view.members.len() as f64);
        metrics::gauge!(m::SHARDS_OWNED).set(self.view.shards.len() as f64);
        metrics::gauge!(m::MEMBERSHIP_VIEWS).set(self.view.distinct as f64);
        &self.view
    }

    /// Notes a failed exchange: after the timeout without one that
    /// worked, this member works alone (every shard is its own).
    fn failed(&mut self, e: &StoreError, now: Instant) {
        metrics::counter!(m::MEMBERSHIP_FAILURES).increment(1);
        let lapsed = self.worked.is_none_or(|at| now.duration_since(at) >= self.timeout);
        if lapsed && self.view.members.len() > 1 {
            self.view = View::of(&self.me, vec![self.me.clone()]);
        }
        // A fault of the whole store is the worker's to report (once per
        // interval, with what to do); it pauses claiming meanwhile.
        if e.fault().is_none()
            && self
                .failure_logged
                .is_none_or(|at| now.duration_since(at) >= FAILURE_LOG_INTERVAL)
        {
            self.failure_logged = Some(now);
            tracing::warn!(
                member = self.me.as_str(),
                error = %e,
                alone = lapsed,
                "membership: the members document cannot be read or written; this replica {} (safe: claims stay arbitrated by their locks; logged once a minute while it lasts)",
                if lapsed { "now claims every shard" } else { "keeps its last view" }
            );
        }
    }

    /// One read of the document and one write of this member's heartbeat.
    /// The write carries no CAS: members write their own paths, which the
    /// server applies one after the other, so no member's heartbeat ever
    /// fails because another's was written meanwhile.
    async fn exchange(&mut self, now: Instant) -> StoreResult<View> {
        let doc = match self
            .store
            .get_with_xattrs(Bucket::Queue, MEMBERS_KEY, &[MEMBERS_XATTR])
            .await
        {
            Err(StoreError::NotFound) => {
                match self.store.insert(Bucket::Queue, MEMBERS_KEY, b"{}").await {
                    Ok(_) | Err(StoreError::Exists) => {}
                    Err(e) => return Err(e),
                }
                self.store
                    .get_with_xattrs(Bucket::Queue, MEMBERS_KEY, &[MEMBERS_XATTR])
                    .await?
            }
            read => read?,
        };
        let entries = doc
            .xattrs
            .first()
            .and_then(|v| v.as_ref())
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let now_ms = crate::protocol::records::now_ms();
        let reading = self.roster.observe(&self.me, &entries, now, now_ms);
        let mut view = View::of(&self.me, reading.live);
        let mut views = reading.views;
        views.push(view.id);
        views.sort_unstable();
        views.dedup();
        view.distinct = views.len();
        if entries.len() >= MEMBERS_MAX && !entries.contains_key(&self.me) {
            tracing::warn!(
                member = self.me.as_str(),
                listed = entries.len(),
                "membership: the members document is full ({MEMBERS_MAX}); this replica is not listed and works as if alone"
            );
            return Ok(View::of(&self.me, vec![self.me.clone()]));
        }
        self.beat += 1;
        let heartbeat = self.heartbeat(&view, now_ms);
        let path = format!("{MEMBERS_XATTR}.{}", self.me);
        self.store
            .set_xattr(Bucket::Queue, MEMBERS_KEY, &path, &heartbeat, None)
            .await?;
        for id in reading.forget {
            // Best effort: another member may have removed it first.
            let path = format!("{MEMBERS_XATTR}.{id}");
            let _ = self.store.remove_xattr(Bucket::Queue, MEMBERS_KEY, &path).await;
        }
        Ok(view)
    }

    fn heartbeat(&self, view: &View, now_ms: u64) -> Value {
        let id = crate::telemetry::identity();
        serde_json::to_value(Heartbeat {
            beat: self.beat,
            host: id.host.clone(),
            pid: id.pid,
            version: id.version.to_string(),
            started_ms: self.started_ms,
            at_ms: now_ms,
            view: view.id,
            shards: u32::try_from(view.shards.len()).unwrap_or(u32::MAX),
            in_flight: self.in_flight,
        })
        .unwrap_or(Value::Null)
    }

    /// Removes this member's heartbeat, so that the others take its
    /// shards at once instead of after the timeout (best effort).
    pub async fn leave(&mut self) {
        let path = format!("{MEMBERS_XATTR}.{}", self.me);
        if let Err(e) = self.store.remove_xattr(Bucket::Queue, MEMBERS_KEY, &path).await {
            tracing::debug!(error = %e, "membership: leaving failed; the others notice after the timeout");
        }
    }
}

/// The queued actions by state (see [`Store::census`]): where the store
/// cannot see locks (Couchbase), the locked ones are the actions the live
/// members said they held claimed in their last heartbeats (a member is
/// live if its heartbeat, by its own clock, was written within the longest
/// timeout a member may be configured with,
/// [`MEMBER_TIMEOUT_MS_MAX`](crate::config::MEMBER_TIMEOUT_MS_MAX)), at
/// most the actions not blocked. What the members say is a heartbeat old: a gauge,
/// not an account.
/// `holding_none`: a member that holds nothing now (a worker about to
/// exit), whatever its last heartbeat said: it is not counted.
pub async fn queue_census(
    store: &dyn Store,
    probe_max: Option<u64>,
    holding_none: Option<&str>,
) -> StoreResult<Census> {
    let mut census = store
        .census(Bucket::Queue, ACTION_PREFIX, BLOCKED_XATTR, probe_max)
        .await?;
    if census.locked.is_none() && census.marked.is_some() {
        let mut members = listed(store).await?;
        members.retain(|(id, _)| Some(id.as_str()) != holding_none);
        census.locked = Some(held_by_members(&census, &members, crate::protocol::records::now_ms()));
    }
    Ok(census)
}

/// The actions the live members said they held claimed at `now_ms` (see
/// [`queue_census`]), at most the queued actions not blocked.
pub(crate) fn held_by_members(census: &Census, members: &[(String, Heartbeat)], now_ms: u64) -> u64 {
    let held: u64 = members
        .iter()
        .filter(|(_, h)| now_ms.saturating_sub(h.at_ms) <= crate::config::MEMBER_TIMEOUT_MS_MAX)
        .map(|(_, h)| h.in_flight)
        .fold(0, u64::saturating_add);
    held.min(census.total.saturating_sub(census.marked.unwrap_or(0)))
}

/// The members listed in the document, with their heartbeats, for
/// operators (`ledgerd status`, `ledgerd queue`). Entries that are not
/// heartbeats are left out.
pub async fn listed(store: &dyn Store) -> StoreResult<Vec<(String, Heartbeat)>> {
    let doc = match store
        .get_with_xattrs(Bucket::Queue, MEMBERS_KEY, &[MEMBERS_XATTR])
        .await
    {
        Ok(doc) => doc,
        Err(StoreError::NotFound) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut members: Vec<(String, Heartbeat)> = doc
        .xattrs
        .first()
        .and_then(|v| v.as_ref())
        .and_then(Value::as_object)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|(id, v)| Some((id.clone(), serde_json::from_value(v.clone()).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    members.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(members)
}

#[cfg(test)]
mod tests;

//! Fair turns at SQLite's write lock between processes on one file.
//!
//! SQLite's own busy handler sleeps longer and longer (up to 100 ms) while
//! another connection holds the write lock; a process whose writer commits
//! batch after batch releases the lock for microseconds at a time, so a
//! waiter that polls every 100 ms can starve for seconds. Here a waiting
//! writer polls every millisecond and, after 50 ms of waiting, raises its hand:
//! it writes its process id into `<database>-writers`. A writer that has
//! just committed looks at that file (one `stat`), and while a hand of
//! another process is raised it pauses for a millisecond or two before
//! taking it again, so the waiter gets its turn.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How long a writer waits for the lock before it raises its hand. Shorter
/// waits turn the lock over more often, and each turn costs the holder a
/// pause and both a smaller batch: 50 ms kept three processes within 92%
/// of one process's throughput, where 3 ms lost a quarter (BENCHMARKS.md).
const WAIT_BEFORE_HAND: Duration = Duration::from_millis(50);
/// How often a waiting writer writes its hand again.
const HAND_REFRESH: Duration = Duration::from_millis(50);
/// How long a raised hand counts.
const HAND_VALID: Duration = Duration::from_millis(200);
/// Shortest and longest pause of a writer that sees a raised hand: long
/// enough for a waiter polling every millisecond to take the lock.
const YIELD_MIN: Duration = Duration::from_millis(1);
const YIELD_MAX: Duration = Duration::from_millis(2);

/// The file a waiting writer raises its hand in.
pub(super) fn hand_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-writers");
    PathBuf::from(name)
}

/// This thread's waiting state (the busy handler is a plain function,
/// called on the thread that waits).
struct Waiting {
    hand: PathBuf,
    timeout: Duration,
    since: Instant,
    raised: Option<Instant>,
}

thread_local! {
    static WAITING: RefCell<Option<Waiting>> = const { RefCell::new(None) };
}

/// Installs the fair busy handler on the writer's connection; `timeout` is
/// how long it waits for the lock in all before giving up (`SQLITE_BUSY`).
pub(super) fn install(conn: &rusqlite::Connection, database: &Path, timeout: Duration) -> rusqlite::Result<()> {
    let hand = hand_path(database);
    WAITING.with(|w| {
        *w.borrow_mut() = Some(Waiting {
            hand,
            timeout,
            since: Instant::now(),
            raised: None,
        })
    });
    conn.busy_handler(Some(busy))
}

/// SQLite's callback while the lock is held elsewhere: `polls` counts the
/// calls for this wait, from 0. True: try again.
fn busy(polls: i32) -> bool {
    WAITING.with(|w| {
        let mut w = w.borrow_mut();
        let Some(w) = w.as_mut() else {
            return false;
        };
        let now = Instant::now();
        if polls == 0 {
            w.since = now;
            w.raised = None;
        }
        if now.duration_since(w.since) >= w.timeout {
            return false;
        }
        if now.duration_since(w.since) >= WAIT_BEFORE_HAND
            && w.raised.is_none_or(|at| now.duration_since(at) >= HAND_REFRESH)
        {
            // Best effort: a hand that cannot be raised only loses fairness.
            let _ = std::fs::write(&w.hand, std::process::id().to_string());
            w.raised = Some(now);
        }
        std::thread::sleep(Duration::from_millis(1));
        true
    })
}

/// Whether another process's writer has its hand raised at `hand` now.
pub(super) fn other_hand_raised(hand: &Path, now: SystemTime) -> bool {
    let Ok(meta) = std::fs::metadata(hand) else {
        return false;
    };
    let recent = meta
        .modified()
        .ok()
        .and_then(|at| now.duration_since(at).ok())
        .is_some_and(|age| age <= HAND_VALID);
    if !recent {
        return false;
    }
    std::fs::read_to_string(hand).is_ok_and(|pid| pid.trim() != std::process::id().to_string())
}

/// How long a writer that held the lock for `held` pauses for a waiter.
pub(super) fn pause_for(held: Duration) -> Duration {
    held.clamp(YIELD_MIN, YIELD_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_counts_only_when_recent_and_of_another_process() {
        let dir = tempfile::tempdir().expect("dir");
        let hand = hand_path(&dir.path().join("ledgerd.db"));
        assert!(hand.ends_with("ledgerd.db-writers"));
        let now = SystemTime::now();
        assert!(!other_hand_raised(&hand, now), "no file, no hand");
        std::fs::write(&hand, "1").expect("write");
        assert!(other_hand_raised(&hand, SystemTime::now()));
        assert!(!other_hand_raised(&hand, SystemTime::now() + HAND_VALID * 2), "stale");
        std::fs::write(&hand, std::process::id().to_string()).expect("write");
        assert!(!other_hand_raised(&hand, SystemTime::now()), "our own hand");
    }

    #[test]
    fn a_waiting_writer_raises_its_hand_and_gives_up_at_its_timeout() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("ledgerd.db");
        let a = rusqlite::Connection::open(&db).expect("open");
        a.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x)")
            .expect("schema");
        let b = rusqlite::Connection::open(&db).expect("open");
        install(&b, &db, Duration::from_millis(1_000)).expect("install");
        a.execute_batch("BEGIN IMMEDIATE").expect("a holds the lock");
        let started = Instant::now();
        let err = b.execute_batch("BEGIN IMMEDIATE").expect_err("b waits, then gives up");
        assert!(err.to_string().contains("locked"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(1_000));
        assert_eq!(
            std::fs::read_to_string(hand_path(&db)).expect("hand").trim(),
            std::process::id().to_string()
        );
        a.execute_batch("COMMIT").expect("commit");
        b.execute_batch("BEGIN IMMEDIATE; COMMIT").expect("b gets its turn");
    }

    #[test]
    fn pauses_are_bounded() {
        assert_eq!(pause_for(Duration::ZERO), YIELD_MIN);
        assert_eq!(pause_for(Duration::from_micros(1_500)), Duration::from_micros(1_500));
        assert_eq!(pause_for(Duration::from_secs(1)), YIELD_MAX);
    }
}

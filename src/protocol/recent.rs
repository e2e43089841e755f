//! The actions a process knows completed: a bounded set, shared by its
//! workers, whose markers any later write to their wallets may remove.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Most action ids remembered as completed.
pub const RECENT_COMPLETED_MAX: usize = 4_096;

/// Actions this process knows to be completed: their markers may go, and go
/// in the next write each of their wallets gets anyway (no extra write).
#[derive(Debug, Default)]
pub struct RecentlyCompleted(Mutex<(HashSet<String>, VecDeque<String>)>);

impl RecentlyCompleted {
    /// Remembers that `id`'s record is completed (only ever called after
    /// reading or writing it so), forgetting the oldest beyond the limit.
    pub fn insert(&self, id: &str) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *guard;
        if set.insert(id.to_string()) {
            order.push_back(id.to_string());
            if order.len() > RECENT_COMPLETED_MAX {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }

    /// Whether `id` is known completed.
    pub fn contains(&self, id: &str) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0.contains(id)
    }

    /// How many ids it remembers (at most [`RECENT_COMPLETED_MAX`]).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

//! Paging through the keys under a prefix.

use super::{Bucket, Store, StoreResult, KEY_PAGE};

/// Pages through the keys under a prefix, in key order: each page starts
/// after the last key of the one before, so keys added or removed meanwhile
/// never make it repeat or skip one that stays.
pub struct KeyPages<'a, S: Store + ?Sized> {
    store: &'a S,
    bucket: Bucket,
    prefix: &'a str,
    after: Option<String>,
    page: usize,
    done: bool,
}

impl<'a, S: Store + ?Sized> KeyPages<'a, S> {
    /// Pages of [`KEY_PAGE`] keys under `prefix`.
    pub fn new(store: &'a S, bucket: Bucket, prefix: &'a str) -> Self {
        Self::sized(store, bucket, prefix, KEY_PAGE)
    }

    /// Pages of `page` keys under `prefix`.
    pub fn sized(store: &'a S, bucket: Bucket, prefix: &'a str, page: usize) -> Self {
        Self {
            store,
            bucket,
            prefix,
            after: None,
            page: page.max(1),
            done: false,
        }
    }

    /// The next page, or `None` after the last.
    pub async fn next_page(&mut self) -> StoreResult<Option<Vec<String>>> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .list_keys(self.bucket, self.prefix, self.after.as_deref(), self.page)
            .await?;
        self.done = page.len() < self.page;
        self.after = page.last().cloned();
        Ok(if page.is_empty() { None } else { Some(page) })
    }
}

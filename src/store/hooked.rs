//! A store wrapper that calls a hook around every operation: the one
//! mechanism behind fault injection (`faulty.rs`) and metrics (`ops`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::{
    Bucket, Cas, Census, Doc, DocTimes, DocWithXattrs, GroupResults, GroupWrite, Store, StoreError, StoreResult,
    WriteGroup, WriteMode,
};

/// Which operation is about to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `get`.
    Get,
    /// `get_with_xattrs`.
    GetWithXattrs,
    /// `get_and_lock`.
    GetAndLock,
    /// `unlock`.
    Unlock,
    /// `insert`.
    Insert,
    /// `replace`.
    Replace,
    /// `remove`.
    Remove,
    /// `write_with_xattrs`.
    WriteWithXattrs,
    /// `remove_xattr`.
    RemoveXattr,
    /// `set_xattr`.
    SetXattr,
    /// `list_keys`.
    ListKeys,
    /// `count_keys`.
    CountKeys,
}

impl OpKind {
    /// Every kind.
    pub const ALL: [OpKind; 12] = [
        OpKind::Get,
        OpKind::GetWithXattrs,
        OpKind::GetAndLock,
        OpKind::Unlock,
        OpKind::Insert,
        OpKind::Replace,
        OpKind::Remove,
        OpKind::WriteWithXattrs,
        OpKind::RemoveXattr,
        OpKind::SetXattr,
        OpKind::ListKeys,
        OpKind::CountKeys,
    ];

    /// True for operations that change a document.
    pub fn is_write(self) -> bool {
        !matches!(
            self,
            OpKind::Get | OpKind::GetWithXattrs | OpKind::ListKeys | OpKind::CountKeys
        )
    }

    /// A short name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::GetWithXattrs => "get_with_xattrs",
            OpKind::GetAndLock => "get_and_lock",
            OpKind::Unlock => "unlock",
            OpKind::Insert => "insert",
            OpKind::Replace => "replace",
            OpKind::Remove => "remove",
            OpKind::WriteWithXattrs => "write_with_xattrs",
            OpKind::RemoveXattr => "remove_xattr",
            OpKind::SetXattr => "set_xattr",
            OpKind::ListKeys => "list_keys",
            OpKind::CountKeys => "count_keys",
        }
    }
}

/// What the wrapper does with one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Run it normally.
    Pass,
    /// Fail with this error without running it.
    FailBefore(StoreError),
    /// Run it, then report this error instead of its result.
    FailAfter(StoreError),
}

/// Called around every operation of a [`Hooked`] store.
#[async_trait]
pub trait Hook: Send + Sync {
    /// Before the operation: run it, or fail it before or after. It may
    /// also wait (tests use that to stop a worker at a chosen point).
    async fn before(&self, _kind: OpKind, _key: &str) -> Fault {
        Fault::Pass
    }
    /// Before a readiness probe ([`Store::ping`]): `Some` fails it with
    /// that error instead of asking the inner store.
    async fn before_ping(&self) -> Option<StoreError> {
        None
    }
    /// After the operation, with the error reported to the caller, if any.
    fn after(&self, _kind: OpKind, _key: &str, _error: Option<&StoreError>) {}
    /// True for a hook that only watches (`before` always passes, and
    /// nothing depends on when it is called): a write group then goes to
    /// the inner store whole, and the hook sees each write that ran, stage
    /// by stage, afterwards. Otherwise the group runs write by write
    /// through the hook (as Couchbase would run it), so that faults can be
    /// injected between any two writes.
    fn watches_only(&self) -> bool {
        false
    }
    /// Before a write group goes whole to the inner store (a hook that
    /// [watches only](Hook::watches_only)): a hook may wait here, as a
    /// server's answer would take time.
    async fn before_group(&self, _group: &WriteGroup) {}
    /// After the `stage`th stage of such a group ran: each write that
    /// ran, with the error reported for it, if any. By default,
    /// [`Hook::after`] for each.
    fn after_stage(&self, _stage: usize, ran: &[(OpKind, &str, Option<&StoreError>)]) {
        for (kind, key, error) in ran {
            self.after(*kind, key, *error);
        }
    }
    /// After such a group, every stage of it that ran.
    fn after_group(&self) {}
}

/// The store call a write of a group is.
pub fn group_kind(write: &GroupWrite) -> OpKind {
    match write {
        GroupWrite::Insert { .. } => OpKind::Insert,
        GroupWrite::Replace { .. } => OpKind::Replace,
        GroupWrite::Remove { .. } => OpKind::Remove,
        GroupWrite::WriteWithXattrs { .. } => OpKind::WriteWithXattrs,
    }
}

/// A store whose every operation passes through a [`Hook`].
pub struct Hooked<H> {
    inner: Arc<dyn Store>,
    /// The hook.
    pub hook: H,
}

impl<H: Hook> Hooked<H> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, hook: H) -> Self {
        Self { inner, hook }
    }
}

macro_rules! hooked {
    ($self:ident, $kind:expr, $key:expr, $call:expr) => {{
        let result = match $self.hook.before($kind, $key).await {
            Fault::Pass => $call.await,
            Fault::FailBefore(e) => Err(e),
            Fault::FailAfter(e) => {
                let _ = $call.await;
                Err(e)
            }
        };
        $self.hook.after($kind, $key, result.as_ref().err());
        result
    }};
}

#[async_trait]
impl<H: Hook> Store for Hooked<H> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn init(&self) -> StoreResult<()> {
        self.inner.init().await
    }
    async fn check(&self, depth: crate::store::check::Depth) -> Vec<crate::store::check::Finding> {
        self.inner.check(depth).await
    }
    async fn ping(&self) -> StoreResult<()> {
        match self.hook.before_ping().await {
            Some(e) => Err(e),
            None => self.inner.ping().await,
        }
    }
    async fn get(&self, bucket: Bucket, key: &str) -> StoreResult<Doc> {
        hooked!(self, OpKind::Get, key, self.inner.get(bucket, key))
    }
    async fn get_with_xattrs(&self, bucket: Bucket, key: &str, paths: &[&str]) -> StoreResult<DocWithXattrs> {
        hooked!(
            self,
            OpKind::GetWithXattrs,
            key,
            self.inner.get_with_xattrs(bucket, key, paths)
        )
    }
    async fn get_and_lock(&self, bucket: Bucket, key: &str, lock: Duration) -> StoreResult<Doc> {
        hooked!(
            self,
            OpKind::GetAndLock,
            key,
            self.inner.get_and_lock(bucket, key, lock)
        )
    }
    async fn unlock(&self, bucket: Bucket, key: &str, cas: Cas) -> StoreResult<()> {
        hooked!(self, OpKind::Unlock, key, self.inner.unlock(bucket, key, cas))
    }
    async fn insert(&self, bucket: Bucket, key: &str, body: &[u8]) -> StoreResult<Cas> {
        hooked!(self, OpKind::Insert, key, self.inner.insert(bucket, key, body))
    }
    async fn replace(&self, bucket: Bucket, key: &str, body: &[u8], cas: Cas) -> StoreResult<Cas> {
        hooked!(self, OpKind::Replace, key, self.inner.replace(bucket, key, body, cas))
    }
    async fn remove(&self, bucket: Bucket, key: &str, cas: Option<Cas>) -> StoreResult<()> {
        hooked!(self, OpKind::Remove, key, self.inner.remove(bucket, key, cas))
    }
    async fn write_with_xattrs(
        &self,
        bucket: Bucket,
        key: &str,
        body: &[u8],
        xattrs: &[(&str, Option<Value>)],
        mode: WriteMode,
    ) -> StoreResult<Cas> {
        hooked!(
            self,
            OpKind::WriteWithXattrs,
            key,
            self.inner.write_with_xattrs(bucket, key, body, xattrs, mode)
        )
    }
    async fn write_group(&self, group: &WriteGroup) -> GroupResults {
        if !self.hook.watches_only() {
            return super::write_in_stages(self, group).await;
        }
        self.hook.before_group(group).await;
        let results = self.inner.write_group(group).await;
        for (i, (stage, done)) in group.iter().zip(&results).enumerate() {
            let ran: Vec<(OpKind, &str, Option<&StoreError>)> = stage
                .iter()
                .zip(done)
                .filter_map(|(w, r)| r.as_ref().map(|r| (group_kind(w), w.key(), r.as_ref().err())))
                .collect();
            if !ran.is_empty() {
                self.hook.after_stage(i, &ran);
            }
        }
        self.hook.after_group();
        results
    }
    async fn remove_xattr(&self, bucket: Bucket, key: &str, path: &str) -> StoreResult<bool> {
        hooked!(
            self,
            OpKind::RemoveXattr,
            key,
            self.inner.remove_xattr(bucket, key, path)
        )
    }
    async fn set_xattr(
        &self,
        bucket: Bucket,
        key: &str,
        path: &str,
        value: &Value,
        cas: Option<Cas>,
    ) -> StoreResult<Cas> {
        hooked!(
            self,
            OpKind::SetXattr,
            key,
            self.inner.set_xattr(bucket, key, path, value, cas)
        )
    }
    // Operator views, not protocol steps: passed through unhooked.
    async fn doc_times(&self, bucket: Bucket, key: &str) -> StoreResult<DocTimes> {
        self.inner.doc_times(bucket, key).await
    }
    async fn census(&self, bucket: Bucket, prefix: &str, path: &str, probe_max: Option<u64>) -> StoreResult<Census> {
        self.inner.census(bucket, prefix, path, probe_max).await
    }
    async fn list_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        hooked!(
            self,
            OpKind::ListKeys,
            prefix,
            self.inner.list_keys(bucket, prefix, after, limit)
        )
    }
    async fn list_shard_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        shard: u32,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        hooked!(
            self,
            OpKind::ListKeys,
            prefix,
            self.inner.list_shard_keys(bucket, prefix, shard, after, limit)
        )
    }

    async fn wallet_records(&self, hash: &str, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        hooked!(
            self,
            OpKind::ListKeys,
            hash,
            self.inner.wallet_records(hash, after, limit)
        )
    }

    async fn list_shard_range(
        &self,
        bucket: Bucket,
        prefix: &str,
        shards: std::ops::Range<u32>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        hooked!(
            self,
            OpKind::ListKeys,
            prefix,
            self.inner.list_shard_range(bucket, prefix, shards.clone(), limit)
        )
    }

    async fn count_keys(&self, bucket: Bucket, prefix: &str) -> StoreResult<u64> {
        hooked!(self, OpKind::CountKeys, prefix, self.inner.count_keys(bucket, prefix))
    }

    async fn changed_since(
        &self,
        bucket: Bucket,
        prefix: &str,
        since: Cas,
        after: Option<(Cas, String)>,
        limit: usize,
    ) -> StoreResult<Vec<(Cas, String)>> {
        hooked!(
            self,
            OpKind::ListKeys,
            prefix,
            self.inner.changed_since(bucket, prefix, since, after.clone(), limit)
        )
    }
}

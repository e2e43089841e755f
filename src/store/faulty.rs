//! A store wrapper that injects faults, for crash tests and the simulator.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::{Bucket, Cas, Doc, DocWithXattrs, Store, StoreError, StoreResult, WriteMode};

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
    /// `list_keys`.
    ListKeys,
    /// `count_keys`.
    CountKeys,
}

impl OpKind {
    /// True for operations that change a document.
    pub fn is_write(self) -> bool {
        !matches!(
            self,
            OpKind::Get | OpKind::GetWithXattrs | OpKind::ListKeys | OpKind::CountKeys
        )
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

/// Decides the fault for each operation: `(sequence number, kind, key)`.
pub type FaultPlan = Box<dyn FnMut(u64, OpKind, &str) -> Fault + Send>;

/// Wraps a store and consults a [`FaultPlan`] before every operation.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    plan: Mutex<(u64, FaultPlan)>,
}

impl FaultyStore {
    /// Wraps `inner` with `plan`.
    pub fn new(inner: Arc<dyn Store>, plan: FaultPlan) -> Self {
        Self {
            inner,
            plan: Mutex::new((0, plan)),
        }
    }

    /// A store that works for `ops` operations and then fails every one,
    /// as a process that died at that point would.
    pub fn crash_after(inner: Arc<dyn Store>, ops: u64) -> Self {
        Self::new(
            inner,
            Box::new(move |seq, _, _| {
                if seq < ops {
                    Fault::Pass
                } else {
                    Fault::FailBefore(StoreError::Permanent("injected crash".into()))
                }
            }),
        )
    }

    fn decide(&self, kind: OpKind, key: &str) -> Fault {
        let mut guard = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        let seq = guard.0;
        guard.0 += 1;
        (guard.1)(seq, kind, key)
    }

    /// How many operations have been attempted.
    pub fn ops(&self) -> u64 {
        self.plan.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

macro_rules! faulty {
    ($self:ident, $kind:expr, $key:expr, $call:expr) => {{
        match $self.decide($kind, $key) {
            Fault::Pass => $call.await,
            Fault::FailBefore(e) => Err(e),
            Fault::FailAfter(e) => {
                let _ = $call.await;
                Err(e)
            }
        }
    }};
}

#[async_trait]
impl Store for FaultyStore {
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
    async fn init(&self) -> StoreResult<()> {
        self.inner.init().await
    }
    async fn get(&self, bucket: Bucket, key: &str) -> StoreResult<Doc> {
        faulty!(self, OpKind::Get, key, self.inner.get(bucket, key))
    }
    async fn get_with_xattrs(
        &self,
        bucket: Bucket,
        key: &str,
        paths: &[&str],
    ) -> StoreResult<DocWithXattrs> {
        faulty!(
            self,
            OpKind::GetWithXattrs,
            key,
            self.inner.get_with_xattrs(bucket, key, paths)
        )
    }
    async fn get_and_lock(&self, bucket: Bucket, key: &str, lock: Duration) -> StoreResult<Doc> {
        faulty!(
            self,
            OpKind::GetAndLock,
            key,
            self.inner.get_and_lock(bucket, key, lock)
        )
    }
    async fn unlock(&self, bucket: Bucket, key: &str, cas: Cas) -> StoreResult<()> {
        faulty!(
            self,
            OpKind::Unlock,
            key,
            self.inner.unlock(bucket, key, cas)
        )
    }
    async fn insert(&self, bucket: Bucket, key: &str, body: &[u8]) -> StoreResult<Cas> {
        faulty!(
            self,
            OpKind::Insert,
            key,
            self.inner.insert(bucket, key, body)
        )
    }
    async fn replace(&self, bucket: Bucket, key: &str, body: &[u8], cas: Cas) -> StoreResult<Cas> {
        faulty!(
            self,
            OpKind::Replace,
            key,
            self.inner.replace(bucket, key, body, cas)
        )
    }
    async fn remove(&self, bucket: Bucket, key: &str, cas: Option<Cas>) -> StoreResult<()> {
        faulty!(
            self,
            OpKind::Remove,
            key,
            self.inner.remove(bucket, key, cas)
        )
    }
    async fn write_with_xattrs(
        &self,
        bucket: Bucket,
        key: &str,
        body: &[u8],
        xattrs: &[(&str, Value)],
        mode: WriteMode,
    ) -> StoreResult<Cas> {
        faulty!(
            self,
            OpKind::WriteWithXattrs,
            key,
            self.inner
                .write_with_xattrs(bucket, key, body, xattrs, mode)
        )
    }
    async fn remove_xattr(&self, bucket: Bucket, key: &str, path: &str) -> StoreResult<bool> {
        faulty!(
            self,
            OpKind::RemoveXattr,
            key,
            self.inner.remove_xattr(bucket, key, path)
        )
    }
    async fn list_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        faulty!(
            self,
            OpKind::ListKeys,
            prefix,
            self.inner.list_keys(bucket, prefix, after, limit)
        )
    }
    async fn count_keys(&self, bucket: Bucket, prefix: &str) -> StoreResult<u64> {
        faulty!(
            self,
            OpKind::CountKeys,
            prefix,
            self.inner.count_keys(bucket, prefix)
        )
    }
}

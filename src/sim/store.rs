//! The simulator's view of the store for one worker: it reorders, delays,
//! fails and kills, all decided by the seed, and watches for removals that
//! come before their credits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::Value;

use crate::domain::keys::{failed_key, tx_key, ACTION_PREFIX};
use crate::protocol::records::{TxRecord, TxState};
use crate::store::hooked::OpKind;
use crate::store::memory::MemoryStore;
use crate::store::{Bucket, Cas, Doc, DocWithXattrs, Store, StoreError, StoreResult, WriteMode};

/// A deliberate protocol defect, for showing that the checker catches one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// No defect.
    None,
    /// Workers never see idempotency markers (as if they skipped the check).
    SkipMarkerCheck,
    /// Actions are removed as soon as they are claimed (delete first).
    RemoveOnClaim,
}

/// Fault probabilities, in parts per thousand of operations.
#[derive(Debug, Clone, Copy)]
pub struct FaultRates {
    /// The operation fails and did not happen.
    pub transient: u32,
    /// A write happens but reports an ambiguous error.
    pub ambiguous_applied: u32,
    /// A write does not happen but reports an ambiguous error.
    pub ambiguous_lost: u32,
    /// The lock clock jumps past the lease.
    pub clock_jump: u32,
}

/// State shared by every worker's view in one simulation.
pub struct Shared {
    /// The one store every worker reads and writes.
    pub inner: MemoryStore,
    /// The store's lock clock, in virtual milliseconds.
    pub clock: Arc<AtomicU64>,
    /// The seed's random stream; operations happen in a deterministic order.
    pub rng: Mutex<StdRng>,
    /// What happened, one line per operation.
    pub trace: Mutex<Vec<String>>,
    /// Invariant violations seen while running.
    pub violations: Mutex<Vec<String>>,
    /// The defect under test.
    pub sabotage: Sabotage,
    /// The most xattr specs any write carried (what the seed exercised).
    pub xattr_specs_max: std::sync::atomic::AtomicUsize,
    /// Writes that added markers and removed others in one mutation.
    pub pruning_writes: AtomicU64,
    /// Writes that replaced the whole markers object in one spec.
    pub whole_writes: AtomicU64,
}

impl Shared {
    pub(crate) fn roll(&self, below_per_mille: u32) -> bool {
        self.rng.lock().unwrap_or_else(|p| p.into_inner()).gen_range(0..1000) < below_per_mille
    }

    pub(crate) fn gen_range(&self, range: std::ops::Range<u64>) -> u64 {
        self.rng.lock().unwrap_or_else(|p| p.into_inner()).gen_range(range)
    }

    pub(crate) fn trace(&self, line: String) {
        self.trace.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    pub(crate) fn violation(&self, line: String) {
        self.trace(format!("VIOLATION {line}"));
        self.violations.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    /// Checks, as `action:<id>` is removed, that its credits are committed
    /// (see [`removal_violation`]).
    fn check_removal(&self, key: &str, removed_body: &[u8]) {
        if let Some(v) = removal_violation(&self.inner, key, removed_body) {
            self.violation(v);
        }
    }
}

/// Whether removing `action:<id>` (whose body was `removed_body`) now breaks
/// an invariant: its credits must be committed (its record completed, or committed with every credit's marker on
/// its wallet: the completion goes beside the removal) or that it is
/// preserved as failed.
pub(crate) fn removal_violation(inner: &MemoryStore, key: &str, removed_body: &[u8]) -> Option<String> {
    let id = key.strip_prefix(ACTION_PREFIX)?;
    // A wallet someone else wrote whole (the chaos's corruption) lost
    // its markers with its body: what it held is not knowable there.
    let marked = |hash: &str| {
        let corrupted = inner
            .peek(Bucket::Ledger, &crate::domain::keys::balance_key(hash))
            .is_some_and(|body| crate::domain::Units::parse_balance(&body).is_err());
        corrupted || super::checker::carries_marker(inner, hash, id)
    };
    let completed = inner
        .peek(Bucket::Ledger, &tx_key(id))
        .and_then(|b| TxRecord::parse(id, &b).ok())
        .is_some_and(|tx| tx.state == TxState::Completed || tx.credits.iter().all(|c| marked(&c.hash)));
    let preserved = inner.peek(Bucket::Queue, &failed_key(id)).is_some_and(|b| {
        crate::protocol::dead_letters::DeadLetters::parse(&b).holds(&crate::domain::keys::sha256_hex(removed_body))
    });
    (!completed && !preserved).then(|| format!("{key} removed before its credits were completed or it was preserved"))
}

/// One worker's faulty view of the shared store.
pub struct SimStore {
    shared: Arc<Shared>,
    name: String,
    /// Whether this view injects faults (the final recovery worker does not).
    faulty: bool,
    /// The operation at which this worker stops dead, if it does.
    dies_at: Option<u64>,
    ops: AtomicU64,
}

impl SimStore {
    /// A view for worker `name`.
    pub fn new(shared: Arc<Shared>, name: String, faulty: bool, dies_at: Option<u64>) -> Self {
        Self {
            shared,
            name,
            faulty,
            dies_at,
            ops: AtomicU64::new(0),
        }
    }

    /// Runs before every operation: reorder, move time, maybe die, maybe fail.
    async fn before(&self, kind: OpKind, key: &str) -> Result<Option<StoreError>, StoreError> {
        let s = &self.shared;
        let seq = self.ops.fetch_add(1, Ordering::SeqCst);
        if self.faulty {
            for _ in 0..s.gen_range(0..3) {
                tokio::task::yield_now().await;
            }
            let step = s.gen_range(0..20);
            let jump = if s.roll(FAULTS.clock_jump) { 1_500 } else { 0 };
            s.clock.fetch_add(step + jump, Ordering::SeqCst);
            if self.dies_at == Some(seq) {
                s.trace(format!("{} dies before {kind:?} {key}", self.name));
                std::future::pending::<()>().await;
            }
            if s.roll(FAULTS.transient) {
                s.trace(format!("{} {kind:?} {key} -> injected transient", self.name));
                return Err(StoreError::Transient("injected".into()));
            }
            if kind.is_write() && s.roll(FAULTS.ambiguous_lost) {
                s.trace(format!(
                    "{} {kind:?} {key} -> injected ambiguous (not applied)",
                    self.name
                ));
                return Err(StoreError::Ambiguous("injected, not applied".into()));
            }
            if kind.is_write() && s.roll(FAULTS.ambiguous_applied) {
                return Ok(Some(StoreError::Ambiguous("injected, applied".into())));
            }
        }
        Ok(None)
    }

    fn after<T: Brief>(
        &self,
        kind: OpKind,
        key: &str,
        result: StoreResult<T>,
        lie: Option<StoreError>,
    ) -> StoreResult<T> {
        let shown = match &result {
            Ok(v) => format!("ok {}", v.brief()),
            Err(e) => format!("err {e}"),
        };
        if let Err(StoreError::LimitExceeded(why)) = &result {
            self.shared.violation(format!(
                "{} {kind:?} {key}: a request beyond the store's limits: {why}",
                self.name
            ));
        }
        let shown: String = shown.chars().take(120).collect();
        match lie {
            Some(e) => {
                self.shared
                    .trace(format!("{} {kind:?} {key} -> {shown}, reported as {e}", self.name));
                Err(e)
            }
            None => {
                self.shared.trace(format!("{} {kind:?} {key} -> {shown}", self.name));
                result
            }
        }
    }
}

/// A short, readable rendering of an operation's result for the trace.
trait Brief {
    fn brief(&self) -> String;
}

impl Brief for Doc {
    fn brief(&self) -> String {
        format!("cas {} {}", self.cas, String::from_utf8_lossy(&self.body))
    }
}

impl Brief for DocWithXattrs {
    fn brief(&self) -> String {
        let x: Vec<String> = self
            .xattrs
            .iter()
            .map(|v| v.as_ref().map_or("-".into(), Value::to_string))
            .collect();
        format!(
            "cas {} {} xattrs {}",
            self.cas,
            String::from_utf8_lossy(&self.body),
            x.join(" ")
        )
    }
}

impl Brief for Vec<String> {
    fn brief(&self) -> String {
        format!("{} keys", self.len())
    }
}

macro_rules! brief_debug {
    ($($t:ty),*) => {$(impl Brief for $t { fn brief(&self) -> String { format!("{self:?}") } })*};
}
brief_debug!(u64, bool, ());

/// The fault rates of every simulation.
pub const FAULTS: FaultRates = FaultRates {
    transient: 30,
    ambiguous_applied: 40,
    ambiguous_lost: 20,
    clock_jump: 10,
};

macro_rules! op {
    ($self:ident, $kind:expr, $key:expr, $call:expr) => {{
        let lie = $self.before($kind, $key).await?;
        let result = $call;
        $self.after($kind, $key, result, lie)
    }};
}

#[async_trait]
impl Store for SimStore {
    fn describe(&self) -> String {
        format!("sim({})", self.name)
    }
    async fn init(&self) -> StoreResult<()> {
        Ok(())
    }
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
    async fn get(&self, bucket: Bucket, key: &str) -> StoreResult<Doc> {
        op!(self, OpKind::Get, key, self.shared.inner.get(bucket, key).await)
    }
    async fn get_with_xattrs(&self, bucket: Bucket, key: &str, paths: &[&str]) -> StoreResult<DocWithXattrs> {
        op!(self, OpKind::GetWithXattrs, key, {
            let mut r = self.shared.inner.get_with_xattrs(bucket, key, paths).await;
            if self.shared.sabotage == Sabotage::SkipMarkerCheck {
                if let Ok(doc) = &mut r {
                    doc.xattrs.iter_mut().for_each(|x| *x = None);
                }
            }
            r
        })
    }
    async fn get_and_lock(&self, bucket: Bucket, key: &str, lock: Duration) -> StoreResult<Doc> {
        op!(self, OpKind::GetAndLock, key, {
            let r = self.shared.inner.get_and_lock(bucket, key, lock).await;
            if let (Ok(doc), Sabotage::RemoveOnClaim) = (&r, self.shared.sabotage) {
                self.shared.check_removal(key, &doc.body);
                let _ = self.shared.inner.remove(bucket, key, Some(doc.cas)).await;
            }
            r
        })
    }
    async fn unlock(&self, bucket: Bucket, key: &str, cas: Cas) -> StoreResult<()> {
        op!(
            self,
            OpKind::Unlock,
            key,
            self.shared.inner.unlock(bucket, key, cas).await
        )
    }
    async fn insert(&self, bucket: Bucket, key: &str, body: &[u8]) -> StoreResult<Cas> {
        op!(
            self,
            OpKind::Insert,
            key,
            self.shared.inner.insert(bucket, key, body).await
        )
    }
    async fn replace(&self, bucket: Bucket, key: &str, body: &[u8], cas: Cas) -> StoreResult<Cas> {
        op!(
            self,
            OpKind::Replace,
            key,
            self.shared.inner.replace(bucket, key, body, cas).await
        )
    }
    async fn remove(&self, bucket: Bucket, key: &str, cas: Option<Cas>) -> StoreResult<()> {
        op!(self, OpKind::Remove, key, {
            let body = self.shared.inner.peek(bucket, key);
            let r = self.shared.inner.remove(bucket, key, cas).await;
            if let (Ok(()), Bucket::Queue, Some(body)) = (&r, bucket, body) {
                self.shared.check_removal(key, &body);
            }
            r
        })
    }
    async fn write_with_xattrs(
        &self,
        bucket: Bucket,
        key: &str,
        body: &[u8],
        xattrs: &[(&str, Option<Value>)],
        mode: WriteMode,
    ) -> StoreResult<Cas> {
        let s = &self.shared;
        s.xattr_specs_max.fetch_max(xattrs.len(), Ordering::SeqCst);
        if xattrs.iter().any(|(_, v)| v.is_none()) && xattrs.iter().any(|(_, v)| v.is_some()) {
            s.pruning_writes.fetch_add(1, Ordering::SeqCst);
        }
        if matches!(xattrs, [(path, Some(_))] if *path == crate::domain::keys::MARKERS_XATTR) {
            s.whole_writes.fetch_add(1, Ordering::SeqCst);
        }
        op!(
            self,
            OpKind::WriteWithXattrs,
            key,
            s.inner.write_with_xattrs(bucket, key, body, xattrs, mode).await
        )
    }
    async fn remove_xattr(&self, bucket: Bucket, key: &str, path: &str) -> StoreResult<bool> {
        op!(
            self,
            OpKind::RemoveXattr,
            key,
            self.shared.inner.remove_xattr(bucket, key, path).await
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
        op!(
            self,
            OpKind::SetXattr,
            key,
            self.shared.inner.set_xattr(bucket, key, path, value, cas).await
        )
    }
    async fn list_keys(
        &self,
        bucket: Bucket,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        op!(
            self,
            OpKind::ListKeys,
            prefix,
            self.shared.inner.list_keys(bucket, prefix, after, limit).await
        )
    }
    async fn count_keys(&self, bucket: Bucket, prefix: &str) -> StoreResult<u64> {
        op!(
            self,
            OpKind::CountKeys,
            prefix,
            self.shared.inner.count_keys(bucket, prefix).await
        )
    }
}

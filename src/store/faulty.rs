//! Fault injection by plan, for crash tests: a [`Hooked`] store whose hook
//! asks a function what to do with each operation.

use std::sync::{Arc, Mutex};

pub use super::hooked::{Fault, OpKind};
use super::hooked::{Hook, Hooked};
use super::{Store, StoreError};

/// Decides the fault for each operation: `(sequence number, kind, key)`.
pub type FaultPlan = Box<dyn FnMut(u64, OpKind, &str) -> Fault + Send>;

/// The hook that consults a [`FaultPlan`] and counts operations.
pub struct PlanHook(Mutex<(u64, FaultPlan)>);

#[async_trait::async_trait]
impl Hook for PlanHook {
    async fn before(&self, kind: OpKind, key: &str) -> Fault {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let seq = guard.0;
        guard.0 += 1;
        (guard.1)(seq, kind, key)
    }
}

/// A store that injects the faults its plan decides.
pub type FaultyStore = Hooked<PlanHook>;

impl Hooked<PlanHook> {
    /// Wraps `inner` with `plan`.
    pub fn with_plan(inner: Arc<dyn Store>, plan: FaultPlan) -> Self {
        Hooked::new(inner, PlanHook(Mutex::new((0, plan))))
    }

    /// A store that works for `ops` operations and then fails every one,
    /// as a process that died at that point would.
    pub fn crash_after(inner: Arc<dyn Store>, ops: u64) -> Self {
        Self::with_plan(
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

    /// How many operations have been attempted.
    pub fn ops(&self) -> u64 {
        self.hook.0.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

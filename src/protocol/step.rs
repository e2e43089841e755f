//! One single-document step: retried on transient errors with capped,
//! jittered backoff. Reading a transaction record is one.

use std::time::Duration;

use super::outcome::{ProtocolError, Result};
use super::records::TxRecord;
use crate::domain::keys::tx_key;
use crate::store::{Bucket, Cas, Store, StoreError};

/// Times a single-document step is retried on ambiguous or transient errors
/// before the attempt gives up (the action is then retried later).
pub(crate) const STEP_ATTEMPTS_MAX: u32 = 6;

/// Reads `tx:<id>` with its CAS, checking the record.
pub async fn read_tx(store: &dyn Store, id: &str) -> Result<Option<(TxRecord, Cas)>> {
    let key = tx_key(id);
    let doc = match retry(|| store.get(Bucket::Ledger, &key)).await {
        Ok(doc) => doc,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let tx = TxRecord::parse(id, &doc.body).map_err(|e| ProtocolError::CorruptRecord(format!("tx:{id}: {e}")))?;
    Ok(Some((tx, doc.cas)))
}

/// Runs an idempotent single-document step again on transient errors. Writes
/// that are not idempotent handle `Ambiguous` themselves, so only reads
/// and removals (whose repetition is safe) come through here.
pub(crate) async fn retry<T, F, Fut>(mut op: F) -> std::result::Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(StoreError::Transient(_)) if attempt + 1 < STEP_ATTEMPTS_MAX => {
                attempt += 1;
                count_retry("transient");
                tokio::time::sleep(backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

thread_local! {
    /// The jitter source of this thread: entropy unless seeded, so that the
    /// simulator (one thread, one seed) replays exactly.
    static JITTER: std::cell::RefCell<Option<rand::rngs::StdRng>> = const { std::cell::RefCell::new(None) };
}

/// Makes this thread's backoff jitter a function of `seed`.
pub fn seed_jitter(seed: u64) {
    use rand::SeedableRng;
    JITTER.with(|j| *j.borrow_mut() = Some(rand::rngs::StdRng::seed_from_u64(seed)));
}

/// Counts one retried step, by the kind of error that caused it.
pub(crate) fn count_retry(kind: &'static str) {
    metrics::counter!(crate::ops::names::RETRIES, "kind" => kind).increment(1);
}

/// A draw from this thread's jitter source: seeded in the simulator (so
/// that its runs replay exactly), else the thread's entropy.
fn jitter<T>(draw: impl FnOnce(&mut dyn rand::RngCore) -> T) -> T {
    JITTER.with(|j| match j.borrow_mut().as_mut() {
        Some(rng) => draw(rng),
        None => draw(&mut rand::thread_rng()),
    })
}

/// A fraction in [0, 1) drawn from this thread's jitter source.
pub(crate) fn jitter_fraction() -> f64 {
    use rand::Rng;
    jitter(|rng| rng.gen_range(0.0..1.0))
}

/// Capped exponential backoff with full jitter.
pub fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let cap_ms: u64 = 5u64.saturating_mul(1 << attempt.min(8)).min(1_000);
    Duration::from_millis(jitter(|rng| rng.gen_range(1..=cap_ms)))
}

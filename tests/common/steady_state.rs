//! Production's steady-state steps, as one scenario any store runs: the
//! Couchbase suite runs it on a server (where one is available), and the
//! SQLite suite runs it on a file, so that the scenario itself is known
//! to work. A wallet's last credit came from another process, whose marker
//! is over a minute old; a new process credits the wallet:
//! - the old marker is pruned in the credit's own CAS write (its record
//!   read beside the insert), never by a removal of its own;
//! - the record's insert answers for the record (no read of it first);
//! - the record is completed and the action removed, in one stage.

use std::sync::{Arc, Mutex};

use ledgerd::domain::keys::{action_key, balance_key, tx_key, MARKERS_XATTR};
use ledgerd::domain::{MarkerName, Markers};
use ledgerd::protocol::{process_action, Options, Outcome};
use ledgerd::store::faulty::FaultyStore;
use ledgerd::store::hooked::{Fault, OpKind};
use ledgerd::store::{Bucket, Store, StoreError};

/// Two minutes: past the age at which a worker checks another process's
/// marker (a minute).
const OLD_MS: u64 = 120_000;

/// The markers on `wallet`: action ids, sorted.
async fn markers(store: &dyn Store, wallet: &str) -> Vec<String> {
    let doc = store
        .get_with_xattrs(Bucket::Ledger, &balance_key(wallet), &[MARKERS_XATTR])
        .await
        .expect("read the wallet");
    Markers::from_xattr(doc.xattrs.into_iter().next().flatten()).actions()
}

/// Runs the scenario on `store` with ids and wallets prefixed by `run`
/// (unique per run: a shared server keeps what earlier runs left).
pub async fn old_foreign_markers_go_in_the_credit_s_own_write(store: Arc<dyn Store>, run: &str) {
    let wallet = format!("{run}-w");
    let enqueue = |id: String, tokens: &'static str| {
        let (store, wallet) = (store.clone(), wallet.clone());
        async move {
            let body = format!(r#"{{"beneficiaries":{{"{wallet}":"{tokens}"}}}}"#);
            store
                .insert(Bucket::Queue, &action_key(&id), body.as_bytes())
                .await
                .expect("enqueue");
        }
    };
    // Another process credits the wallet and completes its action.
    let elsewhere = format!("{run}-elsewhere");
    enqueue(elsewhere.clone(), "1").await;
    let outcome = process_action(store.as_ref(), &elsewhere, &Options::default()).await;
    assert!(matches!(outcome, Ok(Outcome::Completed { .. })), "{outcome:?}");
    // Its marker, two minutes old.
    let name = MarkerName::of_action(&elsewhere);
    let doc = store
        .get_with_xattrs(Bucket::Ledger, &balance_key(&wallet), &[MARKERS_XATTR])
        .await
        .expect("read the wallet");
    let mut marker = doc
        .xattrs
        .into_iter()
        .next()
        .flatten()
        .and_then(|m| m.get(name.as_str()).cloned())
        .expect("the other process's marker");
    marker["at_ms"] = serde_json::json!(ledgerd::domain::time::unix_ms_now() - OLD_MS);
    store
        .set_xattr(Bucket::Ledger, &balance_key(&wallet), &name.path(), &marker, None)
        .await
        .expect("age the marker");

    // A new process (which never saw that action complete) credits it.
    let here = format!("{run}-here");
    enqueue(here.clone(), "3").await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let watched = FaultyStore::with_plan(
        store.clone(),
        Box::new(move |_, kind, key| {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((kind, key.to_string()));
            Fault::Pass
        }),
    );
    let outcome = process_action(&watched, &here, &Options::default()).await;
    assert!(matches!(outcome, Ok(Outcome::Completed { .. })), "{outcome:?}");

    assert_eq!(
        markers(store.as_ref(), &wallet).await,
        vec![here.clone()],
        "the old marker went"
    );
    let calls = calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        !calls.iter().any(|(kind, _)| *kind == OpKind::RemoveXattr),
        "no marker removed by a write of its own: {calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|(kind, key)| *kind == OpKind::Get && *key == tx_key(&here)),
        "the record is not read before its insert: {calls:?}"
    );
    let record = store.get(Bucket::Ledger, &tx_key(&here)).await.expect("the record");
    let record: serde_json::Value = serde_json::from_slice(&record.body).expect("a JSON record");
    assert_eq!(record["state"], "completed", "{record}");
    assert!(matches!(
        store.get(Bucket::Queue, &action_key(&here)).await,
        Err(StoreError::NotFound)
    ));
    let balance = store
        .get(Bucket::Ledger, &balance_key(&wallet))
        .await
        .expect("the wallet");
    assert_eq!(balance.body, b"400000000", "1 + 3 tokens, in units");
}

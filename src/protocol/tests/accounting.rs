//! The consistent cut behind `audit` and `audit --snapshot`: a worker
//! crediting a wallet in the middle of the scan (after the transaction
//! records were read, before the wallets are read again) must not make the
//! credit look like a balance from outside, nor a mismatch.

use std::sync::atomic::AtomicUsize;

use super::*;
use crate::commands::audit;
use crate::protocol::accounting::{cut, WALLETS_PER_PASS};

/// One worker process (its options shared by its actions) runs a group of
/// actions against the inner store each time the scan starts listing
/// adjustments (every transaction record has then been read): group `n` at
/// the `n`th scan.
struct CreditDuringScan {
    inner: MemoryStore,
    opts: Options,
    /// Per scan, `(action id, body, whether the worker dies after
    /// crediting, before the record says completed)`.
    groups: Vec<Vec<(String, String, bool)>>,
    fired: AtomicUsize,
    /// What each action's run returned.
    outcomes: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Hook for CreditDuringScan {
    async fn before(&self, kind: OpKind, key: &str) -> Fault {
        if kind != OpKind::ListKeys || key != crate::domain::keys::ADJ_PREFIX {
            return Fault::Pass;
        }
        let n = self.fired.fetch_add(1, Ordering::SeqCst);
        for (id, body, dies) in self.groups.get(n).into_iter().flatten() {
            self.inner
                .insert(Bucket::Queue, &action_key(id), body.as_bytes())
                .await
                .expect("enqueue");
            let outcome = if *dies {
                let tx = tx_key(id);
                let dying = FaultyStore::with_plan(
                    arc(&self.inner),
                    Box::new(move |_, kind, key| match kind {
                        OpKind::Replace if key == tx => Fault::FailBefore(StoreError::Permanent("died".into())),
                        _ => Fault::Pass,
                    }),
                );
                process_action(&dying, id, &self.opts).await
            } else {
                process_action(&self.inner, id, &self.opts).await
            };
            self.record(outcome);
        }
        Fault::Pass
    }
}

impl CreditDuringScan {
    fn record(&self, outcome: Result<Outcome>) {
        let text = match outcome {
            Ok(Outcome::Completed { .. }) => "completed".to_string(),
            other => format!("{other:?}"),
        };
        self.outcomes.lock().expect("outcomes").push(text);
    }
}

fn outcomes(store: &Hooked<CreditDuringScan>) -> Vec<String> {
    store.hook.outcomes.lock().expect("outcomes").clone()
}

async fn ledger_with_history() -> World {
    let w = World::new();
    w.enqueue("X", r#"{"beneficiaries":{"a":"1","b":"2"}}"#).await;
    assert!(matches!(w.process("X").await, Ok(Outcome::Completed { .. })));
    w
}

type Group<'a> = &'a [(&'a str, &'a str, bool)];

fn during_scan(w: &World, groups: &[Group]) -> Hooked<CreditDuringScan> {
    Hooked::new(
        arc(&w.store),
        CreditDuringScan {
            inner: w.store.clone(),
            opts: Options::default(),
            groups: groups
                .iter()
                .map(|g| {
                    g.iter()
                        .map(|(id, body, dies)| (id.to_string(), body.to_string(), *dies))
                        .collect()
                })
                .collect(),
            fired: AtomicUsize::new(0),
            outcomes: Default::default(),
        },
    )
}

/// Every wallet of the cut holds exactly what the ledger explains for it.
async fn assert_explained(store: &dyn Store) {
    let cut = cut(store).await.expect("cut");
    assert!(cut.unsettled.is_empty(), "{:?}", cut.unsettled);
    for (hash, (view, explained)) in &cut.wallets {
        let Some(Ok(balance)) = view.found() else {
            panic!("{hash}: {:?}", view.found())
        };
        assert_eq!(i128::from(balance), explained.total(), "{hash}: {explained:?}");
        assert_eq!(explained.opening, 0, "{hash}");
    }
}

/// The markers on wallet `hash`, by action id.
fn marker_actions(w: &World, hash: &str) -> Vec<String> {
    let xattrs = w.store.xattrs(Bucket::Ledger, &balance_key(hash)).unwrap_or_default();
    crate::domain::Markers::from_xattr(xattrs.pointer("/ledger/applied").cloned()).actions()
}

// Y completes and Z's write (the same worker, which knows Y completed)
// prunes Y's marker, all after the records were read: read after the scan,
// wallet `a` holds Y's credit with neither its record nor its marker in
// view, which a snapshot would take for a balance from outside.
#[tokio::test]
async fn a_credit_completed_during_the_scan_is_not_taken_for_an_opening_balance() {
    let w = ledger_with_history().await;
    let store = during_scan(
        &w,
        &[&[
            ("Y", r#"{"beneficiaries":{"a":"5"}}"#, false),
            ("Z", r#"{"beneficiaries":{"a":"1"}}"#, false),
        ]],
    );
    let mut out = Vec::new();
    audit::snapshot(&store, WALLETS_PER_PASS, &mut out)
        .await
        .expect("snapshot");
    assert_eq!(outcomes(&store), ["completed", "completed"]);
    assert_eq!(
        marker_actions(&w, "a"),
        ["X", "Z"],
        "the scenario needs Y's marker pruned"
    );
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        "opening snapshot taken: 0 wallets with balances from outside ledgerd"
    );
    assert_eq!(w.balance("a"), Some(700_000_000));
    let mut out = Vec::new();
    let exit = audit::audit(&w.store, WALLETS_PER_PASS, false, &mut out)
        .await
        .expect("audit");
    assert_eq!(
        exit,
        crate::commands::Exit::Success,
        "{}",
        String::from_utf8_lossy(&out)
    );
}

// The same, with Z's worker dying after its credits, before its record
// says completed: Z counts by its marker, Y by its record.
#[tokio::test]
async fn a_credit_in_flight_during_the_scan_is_counted_as_a_credit() {
    let w = ledger_with_history().await;
    let store = during_scan(
        &w,
        &[&[
            ("Y", r#"{"beneficiaries":{"a":"5"}}"#, false),
            ("Z", r#"{"beneficiaries":{"a":"1","c":"1"}}"#, true),
        ]],
    );
    assert_explained(&store).await;
    assert_eq!(outcomes(&store)[0], "completed");
    assert_eq!(
        marker_actions(&w, "a"),
        ["X", "Z"],
        "the scenario needs Y's marker pruned"
    );
    assert_eq!(w.tx("Z").map(|t| t.state), Some(TxState::Committed));
    // The removal went beside the completion, and landed: the action is
    // gone, its record committed, every credit marked. The sweep completes
    // the record from its markers, and the ledger still audits clean.
    assert!(w.store.peek(Bucket::Queue, &action_key("Z")).is_none());
    crate::protocol::sweep_markers(&w.store).await.expect("sweep");
    assert_eq!(w.tx("Z").map(|t| t.state), Some(TxState::Completed));
    assert!(
        marker_actions(&w, "a").is_empty(),
        "every record completed: every marker pruned"
    );
    assert_explained(&w.store).await;
}

// Paused time: the worker's retries against the locked wallet take no real time.
#[tokio::test(start_paused = true)]
async fn a_wallet_changing_in_every_unlocked_round_is_locked_for_one_scan() {
    let w = ledger_with_history().await;
    let store = during_scan(
        &w,
        &[
            &[("Y1", r#"{"beneficiaries":{"a":"5"}}"#, false)],
            &[("Y2", r#"{"beneficiaries":{"a":"7"}}"#, false)],
            &[("Y3", r#"{"beneficiaries":{"a":"1"}}"#, false)],
        ],
    );
    assert_explained(&store).await;
    // The third scan ran with `a` locked: the worker could not credit it.
    let seen = outcomes(&store);
    assert_eq!(seen[..2], ["completed", "completed"]);
    assert_ne!(seen[2], "completed");
    assert_eq!(w.balance("a"), Some(1_300_000_000));
    // The lock was released: the action goes through now.
    assert!(matches!(w.process("Y3").await, Ok(Outcome::Completed { .. })));
    assert_eq!(w.balance("a"), Some(1_400_000_000));
    assert_explained(&w.store).await;
}

// An audit in passes of a few wallets finds what one pass finds, in the
// same order, holding no more than its pass at once: a wallet only the
// records name (its document lost) and a wrong balance, in middle passes.
#[tokio::test]
async fn an_audit_in_passes_finds_what_one_pass_finds() {
    let w = World::new();
    for n in 0..6 {
        let body = format!(r#"{{"beneficiaries":{{"w{n}":"1","w{}":"2"}}}}"#, (n + 1) % 6);
        w.enqueue(&format!("A{n}"), &body).await;
        assert!(matches!(
            w.process(&format!("A{n}")).await,
            Ok(Outcome::Completed { .. })
        ));
    }
    w.store
        .remove(Bucket::Ledger, &balance_key("w2"), None)
        .await
        .expect("lose a wallet");
    let cas = w.store.get(Bucket::Ledger, &balance_key("w4")).await.expect("w4").cas;
    w.store
        .replace(Bucket::Ledger, &balance_key("w4"), b"1", cas)
        .await
        .expect("damage a wallet");
    let run = |passes: usize| {
        let store = &w.store;
        async move {
            let mut out = Vec::new();
            let exit = audit::audit(store, passes, false, &mut out).await.expect("audit");
            (exit, String::from_utf8(out).expect("utf-8"))
        }
    };
    let (exit, whole) = run(WALLETS_PER_PASS).await;
    assert_eq!(exit, crate::commands::Exit::Rejected);
    let lines: Vec<&str> = whole.lines().collect();
    assert_eq!(lines.len(), 3, "{whole}");
    assert!(
        lines[0].starts_with("MISMATCH w2: no balance document, expected 300000000 units"),
        "{whole}"
    );
    assert!(
        lines[1].starts_with("MISMATCH w4: balance 1 units, expected 300000000 ("),
        "{whole}"
    );
    assert!(
        lines[2].starts_with("audit: 5 wallets, 6 transactions,"),
        "{}",
        lines[2]
    );
    for passes in [2, 3, 5] {
        assert_eq!(run(passes).await, (exit, whole.clone()), "{passes} wallets per pass");
    }
    let (mut seen, mut held) = (Vec::new(), 0);
    crate::protocol::accounting::cut_in_passes(&w.store, 3, |cut| -> Result<()> {
        held = held.max(cut.wallets.len());
        seen.extend(cut.wallets.into_keys());
        Ok(())
    })
    .await
    .expect("passes");
    assert!(held <= 3, "a pass holds at most its wallets: {held}");
    let all: Vec<String> = cut(&w.store).await.expect("cut").wallets.into_keys().collect();
    assert_eq!(seen, all);
}

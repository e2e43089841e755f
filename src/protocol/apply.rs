//! Step 4: apply each credit exactly once.

use futures::future::join_all;

use super::coalesce::{CreditRequest, Credited};
use super::records::TxRecord;
use super::wallet::{self, Stale, State};
use super::{Options, Result};
use crate::domain::{Credit, MarkerName};
use crate::store::Store;

/// The wallets of `credits` as this process knows them, reading those it
/// does not: a state this process wrote itself moments ago stands for a read.
pub(crate) async fn observe_wallets(store: &dyn Store, credits: &[Credit], opts: &Options) -> Result<Vec<State>> {
    join_all(credits.iter().map(|c| async move {
        match opts.coalescer.peek(&c.hash) {
            Some(known) => Ok(known),
            None => wallet::read(store, &c.hash).await,
        }
    }))
    .await
    .into_iter()
    .collect()
}

/// What step 4 did for one action.
pub(crate) struct Application {
    /// How it ended.
    pub applied: Applied,
    /// Old markers of other actions seen on the wallets.
    pub stale: Vec<Stale>,
    /// Credits this process's own writes applied (not those found applied).
    pub written_credits: usize,
    /// Their units.
    pub written_units: u64,
}

/// How applying an action's credits ended.
pub(crate) enum Applied {
    /// Every credit carries this action's marker.
    Done,
    /// The record turned `completed`: another worker finished the action.
    CompletedElsewhere,
    /// A wallet is invalid; the action must wait.
    Blocked(String),
}

/// Step 4: applies every credit of a committed record exactly once, all
/// wallets in parallel, each through the process's coalescer (which folds
/// credits of concurrent actions to one wallet into one write).
///
/// `observed` are wallet states observed before this worker's own insert
/// of the record: nothing can have been applied before the record existed,
/// so a write under such a state (or one this process derived from it by
/// its own writes alone) needs no further proof. Without one, a write needs
/// a read of the record after the wallet state was observed: a marker is
/// pruned only after the record is completed, so "no marker" seen before
/// "still committed" means not applied.
pub(crate) async fn apply_credits(
    store: &dyn Store,
    id: &str,
    tx: &TxRecord,
    observed: Option<Vec<State>>,
    opts: &Options,
) -> Result<Application> {
    let marker = MarkerName::of_action(id);
    let mut observed = observed.map(Vec::into_iter);
    let requests: Vec<CreditRequest> = tx
        .credits
        .iter()
        .map(|credit| CreditRequest {
            action: id.to_string(),
            marker: marker.clone(),
            hash: credit.hash.clone(),
            units: credit.units,
            seen: observed.as_mut().and_then(Iterator::next),
        })
        .collect();
    let answers = join_all(
        requests
            .into_iter()
            .map(|r| opts.coalescer.credit(store, r, opts.rules())),
    )
    .await;
    let (mut applied, mut stale, mut failure) = (Applied::Done, Vec::new(), None);
    let (mut written_credits, mut written_units) = (0, 0u64);
    for (credit, answer) in tx.credits.iter().zip(answers) {
        match answer {
            Ok(Credited::Done { stale: s, written }) => {
                stale.extend(s);
                if written {
                    written_credits += 1;
                    written_units = written_units.saturating_add(credit.units.get());
                }
            }
            Ok(Credited::CompletedElsewhere) => {
                if matches!(applied, Applied::Done) {
                    applied = Applied::CompletedElsewhere;
                }
            }
            Ok(Credited::Blocked(reason)) => {
                if !matches!(applied, Applied::Blocked(_)) {
                    applied = Applied::Blocked(reason);
                }
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    // A blocked wallet is reported even if another write failed: the action
    // cannot finish either way, and "blocked" says what to fix.
    let applied = match (applied, failure) {
        (blocked @ Applied::Blocked(_), _) => blocked,
        (_, Some(e)) => return Err(e),
        (applied, None) => applied,
    };
    Ok(Application {
        applied,
        stale,
        written_credits,
        written_units,
    })
}

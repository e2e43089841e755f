//! `ledgerd failed`: the dead letters. Listing, counting and showing read;
//! requeue and purge change `failed:<id>` only under CAS, and only the
//! entries they selected, so a body rejected while they run is never lost.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::inspect::Keys;
use super::Exit;
use crate::cli::FailedFilters;
use crate::domain::keys::{action_key, check_action_id, failed_key, sha256_hex, tx_key, FAILED_PREFIX};
use crate::domain::plan_action;
use crate::domain::time::rfc3339_from_unix_ms;
use crate::protocol::dead_letters::{DeadLetters, Entry};
use crate::protocol::records::{now_ms, TxRecord};
use crate::store::{Bucket, Cas, Store, StoreError};
pub use select::Selection;

mod select;

/// Attempts at a CAS write of one `failed:<id>` before giving up on it.
const CAS_ATTEMPTS_MAX: usize = 16;

/// One `failed:<id>` as read, with its CAS.
struct Read {
    letters: DeadLetters,
    cas: Cas,
}

async fn read(store: &dyn Store, id: &str) -> anyhow::Result<Option<Read>> {
    match store.get(Bucket::Queue, &failed_key(id)).await {
        Ok(doc) => Ok(Some(Read {
            letters: DeadLetters::parse(&doc.body),
            cas: doc.cas,
        })),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", failed_key(id))),
    }
}

/// Calls `each` with every failed id and its entries, in key order.
async fn for_each_id(
    store: &dyn Store,
    mut each: impl FnMut(&str, DeadLetters) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut keys = Keys::new(store, Bucket::Queue, FAILED_PREFIX);
    while let Some(page) = keys.next_page().await? {
        for key in page {
            let id = &key[FAILED_PREFIX.len()..];
            if let Some(read) = read(store, id).await? {
                each(id, read.letters)?;
            }
        }
    }
    Ok(())
}

/// `ledgerd failed [filters]`: one JSON line per entry the filters select.
pub async fn list(store: &dyn Store, filters: &FailedFilters, out: &mut (dyn Write + Send)) -> anyhow::Result<Exit> {
    for_each_id(store, |id, letters| {
        for entry in letters.entries.iter().filter(|e| filters.selects(e)) {
            writeln!(out, "{}", entry.listing(id))?;
        }
        Ok(())
    })
    .await?;
    Ok(Exit::Success)
}

/// `ledgerd failed --counts`: per kind of rejection, how many entries and
/// ids, and when the first and the last were rejected; most first.
pub async fn counts(store: &dyn Store, filters: &FailedFilters, out: &mut (dyn Write + Send)) -> anyhow::Result<Exit> {
    #[derive(Default)]
    struct Count {
        entries: u64,
        ids: u64,
        first: Option<String>,
        last: Option<String>,
    }
    let mut by_kind: BTreeMap<String, Count> = BTreeMap::new();
    for_each_id(store, |_, letters| {
        let mut seen = std::collections::BTreeSet::new();
        for entry in letters.entries.iter().filter(|e| filters.selects(e)) {
            let count = by_kind.entry(entry.kind.clone()).or_default();
            count.entries += 1;
            if seen.insert(entry.kind.clone()) {
                count.ids += 1;
            }
            if let Some(at) = &entry.failed_at {
                // RFC 3339 in UTC with fixed width: text order is time order.
                if count.first.as_ref().is_none_or(|f| at < f) {
                    count.first = Some(at.clone());
                }
                if count.last.as_ref().is_none_or(|l| at > l) {
                    count.last = Some(at.clone());
                }
            }
        }
        Ok(())
    })
    .await?;
    let mut kinds: Vec<(String, Count)> = by_kind.into_iter().collect();
    kinds.sort_by(|a, b| b.1.entries.cmp(&a.1.entries).then_with(|| a.0.cmp(&b.0)));
    for (kind, c) in kinds {
        writeln!(
            out,
            "{}",
            json!({"kind": kind, "entries": c.entries, "ids": c.ids, "first_failed_at": c.first, "last_failed_at": c.last})
        )?;
    }
    Ok(Exit::Success)
}

/// `ledgerd failed show ID`: every entry of one id, with whether the id is
/// queued and what its transaction record says.
pub async fn show(store: &dyn Store, id: &str, mut out: impl Write) -> anyhow::Result<Exit> {
    let Some(read) = read(store, id).await? else {
        eprintln!("{id}: no failed action with this id");
        return Ok(Exit::Rejected);
    };
    let entries: Vec<Value> = read.letters.entries.iter().map(Entry::to_json).collect();
    let queued = match store.get(Bucket::Queue, &action_key(id)).await {
        Ok(doc) => Some(sha256_hex(&doc.body)),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(e).context(format!("reading {}", action_key(id))),
    };
    let credited = credited(store, id).await?;
    let doc = json!({
        "id": id,
        "entries": entries,
        "queued": queued.map(|digest| json!({"digest": digest})),
        "credited": credited.map(|tx| json!({"digest": tx.digest, "state": tx.state, "total_units": tx.total_units.get()})),
    });
    writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    Ok(Exit::Success)
}

/// The transaction record of `id`, if it was credited (or is being).
pub(crate) async fn credited(store: &dyn Store, id: &str) -> anyhow::Result<Option<TxRecord>> {
    match store.get(Bucket::Ledger, &tx_key(id)).await {
        Ok(doc) => Ok(Some(
            TxRecord::parse(id, &doc.body).map_err(|e| anyhow::anyhow!("{}: {e}", tx_key(id)))?,
        )),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e).context(format!("reading {}", tx_key(id))),
    }
}

/// Every failed id, in key order.
async fn all_ids(store: &dyn Store) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut keys = Keys::new(store, Bucket::Queue, FAILED_PREFIX);
    while let Some(page) = keys.next_page().await? {
        ids.extend(page.iter().map(|k| k[FAILED_PREFIX.len()..].to_string()));
    }
    Ok(ids)
}

/// Writes `letters` as `failed:<id>` under `cas` (removing the document
/// when no entry is left). `Ok(false)`: it changed since it was read.
async fn write(store: &dyn Store, id: &str, letters: &DeadLetters, cas: Cas) -> anyhow::Result<bool> {
    let key = failed_key(id);
    let result = if letters.entries.is_empty() {
        store.remove(Bucket::Queue, &key, Some(cas)).await
    } else {
        store
            .replace(Bucket::Queue, &key, &letters.encode(id), cas)
            .await
            .map(|_| ())
    };
    match result {
        Ok(()) => Ok(true),
        Err(StoreError::CasMismatch | StoreError::NotFound | StoreError::Locked) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("writing {key}")),
    }
}

/// Removes the entries with these digests from `failed:<id>`, under CAS,
/// re-reading on a conflict; entries added meanwhile stay. `only_marked`:
/// an entry goes only while it still carries this requeue mark (a worker
/// that rejected the body again cleared it). Returns how many went.
async fn remove_entries(
    store: &dyn Store,
    id: &str,
    digests: &[String],
    only_marked: Option<&str>,
) -> anyhow::Result<usize> {
    for _ in 0..CAS_ATTEMPTS_MAX {
        let Some(mut read) = read(store, id).await? else {
            return Ok(0);
        };
        let going: Vec<String> = read
            .letters
            .entries
            .iter()
            .filter(|e| digests.contains(&e.digest))
            .filter(|e| only_marked.is_none_or(|mark| e.requeued_at.as_deref() == Some(mark)))
            .map(|e| e.digest.clone())
            .collect();
        if going.is_empty() {
            return Ok(0);
        }
        read.letters.remove(&going);
        if write(store, id, &read.letters, read.cas).await? {
            return Ok(going.len());
        }
    }
    bail!("{}: it kept changing; nothing more was removed from it", failed_key(id))
}

/// `ledgerd failed purge`: removes the selected entries for good.
pub async fn purge(store: &dyn Store, which: &Selection, mut out: impl Write) -> anyhow::Result<Exit> {
    let named = which.ids();
    let ids = match &named {
        Some(ids) => ids.clone(),
        None => all_ids(store).await?,
    };
    let (mut purged, mut exit) = (0usize, Exit::Success);
    for id in &ids {
        let picked: Vec<String> = match read(store, id).await? {
            Some(read) => which.pick(id, &read.letters).iter().map(|e| e.digest.clone()).collect(),
            None => Vec::new(),
        };
        let removed = if picked.is_empty() {
            0
        } else {
            remove_entries(store, id, &picked, None).await?
        };
        purged += removed;
        if removed == 0 && named.is_some() {
            eprintln!("{id}: nothing to purge (no failed action with this id, or no entry that matches)");
            exit = Exit::Rejected;
        }
    }
    if purged == 0 && named.is_none() {
        eprintln!("nothing matched the selection: nothing purged");
    }
    writeln!(out, "{}", json!({"purged": purged}))?;
    Ok(exit)
}

/// `ledgerd failed requeue`: puts one rejected body per id back in the
/// queue (or `replacement`), then removes its entry.
pub async fn requeue(
    store: &dyn Store,
    which: &Selection,
    replacement: Option<Vec<u8>>,
    mut out: impl Write,
) -> anyhow::Result<Exit> {
    let ids = match which.ids() {
        Some(ids) => ids,
        None => all_ids(store).await?,
    };
    if replacement.is_some() && ids.len() != 1 {
        return Err(super::Usage("--doc replaces the body of exactly one action: give one id".into()).into());
    }
    let named = which.ids().is_some();
    let (mut requeued, mut refused, mut exit) = (0u64, 0u64, Exit::Success);
    for id in &ids {
        match requeue_one(store, id, which, replacement.as_deref()).await? {
            Requeued::Yes => requeued += 1,
            // As for purge: an id the selection does not pick is no
            // refusal; one named that matches nothing is reported.
            Requeued::NotSelected(why) if named => {
                eprintln!("{id}: nothing to requeue ({why})");
                exit = Exit::Rejected;
            }
            Requeued::NotSelected(_) => {}
            Requeued::Refused(why) => {
                eprintln!("{id}: {why}");
                refused += 1;
                exit = Exit::Rejected;
            }
        }
    }
    if requeued == 0 && refused == 0 && !named {
        eprintln!("nothing matched the selection: nothing requeued");
    }
    writeln!(out, "{}", json!({"requeued": requeued, "refused": refused}))?;
    Ok(exit)
}

/// How the requeue of one id ended.
enum Requeued {
    /// Its body is back in the queue.
    Yes,
    /// The selection picks none of its entries (or it has none): why.
    NotSelected(String),
    /// A picked entry could not be requeued: why (nothing changed).
    Refused(String),
}

/// Requeues one id.
async fn requeue_one(
    store: &dyn Store,
    id: &str,
    which: &Selection,
    replacement: Option<&[u8]>,
) -> anyhow::Result<Requeued> {
    let mark = rfc3339_from_unix_ms(now_ms());
    let mut marked: Option<(String, Vec<u8>)> = None;
    for _ in 0..CAS_ATTEMPTS_MAX {
        let Some(mut read) = read(store, id).await? else {
            return Ok(Requeued::NotSelected("no failed action with this id".into()));
        };
        let picked = which.pick(id, &read.letters);
        let entry = match picked.as_slice() {
            [] => return Ok(Requeued::NotSelected("no rejected body of this id matches".into())),
            [one] => (*one).clone(),
            many => {
                let digests: Vec<&str> = many.iter().map(|e| &e.digest[..12]).collect();
                return Ok(Requeued::Refused(format!(
                    "{} rejected bodies match (digests {}…): pick one with --digest (see `ledgerd failed show {id}`)",
                    many.len(),
                    digests.join("…, ")
                )));
            }
        };
        let body = replacement.map_or_else(|| entry.body.clone(), <[u8]>::to_vec);
        if let Err(why) = admissible(store, id, &body, replacement.is_some()).await? {
            return Ok(Requeued::Refused(why));
        }
        // Mark it first: a worker that rejects the body again clears the
        // mark, and then this requeue leaves the entry where it is.
        if let Some(kept) = read.letters.entries.iter_mut().find(|e| e.digest == entry.digest) {
            kept.requeued_at = Some(mark.clone());
        }
        if write(store, id, &read.letters, read.cas).await? {
            marked = Some((entry.digest, body));
            break;
        }
    }
    let Some((digest, body)) = marked else {
        bail!("{}: it kept changing; nothing was requeued", failed_key(id));
    };
    match store.insert(Bucket::Queue, &action_key(id), &body).await {
        Ok(_) => {}
        Err(StoreError::Exists) => {
            unmark(store, id, &digest, &mark).await?;
            return Ok(Requeued::Refused(
                "already queued (action:<id> exists); left as it is".into(),
            ));
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "queueing {id} (the entry stays, marked requeued_at; run the requeue again once the store answers)"
                )
            })
        }
    }
    remove_entries(store, id, &[digest], Some(&mark)).await?;
    Ok(Requeued::Yes)
}

/// Whether `body` may be queued under `id`: it must pass the checks a
/// worker makes, and not conflict with a credit already made under the id.
async fn admissible(store: &dyn Store, id: &str, body: &[u8], from_doc: bool) -> anyhow::Result<Result<(), String>> {
    if let Err(e) = check_action_id(id) {
        return Ok(Err(format!(
            "the id itself cannot be used (action id {e}): purge it and queue the body under another id"
        )));
    }
    if let Err(e) = plan_action(body) {
        return Ok(Err(if from_doc {
            format!("the --doc body is rejected: {e} (check it with `ledgerd plan < FILE`)")
        } else {
            format!("this body would be rejected again ({e}): correct it and requeue it with --doc FILE")
        }));
    }
    if let Some(tx) = credited(store, id).await? {
        return Ok(Err(if tx.digest == sha256_hex(body) {
            format!(
                "already credited from this very body (tx:{id} is {:?}): nothing to requeue; purge the entry",
                tx.state
            )
        } else {
            format!(
                "already credited from another body (digest {}): this one would be rejected as a conflicting duplicate; queue it under a new id if it is a separate reward",
                tx.digest
            )
        }));
    }
    Ok(Ok(()))
}

/// Clears a requeue mark this run set (best effort against concurrent
/// changes: the entry is kept either way).
async fn unmark(store: &dyn Store, id: &str, digest: &str, mark: &str) -> anyhow::Result<()> {
    for _ in 0..CAS_ATTEMPTS_MAX {
        let Some(mut read) = read(store, id).await? else {
            return Ok(());
        };
        let Some(entry) = read
            .letters
            .entries
            .iter_mut()
            .find(|e| e.digest == digest && e.requeued_at.as_deref() == Some(mark))
        else {
            return Ok(());
        };
        entry.requeued_at = None;
        if write(store, id, &read.letters, read.cas).await? {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{process_action, Options, Outcome};
    use crate::store::memory::MemoryStore;

    async fn letters(store: &MemoryStore, id: &str) -> DeadLetters {
        DeadLetters::parse(
            &store
                .get(Bucket::Queue, &failed_key(id))
                .await
                .expect("failed doc")
                .body,
        )
    }

    // A requeued body that a worker rejects again, between the requeue
    // queueing it and removing its entry, must stay kept: the worker's
    // rejection clears the requeue's mark, and the requeue then leaves the
    // entry. (Here the body conflicts with a credit made meanwhile.)
    #[tokio::test]
    async fn a_body_rejected_again_during_its_requeue_is_not_lost() {
        let store = MemoryStore::new();
        let opts = Options::default();
        let (first, second) = (br#"{"beneficiaries":{"a":1}}"#, br#"{"beneficiaries":{"b":2}}"#);
        store
            .insert(Bucket::Queue, &action_key("x"), second)
            .await
            .expect("enqueue");
        store
            .insert(Bucket::Queue, &failed_key("x"), &{
                let mut l = DeadLetters::default();
                l.add(Entry::new(second, "test", "rejected once"));
                l.encode("x")
            })
            .await
            .expect("failed doc");
        // The requeue has marked the entry and queued the body; meanwhile
        // another body of x was credited.
        let mark = "2026-11-24T00:00:00.000Z";
        let mut marked = letters(&store, "x").await;
        marked.entries[0].requeued_at = Some(mark.into());
        let cas = store.get(Bucket::Queue, &failed_key("x")).await.expect("read").cas;
        assert!(write(&store, "x", &marked, cas).await.expect("mark"));
        store.remove(Bucket::Queue, &action_key("x"), None).await.expect("swap");
        store
            .insert(Bucket::Queue, &action_key("x"), first)
            .await
            .expect("first body");
        assert!(matches!(
            process_action(&store, "x", &opts).await,
            Ok(Outcome::Completed { .. })
        ));
        store
            .insert(Bucket::Queue, &action_key("x"), second)
            .await
            .expect("requeued body");
        let outcome = process_action(&store, "x", &opts).await;
        assert!(matches!(outcome, Ok(Outcome::Failed { .. })), "{outcome:?}");
        // The requeue's last step now removes nothing.
        let removed = remove_entries(&store, "x", &[sha256_hex(second)], Some(mark))
            .await
            .expect("remove");
        assert_eq!(removed, 0);
        let kept = letters(&store, "x").await;
        assert_eq!(kept.entries.len(), 1);
        assert_eq!(kept.entries[0].body, second);
        assert_eq!(kept.entries[0].requeued_at, None);
        assert!(
            kept.entries[0].reason.contains("conflicting duplicate"),
            "{:?}",
            kept.entries[0]
        );
    }
}

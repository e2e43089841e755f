//! The writer's transaction: its own writes seen, each document written back once.

use super::*;

#[test]
fn text_that_is_not_utf8_is_a_damaged_store() {
    let bytes = vec![b'k', 0xff];
    let bad = String::from_utf8(bytes).expect_err("not utf-8").utf8_error();
    let e = sql_error(rusqlite::Error::FromSqlConversionFailure(
        1,
        rusqlite::types::Type::Text,
        Box::new(bad),
    ));
    assert!(
        matches!(&e, StoreError::Fault(f) if f.kind == crate::store::fault::FaultKind::Corrupt),
        "{e:?}"
    );
}
use crate::store::model;

#[test]
fn a_batch_not_applied_names_one_kind_and_its_cause() {
    let e = not_applied(StoreError::Permanent("the body is not JSON".into()), false);
    assert_eq!(
        e.to_string(),
        "transient error: not applied (its batch was rolled back): the body is not JSON"
    );
    let e = not_applied(StoreError::CasMismatch, true);
    assert_eq!(e.to_string(), "permanent error: not applied: CAS mismatch");
}

/// A fresh database with its write transaction begun, and the writer's
/// record of early claims, for `tx`.
fn begun() -> (Connection, Unsettled) {
    let conn = Connection::open_in_memory().expect("open");
    conn.execute_batch(super::super::open::SCHEMA).expect("schema");
    conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
    (conn, Unsettled::new())
}

fn tx<'c>(conn: &'c Connection, unsettled: &'c Unsettled) -> Tx<'c> {
    Tx {
        conn,
        now_ms: 1_000,
        now_ns: crate::store::memory::MANUAL_CLOCK_ZERO_NS,
        last_cas: Cell::new(0),
        docs: RefCell::default(),
        broken: Cell::new(false),
        batch: 1,
        unsettled,
    }
}

fn insert(tx: &Tx<'_>, key: &str, body: &[u8]) -> StoreResult<Cas> {
    apply_insert(tx, "b", key, |slot, now, cas| model::insert(slot, key, body, now, cas))
}

fn replace(tx: &Tx<'_>, key: &str, body: &[u8], cas: Cas) -> StoreResult<Cas> {
    apply_mutation(tx, "b", key, |slot, now, new| {
        model::replace(slot, key, body, cas, now, new)
    })
}

fn remove(tx: &Tx<'_>, key: &str) -> StoreResult<()> {
    apply_mutation(tx, "b", key, |slot, now, _| model::remove(slot, key, None, now))
}

fn body(conn: &Connection, key: &str) -> Option<Vec<u8>> {
    load(conn, "b", key).expect("load").map(|e| e.body)
}

/// Within one transaction each operation sees the ones before it, and
/// each changed document is written back once, as the last of them left it.
#[test]
fn a_transaction_sees_its_own_writes_and_writes_each_document_back_once() {
    let (conn, unsettled) = begun();
    let tx = tx(&conn, &unsettled);
    let first = insert(&tx, "k", b"1").expect("insert");
    assert!(matches!(insert(&tx, "k", b"x"), Err(StoreError::Exists)));
    let second = replace(&tx, "k", b"2", first).expect("replace on the insert's CAS");
    assert!(matches!(replace(&tx, "k", b"x", first), Err(StoreError::CasMismatch)));
    remove(&tx, "k").expect("remove");
    assert!(matches!(replace(&tx, "k", b"x", second), Err(StoreError::NotFound)));
    insert(&tx, "k", b"3").expect("insert after the remove");
    // Created and removed within the transaction: nothing to write back.
    insert(&tx, "gone", b"g").expect("insert");
    remove(&tx, "gone").expect("remove");
    // Read, refused, unchanged: nothing to write back either.
    conn.execute(
        "INSERT INTO docs (bucket, key, body, xattrs, cas) VALUES ('b', 'old', 'o', '{}', 99)",
        [],
    )
    .expect("seed");
    assert!(matches!(replace(&tx, "old", b"x", 1), Err(StoreError::CasMismatch)));
    let before = conn.total_changes();
    tx.write_back().expect("write back");
    // One UPDATE for "k", one DELETE for "gone".
    assert_eq!(conn.total_changes() - before, 2);
    conn.execute_batch("COMMIT").expect("commit");
    assert_eq!(body(&conn, "k"), Some(b"3".to_vec()));
    assert_eq!(body(&conn, "gone"), None);
    assert_eq!(body(&conn, "old"), Some(b"o".to_vec()));
}

/// A document absent when the transaction read it, then created by a
/// mutation, is one INSERT at write-back.
#[test]
fn a_document_not_yet_stored_is_created_at_write_back() {
    let (conn, unsettled) = begun();
    let tx = tx(&conn, &unsettled);
    // Absent when read, created by a mutation: an INSERT at write-back.
    assert!(matches!(remove(&tx, "new"), Err(StoreError::NotFound)));
    apply_mutation(&tx, "b", "new", |slot, now, cas| {
        model::insert(slot, "new", b"n", now, cas)
    })
    .expect("create through a mutation");
    let before = conn.total_changes();
    tx.write_back().expect("write back");
    assert_eq!(conn.total_changes() - before, 1);
    conn.execute_batch("COMMIT").expect("commit");
    assert_eq!(body(&conn, "new"), Some(b"n".to_vec()));
}

//! `ledgerd check` on Couchbase: the server's version, each bucket (through
//! the management service and a key-value read), the ledgerd indexes and
//! their states, and the Query service through discovery's own statement.
//! Each finding is one service answering one question; none reads more
//! than one document or one page of ids.

use std::collections::BTreeMap;

use couchbase::error::ErrorKind;
use serde_json::Value;

use super::client::CouchbaseStore;
use super::init::{version_supported, SERVER_VERSION_MIN};
use super::statements;
use crate::domain::keys::ACTION_PREFIX;
use crate::store::check::Finding;
use crate::store::{Bucket, Store, StoreError};

pub(super) async fn run(store: &CouchbaseStore) -> Vec<Finding> {
    let mut found = vec![version(store).await];
    for (bucket, name) in [
        (Bucket::Queue, store.names.0.clone()),
        (Bucket::Ledger, store.names.1.clone()),
    ] {
        found.push(bucket_exists(store, &name).await);
        let read = match store.get(bucket, "ledgerd:check").await {
            Ok(_) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        };
        found.push(Finding::from_result(
            &format!("key-value {name}"),
            read,
            "the Data service answers a read",
        ));
        found.push(indexes(store, &name).await);
    }
    found.push(Finding::from_result(
        "query",
        store.list_keys(Bucket::Queue, ACTION_PREFIX, None, 1).await.map(|_| ()),
        "the Query service answers discovery's statement through its index",
    ));
    found
}

async fn version(store: &CouchbaseStore) -> Finding {
    let min = format!(
        "{}.{}.{}",
        SERVER_VERSION_MIN.0, SERVER_VERSION_MIN.1, SERVER_VERSION_MIN.2
    );
    match store
        .query::<Value>(statements::server_version().to_string(), &[])
        .await
    {
        Ok(rows) => {
            let text = rows.first().and_then(Value::as_str).unwrap_or_default().to_string();
            match version_supported(&text) {
                Some(true) => Finding::ok("server version", format!("{text} (ledgerd needs {min} or later)")),
                Some(false) => Finding::problem(
                    "server version",
                    format!("{text} is older than {min}, the oldest ledgerd supports: upgrade the cluster"),
                ),
                None => Finding::ok(
                    "server version",
                    format!("not readable from the Query service ({rows:?}); ledgerd needs {min} or later"),
                ),
            }
        }
        Err(e) => Finding::problem("server version", format!("the Query service did not answer: {e}")),
    }
}

async fn bucket_exists(store: &CouchbaseStore, name: &str) -> Finding {
    let check = format!("bucket {name}");
    match store.cluster.buckets().get_bucket(name, None).await {
        Ok(_) => Finding::ok(check, "exists (the management service answers)"),
        Err(e) if matches!(e.kind(), ErrorKind::BucketNotFound) => Finding::problem(
            check,
            "does not exist: run `ledgerd init` (or fix queue_bucket / ledger_bucket)",
        ),
        Err(e) => Finding::problem(check, format!("the management service did not answer: {e}")),
    }
}

async fn indexes(store: &CouchbaseStore, bucket: &str) -> Finding {
    let check = format!("indexes {bucket}");
    let expected = statements::index_names(&store.names.0, &store.names.1, bucket);
    let params = [
        ("bucket", Value::from(bucket.to_string())),
        ("names", Value::from(expected.clone())),
    ];
    let rows: Vec<Value> = match store.query(statements::index_names_and_states(), &params).await {
        Ok(rows) => rows,
        Err(e) => return Finding::problem(check, format!("system:indexes could not be read: {e}")),
    };
    let states: BTreeMap<String, String> = rows
        .iter()
        .filter_map(|r| Some((r["name"].as_str()?.to_string(), r["state"].as_str()?.to_string())))
        .collect();
    let mut problems = Vec::new();
    for name in &expected {
        match states.get(*name).map(String::as_str) {
            Some("online") => {}
            Some(state) => problems.push(format!("{name} is {state}")),
            None => problems.push(format!("{name} is missing")),
        }
    }
    if problems.is_empty() {
        Finding::ok(check, format!("{} online", expected.join(", ")))
    } else {
        Finding::problem(
            check,
            format!(
                "{}: run `ledgerd init`, which creates and builds them",
                problems.join(", ")
            ),
        )
    }
}

//! An ordered group of single-document writes (see [`Store::write_group`]).
//!
//! The protocol hands a store the writes one action needs, in the order it
//! needs them, as stages: every write of a stage depends only on the stages
//! before it. A store without transactions (Couchbase) runs the stages one
//! after another, the writes of a stage side by side, each exactly as the
//! single-document call would run it, and stops after the first stage in
//! which a write failed. A transactional store (SQLite) may commit the
//! whole group at once. Either way the outcome is a state the protocol
//! already recovers from: a prefix of the stages applied, and of the stage
//! that failed, any subset. A crash leaves no more than that.

use serde_json::Value;

use super::types::{Bucket, Cas, StoreError, StoreResult, WriteMode};

/// The CAS a write of a group is conditional on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupCas {
    /// This CAS.
    Known(Cas),
    /// The CAS an earlier write of the group left: `(stage, index)`.
    LeftBy(usize, usize),
}

/// One write of a group; each is the store call of the same name.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupWrite {
    /// [`Store::insert`].
    Insert {
        /// The bucket.
        bucket: Bucket,
        /// The key.
        key: String,
        /// The body.
        body: Vec<u8>,
    },
    /// [`Store::replace`].
    Replace {
        /// The bucket.
        bucket: Bucket,
        /// The key.
        key: String,
        /// The body.
        body: Vec<u8>,
        /// The CAS it is conditional on.
        cas: GroupCas,
    },
    /// [`Store::remove`].
    Remove {
        /// The bucket.
        bucket: Bucket,
        /// The key.
        key: String,
        /// The CAS it is conditional on, if any.
        cas: Option<Cas>,
    },
    /// [`Store::write_with_xattrs`].
    WriteWithXattrs {
        /// The bucket.
        bucket: Bucket,
        /// The key.
        key: String,
        /// The body.
        body: Vec<u8>,
        /// Paths set (`Some`) or removed (`None`).
        xattrs: Vec<(String, Option<Value>)>,
        /// Insert, or replace under a CAS.
        mode: WriteMode,
    },
}

impl GroupWrite {
    /// The bucket of the document it writes.
    pub fn bucket(&self) -> Bucket {
        match self {
            GroupWrite::Insert { bucket, .. }
            | GroupWrite::Replace { bucket, .. }
            | GroupWrite::Remove { bucket, .. }
            | GroupWrite::WriteWithXattrs { bucket, .. } => *bucket,
        }
    }

    /// The document it writes.
    pub fn key(&self) -> &str {
        match self {
            GroupWrite::Insert { key, .. }
            | GroupWrite::Replace { key, .. }
            | GroupWrite::Remove { key, .. }
            | GroupWrite::WriteWithXattrs { key, .. } => key,
        }
    }
}

/// Xattr changes as the single-document call takes them.
pub fn xattr_refs(xattrs: &[(String, Option<Value>)]) -> Vec<(&str, Option<Value>)> {
    xattrs.iter().map(|(p, v)| (p.as_str(), v.clone())).collect()
}

/// Stages of writes, run in order.
pub type WriteGroup = Vec<Vec<GroupWrite>>;

/// What became of each write of a group, stage by stage: `None` for one
/// that was not run (a stage before it failed). A removal answers CAS 0.
pub type GroupResults = Vec<Vec<Option<StoreResult<Cas>>>>;

/// The CAS `cas` stands for, given the results so far.
pub fn resolve(cas: GroupCas, results: &GroupResults) -> StoreResult<Cas> {
    match cas {
        GroupCas::Known(cas) => Ok(cas),
        GroupCas::LeftBy(stage, index) => match results.get(stage).and_then(|s| s.get(index)) {
            Some(Some(Ok(cas))) => Ok(*cas),
            _ => Err(StoreError::Permanent(format!(
                "a write group refers to the CAS of write ({stage}, {index}), which did not succeed before it"
            ))),
        },
    }
}

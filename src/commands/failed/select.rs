//! Which dead letters a command acts on: the filters, and the selection
//! `requeue` and `purge` take (ids and filters, or a listing).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::cli::FailedFilters;
use crate::protocol::dead_letters::{DeadLetters, Entry};

impl FailedFilters {
    /// Whether `entry` passes every filter given.
    pub fn selects(&self, entry: &Entry) -> bool {
        if let Some(text) = &self.reason {
            if !entry.kind.contains(text.as_str()) && !entry.reason.contains(text.as_str()) {
                return false;
            }
        }
        if self.before.is_some() || self.after.is_some() {
            let Some(at) = entry.failed_at_ms() else {
                return false;
            };
            if self.before.is_some_and(|before| at >= before) || self.after.is_some_and(|after| at < after) {
                return false;
            }
        }
        true
    }
}

/// Which entries a requeue or purge acts on, per id.
pub enum Selection {
    /// These ids (or, with `all`, every failed id), the entries that match
    /// `digest` and the filters.
    Matching {
        /// Ids given (empty with `all`).
        ids: Vec<String>,
        /// Every failed id.
        all: bool,
        /// A digest prefix.
        digest: Option<String>,
        /// Filters.
        filters: FailedFilters,
    },
    /// Exactly these entries: id -> full digests (from `--from`).
    Listed(BTreeMap<String, Vec<String>>),
}

impl Selection {
    /// Reads `--from`: JSON Lines with "id" and "digest", as `ledgerd failed`
    /// prints them; every line must name both.
    pub fn from_listing(path: &Path) -> anyhow::Result<Self> {
        let reader: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(std::io::BufReader::new(std::io::stdin()))
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            ))
        };
        let mut listed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (n, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{} line {}: not JSON: {e}", path.display(), n + 1))?;
            let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_string);
            let (Some(id), Some(digest)) = (field("id"), field("digest")) else {
                bail!(
                    "{} line {}: needs \"id\" and \"digest\", as `ledgerd failed` prints them",
                    path.display(),
                    n + 1
                );
            };
            listed.entry(id).or_default().push(digest);
        }
        Ok(Selection::Listed(listed))
    }

    /// The ids to visit, or `None` for every failed id.
    pub(super) fn ids(&self) -> Option<Vec<String>> {
        match self {
            Selection::Matching { all: true, .. } => None,
            Selection::Matching { ids, .. } => Some(ids.clone()),
            Selection::Listed(listed) => Some(listed.keys().cloned().collect()),
        }
    }

    /// The entries of `id` this selects.
    pub(super) fn pick<'a>(&self, id: &str, letters: &'a DeadLetters) -> Vec<&'a Entry> {
        match self {
            Selection::Matching { digest, filters, .. } => letters
                .entries
                .iter()
                .filter(|e| digest.as_ref().is_none_or(|d| e.digest.starts_with(d.as_str())))
                .filter(|e| filters.selects(e))
                .collect(),
            Selection::Listed(listed) => {
                let wanted = listed.get(id).map(Vec::as_slice).unwrap_or_default();
                letters.entries.iter().filter(|e| wanted.contains(&e.digest)).collect()
            }
        }
    }
}

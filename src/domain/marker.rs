//! A wallet's markers: the `ledger.applied` xattr, one entry per credit or
//! adjustment applied to the wallet and not yet pruned. A marker is written
//! in the same atomic write as its credit, so "the marker is on the wallet"
//! means "the credit is in the balance": that is what makes a retried
//! credit safe (docs/protocol.md).
//!
//! On the wallet a marker reads `{"tx": <action id>, "units": <units>,
//! "at_ms": <ms>}` (a credit) or `{"adj": <adjustment id>, "at_ms": <ms>}`
//! (an operator's adjustment), under a name derived from the id. Here, and
//! only here, those fields are read and written.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::keys::{sha256_hex, MARKERS_XATTR};
use super::Units;

/// Hex digits of the id's SHA-256 in a marker's name: 128 bits, so two ids
/// never share a name in practice, and the name stays a plain path element
/// whatever the id holds (dots, quotes, brackets).
const NAME_DIGEST_HEX: usize = 32;

/// A marker's name under `ledger.applied`: `m` and a digest of the action
/// id for a credit, `a` and a digest of the adjustment id for an adjustment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MarkerName(String);

impl MarkerName {
    /// The name of action `action_id`'s marker.
    pub fn of_action(action_id: &str) -> Self {
        Self::digest('m', action_id)
    }

    /// The name of adjustment `adj_id`'s marker.
    pub fn of_adjustment(adj_id: &str) -> Self {
        Self::digest('a', adj_id)
    }

    fn digest(kind: char, id: &str) -> Self {
        let digest = sha256_hex(id.as_bytes());
        Self(format!("{kind}{}", &digest[..NAME_DIGEST_HEX]))
    }

    /// The name, as a key of the markers object.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The marker's sub-document path: `ledger.applied.<name>`.
    pub fn path(&self) -> String {
        format!("{MARKERS_XATTR}.{}", self.0)
    }
}

impl std::fmt::Display for MarkerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A marker's name as it stands on a wallet, borrowed from the markers
/// read: it becomes a [`MarkerName`] only where it is kept, so that going
/// through a wallet's markers allocates nothing for those passed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundName<'a>(&'a str);

impl FoundName<'_> {
    /// The name, owned.
    pub fn to_name(self) -> MarkerName {
        MarkerName(self.0.to_string())
    }
}

impl std::fmt::Display for FoundName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// One marker's value, read from a wallet or about to be written to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker<'a> {
    /// A credit of action `action`.
    Credit {
        /// The action id (`tx`).
        action: &'a str,
        /// The credit's units (absent on markers of early releases).
        units: Option<Units>,
        /// When it was written, in milliseconds since the epoch.
        at_ms: Option<u64>,
    },
    /// An operator's adjustment `id`.
    Adjustment {
        /// The adjustment id (`adj`).
        id: &'a str,
        /// When it was written.
        at_ms: Option<u64>,
    },
    /// A value ledgerd never writes: kept as it is, never pruned.
    Unknown,
}

impl<'a> Marker<'a> {
    /// Reads a marker's value.
    pub fn read(value: &'a Value) -> Self {
        let at_ms = value.get("at_ms").and_then(Value::as_u64);
        if let Some(action) = value.get("tx").and_then(Value::as_str) {
            let units = value
                .get("units")
                .and_then(Value::as_u64)
                .and_then(|u| Units::new(u).ok());
            return Marker::Credit { action, units, at_ms };
        }
        match value.get("adj").and_then(Value::as_str) {
            Some(id) => Marker::Adjustment { id, at_ms },
            None => Marker::Unknown,
        }
    }

    /// The marker of a credit of `units` by action `action`, written now (`at_ms`).
    pub fn credit(action: &'a str, units: Units, at_ms: u64) -> Self {
        Marker::Credit {
            action,
            units: Some(units),
            at_ms: Some(at_ms),
        }
    }

    /// The marker of adjustment `id`, written now (`at_ms`).
    pub fn adjustment(id: &'a str, at_ms: u64) -> Self {
        Marker::Adjustment { id, at_ms: Some(at_ms) }
    }

    /// The action whose credit this marks, if it marks one.
    pub fn action(&self) -> Option<&'a str> {
        match self {
            Marker::Credit { action, .. } => Some(*action),
            _ => None,
        }
    }

    /// When it was written, if it says.
    pub fn at_ms(&self) -> Option<u64> {
        match self {
            Marker::Credit { at_ms, .. } | Marker::Adjustment { at_ms, .. } => *at_ms,
            Marker::Unknown => None,
        }
    }

    /// The value to write on the wallet. `None` for [`Marker::Unknown`]:
    /// ledgerd writes only markers it knows.
    pub fn to_value(&self) -> Option<Value> {
        let mut out = Map::new();
        match self {
            Marker::Credit { action, units, at_ms } => {
                out.insert("tx".into(), Value::from(*action));
                if let Some(units) = units {
                    out.insert("units".into(), Value::from(units.get()));
                }
                if let Some(at) = at_ms {
                    out.insert("at_ms".into(), Value::from(*at));
                }
            }
            Marker::Adjustment { id, at_ms } => {
                out.insert("adj".into(), Value::from(*id));
                if let Some(at) = at_ms {
                    out.insert("at_ms".into(), Value::from(*at));
                }
            }
            Marker::Unknown => return None,
        }
        Some(Value::Object(out))
    }
}

/// The markers on one state of a wallet, as read (values a later release
/// may add are kept as they are): shared, since a wallet's state is copied
/// wherever it is known, and changed only by [`Markers::after`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Markers(Arc<Map<String, Value>>);

impl Markers {
    /// The markers in the `ledger.applied` xattr as read (`None`, or
    /// anything but an object: none).
    pub fn from_xattr(value: Option<Value>) -> Self {
        match value {
            Some(Value::Object(map)) => Self(Arc::new(map)),
            _ => Self::default(),
        }
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the marker `name` is on the wallet.
    pub fn contains(&self, name: &MarkerName) -> bool {
        self.0.contains_key(name.as_str())
    }

    /// The marker `name`, if it is on the wallet.
    pub fn get(&self, name: &MarkerName) -> Option<Marker<'_>> {
        self.0.get(name.as_str()).map(Marker::read)
    }

    /// Every marker, by name.
    pub fn iter(&self) -> impl Iterator<Item = (FoundName<'_>, Marker<'_>)> {
        self.0
            .iter()
            .map(|(name, value)| (FoundName(name), Marker::read(value)))
    }

    /// The actions whose credits the markers record, sorted (what audits
    /// and tests compare).
    pub fn actions(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .iter()
            .filter_map(|(_, marker)| marker.action().map(str::to_string))
            .collect();
        ids.sort();
        ids
    }

    /// The markers a write leaves: these, less `removed`, plus `added`.
    pub fn after(&self, removed: &[MarkerName], added: &[(MarkerName, Value)]) -> Self {
        if removed.is_empty() && added.is_empty() {
            return self.clone();
        }
        let mut map = (*self.0).clone();
        for name in removed {
            map.remove(name.as_str());
        }
        for (name, value) in added {
            map.insert(name.as_str().to_string(), value.clone());
        }
        Self(Arc::new(map))
    }

    /// The whole `ledger.applied` object, to write in one spec.
    pub fn to_value(&self) -> Value {
        Value::Object((*self.0).clone())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_are_plain_path_elements_and_distinct() {
        let a = MarkerName::of_action("a.b[0]\"");
        assert!(a.as_str().starts_with('m'));
        assert!(a.as_str().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(a.path(), format!("ledger.applied.{a}"));
        assert_ne!(MarkerName::of_action("1"), MarkerName::of_action("2"));
        assert!(MarkerName::of_adjustment("1").as_str().starts_with('a'));
        assert_eq!(
            MarkerName::of_action("1").as_str()[1..],
            MarkerName::of_adjustment("1").as_str()[1..]
        );
    }

    #[test]
    fn a_marker_reads_back_what_was_written() {
        let units = Units::new(42).expect("units");
        for marker in [Marker::credit("act-1", units, 7), Marker::adjustment("fix-1", 9)] {
            let value = marker.to_value().expect("a known marker");
            assert_eq!(Marker::read(&value), marker);
        }
        assert_eq!(
            Marker::credit("act-1", units, 7).to_value(),
            Some(json!({"tx": "act-1", "units": 42, "at_ms": 7}))
        );
        assert_eq!(
            Marker::adjustment("fix-1", 9).to_value(),
            Some(json!({"adj": "fix-1", "at_ms": 9}))
        );
    }

    #[test]
    fn markers_of_early_releases_and_strangers_read_without_failing() {
        let old = json!({"tx": "a"});
        assert_eq!(
            Marker::read(&old),
            Marker::Credit {
                action: "a",
                units: None,
                at_ms: None
            }
        );
        for strange in [json!(null), json!(3), json!({"tx": 3}), json!({"other": "x"})] {
            assert_eq!(Marker::read(&strange), Marker::Unknown, "{strange}");
            assert_eq!(Marker::read(&strange).action(), None);
        }
        assert_eq!(Marker::Unknown.to_value(), None);
    }

    #[test]
    fn after_removes_then_adds_and_leaves_the_original_alone() {
        let (a, b, c) = (
            MarkerName::of_action("a"),
            MarkerName::of_action("b"),
            MarkerName::of_action("c"),
        );
        let value = |id: &str| Marker::credit(id, Units::ZERO, 1).to_value().expect("known");
        let read = Markers::from_xattr(Some(json!({a.as_str(): value("a"), b.as_str(): value("b")})));
        let next = read.after(std::slice::from_ref(&a), &[(c.clone(), value("c"))]);
        assert!(read.contains(&a) && read.contains(&b) && !read.contains(&c));
        assert!(!next.contains(&a) && next.contains(&b) && next.contains(&c));
        assert_eq!(next.get(&c).and_then(|m| m.action()), Some("c"));
        assert_eq!(Markers::from_xattr(Some(json!([1]))).len(), 0);
        assert!(Markers::from_xattr(None).is_empty());
    }
}

//! Document keys and the rules that make an id or a wallet hash safe in one.

use sha2::{Digest as _, Sha256};

/// Longest document key, in bytes. Couchbase Server docs, "Size Limits":
/// "Max key length 250 bytes" (in the default collection, which ledgerd
/// uses; 246 in a named one). The stores enforce it (`store::limits`).
pub const KEY_BYTES_MAX: usize = 250;
/// Prefix of queued actions in the queue bucket.
pub const ACTION_PREFIX: &str = "action:";
/// Prefix of rejected actions in the queue bucket.
pub const FAILED_PREFIX: &str = "failed:";
/// Prefix of wallet balances in the ledger bucket.
pub const BALANCE_PREFIX: &str = "balance:";
/// Prefix of transaction records in the ledger bucket.
pub const TX_PREFIX: &str = "tx:";
/// Prefix of operators' wallet adjustments in the ledger bucket.
pub const ADJ_PREFIX: &str = "adj:";
/// The queue-bucket document whose xattrs list the replicas (the
/// membership, see `worker::membership`). Its prefix is no action's.
pub const MEMBERS_KEY: &str = "members:ledgerd";
/// Extended attribute under which the members' heartbeats live, one path
/// per member id.
pub const MEMBERS_XATTR: &str = "ledger.members";
/// Extended attribute under which a wallet's idempotency markers live.
pub const MARKERS_XATTR: &str = "ledger.applied";
/// The xattr on a queued action that says why its last attempt was blocked
/// and when it is tried again, for operators (`ledgerd queue`, `status`,
/// metrics): every process and command sees it, and Couchbase's queue
/// state index covers it. The protocol never reads it; it goes with the
/// action, or with a producer's rewrite of it.
pub const BLOCKED_XATTR: &str = "ledger.blocked";

/// Why a string cannot be used inside a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The string is empty.
    #[error("is empty")]
    Empty,
    /// The key would be longer than the store allows.
    #[error("makes the key {key_bytes} bytes long, more than {KEY_BYTES_MAX}")]
    TooLong {
        /// Length of the whole key.
        key_bytes: usize,
    },
    /// The string contains a control character.
    #[error("contains a control character")]
    ControlCharacter,
}

fn check(prefix: &str, part: &str) -> Result<(), KeyError> {
    if part.is_empty() {
        return Err(KeyError::Empty);
    }
    let key_bytes = prefix.len() + part.len();
    if key_bytes > KEY_BYTES_MAX {
        return Err(KeyError::TooLong { key_bytes });
    }
    if part.chars().any(char::is_control) {
        return Err(KeyError::ControlCharacter);
    }
    Ok(())
}

/// Checks a wallet hash: `balance:<hash>` must be a valid key.
pub fn check_hash(hash: &str) -> Result<(), KeyError> {
    check(BALANCE_PREFIX, hash)
}

/// Checks an action id: `action:<id>` (and so `failed:<id>`, `tx:<id>`) must be a valid key.
pub fn check_action_id(id: &str) -> Result<(), KeyError> {
    check(ACTION_PREFIX, id)
}

/// `action:<id>`.
pub fn action_key(id: &str) -> String {
    format!("{ACTION_PREFIX}{id}")
}

/// `failed:<id>`.
pub fn failed_key(id: &str) -> String {
    format!("{FAILED_PREFIX}{id}")
}

/// `balance:<hash>`.
pub fn balance_key(hash: &str) -> String {
    format!("{BALANCE_PREFIX}{hash}")
}

/// `tx:<id>`.
pub fn tx_key(id: &str) -> String {
    format!("{TX_PREFIX}{id}")
}

/// `adj:<id>`.
pub fn adj_key(id: &str) -> String {
    format!("{ADJ_PREFIX}{id}")
}

/// Lowercase hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether a ledger record's body names wallet `hash`: a `tx:` whose
/// `credits` hold it, an `adj:` of it.
pub fn record_names(key: &str, body: &[u8], hash: &str) -> bool {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    if key.starts_with(TX_PREFIX) {
        doc.get("credits")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|credits| {
                credits
                    .iter()
                    .any(|c| c.get("hash").and_then(serde_json::Value::as_str) == Some(hash))
            })
    } else {
        doc.get("hash").and_then(serde_json::Value::as_str) == Some(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        assert_eq!(check_hash(""), Err(KeyError::Empty));
        assert_eq!(check_hash("a\u{7}b"), Err(KeyError::ControlCharacter));
        assert_eq!(check_hash("a\nb"), Err(KeyError::ControlCharacter));
        assert_eq!(check_hash(&"h".repeat(242)), Ok(()));
        assert_eq!(check_hash(&"h".repeat(243)), Err(KeyError::TooLong { key_bytes: 251 }));
        assert_eq!(check_action_id(&"i".repeat(243)), Ok(()));
        assert!(check_action_id(&"i".repeat(244)).is_err());
        assert_eq!(check_hash("wallet é ✓"), Ok(()));
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

//! Parsing an `action:<id>` body into a plan of exact credits.
//!
//! The body is read as raw JSON text: every share keeps its original digits
//! (via `RawValue`), and every object is read as an ordered list of entries
//! so that a repeated key is an error rather than a silently lost share.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::Serialize;
use serde_json::value::RawValue;

use super::decimal::ExactDecimal;
use super::keys::{check_hash, sha256_hex};
use super::split::{split, SHARE_SCALE_FULL};
use super::units::{AmountError, Units, TOKEN_DECIMALS, TOTAL_SUPPLY_UNITS};

/// Largest action body accepted, in bytes.
pub const ACTION_BYTES_MAX: usize = 1_048_576;
/// Most beneficiary entries in one action.
pub const BENEFICIARIES_MAX: usize = 1_000;
/// Longest excerpt of an offending value quoted in a reason, in characters.
const QUOTE_CHARS_MAX: usize = 40;

/// How an action's shares are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each share is a token amount.
    Amount,
    /// Each share is a percentage of `reward`.
    Split,
}

/// One wallet's credit within a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Credit {
    /// The beneficiary wallet hash.
    pub hash: String,
    /// Units to add to its balance.
    pub units: Units,
}

/// What an action entitles each wallet to: credits sorted by hash, no
/// hash twice, no zero credit, and a digest of the exact body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The mode the body was read in.
    pub mode: Mode,
    /// Credits in ascending hash order.
    pub credits: Vec<Credit>,
    /// The sum of all credits.
    pub total: Units,
    /// SHA-256 of the body bytes, lowercase hex.
    pub digest: String,
}

/// Why an action body was rejected. The text is the reason users see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// The body exceeds [`ACTION_BYTES_MAX`].
    #[error("body is {0} bytes, more than the {ACTION_BYTES_MAX} allowed")]
    TooLarge(usize),
    /// The body is not valid JSON.
    #[error("body is not valid JSON: {0}")]
    Json(String),
    /// The body is JSON but not an object.
    #[error("body is not a JSON object")]
    NotAnObject,
    /// An object repeats a key.
    #[error("duplicate key {key} in {place}")]
    DuplicateKey {
        /// The repeated key, quoted.
        key: String,
        /// Where the object is.
        place: String,
    },
    /// No `beneficiaries` field.
    #[error("missing \"beneficiaries\"")]
    MissingBeneficiaries,
    /// `beneficiaries` has no entries.
    #[error("\"beneficiaries\" is empty")]
    EmptyBeneficiaries,
    /// `beneficiaries` or one entry has the wrong shape.
    #[error("{0}")]
    Shape(String),
    /// More entries than [`BENEFICIARIES_MAX`].
    #[error("{0} beneficiaries, more than the {BENEFICIARIES_MAX} allowed")]
    TooManyBeneficiaries(usize),
    /// A hash cannot be a wallet key.
    #[error("beneficiary {hash}: hash {why}")]
    Hash {
        /// The hash, quoted.
        hash: String,
        /// What is wrong with it.
        why: String,
    },
    /// A share is not acceptable.
    #[error("beneficiary {hash}: share {value} {why}")]
    Share {
        /// The hash, quoted.
        hash: String,
        /// The share's text, quoted and shortened.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The reward is not acceptable.
    #[error("reward {value} {why}")]
    Reward {
        /// The reward's text, shortened.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// Amount mode: credits to one wallet add up beyond the supply.
    #[error("beneficiary {0}: repeated shares add up to more than the total supply")]
    SumAboveSupply(String),
    /// Split mode: shares add up to more than 100%.
    #[error("shares add up to {0}%, more than 100")]
    SharesAbove100(String),
    /// Split mode: the reward is too small to give anyone a unit.
    #[error("the split distributes 0 units (reward too small for these shares)")]
    NothingToDistribute,
}

impl ActionError {
    /// What kind of rejection this is, without the beneficiary, the value
    /// or any count: the same words for every action rejected the same
    /// way, so rejections can be counted and filtered by kind.
    pub fn kind(&self) -> String {
        let general = |what: &str, why: &str| format!("{what} {}", why.split(':').next().unwrap_or(why).trim());
        match self {
            ActionError::TooLarge(_) => "body too large".into(),
            ActionError::Json(_) => "not valid JSON".into(),
            ActionError::NotAnObject => "not a JSON object".into(),
            ActionError::DuplicateKey { .. } => "duplicate key".into(),
            ActionError::MissingBeneficiaries => "missing beneficiaries".into(),
            ActionError::EmptyBeneficiaries => "empty beneficiaries".into(),
            ActionError::Shape(_) => "beneficiaries of the wrong shape".into(),
            ActionError::TooManyBeneficiaries(_) => "too many beneficiaries".into(),
            // A key's length is in its reason: counted apart, it would
            // make one kind per length.
            ActionError::Hash { why, .. } => format!("hash {}", generalize(why)),
            ActionError::Share { why, .. } => general("share", why),
            ActionError::Reward { why, .. } => general("reward", why),
            ActionError::SumAboveSupply(_) => "shares above the total supply".into(),
            ActionError::SharesAbove100(_) => "shares above 100%".into(),
            ActionError::NothingToDistribute => "nothing to distribute".into(),
        }
    }
}

/// `why` up to its first detail (`: …`), with each number written `N`.
fn generalize(why: &str) -> String {
    let head = why.split(':').next().unwrap_or(why).trim();
    let mut out = String::with_capacity(head.len());
    let mut in_number = false;
    for c in head.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            out.push(c);
            in_number = false;
        }
    }
    out
}

/// A JSON object read as its entries in order, values left as raw text.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// Shortens and quotes a value for a reason.
fn quote(text: &str) -> String {
    if text.chars().count() <= QUOTE_CHARS_MAX {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(QUOTE_CHARS_MAX).collect();
    format!("{head:?}… ({} characters)", text.chars().count())
}

/// A JSON value as written, shortened, for messages: a string keeps its
/// one pair of JSON quotes, a number has none (JSON text holds no control
/// characters, so it is safe to show as is).
fn shown(raw: &RawValue) -> String {
    let text = raw.get();
    if text.chars().count() <= QUOTE_CHARS_MAX {
        return text.to_string();
    }
    let head: String = text.chars().take(QUOTE_CHARS_MAX).collect();
    format!("{head}… ({} characters)", text.chars().count())
}

/// The raw text of a JSON value as its kind, for messages.
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn entries<'a>(raw: &'a RawValue, place: &str) -> Result<Entries<'a>, ActionError> {
    if !raw.get().starts_with('{') {
        return Err(ActionError::Shape(format!("{place} is {}, not an object", kind(raw))));
    }
    let entries: Entries<'a> = serde_json::from_str(raw.get()).map_err(|e| ActionError::Json(e.to_string()))?;
    let mut seen = HashSet::with_capacity(entries.0.len());
    for (key, _) in &entries.0 {
        if !seen.insert(key.as_str()) {
            return Err(ActionError::DuplicateKey {
                key: quote(key),
                place: place.to_string(),
            });
        }
    }
    Ok(entries)
}

/// A number or a string holding a plain decimal, read exactly.
fn decimal_text(raw: &RawValue) -> Result<(String, bool), String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text)
            .map(|s| (s, false))
            .map_err(|e| format!("is not a valid string: {e}")),
        Some(b'-' | b'0'..=b'9') => Ok((text.to_string(), true)),
        _ => Err(format!("must be a number or a decimal string, not {}", kind(raw))),
    }
}

/// Reads the `(hash, raw share)` pairs of any of the three accepted shapes.
fn beneficiary_entries(raw: &RawValue) -> Result<Vec<(String, &RawValue)>, ActionError> {
    let text = raw.get();
    if text.starts_with('{') {
        return Ok(entries(raw, "\"beneficiaries\"")?.0);
    }
    if !text.starts_with('[') {
        return Err(ActionError::Shape(format!(
            "\"beneficiaries\" is {}, not an object or an array",
            kind(raw)
        )));
    }
    let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| ActionError::Json(e.to_string()))?;
    if items.len() > BENEFICIARIES_MAX {
        return Err(ActionError::TooManyBeneficiaries(items.len()));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let place = format!("beneficiaries[{i}]");
        let mut fields = entries(item, &place)?.0;
        let is_named =
            fields.len() == 2 && fields.iter().any(|(k, _)| k == "hash") && fields.iter().any(|(k, _)| k == "share");
        if is_named {
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            let hash_raw = fields[0].1;
            let hash: String = serde_json::from_str(hash_raw.get())
                .map_err(|_| ActionError::Shape(format!("{place}: \"hash\" is {}, not a string", kind(hash_raw))))?;
            out.push((hash, fields[1].1));
        } else if fields.len() == 1 && fields[0].0 != "hash" && fields[0].0 != "share" {
            out.extend(fields);
        } else {
            return Err(ActionError::Shape(format!(
                "{place}: expected {{\"<hash>\": share}} or {{\"hash\": \"<hash>\", \"share\": share}}"
            )));
        }
    }
    Ok(out)
}

/// A share: 0 < share <= 100 with at most 8 decimals, in 10^-8.
fn parse_share(hash: &str, raw: &RawValue) -> Result<u128, ActionError> {
    let err = |why: String| ActionError::Share {
        hash: quote(hash),
        value: shown(raw),
        why,
    };
    let (text, allow_exponent) = decimal_text(raw).map_err(err)?;
    let value = ExactDecimal::parse(&text, allow_exponent).map_err(|e| err(e.to_string()))?;
    if value.is_negative() || value.is_zero() {
        return Err(err("must be greater than 0".into()));
    }
    value.to_scaled(TOKEN_DECIMALS, SHARE_SCALE_FULL).map_err(|e| match e {
        super::decimal::ScaleError::TooLarge => err("is more than 100".into()),
        other => err(other.to_string()),
    })
}

fn parse_reward(raw: &RawValue) -> Result<Units, ActionError> {
    let err = |why: String| ActionError::Reward { value: shown(raw), why };
    let (text, allow_exponent) = decimal_text(raw).map_err(err)?;
    let units = Units::parse_tokens(&text, allow_exponent).map_err(|e| match e {
        AmountError::Scale(super::decimal::ScaleError::TooLarge) => err(AmountError::AboveSupply.to_string()),
        other => err(other.to_string()),
    })?;
    if units == Units::ZERO {
        return Err(err("must be greater than 0".into()));
    }
    Ok(units)
}

/// Parses and validates an action body into its plan.
pub fn plan_action(body: &[u8]) -> Result<Plan, ActionError> {
    if body.len() > ACTION_BYTES_MAX {
        return Err(ActionError::TooLarge(body.len()));
    }
    let text = std::str::from_utf8(body).map_err(|e| ActionError::Json(format!("body is not UTF-8: {e}")))?;
    let root: &RawValue = serde_json::from_str(text).map_err(|e| ActionError::Json(e.to_string()))?;
    if !root.get().starts_with('{') {
        return Err(ActionError::NotAnObject);
    }
    let fields = entries(root, "the body")?.0;
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    let beneficiaries = field("beneficiaries").ok_or(ActionError::MissingBeneficiaries)?;
    let pairs = beneficiary_entries(beneficiaries)?;
    if pairs.is_empty() {
        return Err(ActionError::EmptyBeneficiaries);
    }
    if pairs.len() > BENEFICIARIES_MAX {
        return Err(ActionError::TooManyBeneficiaries(pairs.len()));
    }
    // Shares per hash, repeated hashes summed, in hash order.
    let mut shares: BTreeMap<String, u128> = BTreeMap::new();
    for (hash, raw) in &pairs {
        check_hash(hash).map_err(|e| ActionError::Hash {
            hash: quote(hash),
            why: e.to_string(),
        })?;
        let share = parse_share(hash, raw)?;
        *shares.entry(hash.clone()).or_insert(0) += share;
    }
    let (mode, credits) = match field("reward") {
        None => (Mode::Amount, amount_credits(shares)?),
        Some(raw) => (Mode::Split, split_credits(parse_reward(raw)?, shares)?),
    };
    let total_units: u128 = credits.iter().map(|c| u128::from(c.units.get())).sum();
    // Amount mode bounds each wallet by the supply, not the sum over wallets.
    let total = u64::try_from(total_units)
        .ok()
        .filter(|t| *t <= TOTAL_SUPPLY_UNITS)
        .and_then(|t| Units::new(t).ok())
        .ok_or_else(|| ActionError::SumAboveSupply("(all)".into()))?;
    Ok(Plan {
        mode,
        credits,
        total,
        digest: sha256_hex(body),
    })
}

fn amount_credits(shares: BTreeMap<String, u128>) -> Result<Vec<Credit>, ActionError> {
    shares
        .into_iter()
        .map(|(hash, scaled)| {
            // A share is in 10^-8 tokens, which is exactly one unit.
            let units = u64::try_from(scaled)
                .ok()
                .and_then(|u| Units::new(u).ok())
                .ok_or_else(|| ActionError::SumAboveSupply(quote(&hash)))?;
            Ok(Credit { hash, units })
        })
        .collect()
}

fn split_credits(reward: Units, shares: BTreeMap<String, u128>) -> Result<Vec<Credit>, ActionError> {
    let list: Vec<(String, u128)> = shares.into_iter().collect();
    let sum: u128 = list.iter().map(|(_, s)| s).sum();
    if sum > SHARE_SCALE_FULL {
        let whole = sum / 100_000_000;
        let frac = sum % 100_000_000;
        let percent = format!("{whole}.{frac:08}");
        return Err(ActionError::SharesAbove100(
            percent.trim_end_matches('0').trim_end_matches('.').to_string(),
        ));
    }
    let amounts = split(reward, &list);
    let credits: Vec<Credit> = list
        .into_iter()
        .zip(amounts)
        .filter(|(_, units)| *units != Units::ZERO)
        .map(|((hash, _), units)| Credit { hash, units })
        .collect();
    if credits.is_empty() {
        return Err(ActionError::NothingToDistribute);
    }
    Ok(credits)
}

#[cfg(test)]
#[path = "action_tests.rs"]
mod tests;

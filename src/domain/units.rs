//! Money as an integer count of base units.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::decimal::{DecimalError, ExactDecimal, ScaleError};

/// Decimal places of one token.
pub const TOKEN_DECIMALS: u32 = 8;
/// Base units in one token (10^8).
pub const UNITS_PER_TOKEN: u64 = 100_000_000;
/// Total supply in base units: 100,000,000,000 tokens = 10^19 units.
/// Larger than `i64::MAX`, which is why every amount is a `u64`.
pub const TOTAL_SUPPLY_UNITS: u64 = 10_000_000_000_000_000_000;

/// An amount of tokens in base units, never above the total supply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Units(u64);

/// Why an amount is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// The text is not a decimal number.
    #[error(transparent)]
    Decimal(#[from] DecimalError),
    /// The decimal cannot be expressed in whole units within the supply.
    #[error(transparent)]
    Scale(#[from] ScaleError),
    /// The amount exceeds the total supply.
    #[error("exceeds the total supply of {TOTAL_SUPPLY_UNITS} units")]
    AboveSupply,
}

impl Units {
    /// Zero units.
    pub const ZERO: Units = Units(0);
    /// The whole supply.
    pub const SUPPLY: Units = Units(TOTAL_SUPPLY_UNITS);

    /// Checked constructor: refuses values above the total supply.
    pub fn new(units: u64) -> Result<Self, AmountError> {
        if units > TOTAL_SUPPLY_UNITS {
            return Err(AmountError::AboveSupply);
        }
        Ok(Self(units))
    }

    /// The raw count of base units.
    pub fn get(self) -> u64 {
        self.0
    }

    /// Sum, or `None` when it would exceed the total supply.
    pub fn checked_add(self, other: Units) -> Option<Units> {
        let sum = u128::from(self.0) + u128::from(other.0);
        u64::try_from(sum).ok().and_then(|s| Units::new(s).ok())
    }

    /// Parses a token amount such as `"12.5"` or `1e-8` exactly.
    pub fn parse_tokens(text: &str, allow_exponent: bool) -> Result<Self, AmountError> {
        let value = ExactDecimal::parse(text, allow_exponent)?;
        let scaled = value.to_scaled(TOKEN_DECIMALS, u128::from(TOTAL_SUPPLY_UNITS))?;
        // to_scaled bounded it by the supply, which fits a u64.
        let units = u64::try_from(scaled).map_err(|_| AmountError::AboveSupply)?;
        Units::new(units)
    }

    /// Parses a stored balance: a bare non-negative JSON integer of units.
    pub fn parse_balance(body: &[u8]) -> Result<Self, AmountError> {
        let text = std::str::from_utf8(body).map_err(|_| DecimalError::Syntax)?;
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DecimalError::Syntax.into());
        }
        let value = ExactDecimal::parse(text, false)?;
        let scaled = value.to_scaled(0, u128::from(TOTAL_SUPPLY_UNITS))?;
        let units = u64::try_from(scaled).map_err(|_| AmountError::AboveSupply)?;
        Units::new(units)
    }

    /// The exact token amount with all 8 decimals, e.g. `"0.29000000"`.
    pub fn to_tokens_string(self) -> String {
        format!("{}.{:08}", self.0 / UNITS_PER_TOKEN, self.0 % UNITS_PER_TOKEN)
    }
}

impl TryFrom<u64> for Units {
    type Error = AmountError;
    fn try_from(units: u64) -> Result<Self, Self::Error> {
        Units::new(units)
    }
}

impl From<Units> for u64 {
    fn from(units: Units) -> u64 {
        units.0
    }
}

impl fmt::Display for Units {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} units", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn supply_does_not_fit_i64() {
        assert!(TOTAL_SUPPLY_UNITS > i64::MAX as u64);
        assert_eq!(Units::SUPPLY.to_tokens_string(), "100000000000.00000000");
        assert_eq!(Units::new(TOTAL_SUPPLY_UNITS + 1), Err(AmountError::AboveSupply));
    }

    #[test]
    fn formats_exactly() {
        assert_eq!(Units(0).to_tokens_string(), "0.00000000");
        assert_eq!(Units(1).to_tokens_string(), "0.00000001");
        assert_eq!(Units(29_000_000).to_tokens_string(), "0.29000000");
        assert_eq!(Units(12_345_678_901).to_tokens_string(), "123.45678901");
    }

    #[test]
    fn addition_stops_at_the_supply() {
        assert_eq!(Units::SUPPLY.checked_add(Units(0)), Some(Units::SUPPLY));
        assert_eq!(Units::SUPPLY.checked_add(Units(1)), None);
        assert_eq!(Units(2).checked_add(Units(3)), Some(Units(5)));
    }

    #[test]
    fn balances_are_bare_integers() {
        assert_eq!(Units::parse_balance(b"0"), Ok(Units(0)));
        assert_eq!(Units::parse_balance(b"10000000000000000000"), Ok(Units::SUPPLY));
        assert_eq!(Units::parse_balance(b" 42\n"), Ok(Units(42)));
        for bad in [
            &b""[..],
            b"-1",
            b"1.5",
            b"1e3",
            b"\"5\"",
            b"null",
            b"{}",
            b"007",
            b"10000000000000000001",
            b"\xff",
        ] {
            assert!(Units::parse_balance(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(units in 0..=TOTAL_SUPPLY_UNITS) {
            let units = Units(units);
            let text = units.to_tokens_string();
            prop_assert_eq!(Units::parse_tokens(&text, false), Ok(units));
            prop_assert_eq!(Units::parse_balance(units.get().to_string().as_bytes()), Ok(units));
        }

        #[test]
        fn parsing_agrees_with_an_independent_decimal(int in 0u64..1_000_000, frac in 0u32..100_000_000, exp in -3i32..3) {
            // rust_decimal is the oracle: an exact decimal type written by others.
            let text = format!("{int}.{frac:08}e{exp}");
            let oracle = rust_decimal::Decimal::from_scientific(&text).expect("oracle parses");
            let oracle_units = oracle * rust_decimal::Decimal::from(UNITS_PER_TOKEN);
            let ours = Units::parse_tokens(&text, true);
            if oracle_units.fract().is_zero() {
                let expected: u64 = oracle_units.trunc().to_string().parse().expect("integer");
                prop_assert_eq!(ours, Ok(Units(expected)));
            } else {
                prop_assert_eq!(ours, Err(AmountError::Scale(ScaleError::TooManyDecimals(8))));
            }
        }
    }
}

//! Exact decimal numbers read from their text, never through a float.
//!
//! A JSON number such as `0.29` has no exact `f64` value; reading it into one
//! and scaling by 10^8 gives 28999999 units on some inputs. Everything here
//! works on the digits of the text itself.

use std::fmt;

/// Longest exponent magnitude we keep exactly; larger exponents are clamped,
/// which cannot change any verdict because every value we accept has fewer
/// than 40 significant digits.
const EXPONENT_CLAMP: i64 = 1_000_000_000;

/// Most digits a `u128` holds in full (10^38 < 2^128 < 10^39).
const U128_DIGITS_MAX: i64 = 38;

/// A decimal value: `(-1)^negative × digits × 10^exponent`, with `digits`
/// free of leading and trailing zeros (empty means zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactDecimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

/// Why a text is not a decimal we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// The text is not a decimal number in the accepted grammar.
    #[error("is not a decimal number")]
    Syntax,
    /// The text is in exponent form where only a plain decimal is allowed.
    #[error("is not a plain decimal (exponent forms are only allowed in JSON numbers)")]
    ExponentInString,
}

/// Why a decimal cannot be turned into an integer count of the smallest unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScaleError {
    /// The value has more fractional digits than the scale allows.
    #[error("has more than {0} decimal places")]
    TooManyDecimals(u32),
    /// The value is larger than the allowed maximum.
    #[error("is too large")]
    TooLarge,
    /// The value is below zero.
    #[error("is negative")]
    Negative,
}

impl ExactDecimal {
    /// Parses the JSON number grammar `-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?`.
    /// With `allow_exponent` false the exponent part is refused.
    pub fn parse(text: &str, allow_exponent: bool) -> Result<Self, DecimalError> {
        let bytes = text.as_bytes();
        let mut i = 0;
        let negative = bytes.first() == Some(&b'-');
        if negative {
            i += 1;
        }
        let int_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_digits = &bytes[int_start..i];
        if int_digits.is_empty() || (int_digits.len() > 1 && int_digits[0] == b'0') {
            return Err(DecimalError::Syntax);
        }
        let mut frac_digits: &[u8] = &[];
        if i < bytes.len() && bytes[i] == b'.' {
            let start = i + 1;
            i = start;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_digits = &bytes[start..i];
            if frac_digits.is_empty() {
                return Err(DecimalError::Syntax);
            }
        }
        let mut exponent: i64 = 0;
        if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
            if !allow_exponent {
                return Err(DecimalError::ExponentInString);
            }
            i += 1;
            let exp_negative = match bytes.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                exponent = (exponent * 10 + i64::from(bytes[i] - b'0')).min(EXPONENT_CLAMP);
                i += 1;
            }
            if i == start {
                return Err(DecimalError::Syntax);
            }
            if exp_negative {
                exponent = -exponent;
            }
        }
        if i != bytes.len() {
            return Err(DecimalError::Syntax);
        }
        Ok(Self::normalise(negative, int_digits, frac_digits, exponent))
    }

    fn normalise(negative: bool, int_digits: &[u8], frac_digits: &[u8], exponent: i64) -> Self {
        let mut digits: Vec<u8> = int_digits.iter().chain(frac_digits).map(|d| d - b'0').collect();
        // The value is digits × 10^(exponent - frac_len).
        let frac_len = i64::try_from(frac_digits.len()).unwrap_or(i64::MAX);
        let mut exponent = exponent.saturating_sub(frac_len);
        let leading = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..leading);
        while digits.last() == Some(&0) {
            digits.pop();
            exponent = exponent.saturating_add(1);
        }
        if digits.is_empty() {
            exponent = 0;
        }
        Self {
            negative: negative && !digits.is_empty(),
            digits,
            exponent,
        }
    }

    /// True for zero (including `-0`).
    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// True for values below zero.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The value × 10^scale as an exact integer no larger than `max`.
    pub fn to_scaled(&self, scale: u32, max: u128) -> Result<u128, ScaleError> {
        if self.negative {
            return Err(ScaleError::Negative);
        }
        if self.digits.is_empty() {
            return Ok(0);
        }
        let shift = self.exponent.saturating_add(i64::from(scale));
        let len = i64::try_from(self.digits.len()).unwrap_or(i64::MAX);
        if len.saturating_add(shift) > U128_DIGITS_MAX {
            return Err(ScaleError::TooLarge);
        }
        if shift < 0 {
            // digits has no trailing zero, so a negative shift leaves a fraction.
            return Err(ScaleError::TooManyDecimals(scale));
        }
        let mut value: u128 = 0;
        for d in &self.digits {
            value = value * 10 + u128::from(*d);
        }
        for _ in 0..shift {
            value *= 10;
        }
        if value > max {
            return Err(ScaleError::TooLarge);
        }
        Ok(value)
    }
}

impl fmt::Display for ExactDecimal {
    /// Scientific form of the normalised value, for diagnostics only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.digits.is_empty() {
            return f.write_str("0");
        }
        let digits: String = self.digits.iter().map(|d| char::from(b'0' + d)).collect();
        let sign = if self.negative { "-" } else { "" };
        write!(f, "{sign}{digits}e{}", self.exponent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(text: &str) -> Result<u128, ScaleError> {
        ExactDecimal::parse(text, true)
            .expect("valid syntax")
            .to_scaled(8, u128::MAX)
    }

    #[test]
    fn reads_digits_exactly() {
        assert_eq!(scaled("0.29"), Ok(29_000_000));
        assert_eq!(scaled("1.15"), Ok(115_000_000));
        assert_eq!(scaled("4.35"), Ok(435_000_000));
        assert_eq!(scaled("0.57"), Ok(57_000_000));
        assert_eq!(scaled("2.3"), Ok(230_000_000));
        assert_eq!(scaled("1e-8"), Ok(1));
        assert_eq!(scaled("1E2"), Ok(10_000_000_000));
        assert_eq!(scaled("1.5e+1"), Ok(1_500_000_000));
        assert_eq!(scaled("100.000000000"), Ok(10_000_000_000));
        assert_eq!(scaled("0.00000001000"), Ok(1));
    }

    #[test]
    fn refuses_what_it_cannot_hold_exactly() {
        assert_eq!(scaled("0.000000001"), Err(ScaleError::TooManyDecimals(8)));
        assert_eq!(scaled("1e-400"), Err(ScaleError::TooManyDecimals(8)));
        assert_eq!(scaled("1e400"), Err(ScaleError::TooLarge));
        assert_eq!(scaled("1e99999999999999999999"), Err(ScaleError::TooLarge));
        assert_eq!(scaled(&"9".repeat(500)), Err(ScaleError::TooLarge));
        assert_eq!(scaled("-1"), Err(ScaleError::Negative));
        assert_eq!(scaled("-0"), Ok(0));
        assert_eq!(scaled("0e400"), Ok(0));
    }

    #[test]
    fn enforces_the_json_grammar() {
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1.2.3", " 1", "1 ", "0x10", "NaN", "1_0",
        ] {
            assert_eq!(ExactDecimal::parse(bad, true), Err(DecimalError::Syntax), "{bad:?}");
        }
        assert_eq!(ExactDecimal::parse("1e2", false), Err(DecimalError::ExponentInString));
    }
}

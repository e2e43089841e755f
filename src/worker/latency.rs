//! Claim-to-completion times, kept as a histogram of fixed size: a worker
//! that runs for months must not keep one sample per action (it did, and
//! grew by about 20 bytes per action), and `bench` needs percentiles, not
//! every sample.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest time recorded as itself, in µs (one hour); a longer one is
/// recorded as this. Fixes the histogram's size: with
/// [`LATENCY_SIGNIFICANT_DIGITS`], about 23,000 counters (184 KiB), however
/// many actions are recorded.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Decimal digits each recorded time keeps (3: within 0.1%).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// A fixed-size histogram of durations, in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Latencies {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Latencies {
    /// An empty histogram, of its one fixed size.
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts (1 < max, at
        // most 5 digits): a failure here is a defect, caught by every test.
        let histogram = Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        Self(histogram)
    }

    /// Records one duration (0 as 1 µs, beyond [`LATENCY_US_MAX`] as that).
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(us);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The duration at quantile `q` (0 to 1) in ms; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.count() == 0 {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    /// The longest duration recorded, in ms; 0 when empty.
    pub fn max_ms(&self) -> f64 {
        if self.count() == 0 {
            return 0.0;
        }
        self.0.max() as f64 / 1000.0
    }

    /// Adds every duration of `other` (another process's, say).
    pub fn merge(&mut self, other: &Latencies) {
        // Both have the same bounds, so nothing can fail to fit; saturate
        // rather than fail if a count ever overflowed.
        for v in other.0.iter_recorded() {
            self.0.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }

    /// How many counters the histogram holds: the same whatever was
    /// recorded (what the bounded-memory tests pin).
    pub fn counters(&self) -> usize {
        self.0.distinct_values()
    }
}

/// On the wire (`run --bench-report`): `[value_us, count]` for each value
/// recorded, at most one pair per counter.
impl Serialize for Latencies {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(u64, u64)> = self
            .0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        pairs.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Latencies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(u64, u64)>::deserialize(d)?;
        let mut out = Latencies::new();
        for (value, count) in pairs {
            out.0.saturating_record_n(value.clamp(1, LATENCY_US_MAX), count);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_thousandth_and_the_size_never_changes() {
        let mut l = Latencies::new();
        let empty = l.counters();
        assert_eq!((l.quantile_ms(0.5), l.max_ms()), (0.0, 0.0));
        for ms in 1..=1_000u64 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.count(), 1_000);
        assert!((l.quantile_ms(0.5) - 500.0).abs() <= 0.5, "{}", l.quantile_ms(0.5));
        assert!((l.quantile_ms(0.99) - 990.0).abs() <= 1.0, "{}", l.quantile_ms(0.99));
        assert!((l.max_ms() - 1_000.0).abs() <= 1.0, "{}", l.max_ms());
        // A day is recorded as the longest time kept, not refused.
        l.record(Duration::from_secs(86_400));
        assert!(l.max_ms() >= 3_599_000.0);
        for _ in 0..100_000 {
            l.record(Duration::from_micros(1_234));
        }
        assert_eq!(l.counters(), empty, "one counter per value bucket, fixed");
    }

    #[test]
    fn a_report_round_trips_and_merges() {
        let (mut a, mut b) = (Latencies::new(), Latencies::new());
        a.record(Duration::from_millis(2));
        b.record(Duration::from_millis(40));
        b.record(Duration::from_millis(40));
        let text = serde_json::to_string(&b).expect("serialize");
        let back: Latencies = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, b);
        a.merge(&back);
        assert_eq!(a.count(), 3);
        assert!((a.max_ms() - 40.0).abs() < 0.1);
        assert!(serde_json::from_str::<Latencies>("[[0, 1], [99999999999999, 2]]").is_ok());
        assert!(serde_json::from_str::<Latencies>(r#"{"x":1}"#).is_err());
    }
}

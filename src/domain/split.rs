//! Split mode: sharing a reward by percentages, exactly, by largest remainder.
//!
//! The rule, in full:
//! 1. Each share is a percentage with at most 8 decimals, held as an integer
//!    `s` of 10^-8 percent, so 100% is `SHARE_SCALE_FULL` = 10^10.
//! 2. The total distributed is `T = floor(R × S / 10^10)` units, where `R` is
//!    the reward in units and `S` the sum of the shares. At most the reward.
//! 3. Each beneficiary first gets `floor(R × s / 10^10)` units.
//! 4. The `T - Σ floors` units left over (fewer than the number of
//!    beneficiaries) go one each to the largest remainders
//!    `(R × s) mod 10^10`; equal remainders are ordered by wallet hash,
//!    ascending byte order, so every worker computes the same credits.
//!
//! So the credits sum to exactly `T`, and each differs from its exact
//! entitlement `R × s / 10^10` by less than one unit. All arithmetic is in
//! `u128`: `R × S ≤ 10^19 × 10^10 < 2^128`.

use super::units::Units;

/// 100% expressed in 10^-8 percent.
pub const SHARE_SCALE_FULL: u128 = 10_000_000_000;

/// Splits `reward` among `(hash, share)` pairs, shares in 10^-8 percent.
/// The caller guarantees the shares sum to at most 100% and that hashes are
/// distinct; the result is in the input order and may contain zeros.
pub fn split(reward: Units, shares: &[(String, u128)]) -> Vec<Units> {
    let reward = u128::from(reward.get());
    let sum: u128 = shares.iter().map(|(_, s)| s).sum();
    debug_assert!(sum <= SHARE_SCALE_FULL, "shares above 100% reach split");
    let total = reward * sum / SHARE_SCALE_FULL;

    let mut amounts: Vec<u128> = Vec::with_capacity(shares.len());
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(shares.len());
    for (i, (_, share)) in shares.iter().enumerate() {
        let exact = reward * share;
        amounts.push(exact / SHARE_SCALE_FULL);
        remainders.push((exact % SHARE_SCALE_FULL, i));
    }
    let floors: u128 = amounts.iter().sum();
    let leftover = total - floors;
    remainders.sort_by(|(ra, ia), (rb, ib)| rb.cmp(ra).then_with(|| shares[*ia].0.cmp(&shares[*ib].0)));
    for (_, i) in remainders.iter().take(usize::try_from(leftover).unwrap_or(usize::MAX)) {
        amounts[*i] += 1;
    }
    amounts
        .into_iter()
        .map(|a| {
            // Each amount is at most the reward, itself a valid Units value.
            let a = u64::try_from(a).unwrap_or(u64::MAX);
            Units::new(a).unwrap_or(Units::SUPPLY)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::units::TOTAL_SUPPLY_UNITS;
    use proptest::prelude::*;

    fn shares(list: &[(&str, u128)]) -> Vec<(String, u128)> {
        list.iter().map(|(h, s)| (h.to_string(), *s)).collect()
    }

    #[test]
    fn thirds_go_to_the_lowest_hash_on_ties() {
        let third = SHARE_SCALE_FULL / 3; // 33.33333333%
        let out = split(
            Units::new(100).expect("valid"),
            &shares(&[("c", third), ("a", third), ("b", third)]),
        );
        // total = floor(100 × 99.99999999 / 100) = 99: 33 each, no leftover.
        assert_eq!(out.iter().map(|u| u.get()).collect::<Vec<_>>(), vec![33, 33, 33]);
        let out = split(
            Units::new(1000).expect("valid"),
            &shares(&[("c", third), ("a", third), ("b", third)]),
        );
        // total 999: 333 each, no leftover; with 1001 units: 1000 total.
        assert_eq!(out.iter().map(|u| u.get()).sum::<u64>(), 999);
        let out = split(
            Units::new(10).expect("valid"),
            &shares(&[
                ("c", SHARE_SCALE_FULL / 2),
                ("a", SHARE_SCALE_FULL / 4),
                ("b", SHARE_SCALE_FULL / 4),
            ]),
        );
        // 5, 2.5, 2.5: one leftover unit goes to "a" (equal remainders).
        assert_eq!(out.iter().map(|u| u.get()).collect::<Vec<_>>(), vec![5, 3, 2]);
    }

    proptest! {
        #[test]
        fn credits_sum_to_the_total_and_stay_within_one_unit(
            reward in 0..=TOTAL_SUPPLY_UNITS,
            raw in proptest::collection::vec(1u128..=SHARE_SCALE_FULL, 1..20),
        ) {
            // Scale the shares down so that they sum to at most 100%.
            let sum: u128 = raw.iter().sum();
            let list: Vec<(String, u128)> = raw
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("h{i:03}"), if sum > SHARE_SCALE_FULL { s * SHARE_SCALE_FULL / sum } else { *s }))
                .collect();
            let reward_units = Units::new(reward).expect("in range");
            let out = split(reward_units, &list);
            let share_sum: u128 = list.iter().map(|(_, s)| s).sum();
            let total = u128::from(reward) * share_sum / SHARE_SCALE_FULL;
            prop_assert_eq!(out.iter().map(|u| u128::from(u.get())).sum::<u128>(), total);
            for ((_, share), got) in list.iter().zip(&out) {
                // |got - R×s/10^10| < 1  ⇔  |got×10^10 - R×s| < 10^10
                let exact = u128::from(reward) * share;
                let got = u128::from(got.get()) * SHARE_SCALE_FULL;
                prop_assert!(got.abs_diff(exact) < SHARE_SCALE_FULL);
            }
        }
    }
}

//! Dashboard counters (per incident, by name) and the time-to-match histogram.
//!
//! Names: `need.{status}`, `need.{status}.category.{c}`, `need.{status}.partition.{p}`,
//! `need.{status}.urgency.{u}`, `need.unmet_safeguarded`, `offer.{live|withdrawn}`,
//! `assignment.{status}`, `providers.available`, `providers.never_offered`, `rounds`,
//! `ttm.{urgency}.{bucket}` and `log_time` (the latest log time seen, in microseconds).

use muster_schema::IncidentId;
use muster_schema::values::Category;

use crate::keys;
use crate::records::{AssignmentStatus, NeedEntry, NeedStatus};

pub const LOG_TIME: &str = "log_time";
pub const UNMET_SAFEGUARDED: &str = "need.unmet_safeguarded";
pub const PROVIDERS_AVAILABLE: &str = "providers.available";
pub const PROVIDERS_NEVER_OFFERED: &str = "providers.never_offered";
pub const ROUNDS: &str = "rounds";

pub fn category_name(c: Category) -> &'static str {
    match c {
        Category::Food => "food",
        Category::Transport => "transport",
        Category::Shelter => "shelter",
        Category::CareVisit => "care_visit",
        Category::Tutoring => "tutoring",
        Category::Space => "space",
        Category::Supplies => "supplies",
        Category::Other => "other",
    }
}

/// The keys of the counters a need in `status` with these attributes contributes 1 to:
/// `need.{status}`, and that with `.category.{c}`, `.partition.{p}` and `.urgency.{u}`. Built
/// straight into keys: the fold takes a need out of and back into its counters at every change.
pub fn need_counter_keys(incident: &IncidentId, status: NeedStatus, e: &NeedEntry) -> [Vec<u8>; 4] {
    let mut base = keys::counters_prefix(incident);
    base.extend_from_slice(b"need.");
    base.extend_from_slice(status.name().as_bytes());
    let with = |parts: &[&[u8]]| {
        let mut k = Vec::with_capacity(base.len() + 32);
        k.extend_from_slice(&base);
        for p in parts {
            k.extend_from_slice(p);
        }
        k
    };
    let mut digits = [0u8; 10];
    [
        with(&[]),
        with(&[b".category.", category_name(e.category).as_bytes()]),
        with(&[b".partition.", e.partition.as_str().as_bytes()]),
        with(&[b".urgency.", decimal(u32::from(e.urgency), &mut digits)]),
    ]
}

/// `n` in decimal, written into the end of `buf`.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The key of the counter of assignments in `status`: `assignment.{status}`.
pub fn assignment_counter_key(incident: &IncidentId, status: AssignmentStatus) -> Vec<u8> {
    let mut k = keys::counters_prefix(incident);
    k.extend_from_slice(b"assignment.");
    k.extend_from_slice(status.name().as_bytes());
    k
}

/// Histogram bucket of a duration in milliseconds: exact below 8, then 8 buckets per power of
/// two (each at most 12.5 % wide). Integer-only, so every fold computes the same bucket.
pub fn bucket(ms: u64) -> u32 {
    if ms < 8 {
        return ms as u32;
    }
    let exp = 63 - ms.leading_zeros(); // ≥ 3
    let mant = ((ms >> (exp - 3)) & 7) as u32;
    exp * 8 + mant - 16
}

/// The largest duration (ms) in `bucket`.
pub fn bucket_upper_ms(bucket: u32) -> u64 {
    if bucket < 8 {
        return u64::from(bucket);
    }
    let b = bucket + 16;
    let exp = b / 8;
    let mant = u64::from(b % 8);
    ((8 + mant + 1) << (exp - 3)) - 1
}

pub fn ttm_counter(urgency: u8, bucket: u32) -> String {
    format!("ttm.{urgency}.{bucket:03}")
}

/// Percentile `p` (0–100) of a histogram given as (bucket, count) in bucket order: the upper
/// bound of the bucket holding it, in milliseconds.
pub fn percentile_ms(hist: &[(u32, u64)], p: u64) -> Option<u64> {
    let total: u64 = hist.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let rank = (total * p).div_ceil(100).max(1);
    let mut seen = 0;
    for (b, c) in hist {
        seen += c;
        if seen >= rank {
            return Some(bucket_upper_ms(*b));
        }
    }
    hist.last().map(|(b, _)| bucket_upper_ms(*b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counter_keys_are_the_incident_then_the_dotted_name() {
        let incident = IncidentId::parse("i", "york").expect("valid");
        let e = NeedEntry {
            partition: muster_schema::PartitionCode::parse("p", "E07000164").expect("valid"),
            category: Category::CareVisit,
            urgency: 12,
            status: NeedStatus::Open,
            reported_at: muster_schema::Timestamp(0),
        };
        let keys: Vec<String> = need_counter_keys(&incident, NeedStatus::Proposed, &e)
            .iter()
            .map(|k| String::from_utf8(k.clone()).expect("text"))
            .collect();
        assert_eq!(
            keys,
            [
                "york\0need.proposed",
                "york\0need.proposed.category.care_visit",
                "york\0need.proposed.partition.E07000164",
                "york\0need.proposed.urgency.12",
            ]
        );
        let mut digits = [0u8; 10];
        assert_eq!(decimal(0, &mut digits), b"0");
        assert_eq!(decimal(u32::MAX, &mut digits), b"4294967295");
        assert_eq!(
            assignment_counter_key(&incident, AssignmentStatus::Accepted),
            b"york\0assignment.accepted"
        );
    }

    #[test]
    fn small_durations_are_exact_and_buckets_are_ordered() {
        for ms in 0..8 {
            assert_eq!(bucket(ms), ms as u32);
            assert_eq!(bucket_upper_ms(bucket(ms)), ms);
        }
        assert_eq!(bucket(8), 8);
        assert_eq!(bucket_upper_ms(8), 8);
        assert_eq!(bucket(16), 16);
        assert_eq!(bucket_upper_ms(bucket(17)), 17);
        assert_eq!(bucket_upper_ms(bucket(1000)), 1023);
    }

    proptest! {
        #[test]
        fn a_duration_lies_in_its_bucket_within_an_eighth(ms in 0u64..(1 << 50)) {
            let b = bucket(ms);
            let upper = bucket_upper_ms(b);
            prop_assert!(ms <= upper, "{ms} above its bucket's upper bound {upper}");
            prop_assert!(upper - ms <= ms / 8, "{ms} → {upper}: bucket wider than 12.5 %");
            if b > 0 {
                prop_assert!(bucket_upper_ms(b - 1) < ms, "{ms} belongs to an earlier bucket");
            }
        }
    }

    #[test]
    fn percentiles_come_from_the_bucket_holding_the_rank() {
        let hist = [(1, 50), (5, 40), (bucket(1000), 10)];
        assert_eq!(percentile_ms(&hist, 50), Some(1));
        assert_eq!(percentile_ms(&hist, 90), Some(5));
        assert_eq!(percentile_ms(&hist, 99), Some(1023));
        assert_eq!(percentile_ms(&[], 50), None);
    }
}

//! Domain values carried by events, each with a validating constructor.
//!
//! Values that the matcher decides on are integers (microseconds, microdegrees, metres), so
//! decisions are exact and deterministic. Lists that are sets (skills, categories, required
//! verifications) are stored sorted and deduplicated: one canonical encoding per meaning.

use serde::{Deserialize, Serialize};

use crate::violation::{Violation, Violations};

/// Log time: microseconds since the Unix epoch (UTC), as recorded by intake.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The earliest and latest instants Muster accepts: years 2000 to 2200.
    pub const MIN: Timestamp = Timestamp(946_684_800_000_000);
    pub const MAX: Timestamp = Timestamp(7_258_118_400_000_000);

    pub fn from_micros(field: &str, micros: i64) -> Result<Self, Violation> {
        if !(Self::MIN.0..=Self::MAX.0).contains(&micros) {
            return Err(Violation::new(
                field,
                "must be a time between the years 2000 and 2200",
            ));
        }
        Ok(Self(micros))
    }

    pub fn micros(self) -> i64 {
        self.0
    }
}

/// A time window `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimeWindow {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl TimeWindow {
    pub fn new(start_micros: i64, end_micros: i64) -> Result<Self, Violations> {
        let mut vs = Violations::new();
        let start = vs.check(Timestamp::from_micros("start", start_micros));
        let end = vs.check(Timestamp::from_micros("end", end_micros));
        if let (Some(s), Some(e)) = (start, end)
            && e <= s
        {
            vs.push(Violation::new("end", "must be after start"));
        }
        vs.finish(|| TimeWindow {
            start: start.unwrap_or(Timestamp::MIN),
            end: end.unwrap_or(Timestamp::MAX),
        })
    }

    pub fn overlaps(&self, other: &TimeWindow) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// A point on the Earth in microdegrees (about 0.1 m), so distance decisions are integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GeoPoint {
    pub lat_e6: i32,
    pub lon_e6: i32,
}

impl GeoPoint {
    pub fn from_degrees(lat: f64, lon: f64) -> Result<Self, Violations> {
        let mut vs = Violations::new();
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            vs.push(Violation::new("lat", "must be between -90 and 90 degrees"));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            vs.push(Violation::new(
                "lon",
                "must be between -180 and 180 degrees",
            ));
        }
        // In range, so the rounded microdegrees fit in an i32 (|v| <= 180e6 < 2^31).
        vs.finish(|| GeoPoint {
            lat_e6: (lat * 1e6).round() as i32,
            lon_e6: (lon * 1e6).round() as i32,
        })
    }

    pub fn lat(&self) -> f64 {
        f64::from(self.lat_e6) / 1e6
    }

    pub fn lon(&self) -> f64 {
        f64::from(self.lon_e6) / 1e6
    }
}

/// What a need is for, and what an offer can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Category {
    Food,
    Transport,
    Shelter,
    CareVisit,
    Tutoring,
    Space,
    Supplies,
    Other,
}

impl Category {
    pub const ALL: [Category; 8] = [
        Category::Food,
        Category::Transport,
        Category::Shelter,
        Category::CareVisit,
        Category::Tutoring,
        Category::Space,
        Category::Supplies,
        Category::Other,
    ];
}

/// Urgency from 1 (can wait) to 5 (life or safety at risk today).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Urgency(u8);

impl Urgency {
    pub fn new(field: &str, v: u32) -> Result<Self, Violation> {
        if (1..=5).contains(&v) {
            Ok(Self(v as u8))
        } else {
            Err(Violation::new(field, "must be between 1 and 5"))
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

/// A skill: a short lowercase token (`driving`, `first-aid`, `welsh`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Skill(String);

impl Skill {
    pub const MAX_PER_ITEM: usize = 16;

    pub fn parse(field: &str, s: &str) -> Result<Self, Violation> {
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if s.is_empty() || s.len() > 32 || !s.chars().all(ok) {
            return Err(Violation::new(
                field,
                "must be 1 to 32 lowercase letters, digits or '-'",
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// A canonical skill set: each skill valid, at most [`Skill::MAX_PER_ITEM`], sorted, unique.
    pub fn parse_set(field: &str, items: &[String]) -> Result<Vec<Skill>, Violations> {
        let mut vs = Violations::new();
        if items.len() > Self::MAX_PER_ITEM {
            vs.push(Violation::new(
                field,
                format!("must list at most {} skills", Self::MAX_PER_ITEM),
            ));
        }
        let mut out: Vec<Skill> = items
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                vs.check(Skill::parse("", s).map_err(|v| v.under(&format!("{field}[{i}]"))))
            })
            .collect();
        out.sort();
        out.dedup();
        vs.finish(|| out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A verification a person holds, or that a need requires.
///
/// The criminal-record levels are ordered: an enhanced check with barred list satisfies a need
/// that requires an enhanced check, which satisfies standard, which satisfies basic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum VerificationKind {
    Identity,
    CriminalRecordBasic,
    CriminalRecordStandard,
    CriminalRecordEnhanced,
    CriminalRecordEnhancedBarred,
    /// A named qualification (`first-aid`, `hgv-licence`), same token rule as a skill.
    Qualification(String),
}

impl VerificationKind {
    pub fn qualification(field: &str, name: &str) -> Result<Self, Violation> {
        Skill::parse(field, name).map(|s| VerificationKind::Qualification(s.0))
    }
}

/// What the matcher optimises for in one incident. Set on declaration, changed by a policy event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicyV1 {
    /// Weight of a need's urgency in an assignment's score.
    pub weight_urgency: u32,
    /// Weight of how long the need has waited.
    pub weight_waiting: u32,
    /// Weight of closeness (a shorter trip scores more).
    pub weight_distance: u32,
    /// Weight of spreading load: a volunteer's recent tasks lower their score.
    pub weight_fairness: u32,
    /// No assignment spans more than this many metres, whatever an offer's radius.
    pub max_radius_m: u32,
    /// An assignment not accepted within this many seconds of log time expires.
    pub acceptance_timeout_s: u32,
    /// A round is cut after this many events...
    pub round_every_events: u32,
    /// ...or after this many milliseconds of log time, whichever comes first.
    pub round_every_ms: u32,
    /// A volunteer never holds more than this many pending or accepted assignments.
    pub max_concurrent_per_volunteer: u32,
}

impl Default for PolicyV1 {
    fn default() -> Self {
        Self {
            weight_urgency: 100,
            weight_waiting: 10,
            weight_distance: 50,
            weight_fairness: 30,
            max_radius_m: 25_000,
            acceptance_timeout_s: 3_600,
            round_every_events: 1_000,
            round_every_ms: 2_000,
            max_concurrent_per_volunteer: 3,
        }
    }
}

impl PolicyV1 {
    pub fn validate(&self) -> Result<(), Violations> {
        let mut vs = Violations::new();
        let weights = [
            ("weight_urgency", self.weight_urgency),
            ("weight_waiting", self.weight_waiting),
            ("weight_distance", self.weight_distance),
            ("weight_fairness", self.weight_fairness),
        ];
        for (f, w) in weights {
            if w > 10_000 {
                vs.push(Violation::new(f, "must be at most 10000"));
            }
        }
        if weights.iter().all(|(_, w)| *w == 0) {
            vs.push(Violation::new(
                "weight_urgency",
                "at least one weight must be positive",
            ));
        }
        let ranges = [
            ("max_radius_m", self.max_radius_m, 100, 500_000),
            (
                "acceptance_timeout_s",
                self.acceptance_timeout_s,
                60,
                7 * 86_400,
            ),
            ("round_every_events", self.round_every_events, 1, 100_000),
            ("round_every_ms", self.round_every_ms, 10, 3_600_000),
            (
                "max_concurrent_per_volunteer",
                self.max_concurrent_per_volunteer,
                1,
                100,
            ),
        ];
        for (f, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) {
                vs.push(Violation::new(f, format!("must be between {lo} and {hi}")));
            }
        }
        vs.finish(|| ())
    }
}

/// Who stands behind an offer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Provider {
    Volunteer(crate::ids::PersonId),
    Organisation(crate::ids::PersonId),
}

/// A volunteer's answer to an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Response {
    Accept,
    Decline,
}

/// Personal data about a person: the one field per event that may identify someone.
///
/// Kept apart from everything the matcher reads so it can be encrypted per person (a later
/// version adds an `Encrypted` variant at the end) and erased by destroying that person's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Personal {
    None,
    Plain(PersonalDetails),
}

/// The personal details an agency may attach: names, contact, exact address, free text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PersonalDetails {
    pub name: String,
    pub contact: String,
    pub address: String,
    pub notes: String,
}

impl Personal {
    /// At most this many bytes of personal text per field.
    pub const MAX_FIELD: usize = 4_096;

    pub fn from_details(d: PersonalDetails) -> Result<Self, Violations> {
        let mut vs = Violations::new();
        for (f, v) in [
            ("name", &d.name),
            ("contact", &d.contact),
            ("address", &d.address),
            ("notes", &d.notes),
        ] {
            if v.len() > Self::MAX_FIELD {
                vs.push(Violation::new(
                    f,
                    format!("must be at most {} bytes", Self::MAX_FIELD),
                ));
            }
        }
        let empty = d == PersonalDetails::default();
        vs.finish(|| {
            if empty {
                Personal::None
            } else {
                Personal::Plain(d)
            }
        })
    }
}

/// A short free-text reason (a withdrawal, a stand-down). Not personal data: agencies are told
/// to keep names out of it.
pub fn reason(field: &str, s: &str) -> Result<String, Violation> {
    if s.len() > 512 {
        return Err(Violation::new(field, "must be at most 512 bytes"));
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Violation::new(field, "must not contain control characters"));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_name_the_coordinate_that_is_out_of_range() {
        let p = GeoPoint::from_degrees(53.958_333, -1.080_278).expect("york");
        assert_eq!((p.lat_e6, p.lon_e6), (53_958_333, -1_080_278));
        let e = GeoPoint::from_degrees(91.0, 0.0).expect_err("lat");
        assert_eq!(
            e.0,
            vec![Violation::new("lat", "must be between -90 and 90 degrees")]
        );
        let e = GeoPoint::from_degrees(f64::NAN, 200.0).expect_err("both");
        assert_eq!(e.0.len(), 2);
        assert_eq!(e.0[1].field, "lon");
    }

    #[test]
    fn windows_must_end_after_they_start() {
        let t = 1_800_000_000_000_000;
        assert!(TimeWindow::new(t, t + 1).is_ok());
        let e = TimeWindow::new(t, t).expect_err("empty");
        assert_eq!(e.0[0].field, "end");
        assert!(TimeWindow::new(0, t).is_err());
    }

    #[test]
    fn skill_sets_are_canonical() {
        let s = Skill::parse_set(
            "skills",
            &["driving".into(), "first-aid".into(), "driving".into()],
        )
        .expect("valid");
        assert_eq!(
            s.iter().map(Skill::as_str).collect::<Vec<_>>(),
            ["driving", "first-aid"]
        );
        let e = Skill::parse_set("skills", &["ok".into(), "Not OK".into()]).expect_err("bad");
        assert_eq!(e.0[0].field, "skills[1]");
    }

    #[test]
    fn urgency_is_one_to_five() {
        assert!(Urgency::new("urgency", 0).is_err());
        assert_eq!(Urgency::new("urgency", 5).map(Urgency::get), Ok(5));
        assert!(Urgency::new("urgency", 6).is_err());
    }

    #[test]
    fn the_default_policy_is_valid_and_bad_policies_name_their_fields() {
        assert!(PolicyV1::default().validate().is_ok());
        let bad = PolicyV1 {
            max_radius_m: 0,
            max_concurrent_per_volunteer: 0,
            ..PolicyV1::default()
        };
        let fields: Vec<_> = bad
            .validate()
            .expect_err("bad")
            .0
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["max_radius_m", "max_concurrent_per_volunteer"]);
    }

    #[test]
    fn empty_personal_details_are_stored_as_none() {
        assert_eq!(
            Personal::from_details(PersonalDetails::default()),
            Ok(Personal::None)
        );
        let big = PersonalDetails {
            notes: "x".repeat(5_000),
            ..Default::default()
        };
        assert_eq!(
            Personal::from_details(big).expect_err("big").0[0].field,
            "notes"
        );
    }
}

//! Wire messages into domain values, checking every rule and naming every field that breaks one.
//!
//! Each function takes the field path of the value it converts, so a violation deep inside a
//! bulk item reads `items[3].report_need.need.location.lat: must be between -90 and 90 degrees`.

use muster_proto::v1 as pb;
use muster_schema::events::{NeedSpecV1, OfferSpecV1};
use muster_schema::{
    Category, GeoPoint, Personal, PersonalDetails, PolicyV1, Skill, TimeWindow, Timestamp, Urgency,
    VerificationKind, Violation, Violations,
};

pub const MAX_PARTY: u32 = 1_000;
pub const MAX_CAPACITY: u32 = 1_000;
pub const MAX_RADIUS_M: u32 = 500_000;
pub const MAX_WINDOWS: usize = 64;
pub const MAX_NAME: usize = 256;

fn required<T>(field: &str, v: Option<T>) -> Result<T, Violation> {
    v.ok_or_else(|| Violation::new(field, "is required"))
}

pub fn category(field: &str, v: i32) -> Result<Category, Violation> {
    use pb::Category as C;
    match C::try_from(v) {
        Ok(C::Food) => Ok(Category::Food),
        Ok(C::Transport) => Ok(Category::Transport),
        Ok(C::Shelter) => Ok(Category::Shelter),
        Ok(C::CareVisit) => Ok(Category::CareVisit),
        Ok(C::Tutoring) => Ok(Category::Tutoring),
        Ok(C::Space) => Ok(Category::Space),
        Ok(C::Supplies) => Ok(Category::Supplies),
        Ok(C::Other) => Ok(Category::Other),
        Ok(C::Unspecified) | Err(_) => Err(Violation::new(
            field,
            "must be one of FOOD, TRANSPORT, SHELTER, CARE_VISIT, TUTORING, SPACE, SUPPLIES, OTHER",
        )),
    }
}

/// A set of categories: each valid, sorted, unique; `min` is the fewest allowed.
pub fn categories(field: &str, vs: &[i32], min: usize) -> Result<Vec<Category>, Violations> {
    let mut out = Violations::new();
    let mut cats: Vec<Category> = vs
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            out.check(category("", *v).map_err(|e| e.under(&format!("{field}[{i}]"))))
        })
        .collect();
    if vs.len() < min {
        out.push(Violation::new(field, format!("must list at least {min}")));
    }
    cats.sort();
    cats.dedup();
    out.finish(|| cats)
}

pub fn timestamp(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Timestamp, Violation> {
    let t = required(field, t)?;
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Violation::new(
            field,
            "nanos must be between 0 and 999999999",
        ));
    }
    let micros = t
        .seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(t.nanos / 1_000)))
        .ok_or_else(|| Violation::new(field, "must be a time between the years 2000 and 2200"))?;
    Timestamp::from_micros(field, micros)
}

pub fn window(field: &str, w: Option<&pb::TimeWindow>) -> Result<TimeWindow, Violations> {
    let w = required(field, w)?;
    let mut vs = Violations::new();
    let start = vs.check(timestamp("start", w.start.as_ref()));
    let end = vs.check(timestamp("end", w.end.as_ref()));
    let (Some(start), Some(end)) = (start, end) else {
        return Err(vs.under(field));
    };
    TimeWindow::new(start.0, end.0).map_err(|e| e.under(field))
}

pub fn location(field: &str, l: Option<&pb::Location>) -> Result<GeoPoint, Violations> {
    let l = required(field, l)?;
    GeoPoint::from_degrees(l.lat, l.lon).map_err(|e| e.under(field))
}

fn bounded(field: &str, v: u32, lo: u32, hi: u32) -> Result<u32, Violation> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(Violation::new(
            field,
            format!("must be between {lo} and {hi}"),
        ))
    }
}

pub fn verification_kind(
    field: &str,
    kind: i32,
    qualification: &str,
) -> Result<VerificationKind, Violation> {
    use pb::VerificationKind as K;
    let qual_field = field.rsplit_once('.').map_or_else(
        || "qualification".to_string(),
        |(p, _)| format!("{p}.qualification"),
    );
    let plain = |k: VerificationKind| {
        if qualification.is_empty() {
            Ok(k)
        } else {
            Err(Violation::new(
                qual_field.clone(),
                "must be empty unless the kind is VERIFICATION_KIND_QUALIFICATION",
            ))
        }
    };
    match K::try_from(kind) {
        Ok(K::Identity) => plain(VerificationKind::Identity),
        Ok(K::CriminalRecordBasic) => plain(VerificationKind::CriminalRecordBasic),
        Ok(K::CriminalRecordStandard) => plain(VerificationKind::CriminalRecordStandard),
        Ok(K::CriminalRecordEnhanced) => plain(VerificationKind::CriminalRecordEnhanced),
        Ok(K::CriminalRecordEnhancedBarred) => {
            plain(VerificationKind::CriminalRecordEnhancedBarred)
        }
        Ok(K::Qualification) => VerificationKind::qualification(&qual_field, qualification),
        Ok(K::Unspecified) | Err(_) => Err(Violation::new(
            field,
            "must be IDENTITY, CRIMINAL_RECORD_BASIC, CRIMINAL_RECORD_STANDARD, CRIMINAL_RECORD_ENHANCED, CRIMINAL_RECORD_ENHANCED_BARRED or QUALIFICATION",
        )),
    }
}

/// A need's spec. Its checks name fields relative to the spec; `field` is put in front of
/// them only when one fails, so a valid spec (nearly every one of a bulk import) formats none.
pub fn need_spec(field: &str, n: Option<&pb::NeedSpec>) -> Result<NeedSpecV1, Violations> {
    let n = required(field, n)?;
    need_spec_fields(n).map_err(|vs| vs.under(field))
}

fn need_spec_fields(n: &pb::NeedSpec) -> Result<NeedSpecV1, Violations> {
    let mut vs = Violations::new();
    let category = vs.check(category("category", n.category));
    let urgency = vs.check(Urgency::new("urgency", n.urgency));
    let party = vs.check(bounded("party_size", n.party_size, 1, MAX_PARTY));
    let window = vs.check_all("", window("window", n.window.as_ref()));
    let location = vs.check_all("", location("location", n.location.as_ref()));
    let skills = vs.check_all("", Skill::parse_set("required_skills", &n.required_skills));
    if n.required_verifications.len() > 8 {
        vs.push(Violation::new(
            "required_verifications",
            "must list at most 8 verifications",
        ));
    }
    let mut verifications: Vec<VerificationKind> = n
        .required_verifications
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            vs.check(
                verification_kind("kind", r.kind, &r.qualification)
                    .map_err(|v| v.under(&format!("required_verifications[{i}]"))),
            )
        })
        .collect();
    verifications.sort();
    verifications.dedup();
    let (Some(category), Some(urgency), Some(party), Some(window), Some(location), Some(skills)) =
        (category, urgency, party, window, location, skills)
    else {
        return Err(vs);
    };
    vs.finish(|| NeedSpecV1 {
        category,
        urgency,
        party_size: party as u16,
        window,
        location,
        required_skills: skills,
        required_verifications: verifications,
        vulnerable: n.vulnerable,
    })
}

/// An offer's spec; fields are named as in [`need_spec`].
pub fn offer_spec(field: &str, o: Option<&pb::OfferSpec>) -> Result<OfferSpecV1, Violations> {
    let o = required(field, o)?;
    offer_spec_fields(o).map_err(|vs| vs.under(field))
}

fn offer_spec_fields(o: &pb::OfferSpec) -> Result<OfferSpecV1, Violations> {
    let mut vs = Violations::new();
    let kinds = vs.check_all("", categories("kinds", &o.kinds, 1));
    let skills = vs.check_all("", Skill::parse_set("skills", &o.skills));
    let capacity = vs.check(bounded("capacity", o.capacity, 1, MAX_CAPACITY));
    let location = vs.check_all("", location("location", o.location.as_ref()));
    let radius = vs.check(bounded(
        "travel_radius_m",
        o.travel_radius_m,
        1,
        MAX_RADIUS_M,
    ));
    if o.availability.is_empty() {
        vs.push(Violation::new(
            "availability",
            "must list at least one window",
        ));
    }
    if o.availability.len() > MAX_WINDOWS {
        vs.push(Violation::new(
            "availability",
            format!("must list at most {MAX_WINDOWS} windows"),
        ));
    }
    let mut availability: Vec<TimeWindow> = o
        .availability
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            vs.check_all(
                "",
                window("", Some(w)).map_err(|e| e.under(&format!("availability[{i}]"))),
            )
        })
        .collect();
    availability.sort();
    availability.dedup();
    let (Some(kinds), Some(skills), Some(capacity), Some(location), Some(radius)) =
        (kinds, skills, capacity, location, radius)
    else {
        return Err(vs);
    };
    vs.finish(|| OfferSpecV1 {
        kinds,
        skills,
        capacity: capacity as u16,
        location,
        travel_radius_m: radius,
        availability,
    })
}

/// A policy from the wire: fields left at 0 take the default.
pub fn policy(field: &str, p: Option<&pb::Policy>) -> Result<PolicyV1, Violations> {
    let d = PolicyV1::default();
    let p = p.cloned().unwrap_or_default();
    let or = |v: u32, default: u32| if v == 0 { default } else { v };
    let policy = PolicyV1 {
        weight_urgency: or(p.weight_urgency, d.weight_urgency),
        weight_waiting: or(p.weight_waiting, d.weight_waiting),
        weight_distance: or(p.weight_distance, d.weight_distance),
        weight_fairness: or(p.weight_fairness, d.weight_fairness),
        max_radius_m: or(p.max_radius_m, d.max_radius_m),
        acceptance_timeout_s: or(p.acceptance_timeout_s, d.acceptance_timeout_s),
        round_every_events: or(p.round_every_events, d.round_every_events),
        round_every_ms: or(p.round_every_ms, d.round_every_ms),
        max_concurrent_per_volunteer: or(
            p.max_concurrent_per_volunteer,
            d.max_concurrent_per_volunteer,
        ),
    };
    policy
        .validate()
        .map_err(|e| Violations(e.0.into_iter().map(|v| v.under(field)).collect()))?;
    Ok(policy)
}

pub fn personal(field: &str, p: Option<&pb::PersonalDetails>) -> Result<Personal, Violations> {
    let p = p.cloned().unwrap_or_default();
    Personal::from_details(PersonalDetails {
        name: p.name,
        contact: p.contact,
        address: p.address,
        notes: p.notes,
    })
    .map_err(|e| Violations(e.0.into_iter().map(|v| v.under(field)).collect()))
}

/// A short human-readable name (an incident's).
pub fn name(field: &str, s: &str) -> Result<String, Violation> {
    if s.trim().is_empty() {
        return Err(Violation::new(field, "is required"));
    }
    if s.len() > MAX_NAME || s.chars().any(char::is_control) {
        return Err(Violation::new(
            field,
            format!("must be at most {MAX_NAME} bytes without control characters"),
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields an invalid spec's violations name, in order.
    fn fields_of<T: std::fmt::Debug>(r: Result<T, Violations>) -> Vec<String> {
        r.expect_err("invalid")
            .0
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    fn ts(s: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    }

    fn good_need() -> pb::NeedSpec {
        pb::NeedSpec {
            category: pb::Category::Food as i32,
            urgency: 3,
            party_size: 2,
            window: Some(pb::TimeWindow {
                start: ts(1_800_000_000),
                end: ts(1_800_003_600),
            }),
            location: Some(pb::Location {
                lat: 53.96,
                lon: -1.08,
            }),
            required_skills: vec!["driving".into()],
            required_verifications: vec![pb::VerificationRequirement {
                kind: pb::VerificationKind::CriminalRecordEnhanced as i32,
                qualification: String::new(),
            }],
            vulnerable: true,
        }
    }

    #[test]
    fn a_good_need_converts() {
        let n = need_spec("need", Some(&good_need())).expect("valid");
        assert_eq!(n.urgency.get(), 3);
        assert_eq!(n.location.lat_e6, 53_960_000);
        assert_eq!(
            n.required_verifications,
            vec![VerificationKind::CriminalRecordEnhanced]
        );
    }

    #[test]
    fn every_broken_rule_of_a_need_is_named() {
        let mut n = good_need();
        n.category = 0;
        n.urgency = 9;
        n.location = Some(pb::Location {
            lat: 123.0,
            lon: 0.0,
        });
        n.window = Some(pb::TimeWindow {
            start: ts(1_800_000_000),
            end: ts(1_700_000_000),
        });
        n.required_skills = vec!["Bad Skill".into()];
        n.required_verifications[0].qualification = "first-aid".into();
        let fields = fields_of(need_spec("need", Some(&n)));
        assert_eq!(
            fields,
            [
                "need.category",
                "need.urgency",
                "need.window.end",
                "need.location.lat",
                "need.required_skills[0]",
                "need.required_verifications[0].qualification",
            ]
        );
    }

    #[test]
    fn a_missing_need_is_required() {
        let e = need_spec("need", None).expect_err("missing");
        assert_eq!(e.0, vec![Violation::new("need", "is required")]);
    }

    #[test]
    fn offers_need_a_kind_and_a_window() {
        let o = pb::OfferSpec {
            kinds: vec![],
            skills: vec![],
            capacity: 0,
            location: Some(pb::Location { lat: 1.0, lon: 1.0 }),
            travel_radius_m: 5_000,
            availability: vec![],
        };
        let fields = fields_of(offer_spec("offer", Some(&o)));
        assert_eq!(
            fields,
            ["offer.kinds", "offer.capacity", "offer.availability"]
        );
    }

    #[test]
    fn items_of_lists_are_named_with_their_index() {
        let good = pb::TimeWindow {
            start: ts(1_700_000_000),
            end: ts(1_800_000_000),
        };
        let o = pb::OfferSpec {
            kinds: vec![pb::Category::Food as i32, 0],
            skills: vec!["ok".into(), "Not OK".into()],
            capacity: 1,
            location: Some(pb::Location { lat: 1.0, lon: 1.0 }),
            travel_radius_m: 5_000,
            availability: vec![
                good,
                pb::TimeWindow {
                    start: None,
                    end: ts(1_800_000_000),
                },
            ],
        };
        let fields = fields_of(offer_spec("offer", Some(&o)));
        assert_eq!(
            fields,
            [
                "offer.kinds[1]",
                "offer.skills[1]",
                "offer.availability[1].start"
            ]
        );
        let mut n = good_need();
        n.required_verifications.push(pb::VerificationRequirement {
            kind: 0,
            qualification: String::new(),
        });
        assert_eq!(
            fields_of(need_spec("need", Some(&n))),
            ["need.required_verifications[1].kind"]
        );
    }

    #[test]
    fn an_unset_policy_takes_the_defaults() {
        assert_eq!(policy("policy", None), Ok(PolicyV1::default()));
        let bad = pb::Policy {
            max_radius_m: 5,
            ..Default::default()
        };
        let e = policy("policy", Some(&bad)).expect_err("radius");
        assert_eq!(e.0[0].field, "policy.max_radius_m");
    }

    #[test]
    fn timestamps_outside_the_supported_range_are_refused() {
        assert!(timestamp("t", ts(1_800_000_000).as_ref()).is_ok());
        assert!(timestamp("t", ts(100).as_ref()).is_err());
        assert!(timestamp("t", ts(i64::MAX).as_ref()).is_err());
        assert_eq!(
            timestamp("t", None),
            Err(Violation::new("t", "is required"))
        );
    }
}

//! Golden byte fixtures: every event version ever written must decode forever, to the same value.
//!
//! Each sample below is encoded and compared with `golden/<name>.hex`; the fixture is also decoded
//! and compared with the sample. A missing fixture fails the test; run once with
//! `MUSTER_BLESS=1` to write fixtures for a *new* event version. Existing fixtures are never
//! rewritten: if one stops matching, the change broke the log's encoding — add a version instead.

use std::path::PathBuf;

use muster_schema::events::*;
use muster_schema::ids::EntityKind;
use muster_schema::*;

fn t(micros: i64) -> Timestamp {
    Timestamp(micros)
}

fn incident() -> IncidentId {
    IncidentId::parse("incident", "york-floods-2026").expect("valid")
}

fn envelope(partition: &str, event: Event) -> Envelope {
    Envelope {
        schema_version: ENVELOPE_VERSION,
        event_id: EntityId([7; 16]),
        incident: incident(),
        partition: if partition == "_" {
            PartitionCode::incident_wide()
        } else {
            PartitionCode::parse("p", partition).expect("valid")
        },
        recorded_at: t(1_795_000_000_000_000),
        actor: AgencyId::parse("a", "york-council").expect("valid"),
        idempotency_key: "import-2026-11-21/row-17".into(),
        correlation_id: "corr-1".into(),
        causation_id: Some(EntityId([9; 16])),
        event,
    }
}

fn need_spec() -> NeedSpecV1 {
    NeedSpecV1 {
        category: Category::Shelter,
        urgency: Urgency::new("u", 4).expect("valid"),
        party_size: 4,
        window: TimeWindow::new(1_795_000_000_000_000, 1_795_086_400_000_000).expect("valid"),
        location: GeoPoint::from_degrees(53.958_333, -1.080_278).expect("valid"),
        required_skills: vec![Skill::parse("s", "welsh").expect("valid")],
        required_verifications: vec![
            VerificationKind::CriminalRecordEnhanced,
            VerificationKind::Qualification("first-aid".into()),
        ],
        vulnerable: true,
    }
}

fn offer_spec() -> OfferSpecV1 {
    OfferSpecV1 {
        kinds: vec![Category::Transport, Category::Shelter],
        skills: vec![Skill::parse("s", "driving").expect("valid")],
        capacity: 5,
        location: GeoPoint::from_degrees(53.9, -1.1).expect("valid"),
        travel_radius_m: 8_000,
        availability: vec![
            TimeWindow::new(1_795_000_000_000_000, 1_795_030_000_000_000).expect("valid"),
        ],
    }
}

fn personal() -> Personal {
    Personal::Plain(PersonalDetails {
        name: "A. Person".into(),
        contact: "07700 900123".into(),
        address: "1 Water Lane".into(),
        notes: "ground floor only".into(),
    })
}

fn id(b: u8) -> EntityId {
    EntityId([b; 16])
}

fn person() -> PersonId {
    PersonId::parse("p", "vol-000123").expect("valid")
}

/// One sample per event version, named by its fixture file. Keep this in step with [`Event`]:
/// the exhaustive match in `every_variant_has_a_sample` fails to compile when a variant is added.
fn samples() -> Vec<(&'static str, Envelope)> {
    let inc = incident();
    vec![
        (
            "IncidentDeclaredV1",
            envelope(
                "_",
                Event::IncidentDeclaredV1(IncidentDeclaredV1 {
                    incident: inc.clone(),
                    name: "York floods, November 2026".into(),
                    partitions: vec![PartitionCode::parse("p", "E06000014").expect("valid")],
                    categories: vec![Category::Food, Category::Shelter],
                    policy: PolicyV1::default(),
                }),
            ),
        ),
        (
            "PolicyChangedV1",
            envelope(
                "_",
                Event::PolicyChangedV1(PolicyChangedV1 {
                    incident: inc.clone(),
                    policy_version: 2,
                    policy: PolicyV1 {
                        weight_fairness: 80,
                        ..PolicyV1::default()
                    },
                }),
            ),
        ),
        (
            "IncidentStoodDownV1",
            envelope(
                "_",
                Event::IncidentStoodDownV1(IncidentStoodDownV1 {
                    incident: inc.clone(),
                    reason: "water receded".into(),
                }),
            ),
        ),
        (
            "NeedReportedV1",
            envelope(
                "E06000014",
                Event::NeedReportedV1(NeedReportedV1 {
                    need: id(1),
                    reference: Reference::parse("r", "case-17").expect("valid"),
                    spec: need_spec(),
                    personal: personal(),
                }),
            ),
        ),
        (
            "NeedUpdatedV1",
            envelope(
                "E06000014",
                Event::NeedUpdatedV1(NeedUpdatedV1 {
                    need: id(1),
                    spec: NeedSpecV1 {
                        party_size: 5,
                        ..need_spec()
                    },
                    personal: Personal::None,
                }),
            ),
        ),
        (
            "NeedWithdrawnV1",
            envelope(
                "E06000014",
                Event::NeedWithdrawnV1(NeedWithdrawnV1 {
                    need: id(1),
                    reason: "family found a place".into(),
                }),
            ),
        ),
        (
            "OfferRegisteredV1",
            envelope(
                "E06000014",
                Event::OfferRegisteredV1(OfferRegisteredV1 {
                    offer: id(2),
                    reference: Reference::parse("r", "vol-row-9").expect("valid"),
                    provider: Provider::Volunteer(person()),
                    spec: offer_spec(),
                    personal: personal(),
                }),
            ),
        ),
        (
            "OfferUpdatedV1",
            envelope(
                "E06000014",
                Event::OfferUpdatedV1(OfferUpdatedV1 {
                    offer: id(2),
                    spec: OfferSpecV1 {
                        capacity: 2,
                        ..offer_spec()
                    },
                    personal: Personal::None,
                }),
            ),
        ),
        (
            "OfferWithdrawnV1",
            envelope(
                "E06000014",
                Event::OfferWithdrawnV1(OfferWithdrawnV1 {
                    offer: id(2),
                    reason: "car broke down".into(),
                }),
            ),
        ),
        (
            "VerificationRecordedV1",
            envelope(
                "_",
                Event::VerificationRecordedV1(VerificationRecordedV1 {
                    verification: id(3),
                    reference: Reference::parse("r", "dbs-0042").expect("valid"),
                    person: person(),
                    kind: VerificationKind::CriminalRecordEnhancedBarred,
                    issuer: AgencyId::parse("i", "dbs").expect("valid"),
                    issued_at: t(1_790_000_000_000_000),
                    expires_at: Some(t(1_850_000_000_000_000)),
                    personal: Personal::None,
                }),
            ),
        ),
        (
            "VerificationRevokedV1",
            envelope(
                "_",
                Event::VerificationRevokedV1(VerificationRevokedV1 {
                    verification: id(3),
                    reason: "issued in error".into(),
                }),
            ),
        ),
        (
            "AssignmentProposedV1",
            envelope(
                "E06000014",
                Event::AssignmentProposedV1(AssignmentProposedV1 {
                    assignment: id(4),
                    need: id(1),
                    offer: id(2),
                    volunteer: person(),
                    round_through_seq: 123_456,
                    policy_version: 1,
                    distance_m: 6_543,
                    score: ScoreV1 {
                        total: 700,
                        urgency: 400,
                        waiting: 100,
                        distance: 150,
                        fairness: 50,
                    },
                }),
            ),
        ),
        (
            "VolunteerRespondedV1",
            envelope(
                "E06000014",
                Event::VolunteerRespondedV1(VolunteerRespondedV1 {
                    assignment: id(4),
                    response: Response::Decline,
                    reason: "away that day".into(),
                }),
            ),
        ),
        (
            "AssignmentCompletedV1",
            envelope(
                "E06000014",
                Event::AssignmentCompletedV1(AssignmentCompletedV1 {
                    assignment: id(4),
                    personal: Personal::None,
                }),
            ),
        ),
        (
            "TickV1",
            envelope("_", Event::TickV1(TickV1 { incident: inc })),
        ),
        (
            "RoundRecordedV1",
            envelope(
                "E06000014",
                Event::RoundRecordedV1(RoundRecordedV1 {
                    round: id(5),
                    through_seq: 123_456,
                    log_time: t(1_795_000_100_000_000),
                    policy_version: 2,
                    proposed: 17,
                    expired: 2,
                    cancelled: 1,
                    total_score: 98_765,
                }),
            ),
        ),
        (
            "RoundRecordedV2",
            envelope(
                "_",
                Event::RoundRecordedV2(RoundRecordedV2 {
                    round: id(5),
                    through_seq: 123_456,
                    log_time: t(1_795_000_100_000_000),
                    policy_version: 2,
                    proposed: 17,
                    expired: 2,
                    cancelled: 1,
                    total_score: 98_765,
                    engine: 2,
                }),
            ),
        ),
        (
            "RoundRecordedV3",
            envelope(
                "_",
                Event::RoundRecordedV3(RoundRecordedV3 {
                    round: id(5),
                    through_seq: 123_456,
                    log_time: t(1_795_000_100_000_000),
                    policy_version: 2,
                    proposed: 2_017,
                    expired: 2,
                    cancelled: 1,
                    total_score: 98_765,
                    engine: 4,
                    part: 1,
                    parts: 3,
                }),
            ),
        ),
        (
            "AssignmentExpiredV1",
            envelope(
                "E06000014",
                Event::AssignmentExpiredV1(AssignmentExpiredV1 {
                    assignment: id(4),
                    round_through_seq: 123_456,
                }),
            ),
        ),
        (
            "AssignmentCancelledV1",
            envelope(
                "E06000014",
                Event::AssignmentCancelledV1(AssignmentCancelledV1 {
                    assignment: id(4),
                    reason: CancelReason::VerificationLost,
                    round_through_seq: 123_456,
                }),
            ),
        ),
        (
            // A reason added later: the earlier ones keep their encodings.
            "AssignmentCancelledV1-no-longer-fits",
            envelope(
                "E06000014",
                Event::AssignmentCancelledV1(AssignmentCancelledV1 {
                    assignment: id(4),
                    reason: CancelReason::NoLongerFits,
                    round_through_seq: 123_456,
                }),
            ),
        ),
        (
            "AssignmentCancelledV1-stood-down",
            envelope(
                "E06000014",
                Event::AssignmentCancelledV1(AssignmentCancelledV1 {
                    assignment: id(4),
                    reason: CancelReason::IncidentStoodDown,
                    round_through_seq: 123_456,
                }),
            ),
        ),
    ]
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.hex"))
}

#[test]
fn every_variant_has_a_sample() {
    let names: Vec<&str> = samples()
        .iter()
        .map(|(name, env)| {
            // Exhaustive on purpose: a new variant must get a sample and a fixture.
            let expected = match &env.event {
                Event::IncidentDeclaredV1(_) => "IncidentDeclaredV1",
                Event::PolicyChangedV1(_) => "PolicyChangedV1",
                Event::IncidentStoodDownV1(_) => "IncidentStoodDownV1",
                Event::NeedReportedV1(_) => "NeedReportedV1",
                Event::NeedUpdatedV1(_) => "NeedUpdatedV1",
                Event::NeedWithdrawnV1(_) => "NeedWithdrawnV1",
                Event::OfferRegisteredV1(_) => "OfferRegisteredV1",
                Event::OfferUpdatedV1(_) => "OfferUpdatedV1",
                Event::OfferWithdrawnV1(_) => "OfferWithdrawnV1",
                Event::VerificationRecordedV1(_) => "VerificationRecordedV1",
                Event::VerificationRevokedV1(_) => "VerificationRevokedV1",
                Event::AssignmentProposedV1(_) => "AssignmentProposedV1",
                Event::VolunteerRespondedV1(_) => "VolunteerRespondedV1",
                Event::AssignmentCompletedV1(_) => "AssignmentCompletedV1",
                Event::TickV1(_) => "TickV1",
                Event::RoundRecordedV1(_) => "RoundRecordedV1",
                Event::AssignmentExpiredV1(_) => "AssignmentExpiredV1",
                Event::AssignmentCancelledV1(_) => "AssignmentCancelledV1",
                Event::RoundRecordedV2(_) => "RoundRecordedV2",
                Event::RoundRecordedV3(_) => "RoundRecordedV3",
            };
            // A variant's later additions (an enum value added since) are samples of their
            // own: `{variant}-{what}`.
            assert_eq!(
                name.split('-').next(),
                Some(expected),
                "sample named after its variant"
            );
            expected
        })
        .collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 20, "one sample per event version");
}

#[test]
fn encodings_match_the_frozen_fixtures() {
    let bless = std::env::var_os("MUSTER_BLESS").is_some();
    let mut failures = Vec::new();
    for (name, env) in samples() {
        let bytes = env.encode();
        let path = fixture_path(name);
        let frozen = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(_) if bless => {
                std::fs::write(&path, format!("{}\n", hex::encode(&bytes))).expect("write fixture");
                continue;
            }
            Err(e) => {
                failures.push(format!("{name}: no fixture at {} ({e}); run with MUSTER_BLESS=1 once for a new version", path.display()));
                continue;
            }
        };
        let frozen = hex::decode(frozen.trim()).expect("fixture is hex");
        if frozen != bytes {
            failures.push(format!(
                "{name}: encoding changed\n  frozen {}\n  now    {}",
                hex::encode(&frozen),
                hex::encode(&bytes)
            ));
        }
        // Old versions decode as their upcast: the value today's consumers see.
        let current = Envelope {
            event: env.event.clone().upcast(),
            ..env.clone()
        };
        match Envelope::decode(&frozen) {
            Ok(decoded) if decoded == current => {}
            Ok(decoded) => failures.push(format!("{name}: fixture decodes to {decoded:?}")),
            Err(e) => failures.push(format!("{name}: fixture no longer decodes: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_round_recorded_before_engines_were_named_reads_as_engine_1() {
    let frozen = std::fs::read_to_string(fixture_path("RoundRecordedV1")).expect("fixture");
    let decoded = Envelope::decode(&hex::decode(frozen.trim()).expect("hex")).expect("decodes");
    assert_eq!(
        decoded.event,
        Event::RoundRecordedV3(RoundRecordedV3 {
            round: id(5),
            through_seq: 123_456,
            log_time: t(1_795_000_100_000_000),
            policy_version: 2,
            proposed: 17,
            expired: 2,
            cancelled: 1,
            total_score: 98_765,
            engine: 1,
            part: 0,
            parts: 1,
        })
    );
}

#[test]
fn a_round_recorded_before_rounds_had_parts_reads_as_one_part() {
    let frozen = std::fs::read_to_string(fixture_path("RoundRecordedV2")).expect("fixture");
    let decoded = Envelope::decode(&hex::decode(frozen.trim()).expect("hex")).expect("decodes");
    let Event::RoundRecordedV3(r) = decoded.event else {
        panic!("a V2 record reads as V3: {:?}", decoded.event);
    };
    assert_eq!((r.engine, r.part, r.parts, r.proposed), (2, 0, 1, 17));
    assert!(r.is_last_part());
}

#[test]
fn subjects_of_samples_name_their_entities() {
    for (name, env) in samples() {
        let s = subject::for_envelope(&env);
        assert!(s.starts_with("muster.ev.york-floods-2026."), "{name}: {s}");
        if let events::EntityRef::Entity(kind, id) = env.event.entity() {
            assert!(
                s.ends_with(&format!("{}.{id}", kind.token())),
                "{name}: {s}"
            );
            assert!(matches!(
                kind,
                EntityKind::Need
                    | EntityKind::Offer
                    | EntityKind::Verification
                    | EntityKind::Assignment
                    | EntityKind::Round
            ));
        }
    }
}

#[test]
fn malformed_payloads_are_errors_not_panics() {
    let (_, env) = samples().remove(3);
    let bytes = env.encode();
    assert_eq!(Envelope::decode(&[]), Err(DecodeError::Empty));
    assert_eq!(
        Envelope::decode(&[0x02]),
        Err(DecodeError::UnknownVersion(2))
    );
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        Envelope::decode(&trailing),
        Err(DecodeError::TrailingBytes(1))
    );
    for cut in 1..bytes.len() {
        assert!(
            Envelope::decode(&bytes[..cut]).is_err(),
            "truncated at {cut}"
        );
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn envelopes_round_trip(urgency in 1u32..=5, party in 1u16..100, lat in -90.0f64..90.0, lon in -180.0f64..180.0, key in "[a-z0-9/-]{1,64}") {
            let mut env = samples().remove(3).1;
            if let Event::NeedReportedV1(n) = &mut env.event {
                n.spec.urgency = Urgency::new("u", urgency).expect("in range");
                n.spec.party_size = party;
                n.spec.location = GeoPoint::from_degrees(lat, lon).expect("in range");
            }
            env.idempotency_key = key;
            prop_assert_eq!(Envelope::decode(&env.encode()), Ok(env));
        }
    }
}

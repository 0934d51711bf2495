//! Requests as a client might send them after any corruption: valid bulk items of every kind,
//! a few of their encoded bytes overwritten, decoded again as the server would. Whatever
//! decodes, intake either turns into an event the log can hold, or refuses with violations
//! that each name a field of the request and the rule it broke. It never panics.

use muster_intake::commands::bulk_item;
use muster_intake::error::IntakeError;
use muster_proto::v1 as pb;
use muster_schema::{
    AgencyId, ENVELOPE_VERSION, EntityId, Envelope, IncidentId, PartitionCode, Timestamp,
};
use proptest::prelude::*;
use prost::Message;

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn window() -> pb::TimeWindow {
    pb::TimeWindow {
        start: ts(1_800_000_000),
        end: ts(1_800_086_400),
    }
}

fn personal() -> Option<pb::PersonalDetails> {
    Some(pb::PersonalDetails {
        name: "A. Person".into(),
        contact: "07700 900123".into(),
        address: "1 High St".into(),
        notes: "ring twice".into(),
    })
}

/// One valid item of each kind.
fn items() -> Vec<pb::BulkItem> {
    use pb::bulk_item::Command as C;
    let need = pb::NeedSpec {
        category: pb::Category::Shelter as i32,
        urgency: 4,
        party_size: 3,
        window: Some(window()),
        location: Some(pb::Location {
            lat: 53.958,
            lon: -1.08,
        }),
        required_skills: vec!["driving".into()],
        required_verifications: vec![pb::VerificationRequirement {
            kind: pb::VerificationKind::CriminalRecordEnhanced as i32,
            qualification: String::new(),
        }],
        vulnerable: true,
    };
    let offer = pb::OfferSpec {
        kinds: vec![pb::Category::Shelter as i32, pb::Category::Food as i32],
        skills: vec!["driving".into()],
        capacity: 4,
        location: Some(pb::Location {
            lat: 53.962,
            lon: -1.085,
        }),
        travel_radius_m: 10_000,
        availability: vec![window(), window()],
    };
    let id = "0123456789abcdef0123456789abcdef".to_string();
    [
        C::ReportNeed(pb::ReportNeedRequest {
            partition: "E06000014".into(),
            reference: "case-17".into(),
            need: Some(need.clone()),
            personal: personal(),
            ..Default::default()
        }),
        C::UpdateNeed(pb::UpdateNeedRequest {
            need_id: id.clone(),
            expected_version: Some(7),
            need: Some(need),
            personal: personal(),
            ..Default::default()
        }),
        C::WithdrawNeed(pb::WithdrawNeedRequest {
            need_id: id.clone(),
            reason: "met elsewhere".into(),
            ..Default::default()
        }),
        C::RegisterOffer(pb::RegisterOfferRequest {
            partition: "E06000014".into(),
            reference: "offer-1".into(),
            provider: Some(pb::Provider {
                kind: pb::ProviderKind::Volunteer as i32,
                id: "vol-1".into(),
            }),
            offer: Some(offer.clone()),
            personal: personal(),
            ..Default::default()
        }),
        C::UpdateOffer(pb::UpdateOfferRequest {
            offer_id: id.clone(),
            offer: Some(offer),
            ..Default::default()
        }),
        C::WithdrawOffer(pb::WithdrawOfferRequest {
            offer_id: id.clone(),
            reason: "moved away".into(),
            ..Default::default()
        }),
        C::RecordVerification(pb::RecordVerificationRequest {
            reference: "dbs-001".into(),
            person: "vol-1".into(),
            kind: pb::VerificationKind::Qualification as i32,
            qualification: "first-aid".into(),
            issuer: "dbs".into(),
            issued_at: ts(1_700_000_000),
            expires_at: ts(1_900_000_000),
            personal: personal(),
            ..Default::default()
        }),
        C::RevokeVerification(pb::RevokeVerificationRequest {
            verification_id: id.clone(),
            reason: "barred".into(),
            ..Default::default()
        }),
        C::RespondToAssignment(pb::RespondToAssignmentRequest {
            assignment_id: id.clone(),
            response: pb::AssignmentResponse::Decline as i32,
            reason: "away".into(),
            ..Default::default()
        }),
        C::CompleteAssignment(pb::CompleteAssignmentRequest {
            assignment_id: id,
            personal: personal(),
            ..Default::default()
        }),
    ]
    .into_iter()
    .map(|c| pb::BulkItem { command: Some(c) })
    .collect()
}

/// The first segment of every field path a bulk item's violation may start with.
const ROOTS: [&str; 11] = [
    "command",
    "report_need",
    "update_need",
    "withdraw_need",
    "register_offer",
    "update_offer",
    "withdraw_offer",
    "record_verification",
    "revoke_verification",
    "respond_to_assignment",
    "complete_assignment",
];

fn agency() -> AgencyId {
    AgencyId::parse("agency", "york-council").expect("valid")
}

fn incident() -> IncidentId {
    IncidentId::parse("incident", "york-floods").expect("valid")
}

#[test]
fn every_sample_item_is_valid() {
    for item in items() {
        if let Err(e) = bulk_item(&item, &agency(), &incident()) {
            panic!("{item:?}: {e}");
        }
    }
}

/// A byte to write: mostly printable ASCII, so that strings stay UTF-8 and the item still
/// decodes (most of an item's bytes are its strings), sometimes any byte at all.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![4 => 0x20u8..0x7f, 1 => any::<u8>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn corrupted_requests_become_valid_events_or_field_level_errors(
        which in 0usize..10,
        edits in prop::collection::vec((any::<prop::sample::Index>(), byte()), 1..6),
    ) {
        let mut bytes = items()[which].encode_to_vec();
        for (at, byte) in edits {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        let Ok(item) = pb::BulkItem::decode(bytes.as_slice()) else {
            return Ok(());
        };
        match bulk_item(&item, &agency(), &incident()) {
            Ok(draft) => {
                // What intake accepts, the log holds and gives back unchanged.
                let env = Envelope {
                    schema_version: ENVELOPE_VERSION,
                    event_id: EntityId::hash(&[b"e"]),
                    incident: draft.incident.clone(),
                    partition: PartitionCode::incident_wide(),
                    recorded_at: Timestamp(1_800_000_000_000_000),
                    actor: agency(),
                    idempotency_key: "k".into(),
                    correlation_id: String::new(),
                    causation_id: None,
                    event: draft.event.clone(),
                };
                prop_assert_eq!(Envelope::decode(&env.encode()), Ok(env));
            }
            Err(IntakeError::Invalid(vs)) => {
                prop_assert!(!vs.0.is_empty(), "refused with no violation");
                for v in &vs.0 {
                    let root = v.field.split(['.', '[']).next().unwrap_or_default();
                    prop_assert!(ROOTS.contains(&root), "field {:?} ({})", v.field, v.rule);
                    prop_assert!(!v.rule.is_empty(), "no rule for {}", v.field);
                }
            }
            Err(other) => prop_assert!(false, "not a field-level error: {}", other),
        }
    }
}

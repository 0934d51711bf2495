//! Requests an agency would send, for tests that need a realistic log: an incident, needs and
//! offers near one town, submitted in bulk through the real intake service.

use muster_proto::v1 as pb;
use muster_proto::v1::intake_client::IntakeClient;
use tonic::transport::Channel;

/// The agency every workload request acts as.
pub const AGENCY: &str = "thirsk-council";
pub const PARTITION: &str = "E07000164";

/// A request from [`AGENCY`].
pub fn req<T>(body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-muster-agency", AGENCY.parse().expect("ascii"));
    r
}

/// A get of the need or offer [`AGENCY`] gave `reference` in `incident`, answered once the
/// projection has applied `min_sequence`.
pub fn by_reference(incident: &str, reference: &str, min_sequence: u64) -> pb::GetEntityRequest {
    pb::GetEntityRequest {
        id: String::new(),
        reference: reference.into(),
        incident: incident.into(),
        min_sequence,
    }
}

pub fn ts(s: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: s,
        nanos: 0,
    })
}

pub fn day() -> pb::TimeWindow {
    pb::TimeWindow {
        start: ts(1_800_000_000),
        end: ts(1_800_086_400),
    }
}

pub fn at() -> Option<pb::Location> {
    Some(pb::Location {
        lat: 54.23,
        lon: -1.34,
    })
}

pub async fn declare(c: &mut IntakeClient<Channel>, incident: &str) -> u64 {
    c.declare_incident(req(pb::DeclareIncidentRequest {
        idempotency_key: format!("declare-{incident}"),
        incident: incident.into(),
        name: format!("Incident {incident}"),
        partitions: vec![],
        categories: vec![],
        policy: None,
    }))
    .await
    .expect("declare")
    .into_inner()
    .sequence
}

/// Submits `items` as one bulk request; returns each item's sequence.
pub async fn bulk(
    c: &mut IntakeClient<Channel>,
    incident: &str,
    key: &str,
    items: Vec<pb::bulk_item::Command>,
) -> Vec<u64> {
    let items = items
        .into_iter()
        .map(|command| pb::BulkItem {
            command: Some(command),
        })
        .collect();
    c.submit_bulk(req(pb::SubmitBulkRequest {
        idempotency_key: key.into(),
        incident: incident.into(),
        items,
    }))
    .await
    .expect("bulk")
    .into_inner()
    .items
    .iter()
    .map(|i| i.sequence)
    .collect()
}

/// Offers `o{from}`.. of volunteers `vol-{i}`, capacity 1, food, within 5 km of [`at`].
pub fn offers(from: usize, n: usize) -> Vec<pb::bulk_item::Command> {
    (from..from + n)
        .map(|i| {
            pb::bulk_item::Command::RegisterOffer(pb::RegisterOfferRequest {
                idempotency_key: String::new(),
                incident: String::new(),
                partition: PARTITION.into(),
                reference: format!("o{i}"),
                provider: Some(pb::Provider {
                    kind: pb::ProviderKind::Volunteer as i32,
                    id: format!("vol-{i}"),
                }),
                offer: Some(pb::OfferSpec {
                    kinds: vec![pb::Category::Food as i32],
                    skills: vec![],
                    capacity: 1,
                    location: at(),
                    travel_radius_m: 5_000,
                    availability: vec![day()],
                }),
                personal: None,
            })
        })
        .collect()
}

/// Food needs `n{from}`.. at [`at`], urgency cycling 1 to 5.
pub fn needs(from: usize, n: usize) -> Vec<pb::bulk_item::Command> {
    (from..from + n)
        .map(|i| {
            pb::bulk_item::Command::ReportNeed(pb::ReportNeedRequest {
                idempotency_key: String::new(),
                incident: String::new(),
                partition: PARTITION.into(),
                reference: format!("n{i}"),
                need: Some(pb::NeedSpec {
                    category: pb::Category::Food as i32,
                    urgency: (i % 5) as u32 + 1,
                    party_size: 1,
                    window: Some(day()),
                    location: at(),
                    required_skills: vec![],
                    required_verifications: vec![],
                    vulnerable: i % 7 == 0,
                }),
                personal: None,
            })
        })
        .collect()
}

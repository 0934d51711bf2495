//! Read-model records into the wire's messages, and the wire's filters into domain values.

use muster_proto::v1 as pb;
use muster_readmodel::records::{
    AssignmentRecord, AssignmentStatus, ChangeRecord, HistoryEntry, NeedRecord, NeedStatus,
    OfferRecord, SetAsideRecord, VerificationRecord,
};
use muster_schema::events::{NeedSpecV1, OfferSpecV1, ScoreV1};
use muster_schema::values::{
    Category, GeoPoint, Provider, TimeWindow, Timestamp, VerificationKind,
};
use muster_schema::{EntityId, Violation};

pub fn ts(t: Timestamp) -> prost_types::Timestamp {
    let us = t.micros();
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

pub fn category(c: Category) -> pb::Category {
    match c {
        Category::Food => pb::Category::Food,
        Category::Transport => pb::Category::Transport,
        Category::Shelter => pb::Category::Shelter,
        Category::CareVisit => pb::Category::CareVisit,
        Category::Tutoring => pb::Category::Tutoring,
        Category::Space => pb::Category::Space,
        Category::Supplies => pb::Category::Supplies,
        Category::Other => pb::Category::Other,
    }
}

/// A category filter: unspecified means any.
pub fn category_filter(field: &str, v: i32) -> Result<Option<Category>, Violation> {
    if v == 0 {
        return Ok(None);
    }
    Category::ALL
        .into_iter()
        .find(|c| category(*c) as i32 == v)
        .map(Some)
        .ok_or_else(|| Violation::new(field, "must be a known category or unspecified"))
}

fn window(w: &TimeWindow) -> pb::TimeWindow {
    pb::TimeWindow {
        start: Some(ts(w.start)),
        end: Some(ts(w.end)),
    }
}

fn location(p: &GeoPoint) -> pb::Location {
    pb::Location {
        lat: p.lat(),
        lon: p.lon(),
    }
}

fn verification_kind(k: &VerificationKind) -> (pb::VerificationKind, String) {
    use pb::VerificationKind as K;
    match k {
        VerificationKind::Identity => (K::Identity, String::new()),
        VerificationKind::CriminalRecordBasic => (K::CriminalRecordBasic, String::new()),
        VerificationKind::CriminalRecordStandard => (K::CriminalRecordStandard, String::new()),
        VerificationKind::CriminalRecordEnhanced => (K::CriminalRecordEnhanced, String::new()),
        VerificationKind::CriminalRecordEnhancedBarred => {
            (K::CriminalRecordEnhancedBarred, String::new())
        }
        VerificationKind::Qualification(q) => (K::Qualification, q.clone()),
    }
}

fn need_spec(s: &NeedSpecV1) -> pb::NeedSpec {
    pb::NeedSpec {
        category: category(s.category) as i32,
        urgency: u32::from(s.urgency.get()),
        party_size: u32::from(s.party_size),
        window: Some(window(&s.window)),
        location: Some(location(&s.location)),
        required_skills: s
            .required_skills
            .iter()
            .map(|k| k.as_str().to_string())
            .collect(),
        required_verifications: s
            .required_verifications
            .iter()
            .map(|v| {
                let (kind, qualification) = verification_kind(v);
                pb::VerificationRequirement {
                    kind: kind as i32,
                    qualification,
                }
            })
            .collect(),
        vulnerable: s.vulnerable,
    }
}

fn offer_spec(s: &OfferSpecV1) -> pb::OfferSpec {
    pb::OfferSpec {
        kinds: s.kinds.iter().map(|c| category(*c) as i32).collect(),
        skills: s.skills.iter().map(|k| k.as_str().to_string()).collect(),
        capacity: u32::from(s.capacity),
        location: Some(location(&s.location)),
        travel_radius_m: s.travel_radius_m,
        availability: s.availability.iter().map(window).collect(),
    }
}

pub fn need_status(s: NeedStatus) -> pb::NeedStatus {
    match s {
        NeedStatus::Open => pb::NeedStatus::Open,
        NeedStatus::Proposed => pb::NeedStatus::Proposed,
        NeedStatus::Accepted => pb::NeedStatus::Accepted,
        NeedStatus::Completed => pb::NeedStatus::Completed,
        NeedStatus::Withdrawn => pb::NeedStatus::Withdrawn,
    }
}

/// A status filter value.
pub fn need_status_filter(field: &str, v: i32) -> Result<NeedStatus, Violation> {
    NeedStatus::ALL
        .into_iter()
        .find(|s| need_status(*s) as i32 == v)
        .ok_or_else(|| Violation::new(field, "must be a known need status"))
}

pub fn need(id: &EntityId, n: &NeedRecord) -> pb::Need {
    pb::Need {
        id: id.to_hex(),
        incident: n.incident.to_string(),
        partition: n.partition.to_string(),
        agency: n.agency.to_string(),
        reference: n.reference.to_string(),
        spec: Some(need_spec(&n.spec)),
        status: need_status(n.status) as i32,
        created_sequence: n.created_seq,
        last_sequence: n.last_seq,
        reported_at: Some(ts(n.reported_at)),
        first_matched_at: n.first_matched_at.map(ts),
        current_assignment_id: n.current_assignment.map(|a| a.to_hex()).unwrap_or_default(),
        assignments: n.assignments,
    }
}

pub fn offer(id: &EntityId, o: &OfferRecord) -> pb::Offer {
    let (kind, pid) = match &o.provider {
        Provider::Volunteer(p) => (pb::ProviderKind::Volunteer, p),
        Provider::Organisation(p) => (pb::ProviderKind::Organisation, p),
    };
    pb::Offer {
        id: id.to_hex(),
        incident: o.incident.to_string(),
        partition: o.partition.to_string(),
        agency: o.agency.to_string(),
        reference: o.reference.to_string(),
        provider: Some(pb::Provider {
            kind: kind as i32,
            id: pid.to_string(),
        }),
        spec: Some(offer_spec(&o.spec)),
        withdrawn: o.withdrawn,
        created_sequence: o.created_seq,
        last_sequence: o.last_seq,
        active_assignments: o.active_assignments,
        assignments: o.assignments,
    }
}

pub fn score(s: &ScoreV1) -> pb::Score {
    pb::Score {
        total: s.total,
        urgency: s.urgency,
        waiting: s.waiting,
        distance: s.distance,
        fairness: s.fairness,
    }
}

fn assignment_status(s: AssignmentStatus) -> pb::AssignmentStatus {
    match s {
        AssignmentStatus::Proposed => pb::AssignmentStatus::Proposed,
        AssignmentStatus::Accepted => pb::AssignmentStatus::Accepted,
        AssignmentStatus::Declined => pb::AssignmentStatus::Declined,
        AssignmentStatus::Completed => pb::AssignmentStatus::Completed,
        AssignmentStatus::Expired => pb::AssignmentStatus::Expired,
        AssignmentStatus::Cancelled(_) => pb::AssignmentStatus::Cancelled,
    }
}

pub fn assignment(id: &EntityId, a: &AssignmentRecord) -> pb::Assignment {
    pb::Assignment {
        id: id.to_hex(),
        incident: a.incident.to_string(),
        partition: a.partition.to_string(),
        need_id: a.need.to_hex(),
        offer_id: a.offer.to_hex(),
        volunteer: a.volunteer.to_string(),
        status: assignment_status(a.status) as i32,
        reason: a.reason.clone(),
        proposed_sequence: a.proposed_seq,
        last_sequence: a.last_seq,
        proposed_at: Some(ts(a.proposed_at)),
        round_through_sequence: a.round_through_seq,
        policy_version: a.policy_version,
        distance_m: a.distance_m,
        score: Some(score(&a.score)),
    }
}

pub fn verification(id: &EntityId, v: &VerificationRecord) -> pb::Verification {
    let (kind, qualification) = verification_kind(&v.kind);
    pb::Verification {
        id: id.to_hex(),
        incident: v.incident.to_string(),
        person: v.person.to_string(),
        kind: kind as i32,
        qualification,
        issuer: v.issuer.to_string(),
        issued_at: Some(ts(v.issued_at)),
        expires_at: v.expires_at.map(ts),
        revoked: v.revoked,
        revoked_reason: v.revoked_reason.clone(),
        last_sequence: v.last_seq,
    }
}

pub fn history(h: &HistoryEntry) -> pb::HistoryEntry {
    pb::HistoryEntry {
        sequence: h.seq,
        event_type: h.event_type.clone(),
        recorded_at: Some(ts(h.recorded_at)),
        actor: h.actor.to_string(),
        summary: h.summary.clone(),
        score: h.score.as_ref().map(score),
    }
}

pub fn change(c: &ChangeRecord) -> pb::Change {
    pb::Change {
        sequence: c.seq,
        event_type: c.event_type.clone(),
        recorded_at: Some(ts(c.recorded_at)),
        entity_kind: c.entity_kind.token().to_string(),
        entity_id: c.entity.clone(),
        partition: c.partition.to_string(),
        status: c.status.clone(),
        need_id: c.need.map(|n| n.to_hex()).unwrap_or_default(),
        offer_id: c.offer.map(|o| o.to_hex()).unwrap_or_default(),
        volunteer: c
            .volunteer
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

pub fn set_aside(s: &SetAsideRecord) -> pb::SetAsideEvent {
    pb::SetAsideEvent {
        sequence: s.seq,
        subject: s.subject.clone(),
        reason: s.reason.clone(),
    }
}

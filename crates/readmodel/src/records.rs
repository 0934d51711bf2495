//! What the read models store: one record per need, offer, assignment and verification with its
//! current status and the sequence of its last change; small index values; history entries,
//! changes for watchers, and set-aside events.

use muster_schema::events::{CancelReason, NeedSpecV1, OfferSpecV1, ScoreV1};
use muster_schema::ids::EntityKind;
use muster_schema::values::{Category, Provider, Timestamp, VerificationKind};
use muster_schema::{AgencyId, EntityId, IncidentId, PartitionCode, PersonId, Reference};
use serde::{Deserialize, Serialize};

use crate::keys::Cf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRecord {
    pub name: String,
    pub partitions: Vec<PartitionCode>,
    pub categories: Vec<Category>,
    pub policy_version: u32,
    pub stood_down: bool,
    pub declared_seq: u64,
    pub last_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NeedStatus {
    Open,
    Proposed,
    Accepted,
    Completed,
    Withdrawn,
}

impl NeedStatus {
    pub const ALL: [NeedStatus; 5] = [
        NeedStatus::Open,
        NeedStatus::Proposed,
        NeedStatus::Accepted,
        NeedStatus::Completed,
        NeedStatus::Withdrawn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NeedStatus::Open => "open",
            NeedStatus::Proposed => "proposed",
            NeedStatus::Accepted => "accepted",
            NeedStatus::Completed => "completed",
            NeedStatus::Withdrawn => "withdrawn",
        }
    }

    /// Still waiting for a volunteer to take it on.
    pub fn is_open(self) -> bool {
        matches!(self, NeedStatus::Open | NeedStatus::Proposed)
    }
}

/// The record of one incident's entity, stored by its id in its own column family. Entity ids
/// are keys of their own, whatever the incident, so an event of one incident must not change
/// another's entity.
pub trait EntityRecord {
    /// Where records of this kind are stored.
    const CF: Cf;
    /// The entity's name and what creates it, for set-aside reasons ("need ... was never
    /// reported").
    const NAME: &'static str;
    const CREATED: &'static str;
    fn incident(&self) -> &IncidentId;
}

macro_rules! entity_record {
    ($($t:ty: $cf:ident, $name:literal, $created:literal;)*) => {
        $(impl EntityRecord for $t {
            const CF: Cf = Cf::$cf;
            const NAME: &'static str = $name;
            const CREATED: &'static str = $created;
            fn incident(&self) -> &IncidentId {
                &self.incident
            }
        })*
    };
}

entity_record! {
    NeedRecord: Needs, "need", "reported";
    OfferRecord: Offers, "offer", "registered";
    AssignmentRecord: Assignments, "assignment", "proposed";
    VerificationRecord: Verifications, "verification", "recorded";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedRecord {
    pub incident: IncidentId,
    pub partition: PartitionCode,
    pub agency: AgencyId,
    pub reference: Reference,
    pub spec: NeedSpecV1,
    pub status: NeedStatus,
    pub created_seq: u64,
    pub last_seq: u64,
    pub reported_at: Timestamp,
    pub first_matched_at: Option<Timestamp>,
    pub current_assignment: Option<EntityId>,
    pub assignments: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferRecord {
    pub incident: IncidentId,
    pub partition: PartitionCode,
    pub agency: AgencyId,
    pub reference: Reference,
    pub provider: Provider,
    pub spec: OfferSpecV1,
    pub withdrawn: bool,
    pub created_seq: u64,
    pub last_seq: u64,
    pub active_assignments: u32,
    pub assignments: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AssignmentStatus {
    Proposed,
    Accepted,
    Declined,
    Completed,
    Expired,
    Cancelled(CancelReason),
}

impl AssignmentStatus {
    pub fn name(self) -> &'static str {
        match self {
            AssignmentStatus::Proposed => "proposed",
            AssignmentStatus::Accepted => "accepted",
            AssignmentStatus::Declined => "declined",
            AssignmentStatus::Completed => "completed",
            AssignmentStatus::Expired => "expired",
            AssignmentStatus::Cancelled(_) => "cancelled",
        }
    }

    /// The offer's capacity is still taken.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            AssignmentStatus::Proposed | AssignmentStatus::Accepted
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    pub incident: IncidentId,
    pub partition: PartitionCode,
    pub need: EntityId,
    pub offer: EntityId,
    pub volunteer: PersonId,
    pub status: AssignmentStatus,
    pub reason: String,
    pub proposed_seq: u64,
    pub last_seq: u64,
    pub proposed_at: Timestamp,
    pub round_through_seq: u64,
    pub policy_version: u32,
    pub distance_m: u32,
    pub score: ScoreV1,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRecord {
    pub incident: IncidentId,
    pub person: PersonId,
    pub kind: VerificationKind,
    pub issuer: AgencyId,
    pub issued_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked: bool,
    pub revoked_reason: String,
    pub last_seq: u64,
}

/// A provider of offers in one incident: how many live offers, how many proposals ever.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRecord {
    pub live_offers: u32,
    pub proposals: u32,
}

/// The value of an open-need or need index entry: enough to filter without reading the need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedEntry {
    pub partition: PartitionCode,
    pub category: Category,
    pub urgency: u8,
    pub status: NeedStatus,
    pub reported_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub seq: u64,
    pub event_type: String,
    pub recorded_at: Timestamp,
    pub actor: AgencyId,
    pub summary: String,
    pub score: Option<ScoreV1>,
}

/// One change of an incident, as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub seq: u64,
    pub event_type: String,
    pub recorded_at: Timestamp,
    pub entity_kind: EntityKind,
    /// Hex id, or the incident's name.
    pub entity: String,
    pub partition: PartitionCode,
    pub status: String,
    pub need: Option<EntityId>,
    pub offer: Option<EntityId>,
    pub volunteer: Option<PersonId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAsideRecord {
    pub seq: u64,
    pub subject: String,
    pub reason: String,
}

/// Encodes a record (plain data: cannot fail). Serialised into a scratch buffer first, so the
/// record costs one allocation of its exact size rather than a growing vector's several.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 4096]);
    }
    SCRATCH.with_borrow_mut(|scratch| match postcard::to_slice(value, scratch) {
        Ok(used) => used.to_vec(),
        Err(_) => postcard::to_stdvec(value).expect("postcard encoding of plain data cannot fail"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_larger_than_the_scratch_buffer_encode_the_same() {
        for len in [0, 10, 4_000, 10_000] {
            let rec = SetAsideRecord {
                seq: 7,
                subject: "s".repeat(len),
                reason: "r".into(),
            };
            let bytes = encode(&rec);
            assert_eq!(bytes, postcard::to_stdvec(&rec).expect("encodes"));
            assert_eq!(postcard::from_bytes::<SetAsideRecord>(&bytes), Ok(rec));
        }
    }
}

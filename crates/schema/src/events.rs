//! The events of Muster's log, one struct per event version.
//!
//! The partition an event belongs to is in its envelope, not here. Every event that could
//! identify a person keeps that in its single `personal` field; everything else is what the
//! matcher and the read models need, with no names in it.
//!
//! **Append only.** The order of [`Event`]'s variants is part of the encoding: never reorder,
//! remove or change a variant; add new versions at the end and upcast old ones in
//! [`Event::upcast`].

use serde::{Deserialize, Serialize};

use crate::ids::{EntityId, EntityKind, IncidentId, PersonId, Reference};
use crate::values::{
    Category, GeoPoint, Personal, PolicyV1, Provider, Response, Skill, TimeWindow, Timestamp,
    Urgency, VerificationKind,
};

/// A planner declared an incident: the area's partitions, the categories in scope, the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentDeclaredV1 {
    pub incident: IncidentId,
    pub name: String,
    pub partitions: Vec<crate::ids::PartitionCode>,
    pub categories: Vec<Category>,
    pub policy: PolicyV1,
}

/// The incident's matching policy changed; `policy_version` counts from 1 at declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChangedV1 {
    pub incident: IncidentId,
    pub policy_version: u32,
    pub policy: PolicyV1,
}

/// The incident was stood down: no new needs or offers are taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentStoodDownV1 {
    pub incident: IncidentId,
    pub reason: String,
}

/// What a need asks for; the matchable part of a report or an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedSpecV1 {
    pub category: Category,
    pub urgency: Urgency,
    /// How many people the help is for (a family of four needs a host with capacity 4).
    pub party_size: u16,
    pub window: TimeWindow,
    pub location: GeoPoint,
    pub required_skills: Vec<Skill>,
    /// Every verification the helper must hold (sorted, unique).
    pub required_verifications: Vec<VerificationKind>,
    /// The person helped is vulnerable: safeguarding rules apply.
    pub vulnerable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedReportedV1 {
    pub need: EntityId,
    pub reference: Reference,
    pub spec: NeedSpecV1,
    pub personal: Personal,
}

/// A need's description was replaced (its partition never changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedUpdatedV1 {
    pub need: EntityId,
    pub spec: NeedSpecV1,
    pub personal: Personal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedWithdrawnV1 {
    pub need: EntityId,
    pub reason: String,
}

/// What an offer provides; the matchable part of a registration or an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferSpecV1 {
    /// The categories of need this offer can serve (sorted, unique, at least one).
    pub kinds: Vec<Category>,
    pub skills: Vec<Skill>,
    /// How many people (or parallel tasks) it can take at once.
    pub capacity: u16,
    pub location: GeoPoint,
    pub travel_radius_m: u32,
    /// When it is available (sorted, at least one).
    pub availability: Vec<TimeWindow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferRegisteredV1 {
    pub offer: EntityId,
    pub reference: Reference,
    pub provider: Provider,
    pub spec: OfferSpecV1,
    pub personal: Personal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferUpdatedV1 {
    pub offer: EntityId,
    pub spec: OfferSpecV1,
    pub personal: Personal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferWithdrawnV1 {
    pub offer: EntityId,
    pub reason: String,
}

/// A vetting body (or a qualifying institution) recorded that a person holds a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRecordedV1 {
    pub verification: EntityId,
    pub reference: Reference,
    pub person: PersonId,
    pub kind: VerificationKind,
    /// Who issued it (`dbs`, `st-johns-ambulance`): a token, the same rule as an agency id.
    pub issuer: crate::ids::AgencyId,
    pub issued_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub personal: Personal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRevokedV1 {
    pub verification: EntityId,
    pub reason: String,
}

/// Why an assignment scored what it did: the parts, each already weighted, and their sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreV1 {
    pub total: i64,
    pub urgency: i64,
    pub waiting: i64,
    pub distance: i64,
    pub fairness: i64,
}

/// The matcher proposed an assignment in the round cut at stream sequence `round_through_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentProposedV1 {
    pub assignment: EntityId,
    pub need: EntityId,
    pub offer: EntityId,
    pub volunteer: PersonId,
    pub round_through_seq: u64,
    pub policy_version: u32,
    pub distance_m: u32,
    pub score: ScoreV1,
}

/// A volunteer accepted or declined an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolunteerRespondedV1 {
    pub assignment: EntityId,
    pub response: Response,
    pub reason: String,
}

/// The task of an assignment was done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentCompletedV1 {
    pub assignment: EntityId,
    pub personal: Personal,
}

/// Log time moved on with nothing else happening (the envelope's time is the tick's time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickV1 {
    pub incident: IncidentId,
}

/// The matcher cut a round at stream sequence `through_seq` of its partition: everything it
/// proposed, expired or cancelled in this round follows it, and replaying the log up to
/// `through_seq` under policy `policy_version` reproduces them exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRecordedV1 {
    pub round: EntityId,
    pub through_seq: u64,
    pub log_time: Timestamp,
    pub policy_version: u32,
    pub proposed: u32,
    pub expired: u32,
    pub cancelled: u32,
    /// The round's optimum: the sum of the proposals' scores.
    pub total_score: i64,
}

/// A round, as [`RoundRecordedV1`], naming the engine that decided it: the audit replays each
/// round with the engine it names. Engine 1 built each need's candidates from its best *n*
/// providers in a round of *n* needs; engine 2 starts from a few and widens a need's list until
/// the solver's duals prove nothing beyond it could improve the round. Both give an optimum;
/// where several exist they may pick different ones. [`RoundRecordedV1`] upcasts to engine 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRecordedV2 {
    pub round: EntityId,
    pub through_seq: u64,
    pub log_time: Timestamp,
    pub policy_version: u32,
    pub proposed: u32,
    pub expired: u32,
    pub cancelled: u32,
    /// The round's optimum: the sum of the proposals' scores.
    pub total_score: i64,
    /// The engine version that decided the round.
    pub engine: u16,
}

impl From<RoundRecordedV1> for RoundRecordedV2 {
    fn from(r: RoundRecordedV1) -> Self {
        Self {
            round: r.round,
            through_seq: r.through_seq,
            log_time: r.log_time,
            policy_version: r.policy_version,
            proposed: r.proposed,
            expired: r.expired,
            cancelled: r.cancelled,
            total_score: r.total_score,
            engine: 1,
        }
    }
}

/// A round, as [`RoundRecordedV2`], appended in parts. The log takes at most 1,000 messages in
/// one atomic append, and a round over a backlog can decide many more; so its decisions are
/// split into `parts` consecutive parts, each appended at once and closed by a record of its own
/// (`part` counts from 0; every part's record carries the whole round's totals). A matcher that
/// stops between two parts leaves the round cut short at a part's record: the decisions after it
/// were never made, and the next round decides again over what they would have touched.
/// [`RoundRecordedV2`] (and so [`RoundRecordedV1`]) upcasts to part 0 of 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRecordedV3 {
    pub round: EntityId,
    pub through_seq: u64,
    pub log_time: Timestamp,
    pub policy_version: u32,
    pub proposed: u32,
    pub expired: u32,
    pub cancelled: u32,
    /// The round's optimum: the sum of the proposals' scores.
    pub total_score: i64,
    /// The engine version that decided the round.
    pub engine: u16,
    /// Which part of the round this record closes, from 0.
    pub part: u32,
    /// How many parts the round was appended in.
    pub parts: u32,
}

impl RoundRecordedV3 {
    /// Whether this record closes the round's last part (the round is then wholly on the log).
    pub fn is_last_part(&self) -> bool {
        self.part + 1 >= self.parts
    }
}

impl From<RoundRecordedV2> for RoundRecordedV3 {
    fn from(r: RoundRecordedV2) -> Self {
        Self {
            round: r.round,
            through_seq: r.through_seq,
            log_time: r.log_time,
            policy_version: r.policy_version,
            proposed: r.proposed,
            expired: r.expired,
            cancelled: r.cancelled,
            total_score: r.total_score,
            engine: r.engine,
            part: 0,
            parts: 1,
        }
    }
}

/// An assignment was not accepted within the policy's time (in log time); its need is open again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentExpiredV1 {
    pub assignment: EntityId,
    pub round_through_seq: u64,
}

/// Why an assignment was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CancelReason {
    NeedWithdrawn,
    OfferWithdrawn,
    /// A verification the need requires is no longer held (revoked or expired).
    VerificationLost,
    /// The need or the offer changed and the offer no longer serves the need: another kind of
    /// help or skills, a party beyond the offer's room, no common time, out of reach. (Added
    /// after the others: their encodings are unchanged.)
    NoLongerFits,
    /// The incident was stood down before the volunteer answered: no one is sent out for it
    /// any more. (Added after the others.)
    IncidentStoodDown,
}

/// An assignment was cancelled; unless its need was withdrawn, the need is open again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentCancelledV1 {
    pub assignment: EntityId,
    pub reason: CancelReason,
    pub round_through_seq: u64,
}

/// Every event ever written. **Append new variants at the end only.**
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    IncidentDeclaredV1(IncidentDeclaredV1),
    PolicyChangedV1(PolicyChangedV1),
    IncidentStoodDownV1(IncidentStoodDownV1),
    NeedReportedV1(NeedReportedV1),
    NeedUpdatedV1(NeedUpdatedV1),
    NeedWithdrawnV1(NeedWithdrawnV1),
    OfferRegisteredV1(OfferRegisteredV1),
    OfferUpdatedV1(OfferUpdatedV1),
    OfferWithdrawnV1(OfferWithdrawnV1),
    VerificationRecordedV1(VerificationRecordedV1),
    VerificationRevokedV1(VerificationRevokedV1),
    AssignmentProposedV1(AssignmentProposedV1),
    VolunteerRespondedV1(VolunteerRespondedV1),
    AssignmentCompletedV1(AssignmentCompletedV1),
    TickV1(TickV1),
    RoundRecordedV1(RoundRecordedV1),
    AssignmentExpiredV1(AssignmentExpiredV1),
    AssignmentCancelledV1(AssignmentCancelledV1),
    RoundRecordedV2(RoundRecordedV2),
    RoundRecordedV3(RoundRecordedV3),
}

/// The entity an event belongs to: its subject, and so its version sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityRef {
    Incident(IncidentId),
    Entity(EntityKind, EntityId),
    /// Ticks belong to no entity.
    Tick,
}

impl Event {
    /// The event's type name, stable across versions of the same event (`NeedReported`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::IncidentDeclaredV1(_) => "IncidentDeclared",
            Event::PolicyChangedV1(_) => "PolicyChanged",
            Event::IncidentStoodDownV1(_) => "IncidentStoodDown",
            Event::NeedReportedV1(_) => "NeedReported",
            Event::NeedUpdatedV1(_) => "NeedUpdated",
            Event::NeedWithdrawnV1(_) => "NeedWithdrawn",
            Event::OfferRegisteredV1(_) => "OfferRegistered",
            Event::OfferUpdatedV1(_) => "OfferUpdated",
            Event::OfferWithdrawnV1(_) => "OfferWithdrawn",
            Event::VerificationRecordedV1(_) => "VerificationRecorded",
            Event::VerificationRevokedV1(_) => "VerificationRevoked",
            Event::AssignmentProposedV1(_) => "AssignmentProposed",
            Event::VolunteerRespondedV1(_) => "VolunteerResponded",
            Event::AssignmentCompletedV1(_) => "AssignmentCompleted",
            Event::TickV1(_) => "Tick",
            Event::RoundRecordedV1(_) | Event::RoundRecordedV2(_) | Event::RoundRecordedV3(_) => {
                "RoundRecorded"
            }
            Event::AssignmentExpiredV1(_) => "AssignmentExpired",
            Event::AssignmentCancelledV1(_) => "AssignmentCancelled",
        }
    }

    /// The entity whose subject this event is appended to.
    pub fn entity(&self) -> EntityRef {
        use EntityKind as K;
        match self {
            Event::IncidentDeclaredV1(e) => EntityRef::Incident(e.incident.clone()),
            Event::PolicyChangedV1(e) => EntityRef::Incident(e.incident.clone()),
            Event::IncidentStoodDownV1(e) => EntityRef::Incident(e.incident.clone()),
            Event::NeedReportedV1(e) => EntityRef::Entity(K::Need, e.need),
            Event::NeedUpdatedV1(e) => EntityRef::Entity(K::Need, e.need),
            Event::NeedWithdrawnV1(e) => EntityRef::Entity(K::Need, e.need),
            Event::OfferRegisteredV1(e) => EntityRef::Entity(K::Offer, e.offer),
            Event::OfferUpdatedV1(e) => EntityRef::Entity(K::Offer, e.offer),
            Event::OfferWithdrawnV1(e) => EntityRef::Entity(K::Offer, e.offer),
            Event::VerificationRecordedV1(e) => EntityRef::Entity(K::Verification, e.verification),
            Event::VerificationRevokedV1(e) => EntityRef::Entity(K::Verification, e.verification),
            Event::AssignmentProposedV1(e) => EntityRef::Entity(K::Assignment, e.assignment),
            Event::VolunteerRespondedV1(e) => EntityRef::Entity(K::Assignment, e.assignment),
            Event::AssignmentCompletedV1(e) => EntityRef::Entity(K::Assignment, e.assignment),
            Event::TickV1(_) => EntityRef::Tick,
            Event::RoundRecordedV1(e) => EntityRef::Entity(K::Round, e.round),
            Event::RoundRecordedV2(e) => EntityRef::Entity(K::Round, e.round),
            Event::RoundRecordedV3(e) => EntityRef::Entity(K::Round, e.round),
            Event::AssignmentExpiredV1(e) => EntityRef::Entity(K::Assignment, e.assignment),
            Event::AssignmentCancelledV1(e) => EntityRef::Entity(K::Assignment, e.assignment),
        }
    }

    /// Whether the matcher writes this event in a round (a decision or a round's record), as
    /// opposed to an input it decides on.
    pub fn is_round_event(&self) -> bool {
        matches!(
            self,
            Event::AssignmentProposedV1(_)
                | Event::AssignmentExpiredV1(_)
                | Event::AssignmentCancelledV1(_)
                | Event::RoundRecordedV1(_)
                | Event::RoundRecordedV2(_)
                | Event::RoundRecordedV3(_)
        )
    }

    /// Whether this event ends its entity's life (nothing may follow it on the subject).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::IncidentStoodDownV1(_)
                | Event::NeedWithdrawnV1(_)
                | Event::OfferWithdrawnV1(_)
                | Event::VerificationRevokedV1(_)
                | Event::AssignmentCompletedV1(_)
                | Event::AssignmentExpiredV1(_)
                | Event::AssignmentCancelledV1(_)
        )
    }

    /// A round record of any version, as the current version.
    pub fn round_record(&self) -> Option<RoundRecordedV3> {
        match self {
            Event::RoundRecordedV1(r) => Some(RoundRecordedV2::from(r.clone()).into()),
            Event::RoundRecordedV2(r) => Some(r.clone().into()),
            Event::RoundRecordedV3(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// Rewrites an old event version into the current one, so consumers only ever see the
    /// newest version of each event: `RoundRecordedV1` becomes `RoundRecordedV3` of engine 1,
    /// `RoundRecordedV2` a `RoundRecordedV3` of one part.
    pub fn upcast(self) -> Event {
        match self {
            Event::RoundRecordedV1(r) => Event::RoundRecordedV3(RoundRecordedV2::from(r).into()),
            Event::RoundRecordedV2(r) => Event::RoundRecordedV3(r.into()),
            e => e,
        }
    }
}

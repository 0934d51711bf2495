//! Commands: from a validated request to the event to append and what must hold for it.
//!
//! A request becomes a [`Draft`] (pure: every field checked, the event built) and then, after
//! looking at the log, a [`Plan`]: the entity's subject and the expectation that guards the
//! append (no entity yet, for a creation; the entity's current version, for a change). Nothing is
//! checked against a cached picture that the log itself does not check again at append time.

use muster_log::{Expect, LogReader, Outgoing, StoredMessage};
use muster_proto::v1 as pb;
use muster_schema::assignment::{Move, Stage};
use muster_schema::events::*;
use muster_schema::ids::EntityKind;
use muster_schema::{
    AgencyId, ENVELOPE_VERSION, EntityId, Envelope, Event, IncidentId, PartitionCode, PersonId,
    Provider, Reference, Response, Timestamp, Violations, subject, values,
};

use crate::convert;
use crate::directory::Directory;
use crate::error::IntakeError;

/// What the entity's last event must be for a change to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requires {
    /// Anything that does not end the entity's life.
    Live,
    /// An assignment at a stage this change may follow (an answer a proposal awaiting one, a
    /// completion an accepted assignment), by the rule in [`muster_schema::assignment`].
    Turn,
}

/// Which entity a command writes to.
#[derive(Debug, Clone)]
pub enum Target {
    NewIncident,
    Incident {
        expected: Option<u64>,
    },
    NewEntity {
        kind: EntityKind,
        id: EntityId,
        partition: PartitionCode,
    },
    Entity {
        kind: EntityKind,
        id: EntityId,
        expected: Option<u64>,
        requires: Requires,
    },
}

/// A validated command, before looking at the log.
#[derive(Debug, Clone)]
pub struct Draft {
    pub incident: IncidentId,
    pub target: Target,
    pub event: Event,
}

impl Draft {
    /// Whether this command only ends something (a need or offer withdrawn, a check revoked, a
    /// proposal declined, a task completed): taken after the incident is stood down too, so
    /// that agencies and volunteers can close out what was under way.
    pub fn closes_out(&self) -> bool {
        matches!(
            &self.event,
            Event::NeedWithdrawnV1(_)
                | Event::OfferWithdrawnV1(_)
                | Event::VerificationRevokedV1(_)
                | Event::AssignmentCompletedV1(_)
                | Event::VolunteerRespondedV1(VolunteerRespondedV1 {
                    response: Response::Decline,
                    ..
                })
        )
    }

    /// The id reported back to the client.
    pub fn entity_id(&self) -> String {
        match &self.target {
            Target::NewIncident | Target::Incident { .. } => self.incident.to_string(),
            Target::NewEntity { id, .. } | Target::Entity { id, .. } => id.to_hex(),
        }
    }

    /// The subjects (whatever the partition) this command's entity lives on.
    pub fn filter(&self) -> String {
        match &self.target {
            Target::NewIncident | Target::Incident { .. } => subject::incident(&self.incident),
            Target::NewEntity { kind, id, .. } | Target::Entity { kind, id, .. } => {
                subject::entity_any_partition(&self.incident, *kind, id)
            }
        }
    }

    /// The entity this draft writes to (`None`: its incident itself). Within one incident, two
    /// drafts with the same entity write the same subject; comparing this builds no subject.
    pub fn entity(&self) -> Option<(EntityKind, EntityId)> {
        match &self.target {
            Target::NewIncident | Target::Incident { .. } => None,
            Target::NewEntity { kind, id, .. } | Target::Entity { kind, id, .. } => {
                Some((*kind, *id))
            }
        }
    }

    /// The entity for error messages: `need 3fa2…`, `incident york-floods`.
    pub fn label(&self) -> String {
        match &self.target {
            Target::NewIncident | Target::Incident { .. } => format!("incident {}", self.incident),
            Target::NewEntity { kind, id, .. } | Target::Entity { kind, id, .. } => {
                format!("{} {id}", kind_name(*kind))
            }
        }
    }

    /// The request field naming the entity, for error details.
    pub fn field(&self) -> &'static str {
        match &self.target {
            Target::NewIncident | Target::Incident { .. } => "incident",
            Target::NewEntity { kind, .. } => match kind {
                EntityKind::Need | EntityKind::Offer | EntityKind::Verification => "reference",
                _ => "id",
            },
            Target::Entity { kind, .. } => match kind {
                EntityKind::Need => "need_id",
                EntityKind::Offer => "offer_id",
                EntityKind::Verification => "verification_id",
                EntityKind::Assignment => "assignment_id",
                EntityKind::Incident => "incident",
                EntityKind::Round => "round",
            },
        }
    }

    pub fn is_creation(&self) -> bool {
        matches!(self.target, Target::NewIncident | Target::NewEntity { .. })
    }
}

fn kind_name(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::Incident => "incident",
        EntityKind::Need => "need",
        EntityKind::Offer => "offer",
        EntityKind::Verification => "verification",
        EntityKind::Assignment => "assignment",
        EntityKind::Round => "round",
    }
}

/// Who is acting, and the context every event of the request carries.
#[derive(Debug, Clone)]
pub struct Actor {
    pub agency: AgencyId,
    pub correlation_id: Option<String>,
}

/// A command ready to append.
#[derive(Debug, Clone)]
pub struct Plan {
    pub draft: Draft,
    pub partition: PartitionCode,
    pub expect: Expect,
}

impl Plan {
    pub fn outgoing(&self, actor: &Actor, key: &str, msg_id: &str, now: Timestamp) -> Outgoing {
        let env = Envelope {
            schema_version: ENVELOPE_VERSION,
            event_id: EntityId::hash(&[msg_id.as_bytes()]),
            incident: self.draft.incident.clone(),
            partition: self.partition.clone(),
            recorded_at: now,
            actor: actor.agency.clone(),
            idempotency_key: key.to_string(),
            correlation_id: actor
                .correlation_id
                .clone()
                .unwrap_or_else(|| msg_id.to_string()),
            causation_id: None,
            event: self.draft.event.clone(),
        };
        Outgoing {
            subject: subject::for_envelope(&env),
            payload: env.encode().into(),
            msg_id: msg_id.to_string(),
            expect: self.expect.clone(),
        }
    }
}

/// The outcome of looking at the log before appending.
#[derive(Debug)]
pub enum Resolved {
    Plan(Box<Plan>),
    /// The request was stored before: this is the original event.
    Duplicate(StoredMessage),
}

/// Checks `draft` against the log and decides how to append it.
pub async fn resolve(
    draft: Draft,
    msg_id: &str,
    directory: &Directory,
    reader: &LogReader,
) -> Result<Resolved, IntakeError> {
    let wide = PartitionCode::incident_wide();
    match &draft.target {
        Target::NewIncident => {
            let expect = Expect::Nothing {
                filter: draft.filter(),
            };
            Ok(Resolved::Plan(Box::new(Plan {
                draft,
                partition: wide,
                expect,
            })))
        }
        Target::Incident { expected } => {
            let Some(state) = directory.get(&draft.incident).await? else {
                return Err(IntakeError::not_found(
                    "incident",
                    format!("incident {} has not been declared", draft.incident),
                ));
            };
            if state.last_msg_id.as_deref() == Some(msg_id) {
                return duplicate_at(&draft, reader, state.version).await;
            }
            if state.stood_down {
                return Err(IntakeError::precondition(
                    "incident",
                    format!("incident {} has been stood down", draft.incident),
                ));
            }
            let expect = Expect::LastOnSubject(expected.unwrap_or(state.version));
            let mut draft = draft;
            if let Event::PolicyChangedV1(p) = &mut draft.event {
                p.policy_version = state.policy_version + 1;
            }
            Ok(Resolved::Plan(Box::new(Plan {
                draft,
                partition: wide,
                expect,
            })))
        }
        Target::NewEntity { partition, .. } => {
            let state = directory.active(&draft.incident).await?;
            let scope = &state.declared;
            if !scope.partitions.is_empty()
                && partition.as_str() != "_"
                && !scope.partitions.contains(partition)
            {
                return Err(IntakeError::precondition(
                    "partition",
                    format!(
                        "partition {partition} is not in incident {}'s area",
                        draft.incident
                    ),
                ));
            }
            if let Event::NeedReportedV1(n) = &draft.event
                && !scope.categories.is_empty()
                && !scope.categories.contains(&n.spec.category)
            {
                return Err(IntakeError::precondition(
                    "need.category",
                    format!(
                        "category {:?} is not in incident {}'s scope",
                        n.spec.category, draft.incident
                    ),
                ));
            }
            let expect = Expect::Nothing {
                filter: draft.filter(),
            };
            let partition = partition.clone();
            Ok(Resolved::Plan(Box::new(Plan {
                draft,
                partition,
                expect,
            })))
        }
        Target::Entity {
            expected, requires, ..
        } => {
            if draft.closes_out() {
                directory.declared(&draft.incident).await?;
            } else {
                directory.active(&draft.incident).await?;
            }
            let Some(last) = reader.last(&draft.filter()).await? else {
                return Err(IntakeError::not_found(
                    draft.field(),
                    format!(
                        "{} does not exist in incident {}",
                        draft.label(),
                        draft.incident
                    ),
                ));
            };
            if last.msg_id.as_deref() == Some(msg_id) {
                same_request(&draft, &last)?;
                return Ok(Resolved::Duplicate(last));
            }
            let event = decode_event(&draft, &last)?;
            match requires {
                Requires::Live => check_live(&draft, &event)?,
                Requires::Turn => {
                    let stage = match Stage::after_last(&event) {
                        Some(stage) => stage,
                        None => stage_of(&draft, reader).await?,
                    };
                    check_turn(&draft, stage, &event)?;
                }
            }
            let partition = subject::partition_of(&last.subject)
                .and_then(|p| {
                    if p == "_" {
                        Some(PartitionCode::incident_wide())
                    } else {
                        PartitionCode::parse("partition", p).ok()
                    }
                })
                .ok_or_else(|| {
                    IntakeError::Internal(format!("unexpected subject {}", last.subject))
                })?;
            let expect = Expect::LastOnSubject(expected.unwrap_or(last.seq));
            Ok(Resolved::Plan(Box::new(Plan {
                draft,
                partition,
                expect,
            })))
        }
    }
}

async fn duplicate_at(
    draft: &Draft,
    reader: &LogReader,
    seq: u64,
) -> Result<Resolved, IntakeError> {
    let stored = stored_at(reader, seq).await?;
    same_request(draft, &stored)?;
    Ok(Resolved::Duplicate(stored))
}

/// The message at `seq`, which the log has said is there.
pub async fn stored_at(reader: &LogReader, seq: u64) -> Result<StoredMessage, IntakeError> {
    reader
        .at(seq)
        .await?
        .ok_or_else(|| IntakeError::Internal(format!("event {seq} vanished from the log")))
}

/// A message stored under this request's idempotency key answers the request only if it is
/// this request: the same command (event type) on the same entity. Anything else means the
/// key was used before for another request (a client's counter that started again, one
/// spreadsheet's row numbers in the next): refused, naming the key, because answering it as a
/// duplicate would acknowledge a request that was never stored.
pub fn same_request(draft: &Draft, stored: &StoredMessage) -> Result<(), IntakeError> {
    let event = Envelope::decode(&stored.payload).map(|e| e.event.type_name());
    if subject::matches(&draft.filter(), &stored.subject)
        && event.as_ref().is_ok_and(|t| *t == draft.event.type_name())
    {
        return Ok(());
    }
    Err(key_used_before(format!(
        "{} on {} at sequence {}",
        event.unwrap_or("an unreadable event"),
        stored.subject,
        stored.seq
    )))
}

/// The refusal of a request whose idempotency key named `other` before.
pub fn key_used_before(other: String) -> IntakeError {
    IntakeError::AlreadyExists {
        subject: "idempotency_key".to_string(),
        description: format!(
            "it was used for another request ({other}): a retry must repeat its request, and a new request needs a new key"
        ),
    }
}

fn decode_event(draft: &Draft, m: &StoredMessage) -> Result<Event, IntakeError> {
    Envelope::decode(&m.payload).map(|e| e.event).map_err(|e| {
        IntakeError::Internal(format!(
            "{} has an unreadable event at {}: {e}",
            draft.label(),
            m.seq
        ))
    })
}

/// The stage of the assignment `draft` changes, from its whole history on the log.
async fn stage_of(draft: &Draft, reader: &LogReader) -> Result<Stage, IntakeError> {
    let filter = draft.filter();
    let mut events = Vec::new();
    let mut from = 1;
    while let Some(m) = reader.next(&filter, from).await? {
        from = m.seq + 1;
        events.push(decode_event(draft, &m)?);
    }
    Stage::after(&events).ok_or_else(|| {
        IntakeError::Internal(format!(
            "{}'s events on the log do not start with its proposal",
            draft.label()
        ))
    })
}

fn refuse(draft: &Draft, why: &str) -> Result<(), IntakeError> {
    Err(IntakeError::precondition(
        draft.field(),
        format!("{} {why}", draft.label()),
    ))
}

/// An entity that has not ended.
fn check_live(draft: &Draft, last: &Event) -> Result<(), IntakeError> {
    if last.is_terminal() {
        return refuse(draft, &format!("has ended ({})", last.type_name()));
    }
    Ok(())
}

/// An assignment at `stage` (its last event on the log `last`) that `draft`'s change may
/// follow.
fn check_turn(draft: &Draft, stage: Stage, last: &Event) -> Result<(), IntakeError> {
    if matches!(stage.on(&draft.event), Move::To(_)) {
        return Ok(());
    }
    let why = match draft.event {
        Event::AssignmentCompletedV1(_) => "has not been accepted",
        _ => "is not awaiting a response",
    };
    refuse(
        draft,
        &format!(
            "{why} (it is {}; last event: {})",
            stage.name(),
            last.type_name()
        ),
    )
}

/// After the log refused an append because an expectation did not hold: was it this request,
/// stored before (answer with the original), or a real conflict?
pub async fn explain_refusal(
    draft: &Draft,
    msg_id: &str,
    reader: &LogReader,
) -> Result<StoredMessage, IntakeError> {
    if let Some(original) = reader.find_msg_id(&draft.filter(), msg_id).await? {
        same_request(draft, &original)?;
        return Ok(original);
    }
    let last = reader.last(&draft.filter()).await?;
    let current = last.as_ref().map_or(0, |m| m.seq);
    if draft.is_creation() {
        Err(IntakeError::AlreadyExists {
            subject: draft.field().to_string(),
            description: format!(
                "{} was already created by another request (at sequence {current})",
                draft.label()
            ),
        })
    } else {
        Err(IntakeError::Conflict {
            subject: "expected_version".to_string(),
            description: format!(
                "{} is at version {current}: it changed since the expected version",
                draft.label()
            ),
        })
    }
}

// ---- drafts: one per command ----------------------------------------------------------------

fn incident_of(
    field: &str,
    request: &str,
    bulk: Option<&IncidentId>,
) -> Result<IncidentId, Violations> {
    match bulk {
        Some(b) if request.is_empty() || request == b.as_str() => Ok(b.clone()),
        Some(b) => Err(muster_schema::Violation::new(
            field,
            format!("must be empty or {b}, the bulk request's incident"),
        )
        .into()),
        None => IncidentId::parse(field, request).map_err(Into::into),
    }
}

fn entity_id(field: &str, s: &str) -> Result<EntityId, Violations> {
    EntityId::parse(field, s).map_err(Into::into)
}

macro_rules! collect {
    ($vs:ident, $($name:ident = $e:expr),+ $(,)?) => {
        $(let $name = $vs.check_all("", $e);)+
        let ($(Some($name),)+) = ($($name,)+) else { return Err($vs.into()); };
        if !$vs.is_empty() { return Err($vs.into()); }
    };
}

fn one<T>(r: Result<T, muster_schema::Violation>) -> Result<T, Violations> {
    r.map_err(Into::into)
}

pub fn declare_incident(r: &pb::DeclareIncidentRequest) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    let mut partitions: Vec<PartitionCode> = r
        .partitions
        .iter()
        .enumerate()
        .filter_map(|(i, p)| vs.check(PartitionCode::parse(&format!("partitions[{i}]"), p)))
        .collect();
    partitions.sort();
    partitions.dedup();
    collect!(
        vs,
        incident = one(IncidentId::parse("incident", &r.incident)),
        name = one(convert::name("name", &r.name)),
        categories = convert::categories("categories", &r.categories, 0),
        policy = convert::policy("policy", r.policy.as_ref()),
    );
    Ok(Draft {
        incident: incident.clone(),
        target: Target::NewIncident,
        event: Event::IncidentDeclaredV1(IncidentDeclaredV1 {
            incident,
            name,
            partitions,
            categories,
            policy,
        }),
    })
}

pub fn change_policy(r: &pb::ChangePolicyRequest) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    collect!(
        vs,
        incident = one(IncidentId::parse("incident", &r.incident)),
        policy = convert::policy("policy", r.policy.as_ref()),
    );
    Ok(Draft {
        incident: incident.clone(),
        target: Target::Incident {
            expected: r.expected_version,
        },
        // The version is set from the incident's state when the command is resolved.
        event: Event::PolicyChangedV1(PolicyChangedV1 {
            incident,
            policy_version: 0,
            policy,
        }),
    })
}

pub fn stand_down(r: &pb::StandDownIncidentRequest) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    collect!(
        vs,
        incident = one(IncidentId::parse("incident", &r.incident)),
        reason = one(values::reason("reason", &r.reason)),
    );
    Ok(Draft {
        incident: incident.clone(),
        target: Target::Incident {
            expected: r.expected_version,
        },
        event: Event::IncidentStoodDownV1(IncidentStoodDownV1 { incident, reason }),
    })
}

pub fn report_need(
    r: &pb::ReportNeedRequest,
    agency: &AgencyId,
    bulk: Option<&IncidentId>,
) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    collect!(
        vs,
        incident = incident_of("incident", &r.incident, bulk),
        partition = one(PartitionCode::parse("partition", &r.partition)),
        reference = one(Reference::parse("reference", &r.reference)),
        spec = convert::need_spec("need", r.need.as_ref()),
        personal = convert::personal("personal", r.personal.as_ref()),
    );
    let id = EntityId::derive(EntityKind::Need, &incident, agency, &reference);
    Ok(Draft {
        incident,
        target: Target::NewEntity {
            kind: EntityKind::Need,
            id,
            partition,
        },
        event: Event::NeedReportedV1(NeedReportedV1 {
            need: id,
            reference,
            spec,
            personal,
        }),
    })
}

pub fn update_need(
    r: &pb::UpdateNeedRequest,
    bulk: Option<&IncidentId>,
) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    collect!(
        vs,
        incident = incident_of("incident", &r.incident, bulk),
        id = entity_id("need_id", &r.need_id),
        spec = convert::need_spec("need", r.need.as_ref()),
        personal = convert::personal("personal", r.personal.as_ref()),
    );
    Ok(Draft {
        incident,
        target: Target::Entity {
            kind: EntityKind::Need,
            id,
            expected: r.expected_version,
            requires: Requires::Live,
        },
        event: Event::NeedUpdatedV1(NeedUpdatedV1 {
            need: id,
            spec,
            personal,
        }),
    })
}

pub fn withdraw_need(
    r: &pb::WithdrawNeedRequest,
    bulk: Option<&IncidentId>,
) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    collect!(
        vs,
        incident = incident_of("incident", &r.incident, bulk),
        id = entity_id("need_id", &r.need_id),
        reason = one(values::reason("reason", &r.reason)),
    );
    Ok(Draft {
        incident,
        target: Target::Entity {
            kind: EntityKind::Need,
            id,
            expected: r.expected_version,
            requires: Requires::Live,
        },
        event: Event::NeedWithdrawnV1(NeedWithdrawnV1 { need: id, reason }),
    })
}

fn provider(p: Option<&pb::Provider>) -> Result<Provider, Violations> {
    let Some(p) = p else {
        return Err(muster_schema::Violation::new("provider", "is required").into());
    };
    let id = PersonId::parse("provider.id", &p.id);
    match (pb::ProviderKind::try_from(p.kind), id) {
        (Ok(pb::ProviderKind::Volunteer), Ok(id)) => Ok(Provider::Volunteer(id)),
        (Ok(pb::ProviderKind::Organisation), Ok(id)) => Ok(Provider::Organisation(id)),
        (Ok(pb::ProviderKind::Volunteer | pb::ProviderKind::Organisation), Err(v)) => Err(v.into()),
        (_, id) => {
            let mut vs = Violations::new();
            vs.push(muster_schema::Violation::new(
                "provider.kind",
                "must be VOLUNTEER or ORGANISATION",
            ));
            if let Err(v) = id {
                vs.push(v);
            }
            Err(vs)
        }
    }
}

pub fn register_offer(
    r: &pb::RegisterOfferRequest,
    agency: &AgencyId,
    bulk: Option<&IncidentId>,
) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    collect!(
        vs,
        incident = incident_of("incident", &r.incident, bulk),
        partition = one(PartitionCode::parse("partition", &r.partition)),
        reference = one(Reference::parse("reference", &r.reference)),
        provider = provider(r.provider.as_ref()),
        spec = convert::offer_spec("offer", r.offer.as_ref()),
        personal = convert::personal("personal", r.personal.as_ref()),
    );
    let id = EntityId::derive(EntityKind::Offer, &incident, agency, &reference);
    Ok(Draft {
        incident,
        target: Target::NewEntity {
            kind: EntityKind::Offer,
            id,
            partition,
        },
        event: Event::OfferRegisteredV1(OfferRegisteredV1 {
            offer: id,
            reference,
            provider,
            spec,
            personal,
        }),
    })
}

pub fn update_offer(
    r: &pb::UpdateOfferRequest,
    bulk: Option<&IncidentId>,
) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    collect!(
        vs,
        incident = incident_of("incident", &r.incident, bulk),
        id = entity_id("offer_id", &r.offer_id),
        spec = convert::offer_spec("offer", r.offer.as_ref()),
        personal = convert::personal("personal", r.personal.as_ref()),
    );
    Ok(Draft {
        incident,
        target: Target::Entity {
            kind: EntityKind::Offer,
            id,
            expected: r.expected_version,
            requires: Requires::Live,
        },
        event: Event::OfferUpdatedV1(OfferUpdatedV1 {
            offer: id,
            spec,
            personal,
        }),
    })
}

pub fn withdraw_offer(
    r: &pb::WithdrawOfferRequest,
    bulk: Option<&IncidentId>,
) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    collect!(
        vs,
        incident = incident_of("incident", &r.incident, bulk),
        id = entity_id("offer_id", &r.offer_id),
        reason = one(values::reason("reason", &r.reason)),
    );
    Ok(Draft {
        incident,
        target: Target::Entity {
            kind: EntityKind::Offer,
            id,
            expected: r.expected_version,
            requires: Requires::Live,
        },
        event: Event::OfferWithdrawnV1(OfferWithdrawnV1 { offer: id, reason }),
    })
}

pub fn record_verification(
    r: &pb::RecordVerificationRequest,
    agency: &AgencyId,
    bulk: Option<&IncidentId>,
) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    let expires_at = match &r.expires_at {
        None => Some(None),
        Some(t) => vs
            .check(convert::timestamp("expires_at", Some(t)))
            .map(Some),
    };
    collect!(
        vs,
        incident = incident_of("incident", &r.incident, bulk),
        reference = one(Reference::parse("reference", &r.reference)),
        person = one(PersonId::parse("person", &r.person)),
        kind = one(convert::verification_kind("kind", r.kind, &r.qualification)),
        issuer = one(AgencyId::parse("issuer", &r.issuer)),
        issued_at = one(convert::timestamp("issued_at", r.issued_at.as_ref())),
        expires_at = Ok::<_, Violations>(expires_at),
        personal = convert::personal("personal", r.personal.as_ref()),
    );
    let Some(expires_at) = expires_at else {
        return Err(vs.into());
    };
    if let Some(e) = expires_at
        && e <= issued_at
    {
        return Err(IntakeError::Invalid(
            muster_schema::Violation::new("expires_at", "must be after issued_at").into(),
        ));
    }
    let id = EntityId::derive(EntityKind::Verification, &incident, agency, &reference);
    Ok(Draft {
        incident,
        target: Target::NewEntity {
            kind: EntityKind::Verification,
            id,
            partition: PartitionCode::incident_wide(),
        },
        event: Event::VerificationRecordedV1(VerificationRecordedV1 {
            verification: id,
            reference,
            person,
            kind,
            issuer,
            issued_at,
            expires_at,
            personal,
        }),
    })
}

pub fn revoke_verification(
    r: &pb::RevokeVerificationRequest,
    bulk: Option<&IncidentId>,
) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    collect!(
        vs,
        incident = incident_of("incident", &r.incident, bulk),
        id = entity_id("verification_id", &r.verification_id),
        reason = one(values::reason("reason", &r.reason)),
    );
    Ok(Draft {
        incident,
        target: Target::Entity {
            kind: EntityKind::Verification,
            id,
            expected: r.expected_version,
            requires: Requires::Live,
        },
        event: Event::VerificationRevokedV1(VerificationRevokedV1 {
            verification: id,
            reason,
        }),
    })
}

pub fn respond(
    r: &pb::RespondToAssignmentRequest,
    bulk: Option<&IncidentId>,
) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    let response = match pb::AssignmentResponse::try_from(r.response) {
        Ok(pb::AssignmentResponse::Accept) => Ok(Response::Accept),
        Ok(pb::AssignmentResponse::Decline) => Ok(Response::Decline),
        _ => Err(muster_schema::Violation::new(
            "response",
            "must be ACCEPT or DECLINE",
        )),
    };
    collect!(
        vs,
        incident = incident_of("incident", &r.incident, bulk),
        id = entity_id("assignment_id", &r.assignment_id),
        response = one(response),
        reason = one(values::reason("reason", &r.reason)),
    );
    Ok(Draft {
        incident,
        target: Target::Entity {
            kind: EntityKind::Assignment,
            id,
            expected: None,
            requires: Requires::Turn,
        },
        event: Event::VolunteerRespondedV1(VolunteerRespondedV1 {
            assignment: id,
            response,
            reason,
        }),
    })
}

pub fn complete(
    r: &pb::CompleteAssignmentRequest,
    bulk: Option<&IncidentId>,
) -> Result<Draft, IntakeError> {
    let mut vs = Violations::new();
    collect!(
        vs,
        incident = incident_of("incident", &r.incident, bulk),
        id = entity_id("assignment_id", &r.assignment_id),
        personal = convert::personal("personal", r.personal.as_ref()),
    );
    Ok(Draft {
        incident,
        target: Target::Entity {
            kind: EntityKind::Assignment,
            id,
            expected: None,
            requires: Requires::Turn,
        },
        event: Event::AssignmentCompletedV1(AssignmentCompletedV1 {
            assignment: id,
            personal,
        }),
    })
}

/// A bulk item as a draft; its own idempotency key must be empty.
pub fn bulk_item(
    item: &pb::BulkItem,
    agency: &AgencyId,
    incident: &IncidentId,
) -> Result<Draft, IntakeError> {
    use pb::bulk_item::Command as C;
    let Some(command) = &item.command else {
        return Err(muster_schema::Violation::new("command", "is required: one of report_need, update_need, withdraw_need, register_offer, update_offer, withdraw_offer, record_verification, revoke_verification, respond_to_assignment, complete_assignment").into());
    };
    let b = Some(incident);
    let (name, key, draft) = match command {
        C::ReportNeed(r) => ("report_need", &r.idempotency_key, report_need(r, agency, b)),
        C::UpdateNeed(r) => ("update_need", &r.idempotency_key, update_need(r, b)),
        C::WithdrawNeed(r) => ("withdraw_need", &r.idempotency_key, withdraw_need(r, b)),
        C::RegisterOffer(r) => (
            "register_offer",
            &r.idempotency_key,
            register_offer(r, agency, b),
        ),
        C::UpdateOffer(r) => ("update_offer", &r.idempotency_key, update_offer(r, b)),
        C::WithdrawOffer(r) => ("withdraw_offer", &r.idempotency_key, withdraw_offer(r, b)),
        C::RecordVerification(r) => (
            "record_verification",
            &r.idempotency_key,
            record_verification(r, agency, b),
        ),
        C::RevokeVerification(r) => (
            "revoke_verification",
            &r.idempotency_key,
            revoke_verification(r, b),
        ),
        C::RespondToAssignment(r) => ("respond_to_assignment", &r.idempotency_key, respond(r, b)),
        C::CompleteAssignment(r) => ("complete_assignment", &r.idempotency_key, complete(r, b)),
    };
    let mut vs = Violations::new();
    if !key.is_empty() {
        vs.push(muster_schema::Violation::new(
            format!("{name}.idempotency_key"),
            "must be empty in a bulk item: the bulk request's key covers it",
        ));
    }
    match draft {
        Ok(d) if vs.is_empty() => Ok(d),
        Ok(_) => Err(IntakeError::Invalid(vs)),
        Err(IntakeError::Invalid(more)) => {
            vs.0.extend(more.0.into_iter().map(|v| v.under(name)));
            Err(IntakeError::Invalid(vs))
        }
        Err(other) => Err(other),
    }
}

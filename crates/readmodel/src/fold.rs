//! The fold: one event of the log into read-model changes.
//!
//! Every event moves the position, applied or not: an event at or below the stored position is
//! skipped (it was applied before a crash or a redelivery), a malformed one or one that does not
//! fit what the read model holds (an update of a need never reported, an answer to an assignment
//! that is already over) is set aside with its sequence and reason. Handlers check everything
//! they depend on before writing, so a set-aside event leaves no partial change behind.

use muster_schema::assignment::{Move, Stage};
use muster_schema::events::{CancelReason, ScoreV1};
use muster_schema::ids::EntityKind;
use muster_schema::values::{Provider, Response, Timestamp};
use muster_schema::{DecodeError, EntityId, Envelope, Event, IncidentId, PersonId};

use crate::counters::{self, assignment_counter_key, need_counter_keys};
use crate::keys::{self, Cf, HistoryOf};
use crate::records::{
    AssignmentRecord, AssignmentStatus, ChangeRecord, EntityRecord, HistoryEntry, IncidentRecord,
    NeedEntry, NeedRecord, NeedStatus, OfferRecord, ProviderRecord, SetAsideRecord,
    VerificationRecord,
};
use crate::tx::{Read, Tx};
use crate::{Corrupt, FORMAT};

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// At or below the stored position: applied before.
    Skipped,
    /// Kept aside with this reason; the position moved on.
    SetAside(String),
}

enum Fail {
    SetAside(String),
    Corrupt(Corrupt),
}

impl From<Corrupt> for Fail {
    fn from(c: Corrupt) -> Self {
        Fail::Corrupt(c)
    }
}

type Done = Result<(), Fail>;

fn refuse<T>(reason: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::SetAside(reason.into()))
}

/// The position the read model reflects (0: nothing applied).
pub fn position<R: Read + ?Sized>(tx: &Tx<'_, R>) -> Result<u64, Corrupt> {
    tx.get_u64(Cf::Meta, keys::POSITION)
}

/// Folds the event at `seq` (delivered on `subject`) into `tx`.
pub fn apply<R: Read + ?Sized>(
    tx: &mut Tx<'_, R>,
    seq: u64,
    subject: &str,
    envelope: &Result<Envelope, DecodeError>,
) -> Result<Outcome, Corrupt> {
    let at = position(tx)?;
    if seq <= at {
        return Ok(Outcome::Skipped);
    }
    if at == 0 {
        tx.put_i64(Cf::Meta, keys::FORMAT.to_vec(), i64::from(FORMAT));
    }
    tx.put_i64(Cf::Meta, keys::POSITION.to_vec(), seq as i64);
    let result = match envelope {
        Err(e) => Err(Fail::SetAside(format!("undecodable: {e}"))),
        Ok(env) => event(tx, seq, env),
    };
    match result {
        Ok(()) => Ok(Outcome::Applied),
        Err(Fail::Corrupt(c)) => Err(c),
        Err(Fail::SetAside(reason)) => {
            tx.put_rec(
                Cf::SetAside,
                seq.to_be_bytes().to_vec(),
                &SetAsideRecord {
                    seq,
                    subject: subject.to_string(),
                    reason: reason.clone(),
                },
            );
            tx.add(Cf::Meta, keys::SET_ASIDE_COUNT.to_vec(), 1)?;
            Ok(Outcome::SetAside(reason))
        }
    }
}

/// Everything one event writes besides its records: history lines and the watchers' change.
struct Effects {
    history: Vec<(Vec<u8>, String, Option<ScoreV1>)>,
    change: Option<ChangeRecord>,
}

impl Effects {
    fn none() -> Self {
        Self {
            history: Vec::new(),
            change: None,
        }
    }

    fn touch(&mut self, of: HistoryOf<'_>, summary: impl Into<String>) {
        self.history
            .push((keys::history_prefix(&of), summary.into(), None));
    }
}

fn change(
    env: &Envelope,
    seq: u64,
    kind: EntityKind,
    entity: String,
    status: &str,
) -> ChangeRecord {
    ChangeRecord {
        seq,
        event_type: env.event.type_name().to_string(),
        recorded_at: env.recorded_at,
        entity_kind: kind,
        entity,
        partition: env.partition.clone(),
        status: status.to_string(),
        need: None,
        offer: None,
        volunteer: None,
    }
}

fn event<R: Read + ?Sized>(tx: &mut Tx<'_, R>, seq: u64, env: &Envelope) -> Done {
    let fx = match &env.event {
        Event::IncidentDeclaredV1(_)
        | Event::PolicyChangedV1(_)
        | Event::IncidentStoodDownV1(_) => incident(tx, seq, env)?,
        Event::NeedReportedV1(_) | Event::NeedUpdatedV1(_) | Event::NeedWithdrawnV1(_) => {
            need(tx, seq, env)?
        }
        Event::OfferRegisteredV1(_) | Event::OfferUpdatedV1(_) | Event::OfferWithdrawnV1(_) => {
            offer(tx, seq, env)?
        }
        Event::VerificationRecordedV1(_) | Event::VerificationRevokedV1(_) => {
            verification(tx, seq, env)?
        }
        Event::AssignmentProposedV1(_) => proposed(tx, seq, env)?,
        Event::VolunteerRespondedV1(_)
        | Event::AssignmentCompletedV1(_)
        | Event::AssignmentExpiredV1(_)
        | Event::AssignmentCancelledV1(_) => assignment_moved(tx, seq, env)?,
        Event::RoundRecordedV1(_) | Event::RoundRecordedV2(_) | Event::RoundRecordedV3(_) => {
            let Some(r) = env.event.round_record() else {
                return refuse("not a round record".to_string());
            };
            // A round appended in parts is one round: counted at its first part.
            if r.part == 0 {
                tx.add(
                    Cf::Counters,
                    keys::counter_key(&env.incident, counters::ROUNDS),
                    1,
                )?;
            }
            let part = if r.parts > 1 {
                format!(" (part {} of {})", r.part + 1, r.parts)
            } else {
                String::new()
            };
            let mut fx = Effects::none();
            fx.touch(
                HistoryOf::Entity(&r.round),
                format!(
                    "round through {}{part}: {} proposed, {} expired, {} cancelled, total score {}",
                    r.through_seq, r.proposed, r.expired, r.cancelled, r.total_score
                ),
            );
            fx.change = Some(change(
                env,
                seq,
                EntityKind::Round,
                r.round.to_hex(),
                "recorded",
            ));
            fx
        }
        Event::TickV1(_) => Effects::none(),
    };
    // Log time only moves forward: the latest time any event of the incident carried.
    let lt = keys::counter_key(&env.incident, counters::LOG_TIME);
    if tx.get_i64(Cf::Counters, &lt)? < env.recorded_at.micros() {
        tx.put_i64(Cf::Counters, lt, env.recorded_at.micros());
    }
    for (prefix, summary, score) in fx.history {
        let mut key = prefix;
        key.extend_from_slice(&seq.to_be_bytes());
        tx.put_rec(
            Cf::History,
            key,
            &HistoryEntry {
                seq,
                event_type: env.event.type_name().to_string(),
                recorded_at: env.recorded_at,
                actor: env.actor.clone(),
                summary,
                score,
            },
        );
    }
    if let Some(c) = fx.change {
        tx.put_rec(Cf::Changes, keys::change_key(&env.incident, seq), &c);
    }
    Ok(())
}

fn incident<R: Read + ?Sized>(
    tx: &mut Tx<'_, R>,
    seq: u64,
    env: &Envelope,
) -> Result<Effects, Fail> {
    let key = env.incident.as_str().as_bytes().to_vec();
    let existing: Option<IncidentRecord> = tx.get_rec(Cf::Incidents, &key)?;
    let mut fx = Effects::none();
    let (rec, summary, status) = match (&env.event, existing) {
        (Event::IncidentDeclaredV1(_), Some(_)) => {
            return refuse(format!("incident {} was already declared", env.incident));
        }
        (Event::IncidentDeclaredV1(e), None) => (
            IncidentRecord {
                name: e.name.clone(),
                partitions: e.partitions.clone(),
                categories: e.categories.clone(),
                policy_version: 1,
                stood_down: false,
                declared_seq: seq,
                last_seq: seq,
            },
            format!("declared: {}", e.name),
            "declared",
        ),
        (_, None) => return refuse(format!("incident {} was never declared", env.incident)),
        (Event::PolicyChangedV1(e), Some(mut rec)) => {
            rec.policy_version = e.policy_version;
            rec.last_seq = seq;
            (
                rec,
                format!("policy version {}", e.policy_version),
                "active",
            )
        }
        (Event::IncidentStoodDownV1(e), Some(mut rec)) => {
            rec.stood_down = true;
            rec.last_seq = seq;
            (rec, format!("stood down: {}", e.reason), "stood_down")
        }
        (_, Some(_)) => return refuse("not an incident event"),
    };
    tx.put_rec(Cf::Incidents, key, &rec);
    fx.touch(HistoryOf::Incident(&env.incident), summary);
    fx.change = Some(change(
        env,
        seq,
        EntityKind::Incident,
        env.incident.to_string(),
        status,
    ));
    Ok(fx)
}

fn entry(n: &NeedRecord) -> NeedEntry {
    NeedEntry {
        partition: n.partition.clone(),
        category: n.spec.category,
        urgency: n.spec.urgency.get(),
        status: n.status,
        reported_at: n.reported_at,
    }
}

/// Takes a need's contributions (open index, counters) out, before it changes.
fn need_out<R: Read + ?Sized>(
    tx: &mut Tx<'_, R>,
    id: &EntityId,
    n: &NeedRecord,
) -> Result<(), Corrupt> {
    let e = entry(n);
    if n.status.is_open() {
        tx.delete(
            Cf::Index,
            keys::open_need_key(&n.incident, e.urgency, n.created_seq, id),
        );
        if n.spec.vulnerable {
            tx.add(
                Cf::Counters,
                keys::counter_key(&n.incident, counters::UNMET_SAFEGUARDED),
                -1,
            )?;
        }
    }
    for key in need_counter_keys(&n.incident, n.status, &e) {
        tx.add(Cf::Counters, key, -1)?;
    }
    Ok(())
}

/// Writes a need and puts its contributions (indexes, counters) in.
fn need_in<R: Read + ?Sized>(
    tx: &mut Tx<'_, R>,
    id: &EntityId,
    n: &NeedRecord,
) -> Result<(), Corrupt> {
    let e = entry(n);
    if n.status.is_open() {
        tx.put_rec(
            Cf::Index,
            keys::open_need_key(&n.incident, e.urgency, n.created_seq, id),
            &e,
        );
        if n.spec.vulnerable {
            tx.add(
                Cf::Counters,
                keys::counter_key(&n.incident, counters::UNMET_SAFEGUARDED),
                1,
            )?;
        }
    }
    for key in need_counter_keys(&n.incident, n.status, &e) {
        tx.add(Cf::Counters, key, 1)?;
    }
    tx.put_rec(
        Cf::Index,
        keys::need_key(&n.incident, n.created_seq, id),
        &e,
    );
    tx.put_rec(Cf::Needs, id.0.to_vec(), n);
    Ok(())
}

/// The record `id`, which must be `incident`'s, or the event is set aside: "need {id} was never
/// reported", or "... belongs to incident ...".
fn must<T: serde::de::DeserializeOwned + EntityRecord, R: Read + ?Sized>(
    tx: &Tx<'_, R>,
    incident: &IncidentId,
    id: &EntityId,
) -> Result<T, Fail> {
    match tx.get_rec::<T>(T::CF, &id.0)? {
        Some(r) if r.incident() == incident => Ok(r),
        Some(r) => refuse(format!(
            "{} {id} belongs to incident {}, not {incident}",
            T::NAME,
            r.incident()
        )),
        None => refuse(format!("{} {id} was never {}", T::NAME, T::CREATED)),
    }
}

fn need<R: Read + ?Sized>(tx: &mut Tx<'_, R>, seq: u64, env: &Envelope) -> Result<Effects, Fail> {
    let mut fx = Effects::none();
    let (id, rec, summary) = match &env.event {
        Event::NeedReportedV1(e) => {
            if tx.contains(Cf::Needs, &e.need.0)? {
                return refuse(format!("need {} was already reported", e.need));
            }
            let rec = NeedRecord {
                incident: env.incident.clone(),
                partition: env.partition.clone(),
                agency: env.actor.clone(),
                reference: e.reference.clone(),
                spec: e.spec.clone(),
                status: NeedStatus::Open,
                created_seq: seq,
                last_seq: seq,
                reported_at: env.recorded_at,
                first_matched_at: None,
                current_assignment: None,
                assignments: 0,
            };
            let summary = format!(
                "reported: {} urgency {} for {} in {}",
                counters::category_name(e.spec.category),
                e.spec.urgency.get(),
                e.spec.party_size,
                env.partition
            );
            (e.need, rec, summary)
        }
        Event::NeedUpdatedV1(e) => {
            let mut rec: NeedRecord = must(tx, &env.incident, &e.need)?;
            need_out(tx, &e.need, &rec)?;
            rec.spec = e.spec.clone();
            rec.last_seq = seq;
            let summary = format!(
                "updated: {} urgency {} for {}",
                counters::category_name(e.spec.category),
                e.spec.urgency.get(),
                e.spec.party_size
            );
            (e.need, rec, summary)
        }
        Event::NeedWithdrawnV1(e) => {
            let mut rec: NeedRecord = must(tx, &env.incident, &e.need)?;
            if rec.status == NeedStatus::Withdrawn {
                return refuse(format!("need {} was already withdrawn", e.need));
            }
            need_out(tx, &e.need, &rec)?;
            rec.status = NeedStatus::Withdrawn;
            rec.last_seq = seq;
            (e.need, rec, format!("withdrawn: {}", e.reason))
        }
        _ => return refuse("not a need event"),
    };
    need_in(tx, &id, &rec)?;
    fx.touch(HistoryOf::Entity(&id), summary);
    fx.change = Some(change(
        env,
        seq,
        EntityKind::Need,
        id.to_hex(),
        rec.status.name(),
    ));
    Ok(fx)
}

fn provider_id(p: &Provider) -> &PersonId {
    match p {
        Provider::Volunteer(id) | Provider::Organisation(id) => id,
    }
}

/// Moves a provider's live-offer and proposal counts, keeping the incident's counters of
/// available and never-offered providers in step.
fn provider_moved<R: Read + ?Sized>(
    tx: &mut Tx<'_, R>,
    incident: &IncidentId,
    provider: &PersonId,
    live_delta: i32,
    proposals_delta: u32,
) -> Result<(), Corrupt> {
    let key = keys::provider_key(incident, provider.as_str());
    let before: ProviderRecord = tx.get_rec(Cf::Providers, &key)?.unwrap_or_default();
    let after = ProviderRecord {
        live_offers: before.live_offers.saturating_add_signed(live_delta),
        proposals: before.proposals + proposals_delta,
    };
    let available = |p: &ProviderRecord| i64::from(p.live_offers > 0);
    let never = |p: &ProviderRecord| i64::from(p.live_offers > 0 && p.proposals == 0);
    tx.add(
        Cf::Counters,
        keys::counter_key(incident, counters::PROVIDERS_AVAILABLE),
        available(&after) - available(&before),
    )?;
    tx.add(
        Cf::Counters,
        keys::counter_key(incident, counters::PROVIDERS_NEVER_OFFERED),
        never(&after) - never(&before),
    )?;
    tx.put_rec(Cf::Providers, key, &after);
    Ok(())
}

fn offer<R: Read + ?Sized>(tx: &mut Tx<'_, R>, seq: u64, env: &Envelope) -> Result<Effects, Fail> {
    let mut fx = Effects::none();
    let inc = &env.incident;
    let (id, rec, summary) = match &env.event {
        Event::OfferRegisteredV1(e) => {
            if tx.contains(Cf::Offers, &e.offer.0)? {
                return refuse(format!("offer {} was already registered", e.offer));
            }
            provider_moved(tx, inc, provider_id(&e.provider), 1, 0)?;
            tx.add(Cf::Counters, keys::counter_key(inc, "offer.live"), 1)?;
            let rec = OfferRecord {
                incident: inc.clone(),
                partition: env.partition.clone(),
                agency: env.actor.clone(),
                reference: e.reference.clone(),
                provider: e.provider.clone(),
                spec: e.spec.clone(),
                withdrawn: false,
                created_seq: seq,
                last_seq: seq,
                active_assignments: 0,
                assignments: 0,
            };
            let summary = format!(
                "registered: capacity {} within {} m",
                e.spec.capacity, e.spec.travel_radius_m
            );
            (e.offer, rec, summary)
        }
        Event::OfferUpdatedV1(e) => {
            let mut rec: OfferRecord = must(tx, &env.incident, &e.offer)?;
            rec.spec = e.spec.clone();
            rec.last_seq = seq;
            let summary = format!(
                "updated: capacity {} within {} m",
                e.spec.capacity, e.spec.travel_radius_m
            );
            (e.offer, rec, summary)
        }
        Event::OfferWithdrawnV1(e) => {
            let mut rec: OfferRecord = must(tx, &env.incident, &e.offer)?;
            if rec.withdrawn {
                return refuse(format!("offer {} was already withdrawn", e.offer));
            }
            provider_moved(tx, inc, provider_id(&rec.provider), -1, 0)?;
            tx.add(Cf::Counters, keys::counter_key(inc, "offer.live"), -1)?;
            tx.add(Cf::Counters, keys::counter_key(inc, "offer.withdrawn"), 1)?;
            rec.withdrawn = true;
            rec.last_seq = seq;
            (e.offer, rec, format!("withdrawn: {}", e.reason))
        }
        _ => return refuse("not an offer event"),
    };
    let status = if rec.withdrawn { "withdrawn" } else { "live" };
    tx.put_rec(Cf::Offers, id.0.to_vec(), &rec);
    fx.touch(HistoryOf::Entity(&id), summary);
    fx.change = Some(change(env, seq, EntityKind::Offer, id.to_hex(), status));
    Ok(fx)
}

fn verification<R: Read + ?Sized>(
    tx: &mut Tx<'_, R>,
    seq: u64,
    env: &Envelope,
) -> Result<Effects, Fail> {
    let mut fx = Effects::none();
    let (id, rec, summary) = match &env.event {
        Event::VerificationRecordedV1(e) => {
            if tx.contains(Cf::Verifications, &e.verification.0)? {
                return refuse(format!(
                    "verification {} was already recorded",
                    e.verification
                ));
            }
            tx.put(
                Cf::Index,
                keys::verification_of_person_key(&e.person, &e.verification),
                Vec::new(),
            );
            let rec = VerificationRecord {
                incident: env.incident.clone(),
                person: e.person.clone(),
                kind: e.kind.clone(),
                issuer: e.issuer.clone(),
                issued_at: e.issued_at,
                expires_at: e.expires_at,
                revoked: false,
                revoked_reason: String::new(),
                last_seq: seq,
            };
            (
                e.verification,
                rec,
                format!("recorded: {:?} by {}", e.kind, e.issuer),
            )
        }
        Event::VerificationRevokedV1(e) => {
            let mut rec: VerificationRecord = must(tx, &env.incident, &e.verification)?;
            if rec.revoked {
                return refuse(format!(
                    "verification {} was already revoked",
                    e.verification
                ));
            }
            rec.revoked = true;
            rec.revoked_reason = e.reason.clone();
            rec.last_seq = seq;
            (e.verification, rec, format!("revoked: {}", e.reason))
        }
        _ => return refuse("not a verification event"),
    };
    let status = if rec.revoked { "revoked" } else { "valid" };
    tx.put_rec(Cf::Verifications, id.0.to_vec(), &rec);
    fx.touch(HistoryOf::Entity(&id), summary);
    fx.change = Some(change(
        env,
        seq,
        EntityKind::Verification,
        id.to_hex(),
        status,
    ));
    Ok(fx)
}

fn ms_between(from: Timestamp, to: Timestamp) -> u64 {
    (to.micros().saturating_sub(from.micros()) / 1000).max(0) as u64
}

fn assignment_status_moved<R: Read + ?Sized>(
    tx: &mut Tx<'_, R>,
    incident: &IncidentId,
    from: Option<AssignmentStatus>,
    to: AssignmentStatus,
) -> Result<(), Corrupt> {
    if let Some(from) = from {
        tx.add(Cf::Counters, assignment_counter_key(incident, from), -1)?;
    }
    tx.add(Cf::Counters, assignment_counter_key(incident, to), 1)
}

fn proposed<R: Read + ?Sized>(
    tx: &mut Tx<'_, R>,
    seq: u64,
    env: &Envelope,
) -> Result<Effects, Fail> {
    let Event::AssignmentProposedV1(e) = &env.event else {
        return refuse("not a proposal");
    };
    if tx.contains(Cf::Assignments, &e.assignment.0)? {
        return refuse(format!("assignment {} was already proposed", e.assignment));
    }
    let mut need: NeedRecord = must(tx, &env.incident, &e.need)?;
    let mut offer: OfferRecord = must(tx, &env.incident, &e.offer)?;
    // The matcher decides a round on the log as of its cut: a need withdrawn after the cut and
    // before the round's events were appended is still proposed. The assignment stands until
    // the engine's next round cancels it; the need stays withdrawn and does not follow it.
    let withdrawn = need.status == NeedStatus::Withdrawn;
    if !withdrawn && (!need.status.is_open() || need.status == NeedStatus::Proposed) {
        return refuse(format!(
            "need {} is {}, not open for a proposal",
            e.need,
            need.status.name()
        ));
    }
    let inc = &env.incident;
    need_out(tx, &e.need, &need)?;
    if !withdrawn {
        need.status = NeedStatus::Proposed;
        need.current_assignment = Some(e.assignment);
    }
    need.assignments += 1;
    need.last_seq = seq;
    if !withdrawn && need.first_matched_at.is_none() {
        need.first_matched_at = Some(env.recorded_at);
        let b = counters::bucket(ms_between(need.reported_at, env.recorded_at));
        tx.add(
            Cf::Counters,
            keys::counter_key(inc, &counters::ttm_counter(need.spec.urgency.get(), b)),
            1,
        )?;
    }
    need_in(tx, &e.need, &need)?;
    offer.active_assignments += 1;
    offer.assignments += 1;
    offer.last_seq = seq;
    provider_moved(tx, inc, provider_id(&offer.provider), 0, 1)?;
    tx.put_rec(Cf::Offers, e.offer.0.to_vec(), &offer);
    let rec = AssignmentRecord {
        incident: inc.clone(),
        partition: env.partition.clone(),
        need: e.need,
        offer: e.offer,
        volunteer: e.volunteer.clone(),
        status: AssignmentStatus::Proposed,
        reason: String::new(),
        proposed_seq: seq,
        last_seq: seq,
        proposed_at: env.recorded_at,
        round_through_seq: e.round_through_seq,
        policy_version: e.policy_version,
        distance_m: e.distance_m,
        score: e.score.clone(),
    };
    for k in keys::assignment_keys(inc, &e.need, &e.volunteer, seq, &e.assignment) {
        tx.put(Cf::Index, k, Vec::new());
    }
    assignment_status_moved(tx, inc, None, rec.status)?;
    tx.put_rec(Cf::Assignments, e.assignment.0.to_vec(), &rec);
    let mut fx = Effects::none();
    let summary = format!(
        "proposed {} for need {} through offer {} ({} m, round through {}, policy v{})",
        e.volunteer, e.need, e.offer, e.distance_m, e.round_through_seq, e.policy_version
    );
    fx.history.push((
        keys::history_prefix(&HistoryOf::Entity(&e.assignment)),
        summary,
        Some(e.score.clone()),
    ));
    fx.touch(
        HistoryOf::Entity(&e.need),
        format!("assignment {} proposed to {}", e.assignment, e.volunteer),
    );
    fx.touch(
        HistoryOf::Entity(&e.offer),
        format!("assignment {} proposed for need {}", e.assignment, e.need),
    );
    let mut c = change(
        env,
        seq,
        EntityKind::Assignment,
        e.assignment.to_hex(),
        rec.status.name(),
    );
    c.need = Some(e.need);
    c.offer = Some(e.offer);
    c.volunteer = Some(e.volunteer.clone());
    fx.change = Some(c);
    Ok(fx)
}

/// A response, completion, expiry or cancellation: the assignment, its need and its offer move.
fn assignment_moved<R: Read + ?Sized>(
    tx: &mut Tx<'_, R>,
    seq: u64,
    env: &Envelope,
) -> Result<Effects, Fail> {
    use AssignmentStatus as S;
    let (id, to, reason, need_to) = match &env.event {
        Event::VolunteerRespondedV1(e) => match e.response {
            Response::Accept => (
                e.assignment,
                S::Accepted,
                e.reason.clone(),
                NeedStatus::Accepted,
            ),
            Response::Decline => (
                e.assignment,
                S::Declined,
                e.reason.clone(),
                NeedStatus::Open,
            ),
        },
        Event::AssignmentCompletedV1(e) => (
            e.assignment,
            S::Completed,
            String::new(),
            NeedStatus::Completed,
        ),
        Event::AssignmentExpiredV1(e) => {
            (e.assignment, S::Expired, String::new(), NeedStatus::Open)
        }
        Event::AssignmentCancelledV1(e) => (
            e.assignment,
            S::Cancelled(e.reason),
            format!("{:?}", e.reason),
            if e.reason == CancelReason::NeedWithdrawn {
                NeedStatus::Withdrawn
            } else {
                NeedStatus::Open
            },
        ),
        _ => return refuse("not an assignment event"),
    };
    let mut a: AssignmentRecord = must(tx, &env.incident, &id)?;
    // By the rule every reader of the log applies (`muster_schema::assignment`): a round's
    // expiry or cancellation that an answer or a completion overtook is void, anything else
    // out of turn is set aside.
    let stage = match a.status {
        S::Proposed => Stage::Proposed,
        S::Accepted => Stage::Accepted,
        _ => Stage::Ended,
    };
    match stage.on(&env.event) {
        Move::To(_) => {}
        Move::Void => {
            let mut fx = Effects::none();
            fx.touch(
                HistoryOf::Entity(&id),
                format!("{} void: already {}", to.name(), a.status.name()),
            );
            return Ok(fx);
        }
        Move::Invalid => {
            return refuse(format!(
                "assignment {id} is {}; it cannot become {}",
                a.status.name(),
                to.name()
            ));
        }
    }
    let mut need: NeedRecord = must(tx, &env.incident, &a.need)?;
    let mut offer: OfferRecord = must(tx, &env.incident, &a.offer)?;
    let inc = a.incident.clone();
    assignment_status_moved(tx, &inc, Some(a.status), to)?;
    a.status = to;
    a.reason = reason;
    a.last_seq = seq;
    tx.put_rec(Cf::Assignments, id.0.to_vec(), &a);
    // The need follows only while this is its current assignment.
    if need.current_assignment == Some(id) {
        need_out(tx, &a.need, &need)?;
        if need.status != NeedStatus::Withdrawn {
            need.status = need_to;
        }
        if !to.is_active() {
            need.current_assignment = None;
        }
        need.last_seq = seq;
        need_in(tx, &a.need, &need)?;
    }
    if !to.is_active() {
        offer.active_assignments = offer.active_assignments.saturating_sub(1);
        offer.last_seq = seq;
        tx.put_rec(Cf::Offers, a.offer.0.to_vec(), &offer);
    }
    let mut fx = Effects::none();
    fx.touch(HistoryOf::Entity(&id), to.name());
    fx.touch(
        HistoryOf::Entity(&a.need),
        format!("assignment {id} {}", to.name()),
    );
    fx.touch(
        HistoryOf::Entity(&a.offer),
        format!("assignment {id} {}", to.name()),
    );
    let mut c = change(env, seq, EntityKind::Assignment, id.to_hex(), to.name());
    c.need = Some(a.need);
    c.offer = Some(a.offer);
    c.volunteer = Some(a.volunteer.clone());
    fx.change = Some(c);
    Ok(fx)
}

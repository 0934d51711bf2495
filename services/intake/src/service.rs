//! The `muster.v1.Intake` gRPC service: one RPC per command, plus the bulk RPC.
//!
//! Every RPC takes the same path: read the actor from metadata, check the request into a
//! [`Draft`], resolve it against the log, append it through the group-commit appender, and map
//! any refusal to the right status. A refusal caused by this very request having been stored
//! before is answered with the original result, marked `duplicate`.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use muster_log::{AppendError, Appender, LogReader};
use muster_proto::v1 as pb;
use muster_proto::v1::intake_server::Intake;
use muster_schema::{AgencyId, IncidentId, Timestamp, Violation, Violations};
use tonic::{Request, Response, Status};

use crate::commands::{self, Actor, Draft, Plan, Resolved, Target};
use crate::directory::Directory;
use crate::error::IntakeError;

/// The metadata entry naming the acting agency (unauthenticated until authentication lands).
pub const AGENCY_HEADER: &str = "x-muster-agency";
/// The optional metadata entry carrying the caller's correlation id.
pub const CORRELATION_HEADER: &str = "x-muster-correlation-id";
/// The most commands one bulk request may carry (one atomic batch).
pub const MAX_BULK: usize = muster_log::appender::MAX_BATCH;

#[derive(Debug, Clone)]
pub struct IntakeService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    appender: Appender,
    reader: LogReader,
    directory: Directory,
}

impl IntakeService {
    pub fn new(appender: Appender, reader: LogReader, directory: Directory) -> Self {
        Self {
            inner: Arc::new(Inner {
                appender,
                reader,
                directory,
            }),
        }
    }
}

/// Items of a bulk request checked or encoded between yields to the runtime. A bulk of 1,000
/// costs intake ~10 ms of CPU (BENCHMARKS.md, intake (d)), most of it checking and encoding
/// the items: in one poll that would hold a runtime worker, and every request queued on it
/// (queries, under `muster up`), that long.
const ITEMS_PER_POLL: usize = 64;

/// Yields to the runtime before every [`ITEMS_PER_POLL`]-th item but the first.
async fn yield_between(item: usize) {
    if item > 0 && item.is_multiple_of(ITEMS_PER_POLL) {
        tokio::task::yield_now().await;
    }
}

fn now() -> Timestamp {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default();
    Timestamp(micros)
}

/// An idempotency key: 1 to 128 printable ASCII characters without spaces.
fn idempotency_key(field: &str, key: &str) -> Result<(), Violation> {
    if key.is_empty() {
        return Err(Violation::new(
            field,
            "is required: choose a unique key per request and reuse it on retries",
        ));
    }
    if key.len() > 128 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Violation::new(
            field,
            "must be 1 to 128 printable ASCII characters without spaces",
        ));
    }
    Ok(())
}

fn actor<T>(request: &Request<T>) -> Result<Actor, IntakeError> {
    let md = request.metadata();
    let field = format!("metadata.{AGENCY_HEADER}");
    let agency = match md.get(AGENCY_HEADER).map(|v| v.to_str()) {
        None => return Err(Violation::new(field, "is required: the acting agency's id").into()),
        Some(Err(_)) => return Err(Violation::new(field, "must be ASCII").into()),
        Some(Ok(s)) => AgencyId::parse(&field, s)?,
    };
    let correlation_id = match md.get(CORRELATION_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(s)) if !s.is_empty() && s.len() <= 128 => Some(s.to_string()),
        Some(_) => {
            return Err(Violation::new(
                format!("metadata.{CORRELATION_HEADER}"),
                "must be 1 to 128 ASCII characters",
            )
            .into());
        }
    };
    Ok(Actor {
        agency,
        correlation_id,
    })
}

fn reply(draft: &Draft, sequence: u64, duplicate: bool) -> pb::AppendReply {
    pb::AppendReply {
        sequence,
        duplicate,
        entity_id: draft.entity_id(),
    }
}

impl Inner {
    /// Runs one command: `build` checks the request (given the actor) into a draft.
    async fn execute<T>(
        &self,
        request: Request<T>,
        key: impl Fn(&T) -> &str,
        build: impl FnOnce(&T, &Actor) -> Result<Draft, IntakeError>,
    ) -> Result<Response<pb::AppendReply>, Status> {
        let actor = actor(&request)?;
        let body = request.get_ref();
        let key = key(body);
        let mut vs = Violations::new();
        vs.check(idempotency_key("idempotency_key", key));
        let draft = match build(body, &actor) {
            Ok(d) if vs.is_empty() => d,
            Ok(_) => return Err(IntakeError::Invalid(vs).into()),
            Err(IntakeError::Invalid(more)) => {
                vs.0.extend(more.0);
                return Err(IntakeError::Invalid(vs).into());
            }
            Err(e) => return Err(e.into()),
        };
        let msg_id = format!("{}:{key}", actor.agency);
        let plan = match commands::resolve(draft, &msg_id, &self.directory, &self.reader).await? {
            Resolved::Plan(p) => *p,
            Resolved::Duplicate(original) => {
                return Ok(Response::new(pb::AppendReply {
                    sequence: original.seq,
                    duplicate: true,
                    entity_id: entity_of(&original.subject),
                }));
            }
        };
        let out = plan.outgoing(&actor, key, &msg_id, now());
        let result = self.appender.append(vec![out]).await;
        if matches!(
            plan.draft.target,
            Target::NewIncident | Target::Incident { .. }
        ) {
            self.directory.invalidate(&plan.draft.incident);
        }
        match result {
            Ok(a) => {
                if a.duplicate {
                    let stored = commands::stored_at(&self.reader, a.first_seq).await?;
                    commands::same_request(&plan.draft, &stored)?;
                }
                Ok(Response::new(reply(&plan.draft, a.first_seq, a.duplicate)))
            }
            Err(AppendError::WrongLastSequence(_)) => {
                let original =
                    commands::explain_refusal(&plan.draft, &msg_id, &self.reader).await?;
                Ok(Response::new(reply(&plan.draft, original.seq, true)))
            }
            Err(e) => Err(append_failure(e).into()),
        }
    }

    async fn bulk(
        &self,
        request: Request<pb::SubmitBulkRequest>,
    ) -> Result<Response<pb::SubmitBulkReply>, Status> {
        let actor = actor(&request)?;
        let r = request.get_ref();
        let mut vs = Violations::new();
        vs.check(idempotency_key("idempotency_key", &r.idempotency_key));
        let incident = vs.check(IncidentId::parse("incident", &r.incident));
        if r.items.is_empty() || r.items.len() > MAX_BULK {
            vs.push(Violation::new(
                "items",
                format!("must hold 1 to {MAX_BULK} commands"),
            ));
        }
        let Some(incident) = incident.filter(|_| vs.is_empty()) else {
            return Err(IntakeError::Invalid(vs).into());
        };
        let base = format!("{}:{}", actor.agency, r.idempotency_key);
        let msg_ids: Vec<String> = (0..r.items.len()).map(|i| format!("{base}#{i}")).collect();

        // Check every item; report every problem of every item at once.
        let mut errors = Vec::new();
        let mut drafts = Vec::with_capacity(r.items.len());
        // Every item is of this request's incident, so the entity alone tells two apart.
        let mut first_of = HashMap::with_capacity(r.items.len());
        for (i, item) in r.items.iter().enumerate() {
            yield_between(i).await;
            match commands::bulk_item(item, &actor.agency, &incident) {
                Ok(d) => {
                    if let Some(j) = first_of.insert(d.entity(), i) {
                        errors.push(IntakeError::Invalid(
                            Violation::new("command", format!("targets the same entity as items[{j}]: one command per entity per bulk request")).into(),
                        ).in_item(i));
                    }
                    drafts.push(d);
                }
                Err(e) => errors.push(e.in_item(i)),
            }
        }
        if !errors.is_empty() {
            return Err(IntakeError::many_to_status(&errors));
        }

        // Resolve against the log, all items concurrently.
        let resolved = futures::future::join_all(
            drafts
                .into_iter()
                .zip(&msg_ids)
                .map(|(d, id)| commands::resolve(d, id, &self.directory, &self.reader)),
        )
        .await;
        let mut plans: Vec<Plan> = Vec::with_capacity(resolved.len());
        let mut seen_before = false;
        for (i, res) in resolved.into_iter().enumerate() {
            match res {
                Ok(Resolved::Plan(p)) => plans.push(*p),
                Ok(Resolved::Duplicate(_)) => seen_before = true,
                Err(e) => errors.push(e.in_item(i)),
            }
        }
        if seen_before {
            return self
                .bulk_duplicate(&r.items, &incident, &actor, &msg_ids)
                .await;
        }
        if !errors.is_empty() {
            return Err(IntakeError::many_to_status(&errors));
        }

        let at = now();
        let mut outs = Vec::with_capacity(plans.len());
        for (i, (p, id)) in plans.iter().zip(&msg_ids).enumerate() {
            yield_between(i).await;
            outs.push(p.outgoing(&actor, &r.idempotency_key, id, at));
        }
        match self.appender.append(outs).await {
            Ok(a) => {
                if a.duplicate {
                    self.stored_before(&plans, &msg_ids, a.first_seq).await?;
                }
                Ok(Response::new(pb::SubmitBulkReply {
                    duplicate: a.duplicate,
                    items: plans
                        .iter()
                        .enumerate()
                        .map(|(i, p)| reply(&p.draft, a.first_seq + i as u64, a.duplicate))
                        .collect(),
                }))
            }
            Err(e @ (AppendError::DuplicateRequest | AppendError::WrongLastSequence(_))) => {
                if let Some(found) = self.find_bulk(&plans, &msg_ids).await? {
                    return Ok(Response::new(found));
                }
                if e == AppendError::DuplicateRequest {
                    // The log holds these message ids, but not on this request's first entity.
                    return Err(commands::key_used_before("another bulk request".into()).into());
                }
                Err(IntakeError::many_to_status(&self.diagnose(&plans).await))
            }
            Err(e) => Err(append_failure(e).into()),
        }
    }

    /// A bulk request some of whose items are already stored under this key: answer with the
    /// original sequences.
    async fn bulk_duplicate(
        &self,
        items: &[pb::BulkItem],
        incident: &IncidentId,
        actor: &Actor,
        msg_ids: &[String],
    ) -> Result<Response<pb::SubmitBulkReply>, Status> {
        let drafts: Result<Vec<Draft>, _> = items
            .iter()
            .map(|it| commands::bulk_item(it, &actor.agency, incident))
            .collect();
        let plans: Vec<Plan> = drafts?
            .into_iter()
            .map(|draft| Plan {
                draft,
                partition: muster_schema::PartitionCode::incident_wide(),
                expect: muster_log::Expect::Anything,
            })
            .collect();
        match self.find_bulk(&plans, msg_ids).await? {
            Some(found) => Ok(Response::new(found)),
            None => Err(IntakeError::Internal(
                "part of a bulk request is stored but not all of it".into(),
            )
            .into()),
        }
    }

    /// Finds a bulk request stored before by its first item's message id; a stored batch is
    /// contiguous, so the items' sequences follow.
    async fn find_bulk(
        &self,
        plans: &[Plan],
        msg_ids: &[String],
    ) -> Result<Option<pb::SubmitBulkReply>, IntakeError> {
        let (Some(first), Some(first_id)) = (plans.first(), msg_ids.first()) else {
            return Ok(None);
        };
        let Some(original) = self
            .reader
            .find_msg_id(&first.draft.filter(), first_id)
            .await?
        else {
            return Ok(None);
        };
        self.stored_before(plans, msg_ids, original.seq).await?;
        Ok(Some(pb::SubmitBulkReply {
            duplicate: true,
            items: plans
                .iter()
                .enumerate()
                .map(|(i, p)| reply(&p.draft, original.seq + i as u64, true))
                .collect(),
        }))
    }

    /// Checks that the messages from `first_seq` on are this bulk request's items, stored
    /// before under its key (a stored batch is contiguous); otherwise the key was used for
    /// another bulk request.
    async fn stored_before(
        &self,
        plans: &[Plan],
        msg_ids: &[String],
        first_seq: u64,
    ) -> Result<(), IntakeError> {
        let stored: Vec<_> = futures::stream::iter(0..plans.len() as u64)
            .map(|i| self.reader.at(first_seq + i))
            .buffered(64)
            .try_collect()
            .await?;
        for ((p, id), m) in plans.iter().zip(msg_ids).zip(stored) {
            match m {
                Some(m) if m.msg_id.as_deref() == Some(id.as_str()) => {
                    commands::same_request(&p.draft, &m)?
                }
                _ => {
                    return Err(commands::key_used_before(format!(
                        "a bulk request of other items, from sequence {first_seq}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Which items made the log refuse a bulk request.
    async fn diagnose(&self, plans: &[Plan]) -> Vec<IntakeError> {
        let checks = plans.iter().map(|p| async move {
            let last = self.reader.last(&p.draft.filter()).await.ok().flatten();
            let current = last.as_ref().map_or(0, |m| m.seq);
            match p.expect {
                muster_log::Expect::Nothing { .. } if last.is_some() => {
                    Some(IntakeError::AlreadyExists {
                        subject: p.draft.field().into(),
                        description: format!(
                            "{} was already created by another request (at sequence {current})",
                            p.draft.label()
                        ),
                    })
                }
                muster_log::Expect::LastOnSubject(v) if v != current => {
                    Some(IntakeError::Conflict {
                        subject: "expected_version".into(),
                        description: format!(
                            "{} is at version {current}, not {v}",
                            p.draft.label()
                        ),
                    })
                }
                _ => None,
            }
        });
        let found: Vec<IntakeError> = futures::future::join_all(checks)
            .await
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| e.map(|e| e.in_item(i)))
            .collect();
        if found.is_empty() {
            vec![IntakeError::Conflict {
                subject: "items".into(),
                description: "an item changed concurrently; retry with a new idempotency key"
                    .into(),
            }]
        } else {
            found
        }
    }
}

/// The entity id at the end of an event subject.
fn entity_of(subject: &str) -> String {
    subject.rsplit('.').next().unwrap_or_default().to_string()
}

fn append_failure(e: AppendError) -> IntakeError {
    match e {
        AppendError::Unavailable(s) => IntakeError::Unavailable(s),
        AppendError::Closed => IntakeError::Unavailable("intake is shutting down".into()),
        other => IntakeError::Internal(other.to_string()),
    }
}

fn key_of<T: HasKey>(r: &T) -> &str {
    r.key()
}

trait HasKey {
    fn key(&self) -> &str;
}

macro_rules! has_key {
    ($($t:ty),+) => { $(impl HasKey for $t { fn key(&self) -> &str { &self.idempotency_key } })+ };
}
has_key!(
    pb::DeclareIncidentRequest,
    pb::ChangePolicyRequest,
    pb::StandDownIncidentRequest,
    pb::ReportNeedRequest,
    pb::UpdateNeedRequest,
    pb::WithdrawNeedRequest,
    pb::RegisterOfferRequest,
    pb::UpdateOfferRequest,
    pb::WithdrawOfferRequest,
    pb::RecordVerificationRequest,
    pb::RevokeVerificationRequest,
    pb::RespondToAssignmentRequest,
    pb::CompleteAssignmentRequest
);

type Reply = Result<Response<pb::AppendReply>, Status>;

#[tonic::async_trait]
impl Intake for IntakeService {
    async fn declare_incident(&self, r: Request<pb::DeclareIncidentRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, _| commands::declare_incident(b))
            .await
    }
    async fn change_policy(&self, r: Request<pb::ChangePolicyRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, _| commands::change_policy(b))
            .await
    }
    async fn stand_down_incident(&self, r: Request<pb::StandDownIncidentRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, _| commands::stand_down(b))
            .await
    }
    async fn report_need(&self, r: Request<pb::ReportNeedRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, a| commands::report_need(b, &a.agency, None))
            .await
    }
    async fn update_need(&self, r: Request<pb::UpdateNeedRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, _| commands::update_need(b, None))
            .await
    }
    async fn withdraw_need(&self, r: Request<pb::WithdrawNeedRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, _| commands::withdraw_need(b, None))
            .await
    }
    async fn register_offer(&self, r: Request<pb::RegisterOfferRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, a| {
                commands::register_offer(b, &a.agency, None)
            })
            .await
    }
    async fn update_offer(&self, r: Request<pb::UpdateOfferRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, _| commands::update_offer(b, None))
            .await
    }
    async fn withdraw_offer(&self, r: Request<pb::WithdrawOfferRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, _| commands::withdraw_offer(b, None))
            .await
    }
    async fn record_verification(&self, r: Request<pb::RecordVerificationRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, a| {
                commands::record_verification(b, &a.agency, None)
            })
            .await
    }
    async fn revoke_verification(&self, r: Request<pb::RevokeVerificationRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, _| commands::revoke_verification(b, None))
            .await
    }
    async fn respond_to_assignment(&self, r: Request<pb::RespondToAssignmentRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, _| commands::respond(b, None))
            .await
    }
    async fn complete_assignment(&self, r: Request<pb::CompleteAssignmentRequest>) -> Reply {
        self.inner
            .execute(r, key_of, |b, _| commands::complete(b, None))
            .await
    }
    async fn submit_bulk(
        &self,
        r: Request<pb::SubmitBulkRequest>,
    ) -> Result<Response<pb::SubmitBulkReply>, Status> {
        self.inner.bulk(r).await
    }
}

//! `muster.v1.Query`: the read models over gRPC.
//!
//! Every handler first waits until the projection has applied the request's `min_sequence`
//! (within the request's deadline), then reads RocksDB on a blocking thread. Lists page by key:
//! a page token is the last key returned (hex), and the next page starts just after it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use muster_proto::v1 as pb;
use muster_proto::v1::query_server::Query;
use muster_readmodel::counters::{self, percentile_ms};
use muster_readmodel::keys::{self, HistoryOf};
use muster_readmodel::records::{
    AssignmentRecord, ChangeRecord, HistoryEntry, IncidentRecord, NeedEntry, NeedRecord,
    NeedStatus, OfferRecord, SetAsideRecord,
};
use muster_readmodel::{Cf, Corrupt};
use muster_schema::ids::EntityKind;
use muster_schema::{
    AgencyId, EntityId, IncidentId, PartitionCode, PersonId, Reference, Violation,
};
use tokio::sync::{mpsc, watch};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::convert;
use crate::db::Db;

/// How long a query waits for `min_sequence` when the client set no deadline.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1_000;
/// Index entries examined for one page at most: a page with a narrow filter may come back
/// short, with a token to go on from.
pub const MAX_SCAN: usize = 20_000;

/// The query service over one database.
#[derive(Debug, Clone)]
pub struct QueryService {
    db: Arc<Db>,
    applied: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
}

fn invalid(v: Violation) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {}: {}", v.field, v.rule),
        ErrorDetails::with_bad_request_violation(v.field, v.rule),
    )
}

fn internal(e: Corrupt) -> Status {
    tracing::error!(error = %e, "read model unreadable");
    Status::internal(e.to_string())
}

fn not_found(what: &str, id: &str) -> Status {
    Status::not_found(format!("{what} {id} not found"))
}

/// The deadline the client set (`grpc-timeout`), if any.
fn deadline<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn agency<T>(req: &Request<T>) -> Result<AgencyId, Status> {
    let v = req
        .metadata()
        .get("x-muster-agency")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if v.is_empty() {
        return Err(invalid(Violation::new(
            "x-muster-agency",
            "is required to name an entity by its reference",
        )));
    }
    AgencyId::parse("x-muster-agency", v).map_err(invalid)
}

fn page_size(field: &str, v: u32) -> Result<usize, Status> {
    match v as usize {
        0 => Ok(DEFAULT_PAGE),
        n if n > MAX_PAGE => Err(invalid(Violation::new(
            field,
            format!("must be at most {MAX_PAGE}"),
        ))),
        n => Ok(n),
    }
}

/// Where a page starts: just after the token's key, which must belong to this listing.
fn page_start(prefix: &[u8], token: &str) -> Result<Vec<u8>, Status> {
    if token.is_empty() {
        return Ok(prefix.to_vec());
    }
    let bad = || {
        invalid(Violation::new(
            "page_token",
            "is not a token of this listing",
        ))
    };
    let mut key = hex::decode(token).map_err(|_| bad())?;
    if !key.starts_with(prefix) {
        return Err(bad());
    }
    key.push(0);
    Ok(key)
}

/// One page of an index: the keys of matching entries, and the token to go on from.
fn page(
    db: &Db,
    cf: Cf,
    prefix: &[u8],
    token: &str,
    size: usize,
    mut keep: impl FnMut(&[u8], &[u8]) -> bool,
) -> Result<(Vec<Vec<u8>>, String), Status> {
    let from = page_start(prefix, token)?;
    let mut keys = Vec::new();
    let mut scanned = 0;
    let mut last = None;
    let mut more = false;
    db.scan(cf, prefix, &from, |k, v| {
        if keys.len() == size || scanned == MAX_SCAN {
            more = true;
            return false;
        }
        scanned += 1;
        last = Some(k.to_vec());
        if keep(k, v) {
            keys.push(k.to_vec());
        }
        true
    })
    .map_err(internal)?;
    let next = match (more, last) {
        (true, Some(k)) => hex::encode(k),
        _ => String::new(),
    };
    Ok((keys, next))
}

fn record<T: serde::de::DeserializeOwned>(
    db: &Db,
    cf: Cf,
    id: &EntityId,
) -> Result<Option<T>, Status> {
    db.record(cf, &id.0).map_err(internal)
}

/// The records the index keys `found` end with, as wire messages, in the keys' order (one
/// batched lookup); a key whose record is gone is skipped.
fn records_of<T: serde::de::DeserializeOwned, P>(
    db: &Db,
    cf: Cf,
    found: &[Vec<u8>],
    wire: impl Fn(&EntityId, &T) -> P,
) -> Result<Vec<P>, Status> {
    let ids: Vec<EntityId> = found.iter().filter_map(|k| keys::trailing_id(k)).collect();
    let keys: Vec<&[u8]> = ids.iter().map(|id| id.0.as_slice()).collect();
    let records = db.records::<T>(cf, &keys).map_err(internal)?;
    Ok(ids
        .iter()
        .zip(records)
        .filter_map(|(id, r)| r.map(|r| wire(id, &r)))
        .collect())
}

impl QueryService {
    pub fn new(db: Arc<Db>, applied: watch::Receiver<u64>, closing: watch::Receiver<bool>) -> Self {
        Self {
            db,
            applied,
            closing,
        }
    }

    /// Waits until `min_sequence` has been applied, within the request's deadline.
    async fn ready<T>(&self, req: &Request<T>, min_sequence: u64) -> Result<(), Status> {
        let at = *self.applied.borrow();
        if at >= min_sequence {
            return Ok(());
        }
        if self.db.is_read_only() {
            return Err(Status::failed_precondition(format!(
                "min_sequence {min_sequence}: this read-only snapshot stops at sequence {at}"
            )));
        }
        // Answer a little before the client's own deadline, so it hears why.
        let wait = deadline(req).map_or(DEFAULT_WAIT, |d| {
            d - (d / 10).min(Duration::from_millis(20))
        });
        let mut applied = self.applied.clone();
        match tokio::time::timeout(wait, applied.wait_for(|p| *p >= min_sequence)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Status::unavailable("the projection has stopped")),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "min_sequence {min_sequence} not applied within {wait:?}: the projection is at sequence {}",
                *self.applied.borrow()
            ))),
        }
    }

    /// Runs a point read (one key) right here on the async worker: a RocksDB get from the
    /// memtable or block cache takes microseconds, less than handing it to a blocking thread
    /// (a futex wake and two context switches, a third of a get-need's CPU in a profile).
    /// Reads that scan go through [`QueryService::read`].
    fn point<R>(&self, f: impl FnOnce(&Db) -> Result<R, Status>) -> Result<R, Status> {
        f(&self.db)
    }

    /// Runs a read on a blocking thread.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<R, Status> + Send + 'static,
    ) -> Result<R, Status> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| Status::internal(format!("query task failed: {e}")))?
    }

    /// The id a get names: `id`, or the calling agency's `reference` for `kind`.
    fn entity_id(
        req: &Request<pb::GetEntityRequest>,
        kind: Option<EntityKind>,
    ) -> Result<EntityId, Status> {
        let r = req.get_ref();
        match (r.id.is_empty(), r.reference.is_empty(), kind) {
            (false, _, _) => EntityId::parse("id", &r.id).map_err(invalid),
            (true, false, Some(kind)) => {
                let reference = Reference::parse("reference", &r.reference).map_err(invalid)?;
                if r.incident.is_empty() {
                    return Err(invalid(Violation::new(
                        "incident",
                        "is required with reference (a reference names an entity within one incident)",
                    )));
                }
                let incident = IncidentId::parse("incident", &r.incident).map_err(invalid)?;
                Ok(EntityId::derive(kind, &incident, &agency(req)?, &reference))
            }
            (true, false, None) => Err(invalid(Violation::new(
                "reference",
                "names needs and offers only; give the id",
            ))),
            (true, true, _) => Err(invalid(Violation::new("id", "is required (or reference)"))),
        }
    }
}

type ChangeStream = Pin<Box<dyn futures::Stream<Item = Result<pb::Change, Status>> + Send>>;

#[tonic::async_trait]
impl Query for QueryService {
    async fn get_need(
        &self,
        req: Request<pb::GetEntityRequest>,
    ) -> Result<Response<pb::Need>, Status> {
        let id = Self::entity_id(&req, Some(EntityKind::Need))?;
        self.ready(&req, req.get_ref().min_sequence).await?;
        self.point(|db| match record::<NeedRecord>(db, Cf::Needs, &id)? {
            Some(n) => Ok(Response::new(convert::need(&id, &n))),
            None => Err(not_found("need", &id.to_hex())),
        })
    }

    async fn get_offer(
        &self,
        req: Request<pb::GetEntityRequest>,
    ) -> Result<Response<pb::Offer>, Status> {
        let id = Self::entity_id(&req, Some(EntityKind::Offer))?;
        self.ready(&req, req.get_ref().min_sequence).await?;
        self.point(|db| match record::<OfferRecord>(db, Cf::Offers, &id)? {
            Some(o) => Ok(Response::new(convert::offer(&id, &o))),
            None => Err(not_found("offer", &id.to_hex())),
        })
    }

    async fn get_assignment(
        &self,
        req: Request<pb::GetEntityRequest>,
    ) -> Result<Response<pb::Assignment>, Status> {
        let id = Self::entity_id(&req, None)?;
        self.ready(&req, req.get_ref().min_sequence).await?;
        self.point(
            |db| match record::<AssignmentRecord>(db, Cf::Assignments, &id)? {
                Some(a) => Ok(Response::new(convert::assignment(&id, &a))),
                None => Err(not_found("assignment", &id.to_hex())),
            },
        )
    }

    async fn list_needs(
        &self,
        req: Request<pb::ListNeedsRequest>,
    ) -> Result<Response<pb::ListNeedsReply>, Status> {
        let r = req.get_ref();
        let incident = IncidentId::parse("incident", &r.incident).map_err(invalid)?;
        let partition = if r.partition.is_empty() {
            None
        } else {
            Some(PartitionCode::parse("partition", &r.partition).map_err(invalid)?)
        };
        let category = convert::category_filter("category", r.category).map_err(invalid)?;
        if r.urgency > 5 {
            return Err(invalid(Violation::new(
                "urgency",
                "must be 0 (any) or 1 to 5",
            )));
        }
        let urgency = u8::try_from(r.urgency).unwrap_or(0);
        let statuses = r
            .statuses
            .iter()
            .enumerate()
            .map(|(i, s)| convert::need_status_filter(&format!("statuses[{i}]"), *s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let size = page_size("page_size", r.page_size)?;
        let token = r.page_token.clone();
        self.ready(&req, r.min_sequence).await?;
        self.read(move |db| {
            let open_only = statuses.is_empty();
            let prefix = if open_only {
                keys::open_needs_prefix(&incident)
            } else {
                keys::needs_prefix(&incident)
            };
            let (found, next) = page(db, Cf::Index, &prefix, &token, size, |_, v| {
                let Ok(e) = postcard::from_bytes::<NeedEntry>(v) else {
                    return false;
                };
                partition.as_ref().is_none_or(|p| *p == e.partition)
                    && category.is_none_or(|c| c == e.category)
                    && (urgency == 0 || urgency == e.urgency)
                    && (open_only || statuses.contains(&e.status))
            })?;
            let needs = records_of(db, Cf::Needs, &found, convert::need)?;
            Ok(Response::new(pb::ListNeedsReply {
                needs,
                next_page_token: next,
            }))
        })
        .await
    }

    async fn list_assignments(
        &self,
        req: Request<pb::ListAssignmentsRequest>,
    ) -> Result<Response<pb::ListAssignmentsReply>, Status> {
        let r = req.get_ref();
        let given = [&r.need_id, &r.volunteer, &r.incident]
            .iter()
            .filter(|s| !s.is_empty())
            .count();
        if given != 1 {
            return Err(invalid(Violation::new(
                "need_id",
                "exactly one of need_id, volunteer and incident is required",
            )));
        }
        let prefix = if !r.need_id.is_empty() {
            keys::by_need_prefix(&EntityId::parse("need_id", &r.need_id).map_err(invalid)?)
        } else if !r.volunteer.is_empty() {
            keys::by_volunteer_prefix(&PersonId::parse("volunteer", &r.volunteer).map_err(invalid)?)
        } else {
            keys::by_incident_prefix(&IncidentId::parse("incident", &r.incident).map_err(invalid)?)
        };
        let size = page_size("page_size", r.page_size)?;
        let token = r.page_token.clone();
        self.ready(&req, r.min_sequence).await?;
        self.read(move |db| {
            let (found, next) = page(db, Cf::Index, &prefix, &token, size, |_, _| true)?;
            let assignments = records_of(db, Cf::Assignments, &found, convert::assignment)?;
            Ok(Response::new(pb::ListAssignmentsReply {
                assignments,
                next_page_token: next,
            }))
        })
        .await
    }

    async fn list_verifications(
        &self,
        req: Request<pb::ListVerificationsRequest>,
    ) -> Result<Response<pb::ListVerificationsReply>, Status> {
        let r = req.get_ref();
        let person = PersonId::parse("person", &r.person).map_err(invalid)?;
        let incident = match r.incident.as_str() {
            "" => None,
            i => Some(IncidentId::parse("incident", i).map_err(invalid)?),
        };
        self.ready(&req, r.min_sequence).await?;
        self.read(move |db| {
            let prefix = keys::verifications_prefix(&person);
            let (found, _) = page(db, Cf::Index, &prefix, "", MAX_PAGE, |_, _| true)?;
            let mut verifications =
                records_of(db, Cf::Verifications, &found, convert::verification)?;
            if let Some(incident) = incident {
                verifications.retain(|v| v.incident == incident.as_str());
            }
            Ok(Response::new(pb::ListVerificationsReply { verifications }))
        })
        .await
    }

    async fn get_dashboard(
        &self,
        req: Request<pb::GetDashboardRequest>,
    ) -> Result<Response<pb::Dashboard>, Status> {
        let r = req.get_ref();
        let incident = IncidentId::parse("incident", &r.incident).map_err(invalid)?;
        let mut thresholds = if r.unmet_thresholds_s.is_empty() {
            vec![900, 3_600, 14_400, 86_400]
        } else {
            r.unmet_thresholds_s.clone()
        };
        thresholds.sort_unstable();
        thresholds.dedup();
        if thresholds.len() > 16 {
            return Err(invalid(Violation::new(
                "unmet_thresholds_s",
                "must hold at most 16 thresholds",
            )));
        }
        self.ready(&req, r.min_sequence).await?;
        let applied = *self.applied.borrow();
        self.read(move |db| dashboard(db, &incident, &thresholds, applied))
            .await
            .map(Response::new)
    }

    async fn get_history(
        &self,
        req: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryReply>, Status> {
        let r = req.get_ref();
        let prefix = match EntityId::parse("id", &r.id) {
            Ok(id) => keys::history_prefix(&HistoryOf::Entity(&id)),
            Err(_) => {
                let incident = IncidentId::parse("id", &r.id).map_err(|_| {
                    invalid(Violation::new(
                        "id",
                        "must be an entity id (32 hex digits) or an incident's name",
                    ))
                })?;
                keys::history_prefix(&HistoryOf::Incident(&incident))
            }
        };
        let size = page_size("page_size", r.page_size)?;
        let token = r.page_token.clone();
        self.ready(&req, r.min_sequence).await?;
        self.read(move |db| {
            let mut entries = Vec::new();
            let (found, next) =
                page(
                    db,
                    Cf::History,
                    &prefix,
                    &token,
                    size,
                    |_, v| match postcard::from_bytes::<HistoryEntry>(v) {
                        Ok(h) => {
                            entries.push(convert::history(&h));
                            true
                        }
                        Err(_) => false,
                    },
                )?;
            debug_assert_eq!(found.len(), entries.len());
            Ok(Response::new(pb::GetHistoryReply {
                entries,
                next_page_token: next,
            }))
        })
        .await
    }

    async fn list_set_aside(
        &self,
        req: Request<pb::ListSetAsideRequest>,
    ) -> Result<Response<pb::ListSetAsideReply>, Status> {
        let r = req.get_ref();
        let size = page_size("page_size", r.page_size)?;
        let token = r.page_token.clone();
        self.ready(&req, r.min_sequence).await?;
        self.read(move |db| {
            let mut events = Vec::new();
            let (_, next) =
                page(
                    db,
                    Cf::SetAside,
                    &[],
                    &token,
                    size,
                    |_, v| match postcard::from_bytes::<SetAsideRecord>(v) {
                        Ok(s) => {
                            events.push(convert::set_aside(&s));
                            true
                        }
                        Err(_) => false,
                    },
                )?;
            Ok(Response::new(pb::ListSetAsideReply {
                events,
                total: db.set_aside_count().map_err(internal)?,
                next_page_token: next,
            }))
        })
        .await
    }

    async fn get_position(
        &self,
        _req: Request<pb::GetPositionRequest>,
    ) -> Result<Response<pb::Position>, Status> {
        let applied = *self.applied.borrow();
        let read_only = self.db.is_read_only();
        self.read(move |db| {
            Ok(Response::new(pb::Position {
                applied_sequence: applied,
                set_aside: db.set_aside_count().map_err(internal)?,
                read_only,
            }))
        })
        .await
    }

    type WatchIncidentStream = ChangeStream;

    async fn watch_incident(
        &self,
        req: Request<pb::WatchIncidentRequest>,
    ) -> Result<Response<Self::WatchIncidentStream>, Status> {
        let incident = IncidentId::parse("incident", &req.get_ref().incident).map_err(invalid)?;
        let mut after = req.get_ref().after_sequence;
        let (tx, rx) = mpsc::channel::<Result<pb::Change, Status>>(256);
        let db = Arc::clone(&self.db);
        let mut applied = self.applied.clone();
        let mut closing = self.closing.clone();
        tokio::spawn(async move {
            loop {
                if *closing.borrow_and_update() {
                    return;
                }
                let upto = *applied.borrow_and_update();
                let batch = if upto > after {
                    let db = Arc::clone(&db);
                    let incident = incident.clone();
                    let scanned = tokio::task::spawn_blocking(move || {
                        changes_after(&db, &incident, after, upto, 1_000)
                    })
                    .await;
                    match scanned {
                        Ok(Ok(b)) => b,
                        Ok(Err(e)) => {
                            let _ = tx.send(Err(internal(e))).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                            return;
                        }
                    }
                } else {
                    Vec::new()
                };
                // Everything up to `upto` has been sent once this batch is out: move on.
                let complete = batch.len() < 1_000;
                for c in batch {
                    after = c.seq;
                    if tx.send(Ok(convert::change(&c))).await.is_err() {
                        return;
                    }
                }
                if complete {
                    after = after.max(upto);
                    tokio::select! {
                        changed = applied.changed() => if changed.is_err() { return },
                        () = tx.closed() => return,
                        _ = closing.changed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Changes of `incident` with `after < seq <= upto`, at most `limit`.
fn changes_after(
    db: &Db,
    incident: &IncidentId,
    after: u64,
    upto: u64,
    limit: usize,
) -> Result<Vec<ChangeRecord>, Corrupt> {
    let prefix = keys::changes_prefix(incident);
    let from = keys::change_key(incident, after.saturating_add(1));
    let mut out = Vec::new();
    let mut bad = None;
    db.scan(Cf::Changes, &prefix, &from, |k, v| {
        if keys::trailing_seq(k).is_some_and(|s| s > upto) || out.len() == limit {
            return false;
        }
        match postcard::from_bytes::<ChangeRecord>(v) {
            Ok(c) => out.push(c),
            Err(e) => {
                bad = Some(Corrupt {
                    cf: Cf::Changes.name(),
                    key: hex::encode(k),
                    reason: e.to_string(),
                });
                return false;
            }
        }
        true
    })?;
    match bad {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn counts(map: &BTreeMap<String, i64>, prefix: &str) -> Vec<pb::Count> {
    map.range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .filter(|(k, _)| !k[prefix.len()..].contains('.'))
        .map(|(k, v)| pb::Count {
            key: k[prefix.len()..].to_string(),
            count: *v,
        })
        .collect()
}

fn time_to_match(urgency: u32, hist: &[(u32, u64)]) -> pb::TimeToMatch {
    let s = |p| percentile_ms(hist, p).map_or(0.0, |ms| ms as f64 / 1000.0);
    pb::TimeToMatch {
        urgency,
        matched: hist.iter().map(|(_, c)| c).sum(),
        p50_s: s(50),
        p90_s: s(90),
        p99_s: s(99),
    }
}

fn dashboard(
    db: &Db,
    incident: &IncidentId,
    thresholds: &[u32],
    applied: u64,
) -> Result<pb::Dashboard, Status> {
    let Some(inc): Option<IncidentRecord> = db
        .record(Cf::Incidents, incident.as_str().as_bytes())
        .map_err(internal)?
    else {
        return Err(not_found("incident", incident.as_str()));
    };
    let mut map = BTreeMap::new();
    let prefix = keys::counters_prefix(incident);
    db.scan(Cf::Counters, &prefix, &prefix, |k, v| {
        if let (Ok(name), Some(n)) = (
            std::str::from_utf8(&k[prefix.len()..]),
            muster_readmodel::tx::decode_i64(v),
        ) {
            map.insert(name.to_string(), n);
        }
        true
    })
    .map_err(internal)?;
    let get = |k: &str| map.get(k).copied().unwrap_or(0);
    let mut open: BTreeMap<String, i64> = BTreeMap::new();
    for status in [NeedStatus::Open, NeedStatus::Proposed] {
        for (k, v) in map.range(format!("need.{}.", status.name())..) {
            let Some(rest) = k.strip_prefix(&format!("need.{}.", status.name())) else {
                break;
            };
            *open.entry(rest.to_string()).or_default() += v;
        }
    }
    let needs_by_status = NeedStatus::ALL
        .iter()
        .map(|s| pb::Count {
            key: s.name().to_string(),
            count: get(&format!("need.{}", s.name())),
        })
        .collect();
    // Time to match, by urgency and over all.
    let mut by_urgency: BTreeMap<u32, BTreeMap<u32, u64>> = BTreeMap::new();
    for (k, v) in map.range("ttm.".to_string()..) {
        let Some(rest) = k.strip_prefix("ttm.") else {
            break;
        };
        let Some((u, b)) = rest.split_once('.') else {
            continue;
        };
        let (Ok(u), Ok(b)) = (u.parse::<u32>(), b.parse::<u32>()) else {
            continue;
        };
        *by_urgency.entry(u).or_default().entry(b).or_default() += (*v).max(0) as u64;
        *by_urgency.entry(0).or_default().entry(b).or_default() += (*v).max(0) as u64;
    }
    let time_to_match = by_urgency
        .iter()
        .map(|(u, h)| time_to_match(*u, &h.iter().map(|(b, c)| (*b, *c)).collect::<Vec<_>>()))
        .collect();
    // Unmet needs older than each threshold, by urgency: from the open-needs index.
    let log_time = get(counters::LOG_TIME);
    let mut unmet: BTreeMap<(u32, u8), u64> = BTreeMap::new();
    let open_prefix = keys::open_needs_prefix(incident);
    db.scan(Cf::Index, &open_prefix, &open_prefix, |_, v| {
        if let Ok(e) = postcard::from_bytes::<NeedEntry>(v) {
            let age_s = (log_time - e.reported_at.micros()).max(0) / 1_000_000;
            for t in thresholds {
                if age_s >= i64::from(*t) {
                    *unmet.entry((*t, e.urgency)).or_default() += 1;
                }
            }
        }
        true
    })
    .map_err(internal)?;
    Ok(pb::Dashboard {
        incident: incident.to_string(),
        name: inc.name,
        stood_down: inc.stood_down,
        policy_version: inc.policy_version,
        log_time: Some(convert::ts(muster_schema::Timestamp(log_time))),
        needs_by_status,
        open_by_category: counts(&open, "category."),
        open_by_partition: counts(&open, "partition."),
        open_by_urgency: counts(&open, "urgency."),
        offers_by_status: counts(&map, "offer."),
        assignments_by_status: counts(&map, "assignment."),
        time_to_match,
        unmet_older_than: unmet
            .into_iter()
            .map(|((t, u), count)| pb::UnmetOlderThan {
                threshold_s: t,
                urgency: u32::from(u),
                count,
            })
            .collect(),
        unmet_safeguarded: get(counters::UNMET_SAFEGUARDED).max(0) as u64,
        providers_available: get(counters::PROVIDERS_AVAILABLE).max(0) as u64,
        providers_never_offered: get(counters::PROVIDERS_NEVER_OFFERED).max(0) as u64,
        rounds: get(counters::ROUNDS).max(0) as u64,
        applied_sequence: applied,
    })
}

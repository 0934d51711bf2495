//! Intake end to end: real gRPC over TCP, a real nats-server per test, the log read back and
//! decoded.

use std::time::Duration;

use muster_proto::v1 as pb;
use muster_proto::v1::intake_client::IntakeClient;
use muster_schema::events::*;
use muster_schema::{Envelope, Event};
use muster_tests::{Intake, Nats, read_all};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;

const AGENCY: &str = "york-council";
const INCIDENT: &str = "york-floods";
const T0: i64 = 1_800_000_000;

fn req<T>(body: T) -> Request<T> {
    let mut r = Request::new(body);
    r.metadata_mut()
        .insert("x-muster-agency", AGENCY.parse().expect("ascii"));
    r
}

fn ts(s: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: s,
        nanos: 0,
    })
}

fn window(from: i64, to: i64) -> Option<pb::TimeWindow> {
    Some(pb::TimeWindow {
        start: ts(from),
        end: ts(to),
    })
}

fn declare(key: &str) -> pb::DeclareIncidentRequest {
    pb::DeclareIncidentRequest {
        idempotency_key: key.into(),
        incident: INCIDENT.into(),
        name: "York floods".into(),
        partitions: vec!["E06000014".into(), "E08000035".into()],
        categories: vec![],
        policy: None,
    }
}

fn need_spec(urgency: u32) -> pb::NeedSpec {
    pb::NeedSpec {
        category: pb::Category::Shelter as i32,
        urgency,
        party_size: 4,
        window: window(T0, T0 + 86_400),
        location: Some(pb::Location {
            lat: 53.958,
            lon: -1.08,
        }),
        required_skills: vec![],
        required_verifications: vec![pb::VerificationRequirement {
            kind: pb::VerificationKind::CriminalRecordEnhanced as i32,
            qualification: String::new(),
        }],
        vulnerable: true,
    }
}

fn report(key: &str, reference: &str) -> pb::ReportNeedRequest {
    pb::ReportNeedRequest {
        idempotency_key: key.into(),
        incident: INCIDENT.into(),
        partition: "E06000014".into(),
        reference: reference.into(),
        need: Some(need_spec(4)),
        personal: Some(pb::PersonalDetails {
            name: "A. Person".into(),
            ..Default::default()
        }),
    }
}

fn offer(key: &str, reference: &str) -> pb::RegisterOfferRequest {
    pb::RegisterOfferRequest {
        idempotency_key: key.into(),
        incident: INCIDENT.into(),
        partition: "E06000014".into(),
        reference: reference.into(),
        provider: Some(pb::Provider {
            kind: pb::ProviderKind::Volunteer as i32,
            id: "vol-1".into(),
        }),
        offer: Some(pb::OfferSpec {
            kinds: vec![pb::Category::Shelter as i32],
            skills: vec!["driving".into()],
            capacity: 5,
            location: Some(pb::Location {
                lat: 53.9,
                lon: -1.1,
            }),
            travel_radius_m: 10_000,
            availability: vec![pb::TimeWindow {
                start: ts(T0),
                end: ts(T0 + 3_600),
            }],
        }),
        personal: None,
    }
}

async fn setup() -> (Nats, Intake, IntakeClient<Channel>) {
    let nats = Nats::start().await;
    let intake = Intake::start(&nats.url()).await;
    let mut client = intake.client().await;
    client
        .declare_incident(req(declare("declare-1")))
        .await
        .expect("declare");
    (nats, intake, client)
}

async fn log_of(nats: &Nats) -> Vec<(u64, String, Envelope)> {
    let (_, stream) = nats.log().await;
    read_all(&stream).await
}

#[tokio::test]
async fn every_command_lands_as_its_event() {
    let (nats, _intake, mut c) = setup().await;
    let need = c
        .report_need(req(report("n1", "case-1")))
        .await
        .expect("report")
        .into_inner();
    let update = pb::UpdateNeedRequest {
        idempotency_key: "n1-up".into(),
        incident: INCIDENT.into(),
        need_id: need.entity_id.clone(),
        expected_version: Some(need.sequence),
        need: Some(need_spec(5)),
        personal: None,
    };
    let updated = c
        .update_need(req(update))
        .await
        .expect("update")
        .into_inner();
    assert!(updated.sequence > need.sequence);
    let off = c
        .register_offer(req(offer("o1", "vol-row-1")))
        .await
        .expect("offer")
        .into_inner();
    let mut changed = offer("o1-up", "vol-row-1").offer;
    if let Some(o) = changed.as_mut() {
        o.capacity = 2;
    }
    c.update_offer(req(pb::UpdateOfferRequest {
        idempotency_key: "o1-up".into(),
        incident: INCIDENT.into(),
        offer_id: off.entity_id.clone(),
        expected_version: None,
        offer: changed,
        personal: None,
    }))
    .await
    .expect("update offer");
    let verif = c
        .record_verification(req(pb::RecordVerificationRequest {
            idempotency_key: "v1".into(),
            incident: INCIDENT.into(),
            reference: "dbs-42".into(),
            person: "vol-1".into(),
            kind: pb::VerificationKind::CriminalRecordEnhanced as i32,
            qualification: String::new(),
            issuer: "dbs".into(),
            issued_at: ts(T0 - 86_400),
            expires_at: ts(T0 + 365 * 86_400),
            personal: None,
        }))
        .await
        .expect("verification")
        .into_inner();
    c.revoke_verification(req(pb::RevokeVerificationRequest {
        idempotency_key: "v1-revoke".into(),
        incident: INCIDENT.into(),
        verification_id: verif.entity_id.clone(),
        expected_version: None,
        reason: "issued in error".into(),
    }))
    .await
    .expect("revoke");
    c.withdraw_offer(req(pb::WithdrawOfferRequest {
        idempotency_key: "o1-w".into(),
        incident: INCIDENT.into(),
        offer_id: off.entity_id.clone(),
        expected_version: None,
        reason: "moved away".into(),
    }))
    .await
    .expect("withdraw offer");
    c.withdraw_need(req(pb::WithdrawNeedRequest {
        idempotency_key: "n1-w".into(),
        incident: INCIDENT.into(),
        need_id: need.entity_id.clone(),
        expected_version: Some(updated.sequence),
        reason: "found a place".into(),
    }))
    .await
    .expect("withdraw need");
    c.change_policy(req(pb::ChangePolicyRequest {
        idempotency_key: "p2".into(),
        incident: INCIDENT.into(),
        policy: Some(pb::Policy {
            weight_fairness: 90,
            ..Default::default()
        }),
        expected_version: None,
    }))
    .await
    .expect("policy");
    c.stand_down_incident(req(pb::StandDownIncidentRequest {
        idempotency_key: "sd".into(),
        incident: INCIDENT.into(),
        reason: "water receded".into(),
        expected_version: None,
    }))
    .await
    .expect("stand down");

    let log = log_of(&nats).await;
    let types: Vec<&str> = log.iter().map(|(_, _, e)| e.event.type_name()).collect();
    assert_eq!(
        types,
        [
            "IncidentDeclared",
            "NeedReported",
            "NeedUpdated",
            "OfferRegistered",
            "OfferUpdated",
            "VerificationRecorded",
            "VerificationRevoked",
            "OfferWithdrawn",
            "NeedWithdrawn",
            "PolicyChanged",
            "IncidentStoodDown",
        ]
    );
    for (seq, subject, env) in &log {
        assert_eq!(env.actor.as_str(), AGENCY, "seq {seq}");
        assert_eq!(env.incident.as_str(), INCIDENT);
        assert_eq!(subject, &muster_schema::subject::for_envelope(env));
    }
    let (seq, subject, env) = &log[1];
    assert_eq!(*seq, need.sequence);
    assert_eq!(env.partition.as_str(), "E06000014");
    assert_eq!(env.idempotency_key, "n1");
    assert!(subject.ends_with(&need.entity_id));
    let Event::NeedReportedV1(n) = &env.event else {
        panic!("{:?}", env.event)
    };
    assert_eq!(n.reference.as_str(), "case-1");
    assert_eq!(n.spec.urgency.get(), 4);
    assert_eq!(n.spec.party_size, 4);
    assert_eq!(
        (n.spec.location.lat_e6, n.spec.location.lon_e6),
        (53_958_000, -1_080_000)
    );
    assert_eq!(n.spec.window.start.micros(), T0 * 1_000_000);
    assert!(n.spec.vulnerable);
    assert!(matches!(&n.personal, muster_schema::Personal::Plain(d) if d.name == "A. Person"));
    let Event::NeedUpdatedV1(u) = &log[2].2.event else {
        panic!()
    };
    assert_eq!(u.spec.urgency.get(), 5);
    let Event::OfferUpdatedV1(o) = &log[4].2.event else {
        panic!()
    };
    assert_eq!(o.spec.capacity, 2);
    let Event::VerificationRecordedV1(v) = &log[5].2.event else {
        panic!()
    };
    assert_eq!(
        v.kind,
        muster_schema::VerificationKind::CriminalRecordEnhanced
    );
    assert_eq!(log[5].2.partition.as_str(), "_");
    let Event::PolicyChangedV1(p) = &log[9].2.event else {
        panic!()
    };
    assert_eq!((p.policy_version, p.policy.weight_fairness), (2, 90));

    // After the stand-down nothing new is taken.
    let err = c
        .report_need(req(report("n2", "case-2")))
        .await
        .expect_err("stood down");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

/// Appends `event` to the log as the matcher would.
async fn as_matcher(nats: &Nats, msg_id: &str, event: Event) -> u64 {
    muster_tests::append_as_matcher(nats, INCIDENT, "E06000014", T0 * 1_000_000, msg_id, event)
        .await
}

/// The matcher's proposal of `offer` for `need` to vol-1.
fn proposal(
    assignment: muster_schema::EntityId,
    need: &pb::AppendReply,
    offer: &pb::AppendReply,
) -> Event {
    Event::AssignmentProposedV1(AssignmentProposedV1 {
        assignment,
        need: muster_schema::EntityId::parse("n", &need.entity_id).expect("hex"),
        offer: muster_schema::EntityId::parse("o", &offer.entity_id).expect("hex"),
        volunteer: muster_schema::PersonId::parse("v", "vol-1").expect("valid"),
        round_through_seq: offer.sequence,
        policy_version: 1,
        distance_m: 6_000,
        score: ScoreV1 {
            total: 10,
            urgency: 4,
            waiting: 3,
            distance: 2,
            fairness: 1,
        },
    })
}

/// A need (case-1) and an offer (row-1), for the matcher to propose.
async fn need_and_offer(c: &mut IntakeClient<Channel>) -> (pb::AppendReply, pb::AppendReply) {
    let need = c
        .report_need(req(report("n1", "case-1")))
        .await
        .expect("need")
        .into_inner();
    let offer = c
        .register_offer(req(offer("o1", "row-1")))
        .await
        .expect("offer")
        .into_inner();
    (need, offer)
}

#[tokio::test]
async fn volunteers_respond_to_and_complete_assignments() {
    let (nats, _intake, mut c) = setup().await;
    let (need, off) = need_and_offer(&mut c).await;
    // Assignments are proposed by the matcher; append one as it would.
    let assignment = muster_schema::EntityId([0x5a; 16]);
    as_matcher(&nats, "round-1#0", proposal(assignment, &need, &off)).await;
    let (_, stream) = nats.log().await;

    let complete = |key: &str| pb::CompleteAssignmentRequest {
        idempotency_key: key.into(),
        incident: INCIDENT.into(),
        assignment_id: assignment.to_hex(),
        personal: None,
    };
    let err = c
        .complete_assignment(req(complete("c0")))
        .await
        .expect_err("not accepted yet");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let accept = pb::RespondToAssignmentRequest {
        idempotency_key: "r1".into(),
        incident: INCIDENT.into(),
        assignment_id: assignment.to_hex(),
        response: pb::AssignmentResponse::Accept as i32,
        reason: String::new(),
    };
    c.respond_to_assignment(req(accept.clone()))
        .await
        .expect("accept");
    let again = pb::RespondToAssignmentRequest {
        idempotency_key: "r2".into(),
        ..accept
    };
    let err = c
        .respond_to_assignment(req(again))
        .await
        .expect_err("answered already");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    c.complete_assignment(req(complete("c1")))
        .await
        .expect("complete");
    let unknown = pb::CompleteAssignmentRequest {
        assignment_id: "00".repeat(16),
        ..complete("c2")
    };
    assert_eq!(
        c.complete_assignment(req(unknown))
            .await
            .expect_err("unknown")
            .code(),
        Code::NotFound
    );

    let events = read_all(&stream).await;
    let tail: Vec<&str> = events
        .iter()
        .rev()
        .take(2)
        .map(|(_, _, e)| e.event.type_name())
        .collect();
    assert_eq!(tail, ["AssignmentCompleted", "VolunteerResponded"]);
}

/// A round's expiry is decided at its cut; a volunteer's acceptance that reached the log before
/// the round's events were appended stands (the expiry is void), so they can complete the task.
/// A proposal that did expire unanswered cannot be answered any more.
#[tokio::test]
async fn an_acceptance_that_beat_a_rounds_expiry_can_be_completed() {
    let (nats, _intake, mut c) = setup().await;
    let (need, off) = need_and_offer(&mut c).await;
    let (a, b) = (
        muster_schema::EntityId([0x5a; 16]),
        muster_schema::EntityId([0x5b; 16]),
    );
    as_matcher(&nats, "round-1#0", proposal(a, &need, &off)).await;
    let respond = |key: &str, assignment: muster_schema::EntityId| pb::RespondToAssignmentRequest {
        idempotency_key: key.into(),
        incident: INCIDENT.into(),
        assignment_id: assignment.to_hex(),
        response: pb::AssignmentResponse::Accept as i32,
        reason: String::new(),
    };
    c.respond_to_assignment(req(respond("r1", a)))
        .await
        .expect("accept");
    let expire = |assignment| {
        Event::AssignmentExpiredV1(AssignmentExpiredV1 {
            assignment,
            round_through_seq: off.sequence,
        })
    };
    as_matcher(&nats, "round-2#0", expire(a)).await;
    let err = c
        .respond_to_assignment(req(respond("r2", a)))
        .await
        .expect_err("answered already: the expiry was void");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    c.complete_assignment(req(pb::CompleteAssignmentRequest {
        idempotency_key: "c1".into(),
        incident: INCIDENT.into(),
        assignment_id: a.to_hex(),
        personal: None,
    }))
    .await
    .expect("the acceptance stands: complete");

    as_matcher(&nats, "round-3#0", proposal(b, &need, &off)).await;
    as_matcher(&nats, "round-4#0", expire(b)).await;
    let err = c
        .respond_to_assignment(req(respond("r3", b)))
        .await
        .expect_err("expired unanswered");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("AssignmentExpired"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_retried_request_is_stored_once_and_answered_as_a_duplicate() {
    let (nats, _intake, mut c) = setup().await;
    let first = c
        .report_need(req(report("n1", "case-1")))
        .await
        .expect("first")
        .into_inner();
    assert!(!first.duplicate);
    let retry = c
        .report_need(req(report("n1", "case-1")))
        .await
        .expect("retry")
        .into_inner();
    assert!(retry.duplicate);
    assert_eq!(
        (retry.sequence, &retry.entity_id),
        (first.sequence, &first.entity_id)
    );
    // A retried update, and a retried declaration, are duplicates too.
    let upd = pb::UpdateNeedRequest {
        idempotency_key: "u1".into(),
        incident: INCIDENT.into(),
        need_id: first.entity_id.clone(),
        expected_version: Some(first.sequence),
        need: Some(need_spec(2)),
        personal: None,
    };
    let u1 = c
        .update_need(req(upd.clone()))
        .await
        .expect("update")
        .into_inner();
    let u2 = c
        .update_need(req(upd))
        .await
        .expect("retried update")
        .into_inner();
    assert!(u2.duplicate && u2.sequence == u1.sequence);
    let d2 = c
        .declare_incident(req(declare("declare-1")))
        .await
        .expect("retried declare")
        .into_inner();
    assert!(d2.duplicate);
    assert_eq!(d2.sequence, 1);
    // The same reference under a new key is the same need: it already exists.
    let err = c
        .report_need(req(report("n1-again", "case-1")))
        .await
        .expect_err("exists");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(log_of(&nats).await.len(), 3);
}

#[tokio::test]
async fn creation_stays_idempotent_after_the_duplicate_window() {
    let nats = Nats::start().await;
    let mut config = muster_intake::Config::new(nats.url());
    config.log.duplicate_window = Duration::from_millis(500);
    let intake = Intake::start_with(config).await;
    let mut c = intake.client().await;
    c.declare_incident(req(declare("d")))
        .await
        .expect("declare");
    let first = c
        .report_need(req(report("import-row-1", "case-1")))
        .await
        .expect("first")
        .into_inner();
    let bulk = bulk_of("import-1", 5);
    let b1 = c
        .submit_bulk(req(bulk.clone()))
        .await
        .expect("bulk")
        .into_inner();
    // A probe appended as old as the requests: once JetStream stores it again, the duplicate
    // window has forgotten every id of that age, so what follows is guarded by subjects alone.
    let client = nats.client().await;
    let probe = || async {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", "window-probe");
        let r = client
            .request_with_headers(format!("muster.ev.{INCIDENT}._.tick.t"), h, "probe".into())
            .await
            .expect("probe");
        // JetStream's ack names `duplicate` only when it is true.
        String::from_utf8_lossy(&r.payload).contains("duplicate")
    };
    assert!(!probe().await);
    let mut forgotten = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !probe().await {
            forgotten = true;
            break;
        }
    }
    assert!(forgotten, "the duplicate window never expired");
    // Yesterday's import, re-run: JetStream has forgotten the ids, the entities' subjects have not.
    let again = c
        .report_need(req(report("import-row-1", "case-1")))
        .await
        .expect("rerun")
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);
    let b2 = c
        .submit_bulk(req(bulk))
        .await
        .expect("bulk rerun")
        .into_inner();
    assert!(b2.duplicate);
    assert_eq!(
        b2.items.iter().map(|i| i.sequence).collect::<Vec<_>>(),
        b1.items.iter().map(|i| i.sequence).collect::<Vec<_>>()
    );
    let log = log_of_raw(&nats).await;
    assert_eq!(log, 1 + 1 + 5 + 2, "declaration, need, bulk, two probes");
}

/// An idempotency key names one request. A client that reuses one for another request (a
/// counter that started again, a spreadsheet's row number in the next file) is told so:
/// answering it as a duplicate would acknowledge a request that was never stored.
#[tokio::test]
async fn a_key_reused_for_another_request_is_refused_not_answered_as_a_duplicate() {
    let (nats, _intake, mut c) = setup().await;
    // Refused, naming the key and (where the log says) what it was used for.
    let reused = |err: tonic::Status, original: &str| {
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        assert!(
            err.message()
                .starts_with("idempotency_key already exists: it was used for another request (")
                && err.message().contains(original),
            "{}",
            err.message()
        );
    };
    let first = c
        .report_need(req(report("k1", "case-1")))
        .await
        .expect("first")
        .into_inner();
    let err = c
        .report_need(req(report("k1", "case-2")))
        .await
        .expect_err("another need under k1");
    reused(
        err,
        &format!(
            "(NeedReported on muster.ev.{INCIDENT}.E06000014.need.{} at sequence {})",
            first.entity_id, first.sequence
        ),
    );

    // Another command for the same need under the key of the one before.
    let updated = c
        .update_need(req(pb::UpdateNeedRequest {
            idempotency_key: "u1".into(),
            incident: INCIDENT.into(),
            need_id: first.entity_id.clone(),
            expected_version: None,
            need: Some(need_spec(2)),
            personal: None,
        }))
        .await
        .expect("update")
        .into_inner();
    let err = c
        .withdraw_need(req(pb::WithdrawNeedRequest {
            idempotency_key: "u1".into(),
            incident: INCIDENT.into(),
            need_id: first.entity_id.clone(),
            expected_version: None,
            reason: "resolved".into(),
        }))
        .await
        .expect_err("a withdrawal under the update's key");
    reused(
        err,
        &format!(
            "(NeedUpdated on muster.ev.{INCIDENT}.E06000014.need.{} at sequence {})",
            first.entity_id, updated.sequence
        ),
    );

    // A bulk under the key of an earlier bulk, with other items.
    let bulk = c
        .submit_bulk(req(bulk_of("b1", 4)))
        .await
        .expect("bulk")
        .into_inner();
    let other = pb::SubmitBulkRequest {
        idempotency_key: "b1".into(),
        ..bulk_of("b2", 4)
    };
    let err = c
        .submit_bulk(req(other))
        .await
        .expect_err("other items under b1");
    reused(err, "(another bulk request)");
    // ...or with the earlier bulk's items and more.
    let err = c
        .submit_bulk(req(bulk_of("b1", 6)))
        .await
        .expect_err("more items under b1");
    reused(
        err,
        &format!(
            "(a bulk request of other items, from sequence {})",
            bulk.items[0].sequence
        ),
    );
    // The incident's own commands: standing it down under the key that declared it.
    let err = c
        .stand_down_incident(req(pb::StandDownIncidentRequest {
            idempotency_key: "declare-1".into(),
            incident: INCIDENT.into(),
            reason: "over".into(),
            expected_version: None,
        }))
        .await
        .expect_err("a stand-down under the declaration's key");
    reused(
        err,
        &format!("(IncidentDeclared on muster.ev.{INCIDENT}._.incident.{INCIDENT} at sequence 1)"),
    );

    // Retries, the same requests again, are still answered as duplicates.
    let again = c
        .report_need(req(report("k1", "case-1")))
        .await
        .expect("retry")
        .into_inner();
    assert!(again.duplicate && again.sequence == first.sequence);
    let again = c
        .submit_bulk(req(bulk_of("b1", 4)))
        .await
        .expect("bulk retry")
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(
        again.items,
        bulk.items
            .iter()
            .map(|i| pb::AppendReply {
                duplicate: true,
                ..i.clone()
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(
        log_of(&nats).await.len(),
        1 + 1 + 1 + 4,
        "the declaration, the need, its update and the bulk"
    );
}

async fn log_of_raw(nats: &Nats) -> u64 {
    let (_, mut stream) = nats.log().await;
    stream.info().await.expect("info").state.messages
}

/// The "field: rule" lines of an invalid-argument status's details.
fn bad_fields(err: &tonic::Status) -> Vec<String> {
    err.get_details_bad_request()
        .expect("field violations")
        .field_violations
        .into_iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect()
}

fn bulk_of(key: &str, n: usize) -> pb::SubmitBulkRequest {
    pb::SubmitBulkRequest {
        idempotency_key: key.into(),
        incident: INCIDENT.into(),
        items: (0..n)
            .map(|i| pb::BulkItem {
                command: Some(if i % 2 == 0 {
                    pb::bulk_item::Command::ReportNeed(pb::ReportNeedRequest {
                        idempotency_key: String::new(),
                        ..report("", &format!("{key}-need-{i}"))
                    })
                } else {
                    pb::bulk_item::Command::RegisterOffer(offer("", &format!("{key}-offer-{i}")))
                }),
            })
            .collect(),
    }
}

#[tokio::test]
async fn a_bulk_request_is_stored_whole_with_each_items_sequence() {
    let (nats, _intake, mut c) = setup().await;
    let reply = c
        .submit_bulk(req(bulk_of("b1", 1000)))
        .await
        .expect("bulk")
        .into_inner();
    assert_eq!(reply.items.len(), 1000);
    let log = log_of(&nats).await;
    assert_eq!(log.len(), 1001);
    for (i, item) in reply.items.iter().enumerate() {
        let (seq, subject, env) = &log[item.sequence as usize - 1];
        assert_eq!(*seq, item.sequence);
        assert!(subject.ends_with(&item.entity_id), "item {i}");
        assert_eq!(
            env.event.type_name(),
            if i % 2 == 0 {
                "NeedReported"
            } else {
                "OfferRegistered"
            }
        );
    }
    let err = c
        .submit_bulk(req(bulk_of("b2", 1001)))
        .await
        .expect_err("too many");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_bulk_request_with_one_bad_item_stores_nothing_and_names_it() {
    let (nats, _intake, mut c) = setup().await;
    let mut bulk = bulk_of("b1", 10);
    if let Some(pb::bulk_item::Command::ReportNeed(r)) = &mut bulk.items[6].command
        && let Some(n) = r.need.as_mut()
    {
        n.location = Some(pb::Location {
            lat: 95.0,
            lon: -1.0,
        });
    }
    let err = c.submit_bulk(req(bulk)).await.expect_err("invalid item");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        bad_fields(&err),
        ["items[6].report_need.need.location.lat: must be between -90 and 90 degrees"]
    );
    assert_eq!(log_of(&nats).await.len(), 1, "only the declaration");

    // An item that fails only against the log (an existing need) also stores nothing.
    c.report_need(req(report("single", "b2-need-4")))
        .await
        .expect("need");
    let err = c
        .submit_bulk(req(bulk_of("b2", 10)))
        .await
        .expect_err("item 4 exists");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let pf = err
        .get_details_precondition_failure()
        .expect("precondition details");
    assert_eq!(pf.violations[0].subject, "items[4].reference");
    assert_eq!(log_of(&nats).await.len(), 2);
}

#[tokio::test]
async fn a_bulk_request_with_every_item_bad_gets_a_readable_error_not_a_transport_failure() {
    let (nats, _intake, mut c) = setup().await;
    let mut bulk = bulk_of("all-bad", 1000);
    for item in &mut bulk.items {
        match &mut item.command {
            Some(pb::bulk_item::Command::ReportNeed(r)) => r.partition = String::new(),
            Some(pb::bulk_item::Command::RegisterOffer(o)) => o.partition = String::new(),
            _ => unreachable!("bulk_of makes needs and offers"),
        }
    }
    let err = c
        .submit_bulk(req(bulk))
        .await
        .expect_err("every item invalid");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .starts_with("invalid request: items[0].report_need.partition"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("999 more problems"),
        "{}",
        err.message()
    );
    let details = err.get_details_bad_request().expect("field violations");
    assert_eq!(details.field_violations.len(), 50);
    assert_eq!(
        details.field_violations[1].field,
        "items[1].register_offer.partition"
    );
    assert_eq!(log_of(&nats).await.len(), 1, "only the declaration");
}

#[tokio::test]
async fn of_two_concurrent_updates_with_the_same_expected_version_exactly_one_wins() {
    let (nats, intake, mut c) = setup().await;
    let need = c
        .report_need(req(report("n1", "case-1")))
        .await
        .expect("need")
        .into_inner();
    let update = |key: &str, urgency: u32| pb::UpdateNeedRequest {
        idempotency_key: key.into(),
        incident: INCIDENT.into(),
        need_id: need.entity_id.clone(),
        expected_version: Some(need.sequence),
        need: Some(need_spec(urgency)),
        personal: None,
    };
    for round in 0..5 {
        let (mut a, mut b) = (intake.client().await, intake.client().await);
        let expected = if round == 0 {
            need.sequence
        } else {
            log_of(&nats).await.last().expect("event").0
        };
        let (ua, ub) = (
            pb::UpdateNeedRequest {
                expected_version: Some(expected),
                ..update(&format!("a{round}"), 1)
            },
            pb::UpdateNeedRequest {
                expected_version: Some(expected),
                ..update(&format!("b{round}"), 5)
            },
        );
        let (ra, rb) = tokio::join!(a.update_need(req(ua)), b.update_need(req(ub)));
        let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {ra:?} {rb:?}");
        let loser = if ra.is_ok() { rb } else { ra };
        assert_eq!(loser.expect_err("lost").code(), Code::Aborted);
    }
    assert_eq!(log_of(&nats).await.len(), 2 + 5);
}

#[tokio::test]
async fn bad_requests_get_field_level_errors_and_unknown_things_are_not_found() {
    let (nats, _intake, mut c) = setup().await;
    let no_agency = c
        .report_need(Request::new(report("n", "r")))
        .await
        .expect_err("no agency");
    assert_eq!(no_agency.code(), Code::InvalidArgument);
    assert_eq!(
        no_agency
            .get_details_bad_request()
            .expect("details")
            .field_violations[0]
            .field,
        "metadata.x-muster-agency"
    );
    let mut bad = report("", "case\n1");
    bad.need = Some(pb::NeedSpec {
        urgency: 0,
        party_size: 0,
        ..need_spec(3)
    });
    let err = c.report_need(req(bad)).await.expect_err("invalid");
    let fields: Vec<String> = err
        .get_details_bad_request()
        .expect("details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "idempotency_key",
            "reference",
            "need.urgency",
            "need.party_size"
        ]
    );

    let mut other = report("n3", "case-3");
    other.incident = "no-such-incident".into();
    assert_eq!(
        c.report_need(req(other)).await.expect_err("unknown").code(),
        Code::NotFound
    );
    let mut outside = report("n4", "case-4");
    outside.partition = "W06000015".into();
    assert_eq!(
        c.report_need(req(outside))
            .await
            .expect_err("outside")
            .code(),
        Code::FailedPrecondition
    );
    let withdraw = pb::WithdrawNeedRequest {
        idempotency_key: "w".into(),
        incident: INCIDENT.into(),
        need_id: "ab".repeat(16),
        expected_version: None,
        reason: String::new(),
    };
    assert_eq!(
        c.withdraw_need(req(withdraw))
            .await
            .expect_err("unknown need")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        log_of(&nats).await.len(),
        1,
        "nothing stored by any of these"
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let (_nats, intake, _c) = setup().await;
    let ch = Channel::from_shared(format!("http://{}", intake.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "muster.v1.Intake".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(ch);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let Some(Ok(r)) = tokio_stream::StreamExt::next(&mut responses).await else {
        panic!("no reflection answer")
    };
    let Some(MessageResponse::ListServicesResponse(list)) = r.message_response else {
        panic!("{r:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"muster.v1.Intake".to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_an_expired_incident_read_it_from_the_log_once() {
    use muster_intake::directory::Directory;
    use muster_schema::IncidentId;

    let nats = Nats::start().await;
    let intake = Intake::start(&nats.url()).await;
    intake
        .client()
        .await
        .declare_incident(req(declare("declare")))
        .await
        .expect("declared");
    let (_client, stream) = nats.log().await;
    let ttl = Duration::from_secs(1);
    let directory = std::sync::Arc::new(Directory::new(muster_log::LogReader::new(stream), ttl));
    let incident = IncidentId::parse("incident", INCIDENT).expect("valid");
    // As a bulk request's items do: many resolves at once, on a cold (then an expired) cache.
    let all_at_once = |id: IncidentId| {
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (d, id) = (std::sync::Arc::clone(&directory), id.clone());
                tokio::spawn(async move { d.get(&id).await })
            })
            .collect();
        futures::future::join_all(tasks)
    };
    for r in all_at_once(incident.clone()).await {
        let state = r.expect("task").expect("read").expect("declared");
        assert_eq!(state.declared.name, "York floods");
    }
    assert_eq!(directory.loads(), 1, "200 concurrent gets on a cold cache");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    for r in all_at_once(incident).await {
        assert!(r.expect("task").expect("read").is_some());
    }
    assert_eq!(directory.loads(), 2, "the expired entry is read once again");
    // An undeclared incident is not cached: each asks the log, one at a time.
    let unknown = IncidentId::parse("incident", "never-declared").expect("valid");
    for r in all_at_once(unknown).await {
        assert!(r.expect("task").expect("read").is_none());
    }
    intake.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_bulk_request_naming_one_entity_twice_is_refused_and_stores_nothing() {
    let (nats, _intake, mut c) = setup().await;
    let mut bulk = bulk_of("twice", 10);
    let reference = |item: &mut pb::BulkItem, partition: Option<&str>| match &mut item.command {
        Some(pb::bulk_item::Command::ReportNeed(r)) => {
            r.reference = "dup".into();
            if let Some(p) = partition {
                r.partition = p.into();
            }
        }
        Some(pb::bulk_item::Command::RegisterOffer(o)) => o.reference = "dup".into(),
        _ => unreachable!("bulk_of makes needs and offers"),
    };
    reference(&mut bulk.items[2], None);
    // An offer under the same reference is another entity: allowed.
    reference(&mut bulk.items[3], None);
    // The same need again, even in another partition: refused.
    reference(&mut bulk.items[8], Some("E08000035"));
    let err = c.submit_bulk(req(bulk)).await.expect_err("one need twice");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        bad_fields(&err),
        [
            "items[8].command: targets the same entity as items[2]: one command per entity per bulk request"
        ]
    );
    assert_eq!(log_of(&nats).await.len(), 1, "only the declaration");
}

//! The matcher moves log time on for an incident whose assignments wait on it, and not otherwise.

use std::time::Duration;

use muster_proto::v1 as pb;
use muster_schema::Event;
use muster_tests::{Intake, Matcher, Nats, log_until, read_all};

fn req<T>(body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-muster-agency", "ripon-council".parse().expect("ascii"));
    r
}

const DAY: pb::TimeWindow = pb::TimeWindow {
    start: Some(prost_types::Timestamp {
        seconds: 1_800_000_000,
        nanos: 0,
    }),
    end: Some(prost_types::Timestamp {
        seconds: 1_800_086_400,
        nanos: 0,
    }),
};

const AT: Option<pb::Location> = Some(pb::Location {
    lat: 54.14,
    lon: -1.52,
});

/// A need in Ripon (reference and key `reference`) that any volunteer of
/// [`needs_and_volunteers`] can meet.
fn report(reference: &str) -> pb::ReportNeedRequest {
    pb::ReportNeedRequest {
        idempotency_key: reference.into(),
        incident: "ripon".into(),
        partition: "E07000166".into(),
        reference: reference.into(),
        need: Some(pb::NeedSpec {
            category: pb::Category::Food as i32,
            urgency: 3,
            party_size: 1,
            window: Some(DAY),
            location: AT,
            required_skills: vec![],
            required_verifications: vec![],
            vulnerable: false,
        }),
        personal: None,
    }
}

/// `assignment`'s volunteer accepts it (idempotency key `key`).
/// A volunteer's offer of one place for food, at the incident's spot, all day.
fn offer(reference: &str, volunteer: &str) -> pb::RegisterOfferRequest {
    pb::RegisterOfferRequest {
        idempotency_key: reference.into(),
        incident: "ripon".into(),
        partition: "E07000166".into(),
        reference: reference.into(),
        provider: Some(pb::Provider {
            kind: pb::ProviderKind::Volunteer as i32,
            id: volunteer.into(),
        }),
        offer: Some(pb::OfferSpec {
            kinds: vec![pb::Category::Food as i32],
            skills: vec![],
            capacity: 1,
            location: AT,
            travel_radius_m: 5_000,
            availability: vec![DAY],
        }),
        personal: None,
    }
}

fn accept(key: &str, assignment: muster_schema::EntityId) -> pb::RespondToAssignmentRequest {
    pb::RespondToAssignmentRequest {
        idempotency_key: key.into(),
        incident: "ripon".into(),
        assignment_id: assignment.to_hex(),
        response: pb::AssignmentResponse::Accept as i32,
        reason: String::new(),
    }
}

/// nats-server, intake and a matcher ticking every 200 ms; incident `ripon` declared with
/// `policy`, one volunteer's offer and one need it can meet.
async fn one_need_one_volunteer(policy: Option<pb::Policy>) -> (Nats, Intake, Matcher) {
    needs_and_volunteers(policy, 1).await
}

/// As [`one_need_one_volunteer`], with `n` volunteers (`vol-1`…) each offering one place and
/// `n` needs (references `n0`…), any of which any of them can meet.
async fn needs_and_volunteers(policy: Option<pb::Policy>, n: usize) -> (Nats, Intake, Matcher) {
    let nats = Nats::start().await;
    let intake = Intake::start(&nats.url()).await;
    let mut c = intake.client().await;
    let mut config = muster_matcher::Config::new(nats.url());
    config.tick_every = Duration::from_millis(200);
    let matcher = Matcher::start(config);

    c.declare_incident(req(pb::DeclareIncidentRequest {
        idempotency_key: "d".into(),
        incident: "ripon".into(),
        name: "Ripon".into(),
        partitions: vec![],
        categories: vec![],
        policy,
    }))
    .await
    .expect("declare");
    for i in 0..n {
        c.register_offer(req(offer(&format!("o{i}"), &format!("vol-{}", i + 1))))
            .await
            .expect("offer");
    }
    for i in 0..n {
        c.report_need(req(report(&format!("n{i}"))))
            .await
            .expect("need");
    }

    (nats, intake, matcher)
}

#[tokio::test]
async fn pending_assignments_get_ticks_and_settled_ones_do_not() {
    let (nats, intake, matcher) = one_need_one_volunteer(None).await;
    let mut c = intake.client().await;
    let (_, stream) = nats.log().await;
    let ticks = |log: &[(u64, String, muster_schema::Envelope)]| {
        log.iter()
            .filter(|(_, _, e)| matches!(e.event, Event::TickV1(_)))
            .count()
    };
    let mut assignment = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = read_all(&stream).await;
        assignment = log.iter().find_map(|(_, _, e)| match &e.event {
            Event::AssignmentProposedV1(p) => Some(p.assignment),
            _ => None,
        });
        if assignment.is_some() && ticks(&log) >= 2 {
            break;
        }
    }
    let assignment = assignment.expect("the need was matched");
    let log = read_all(&stream).await;
    assert!(
        ticks(&log) >= 2,
        "a pending assignment makes the matcher tick"
    );
    assert!(
        log.iter()
            .filter(|(_, _, e)| matches!(e.event, Event::TickV1(_)))
            .all(|(_, _, e)| e.actor.as_str() == "muster-matcher")
    );

    c.respond_to_assignment(req(accept("accept", assignment)))
        .await
        .expect("accept");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let settled = ticks(&read_all(&stream).await);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        ticks(&read_all(&stream).await),
        settled,
        "nothing waits on time: no more ticks"
    );

    matcher.stop().await;
}

/// A proposal no one answers expires once log time passes the policy's hour; its need is then
/// proposed again by the next round, though nothing else happens in the incident (the expiry
/// was the last event, and with nothing pending there are no more ticks to cause a round).
#[tokio::test]
async fn a_need_whose_proposal_expired_is_proposed_again_in_a_quiet_incident() {
    let (nats, _intake, matcher) = one_need_one_volunteer(None).await;
    let (_, stream) = nats.log().await;
    let count = |log: &[(u64, String, muster_schema::Envelope)]| {
        let proposals = log
            .iter()
            .filter(|(_, _, e)| matches!(e.event, Event::AssignmentProposedV1(_)))
            .count();
        let expiries = log
            .iter()
            .filter(|(_, _, e)| matches!(e.event, Event::AssignmentExpiredV1(_)))
            .count();
        (proposals, expiries)
    };
    let until = |want: (usize, usize)| {
        let stream = stream.clone();
        async move {
            let mut seen = (0, 0);
            for _ in 0..100 {
                seen = count(&read_all(&stream).await);
                if seen.0 >= want.0 && seen.1 >= want.1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        }
    };
    assert_eq!(until((1, 0)).await, (1, 0), "proposed once");
    // Log time two hours on (the policy gives an hour to answer), as a tick would move it.
    let later = read_all(&stream)
        .await
        .iter()
        .map(|(_, _, e)| e.recorded_at.0)
        .max()
        .expect("events")
        + 2 * 3_600_000_000;
    let incident = muster_schema::IncidentId::parse("i", "ripon").expect("valid");
    let tick = Event::TickV1(muster_schema::events::TickV1 { incident });
    muster_tests::append_as_matcher(&nats, "ripon", "_", later, "tick-later", tick).await;
    let seen = until((2, 1)).await;
    assert!(seen.1 >= 1, "the unanswered proposal expired: {seen:?}");
    assert!(seen.0 >= 2, "and its need was proposed again: {seen:?}");

    matcher.stop().await;
}

/// Standing an incident down ends the matching, not the work under way: the matcher's next
/// round cancels the proposal still awaiting an answer and proposes nothing more; intake takes
/// no new need and no acceptance, but a volunteer who accepted can still complete the task and
/// an agency can still withdraw a need. The audit reproduces every round.
#[tokio::test]
async fn a_stood_down_incident_cancels_unanswered_proposals_and_lets_accepted_tasks_finish() {
    use muster_schema::events::CancelReason;
    let (nats, intake, matcher) = needs_and_volunteers(None, 2).await;
    let mut c = intake.client().await;
    let (_, stream) = nats.log().await;
    let proposals = |log: &[(u64, String, muster_schema::Envelope)]| -> Vec<_> {
        log.iter()
            .filter_map(|(_, _, e)| match &e.event {
                Event::AssignmentProposedV1(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    };
    let log = log_until(
        &stream,
        Duration::from_secs(10),
        "both needs proposed",
        |log| proposals(log).len() == 2,
    )
    .await;
    let proposed = proposals(&log);
    let (accepted, unanswered) = (proposed[0].assignment, proposed[1].assignment);
    c.respond_to_assignment(req(accept("accept", accepted)))
        .await
        .expect("accept");
    let stood_down = c
        .stand_down_incident(req(pb::StandDownIncidentRequest {
            idempotency_key: "sd".into(),
            incident: "ripon".into(),
            reason: "water receded".into(),
            expected_version: None,
        }))
        .await
        .expect("stand down")
        .into_inner()
        .sequence;

    // The matcher cancels the unanswered proposal, and only that one.
    let cancelled = |log: &[(u64, String, muster_schema::Envelope)]| -> Vec<_> {
        log.iter()
            .filter_map(|(_, _, e)| match &e.event {
                Event::AssignmentCancelledV1(x) => Some((x.assignment, x.reason)),
                _ => None,
            })
            .collect()
    };
    let log = log_until(&stream, Duration::from_secs(10), "a cancellation", |log| {
        !cancelled(log).is_empty()
    })
    .await;
    assert_eq!(
        cancelled(&log),
        vec![(unanswered, CancelReason::IncidentStoodDown)]
    );

    // Intake: no new need, no acceptance (of the cancelled proposal or any other)...
    let err = c
        .report_need(req(report("late")))
        .await
        .expect_err("a need after the stand-down");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("stood down"), "{}", err.message());
    let err = c
        .respond_to_assignment(req(accept("late-accept", unanswered)))
        .await
        .expect_err("an acceptance after the stand-down");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    // ...but the accepted task is completed, and the need left open is withdrawn.
    c.complete_assignment(req(pb::CompleteAssignmentRequest {
        idempotency_key: "done".into(),
        incident: "ripon".into(),
        assignment_id: accepted.to_hex(),
        personal: None,
    }))
    .await
    .expect("a completion after the stand-down");
    c.withdraw_need(req(pb::WithdrawNeedRequest {
        idempotency_key: "close".into(),
        incident: "ripon".into(),
        need_id: proposed[1].need.to_hex(),
        expected_version: None,
        reason: "closed at stand-down".into(),
    }))
    .await
    .expect("a withdrawal after the stand-down");
    tokio::time::sleep(Duration::from_millis(600)).await;
    matcher.stop().await;

    let log = read_all(&stream).await;
    assert!(
        proposals(&log)
            .iter()
            .all(|p| p.round_through_seq < stood_down),
        "no round cut after the stand-down proposed"
    );
    assert_eq!(cancelled(&log).len(), 1);
    assert!(log.iter().any(|(_, _, e)| matches!(
        &e.event,
        Event::AssignmentCompletedV1(x) if x.assignment == accepted
    )));
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    assert_eq!(report.divergence, None);
    assert!(report.rounds_verified >= 2, "{report:?}");
}

/// Intake takes nothing for an incident before it is declared, so an undeclared incident's
/// events on the log come from another writer. The matcher folds them but decides no round
/// over them, while the declared incident beside it goes on being matched.
#[tokio::test]
async fn an_incident_never_declared_gets_no_rounds() {
    use muster_schema::events::{NeedReportedV1, NeedSpecV1, OfferRegisteredV1, OfferSpecV1};
    use muster_schema::values::{Category, GeoPoint, Personal, Provider, TimeWindow, Urgency};
    use muster_schema::{EntityId, PersonId, Reference};

    let (nats, intake, matcher) = one_need_one_volunteer(None).await;
    let mut c = intake.client().await;
    let (_, stream) = nats.log().await;
    let proposed_in = |log: &[(u64, String, muster_schema::Envelope)], incident: &str| {
        log.iter()
            .filter(|(_, _, e)| {
                e.incident.as_str() == incident && matches!(e.event, Event::AssignmentProposedV1(_))
            })
            .count()
    };
    log_until(
        &stream,
        Duration::from_secs(10),
        "ripon's first proposal",
        |log| proposed_in(log, "ripon") == 1,
    )
    .await;

    // An offer and a need in "ghost", never declared, that any round would match.
    let at = 1_800_000_100_000_000;
    let window = TimeWindow::new(at, at + 3_600_000_000).expect("valid");
    let here = GeoPoint::from_degrees(54.14, -1.52).expect("valid");
    let ghost_offer = Event::OfferRegisteredV1(OfferRegisteredV1 {
        offer: EntityId([1; 16]),
        reference: Reference::parse("r", "ghost-offer").expect("valid"),
        provider: Provider::Volunteer(PersonId::parse("p", "vol-ghost").expect("valid")),
        spec: OfferSpecV1 {
            kinds: vec![Category::Food],
            skills: vec![],
            capacity: 1,
            location: here,
            travel_radius_m: 5_000,
            availability: vec![window],
        },
        personal: Personal::None,
    });
    let ghost_need = Event::NeedReportedV1(NeedReportedV1 {
        need: EntityId([2; 16]),
        reference: Reference::parse("r", "ghost-need").expect("valid"),
        spec: NeedSpecV1 {
            category: Category::Food,
            urgency: Urgency::new("u", 5).expect("valid"),
            party_size: 1,
            window,
            location: here,
            required_skills: vec![],
            required_verifications: vec![],
            vulnerable: false,
        },
        personal: Personal::None,
    });
    muster_tests::append_as_matcher(&nats, "ghost", "E07000166", at, "ghost-offer", ghost_offer)
        .await;
    muster_tests::append_as_matcher(&nats, "ghost", "E07000166", at, "ghost-need", ghost_need)
        .await;

    // Then a second volunteer and need in ripon: once it is proposed, the matcher has folded
    // the ghost's events before them and cut every round it would cut.
    c.register_offer(req(offer("o-late", "vol-late")))
        .await
        .expect("offer");
    c.report_need(req(report("n-late"))).await.expect("need");
    let log = log_until(
        &stream,
        Duration::from_secs(10),
        "ripon's second proposal",
        |log| proposed_in(log, "ripon") == 2,
    )
    .await;
    let ghost: Vec<_> = log
        .iter()
        .filter(|(_, _, e)| e.incident.as_str() == "ghost" && e.event.is_round_event())
        .map(|(seq, _, e)| (seq, e.event.type_name()))
        .collect();
    assert_eq!(ghost, vec![], "rounds for an incident never declared");

    matcher.stop().await;
}

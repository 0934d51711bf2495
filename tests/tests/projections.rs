//! The projections with a real nats-server, RocksDB and gRPC: read-your-writes with deadlines,
//! stable paging under ingest, resumable watches, set-aside poison, rebuilds and as-of views
//! that equal the live read model and an independent fold of the log.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use muster_proto::v1 as pb;
use muster_tests::workload::{self, req};
use muster_tests::{Intake, Nats, Projections, independent_fold, last_seq};
use tonic::Code;

const INCIDENT: &str = "thirsk";

/// nats-server, intake, the incident declared, projections running in `dir`.
async fn setup(dir: &std::path::Path) -> (Nats, Intake, Projections) {
    let nats = Nats::start().await;
    let intake = Intake::start(&nats.url()).await;
    let mut c = intake.client().await;
    workload::declare(&mut c, INCIDENT).await;
    let projections = Projections::start(&nats.url(), dir).await;
    (nats, intake, projections)
}

/// Another agency reporting `batches` bulks of `size` needs from `n{from}` on, `pause` apart.
async fn needs_writer(
    intake: &Intake,
    key: &'static str,
    from: usize,
    batches: usize,
    size: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut c = intake.client().await;
    tokio::spawn(async move {
        for b in 0..batches {
            let needs = workload::needs(from + b * size, size);
            workload::bulk(&mut c, INCIDENT, &format!("{key}{b}"), needs).await;
            tokio::time::sleep(pause).await;
        }
    })
}

fn with_deadline<T>(body: T, d: Duration) -> tonic::Request<T> {
    let mut r = req(body);
    r.set_timeout(d);
    r
}

#[tokio::test]
async fn a_query_with_a_minimum_sequence_waits_for_it_and_honours_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, intake, projections) = setup(dir.path()).await;
    let mut c = intake.client().await;
    let mut q = projections.client().await;

    // Read your writes: ask for the need with the sequence intake returned.
    for i in 0..20 {
        let seqs = workload::bulk(&mut c, INCIDENT, &format!("b{i}"), workload::needs(i, 1)).await;
        let need = q
            .get_need(req(workload::by_reference(
                INCIDENT,
                &format!("n{i}"),
                seqs[0],
            )))
            .await
            .expect("the need is there once its sequence has been applied")
            .into_inner();
        assert_eq!(need.last_sequence, seqs[0]);
        assert_eq!(need.status, pb::NeedStatus::Open as i32);
    }

    // A sequence the log has not reached: the answer comes, as DEADLINE_EXCEEDED, within
    // the deadline, and says where the projection is.
    let started = Instant::now();
    let err = q
        .get_need(with_deadline(
            workload::by_reference(INCIDENT, "n0", 1_000_000),
            Duration::from_millis(400),
        ))
        .await
        .expect_err("sequence 1,000,000 is never applied");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.message().contains("min_sequence 1000000") || err.message().contains("Timeout"),
        "{}",
        err.message()
    );

    // A waiting query is answered as soon as its sequence arrives.
    let (_, stream) = nats.log().await;
    let next = last_seq(&stream).await + 1;
    let mut q2 = q.clone();
    let waiting = tokio::spawn(async move {
        q2.get_need(with_deadline(
            workload::by_reference(INCIDENT, "n100", next),
            Duration::from_secs(20),
        ))
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    workload::bulk(&mut c, INCIDENT, "late", workload::needs(100, 1)).await;
    let need = waiting
        .await
        .expect("task")
        .expect("answered once the sequence is applied")
        .into_inner();
    assert_eq!(need.reference, "n100");
}

#[tokio::test]
async fn paging_is_stable_while_new_needs_arrive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_nats, intake, projections) = setup(dir.path()).await;
    let mut c = intake.client().await;
    let mut last = 0;
    for b in 0..3 {
        last = *workload::bulk(
            &mut c,
            INCIDENT,
            &format!("first{b}"),
            workload::needs(b * 100, 100),
        )
        .await
        .last()
        .expect("seq");
    }
    projections.wait_for(last).await;
    let mut q = projections.client().await;

    // Page through the open needs while another agency keeps reporting more.
    let writer = needs_writer(&intake, "more", 1_000, 10, 20, Duration::from_millis(20)).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = q
            .list_needs(req(pb::ListNeedsRequest {
                incident: INCIDENT.into(),
                page_size: 37,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.needs.iter().map(|n| n.reference.clone()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    writer.await.expect("writer");
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no need is returned twice");
    for i in 0..300 {
        assert!(
            unique.contains(&format!("n{i}")),
            "n{i} existed throughout but was skipped"
        );
    }

    // Filters and field-level errors.
    let urgent = q
        .list_needs(req(pb::ListNeedsRequest {
            incident: INCIDENT.into(),
            urgency: 5,
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .expect("filtered")
        .into_inner();
    assert!(!urgent.needs.is_empty());
    assert!(
        urgent
            .needs
            .iter()
            .all(|n| n.spec.as_ref().is_some_and(|s| s.urgency == 5))
    );
    let err = q
        .list_needs(req(pb::ListNeedsRequest {
            incident: INCIDENT.into(),
            page_size: 5_000,
            ..Default::default()
        }))
        .await
        .expect_err("page too large");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_size"), "{}", err.message());
    let err = q
        .list_needs(req(pb::ListNeedsRequest {
            incident: INCIDENT.into(),
            page_token: "zz".into(),
            ..Default::default()
        }))
        .await
        .expect_err("bad token");
    assert!(err.message().contains("page_token"), "{}", err.message());
}

/// Publishes bytes that are no envelope straight onto the log, as a buggy writer might.
async fn poison(nats: &Nats, subject: &str, payload: &'static [u8]) -> u64 {
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client);
    js.publish(subject.to_string(), payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence
}

#[tokio::test]
async fn a_poison_event_is_set_aside_and_the_events_after_it_are_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, intake, projections) = setup(dir.path()).await;
    let mut c = intake.client().await;
    workload::bulk(&mut c, INCIDENT, "before", workload::needs(0, 5)).await;
    let bad = poison(
        &nats,
        "muster.ev.thirsk.E07000164.need.0123",
        &[1, 0xff, 0xff, 0x07],
    )
    .await;
    let after = workload::bulk(&mut c, INCIDENT, "after", workload::needs(5, 5)).await;
    let mut q = projections.client().await;
    let need = q
        .get_need(req(workload::by_reference(
            INCIDENT,
            "n9",
            *after.last().expect("seq"),
        )))
        .await
        .expect("the need after the poison is applied")
        .into_inner();
    assert_eq!(need.reference, "n9");
    let aside = q
        .list_set_aside(req(pb::ListSetAsideRequest::default()))
        .await
        .expect("set-aside list")
        .into_inner();
    assert_eq!(aside.total, 1);
    assert_eq!(aside.events.len(), 1);
    assert_eq!(aside.events[0].sequence, bad);
    assert_eq!(
        aside.events[0].subject,
        "muster.ev.thirsk.E07000164.need.0123"
    );
    assert!(
        aside.events[0].reason.contains("undecodable"),
        "{}",
        aside.events[0].reason
    );
    let position = q
        .get_position(req(pb::GetPositionRequest {}))
        .await
        .expect("position")
        .into_inner();
    assert_eq!(position.set_aside, 1);
    assert!(position.applied_sequence >= *after.last().expect("seq"));
}

/// An agency's references are its own within one incident: the next incident's `n1` (a
/// council numbering each flood's cases from 1) is a new need, stored, folded and found under
/// its own incident, not taken for the first incident's (which the read models would refuse
/// as reported twice, leaving the acknowledged need invisible).
#[tokio::test]
async fn a_reference_reused_in_another_incident_names_a_new_entity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_nats, intake, projections) = setup(dir.path()).await;
    let mut c = intake.client().await;
    workload::declare(&mut c, "ripon").await;
    let thirsk = workload::bulk(&mut c, INCIDENT, "thirsk", workload::needs(0, 3)).await;
    let ripon = workload::bulk(&mut c, "ripon", "ripon", workload::needs(0, 3)).await;
    workload::bulk(&mut c, INCIDENT, "thirsk-o", workload::offers(0, 2)).await;
    let last = workload::bulk(&mut c, "ripon", "ripon-o", workload::offers(0, 2)).await;
    let last = *last.last().expect("seq");

    let mut q = projections.client().await;
    let need = |incident: &'static str| {
        let mut q = q.clone();
        async move {
            q.get_need(req(workload::by_reference(incident, "n1", last)))
                .await
                .expect("need n1")
                .into_inner()
        }
    };
    let (first, second) = (need(INCIDENT).await, need("ripon").await);
    assert_ne!(first.id, second.id);
    assert_eq!(
        (first.incident.as_str(), first.created_sequence),
        (INCIDENT, thirsk[1])
    );
    assert_eq!(
        (second.incident.as_str(), second.created_sequence),
        ("ripon", ripon[1])
    );
    let offer = q
        .get_offer(req(workload::by_reference("ripon", "o1", last)))
        .await
        .expect("offer o1 of ripon")
        .into_inner();
    assert_eq!(offer.incident, "ripon");
    let listed = q
        .list_needs(req(pb::ListNeedsRequest {
            incident: "ripon".into(),
            min_sequence: last,
            ..Default::default()
        }))
        .await
        .expect("ripon's needs")
        .into_inner();
    assert_eq!(listed.needs.len(), 3);
    let aside = q
        .list_set_aside(req(pb::ListSetAsideRequest::default()))
        .await
        .expect("set-aside list")
        .into_inner();
    assert_eq!(aside.total, 0, "{:?}", aside.events);

    // A reference alone no longer names one need: the incident is asked for by name.
    let err = q
        .get_need(req(workload::by_reference("", "n1", last)))
        .await
        .expect_err("a reference without its incident");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "invalid request: incident: is required with reference (a reference names an entity within one incident)"
    );
}

/// A person's verifications, status only: every check recorded for them, or those of one
/// incident (a person id is of an incident's scheme), revocations included.
#[tokio::test]
async fn a_persons_verifications_are_listed_by_incident_with_their_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_nats, intake, projections) = setup(dir.path()).await;
    let mut c = intake.client().await;
    workload::declare(&mut c, "ripon").await;
    let record = |incident: &str, reference: &str, person: &str, kind: pb::VerificationKind| {
        pb::RecordVerificationRequest {
            idempotency_key: format!("{incident}-{reference}"),
            incident: incident.into(),
            reference: reference.into(),
            person: person.into(),
            kind: kind as i32,
            qualification: String::new(),
            issuer: "dbs".into(),
            issued_at: workload::ts(1_790_000_000),
            expires_at: workload::ts(1_900_000_000),
            personal: None,
        }
    };
    let mut recorded = Vec::new();
    for r in [
        record(INCIDENT, "c1", "vol-1", pb::VerificationKind::Identity),
        record(
            INCIDENT,
            "c2",
            "vol-1",
            pb::VerificationKind::CriminalRecordEnhanced,
        ),
        record(INCIDENT, "c3", "vol-2", pb::VerificationKind::Identity),
        record("ripon", "c1", "vol-1", pb::VerificationKind::Identity),
    ] {
        let reply = c
            .record_verification(req(r))
            .await
            .expect("record")
            .into_inner();
        recorded.push(reply);
    }
    let revoked = c
        .revoke_verification(req(pb::RevokeVerificationRequest {
            idempotency_key: "revoke-c2".into(),
            incident: INCIDENT.into(),
            verification_id: recorded[1].entity_id.clone(),
            expected_version: None,
            reason: "barred".into(),
        }))
        .await
        .expect("revoke")
        .into_inner();

    let mut q = projections.client().await;
    let list = |person: &str, incident: &str| {
        let request = pb::ListVerificationsRequest {
            person: person.into(),
            min_sequence: revoked.sequence,
            incident: incident.into(),
        };
        let mut q = q.clone();
        async move {
            let mut listed = q
                .list_verifications(req(request))
                .await
                .expect("verifications")
                .into_inner()
                .verifications;
            listed.sort_by_key(|v| v.last_sequence);
            listed
        }
    };
    let everywhere = list("vol-1", "").await;
    assert_eq!(
        everywhere
            .iter()
            .map(|v| (v.incident.as_str(), v.id.as_str()))
            .collect::<Vec<_>>(),
        [
            (INCIDENT, recorded[0].entity_id.as_str()),
            ("ripon", recorded[3].entity_id.as_str()),
            (INCIDENT, recorded[1].entity_id.as_str()),
        ],
        "by last change: the revocation moved c2 last"
    );
    let here = list("vol-1", INCIDENT).await;
    assert_eq!(here.len(), 2);
    let (identity, enhanced) = (&here[0], &here[1]);
    assert_eq!(
        (identity.kind, identity.revoked, identity.issuer.as_str()),
        (pb::VerificationKind::Identity as i32, false, "dbs")
    );
    assert_eq!(identity.expires_at, workload::ts(1_900_000_000));
    assert_eq!(
        (
            enhanced.kind,
            enhanced.revoked,
            enhanced.revoked_reason.as_str(),
            enhanced.last_sequence
        ),
        (
            pb::VerificationKind::CriminalRecordEnhanced as i32,
            true,
            "barred",
            revoked.sequence
        )
    );
    assert_eq!(list("vol-1", "ripon").await.len(), 1);
    assert_eq!(list("vol-2", INCIDENT).await.len(), 1);
    assert!(list("vol-3", "").await.is_empty());
    let err = q
        .list_verifications(req(pb::ListVerificationsRequest {
            person: "vol 1".into(),
            ..Default::default()
        }))
        .await
        .expect_err("not a person id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("invalid request: person: "),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn the_watch_stream_resumes_from_a_sequence_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, intake, projections) = setup(dir.path()).await;
    let mut c = intake.client().await;
    workload::bulk(&mut c, INCIDENT, "o", workload::offers(0, 30)).await;
    let mut q = projections.client().await;

    // Watch from the start, take some changes, hang up.
    let mut watch = q
        .watch_incident(req(pb::WatchIncidentRequest {
            incident: INCIDENT.into(),
            after_sequence: 0,
        }))
        .await
        .expect("watch")
        .into_inner();
    let mut got = Vec::new();
    while got.len() < 12 {
        let change = watch.next().await.expect("a change").expect("ok");
        got.push(change.sequence);
    }
    drop(watch);

    // More happens while nobody watches; then resume after the last change received, while
    // more still arrives.
    for b in 0..4 {
        workload::bulk(
            &mut c,
            INCIDENT,
            &format!("n{b}"),
            workload::needs(b * 10, 10),
        )
        .await;
    }
    let mut watch = q
        .watch_incident(req(pb::WatchIncidentRequest {
            incident: INCIDENT.into(),
            after_sequence: *got.last().expect("some"),
        }))
        .await
        .expect("resume")
        .into_inner();
    let writer = needs_writer(&intake, "later", 40, 4, 10, Duration::ZERO).await;
    writer.await.expect("writer");
    let (_, stream) = nats.log().await;
    let end = last_seq(&stream).await;
    while *got.last().expect("some") < end {
        let change = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("changes keep coming")
            .expect("a change")
            .expect("ok");
        got.push(change.sequence);
    }
    // Exactly the incident's changes in the log, in order, each once.
    let expected: Vec<u64> = muster_tests::read_all(&stream)
        .await
        .iter()
        .filter(|(_, _, e)| {
            e.incident.as_str() == INCIDENT && !matches!(e.event, muster_schema::Event::TickV1(_))
        })
        .map(|(s, _, _)| *s)
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_rebuild_equals_the_live_read_model_and_an_independent_fold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live_dir = dir.path().join("live");
    let (nats, intake, projections) = setup(&live_dir).await;
    let mut c = intake.client().await;
    // A realistic log: offers, needs, the matcher's rounds, answers, and a poison event.
    workload::bulk(&mut c, INCIDENT, "o", workload::offers(0, 40)).await;
    let matcher = muster_tests::Matcher::start(muster_matcher::Config::new(nats.url()));
    for b in 0..5 {
        workload::bulk(
            &mut c,
            INCIDENT,
            &format!("n{b}"),
            workload::needs(b * 12, 12),
        )
        .await;
    }
    poison(
        &nats,
        "muster.ev.thirsk.E07000164.offer.feed",
        b"not an event",
    )
    .await;
    let (_, stream) = nats.log().await;
    // Wait until the matcher has proposed, then answer some proposals.
    let mut q = projections.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let assignments = loop {
        let end = last_seq(&stream).await;
        let page = q
            .list_assignments(req(pb::ListAssignmentsRequest {
                incident: INCIDENT.into(),
                page_size: 1000,
                min_sequence: end,
                ..Default::default()
            }))
            .await
            .expect("assignments")
            .into_inner();
        if page.assignments.len() >= 40 {
            break page.assignments;
        }
        assert!(
            Instant::now() < deadline,
            "the matcher proposed only {}",
            page.assignments.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (i, a) in assignments.iter().take(20).enumerate() {
        c.respond_to_assignment(req(pb::RespondToAssignmentRequest {
            idempotency_key: format!("r{i}"),
            incident: INCIDENT.into(),
            assignment_id: a.id.clone(),
            response: if i % 2 == 0 {
                pb::AssignmentResponse::Accept
            } else {
                pb::AssignmentResponse::Decline
            } as i32,
            reason: String::new(),
        }))
        .await
        .expect("respond");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    matcher.stop().await;
    let end = last_seq(&stream).await;
    projections.wait_for(end).await;

    // The dashboard and the read model agree with what happened.
    let dash = q
        .get_dashboard(req(pb::GetDashboardRequest {
            incident: INCIDENT.into(),
            min_sequence: end,
            ..Default::default()
        }))
        .await
        .expect("dashboard")
        .into_inner();
    let count =
        |list: &[pb::Count], key: &str| list.iter().find(|c| c.key == key).map_or(0, |c| c.count);
    assert_eq!(
        dash.needs_by_status.iter().map(|c| c.count).sum::<i64>(),
        60
    );
    assert_eq!(count(&dash.needs_by_status, "accepted"), 10);
    assert_eq!(count(&dash.assignments_by_status, "declined"), 10);
    assert!(dash.rounds > 0);
    assert_eq!(dash.providers_available, 40);
    assert!(
        dash.time_to_match
            .iter()
            .any(|t| t.urgency == 0 && t.matched >= 40)
    );

    projections
        .shutdown()
        .await
        .expect("projections stopped cleanly");
    let live = muster_projections::db::Db::open(&live_dir).expect("open live");
    let live_sum = live.checksum().expect("checksum");
    assert_eq!(live.position().expect("position"), end);
    drop(live);

    let memory = independent_fold(&stream).await;
    assert_eq!(
        live_sum,
        memory.checksum(),
        "the live read model is the fold of the log"
    );

    let report =
        muster_projections::replay::rebuild(&nats.url(), &Default::default(), &live_dir, |_| {})
            .await
            .expect("rebuild");
    assert_eq!(report.position, end);
    assert_eq!(report.set_aside, 1);
    let rebuilt = muster_projections::db::Db::open(&live_dir).expect("open rebuilt");
    assert_eq!(
        rebuilt.checksum().expect("checksum"),
        live_sum,
        "rebuild equals live"
    );
    let _ = intake;
}

#[tokio::test]
async fn an_as_of_view_shows_the_past_and_serves_read_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (nats, intake, _projections) = setup(&dir.path().join("live")).await;
    let mut c = intake.client().await;
    let first = workload::bulk(&mut c, INCIDENT, "a", workload::needs(0, 10)).await;
    let cut = *first.last().expect("seq");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64;
    tokio::time::sleep(Duration::from_millis(50)).await;
    workload::bulk(&mut c, INCIDENT, "b", workload::needs(10, 10)).await;

    // As of a log time: everything recorded up to it, nothing after.
    let by_time = muster_projections::replay::build(
        &nats.url(),
        &Default::default(),
        &dir.path().join("as-of-time"),
        muster_projections::replay::Until::Time(muster_schema::Timestamp(between)),
        |_| {},
    )
    .await
    .expect("as-of-time build");
    assert_eq!(
        by_time.position, cut,
        "the picture as of the time between the two bulks"
    );

    let past = dir.path().join("as-of");
    let report = muster_projections::replay::build(
        &nats.url(),
        &Default::default(),
        &past,
        muster_projections::replay::Until::Seq(cut),
        |_| {},
    )
    .await
    .expect("as-of build");
    assert_eq!(report.position, cut);
    // The same picture as folding the log's first `cut` events in memory.
    let (_, stream) = nats.log().await;
    let log = muster_tests::read_raw(&stream).await;
    let mut memory = muster_readmodel::MemStore::default();
    memory
        .fold_all(
            log.iter()
                .filter(|(s, _, _)| *s <= cut)
                .map(|(s, sub, e)| (*s, sub.as_str(), e)),
        )
        .expect("fold");

    let snapshot = muster_projections::Projections::open_read_only(&past).expect("read-only");
    assert_eq!(snapshot.applied(), cut);
    assert_eq!(
        snapshot.db().checksum().expect("checksum"),
        memory.checksum()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(muster_projections::serve(snapshot, listener, async {
        let _ = stopped.await;
    }));
    let mut q = muster_proto::v1::query_client::QueryClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    q.get_need(req(workload::by_reference(INCIDENT, "n9", 0)))
        .await
        .expect("n9 was there at the cut");
    let err = q
        .get_need(req(workload::by_reference(INCIDENT, "n10", 0)))
        .await
        .expect_err("n10 came after the cut");
    assert_eq!(err.code(), Code::NotFound);
    let err = q
        .get_need(req(workload::by_reference(INCIDENT, "n9", cut + 1)))
        .await
        .expect_err("beyond the snapshot");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let _ = stop.send(());
    server.await.expect("server").expect("served");
}

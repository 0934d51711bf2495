//! The matcher as operators run it: the real `muster matcher` process against a real
//! nats-server, fed through real gRPC intake, killed with SIGKILL in the middle of a surge and
//! restarted; then `muster audit verify` replays the log.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use muster_proto::v1 as pb;
use muster_proto::v1::intake_client::IntakeClient;
use muster_schema::Event;
use muster_tests::{Intake, Nats, read_all};
use tokio::process::{Child, Command};

const INCIDENT: &str = "selby-floods";

fn req<T>(body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-muster-agency", "selby-council".parse().expect("ascii"));
    r
}

fn ts(s: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: s,
        nanos: 0,
    })
}

const T0: i64 = 1_800_000_000;

fn matcher(nats_url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_muster"))
        .args(["matcher", "--nats-url", nats_url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn muster matcher")
}

fn offer_item(i: usize) -> pb::BulkItem {
    pb::BulkItem {
        command: Some(pb::bulk_item::Command::RegisterOffer(
            pb::RegisterOfferRequest {
                idempotency_key: String::new(),
                incident: String::new(),
                partition: "E07000169".into(),
                reference: format!("vol-{i}"),
                provider: Some(pb::Provider {
                    kind: pb::ProviderKind::Volunteer as i32,
                    id: format!("vol-{i}"),
                }),
                offer: Some(pb::OfferSpec {
                    kinds: vec![pb::Category::Food as i32, pb::Category::CareVisit as i32],
                    skills: vec![],
                    capacity: 2,
                    location: Some(pb::Location {
                        lat: 53.78 + (i % 10) as f64 * 0.002,
                        lon: -1.07,
                    }),
                    travel_radius_m: 8_000,
                    availability: vec![pb::TimeWindow {
                        start: ts(T0),
                        end: ts(T0 + 86_400),
                    }],
                }),
                personal: None,
            },
        )),
    }
}

fn need_item(i: usize) -> pb::BulkItem {
    pb::BulkItem {
        command: Some(pb::bulk_item::Command::ReportNeed(pb::ReportNeedRequest {
            idempotency_key: String::new(),
            incident: String::new(),
            partition: "E07000169".into(),
            reference: format!("need-{i}"),
            need: Some(pb::NeedSpec {
                category: if i.is_multiple_of(2) {
                    pb::Category::Food as i32
                } else {
                    pb::Category::CareVisit as i32
                },
                urgency: (i % 5) as u32 + 1,
                party_size: 1,
                window: Some(pb::TimeWindow {
                    start: ts(T0),
                    end: ts(T0 + 7_200),
                }),
                location: Some(pb::Location {
                    lat: 53.785,
                    lon: -1.071,
                }),
                required_skills: vec![],
                required_verifications: if i.is_multiple_of(4) {
                    vec![pb::VerificationRequirement {
                        kind: pb::VerificationKind::CriminalRecordEnhanced as i32,
                        qualification: String::new(),
                    }]
                } else {
                    vec![]
                },
                vulnerable: i.is_multiple_of(4),
            }),
            personal: None,
        })),
    }
}

fn verification_item(i: usize) -> pb::BulkItem {
    pb::BulkItem {
        command: Some(pb::bulk_item::Command::RecordVerification(
            pb::RecordVerificationRequest {
                idempotency_key: String::new(),
                incident: String::new(),
                reference: format!("dbs-{i}"),
                person: format!("vol-{i}"),
                kind: pb::VerificationKind::CriminalRecordEnhanced as i32,
                qualification: String::new(),
                issuer: "dbs".into(),
                issued_at: ts(T0 - 86_400),
                expires_at: None,
                personal: None,
            },
        )),
    }
}

async fn bulk(
    client: &mut IntakeClient<tonic::transport::Channel>,
    key: String,
    items: Vec<pb::BulkItem>,
) {
    let r = pb::SubmitBulkRequest {
        idempotency_key: key,
        incident: INCIDENT.into(),
        items,
    };
    client.submit_bulk(req(r)).await.expect("bulk stored");
}

/// Waits until the log has not grown for `quiet`.
async fn settle(nats: &Nats, quiet: Duration) -> Vec<(u64, String, muster_schema::Envelope)> {
    let (_, stream) = nats.log().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = read_all(&stream).await;
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = read_all(&stream).await;
        if now.len() != last.len() {
            since = Instant::now();
            last = now;
        } else if since.elapsed() >= quiet {
            return now;
        }
    }
    panic!("the log never settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matcher_killed_mid_surge_leaves_no_duplicate_and_the_audit_passes() {
    let nats = Nats::start().await;
    let intake = Intake::start(&nats.url()).await;
    let mut client = intake.client().await;
    client
        .declare_incident(req(pb::DeclareIncidentRequest {
            idempotency_key: "declare".into(),
            incident: INCIDENT.into(),
            name: "Selby floods".into(),
            partitions: vec![],
            categories: vec![],
            policy: None,
        }))
        .await
        .expect("declare");
    bulk(
        &mut client,
        "offers".into(),
        (0..60).map(offer_item).collect(),
    )
    .await;
    bulk(
        &mut client,
        "verifications".into(),
        (0..12).map(verification_item).collect(),
    )
    .await;

    let (_, stream) = nats.log().await;
    let rounds_so_far = |log: &[(u64, String, muster_schema::Envelope)]| {
        log.iter()
            .filter(|(_, _, e)| e.event.round_record().is_some_and(|r| r.part == 0))
            .count()
    };
    // Needs stream in; the matcher is killed with SIGKILL in the middle and restarted while
    // they keep coming.
    let mut running = Some(matcher(&nats.url()));
    let mut rounds_at_restart = 0;
    for b in 0..20 {
        bulk(
            &mut client,
            format!("needs-{b}"),
            (b * 8..b * 8 + 8).map(need_item).collect(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(80)).await;
        if b == 8 {
            let rounds = rounds_so_far(&read_all(&stream).await);
            assert!(
                rounds >= 2,
                "the first matcher cut rounds before the kill: {rounds}"
            );
            let mut first = running.take().expect("running");
            first.start_kill().expect("kill -9 the matcher");
            first.wait().await.expect("reaped");
        }
        if b == 10 {
            rounds_at_restart = rounds_so_far(&read_all(&stream).await);
            running = Some(matcher(&nats.url()));
        }
    }
    let log = settle(&nats, Duration::from_millis(1_500)).await;
    if let Some(mut m) = running.take() {
        m.start_kill().expect("stop");
    }
    assert!(
        rounds_so_far(&log) >= rounds_at_restart + 2,
        "the restarted matcher went on cutting live rounds"
    );

    // No need holds two live assignments; no round recorded twice; decisions unique.
    let mut live: BTreeMap<muster_schema::EntityId, muster_schema::EntityId> = BTreeMap::new();
    let mut of_assignment: BTreeMap<muster_schema::EntityId, muster_schema::EntityId> =
        BTreeMap::new();
    let mut rounds = BTreeSet::new();
    let mut proposals = 0;
    for (seq, _, env) in &log {
        match &env.event {
            Event::AssignmentProposedV1(p) => {
                proposals += 1;
                assert!(
                    of_assignment.insert(p.assignment, p.need).is_none(),
                    "assignment {} proposed twice (seq {seq})",
                    p.assignment
                );
                assert!(
                    live.insert(p.need, p.assignment).is_none(),
                    "need {} assigned twice (seq {seq})",
                    p.need
                );
            }
            Event::AssignmentExpiredV1(e) => {
                live.remove(&of_assignment[&e.assignment]);
            }
            Event::AssignmentCancelledV1(e) => {
                live.remove(&of_assignment[&e.assignment]);
            }
            Event::RoundRecordedV3(r) => assert!(
                rounds.insert((r.through_seq, r.part)),
                "round {} part {} recorded twice",
                r.through_seq,
                r.part
            ),
            _ => {}
        }
    }
    assert!(
        proposals >= 60,
        "most of the 160 needs found a volunteer: {proposals}"
    );

    // Capacity and verifications hold, folded as the matcher folds.
    let mut state = muster_matching::State::default();
    for (seq, _, env) in &log {
        state.apply(*seq, env);
    }
    for o in &state.offers {
        assert!(
            o.committed <= u32::from(o.spec.capacity),
            "offer {} over capacity",
            o.id
        );
    }
    for a in state.assignments.values() {
        let need = &state.needs[&a.need];
        assert!(muster_matching::rules::verifications_hold(
            &need.spec.required_verifications,
            state.held_by(&a.provider),
            state.now
        ));
    }

    let audit = Command::new(env!("CARGO_BIN_EXE_muster"))
        .args(["audit", "verify", "--nats-url", &nats.url()])
        .output()
        .await
        .expect("run muster audit verify");
    let out = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.status.success() && out.contains("audit passed"),
        "{out}\n{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    assert!(out.contains(&format!("{} rounds", rounds.len())), "{out}");
}

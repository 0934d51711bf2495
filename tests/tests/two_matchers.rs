//! Two matchers on one log (a second started by mistake, or an old one not yet gone during a
//! restart) must not both decide an incident: the design has a single writer of assignments per
//! incident. Each round is recorded only if no other round of the incident was recorded since
//! the last one its matcher read; a matcher overtaken gives its round up and reads the other's.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_schema::assignment::{Move, Stage};
use muster_schema::{EntityId, Event};
use muster_tests::workload::{self, req};
use muster_tests::{Intake, Matcher, Nats, log_until, read_all};

const INCIDENT: &str = "thirsk";

/// A matcher of `shard` on the log at `url`, ticking every 300 ms.
fn matcher(url: &str, shard: muster_matcher::Shard) -> Matcher {
    let mut config = muster_matcher::Config::new(url);
    config.tick_every = Duration::from_millis(300);
    config.shard = shard;
    Matcher::start(config)
}

/// The matcher's state over the log's events up to `through` (inclusive).
fn state_through(
    log: &[(u64, String, muster_schema::Envelope)],
    through: u64,
) -> muster_matching::State {
    let mut state = muster_matching::State::default();
    for (seq, _, env) in log.iter().filter(|(seq, _, _)| *seq <= through) {
        state.apply(*seq, env);
    }
    state
}

/// A writer that decided a round before another's round was recorded (a second matcher, slower
/// or started earlier) is refused: its round would propose a need the other already proposed.
#[tokio::test]
async fn a_round_decided_without_the_latest_recorded_round_is_refused() {
    let nats = Nats::start().await;
    let intake = Intake::start(&nats.url()).await;
    let mut c = intake.client().await;
    workload::declare(&mut c, INCIDENT).await;
    workload::bulk(&mut c, INCIDENT, "offers", workload::offers(0, 4)).await;
    let first = workload::bulk(&mut c, INCIDENT, "need-0", workload::needs(0, 1)).await[0];
    let second = workload::bulk(&mut c, INCIDENT, "need-1", workload::needs(1, 1)).await[0];
    let (client, stream) = nats.log().await;
    let (appender, _) = muster_log::Appender::start(client, Default::default());
    let reader = muster_log::LogReader::new(stream.clone());
    let incident = muster_schema::IncidentId::parse("i", INCIDENT).expect("valid");
    let log = read_all(&stream).await;

    // One writer decided when only the first need was on the log; another decides with both,
    // and records its round first.
    let early = state_through(&log, first);
    let late = state_through(&log, second);
    let stale = muster_matching::round::round(&early);
    let fresh = muster_matching::round::round(&late);
    assert_eq!((stale.proposals.len(), fresh.proposals.len()), (1, 2));
    // Appends `round`, decided over `state`, as a matcher that has read no round record yet.
    let append = |state: &muster_matching::State, round: &muster_matching::round::Round| {
        let parts = muster_matcher::service::round_appends(&incident, state, round);
        let (appender, reader, incident, s) = (&appender, &reader, &incident, round.through_seq);
        async move {
            muster_matcher::service::append_round(appender, reader, incident, s, parts, 0)
                .await
                .expect("append")
        }
    };
    let stored = append(&late, &fresh).await;
    assert_eq!(stored, muster_matcher::service::RoundAppend::Stored);
    // The stale round expects no round recorded yet: refused, nothing of it stored.
    let refused = append(&early, &stale).await;
    assert_eq!(
        refused,
        muster_matcher::service::RoundAppend::Overtaken { parts_stored: 0 }
    );
    let log = read_all(&stream).await;
    assert_eq!(
        muster_tests::proposals_per_need(&log)
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![1, 1],
        "each need proposed once"
    );
    // The same round again (a retry whose outcome was unknown) counts as stored.
    let again = append(&late, &fresh).await;
    assert_eq!(again, muster_matcher::service::RoundAppend::Stored);
    assert_eq!(read_all(&stream).await.len(), log.len(), "stored once");
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    assert_eq!(report.divergence, None);
    assert_eq!(report.rounds_verified, 1);
}

#[tokio::test]
async fn two_matchers_on_one_log_never_propose_a_need_or_an_offer_twice() {
    let nats = Nats::start().await;
    let intake = Intake::start(&nats.url()).await;
    let mut c = intake.client().await;
    workload::declare(&mut c, INCIDENT).await;
    let all = muster_matcher::Shard::ALL;
    let matchers = [matcher(&nats.url(), all), matcher(&nats.url(), all)];

    // Volunteers and needs arrive in small bulks, so that rounds are cut all along; some
    // volunteers decline, so needs are proposed again.
    for i in 0..30 {
        workload::bulk(
            &mut c,
            INCIDENT,
            &format!("offers-{i}"),
            workload::offers(i * 4, 4),
        )
        .await;
        workload::bulk(
            &mut c,
            INCIDENT,
            &format!("needs-{i}"),
            workload::needs(i * 3, 3),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, stream) = nats.log().await;
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        for (_, _, e) in read_all(&stream).await {
            if let Event::AssignmentProposedV1(p) = &e.event
                && answered.insert(p.assignment)
                && p.assignment.0[0] % 4 == 0
            {
                let _ = c
                    .respond_to_assignment(req(muster_proto::v1::RespondToAssignmentRequest {
                        idempotency_key: format!("decline-{}", p.assignment),
                        incident: INCIDENT.into(),
                        assignment_id: p.assignment.to_hex(),
                        response: muster_proto::v1::AssignmentResponse::Decline as i32,
                        reason: "busy".into(),
                    }))
                    .await;
            }
        }
    }
    for m in matchers {
        m.stop().await;
    }

    // Every proposal on the log, by the rule every reader applies: a need has at most one live
    // assignment, an offer (capacity 1) at most one.
    let log = read_all(&stream).await;
    let mut stage: BTreeMap<EntityId, (Stage, EntityId, EntityId)> = BTreeMap::new();
    let mut proposals = 0;
    for (seq, _, e) in &log {
        match &e.event {
            Event::AssignmentProposedV1(p) => {
                proposals += 1;
                let live = |f: &dyn Fn(&(Stage, EntityId, EntityId)) -> bool| {
                    stage.values().filter(|s| s.0.is_live() && f(s)).count()
                };
                assert_eq!(
                    live(&|s| s.1 == p.need),
                    0,
                    "seq {seq}: need {} proposed while it had a live assignment",
                    p.need
                );
                assert_eq!(
                    live(&|s| s.2 == p.offer),
                    0,
                    "seq {seq}: offer {} proposed beyond its capacity",
                    p.offer
                );
                stage.insert(p.assignment, (Stage::Proposed, p.need, p.offer));
            }
            event => {
                if let muster_schema::events::EntityRef::Entity(
                    muster_schema::ids::EntityKind::Assignment,
                    id,
                ) = event.entity()
                    && let Some(s) = stage.get_mut(&id)
                    && let Move::To(next) = s.0.on(event)
                {
                    s.0 = next;
                }
            }
        }
    }
    assert!(proposals >= 90, "the needs were proposed: {proposals}");
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    assert_eq!(report.divergence, None);
}

/// Matchers given the shards 1/2 and 2/2 share a log's incidents: each decides only its own.
#[tokio::test]
async fn matchers_given_shards_share_the_incidents_between_them() {
    let shards = [
        muster_matcher::Shard { index: 0, of: 2 },
        muster_matcher::Shard { index: 1, of: 2 },
    ];
    // One incident of each shard.
    let names: Vec<String> = shards
        .iter()
        .map(|shard| {
            (0..)
                .map(|i| format!("town-{i}"))
                .find(|n| shard.owns(&muster_schema::IncidentId::parse("i", n).expect("valid")))
                .expect("an incident of the shard")
        })
        .collect();
    let nats = Nats::start().await;
    let intake = Intake::start(&nats.url()).await;
    let mut c = intake.client().await;
    for name in &names {
        workload::declare(&mut c, name).await;
        workload::bulk(&mut c, name, &format!("{name}-o"), workload::offers(0, 3)).await;
        workload::bulk(&mut c, name, &format!("{name}-n"), workload::needs(0, 3)).await;
    }
    let (_, stream) = nats.log().await;
    let proposed_in = |log: &[(u64, String, muster_schema::Envelope)], name: &str| {
        log.iter()
            .filter(|(_, _, e)| {
                e.incident.as_str() == name && matches!(e.event, Event::AssignmentProposedV1(_))
            })
            .count()
    };

    // The first shard's matcher decides its incident, and leaves the other alone.
    let first = matcher(&nats.url(), shards[0]);
    log_until(&stream, Duration::from_secs(10), &names[0], |log| {
        proposed_in(log, &names[0]) == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proposed_in(&read_all(&stream).await, &names[1]), 0);
    // The second shard's matcher decides the other.
    let second = matcher(&nats.url(), shards[1]);
    let log = log_until(&stream, Duration::from_secs(10), &names[1], |log| {
        proposed_in(log, &names[1]) == 3
    })
    .await;
    assert_eq!(proposed_in(&log, &names[0]), 3, "nothing more in the first");
    first.stop().await;
    second.stop().await;
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    assert_eq!(report.divergence, None);
    assert_eq!(report.rounds_verified, 2);
}

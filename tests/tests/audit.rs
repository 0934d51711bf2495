//! `muster audit verify` reproduces honest rounds and catches a tampered one.

use muster_log::{Appender, Expect, Outgoing};
use muster_matching::round::round_events;
use muster_schema::events::*;
use muster_schema::*;
use muster_tests::{Nats, read_all};

const T0: i64 = 1_800_000_000_000_000;

fn env(seq_hint: u64, partition: &str, event: Event) -> Envelope {
    let partition = if partition == "_" {
        PartitionCode::incident_wide()
    } else {
        PartitionCode::parse("p", partition).expect("valid")
    };
    Envelope::generated(
        seq_hint,
        IncidentId::parse("i", "audit").expect("valid"),
        partition,
        Timestamp(T0),
        AgencyId::parse("a", "agency").expect("valid"),
        event,
    )
}

fn out(e: &Envelope) -> Outgoing {
    Outgoing {
        subject: subject::for_envelope(e),
        payload: e.encode().into(),
        msg_id: e.idempotency_key.clone(),
        expect: Expect::Anything,
    }
}

/// Appends a small incident, then the round the current engine decides for it, with `tamper`
/// applied.
async fn log_with_round(nats: &Nats, tamper: impl Fn(&mut Event)) {
    log_with_round_by(nats, muster_matching::round::ENGINE, tamper).await
}

/// As [`log_with_round`], the round decided by `engine`.
async fn log_with_round_by(nats: &Nats, engine: u16, tamper: impl Fn(&mut Event)) {
    let (client, _) = nats.log().await;
    let (appender, _) = Appender::start(client, Default::default());
    let window = TimeWindow::new(T0, T0 + 3_600_000_000).expect("valid");
    let at = GeoPoint::from_degrees(53.9, -1.1).expect("valid");
    let inputs = [
        env(
            1,
            "_",
            Event::IncidentDeclaredV1(IncidentDeclaredV1 {
                incident: IncidentId::parse("i", "audit").expect("valid"),
                name: "audit".into(),
                partitions: vec![],
                categories: vec![],
                policy: PolicyV1::default(),
            }),
        ),
        env(
            2,
            "A1",
            Event::OfferRegisteredV1(OfferRegisteredV1 {
                offer: EntityId([2; 16]),
                reference: Reference::parse("r", "o").expect("valid"),
                provider: Provider::Volunteer(PersonId::parse("p", "vol-1").expect("valid")),
                spec: OfferSpecV1 {
                    kinds: vec![Category::Food],
                    skills: vec![],
                    capacity: 1,
                    location: at,
                    travel_radius_m: 5_000,
                    availability: vec![window],
                },
                personal: Personal::None,
            }),
        ),
        env(
            3,
            "A1",
            Event::NeedReportedV1(NeedReportedV1 {
                need: EntityId([3; 16]),
                reference: Reference::parse("r", "n").expect("valid"),
                spec: NeedSpecV1 {
                    category: Category::Food,
                    urgency: Urgency::new("u", 4).expect("valid"),
                    party_size: 1,
                    window,
                    location: at,
                    required_skills: vec![],
                    required_verifications: vec![],
                    vulnerable: false,
                },
                personal: Personal::None,
            }),
        ),
    ];
    let mut state = muster_matching::State::default();
    for (i, e) in inputs.iter().enumerate() {
        appender.append(vec![out(e)]).await.expect("append input");
        state.apply(i as u64 + 1, e);
    }
    let incident = IncidentId::parse("i", "audit").expect("valid");
    let r = muster_matching::round::round_with(&state, engine).expect("a known engine");
    assert_eq!(r.proposals.len(), 1);
    let decisions: Vec<Outgoing> = round_events(&state, &incident, &r)
        .into_iter()
        .enumerate()
        .map(|(i, (p, mut e))| {
            tamper(&mut e);
            out(&env(100 + i as u64, p.as_str(), e))
        })
        .collect();
    appender.append(decisions).await.expect("append round");
}

#[tokio::test]
async fn an_honest_round_is_reproduced() {
    let nats = Nats::start().await;
    log_with_round(&nats, |_| {}).await;
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    assert_eq!(report.divergence, None);
    assert_eq!(
        (
            report.rounds_verified,
            report.decisions_verified,
            report.events
        ),
        (1, 2, 5)
    );
}

#[tokio::test]
async fn a_round_recorded_before_engines_were_named_is_replayed_with_engine_1() {
    let nats = Nats::start().await;
    // What the matcher wrote before rounds named their engine: a RoundRecordedV1.
    log_with_round_by(&nats, 1, |e| {
        if let Event::RoundRecordedV3(r) = e {
            *e = Event::RoundRecordedV1(RoundRecordedV1 {
                round: r.round,
                through_seq: r.through_seq,
                log_time: r.log_time,
                policy_version: r.policy_version,
                proposed: r.proposed,
                expired: r.expired,
                cancelled: r.cancelled,
                total_score: r.total_score,
            });
        }
    })
    .await;
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    assert_eq!(report.divergence, None);
    assert_eq!((report.rounds_verified, report.decisions_verified), (1, 2));
}

#[tokio::test]
async fn a_round_by_every_engine_this_build_knows_is_verified_with_that_engine() {
    for engine in 1..=muster_matching::round::LATEST_ENGINE {
        let nats = Nats::start().await;
        log_with_round_by(&nats, engine, |_| {}).await;
        let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
            .await
            .expect("audit");
        assert_eq!(report.divergence, None, "engine {engine}");
        assert_eq!(
            (report.rounds_verified, report.decisions_verified),
            (1, 2),
            "engine {engine}"
        );
    }
}

#[tokio::test]
async fn a_round_by_an_engine_this_build_does_not_know_is_a_divergence() {
    let nats = Nats::start().await;
    log_with_round(&nats, |e| {
        if let Event::RoundRecordedV3(r) = e {
            r.engine = 99;
        }
    })
    .await;
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    let d = report.divergence.expect("an unknown engine is reported");
    assert_eq!(d.got, "a round recorded by engine 99");
    assert_eq!(d.seq, 3, "at the round's cut, where it would be replayed");
}

#[tokio::test]
async fn a_tampered_score_is_reported_at_its_sequence() {
    let nats = Nats::start().await;
    log_with_round(&nats, |e| {
        if let Event::AssignmentProposedV1(p) = e {
            p.score.total += 1;
        }
    })
    .await;
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    let d = report.divergence.expect("the tampered proposal is caught");
    let (_, stream) = nats.log().await;
    let log = read_all(&stream).await;
    let tampered = log
        .iter()
        .find(|(_, _, e)| matches!(e.event, Event::AssignmentProposedV1(_)))
        .expect("proposal")
        .0;
    assert_eq!(d.seq, tampered);
    assert!(
        d.expected.contains("AssignmentProposedV1") && d.got.contains("AssignmentProposedV1"),
        "{d:?}"
    );
    assert_ne!(d.expected, d.got);
}

#[tokio::test]
async fn a_round_exports_its_instance_and_the_recorded_choice() {
    let nats = Nats::start().await;
    log_with_round(&nats, |_| {}).await;
    let (_, stream) = nats.log().await;
    let log = read_all(&stream).await;
    let (s, recorded_score) = log
        .iter()
        .find_map(|(_, _, e)| match &e.event {
            Event::AssignmentProposedV1(p) => Some((p.round_through_seq, p.score.total)),
            _ => None,
        })
        .expect("a proposal");
    let incident = IncidentId::parse("i", "audit").expect("valid");
    let json = muster_matcher::audit::export_round(&nats.url(), &Default::default(), &incident, s)
        .await
        .expect("export");
    assert_eq!(json["recorded"], true);
    assert_eq!(json["through_seq"], s);
    let needs = json["needs"].as_array().expect("needs");
    assert_eq!(needs.len(), 1);
    let candidate = &needs[0]["candidates"][0];
    assert_eq!(candidate["eligible"], true);
    assert_eq!(candidate["score"]["total"], recorded_score);
    assert_eq!(json["assignment"][0]["score"]["total"], recorded_score);
    assert_eq!(json["assignment"][0]["need"], EntityId([3; 16]).to_hex());
    assert_eq!(json["total_score"], recorded_score);
    // A sequence beyond the log is refused.
    assert!(
        muster_matcher::audit::export_round(&nats.url(), &Default::default(), &incident, 999)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_round_recorded_before_rounds_had_parts_is_reproduced() {
    let nats = Nats::start().await;
    // What the matcher wrote before rounds were appended in parts: one RoundRecordedV2, last.
    log_with_round(&nats, |e| {
        if let Event::RoundRecordedV3(r) = e {
            *e = Event::RoundRecordedV2(RoundRecordedV2 {
                round: r.round,
                through_seq: r.through_seq,
                log_time: r.log_time,
                policy_version: r.policy_version,
                proposed: r.proposed,
                expired: r.expired,
                cancelled: r.cancelled,
                total_score: r.total_score,
                engine: r.engine,
            });
        }
    })
    .await;
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    assert_eq!(report.divergence, None);
    assert_eq!(
        (
            report.rounds_verified,
            report.rounds_cut_short,
            report.decisions_verified
        ),
        (1, 0, 2)
    );
}

/// Needs (and as many volunteers, all able to meet any of them) for a round too large for one
/// append: an incident declared, then `n` offers and `n` needs, appended as agencies would.
/// Returns the matcher's state over them.
async fn large_round_inputs(nats: &Nats, n: usize) -> muster_matching::State {
    // On a grid about a kilometre apart, each need at a volunteer's door: a few volunteers
    // within reach of each, as in a town.
    let at = |i: usize| {
        GeoPoint::from_degrees(
            53.9 + (i % 40) as f64 * 0.009,
            -1.1 + (i / 40) as f64 * 0.015,
        )
        .expect("valid")
    };
    let places: Vec<GeoPoint> = (0..n).map(at).collect();
    inputs_at(nats, &places, 2_500, &places).await
}

/// An incident declared with the default policy, a volunteer's offer at each of `offers`
/// (reaching `radius_m`), then a need at each of `needs` (urgencies 1 to 5 in turn), appended
/// as agencies would. Returns the matcher's state over them.
async fn inputs_at(
    nats: &Nats,
    offers: &[GeoPoint],
    radius_m: u32,
    needs: &[GeoPoint],
) -> muster_matching::State {
    let (client, _) = nats.log().await;
    let (appender, _) = Appender::start(client, Default::default());
    let window = TimeWindow::new(T0, T0 + 3_600_000_000).expect("valid");
    let id = |kind: &str, i: usize| EntityId::hash(&[kind.as_bytes(), &i.to_le_bytes()]);
    let mut inputs = vec![env(
        1,
        "_",
        Event::IncidentDeclaredV1(IncidentDeclaredV1 {
            incident: IncidentId::parse("i", "audit").expect("valid"),
            name: "audit".into(),
            partitions: vec![],
            categories: vec![],
            policy: PolicyV1::default(),
        }),
    )];
    for (i, &at) in offers.iter().enumerate() {
        inputs.push(env(
            10 + i as u64,
            "A1",
            Event::OfferRegisteredV1(OfferRegisteredV1 {
                offer: id("offer", i),
                reference: Reference::parse("r", &format!("o-{i}")).expect("valid"),
                provider: Provider::Volunteer(
                    PersonId::parse("p", &format!("vol-{i}")).expect("valid"),
                ),
                spec: OfferSpecV1 {
                    kinds: vec![Category::Food],
                    skills: vec![],
                    capacity: 1,
                    location: at,
                    travel_radius_m: radius_m,
                    availability: vec![window],
                },
                personal: Personal::None,
            }),
        ));
    }
    for (i, &at) in needs.iter().enumerate() {
        inputs.push(env(
            10_000_000 + i as u64,
            "A1",
            Event::NeedReportedV1(NeedReportedV1 {
                need: id("need", i),
                reference: Reference::parse("r", &format!("n-{i}")).expect("valid"),
                spec: NeedSpecV1 {
                    category: Category::Food,
                    urgency: Urgency::new("u", 1 + (i % 5) as u32).expect("valid"),
                    party_size: 1,
                    window,
                    location: at,
                    required_skills: vec![],
                    required_verifications: vec![],
                    vulnerable: false,
                },
                personal: Personal::None,
            }),
        ));
    }
    let mut state = muster_matching::State::default();
    for (i, e) in inputs.iter().enumerate() {
        state.apply(i as u64 + 1, e);
    }
    for chunk in inputs.chunks(500) {
        appender
            .append(chunk.iter().map(out).collect())
            .await
            .expect("append inputs");
    }
    state
}

/// Runs a matcher (ticks out of the way) until the log holds a proposal for each of `needs`
/// needs, then stops it; returns the log.
async fn match_until_proposed(nats: &Nats, needs: usize) -> Vec<(u64, String, Envelope)> {
    let mut config = muster_matcher::Config::new(nats.url());
    config.tick_every = std::time::Duration::from_secs(3_600);
    let matcher = muster_tests::Matcher::start(config);
    let (_, stream) = nats.log().await;
    let log = muster_tests::log_until(
        &stream,
        std::time::Duration::from_secs(120),
        &format!("a proposal for each of {needs} needs"),
        |log| muster_tests::proposals_per_need(log).len() == needs,
    )
    .await;
    matcher.stop().await;
    log
}

fn records(log: &[(u64, String, Envelope)]) -> Vec<(u64, u32, u32)> {
    log.iter()
        .filter_map(|(_, _, e)| e.event.round_record())
        .map(|r| (r.through_seq, r.part, r.parts))
        .collect()
}

#[tokio::test]
async fn a_round_too_large_for_one_append_is_appended_in_parts_and_reproduced() {
    let nats = Nats::start().await;
    let state = large_round_inputs(&nats, 1_200).await;
    let log = match_until_proposed(&nats, 1_200).await;
    let s = state.through_seq;
    // One round of 1,200 proposals, in two parts of 600, each closed by its record.
    assert_eq!(records(&log), vec![(s, 0, 2), (s, 1, 2)]);
    let first_record = log
        .iter()
        .position(|(_, _, e)| e.event.round_record().is_some())
        .expect("a record");
    let before = &log[..first_record];
    assert_eq!(
        before
            .iter()
            .filter(|(_, _, e)| matches!(e.event, Event::AssignmentProposedV1(_)))
            .count(),
        600
    );
    assert!(
        muster_tests::proposals_per_need(&log)
            .values()
            .all(|&n| n == 1)
    );
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    assert_eq!(report.divergence, None);
    assert_eq!(
        (
            report.rounds_verified,
            report.rounds_cut_short,
            report.decisions_verified
        ),
        (1, 0, 1_202)
    );
}

#[tokio::test]
async fn a_round_cut_short_between_parts_is_decided_again_by_the_next_matcher_and_audited() {
    let nats = Nats::start().await;
    let state = large_round_inputs(&nats, 1_200).await;
    let s = state.through_seq;
    // A matcher cut the round and stopped after appending its first part.
    let r = muster_matching::round::round(&state);
    assert_eq!(r.proposals.len(), 1_200);
    let parts = muster_matcher::service::round_appends(
        &IncidentId::parse("i", "audit").expect("valid"),
        &state,
        &r,
    );
    assert_eq!(
        parts.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![601, 601]
    );
    let (client, _) = nats.log().await;
    let (appender, _) = Appender::start(client, Default::default());
    appender
        .append(parts[0].clone())
        .await
        .expect("append the first part");
    drop(appender);
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    assert_eq!(report.divergence, None, "what was recorded is reproduced");
    assert_eq!(
        (
            report.rounds_verified,
            report.rounds_cut_short,
            report.decisions_verified
        ),
        (0, 1, 601)
    );

    // The next matcher finds the round cut short and decides the rest in a round of its own,
    // though nothing else happens in the incident.
    let log = match_until_proposed(&nats, 1_200).await;
    let rounds = records(&log);
    assert_eq!(rounds[0], (s, 0, 2));
    assert_eq!(rounds.len(), 2, "{rounds:?}");
    assert!(
        rounds[1].0 > s && rounds[1].1 == 0 && rounds[1].2 == 1,
        "{rounds:?}"
    );
    assert!(
        muster_tests::proposals_per_need(&log)
            .values()
            .all(|&n| n == 1),
        "no need proposed twice"
    );
    // The stopped matcher's second part, appended late (after its first part's record, as
    // it would be), is refused: the next matcher's round was recorded since.
    let part_0_record = log
        .iter()
        .find(|(_, _, e)| e.event.round_record().is_some())
        .map(|(seq, _, _)| *seq)
        .expect("the first part's record");
    let (client, stream) = nats.log().await;
    let (appender, _) = Appender::start(client, Default::default());
    let late = muster_matcher::service::append_round(
        &appender,
        &muster_log::LogReader::new(stream),
        &IncidentId::parse("i", "audit").expect("valid"),
        s,
        vec![parts[1].clone()],
        part_0_record,
    )
    .await
    .expect("append");
    assert_eq!(
        late,
        muster_matcher::service::RoundAppend::Overtaken { parts_stored: 0 }
    );
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    assert_eq!(report.divergence, None);
    assert_eq!(
        (
            report.rounds_verified,
            report.rounds_cut_short,
            report.decisions_verified
        ),
        (1, 1, 1_202)
    );
}

fn proposed(log: &[(u64, String, Envelope)]) -> u64 {
    log.iter()
        .filter(|(_, _, e)| matches!(e.event, Event::AssignmentProposedV1(_)))
        .count() as u64
}

/// What both ways of evaluating `change` (a JSON policy change) say when they refuse it, for
/// `only` that incident if given.
async fn refused_by_both(nats: &Nats, only: Option<&IncidentId>, change: &str) -> [String; 2] {
    let change = muster_matcher::evaluate::PolicyChange::from_json(change).expect("a change");
    let log = muster_log::LogConfig::default();
    let per_round = muster_matcher::evaluate::evaluate(&nats.url(), &log, only, &change)
        .await
        .expect_err("refused round by round");
    let rerun = muster_matcher::evaluate::rerun(&nats.url(), &log, only, &change)
        .await
        .expect_err("refused re-run");
    [per_round.to_string(), rerun.to_string()]
}

async fn evaluate(nats: &Nats, change: &str) -> muster_matcher::evaluate::Evaluation {
    let change = muster_matcher::evaluate::PolicyChange::from_json(change).expect("a change");
    let mut found =
        muster_matcher::evaluate::evaluate(&nats.url(), &Default::default(), None, &change)
            .await
            .expect("evaluate");
    assert_eq!(found.len(), 1, "one incident on the log");
    found.remove(0)
}

#[tokio::test]
async fn evaluating_the_recorded_policy_finds_the_recorded_proposals_on_both_sides() {
    let nats = Nats::start().await;
    large_round_inputs(&nats, 60).await;
    let log = match_until_proposed(&nats, 60).await;
    let e = evaluate(&nats, "{}").await;
    assert!(e.rounds >= 1);
    assert_eq!(e.recorded.proposals, proposed(&log));
    assert_eq!(e.recorded.by_urgency.iter().sum::<u64>(), 60);
    assert_eq!(e.alternative, e.recorded);
    assert_eq!(e.same, e.recorded.proposals);
    assert_eq!(e.policy_alternative, e.policy_recorded);
    assert_eq!(e.providers, 60);
}

/// Four needs at one place, two volunteers about 500 m from them and two about 8 km away (all
/// reaching 10 km), matched under the default policy (25 km). Returns the log.
async fn near_and_far_log(nats: &Nats) -> Vec<(u64, String, Envelope)> {
    let centre = (53.9, -1.1);
    let at = |dlat: f64| GeoPoint::from_degrees(centre.0 + dlat, centre.1).expect("valid");
    let offers = [at(0.0045), at(-0.0045), at(0.072), at(-0.072)];
    inputs_at(nats, &offers, 10_000, &[at(0.0); 4]).await;
    match_until_proposed(nats, 4).await
}

#[tokio::test]
async fn a_shorter_radius_proposes_only_the_volunteers_within_it() {
    let nats = Nats::start().await;
    let log = near_and_far_log(&nats).await;
    assert_eq!(proposed(&log), 4);

    let e = evaluate(&nats, r#"{"max_radius_m": 2000}"#).await;
    assert_eq!(
        (
            e.policy_recorded.max_radius_m,
            e.policy_alternative.max_radius_m
        ),
        (25_000, 2_000)
    );
    assert_eq!(e.recorded.proposals, 4);
    assert!(e.recorded.distance_p90_m > 7_000, "{:?}", e.recorded);
    assert_eq!(e.alternative.proposals, 2);
    assert!(e.alternative.distance_p90_m <= 2_000, "{:?}", e.alternative);
    assert!(e.same <= 2);
    assert_eq!(
        (e.recorded.to_first_timers, e.alternative.to_first_timers),
        (4, 2)
    );
}

#[tokio::test]
async fn an_alternative_that_breaks_a_rule_of_the_policy_is_refused_naming_the_field() {
    let nats = Nats::start().await;
    log_with_round(&nats, |_| {}).await;
    for e in refused_by_both(&nats, None, r#"{"acceptance_timeout_s": 1}"#).await {
        assert!(e.contains("policy.acceptance_timeout_s"), "{e}");
    }
}

async fn rerun(nats: &Nats, change: &str) -> muster_matcher::evaluate::Rerun {
    let change = muster_matcher::evaluate::PolicyChange::from_json(change).expect("a change");
    let mut found =
        muster_matcher::evaluate::rerun(&nats.url(), &Default::default(), None, &change)
            .await
            .expect("re-run");
    assert_eq!(found.len(), 1, "one incident on the log");
    found.remove(0)
}

/// Twenty needs proposed, then answered as volunteers would (a third declined, a third
/// accepted and done, a third accepted), then the declined ones proposed again. Returns the
/// log.
async fn answered_log(nats: &Nats) -> Vec<(u64, String, Envelope)> {
    large_round_inputs(nats, 20).await;
    let log = match_until_proposed(nats, 20).await;
    let (client, stream) = nats.log().await;
    let (appender, _) = Appender::start(client, Default::default());
    let mut answers = Vec::new();
    let mut declined = 0;
    for (i, (_, _, e)) in log.iter().enumerate() {
        let Event::AssignmentProposedV1(p) = &e.event else {
            continue;
        };
        let answer = |response| {
            Event::VolunteerRespondedV1(VolunteerRespondedV1 {
                assignment: p.assignment,
                response,
                reason: String::new(),
            })
        };
        match i % 3 {
            0 => {
                declined += 1;
                answers.push(answer(Response::Decline));
            }
            1 => {
                answers.push(answer(Response::Accept));
                answers.push(Event::AssignmentCompletedV1(AssignmentCompletedV1 {
                    assignment: p.assignment,
                    personal: Personal::None,
                }));
            }
            _ => answers.push(answer(Response::Accept)),
        }
    }
    for (i, a) in answers.into_iter().enumerate() {
        appender
            .append(vec![out(&env(50_000_000 + i as u64, "A1", a))])
            .await
            .expect("append an answer");
    }
    let mut config = muster_matcher::Config::new(nats.url());
    config.tick_every = std::time::Duration::from_secs(3_600);
    let matcher = muster_tests::Matcher::start(config);
    let log = muster_tests::log_until(
        &stream,
        std::time::Duration::from_secs(120),
        "the declined needs proposed again",
        |log| {
            muster_tests::proposals_per_need(log)
                .values()
                .filter(|&&n| n == 2)
                .count()
                == declined
        },
    )
    .await;
    matcher.stop().await;
    log
}

#[tokio::test]
async fn re_running_the_log_under_its_own_policy_goes_as_the_log_went() {
    let nats = Nats::start().await;
    let log = answered_log(&nats).await;
    let r = rerun(&nats, "{}").await;
    assert!(r.rounds >= 2, "{r:?}");
    assert_eq!(r.recorded.proposals, proposed(&log));
    assert!(r.recorded.proposals > 20, "declined needs proposed again");
    assert!(r.recorded.accepted > 0 && r.recorded.completed > 0, "{r:?}");
    assert_eq!(r.answers_dropped, 0);
    assert_eq!(
        r.recorded.proposed_by_urgency.iter().sum::<u64>(),
        r.recorded.proposed
    );
    assert_eq!(r.recorded.proposed, 20);
    assert_eq!(r.alternative, r.recorded);
}

#[tokio::test]
async fn re_running_with_a_shorter_radius_leaves_the_needs_beyond_it_unproposed() {
    let nats = Nats::start().await;
    near_and_far_log(&nats).await;

    let r = rerun(&nats, r#"{"max_radius_m": 2000}"#).await;
    assert_eq!((r.recorded.needs, r.alternative.needs), (4, 4));
    assert_eq!((r.recorded.proposed, r.alternative.proposed), (4, 2));
    assert_eq!(
        (
            r.recorded.providers_proposed,
            r.alternative.providers_proposed
        ),
        (4, 2)
    );
    assert!(r.alternative.distance_mean_m < 1_000.0, "{r:?}");
    assert!(r.recorded.distance_mean_m > 4_000.0, "{r:?}");
    assert!(r.alternative.gini > r.recorded.gini, "{r:?}");
}

#[tokio::test]
async fn evaluating_an_incident_that_is_not_on_the_log_says_so() {
    let nats = Nats::start().await;
    log_with_round(&nats, |_| {}).await;
    let nowhere = IncidentId::parse("i", "nowhere").expect("valid");
    for e in refused_by_both(&nats, Some(&nowhere), "{}").await {
        assert!(e.contains("incident nowhere is not on the log"), "{e}");
    }
}

#[tokio::test]
async fn evaluating_a_log_whose_round_its_engine_does_not_reproduce_says_so() {
    let nats = Nats::start().await;
    log_with_round(&nats, |e| {
        if let Event::AssignmentProposedV1(p) = e {
            p.volunteer = PersonId::parse("p", "someone-else").expect("valid");
        }
    })
    .await;
    let change = muster_matcher::evaluate::PolicyChange::default();
    let e = muster_matcher::evaluate::evaluate(&nats.url(), &Default::default(), None, &change)
        .await
        .expect_err("the recorded round is not what its engine decides");
    assert!(e.to_string().contains("muster audit verify"), "{e}");
}

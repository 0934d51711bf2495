//! `muster audit verify`: replay the log through the engine and check every recorded round.
//!
//! A round recorded at S must be exactly what the engine decides for the log up to S: the same
//! expiries, cancellations and proposals (with their scores), in the same order, then the same
//! record. The audit reads the log twice: first to learn which rounds were recorded, then to fold
//! it, computing each round's expected events right after applying event S and comparing them
//! with the matcher's events as they come. It reports the first divergence.
//!
//! A round appended in parts may end at a part that is not its last, if the matcher stopped
//! between two parts: what it did record is verified like any other decision, and the round
//! is reported as cut short (the decisions after that part were never made).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use muster_log::{LogConfig, LogConsumer};
use muster_matching::State;
use muster_matching::round::{ENGINE, LATEST_ENGINE, round_events_in, round_with};
use muster_schema::{Event, IncidentId, subject};

use crate::MatcherError;

/// Where a recorded round and the engine disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub seq: u64,
    pub expected: String,
    pub got: String,
}

/// What an audit found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    pub events: u64,
    /// Rounds reproduced exactly, to their last part.
    pub rounds_verified: u64,
    /// Rounds whose recorded parts were reproduced exactly but whose last parts are not on the
    /// log: the matcher stopped between two parts.
    pub rounds_cut_short: u64,
    pub decisions_verified: u64,
    /// Events that could not be decoded (set aside, as every reader does).
    pub set_aside: u64,
    pub divergence: Option<Divergence>,
}

pub(crate) fn round_of(event: &Event) -> Option<u64> {
    match event {
        Event::AssignmentProposedV1(e) => Some(e.round_through_seq),
        Event::AssignmentExpiredV1(e) => Some(e.round_through_seq),
        Event::AssignmentCancelledV1(e) => Some(e.round_through_seq),
        Event::RoundRecordedV1(e) => Some(e.through_seq),
        Event::RoundRecordedV2(e) => Some(e.through_seq),
        Event::RoundRecordedV3(e) => Some(e.through_seq),
        _ => None,
    }
}

/// Reads the log up to its current end, calling `visit` for each decodable event.
pub(crate) async fn scan(
    stream: &async_nats::jetstream::stream::Stream,
    end: u64,
    set_aside: &mut u64,
    mut visit: impl FnMut(u64, muster_schema::Envelope) -> bool,
) -> Result<u64, MatcherError> {
    let mut consumer = LogConsumer::ordered(stream, vec![subject::all()], 1).await?;
    let mut events = 0;
    while events < end {
        let Some(d) = consumer.next().await else {
            break;
        };
        let d = d?;
        events = d.seq;
        match d.envelope {
            Ok(env) => {
                if !visit(d.seq, env) {
                    break;
                }
            }
            Err(_) => *set_aside += 1,
        }
        if d.seq >= end {
            break;
        }
    }
    Ok(events)
}

/// Every round recorded in the log up to `end`, by incident and sequence S, each with the
/// engine that decided it and the number of parts it was appended in.
pub(crate) async fn recorded_rounds(
    stream: &async_nats::jetstream::stream::Stream,
    end: u64,
) -> Result<BTreeMap<(IncidentId, u64), (u16, u32)>, MatcherError> {
    let mut recorded = BTreeMap::new();
    let mut ignored = 0;
    scan(stream, end, &mut ignored, |_, env| {
        if let Some(r) = env.event.round_record() {
            recorded.insert((env.incident.clone(), r.through_seq), (r.engine, r.parts));
        }
        true
    })
    .await?;
    Ok(recorded)
}

/// Verifies every round recorded in the log.
pub async fn verify(nats_url: &str, log: &LogConfig) -> Result<AuditReport, MatcherError> {
    let (_client, mut stream) = crate::open_log(nats_url, "muster-audit", log).await?;
    let end = crate::last_sequence(&mut stream).await?;
    let mut report = AuditReport::default();
    if end == 0 {
        return Ok(report);
    }

    // Pass 1: which rounds were recorded.
    let recorded = recorded_rounds(&stream, end).await?;

    // Pass 2: fold, predict each recorded round right after its S, compare.
    let mut states: BTreeMap<IncidentId, State> = BTreeMap::new();
    let mut expected: BTreeMap<(IncidentId, u64), VecDeque<Event>> = BTreeMap::new();
    // Rounds whose last event seen closed a part that was not their last.
    let mut between_parts: BTreeSet<(IncidentId, u64)> = BTreeSet::new();
    let mut set_aside = 0;
    let events = scan(&stream, end, &mut set_aside, |seq, env| {
        let key = |s: u64| (env.incident.clone(), s);
        if let Some(s) = round_of(&env.event) {
            let got = format!("{:?}", env.event);
            match expected.get_mut(&key(s)).and_then(VecDeque::pop_front) {
                Some(want) if want == env.event => report.decisions_verified += 1,
                Some(want) => {
                    report.divergence = Some(Divergence {
                        seq,
                        expected: format!("{want:?}"),
                        got,
                    });
                    return false;
                }
                None => {
                    let expected = if recorded.contains_key(&key(s)) {
                        "nothing more in this round".to_string()
                    } else {
                        format!("no decision: no round was recorded at {s}")
                    };
                    report.divergence = Some(Divergence { seq, expected, got });
                    return false;
                }
            }
            match env.event.round_record() {
                Some(r) if r.is_last_part() => {
                    report.rounds_verified += 1;
                    between_parts.remove(&key(s));
                }
                Some(_) => {
                    between_parts.insert(key(s));
                }
                None => {
                    between_parts.remove(&key(s));
                }
            }
        }
        let state = states.entry(env.incident.clone()).or_default();
        state.apply(seq, &env);
        if let Some(&(engine, parts)) = recorded.get(&key(seq)) {
            let Some(r) = round_with(state, engine) else {
                report.divergence = Some(Divergence {
                    seq,
                    expected: format!(
                        "a round by an engine this build knows (1..={LATEST_ENGINE})"
                    ),
                    got: format!("a round recorded by engine {engine}"),
                });
                return false;
            };
            let predicted = round_events_in(state, &env.incident, &r, parts)
                .into_iter()
                .map(|(_, e)| e)
                .collect();
            expected.insert(key(seq), predicted);
        }
        true
    })
    .await?;
    report.events = events;
    report.set_aside = set_aside;
    if report.divergence.is_some() {
        return Ok(report);
    }
    let unfinished = || expected.iter().filter(|(_, q)| !q.is_empty());
    report.rounds_cut_short = unfinished()
        .filter(|(key, _)| between_parts.contains(*key))
        .count() as u64;
    if let Some(((incident, s), left)) = unfinished().find(|(key, _)| !between_parts.contains(*key))
    {
        report.divergence = Some(Divergence {
            seq: *s,
            expected: format!(
                "{} more decisions of round {s} of {incident}, first {:?}",
                left.len(),
                left.front()
            ),
            got: "the end of the log".into(),
        });
    }
    Ok(report)
}

/// One round's instance as JSON, for checking with an outside solver: the policy, every open
/// need with every candidate offer the index yields (eligible with its distance and score parts,
/// or the rule it breaks), and the assignment the engine chooses — which `verify` proves is the
/// one recorded on the log.
pub async fn export_round(
    nats_url: &str,
    log: &LogConfig,
    incident: &IncidentId,
    through_seq: u64,
) -> Result<serde_json::Value, MatcherError> {
    use muster_matching::round::{evaluate, round_id};
    use serde_json::json;

    let (_client, mut stream) = crate::open_log(nats_url, "muster-audit", log).await?;
    let end = crate::last_sequence(&mut stream).await?;
    if through_seq == 0 || through_seq > end {
        return Err(MatcherError::Info(format!(
            "sequence {through_seq} is not in the log (1..={end})"
        )));
    }
    let mut state = State::default();
    let mut set_aside = 0;
    scan(&stream, through_seq, &mut set_aside, |seq, env| {
        if env.incident == *incident {
            state.apply(seq, &env);
        }
        true
    })
    .await?;
    let reader = muster_log::LogReader::new(stream);
    let record_subject = subject::entity(
        incident,
        &muster_schema::PartitionCode::incident_wide(),
        muster_schema::ids::EntityKind::Round,
        &round_id(incident, through_seq),
    );
    // The engine that decided the recorded round (the current one if none was recorded).
    let record = reader
        .last(&record_subject)
        .await
        .map_err(|e| MatcherError::Info(e.to_string()))?;
    let recorded = record.is_some();
    let engine = record
        .and_then(|m| muster_schema::Envelope::decode(&m.payload).ok())
        .and_then(|env| env.event.round_record())
        .map_or(ENGINE, |r| r.engine);

    let score_json = |s: &muster_matching::rules::Score| json!({"total": s.total, "urgency": s.urgency, "waiting": s.waiting, "distance": s.distance, "fairness": s.fairness});
    let needs: Vec<serde_json::Value> = state
        .needs
        .iter()
        .filter(|(_, n)| n.status == muster_matching::state::NeedStatus::Open)
        .map(|(id, need)| {
            let mut candidates = Vec::new();
            evaluate(&state, id, need, engine, |slot, outcome| {
                let offer = &state.offers[slot as usize];
                let provider = state.providers[offer.provider as usize].id.to_string();
                candidates.push(match outcome {
                    Ok((distance_m, score)) => json!({
                        "offer": offer.id.to_hex(), "provider": provider, "eligible": true,
                        "distance_m": distance_m, "score": score_json(&score),
                    }),
                    Err(rule) => json!({
                        "offer": offer.id.to_hex(), "provider": provider, "eligible": false,
                        "broken_rule": format!("{rule:?}"),
                    }),
                });
            });
            json!({
                "need": id.to_hex(),
                "partition": need.partition.as_str(),
                "category": format!("{:?}", need.spec.category),
                "urgency": need.spec.urgency.get(),
                "party_size": need.spec.party_size,
                "required_verifications": need.spec.required_verifications.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>(),
                "candidates": candidates,
            })
        })
        .collect();
    let r = round_with(&state, engine).ok_or_else(|| {
        MatcherError::Info(format!(
            "round {through_seq} was decided by engine {engine}, which this build does not know"
        ))
    })?;
    let chosen: Vec<serde_json::Value> = r
        .proposals
        .iter()
        .map(|p| json!({"need": p.need.to_hex(), "offer": p.offer.to_hex(), "provider": p.provider.as_str(), "score": score_json(&p.score)}))
        .collect();
    Ok(json!({
        "incident": incident.as_str(),
        "through_seq": through_seq,
        "log_time_us": state.now.micros(),
        "policy_version": state.policy_version,
        "policy": format!("{:?}", state.policy),
        "recorded": recorded,
        "engine": engine,
        "model": "each provider takes at most one new assignment per round, through its best eligible offer; maximise the total score",
        "needs": needs,
        "assignment": chosen,
        "total_score": r.total_score,
    }))
}

//! `muster audit evaluate`: every recorded round decided again under another policy, on the
//! situation that really arose, and the two compared.
//!
//! The log is folded twice side by side: once as it is, and once with every policy it declares
//! changed as the operator asks (the fields given; the rest as recorded). At each recorded
//! round's sequence S both states decide a round with the engine that decided the recorded one:
//! the first reproduces the recorded round (which `muster audit verify` proves), the second is
//! what the alternative would have proposed. Both then go on folding the log as it is — the
//! proposals, answers and completions that really happened — so every round is compared on the
//! same open needs, offers and loads. This answers "what would another policy have done with
//! the situations we met", not "how would the whole surge have gone": that would need the
//! volunteers' answers to proposals they never received. For the same reason the load is
//! compared round by round (did a round turn to volunteers already busy, or to ones never
//! asked?) and not as a spread over the whole log: the alternative's proposals never loaded
//! anyone, so a volunteer it prefers would be counted again in every round.
//!
//! [`rerun`] answers the other question, with a model: the alternative holds its own
//! decisions, and the log's answers and completions follow the need (see there).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use muster_log::LogConfig;
use muster_matching::State;
use muster_matching::round::{Round, round_with};
use muster_schema::{EntityId, Envelope, Event, IncidentId, PolicyV1, Violations};
use serde::{Deserialize, Serialize};

use crate::MatcherError;
use crate::audit::{recorded_rounds, scan};

/// The fields of a policy to change; the others stay as recorded. Round cuts are not among
/// them: the rounds compared are the recorded ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    pub weight_urgency: Option<u32>,
    pub weight_waiting: Option<u32>,
    pub weight_distance: Option<u32>,
    pub weight_fairness: Option<u32>,
    pub max_radius_m: Option<u32>,
    pub acceptance_timeout_s: Option<u32>,
    pub max_concurrent_per_volunteer: Option<u32>,
}

impl PolicyChange {
    /// Reads a change from a JSON object holding any of its fields, e.g.
    /// `{"weight_fairness": 60}`. An unknown field or a value that is not a whole number is
    /// refused, naming it.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// `policy` with this change made.
    pub fn apply(&self, policy: &PolicyV1) -> PolicyV1 {
        let or = |v: Option<u32>, recorded: u32| v.unwrap_or(recorded);
        PolicyV1 {
            weight_urgency: or(self.weight_urgency, policy.weight_urgency),
            weight_waiting: or(self.weight_waiting, policy.weight_waiting),
            weight_distance: or(self.weight_distance, policy.weight_distance),
            weight_fairness: or(self.weight_fairness, policy.weight_fairness),
            max_radius_m: or(self.max_radius_m, policy.max_radius_m),
            acceptance_timeout_s: or(self.acceptance_timeout_s, policy.acceptance_timeout_s),
            max_concurrent_per_volunteer: or(
                self.max_concurrent_per_volunteer,
                policy.max_concurrent_per_volunteer,
            ),
            ..policy.clone()
        }
    }

    /// `env` with this change made to the policy it declares, if it declares one; the changed
    /// policy must still be valid (the error names the field under `policy`).
    fn applied_to(&self, env: &Envelope) -> Result<Option<Envelope>, Violations> {
        if !matches!(
            env.event,
            Event::IncidentDeclaredV1(_) | Event::PolicyChangedV1(_)
        ) {
            return Ok(None);
        }
        let mut env = env.clone();
        let policy = match &mut env.event {
            Event::IncidentDeclaredV1(e) => &mut e.policy,
            Event::PolicyChangedV1(e) => &mut e.policy,
            _ => return Ok(None),
        };
        *policy = self.apply(policy);
        policy.validate().map_err(|v| v.under("policy"))?;
        Ok(Some(env))
    }
}

/// What one side's rounds proposed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcome {
    pub proposals: u64,
    /// Proposals by the need's urgency, 1 to 5.
    pub by_urgency: [u64; 5],
    /// Pending assignments the rounds let expire (the acceptance timeout is part of a policy).
    pub expired: u64,
    pub cancelled: u64,
    pub distance_mean_m: f64,
    pub distance_p50_m: u32,
    pub distance_p90_m: u32,
    /// Proposals to volunteers or organisations never proposed a task before.
    pub to_first_timers: u64,
    /// Proposals to ones holding a pending or accepted assignment at the time.
    pub to_busy: u64,
    /// How many tasks the providers chosen had been proposed before, on average.
    pub prior_tasks_mean: f64,
}

/// Proposals of one side, as they are counted.
#[derive(Debug, Default)]
struct Tally {
    proposals: u64,
    by_urgency: [u64; 5],
    expired: u64,
    cancelled: u64,
    distances: Vec<u32>,
    to_first_timers: u64,
    to_busy: u64,
    prior_tasks: u64,
}

impl Tally {
    /// Counts `round`, decided for `state` (the state before its decisions).
    fn add(&mut self, state: &State, round: &Round) {
        self.expired += round.expired.len() as u64;
        self.cancelled += round.cancelled.len() as u64;
        for p in &round.proposals {
            self.proposals += 1;
            if let Some(need) = state.needs.get(&p.need) {
                let u = usize::from(need.spec.urgency.get()).clamp(1, 5);
                self.by_urgency[u - 1] += 1;
            }
            self.distances.push(p.distance_m);
            let (load, tasks) = state
                .provider(&p.provider)
                .map_or((0, 0), |s| (s.load, s.tasks));
            self.to_first_timers += u64::from(tasks == 0);
            self.to_busy += u64::from(load > 0);
            self.prior_tasks += u64::from(tasks);
        }
    }

    fn outcome(mut self) -> Outcome {
        self.distances.sort_unstable();
        let at = |q: f64| -> u32 {
            match self.distances.len() {
                0 => 0,
                n => self.distances[((n - 1) as f64 * q).round() as usize],
            }
        };
        let mean = |total: f64| {
            if self.proposals == 0 {
                0.0
            } else {
                total / self.proposals as f64
            }
        };
        let distance: f64 = self.distances.iter().map(|&d| f64::from(d)).sum();
        Outcome {
            proposals: self.proposals,
            by_urgency: self.by_urgency,
            expired: self.expired,
            cancelled: self.cancelled,
            distance_mean_m: mean(distance),
            distance_p50_m: at(0.5),
            distance_p90_m: at(0.9),
            to_first_timers: self.to_first_timers,
            to_busy: self.to_busy,
            prior_tasks_mean: mean(self.prior_tasks as f64),
        }
    }
}

/// One incident's recorded rounds against the alternative's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub incident: String,
    pub rounds: u64,
    /// Volunteers and organisations the incident knows at the end of the log.
    pub providers: u64,
    /// The last policy the log declares, and it changed.
    pub policy_recorded: PolicyV1,
    pub policy_alternative: PolicyV1,
    pub recorded: Outcome,
    pub alternative: Outcome,
    /// Proposals both sides made: the same need to the same provider in the same round.
    pub same: u64,
}

/// Both sides of one incident while the log is read.
#[derive(Default)]
struct Sides {
    recorded: State,
    alternative: State,
    rounds: u64,
    same: u64,
    recorded_tally: Tally,
    alternative_tally: Tally,
    /// The last round decided again on the log as it is: its S and the (need, provider) pairs
    /// it proposed, which the log's own proposals for that round must be among.
    expected: Option<(u64, BTreeSet<(EntityId, muster_schema::PersonId)>)>,
}

/// Reads the log once (of `only` that incident, if given) and hands each event to `step` with
/// its incident's `S` (created with `Default`) and, if a round was recorded at this sequence,
/// the engine that decided it. `step` stops the reading by returning why.
async fn each_incident<S: Default>(
    nats_url: &str,
    log: &LogConfig,
    only: Option<&IncidentId>,
    mut step: impl FnMut(u64, &Envelope, &mut S, Option<u16>) -> Result<(), String>,
) -> Result<BTreeMap<IncidentId, S>, MatcherError> {
    let (_client, mut stream) = crate::open_log(nats_url, "muster-audit", log).await?;
    let end = crate::last_sequence(&mut stream).await?;
    let mut incidents: BTreeMap<IncidentId, S> = BTreeMap::new();
    let recorded = if end == 0 {
        BTreeMap::new()
    } else {
        recorded_rounds(&stream, end).await?
    };
    let mut failed = None;
    let mut set_aside = 0;
    scan(&stream, end, &mut set_aside, |seq, env| {
        if only.is_some_and(|i| *i != env.incident) {
            return true;
        }
        let engine = recorded
            .get(&(env.incident.clone(), seq))
            .map(|&(engine, _)| engine);
        let state = incidents.entry(env.incident.clone()).or_default();
        match step(seq, &env, state, engine) {
            Ok(()) => true,
            Err(reason) => {
                failed = Some(reason);
                false
            }
        }
    })
    .await?;
    match (failed, only) {
        (Some(reason), _) => Err(MatcherError::Info(reason)),
        (None, Some(incident)) if incidents.is_empty() => Err(MatcherError::Info(format!(
            "incident {incident} is not on the log"
        ))),
        (None, _) => Ok(incidents),
    }
}

/// `env` as the alternative sees it: with the policy it declares changed (see
/// [`PolicyChange::applied_to`]); the error says why the change does not fit.
fn for_alternative<'a>(
    change: &PolicyChange,
    seq: u64,
    env: &'a Envelope,
) -> Result<Cow<'a, Envelope>, String> {
    match change.applied_to(env) {
        Ok(Some(changed)) => Ok(Cow::Owned(changed)),
        Ok(None) => Ok(Cow::Borrowed(env)),
        Err(v) => Err(format!(
            "the alternative policy is not valid for the one {} declares at sequence {seq}: {v}",
            env.incident
        )),
    }
}

/// The round `engine` decides for `state`, or why there is none.
fn decided(state: &State, engine: u16, seq: u64, incident: &IncidentId) -> Result<Round, String> {
    round_with(state, engine).ok_or_else(|| {
        format!("round {seq} of {incident} was decided by engine {engine}, which this build does not know")
    })
}

/// Decides every recorded round of the log (of `only` that incident, if given) again under
/// the policy `change` makes of the recorded one, and compares, incident by incident.
pub async fn evaluate(
    nats_url: &str,
    log: &LogConfig,
    only: Option<&IncidentId>,
    change: &PolicyChange,
) -> Result<Vec<Evaluation>, MatcherError> {
    let incidents = each_incident(
        nats_url,
        log,
        only,
        |seq, env, sides: &mut Sides, engine| {
            // The recorded side is decided again, not read: make sure it is what the log holds.
            if let Event::AssignmentProposedV1(p) = &env.event
                && let Some((s, expected)) = &mut sides.expected
                && *s == p.round_through_seq
                && !expected.remove(&(p.need, p.volunteer.clone()))
            {
                return Err(format!(
                    "the proposal at sequence {seq} is not what its engine decides for round {s} \
                     of {}: run `muster audit verify`",
                    env.incident
                ));
            }
            sides.recorded.apply(seq, env);
            sides
                .alternative
                .apply(seq, &*for_alternative(change, seq, env)?);
            let Some(engine) = engine else {
                return Ok(());
            };
            let a = decided(&sides.recorded, engine, seq, &env.incident)?;
            let b = decided(&sides.alternative, engine, seq, &env.incident)?;
            sides.rounds += 1;
            sides.same += a
                .proposals
                .iter()
                .filter(|p| {
                    b.proposals
                        .iter()
                        .any(|q| q.need == p.need && q.provider == p.provider)
                })
                .count() as u64;
            sides.recorded_tally.add(&sides.recorded, &a);
            sides.alternative_tally.add(&sides.alternative, &b);
            let pairs = a.proposals.iter().map(|p| (p.need, p.provider.clone()));
            sides.expected = Some((seq, pairs.collect()));
            Ok(())
        },
    )
    .await?;
    Ok(incidents
        .into_iter()
        .map(|(incident, s)| {
            let providers = s.recorded.providers.len();
            Evaluation {
                incident: incident.to_string(),
                rounds: s.rounds,
                providers: providers as u64,
                policy_recorded: s.recorded.policy.clone(),
                policy_alternative: s.alternative.policy.clone(),
                recorded: s.recorded_tally.outcome(),
                alternative: s.alternative_tally.outcome(),
                same: s.same,
            }
        })
        .collect())
}

/// What became of an incident's needs over the whole log, on one side.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Course {
    pub needs: u64,
    /// Needs proposed to someone at least once.
    pub proposed: u64,
    /// Needs someone accepted.
    pub accepted: u64,
    pub completed: u64,
    pub proposals: u64,
    /// Needs proposed, by urgency 1 to 5.
    pub proposed_by_urgency: [u64; 5],
    /// Log time from a need's report to its first proposal, by urgency 1 to 5 (seconds; needs
    /// never proposed not counted).
    pub first_proposal_p50_s: [f64; 5],
    pub first_proposal_p90_s: [f64; 5],
    pub distance_mean_m: f64,
    /// Volunteers and organisations proposed at least one task.
    pub providers_proposed: u64,
    /// The most tasks proposed to one of them.
    pub most_to_one: u64,
    /// How unevenly tasks spread over every provider the incident knows (0: evenly, towards 1:
    /// all to one).
    pub gini: f64,
}

/// A side's course, as its events are applied.
#[derive(Debug, Default)]
struct Watch {
    reported: BTreeMap<EntityId, (i64, u8)>,
    first_proposal: BTreeMap<EntityId, i64>,
    need_of: BTreeMap<EntityId, EntityId>,
    accepted: BTreeSet<EntityId>,
    completed: BTreeSet<EntityId>,
    proposals: u64,
    distance: u64,
    per_provider: BTreeMap<muster_schema::PersonId, u64>,
}

impl Watch {
    fn observe(&mut self, env: &Envelope) {
        let t = env.recorded_at.micros();
        match &env.event {
            Event::NeedReportedV1(e) => {
                self.reported
                    .entry(e.need)
                    .or_insert((t, e.spec.urgency.get()));
            }
            Event::AssignmentProposedV1(e) => {
                self.proposals += 1;
                self.distance += u64::from(e.distance_m);
                self.first_proposal.entry(e.need).or_insert(t);
                self.need_of.insert(e.assignment, e.need);
                *self.per_provider.entry(e.volunteer.clone()).or_default() += 1;
            }
            Event::VolunteerRespondedV1(e) if e.response == muster_schema::Response::Accept => {
                if let Some(need) = self.need_of.get(&e.assignment) {
                    self.accepted.insert(*need);
                }
            }
            Event::AssignmentCompletedV1(e) => {
                if let Some(need) = self.need_of.get(&e.assignment) {
                    self.completed.insert(*need);
                }
            }
            _ => {}
        }
    }

    fn course(&self, providers: usize) -> Course {
        let mut waits: [Vec<i64>; 5] = Default::default();
        for (need, first) in &self.first_proposal {
            if let Some(&(reported, urgency)) = self.reported.get(need) {
                let u = usize::from(urgency).clamp(1, 5);
                waits[u - 1].push(first - reported);
            }
        }
        let quantile = |w: &mut Vec<i64>, q: f64| -> f64 {
            w.sort_unstable();
            match w.len() {
                0 => 0.0,
                n => w[((n - 1) as f64 * q).round() as usize] as f64 / 1e6,
            }
        };
        let (mut p50, mut p90) = ([0.0; 5], [0.0; 5]);
        for (u, w) in waits.iter_mut().enumerate() {
            p50[u] = quantile(w, 0.5);
            p90[u] = quantile(w, 0.9);
        }
        let mut loads: Vec<u64> = self.per_provider.values().copied().collect();
        loads.resize(providers.max(loads.len()), 0);
        Course {
            needs: self.reported.len() as u64,
            proposed: self.first_proposal.len() as u64,
            accepted: self.accepted.len() as u64,
            completed: self.completed.len() as u64,
            proposals: self.proposals,
            proposed_by_urgency: waits.each_ref().map(|w| w.len() as u64),
            first_proposal_p50_s: p50,
            first_proposal_p90_s: p90,
            distance_mean_m: if self.proposals == 0 {
                0.0
            } else {
                self.distance as f64 / self.proposals as f64
            },
            providers_proposed: self.per_provider.len() as u64,
            most_to_one: self.per_provider.values().copied().max().unwrap_or(0),
            gini: gini(loads),
        }
    }
}

/// The Gini coefficient of `loads`: 0 when all are equal, (n - 1) / n when one holds everything.
fn gini(mut loads: Vec<u64>) -> f64 {
    let total: u64 = loads.iter().sum();
    let n = loads.len();
    if total == 0 || n == 0 {
        return 0.0;
    }
    loads.sort_unstable();
    let weighted: f64 = loads
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as f64 + 1.0) * x as f64)
        .sum();
    2.0 * weighted / (n as f64 * total as f64) - (n as f64 + 1.0) / n as f64
}

/// One incident's log as it went, against the same log re-run under the alternative.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rerun {
    pub incident: String,
    pub rounds: u64,
    /// Volunteers and organisations the incident knows at the end of the log.
    pub providers: u64,
    pub recorded: Course,
    pub alternative: Course,
    /// Answers and completions of the log that found no assignment of the alternative's for
    /// their need at the time (it had not proposed the need, its proposal had ended, or it was
    /// not at the same stage).
    pub answers_dropped: u64,
}

/// One incident while the log is re-run.
#[derive(Default)]
struct Rerunning {
    recorded: State,
    recorded_watch: Watch,
    alternative: State,
    alternative_watch: Watch,
    /// The alternative's round decided at S, held until the log shows the recorded round's
    /// first decision (so its decisions come after the same inputs, at the same time).
    held: Option<(u64, Round)>,
    rounds: u64,
    answers_dropped: u64,
}

impl Rerunning {
    /// Applies an event of the alternative's: its own decision, an input, or an answer moved
    /// to its assignment.
    fn apply_alternative(&mut self, seq: u64, env: &Envelope) {
        self.alternative.apply(seq, env);
        self.alternative_watch.observe(env);
    }

    /// Applies the held round's decisions as of `env` (the recorded round's first decision).
    fn decide_held(&mut self, seq: u64, env: &Envelope) {
        let Some((_, round)) = self.held.take() else {
            return;
        };
        let events =
            muster_matching::round::round_events_in(&self.alternative, &env.incident, &round, 1);
        for (i, (partition, event)) in events.into_iter().enumerate() {
            let decision = Envelope::generated(
                seq.wrapping_mul(1_000_003).wrapping_add(i as u64),
                env.incident.clone(),
                partition,
                env.recorded_at,
                env.actor.clone(),
                event,
            );
            self.apply_alternative(seq, &decision);
        }
    }

    /// The log's answer or completion `env`, moved to the alternative's live assignment of the
    /// same need at the same stage (an answer to one awaiting it, a completion to one
    /// accepted); `None` if it has none.
    fn moved(&self, env: &Envelope) -> Option<Envelope> {
        let (real, completing) = match &env.event {
            Event::VolunteerRespondedV1(e) => (e.assignment, false),
            Event::AssignmentCompletedV1(e) => (e.assignment, true),
            _ => return None,
        };
        let need = self.recorded_watch.need_of.get(&real)?;
        let (&alt, _) = self.alternative.live_assignments(need).find(|(_, a)| {
            matches!(a.status, muster_matching::state::AssignmentStatus::Accepted) == completing
        })?;
        let mut moved = env.clone();
        match &mut moved.event {
            Event::VolunteerRespondedV1(e) => e.assignment = alt,
            Event::AssignmentCompletedV1(e) => e.assignment = alt,
            _ => return None,
        }
        Some(moved)
    }
}

/// Re-runs the log (of `only` that incident, if given) with the policy `change` makes of the
/// recorded one: the alternative decides every recorded round (at the same cuts, with the
/// same engine) on its own state, which holds its own decisions, not the recorded ones.
/// Volunteers' answers follow the need: an answer or completion the log holds for a need goes
/// to whatever assignment the alternative holds for that need at the time (whoever it was
/// proposed to), and is dropped if it holds none at the same stage. That is a model — volunteers asked
/// instead would not answer exactly as the ones asked did — and the comparison is only as
/// good as it is; [`evaluate`] compares decisions without one.
pub async fn rerun(
    nats_url: &str,
    log: &LogConfig,
    only: Option<&IncidentId>,
    change: &PolicyChange,
) -> Result<Vec<Rerun>, MatcherError> {
    let incidents = each_incident(
        nats_url,
        log,
        only,
        |seq, env, run: &mut Rerunning, engine| {
            run.recorded.apply(seq, env);
            run.recorded_watch.observe(env);
            if let Some(s) = crate::audit::round_of(&env.event) {
                // The recorded round's decisions: the alternative makes its own, here.
                if run.held.as_ref().is_some_and(|(held, _)| *held == s) {
                    run.decide_held(seq, env);
                }
            } else if matches!(
                env.event,
                Event::VolunteerRespondedV1(_) | Event::AssignmentCompletedV1(_)
            ) {
                match run.moved(env) {
                    Some(moved) => run.apply_alternative(seq, &moved),
                    None => run.answers_dropped += 1,
                }
            } else {
                run.apply_alternative(seq, &*for_alternative(change, seq, env)?);
            }
            if let Some(engine) = engine {
                let round = decided(&run.alternative, engine, seq, &env.incident)?;
                run.rounds += 1;
                run.held = Some((seq, round));
            }
            Ok(())
        },
    )
    .await?;
    Ok(incidents
        .into_iter()
        .map(|(incident, run)| {
            let providers = run.recorded.providers.len();
            Rerun {
                incident: incident.to_string(),
                rounds: run.rounds,
                providers: providers as u64,
                recorded: run.recorded_watch.course(providers),
                alternative: run.alternative_watch.course(providers),
                answers_dropped: run.answers_dropped,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schema::events::*;
    use muster_schema::*;

    const T0: i64 = 1_800_000_000_000_000;

    fn person(p: &str) -> PersonId {
        PersonId::parse("p", p).expect("valid")
    }

    /// Need `i` of `urgency`, at one place, for an hour from [`T0`].
    fn need(i: u8, urgency: u32) -> Event {
        Event::NeedReportedV1(NeedReportedV1 {
            need: EntityId([i; 16]),
            reference: Reference::parse("r", &format!("n{i}")).expect("valid"),
            spec: NeedSpecV1 {
                category: Category::Food,
                urgency: Urgency::new("u", urgency).expect("valid"),
                party_size: 1,
                window: TimeWindow::new(T0, T0 + 3_600_000_000).expect("valid"),
                location: GeoPoint::from_degrees(53.9, -1.1).expect("valid"),
                required_skills: vec![],
                required_verifications: vec![],
                vulnerable: false,
            },
            personal: Personal::None,
        })
    }

    /// Assignment `a` of need `n` to volunteer `v` through offer `offer`.
    fn proposed(a: u8, n: u8, offer: u8, v: &str, distance_m: u32) -> Event {
        Event::AssignmentProposedV1(AssignmentProposedV1 {
            assignment: EntityId([a; 16]),
            need: EntityId([n; 16]),
            offer: EntityId([offer; 16]),
            volunteer: person(v),
            round_through_seq: 0,
            policy_version: 1,
            distance_m,
            score: ScoreV1 {
                total: 0,
                urgency: 0,
                waiting: 0,
                distance: 0,
                fairness: 0,
            },
        })
    }

    /// `event` at `micros` of log time, in partition A1 of incident "x".
    fn at(micros: i64, event: Event) -> Envelope {
        Envelope::generated(
            micros as u64,
            IncidentId::parse("i", "x").expect("valid"),
            PartitionCode::parse("p", "A1").expect("valid"),
            Timestamp(micros),
            AgencyId::parse("a", "x").expect("valid"),
            event,
        )
    }

    #[test]
    fn a_change_names_the_fields_it_does_not_know() {
        let e = PolicyChange::from_json(r#"{"weight_fairnes": 60}"#).expect_err("a typo");
        assert!(e.contains("unknown field `weight_fairnes`"), "{e}");
        assert!(e.contains("weight_fairness"), "lists the known fields: {e}");
        let e = PolicyChange::from_json(r#"{"round_every_events": 10}"#).expect_err("cuts");
        assert!(e.contains("unknown field `round_every_events`"), "{e}");
        let e = PolicyChange::from_json(r#"{"max_radius_m": -5}"#).expect_err("negative");
        assert!(e.contains("invalid value"), "{e}");
    }

    #[test]
    fn a_change_keeps_what_it_does_not_name() {
        let recorded = PolicyV1 {
            weight_fairness: 7,
            round_every_events: 11,
            ..PolicyV1::default()
        };
        let change = PolicyChange::from_json(r#"{"weight_distance": 0, "max_radius_m": 900}"#)
            .expect("valid");
        assert_eq!(
            change.apply(&recorded),
            PolicyV1 {
                weight_distance: 0,
                max_radius_m: 900,
                ..recorded.clone()
            }
        );
        assert_eq!(
            PolicyChange::from_json("{}")
                .expect("valid")
                .apply(&recorded),
            recorded
        );
    }

    #[test]
    fn a_change_that_breaks_a_rule_of_the_policy_is_refused_naming_the_field() {
        let declared = Envelope::generated(
            1,
            IncidentId::parse("i", "x").expect("valid"),
            muster_schema::PartitionCode::incident_wide(),
            muster_schema::Timestamp(0),
            muster_schema::AgencyId::parse("a", "x").expect("valid"),
            Event::IncidentDeclaredV1(muster_schema::events::IncidentDeclaredV1 {
                incident: IncidentId::parse("i", "x").expect("valid"),
                name: "x".into(),
                partitions: vec![],
                categories: vec![],
                policy: PolicyV1::default(),
            }),
        );
        let change = PolicyChange::from_json(r#"{"max_radius_m": 5}"#).expect("parses");
        let e = change.applied_to(&declared).expect_err("too small");
        assert_eq!(e.0[0].field, "policy.max_radius_m");
        let fine = PolicyChange::from_json(r#"{"max_radius_m": 500}"#).expect("parses");
        let Some(Envelope {
            event: Event::IncidentDeclaredV1(d),
            ..
        }) = fine.applied_to(&declared).expect("valid")
        else {
            panic!("the declaration, changed");
        };
        assert_eq!(d.policy.max_radius_m, 500);
    }

    #[test]
    fn proposals_are_counted_by_urgency_distance_and_whom_they_go_to() {
        use muster_matching::round::Proposal;
        let incident = IncidentId::parse("i", "x").expect("valid");
        let window = TimeWindow::new(T0, T0 + 3_600_000_000).expect("valid");
        let place = GeoPoint::from_degrees(53.9, -1.1).expect("valid");
        let offer = |i: u8, p: &str| {
            Event::OfferRegisteredV1(OfferRegisteredV1 {
                offer: EntityId([i; 16]),
                reference: Reference::parse("r", &format!("o{i}")).expect("valid"),
                provider: Provider::Volunteer(person(p)),
                spec: OfferSpecV1 {
                    kinds: vec![Category::Food],
                    skills: vec![],
                    capacity: 2,
                    location: place,
                    travel_radius_m: 5_000,
                    availability: vec![window],
                },
                personal: Personal::None,
            })
        };
        let events = [
            Event::IncidentDeclaredV1(IncidentDeclaredV1 {
                incident: incident.clone(),
                name: "x".into(),
                partitions: vec![],
                categories: vec![],
                policy: PolicyV1::default(),
            }),
            offer(10, "busy"),
            offer(11, "fresh"),
            need(1, 2),
            need(2, 5),
            need(3, 5),
            // An earlier round gave the first need to "busy", still pending.
            proposed(20, 1, 10, "busy", 0),
        ];
        let mut state = State::default();
        for (i, event) in events.into_iter().enumerate() {
            state.apply(i as u64 + 1, &at(T0, event));
        }
        let proposal = |need: u8, offer: u8, p: &str, distance_m: u32| Proposal {
            assignment: EntityId([need + 100; 16]),
            need: EntityId([need; 16]),
            offer: EntityId([offer; 16]),
            provider: person(p),
            distance_m,
            score: muster_matching::rules::Score {
                total: 0,
                urgency: 0,
                waiting: 0,
                distance: 0,
                fairness: 0,
            },
        };
        let round = Round {
            engine: 5,
            through_seq: 7,
            policy_version: 1,
            proposals: vec![proposal(2, 10, "busy", 900), proposal(3, 11, "fresh", 100)],
            total_score: 0,
            expired: vec![EntityId([20; 16])],
            cancelled: vec![],
        };
        let mut t = Tally::default();
        t.add(&state, &round);
        let o = t.outcome();
        assert_eq!(o.proposals, 2);
        assert_eq!(o.by_urgency, [0, 0, 0, 0, 2]);
        assert_eq!((o.expired, o.cancelled), (1, 0));
        assert_eq!((o.to_first_timers, o.to_busy), (1, 1));
        assert!((o.prior_tasks_mean - 0.5).abs() < 1e-12, "{o:?}");
        assert_eq!((o.distance_p50_m, o.distance_p90_m), (900, 900));
        assert!((o.distance_mean_m - 500.0).abs() < 1e-9);
    }

    #[test]
    fn gini_is_zero_for_an_even_spread_and_near_one_when_one_takes_all() {
        assert_eq!(gini(vec![3, 3, 3, 3]), 0.0);
        assert!((gini(vec![0, 0, 0, 8]) - 0.75).abs() < 1e-12);
        assert!((gini(vec![1, 3]) - 0.25).abs() < 1e-12);
        assert_eq!(gini(vec![0, 0]), 0.0);
        assert_eq!(gini(Vec::new()), 0.0);
    }

    #[test]
    fn a_course_counts_needs_by_their_fate_and_waits_by_urgency() {
        let t0 = T0 / 1_000_000;
        let at = |s: i64, event: Event| at(s * 1_000_000, event);
        let proposed = |a: u8, n: u8, v: &str, distance_m: u32| proposed(a, n, 200, v, distance_m);
        let answer = |a: u8, response| {
            Event::VolunteerRespondedV1(VolunteerRespondedV1 {
                assignment: EntityId([a; 16]),
                response,
                reason: String::new(),
            })
        };
        let mut w = Watch::default();
        for env in [
            at(t0, need(1, 5)),
            at(t0, need(2, 5)),
            at(t0, need(3, 2)),
            at(t0 + 10, proposed(11, 1, "a", 100)),
            at(t0 + 30, proposed(12, 2, "a", 300)),
            at(t0 + 31, answer(11, Response::Accept)),
            at(t0 + 32, answer(12, Response::Decline)),
            // The declined need proposed again: its first proposal still counts.
            at(t0 + 90, proposed(13, 2, "b", 200)),
            at(t0 + 95, answer(13, Response::Accept)),
            at(
                t0 + 99,
                Event::AssignmentCompletedV1(AssignmentCompletedV1 {
                    assignment: EntityId([11; 16]),
                    personal: Personal::None,
                }),
            ),
        ] {
            w.observe(&env);
        }
        let c = w.course(4);
        assert_eq!(
            (c.needs, c.proposed, c.accepted, c.completed, c.proposals),
            (3, 2, 2, 1, 3)
        );
        assert_eq!(c.proposed_by_urgency, [0, 0, 0, 0, 2]);
        assert_eq!(
            (c.first_proposal_p50_s[4], c.first_proposal_p90_s[4]),
            (30.0, 30.0)
        );
        assert_eq!(c.first_proposal_p50_s[1], 0.0, "urgency 2: never proposed");
        assert!((c.distance_mean_m - 200.0).abs() < 1e-9);
        assert_eq!((c.providers_proposed, c.most_to_one), (2, 2));
        // Loads 2, 1, 0, 0 over four providers.
        assert!(
            (c.gini - gini(vec![0, 0, 1, 2])).abs() < 1e-12 && c.gini > 0.4,
            "{c:?}"
        );
    }

    #[test]
    fn an_answer_moves_to_the_alternatives_assignment_of_the_need_at_the_same_stage() {
        let declared = Event::IncidentDeclaredV1(IncidentDeclaredV1 {
            incident: IncidentId::parse("i", "x").expect("valid"),
            name: "x".into(),
            partitions: vec![],
            categories: vec![],
            policy: PolicyV1::default(),
        });
        let mut run = Rerunning::default();
        for (seq, e) in [(1, declared), (2, need(1, 3))] {
            let env = at(T0, e);
            run.recorded.apply(seq, &env);
            run.recorded_watch.observe(&env);
            run.apply_alternative(seq, &env);
        }
        // The log gave the need to "real" (assignment 10), the alternative to "alt" (11).
        run.recorded_watch
            .observe(&at(T0, proposed(10, 1, 100, "real", 0)));
        run.apply_alternative(3, &at(T0, proposed(11, 1, 101, "alt", 0)));
        let answer = |response| {
            at(
                T0 + 1,
                Event::VolunteerRespondedV1(VolunteerRespondedV1 {
                    assignment: EntityId([10; 16]),
                    response,
                    reason: String::new(),
                }),
            )
        };
        let completed = at(
            T0 + 2,
            Event::AssignmentCompletedV1(AssignmentCompletedV1 {
                assignment: EntityId([10; 16]),
                personal: Personal::None,
            }),
        );
        // Not accepted yet: a completion has nowhere to go.
        assert!(run.moved(&completed).is_none());
        let accepted = run.moved(&answer(Response::Accept)).expect("to 11");
        let Event::VolunteerRespondedV1(r) = &accepted.event else {
            panic!("an answer");
        };
        assert_eq!(r.assignment, EntityId([11; 16]));
        run.apply_alternative(4, &accepted);
        // Accepted: a second answer has nowhere to go, the completion does.
        assert!(run.moved(&answer(Response::Decline)).is_none());
        let done = run.moved(&completed).expect("to 11");
        let Event::AssignmentCompletedV1(c) = &done.event else {
            panic!("a completion");
        };
        assert_eq!(c.assignment, EntityId([11; 16]));
        run.apply_alternative(5, &done);
        // Completed: nothing live for the need any more.
        assert_eq!(
            run.alternative.live_assignments(&EntityId([1; 16])).count(),
            0
        );
    }
}

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

use std::collections::BTreeMap;

use muster_log::LogConfig;
use muster_matching::State;
use muster_matching::round::{Round, round_with};
use muster_schema::{Envelope, Event, IncidentId, PolicyV1, Violations};
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
}

/// Decides every recorded round of the log (of `only` that incident, if given) again under
/// the policy `change` makes of the recorded one, and compares, incident by incident.
pub async fn evaluate(
    nats_url: &str,
    log: &LogConfig,
    only: Option<&IncidentId>,
    change: &PolicyChange,
) -> Result<Vec<Evaluation>, MatcherError> {
    let (_client, mut stream) = crate::open_log(nats_url, "muster-audit", log).await?;
    let end = crate::last_sequence(&mut stream).await?;
    if end == 0 {
        return Ok(Vec::new());
    }
    let recorded = recorded_rounds(&stream, end).await?;
    let mut incidents: BTreeMap<IncidentId, Sides> = BTreeMap::new();
    let mut failed = None;
    let mut set_aside = 0;
    scan(&stream, end, &mut set_aside, |seq, env| {
        if only.is_some_and(|i| *i != env.incident) {
            return true;
        }
        let sides = incidents.entry(env.incident.clone()).or_default();
        sides.recorded.apply(seq, &env);
        match change.applied_to(&env) {
            Ok(Some(changed)) => sides.alternative.apply(seq, &changed),
            Ok(None) => sides.alternative.apply(seq, &env),
            Err(v) => {
                failed = Some(format!(
                    "the alternative policy is not valid for the one {} declares at sequence {seq}: {v}",
                    env.incident
                ));
                return false;
            }
        }
        let Some(&(engine, _)) = recorded.get(&(env.incident.clone(), seq)) else {
            return true;
        };
        let (Some(a), Some(b)) = (
            round_with(&sides.recorded, engine),
            round_with(&sides.alternative, engine),
        ) else {
            failed = Some(format!(
                "round {seq} of {} was decided by engine {engine}, which this build does not know",
                env.incident
            ));
            return false;
        };
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
        true
    })
    .await?;
    if let Some(reason) = failed {
        return Err(MatcherError::Info(reason));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        use muster_schema::events::*;
        use muster_schema::*;
        let t0 = 1_800_000_000_000_000;
        let incident = IncidentId::parse("i", "x").expect("valid");
        let window = TimeWindow::new(t0, t0 + 3_600_000_000).expect("valid");
        let at = GeoPoint::from_degrees(53.9, -1.1).expect("valid");
        let person = |p: &str| PersonId::parse("p", p).expect("valid");
        let need = |i: u8, urgency: u32| {
            Event::NeedReportedV1(NeedReportedV1 {
                need: EntityId([i; 16]),
                reference: Reference::parse("r", &format!("n{i}")).expect("valid"),
                spec: NeedSpecV1 {
                    category: Category::Food,
                    urgency: Urgency::new("u", urgency).expect("valid"),
                    party_size: 1,
                    window,
                    location: at,
                    required_skills: vec![],
                    required_verifications: vec![],
                    vulnerable: false,
                },
                personal: Personal::None,
            })
        };
        let offer = |i: u8, p: &str| {
            Event::OfferRegisteredV1(OfferRegisteredV1 {
                offer: EntityId([i; 16]),
                reference: Reference::parse("r", &format!("o{i}")).expect("valid"),
                provider: Provider::Volunteer(person(p)),
                spec: OfferSpecV1 {
                    kinds: vec![Category::Food],
                    skills: vec![],
                    capacity: 2,
                    location: at,
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
            Event::AssignmentProposedV1(AssignmentProposedV1 {
                assignment: EntityId([20; 16]),
                need: EntityId([1; 16]),
                offer: EntityId([10; 16]),
                volunteer: person("busy"),
                round_through_seq: 6,
                policy_version: 1,
                distance_m: 0,
                score: ScoreV1 {
                    total: 0,
                    urgency: 0,
                    waiting: 0,
                    distance: 0,
                    fairness: 0,
                },
            }),
        ];
        let mut state = State::default();
        for (i, event) in events.into_iter().enumerate() {
            let env = Envelope::generated(
                i as u64 + 1,
                incident.clone(),
                PartitionCode::parse("p", "A1").expect("valid"),
                Timestamp(t0),
                AgencyId::parse("a", "x").expect("valid"),
                event,
            );
            state.apply(i as u64 + 1, &env);
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
}

//! A round: for the state as of stream sequence S and the incident's policy, the assignments to
//! propose. Depends on nothing but the state, so replaying the log reproduces it exactly.

use std::collections::BTreeMap;

use muster_schema::EntityId;

use crate::rules::{self, PairContext, Score};
use crate::solver::{self, Instance};
use crate::state::{NeedStatus, ProviderKey, State};

/// One proposed assignment with the explanation an auditor reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub assignment: EntityId,
    pub need: EntityId,
    pub offer: EntityId,
    pub provider: ProviderKey,
    pub distance_m: u32,
    pub score: Score,
}

/// What a round decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    pub through_seq: u64,
    pub policy_version: u32,
    pub proposals: Vec<Proposal>,
    /// The sum of the proposals' scores: the optimum of this round's instance.
    pub total_score: i64,
}

/// One candidate column of a need: the provider's best eligible offer.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    offer: EntityId,
    distance_m: u32,
    score: Score,
}

/// The round's instance: open needs, and per need each provider's best eligible offer.
#[derive(Debug)]
pub struct RoundInstance {
    pub needs: Vec<EntityId>,
    pub providers: Vec<ProviderKey>,
    candidates: Vec<Vec<(usize, Candidate)>>,
}

impl RoundInstance {
    pub fn build(state: &State) -> Self {
        let policy = &state.policy;
        let mut per_need: Vec<(EntityId, BTreeMap<ProviderKey, Candidate>)> = Vec::new();
        for (need_id, need) in &state.needs {
            if need.status != NeedStatus::Open {
                continue;
            }
            let spec = &need.spec;
            let min_level = spec
                .required_verifications
                .iter()
                .map(rules::criminal_record_level)
                .max()
                .unwrap_or(0);
            let mut best: BTreeMap<ProviderKey, Candidate> = BTreeMap::new();
            for offer_id in state.index.candidates(
                spec.category,
                min_level,
                &spec.location,
                policy.max_radius_m,
            ) {
                let Some(offer) = state.offers.get(&offer_id) else {
                    continue;
                };
                if offer.withdrawn {
                    continue;
                }
                let ctx = PairContext {
                    now: state.now,
                    remaining_capacity: offer.remaining(),
                    provider_load: state.load.get(&offer.provider).copied().unwrap_or(0),
                    declined: state.declined.contains(&(*need_id, offer.provider.clone())),
                };
                let Ok(distance_m) = rules::eligible(
                    spec,
                    &offer.spec,
                    state.held_by(&offer.provider),
                    &ctx,
                    policy,
                ) else {
                    continue;
                };
                let waited = state.now.micros() - need.reported_at.micros();
                let tasks = state.tasks.get(&offer.provider).copied().unwrap_or(0);
                let score = rules::score(spec.urgency.get(), waited, distance_m, tasks, policy);
                let candidate = Candidate {
                    offer: offer_id,
                    distance_m,
                    score,
                };
                // Offers come in id order, so on equal scores the smaller offer id stays.
                best.entry(offer.provider.clone())
                    .and_modify(|c| {
                        if candidate.score.total > c.score.total {
                            *c = candidate;
                        }
                    })
                    .or_insert(candidate);
            }
            per_need.push((*need_id, best));
        }
        let mut column: BTreeMap<ProviderKey, usize> = BTreeMap::new();
        for (_, best) in &per_need {
            for p in best.keys() {
                column.entry(p.clone()).or_insert(0);
            }
        }
        let providers: Vec<ProviderKey> = column.keys().cloned().collect();
        for (i, p) in providers.iter().enumerate() {
            column.insert(p.clone(), i);
        }
        let needs = per_need.iter().map(|(id, _)| *id).collect();
        let candidates = per_need
            .into_iter()
            .map(|(_, best)| best.into_iter().map(|(p, c)| (column[&p], c)).collect())
            .collect();
        Self {
            needs,
            providers,
            candidates,
        }
    }

    /// The weighted bipartite instance the solver sees.
    pub fn instance(&self) -> Instance {
        Instance {
            columns: self.providers.len(),
            rows: self
                .candidates
                .iter()
                .map(|row| row.iter().map(|(j, c)| (*j, c.score.total)).collect())
                .collect(),
        }
    }

    fn proposals(&self, assigned: &[Option<usize>], through_seq: u64) -> Vec<Proposal> {
        assigned
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let j = (*a)?;
                let (_, c) = self.candidates[i].iter().find(|(col, _)| *col == j)?;
                let need = self.needs[i];
                Some(Proposal {
                    assignment: EntityId::hash(&[
                        b"assignment",
                        &through_seq.to_le_bytes(),
                        &need.0,
                    ]),
                    need,
                    offer: c.offer,
                    provider: self.providers[j].clone(),
                    distance_m: c.distance_m,
                    score: c.score,
                })
            })
            .collect()
    }
}

/// The round for `state`: an exact maximum-score assignment of open needs to providers.
pub fn round(state: &State) -> Round {
    let built = RoundInstance::build(state);
    let solution = solver::solve(&built.instance());
    Round {
        through_seq: state.through_seq,
        policy_version: state.policy_version,
        proposals: built.proposals(&solution.assigned, state.through_seq),
        total_score: solution.total,
    }
}

/// The same round decided first-come greedily (the baseline benchmarks compare against).
pub fn greedy_round(state: &State) -> Round {
    let built = RoundInstance::build(state);
    let solution = solver::greedy(&built.instance());
    Round {
        through_seq: state.through_seq,
        policy_version: state.policy_version,
        proposals: built.proposals(&solution.assigned, state.through_seq),
        total_score: solution.total,
    }
}

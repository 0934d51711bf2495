//! A round: for the state as of stream sequence S and the incident's policy, the assignments to
//! propose. Depends on nothing but the state, so replaying the log reproduces it exactly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use muster_schema::EntityId;
use muster_schema::events::CancelReason;

use crate::geo;
use crate::rules::{self, PairContext, Score};
use crate::solver::{self, Instance};
use crate::state::{AssignmentStatus, NeedStatus, ProviderKey, State};

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

/// The engine that decides rounds now; every round records the engine that decided it, and the
/// audit replays it with that one.
///
/// - Engine 1: each need's candidates are its best *n* providers in a round of *n* open needs
///   (some optimal matching uses only those), which is exact but grows with the square of a
///   surge's backlog.
/// - Engine 2: each need starts from its best [`FIRST_LIST`] providers; after each solve, a need
///   whose best provider left out could score more than the solver's dual bound for its row
///   (`-u_i`, see [`solver::Solved::row_bound`]) has its list widened [`WIDEN`]-fold, until no
///   need's excluded providers could improve the round. Exact by LP duality: the restricted
///   solution's duals stay feasible for every excluded pair.
pub const ENGINE: u16 = 2;

/// Engine 2: how many providers a need's list starts with, and how much a list grows when the
/// duals cannot prove the providers left out irrelevant.
pub const FIRST_LIST: usize = 8;
pub const WIDEN: usize = 4;

/// What a round decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// The engine that decided it (see [`ENGINE`]).
    pub engine: u16,
    pub through_seq: u64,
    pub policy_version: u32,
    pub proposals: Vec<Proposal>,
    /// The sum of the proposals' scores: the optimum of this round's instance.
    pub total_score: i64,
    /// Pending assignments not accepted within the policy's time (log time).
    pub expired: Vec<EntityId>,
    /// Assignments that can no longer stand, with the reason.
    pub cancelled: Vec<(EntityId, CancelReason)>,
}

/// Assignments to end in this round: cancelled when their need or offer is withdrawn or a
/// required verification no longer holds; expired when pending past the acceptance timeout.
fn endings(state: &State) -> (Vec<EntityId>, Vec<(EntityId, CancelReason)>) {
    let timeout = i64::from(state.policy.acceptance_timeout_s) * 1_000_000;
    let mut expired = Vec::new();
    let mut cancelled = Vec::new();
    for (id, a) in &state.assignments {
        let need = state.needs.get(&a.need);
        let offer_gone = state.offer(&a.offer).is_none_or(|o| o.withdrawn);
        let reason = match need {
            Some(n) if n.status == NeedStatus::Withdrawn => Some(CancelReason::NeedWithdrawn),
            _ if offer_gone => Some(CancelReason::OfferWithdrawn),
            Some(n)
                if !rules::verifications_hold(
                    &n.spec.required_verifications,
                    state.held_by(&a.provider),
                    state.now,
                ) =>
            {
                Some(CancelReason::VerificationLost)
            }
            _ => None,
        };
        if let Some(r) = reason {
            cancelled.push((*id, r));
        } else if let AssignmentStatus::Pending { proposed_at } = a.status
            && state.now.micros() - proposed_at.micros() >= timeout
        {
            expired.push(*id);
        }
    }
    (expired, cancelled)
}

/// One candidate column of a need: the provider's best eligible offer.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    offer: EntityId,
    distance_m: u32,
    score: Score,
}

/// The rules' verdict on one offer for one need: its distance and score, the rule it breaks, or
/// `None` for a withdrawn offer. The one place a candidate is judged.
fn judge(
    state: &State,
    need_id: &EntityId,
    need: &crate::state::Need,
    slot: u32,
    waited_us: i64,
) -> Option<Result<(u32, Score), rules::Ineligible>> {
    let offer = &state.offers[slot as usize];
    if offer.withdrawn {
        return None;
    }
    let provider = &state.providers[offer.provider as usize];
    let ctx = PairContext {
        now: state.now,
        remaining_capacity: offer.remaining(),
        provider_load: provider.load,
        declined: state.declined_slot(need_id, offer.provider),
    };
    let policy = &state.policy;
    let spec = &need.spec;
    Some(
        rules::eligible(spec, &offer.spec, provider.held(), &ctx, policy).map(|d| {
            (
                d,
                rules::score(spec.urgency.get(), waited_us, d, provider.tasks, policy),
            )
        }),
    )
}

/// Every offer the index yields for `need`, in slot order, with the rules' verdict: the distance
/// and score of an eligible pair, or the rule it breaks. The one place candidates are judged:
/// rounds use the eligible ones, audit exports show them all.
pub fn evaluate(
    state: &State,
    need_id: &EntityId,
    need: &crate::state::Need,
    mut visit: impl FnMut(u32, Result<(u32, Score), rules::Ineligible>),
) {
    let policy = &state.policy;
    let spec = &need.spec;
    let min_level = need.required_level();
    let waited = need.waited_us(state.now);
    for slot in state.index.candidates(
        spec.category,
        min_level,
        &spec.location,
        policy.max_radius_m,
    ) {
        if let Some(outcome) = judge(state, need_id, need, slot, waited) {
            visit(slot, outcome);
        }
    }
}

/// A need's best `n` providers, each through their best eligible offer (ties: smaller offer id,
/// then provider slot). Exact for a round of `n` needs: some optimal matching gives every need
/// one of its own `n` best providers (at most `n - 1` others can take them), so nothing beyond
/// them can matter. The search visits the grid cells within reach nearest first (by a lower
/// bound on distance) and stops once the `n`-th best score beats the best any offer in the
/// remaining cells could score.
///
/// Also returns an upper bound on the score of any eligible provider left out (`None`: none was).
fn best_providers(
    state: &State,
    need_id: &EntityId,
    need: &crate::state::Need,
    n: usize,
    search: Search,
) -> (BTreeMap<u32, Candidate>, Option<i64>) {
    let policy = &state.policy;
    let spec = &need.spec;
    let min_level = need.required_level();
    let waited = need.waited_us(state.now);
    let reach = policy.max_radius_m.min(state.index.max_radius_m());
    let n = n.max(1);
    let mut cells: Vec<(u32, (i32, i32))> = geo::cells_within(&spec.location, reach)
        .map(|c| (geo::min_distance_to_cell_m(&spec.location, c), c))
        .filter(|(d, _)| *d <= reach)
        .collect();
    cells.sort_unstable();
    let mut best: BTreeMap<u32, Candidate> = BTreeMap::new();
    let mut slots = Vec::new();
    let mut beyond: Option<i64> = None;
    // The n-th best score found so far (it only rises as the search goes on).
    let mut nth: Option<i64> = None;
    // Scores are at most this at distance `d` (fairness at its best).
    let ceiling = |d: u32| rules::score(spec.urgency.get(), waited, d, 0, policy).total;
    for (nearest, cell) in cells {
        if best.len() >= n {
            let mut scores: Vec<i64> = best.values().map(|c| c.score.total).collect();
            let (_, kth, _) = scores.select_nth_unstable_by(n - 1, |a, b| b.cmp(a));
            nth = Some(*kth);
            let bound = ceiling(nearest);
            if *kth > bound {
                // Nothing in this cell or the farther ones can score more than `bound`.
                beyond = beyond.max(Some(bound));
                break;
            }
        }
        slots.clear();
        state
            .index
            .in_cell(spec.category, min_level, cell, &mut slots);
        for &slot in &slots {
            if search == Search::Lean
                && let Some(kth) = nth
            {
                // An offer that cannot reach the n-th best score is left out unjudged; its
                // ceiling still bounds what was left out.
                let d = geo::distance_m(&spec.location, &state.offers[slot as usize].spec.location);
                let c = ceiling(d);
                if c < kth {
                    beyond = beyond.max(Some(c));
                    continue;
                }
            }
            let Some(Ok((distance_m, score))) = judge(state, need_id, need, slot, waited) else {
                continue;
            };
            let offer = &state.offers[slot as usize];
            let candidate = Candidate {
                offer: offer.id,
                distance_m,
                score,
            };
            best.entry(offer.provider)
                .and_modify(|c| {
                    if (candidate.score.total, std::cmp::Reverse(candidate.offer))
                        > (c.score.total, std::cmp::Reverse(c.offer))
                    {
                        *c = candidate;
                    }
                })
                .or_insert(candidate);
        }
        if search == Search::Lean && best.len() > 2 * n + 16 {
            keep_best(&mut best, n, &mut beyond);
        }
    }
    keep_best(&mut best, n, &mut beyond);
    (best, beyond)
}

/// How [`best_providers`] searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    /// Engine 1: judge every offer until the cell bound stops the search.
    Full,
    /// Engine 2: also leave out unjudged the offers whose distance alone keeps them below the
    /// n-th best score, and prune the list to the best n as it grows.
    Lean,
}

/// Keeps the best `n` candidates (ties: smaller offer id, then provider slot); the best score
/// dropped raises `beyond`.
fn keep_best(best: &mut BTreeMap<u32, Candidate>, n: usize, beyond: &mut Option<i64>) {
    if best.len() <= n {
        return;
    }
    let mut ranked: Vec<(u32, Candidate)> = std::mem::take(best).into_iter().collect();
    ranked.sort_by(|(pa, a), (pb, b)| {
        (
            b.score.total,
            std::cmp::Reverse(b.offer),
            std::cmp::Reverse(*pb),
        )
            .cmp(&(
                a.score.total,
                std::cmp::Reverse(a.offer),
                std::cmp::Reverse(*pa),
            ))
    });
    let dropped = ranked[n..].iter().map(|(_, c)| c.score.total).max();
    *beyond = (*beyond).max(dropped);
    ranked.truncate(n);
    *best = ranked.into_iter().collect();
}

/// The round's instance: open needs, and per need each provider's best eligible offer.
#[derive(Debug)]
pub struct RoundInstance {
    pub needs: Vec<EntityId>,
    pub providers: Vec<ProviderKey>,
    candidates: Vec<Vec<(usize, Candidate)>>,
}

/// The open needs of `state`, in id order: the rows of a round.
fn open_needs(state: &State) -> Vec<(&EntityId, &crate::state::Need)> {
    state
        .needs
        .iter()
        .filter(|(_, n)| n.status == NeedStatus::Open)
        .collect()
}

impl RoundInstance {
    /// Engine 1's instance: every open need with its best *n* providers (*n* open needs).
    pub fn build(state: &State) -> Self {
        let open = open_needs(state);
        let n = open.len();
        let per_need: Vec<(EntityId, BTreeMap<u32, Candidate>)> = open
            .into_iter()
            .map(|(id, need)| (*id, best_providers(state, id, need, n, Search::Full).0))
            .collect();
        Self::from_lists(state, per_need.iter().map(|(id, l)| (*id, l)))
    }

    /// Engine 2's instance and its optimum: short lists, widened where the duals ask.
    pub fn solve_widening(state: &State) -> (Self, solver::Solution, WideningStats) {
        Self::solve_widening_until(state, &AtomicBool::new(false))
            .expect("a flag nobody else holds is never set")
    }

    /// As [`RoundInstance::solve_widening`], giving up (`None`) once `cancel` is set.
    pub fn solve_widening_until(
        state: &State,
        cancel: &AtomicBool,
    ) -> Option<(Self, solver::Solution, WideningStats)> {
        let cancelled = || cancel.load(Ordering::Relaxed);
        let open = open_needs(state);
        let mut size = vec![FIRST_LIST; open.len()];
        let mut lists: Vec<(BTreeMap<u32, Candidate>, Option<i64>)> = Vec::new();
        for (id, need) in &open {
            if cancelled() {
                return None;
            }
            lists.push(best_providers(state, id, need, FIRST_LIST, Search::Lean));
        }
        let mut stats = WideningStats::default();
        loop {
            if cancelled() {
                return None;
            }
            stats.solves += 1;
            let built = Self::from_lists(
                state,
                open.iter().zip(&lists).map(|((id, _), (l, _))| (**id, l)),
            );
            let solved = solver::solve_with_duals(&built.instance());
            let mut widened = 0;
            for (i, (id, need)) in open.iter().enumerate() {
                if let Some(beyond) = lists[i].1
                    && beyond > solved.row_bound(i)
                {
                    if cancelled() {
                        return None;
                    }
                    size[i] = size[i].saturating_mul(WIDEN);
                    lists[i] = best_providers(state, id, need, size[i], Search::Lean);
                    widened += 1;
                }
            }
            stats.widened += widened;
            if widened == 0 {
                stats.candidates = built.candidates.iter().map(Vec::len).sum();
                return Some((built, solved.solution, stats));
            }
        }
    }

    fn from_lists<'a>(
        state: &State,
        per_need: impl Iterator<Item = (EntityId, &'a BTreeMap<u32, Candidate>)> + Clone,
    ) -> Self {
        // Columns in provider-id order, so ties in the solver are broken by ids.
        let mut used: BTreeMap<&ProviderKey, u32> = BTreeMap::new();
        for (_, best) in per_need.clone() {
            for slot in best.keys() {
                used.insert(&state.providers[*slot as usize].id, *slot);
            }
        }
        let mut column_of_slot: BTreeMap<u32, usize> = BTreeMap::new();
        let providers: Vec<ProviderKey> = used
            .iter()
            .enumerate()
            .map(|(col, (id, slot))| {
                column_of_slot.insert(*slot, col);
                (*id).clone()
            })
            .collect();
        let needs = per_need.clone().map(|(id, _)| id).collect();
        let candidates = per_need
            .map(|(_, best)| {
                let mut row: Vec<(usize, Candidate)> = best
                    .iter()
                    .map(|(slot, c)| (column_of_slot[slot], *c))
                    .collect();
                row.sort_by_key(|(col, _)| *col);
                row
            })
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

/// How engine 2 got to its instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WideningStats {
    /// Solves, the last of them certified.
    pub solves: u32,
    /// Lists widened, over all solves.
    pub widened: u32,
    /// Candidate pairs in the final instance.
    pub candidates: usize,
}

/// The round for `state` by the current [`ENGINE`]: an exact maximum-score assignment of open
/// needs to providers. Needs freed by this round's expiries and cancellations are matched in the
/// next round, once those events are on the log.
pub fn round(state: &State) -> Round {
    round_with(state, ENGINE).expect("the current engine exists")
}

/// The round for `state` by the current [`ENGINE`], or `None` as soon as `cancel` is set: a
/// service that stops in the middle of a long round gives it up and appends nothing.
pub fn round_until(state: &State, cancel: &AtomicBool) -> Option<Round> {
    let (built, solution, _) = RoundInstance::solve_widening_until(state, cancel)?;
    Some(decide(state, ENGINE, &built, &solution))
}

/// The round for `state` as engine `engine` decides it (`None`: no such engine).
pub fn round_with(state: &State, engine: u16) -> Option<Round> {
    let (built, solution) = match engine {
        1 => {
            let built = RoundInstance::build(state);
            let solution = solver::solve(&built.instance());
            (built, solution)
        }
        2 => {
            let (built, solution, _) = RoundInstance::solve_widening(state);
            (built, solution)
        }
        _ => return None,
    };
    Some(decide(state, engine, &built, &solution))
}

/// The same round decided first-come greedily over engine 1's lists (the baseline benchmarks
/// compare against).
pub fn greedy_round(state: &State) -> Round {
    let built = RoundInstance::build(state);
    let solution = solver::greedy(&built.instance());
    decide(state, 1, &built, &solution)
}

fn decide(state: &State, engine: u16, built: &RoundInstance, solution: &solver::Solution) -> Round {
    let (expired, cancelled) = endings(state);
    Round {
        engine,
        through_seq: state.through_seq,
        policy_version: state.policy_version,
        proposals: built.proposals(&solution.assigned, state.through_seq),
        total_score: solution.total,
        expired,
        cancelled,
    }
}

/// The id of the round cut at `through_seq` in `incident`.
pub fn round_id(incident: &muster_schema::IncidentId, through_seq: u64) -> EntityId {
    EntityId::hash(&[
        b"round",
        incident.as_str().as_bytes(),
        &through_seq.to_le_bytes(),
    ])
}

/// A round as the events that record it, each with the partition it belongs to: expiries,
/// cancellations and proposals (on their needs' partitions), then the round's own record
/// (incident-wide), last. The matcher appends exactly these; the audit recomputes and compares
/// exactly these.
pub fn round_events(
    state: &State,
    incident: &muster_schema::IncidentId,
    r: &Round,
) -> Vec<(muster_schema::PartitionCode, muster_schema::Event)> {
    use muster_schema::PartitionCode;
    use muster_schema::events::*;
    let partition_of_need = |need: &EntityId| {
        state
            .needs
            .get(need)
            .map_or_else(PartitionCode::incident_wide, |n| n.partition.clone())
    };
    let partition_of = |a: &EntityId| {
        state
            .assignments
            .get(a)
            .map_or_else(PartitionCode::incident_wide, |x| partition_of_need(&x.need))
    };
    let seq = r.through_seq;
    let mut out = Vec::with_capacity(r.expired.len() + r.cancelled.len() + r.proposals.len() + 1);
    for a in &r.expired {
        out.push((
            partition_of(a),
            muster_schema::Event::AssignmentExpiredV1(AssignmentExpiredV1 {
                assignment: *a,
                round_through_seq: seq,
            }),
        ));
    }
    for (a, reason) in &r.cancelled {
        out.push((
            partition_of(a),
            muster_schema::Event::AssignmentCancelledV1(AssignmentCancelledV1 {
                assignment: *a,
                reason: *reason,
                round_through_seq: seq,
            }),
        ));
    }
    for p in &r.proposals {
        out.push((
            partition_of_need(&p.need),
            muster_schema::Event::AssignmentProposedV1(AssignmentProposedV1 {
                assignment: p.assignment,
                need: p.need,
                offer: p.offer,
                volunteer: p.provider.clone(),
                round_through_seq: seq,
                policy_version: r.policy_version,
                distance_m: p.distance_m,
                score: ScoreV1 {
                    total: p.score.total,
                    urgency: p.score.urgency,
                    waiting: p.score.waiting,
                    distance: p.score.distance,
                    fairness: p.score.fairness,
                },
            }),
        ));
    }
    out.push((
        PartitionCode::incident_wide(),
        muster_schema::Event::RoundRecordedV2(RoundRecordedV2 {
            round: round_id(incident, seq),
            through_seq: seq,
            log_time: state.now,
            policy_version: r.policy_version,
            proposed: r.proposals.len() as u32,
            expired: r.expired.len() as u32,
            cancelled: r.cancelled.len() as u32,
            total_score: r.total_score,
            engine: r.engine,
        }),
    ));
    out
}

impl Round {
    /// Whether this round decides anything at all (an empty round is not recorded).
    pub fn is_empty(&self) -> bool {
        self.proposals.is_empty() && self.expired.is_empty() && self.cancelled.is_empty()
    }
}

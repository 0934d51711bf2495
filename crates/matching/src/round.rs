//! A round: for the state as of stream sequence S and the incident's policy, the assignments to
//! propose. Depends on nothing but the state, so replaying the log reproduces it exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use muster_schema::EntityId;
use muster_schema::events::CancelReason;

use crate::geo::{self, Seam};
use crate::rules::{self, PairContext, Score};
use crate::solver::{self, Instance};
use crate::state::{AssignmentStatus, ProviderKey, State};

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
/// - Engine 3: engine 2, its lists found by walking the index's fine cells (0.005°) nearest
///   first instead of its coarse cells (0.05°), judging each cell's offers in order of their
///   distance: the same optimum total, reached without judging the thousands of offers a coarse
///   cell of a dense town holds. Its lists (and so, where optima tie, its choice among them)
///   may differ from engine 2's, hence a new engine.
/// - Engine 4: engine 3, with tighter bounds on the offers it leaves out: each offer's best
///   possible score counts its provider's tasks so far (fairness scores a provider with tasks
///   lower, and the index files each offer by its provider's tasks, 0 to 3 or more), and an
///   offer whose provider lacks a qualification the need requires is passed over (the index
///   files qualifications as bits). In a surge, where most volunteers near a need already have
///   a task, engine 3 judged every one of them before it could rule out an untasked volunteer
///   farther away, and proved a need that no one near can serve unmatchable by judging every
///   offer in reach, every round. The same optimum total; its lists can differ from engine
///   3's, hence a new engine.
/// - Engine 5: engine 4, also passing over an offer without room for the need's party (the
///   index files each offer's capacity not yet committed). In a surge of families needing
///   hosts, most hosts near the centre soon have room for a small family but not a large one,
///   and engine 4 judged every one of them, every round, before it reached one with room (nine
///   of ten offers it judged in the hosting surge failed on capacity). The same optimum total;
///   its lists can differ from engine 4's (what it passes over bounds nothing), hence a new
///   engine.
/// - Engine 6: engine 5, searching across the antimeridian ([`Seam::Joined`]). Engines 1 to 5
///   searched as if the grid of cells ended at ±180° of longitude, so a need on one side
///   never found an offer in reach on the other (Fiji's islands straddle it, as do Chukotka
///   and the Aleutians). Elsewhere its rounds are engine 5's. The one the matcher runs.
pub const ENGINE: u16 = 6;

/// The newest engine this build knows; every engine from 1 to this one can still decide (and
/// so audit) a round.
pub const LATEST_ENGINE: u16 = 6;

/// How `engine` searches across the antimeridian (engines before 6 never did; an engine this
/// build does not know searches as engine 1).
pub fn seam_of(engine: u16) -> Seam {
    Search::of(engine).map_or(Seam::Edge, Search::seam)
}

/// Engines 2 to 4: how many providers a need's list starts with, and how much a list grows
/// when the duals cannot prove the providers left out irrelevant.
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
    let cutoff = muster_schema::Timestamp(state.now.micros().saturating_sub(timeout));
    for id in state.may_end(cutoff) {
        let a = &state.assignments[&id];
        if let Some(r) = state.cancel_reason(a) {
            cancelled.push((id, r));
        } else if let AssignmentStatus::Pending { proposed_at } = a.status
            && state.now.micros() - proposed_at.micros() >= timeout
        {
            expired.push(id);
        }
    }
    (expired, cancelled)
}

/// One candidate column of a need: the provider's best eligible offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    offer: EntityId,
    distance_m: u32,
    score: Score,
}

/// The rules' verdict on one offer for one need: its distance and score, the rule it breaks, or
/// `None` for a withdrawn offer. The one place a candidate is judged.
fn judge(
    state: &State,
    declined: Option<&BTreeSet<u32>>,
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
        declined: declined.is_some_and(|d| d.contains(&offer.provider)),
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

/// Every offer the index yields for `need` (searching as `engine` does across the antimeridian,
/// see [`Seam`]), in slot order, with the rules' verdict: the distance and score of an eligible
/// pair, or the rule it breaks. The one place candidates are judged: rounds use the eligible
/// ones, audit exports show them all.
pub fn evaluate(
    state: &State,
    need_id: &EntityId,
    need: &crate::state::Need,
    engine: u16,
    mut visit: impl FnMut(u32, Result<(u32, Score), rules::Ineligible>),
) {
    let policy = &state.policy;
    let spec = &need.spec;
    let min_level = need.required_level();
    let waited = need.waited_us(state.now);
    let declined = state.declined_by(need_id);
    for slot in state.index.candidates(
        spec.category,
        min_level,
        &spec.location,
        policy.max_radius_m,
        seam_of(engine),
    ) {
        if let Some(outcome) = judge(state, declined, need, slot, waited) {
            visit(slot, outcome);
        }
    }
}

/// A need's best `n` providers, each through their best eligible offer (ties: smaller offer id,
/// then provider slot). Exact for a round of `n` needs: some optimal matching gives every need
/// one of its own `n` best providers (at most `n - 1` others can take them), so nothing beyond
/// them can matter. The search visits the grid cells within reach nearest first (by a lower
/// bound on distance: coarse cells for engines 1 and 2, fine cells for engine 3, see
/// [`Search`]) and stops once the `n`-th best score beats the best any offer in the remaining
/// cells could score.
///
/// The [`Found`] list comes with an upper bound on the score of any eligible provider left out,
/// and counts of the offers looked at and judged.
fn best_providers(
    state: &State,
    need_id: &EntityId,
    need: &crate::state::Need,
    n: usize,
    search: Search,
) -> Found {
    let policy = &state.policy;
    let spec = &need.spec;
    let min_level = need.required_level();
    let reach = policy.max_radius_m.min(state.index.max_radius_m());
    let mut list = Shortlist {
        state,
        declined: state.declined_by(need_id),
        need,
        n: n.max(1),
        waited: need.waited_us(state.now),
        lean: search != Search::Full,
        live_nth: matches!(
            search,
            Search::Nearest | Search::Tiered | Search::Roomy | Search::Joined
        ),
        best: BTreeMap::new(),
        beyond: None,
        nth: None,
        looked: 0,
        judged: 0,
        scratch: Vec::new(),
        top: BTreeMap::new(),
        top_len: 0,
    };
    match search {
        Search::Full | Search::Lean => {
            let mut cells: Vec<(u32, (i32, i32))> =
                geo::cells_within(&spec.location, reach, Seam::Edge)
                    .map(|c| {
                        (
                            geo::min_distance_to_cell_m(&spec.location, c, Seam::Edge),
                            c,
                        )
                    })
                    .filter(|(d, _)| *d <= reach)
                    .collect();
            cells.sort_unstable();
            let mut slots = Vec::new();
            for (nearest, cell) in cells {
                if list.settled(nearest) {
                    break;
                }
                slots.clear();
                state
                    .index
                    .in_cell(spec.category, min_level, cell, &mut slots);
                for &slot in &slots {
                    list.consider(slot);
                }
                list.trim();
            }
        }
        Search::Nearest | Search::Tiered | Search::Roomy | Search::Joined => {
            let tiered = matches!(search, Search::Tiered | Search::Roomy | Search::Joined);
            // Engine 5: the party an offer must have room for (0: any offer will do).
            let party = if matches!(search, Search::Roomy | Search::Joined) {
                need.spec.party_size
            } else {
                0
            };
            let quals = need.required_quals();
            let mut walk = state.index.nearest(&spec.location, reach, search.seam());
            // The cell's offers to judge, most promising first: see `Promise`.
            let mut order: Vec<Promise> = Vec::new();
            // Once the list is full: the farthest an offer can be and still enter it, where
            // that is short of the reach.
            let mut within: Option<u32> = None;
            while let Some(nearest) = walk.peek_bound() {
                if let Some(kth) = list.nth {
                    let bound = list.ceiling(nearest);
                    if bound < kth {
                        // Nothing in this cell or the farther ones can enter the list.
                        break;
                    }
                }
                let Some((_, bucket)) = walk.next() else {
                    break;
                };
                // Offers too far to enter the list are left out unjudged, and unsorted: the
                // best of their ceilings bounds what they could have scored.
                order.clear();
                let mut left_out: Option<i64> = None;
                for e in bucket.serving(spec.category, min_level) {
                    list.looked += 1;
                    let hopeless = !e.may_qualify(quals) || !e.has_room(party);
                    if tiered && hopeless {
                        // Engines 4 and 5: an offer the rules would reject bounds nothing.
                        continue;
                    }
                    let d = geo::distance_m(&spec.location, &e.at);
                    let ceiling = if tiered {
                        list.ceiling_with(d, e.tasks_at_least())
                    } else {
                        list.ceiling(d)
                    };
                    if within.is_some_and(|w| d > w) {
                        left_out = left_out.max(Some(ceiling));
                    } else {
                        order.push(Promise::new(ceiling, e.slot, hopeless));
                    }
                }
                order.sort_unstable();
                for promise in &order {
                    let (ceiling, slot, hopeless) = promise.get();
                    if list.nth.is_some_and(|kth| ceiling < kth) {
                        // This offer and the rest of the cell cannot reach the list.
                        list.beyond = list.beyond.max(Some(ceiling));
                        break;
                    }
                    // A hopeless offer is one the rules would reject: it takes its place in
                    // the order (its ceiling may bound what is left out) but is not judged.
                    if !hopeless {
                        list.take(slot);
                    }
                }
                // The offers left out by distance, whether or not the cell stopped early
                // (engine 3's stop is nearer, so bounds them anyway; engine 4's ceilings count
                // tasks, so a farther offer's can be the higher).
                list.beyond = list.beyond.max(left_out);
                list.trim();
                if let Some(kth) = list.nth {
                    let farthest = list.reach_for(kth, reach);
                    walk.limit(farthest);
                    within = (farthest < reach).then_some(farthest);
                }
            }
            // Whatever the walk did not reach is at least this far away.
            if let Some(nearest) = walk.unvisited_bound() {
                list.beyond = list.beyond.max(Some(list.ceiling(nearest)));
            }
            // A list that never filled skipped nothing and walked all in reach: widening it
            // again could not add a provider (this is what ends the widening loop).
            debug_assert!(
                list.best.len() >= list.n || list.beyond.is_none(),
                "a list of {} (of {}) left something out: {:?}",
                list.best.len(),
                list.n,
                list.beyond
            );
        }
    }
    let Shortlist {
        mut best,
        mut beyond,
        n,
        looked,
        judged,
        ..
    } = list;
    keep_best(&mut best, n, &mut beyond);
    Found {
        best,
        beyond,
        looked,
        judged,
    }
}

/// An id's first 16 bytes as a big-endian integer (zero-padded): where two ids' prefixes
/// differ, they order as the ids do.
fn id_prefix(id: &ProviderKey) -> u128 {
    let mut bytes = [0u8; 16];
    let s = id.as_str().as_bytes();
    let n = s.len().min(16);
    bytes[..n].copy_from_slice(&s[..n]);
    u128::from_be_bytes(bytes)
}

/// An offer of a cell engines 3 and 4 walk, with the best score its distance (and for engine 4
/// its provider's tasks) allows: ordered by that score, highest first, then by slot (one integer
/// compare). It also carries whether the offer is hopeless (its provider lacks a qualification
/// the need requires, see [`crate::index::Entry::may_qualify`]): below the slot, so it never
/// decides the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Promise(u128);

impl Promise {
    /// Flipping the sign bit orders an i64 as an u64; inverting it puts the highest first.
    const SIGN: u64 = 1 << 63;

    fn new(ceiling: i64, slot: u32, hopeless: bool) -> Self {
        let high_first = !(ceiling as u64 ^ Self::SIGN);
        Self(u128::from(high_first) << 64 | u128::from(slot) << 32 | u128::from(hopeless))
    }

    fn get(self) -> (i64, u32, bool) {
        let high_first = (self.0 >> 64) as u64;
        (
            (!high_first ^ Self::SIGN) as i64,
            (self.0 >> 32) as u32,
            self.0 & 1 == 1,
        )
    }
}

/// What [`best_providers`] found, and how much it looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    best: BTreeMap<u32, Candidate>,
    /// An upper bound on the score of any eligible provider left out (`None`: none was).
    beyond: Option<i64>,
    /// Offers the search came across, and those it judged by the rules.
    looked: u64,
    judged: u64,
}

impl Found {
    fn empty() -> Self {
        Self {
            best: BTreeMap::new(),
            beyond: None,
            looked: 0,
            judged: 0,
        }
    }
}

/// How [`best_providers`] searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    /// Engine 1: judge every offer, coarse cell by coarse cell, until the cell bound stops the
    /// search.
    Full,
    /// Engine 2: also leave out unjudged the offers whose distance alone keeps them below the
    /// n-th best score, and prune the list to the best n as it grows.
    Lean,
    /// Engine 3: as `Lean`, walking fine cells nearest first.
    Nearest,
    /// Engine 4: as `Nearest`, each offer's ceiling counting its provider's tasks, and offers
    /// of providers without a required qualification passed over.
    Tiered,
    /// Engine 5: as `Tiered`, offers without room for the party passed over too.
    Roomy,
    /// Engine 6: as `Roomy`, across the antimeridian ([`Seam::Joined`]).
    Joined,
}

impl Search {
    /// How `engine` searches (`None`: no such engine).
    fn of(engine: u16) -> Option<Self> {
        Some(match engine {
            1 => Search::Full,
            2 => Search::Lean,
            3 => Search::Nearest,
            4 => Search::Tiered,
            5 => Search::Roomy,
            6 => Search::Joined,
            _ => return None,
        })
    }

    fn seam(self) -> Seam {
        match self {
            Search::Joined => Seam::Joined,
            _ => Seam::Edge,
        }
    }
}

/// A need's list as [`best_providers`] builds it.
struct Shortlist<'a> {
    state: &'a State,
    /// The provider slots that declined the need.
    declined: Option<&'a BTreeSet<u32>>,
    need: &'a crate::state::Need,
    n: usize,
    waited: i64,
    /// Skip offers that cannot reach the n-th best, and prune as the list grows.
    lean: bool,
    /// Keep `nth` current after every offer taken (engine 3), not only between cells.
    live_nth: bool,
    best: BTreeMap<u32, Candidate>,
    /// The best score left out so far.
    beyond: Option<i64>,
    /// The n-th best score found so far (it only rises as the search goes on).
    nth: Option<i64>,
    looked: u64,
    judged: u64,
    /// Room to find the n-th best score in.
    scratch: Vec<i64>,
    /// With `live_nth`: the `n` best scores listed (their multiset, a count per score), so
    /// the n-th best is at hand after every offer taken instead of selected anew.
    top: BTreeMap<i64, u32>,
    top_len: usize,
}

impl Shortlist<'_> {
    /// The n-th best score listed (the list holds at least `n`).
    fn nth_best(&mut self) -> i64 {
        let scores = &mut self.scratch;
        scores.clear();
        scores.extend(self.best.values().map(|c| c.score.total));
        let (_, kth, _) = scores.select_nth_unstable_by(self.n - 1, |a, b| b.cmp(a));
        *kth
    }

    /// Scores are at most this at distance `d` (fairness at its best).
    fn ceiling(&self, d: u32) -> i64 {
        self.ceiling_with(d, 0)
    }

    /// Scores of a provider with at least `tasks` tasks are at most this at distance `d`.
    fn ceiling_with(&self, d: u32, tasks: u32) -> i64 {
        let policy = &self.state.policy;
        rules::score(self.need.spec.urgency.get(), self.waited, d, tasks, policy).total
    }

    /// Called before a cell whose offers are all at least `nearest` metres away (as are those of
    /// every cell after it): whether the list is final, nothing there able to enter it.
    fn settled(&mut self, nearest: u32) -> bool {
        if self.best.len() < self.n {
            return false;
        }
        let kth = self.nth_best();
        self.nth = Some(kth);
        let bound = self.ceiling(nearest);
        if kth > bound {
            // Nothing in this cell or the farther ones can score more than `bound`.
            self.beyond = self.beyond.max(Some(bound));
            return true;
        }
        false
    }

    /// The farthest an offer can be and still score `kth` (at most `reach`; 0 if even the
    /// nearest cannot).
    fn reach_for(&self, kth: i64, reach: u32) -> u32 {
        let (mut lo, mut hi) = (0u32, reach);
        if self.ceiling(hi) >= kth {
            return hi;
        }
        // ceiling(lo) >= kth > ceiling(hi), or lo = 0 and nothing reaches.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.ceiling(mid) >= kth {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Engines 1 and 2: one offer of the cell being searched.
    fn consider(&mut self, slot: u32) {
        let state = self.state;
        self.looked += 1;
        if self.lean
            && let Some(kth) = self.nth
        {
            // An offer that cannot reach the n-th best score is left out unjudged; its
            // ceiling still bounds what was left out.
            let d = geo::distance_m(
                &self.need.spec.location,
                &state.offers[slot as usize].spec.location,
            );
            let c = self.ceiling(d);
            if c < kth {
                self.beyond = self.beyond.max(Some(c));
                return;
            }
        }
        self.take(slot);
    }

    /// Judges one offer and, if eligible, keeps it as its provider's best so far. Engine 3
    /// keeps the n-th best score current as it goes; engines 1 and 2 update it per cell (in
    /// [`Shortlist::settled`]), as they were recorded.
    fn take(&mut self, slot: u32) {
        let state = self.state;
        self.judged += 1;
        let Some(Ok((distance_m, score))) =
            judge(state, self.declined, self.need, slot, self.waited)
        else {
            return;
        };
        let offer = &state.offers[slot as usize];
        let candidate = Candidate {
            offer: offer.id,
            distance_m,
            score,
        };
        // The provider's best score before (`Some(None)`: newly listed), if it changed.
        let raised = match self.best.entry(offer.provider) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(candidate);
                Some(None)
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let c = o.get_mut();
                let better = (candidate.score.total, std::cmp::Reverse(candidate.offer))
                    > (c.score.total, std::cmp::Reverse(c.offer));
                let old = c.score.total;
                if better {
                    *c = candidate;
                }
                better.then_some(Some(old))
            }
        };
        if self.live_nth
            && let Some(old) = raised
        {
            self.rank(old, score.total);
            if self.top_len >= self.n {
                self.nth = self.top.first_key_value().map(|(k, _)| *k);
            }
        }
    }

    /// Keeps `top` the `n` best scores listed when a provider's best rises from `old` (`None`:
    /// newly listed) to `new`. Only values matter, so the scores below the top `n` need not be
    /// kept: a provider's best only rises, and one that rises from below the n-th best enters
    /// the top as a new score would.
    fn rank(&mut self, old: Option<i64>, new: i64) {
        let full = self.top_len >= self.n;
        let least = self.top.first_key_value().map(|(k, _)| *k);
        match old {
            // The old score is among the top (as a value): the new one takes its place.
            Some(o) if !full || least.is_some_and(|m| o >= m) => {
                self.top_take(o);
                self.top_put(new);
            }
            _ if !full => self.top_put(new),
            _ => {
                if let Some(m) = least
                    && new > m
                {
                    self.top_take(m);
                    self.top_put(new);
                }
            }
        }
    }

    fn top_put(&mut self, score: i64) {
        *self.top.entry(score).or_default() += 1;
        self.top_len += 1;
    }

    fn top_take(&mut self, score: i64) {
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.top.entry(score) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
            self.top_len -= 1;
        }
    }

    /// After a cell: a lean search keeps the list near `n` long.
    fn trim(&mut self) {
        if self.lean && self.best.len() > 2 * self.n + 16 {
            keep_best(&mut self.best, self.n, &mut self.beyond);
        }
    }
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

/// Below this many lists to find, a round finds them on its own thread; above, it shares them
/// out across [`SEARCH_THREADS`].
const PARALLEL_FROM: usize = 64;

/// The threads a round's search uses at most (each need's list depends only on the state, so
/// the round is the same whatever the count).
pub const SEARCH_THREADS: usize = 2;

/// What makes two needs' lists the same: everything the rules read of a need but its urgency
/// and how long it has waited, which only add a constant to each of its scores (see
/// [`rules::score`]), so leave the order of its providers, and which of them a search keeps,
/// as they are. A need some volunteer declined has no class: its list is its own.
#[derive(PartialEq, Eq, Hash)]
struct Alike<'a> {
    category: muster_schema::Category,
    party_size: u16,
    window: &'a muster_schema::TimeWindow,
    location: &'a muster_schema::GeoPoint,
    skills: &'a [muster_schema::Skill],
    verifications: &'a [muster_schema::VerificationKind],
    vulnerable: bool,
    size: usize,
}

impl<'a> Alike<'a> {
    fn of(state: &State, id: &EntityId, need: &'a crate::state::Need, size: usize) -> Option<Self> {
        if state.declined_by(id).is_some_and(|d| !d.is_empty()) {
            return None;
        }
        let spec = &need.spec;
        Some(Self {
            category: spec.category,
            party_size: spec.party_size,
            window: &spec.window,
            location: &spec.location,
            skills: &spec.required_skills,
            verifications: &spec.required_verifications,
            vulnerable: spec.vulnerable,
            size,
        })
    }
}

/// What a need's urgency and waiting add to each of its scores.
fn own_part(state: &State, need: &crate::state::Need) -> (i64, i64) {
    let s = rules::score(
        need.spec.urgency.get(),
        need.waited_us(state.now),
        0,
        0,
        &state.policy,
    );
    (s.urgency, s.waiting)
}

/// `found`, the list of a need alike to `to` (see [`Alike`]) whose own part is `from`, as
/// `to`'s own search would have found it: the same providers, each score moved by the
/// difference in own parts. Nothing was searched for it, so nothing was looked at.
fn moved(found: &Found, from: (i64, i64), to: (i64, i64)) -> Found {
    let shift = (to.0 + to.1) - (from.0 + from.1);
    Found {
        best: found
            .best
            .iter()
            .map(|(&slot, c)| {
                let score = Score {
                    total: c.score.total + shift,
                    urgency: to.0,
                    waiting: to.1,
                    ..c.score
                };
                (slot, Candidate { score, ..*c })
            })
            .collect(),
        beyond: found.beyond.map(|b| b + shift),
        looked: 0,
        judged: 0,
    }
}

/// The lists of `open[i]` for each `i` in `which`, `size[i]` long, in `which`'s order (`None`:
/// `cancel` was set). Needs alike (see [`Alike`]) — a crowd at an evacuation centre — share one
/// search: the first of them in `which` searches, the others take its list moved to their own
/// scores.
fn find_lists(
    state: &State,
    open: &[(&EntityId, &crate::state::Need)],
    which: &[usize],
    size: &[usize],
    search: Search,
    cancel: &AtomicBool,
    threads: usize,
) -> Option<Vec<Found>> {
    let mut first: std::collections::HashMap<Alike<'_>, usize> = Default::default();
    // The needs that search, and for each of `which` the one whose search it takes.
    let mut searching: Vec<usize> = Vec::new();
    let mut taken_from: Vec<usize> = Vec::with_capacity(which.len());
    for &i in which {
        let (id, need) = open[i];
        let at = match Alike::of(state, id, need, size[i]) {
            Some(key) => *first.entry(key).or_insert_with(|| {
                searching.push(i);
                searching.len() - 1
            }),
            None => {
                searching.push(i);
                searching.len() - 1
            }
        };
        taken_from.push(at);
    }
    let mut found = search_lists(state, open, &searching, size, search, cancel, threads)?;
    if searching.len() == which.len() {
        return Some(found);
    }
    // How many of `which` still take each search's list: the last one takes it whole.
    let mut takers = vec![0u32; searching.len()];
    for &at in &taken_from {
        takers[at] += 1;
    }
    let parts: Vec<(i64, i64)> = searching
        .iter()
        .map(|&i| own_part(state, open[i].1))
        .collect();
    let mut lists = Vec::with_capacity(which.len());
    for (&i, &at) in which.iter().zip(&taken_from) {
        takers[at] -= 1;
        let last = takers[at] == 0;
        let list = if i == searching[at] {
            // The need that searched: its own list, and what its search looked at.
            if last {
                std::mem::replace(&mut found[at], Found::empty())
            } else {
                found[at].clone()
            }
        } else {
            let to = own_part(state, open[i].1);
            if last && to == parts[at] {
                Found {
                    looked: 0,
                    judged: 0,
                    ..std::mem::replace(&mut found[at], Found::empty())
                }
            } else {
                moved(&found[at], parts[at], to)
            }
        };
        lists.push(list);
    }
    Some(lists)
}

/// The lists of `open[i]` for each `i` in `which`, each searched for, shared out in contiguous
/// runs over up to `threads` threads.
fn search_lists(
    state: &State,
    open: &[(&EntityId, &crate::state::Need)],
    which: &[usize],
    size: &[usize],
    search: Search,
    cancel: &AtomicBool,
    threads: usize,
) -> Option<Vec<Found>> {
    let run = |part: &[usize]| -> Option<Vec<Found>> {
        part.iter()
            .map(|&i| {
                if cancel.load(Ordering::Relaxed) {
                    return None;
                }
                let (id, need) = open[i];
                Some(best_providers(state, id, need, size[i], search))
            })
            .collect()
    };
    if threads < 2 || which.len() < PARALLEL_FROM {
        return run(which);
    }
    let chunk = which.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = which.chunks(chunk);
        let first = parts.next().unwrap_or_default();
        let others: Vec<_> = parts.map(|part| scope.spawn(move || run(part))).collect();
        let mut all = run(first)?;
        for other in others {
            all.extend(other.join().expect("a search thread panicked")?);
        }
        Some(all)
    })
}

/// The round's instance: open needs, and per need each provider's best eligible offer.
#[derive(Debug)]
pub struct RoundInstance {
    pub needs: Vec<EntityId>,
    pub providers: Vec<ProviderKey>,
    candidates: Vec<Vec<(usize, Candidate)>>,
}

/// The open needs of `state`, in id order: the rows of a round.
/// The needs a round matches: the open ones, none once the incident is stood down (its rounds
/// only end what can no longer stand).
fn open_needs(state: &State) -> Vec<(&EntityId, &crate::state::Need)> {
    if state.stood_down {
        return Vec::new();
    }
    state.open_needs().collect()
}

impl RoundInstance {
    /// Engine 1's instance: every open need with its best *n* providers (*n* open needs).
    pub fn build(state: &State) -> Self {
        let open = open_needs(state);
        let n = open.len();
        let per_need: Vec<(EntityId, BTreeMap<u32, Candidate>)> = open
            .into_iter()
            .map(|(id, need)| (*id, best_providers(state, id, need, n, Search::Full).best))
            .collect();
        Self::from_lists(state, per_need.iter().map(|(id, l)| (*id, l)))
    }

    /// The instance of a short-list engine (2 to 5) and its optimum: short lists, widened
    /// where the duals ask (`None`: `engine` is not one).
    pub fn solve_widening(
        state: &State,
        engine: u16,
    ) -> Option<(Self, solver::Solution, WideningStats)> {
        Self::solve_widening_until(state, engine, &AtomicBool::new(false))
    }

    /// As [`RoundInstance::solve_widening`], giving up (`None`) once `cancel` is set.
    pub fn solve_widening_until(
        state: &State,
        engine: u16,
        cancel: &AtomicBool,
    ) -> Option<(Self, solver::Solution, WideningStats)> {
        // Asked once: on Linux the answer reads the cgroup files, too slow for every round.
        static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let threads = *THREADS.get_or_init(|| {
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(SEARCH_THREADS)
        });
        Self::solve_widening_on(state, engine, cancel, threads)
    }

    /// As [`RoundInstance::solve_widening_until`], searching on up to `threads` threads.
    fn solve_widening_on(
        state: &State,
        engine: u16,
        cancel: &AtomicBool,
        threads: usize,
    ) -> Option<(Self, solver::Solution, WideningStats)> {
        let search = Search::of(engine).filter(|s| *s != Search::Full)?;
        let cancelled = || cancel.load(Ordering::Relaxed);
        let open = open_needs(state);
        let mut size = vec![FIRST_LIST; open.len()];
        let mut stats = WideningStats::default();
        let every: Vec<usize> = (0..open.len()).collect();
        let mut lists: Vec<(BTreeMap<u32, Candidate>, Option<i64>)> = Vec::new();
        for f in find_lists(state, &open, &every, &size, search, cancel, threads)? {
            stats.looked += f.looked;
            stats.judged += f.judged;
            lists.push((f.best, f.beyond));
        }
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
            let widen: Vec<usize> = (0..open.len())
                .filter(|&i| {
                    lists[i]
                        .1
                        .is_some_and(|beyond| beyond > solved.row_bound(i))
                })
                .collect();
            for &i in &widen {
                size[i] = size[i].saturating_mul(WIDEN);
            }
            let found = find_lists(state, &open, &widen, &size, search, cancel, threads)?;
            for (&i, f) in widen.iter().zip(found) {
                stats.looked += f.looked;
                stats.judged += f.judged;
                lists[i] = (f.best, f.beyond);
            }
            stats.widened += widen.len() as u32;
            if widen.is_empty() {
                stats.candidates = built.candidates.iter().map(Vec::len).sum();
                return Some((built, solved.solution, stats));
            }
        }
    }

    fn from_lists<'a>(
        state: &State,
        per_need: impl Iterator<Item = (EntityId, &'a BTreeMap<u32, Candidate>)> + Clone,
    ) -> Self {
        // Columns in provider-id order, so ties in the solver are broken by ids. Ids are
        // compared by their first 16 bytes first (one integer compare, no pointer chase), the
        // whole id only where those agree.
        let mut slots: Vec<u32> = per_need
            .clone()
            .flat_map(|(_, best)| best.keys().copied())
            .collect();
        slots.sort_unstable();
        slots.dedup();
        let mut by_id: Vec<(u128, u32)> = slots
            .iter()
            .map(|&slot| (id_prefix(&state.providers[slot as usize].id), slot))
            .collect();
        by_id.sort_unstable_by(|(pa, a), (pb, b)| {
            pa.cmp(pb).then_with(|| {
                state.providers[*a as usize]
                    .id
                    .cmp(&state.providers[*b as usize].id)
            })
        });
        let providers: Vec<ProviderKey> = by_id
            .iter()
            .map(|(_, slot)| state.providers[*slot as usize].id.clone())
            .collect();
        // Column of each slot, by slot (`slots` is sorted).
        let mut column_of_slot = vec![0usize; slots.len()];
        for (col, (_, slot)) in by_id.iter().enumerate() {
            let i = slots
                .binary_search(slot)
                .expect("every column's slot is listed");
            column_of_slot[i] = col;
        }
        let column = |slot: &u32| column_of_slot[slots.binary_search(slot).expect("listed")];
        let needs = per_need.clone().map(|(id, _)| id).collect();
        let candidates = per_need
            .map(|(_, best)| {
                let mut row: Vec<(usize, Candidate)> =
                    best.iter().map(|(slot, c)| (column(slot), *c)).collect();
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

    /// First come, first served over this instance: needs in the order they were reported
    /// (ties by id), each taking its best provider still free.
    pub fn first_come_greedy(&self, state: &State) -> solver::Solution {
        let mut order: Vec<usize> = (0..self.needs.len()).collect();
        order.sort_by_cached_key(|&i| (state.needs[&self.needs[i]].reported_at, self.needs[i]));
        let greedy = solver::greedy(&Instance {
            columns: self.providers.len(),
            rows: order
                .iter()
                .map(|&i| {
                    self.candidates[i]
                        .iter()
                        .map(|(j, c)| (*j, c.score.total))
                        .collect()
                })
                .collect(),
        });
        let mut assigned = vec![None; self.needs.len()];
        for (&row, got) in order.iter().zip(greedy.assigned) {
            assigned[row] = got;
        }
        solver::Solution {
            assigned,
            total: greedy.total,
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

/// How a short-list engine (2 to 5) got to its instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WideningStats {
    /// Solves, the last of them certified.
    pub solves: u32,
    /// Lists widened, over all solves.
    pub widened: u32,
    /// Candidate pairs in the final instance.
    pub candidates: usize,
    /// Offers the searches came across, and those judged by the rules (the rest were left out
    /// by distance alone).
    pub looked: u64,
    pub judged: u64,
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
    let (built, solution, _) = RoundInstance::solve_widening_until(state, ENGINE, cancel)?;
    Some(decide(state, ENGINE, &built, &solution))
}

/// The round for `state` as a short-list engine (2 to 5) decides it searching on up to
/// `threads` threads (the same round whatever the count), with how the engine got there
/// (`None`: `engine` is not one).
pub fn round_with_stats(
    state: &State,
    engine: u16,
    threads: usize,
) -> Option<(Round, WideningStats)> {
    let (built, solution, stats) =
        RoundInstance::solve_widening_on(state, engine, &AtomicBool::new(false), threads)?;
    Some((decide(state, engine, &built, &solution), stats))
}

/// The round for `state` as engine `engine` decides it (`None`: no such engine).
pub fn round_with(state: &State, engine: u16) -> Option<Round> {
    let (built, solution) = match engine {
        1 => {
            let built = RoundInstance::build(state);
            let solution = solver::solve(&built.instance());
            (built, solution)
        }
        2..=LATEST_ENGINE => {
            let (built, solution, _) = RoundInstance::solve_widening(state, engine)?;
            (built, solution)
        }
        _ => return None,
    };
    Some(decide(state, engine, &built, &solution))
}

/// The same round decided first-come greedily over engine 1's lists (the baseline benchmarks
/// compare against): see [`RoundInstance::first_come_greedy`].
pub fn greedy_round(state: &State) -> Round {
    let built = RoundInstance::build(state);
    let solution = built.first_come_greedy(state);
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

/// The most decisions one part of a round holds: with its record, a part is one atomic append,
/// and the log takes at most 1,000 messages in one (`muster_log::appender::MAX_BATCH`).
pub const DECISIONS_PER_PART: usize = 999;

/// How many parts a round of `decisions` decisions is appended in.
pub fn parts_for(decisions: usize) -> u32 {
    decisions.div_ceil(DECISIONS_PER_PART).max(1) as u32
}

/// A round as the events that record it, each with the partition it belongs to, in
/// [`parts_for`] parts: see [`round_events_in`].
pub fn round_events(
    state: &State,
    incident: &muster_schema::IncidentId,
    r: &Round,
) -> Vec<(muster_schema::PartitionCode, muster_schema::Event)> {
    let decisions = r.expired.len() + r.cancelled.len() + r.proposals.len();
    round_events_in(state, incident, r, parts_for(decisions))
}

/// A round as the events that record it, each with the partition it belongs to: expiries,
/// cancellations and proposals (on their needs' partitions), split into `parts` consecutive
/// parts of as near equal size as may be (part `i` of `n` decisions holds those from `i·n/parts`
/// up to `(i+1)·n/parts`), each followed by its record (incident-wide). The matcher appends
/// exactly these, a part at a time; the audit recomputes and compares exactly these, in as many
/// parts as the round's record names.
pub fn round_events_in(
    state: &State,
    incident: &muster_schema::IncidentId,
    r: &Round,
    parts: u32,
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
    let parts = parts.max(1);
    let mut out = Vec::with_capacity(
        r.expired.len() + r.cancelled.len() + r.proposals.len() + parts as usize,
    );
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
    let record = |part: u32| {
        (
            PartitionCode::incident_wide(),
            muster_schema::Event::RoundRecordedV3(RoundRecordedV3 {
                round: round_id(incident, seq),
                through_seq: seq,
                log_time: state.now,
                policy_version: r.policy_version,
                proposed: r.proposals.len() as u32,
                expired: r.expired.len() as u32,
                cancelled: r.cancelled.len() as u32,
                total_score: r.total_score,
                engine: r.engine,
                part,
                parts,
            }),
        )
    };
    let n = out.len();
    let mut decisions = out.into_iter();
    let mut laid_out = Vec::with_capacity(n + parts as usize);
    for part in 0..parts {
        let end = (part as usize + 1) * n / parts as usize;
        let start = part as usize * n / parts as usize;
        laid_out.extend(decisions.by_ref().take(end - start));
        laid_out.push(record(part));
    }
    laid_out
}

impl Round {
    /// Whether this round decides anything at all (an empty round is not recorded).
    pub fn is_empty(&self) -> bool {
        self.proposals.is_empty() && self.expired.is_empty() && self.cancelled.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A round that only expires and cancels assignments (`expired` and `cancelled` of them).
    fn endings_only(expired: usize, cancelled: usize) -> Round {
        let id = |i: usize| EntityId::hash(&[&i.to_le_bytes()]);
        Round {
            engine: ENGINE,
            through_seq: 77,
            policy_version: 1,
            proposals: vec![],
            total_score: 0,
            expired: (0..expired).map(id).collect(),
            cancelled: (0..cancelled)
                .map(|i| (id(10_000 + i), CancelReason::NeedWithdrawn))
                .collect(),
        }
    }

    proptest! {
        /// Promises sort by score, highest first, then by slot, and give back what they hold
        /// (the hopeless flag too, which never decides between two slots).
        #[test]
        fn promises_order_by_score_then_slot(
            pairs in proptest::collection::vec((any::<i64>(), any::<u32>(), any::<bool>()), 1..40),
        ) {
            let mut promises: Vec<Promise> =
                pairs.iter().map(|(c, s, h)| Promise::new(*c, *s, *h)).collect();
            promises.sort_unstable();
            let got: Vec<(i64, u32, bool)> = promises.into_iter().map(Promise::get).collect();
            let mut expected = pairs;
            expected.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            prop_assert_eq!(got, expected);
        }

        /// Ordering ids by their prefix, then in full where prefixes agree, is ordering them in
        /// full: the solver's columns (and so its tie-breaks) are as they were.
        #[test]
        fn ids_order_by_prefix_then_in_full_as_in_full(
            ids in proptest::collection::vec("(volunteer-number-|vol-|[a-z0-9])[a-z0-9_-]{0,8}", 1..40),
        ) {
            let ids: Vec<ProviderKey> = ids
                .iter()
                .map(|s| ProviderKey::parse("p", s).expect("valid"))
                .collect();
            let mut full = ids.clone();
            full.sort();
            let mut by_prefix = ids;
            by_prefix.sort_by(|a, b| id_prefix(a).cmp(&id_prefix(b)).then_with(|| a.cmp(b)));
            prop_assert_eq!(by_prefix, full);
        }

        /// A round's events are its decisions in order, cut into parts that each fit one
        /// atomic append with their record, every record naming its part and the whole round.
        #[test]
        fn a_round_is_laid_out_in_parts_that_each_fit_one_append(
            expired in 0usize..3_100,
            cancelled in 0usize..40,
        ) {
            let r = endings_only(expired, cancelled);
            let incident = muster_schema::IncidentId::parse("i", "parts").expect("valid");
            let events = round_events(&State::default(), &incident, &r);
            let n = expired + cancelled;
            let parts = parts_for(n);
            prop_assert_eq!(events.len(), n + parts as usize);
            let mut decisions = Vec::new();
            let mut in_part = 0;
            let mut seen_parts = 0;
            for (_, e) in &events {
                match e.round_record() {
                    Some(rec) => {
                        // With its record, a part fits one append of 1,000 messages.
                        prop_assert!(in_part <= DECISIONS_PER_PART);
                        prop_assert_eq!((rec.part, rec.parts), (seen_parts, parts));
                        prop_assert_eq!((rec.expired as usize, rec.cancelled as usize), (expired, cancelled));
                        prop_assert_eq!(rec.is_last_part(), seen_parts + 1 == parts);
                        seen_parts += 1;
                        in_part = 0;
                    }
                    None => {
                        decisions.push(e.clone());
                        in_part += 1;
                    }
                }
            }
            prop_assert_eq!(seen_parts, parts);
            prop_assert!(matches!(events.last(), Some((_, e)) if e.round_record().is_some()));
            // The same decisions, in the same order, as the round laid out in one part.
            let one: Vec<_> = round_events_in(&State::default(), &incident, &r, 1)
                .into_iter()
                .map(|(_, e)| e)
                .filter(|e| e.round_record().is_none())
                .collect();
            prop_assert_eq!(decisions, one);
        }
    }

    #[test]
    fn rounds_of_up_to_999_decisions_are_one_part() {
        assert_eq!(
            [0, 1, 999, 1_000, 1_998, 1_999, 2_997, 2_998].map(parts_for),
            [1, 1, 1, 2, 2, 3, 3, 4]
        );
        // Parts are as near equal as may be: 1,000 decisions are two parts of 500.
        let r = endings_only(1_000, 0);
        let incident = muster_schema::IncidentId::parse("i", "parts").expect("valid");
        let events = round_events(&State::default(), &incident, &r);
        let records: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, (_, e))| e.round_record().is_some())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(records, vec![500, 1_001]);
    }

    /// A crowd: needs at three places, each place with needs of two shapes (one for a party of
    /// two), urgencies 1 to 5 and reported over two hours (so their scores differ by
    /// constants); volunteers around them, some taking two. Log time is two hours on.
    fn crowd() -> State {
        use muster_schema::events::*;
        use muster_schema::*;
        const T0: i64 = 1_800_000_000_000_000;
        const MINUTE: i64 = 60_000_000;
        let incident = IncidentId::parse("i", "crowd").expect("valid");
        let window = TimeWindow::new(T0, T0 + 600 * MINUTE).expect("valid");
        let place = |i: usize| {
            GeoPoint::from_degrees(53.9 + (i % 9) as f64 * 0.011, -1.1 + (i / 9) as f64 * 0.017)
                .expect("valid")
        };
        let mut state = State::default();
        let mut seq = 0u64;
        let mut at = |minutes: i64, event: Event| {
            seq += 1;
            state.apply(
                seq,
                &Envelope::generated(
                    seq,
                    incident.clone(),
                    PartitionCode::parse("p", "A1").expect("valid"),
                    Timestamp(T0 + minutes * MINUTE),
                    AgencyId::parse("a", "council").expect("valid"),
                    event,
                ),
            );
        };
        at(
            0,
            Event::IncidentDeclaredV1(IncidentDeclaredV1 {
                incident: incident.clone(),
                name: "crowd".into(),
                partitions: vec![],
                categories: vec![],
                policy: PolicyV1::default(),
            }),
        );
        for i in 0..60usize {
            at(
                0,
                Event::OfferRegisteredV1(OfferRegisteredV1 {
                    offer: EntityId::hash(&[b"o", &i.to_le_bytes()]),
                    reference: Reference::parse("r", &format!("o{i}")).expect("valid"),
                    provider: Provider::Volunteer(
                        PersonId::parse("p", &format!("v{i}")).expect("valid"),
                    ),
                    spec: OfferSpecV1 {
                        kinds: vec![Category::Shelter],
                        skills: vec![],
                        capacity: 1 + (i % 3 == 0) as u16,
                        location: place(i),
                        travel_radius_m: 4_000 + (i as u32 % 4) * 2_000,
                        availability: vec![window],
                    },
                    personal: Personal::None,
                }),
            );
        }
        for i in 0..120usize {
            at(
                i as i64,
                Event::NeedReportedV1(NeedReportedV1 {
                    need: EntityId::hash(&[b"n", &i.to_le_bytes()]),
                    reference: Reference::parse("r", &format!("n{i}")).expect("valid"),
                    spec: NeedSpecV1 {
                        category: Category::Shelter,
                        urgency: Urgency::new("u", 1 + (i % 5) as u32).expect("valid"),
                        party_size: 1 + (i % 7 == 0) as u16,
                        window,
                        location: place(20 * (i % 3)),
                        required_skills: vec![],
                        required_verifications: vec![],
                        vulnerable: false,
                    },
                    personal: Personal::None,
                }),
            );
        }
        let tick = TickV1 {
            incident: incident.clone(),
        };
        at(120, Event::TickV1(tick));
        state
    }

    /// Needs alike share one search, and each gets the list its own search would find (the
    /// same providers, its own scores, its own bound on those left out), whatever the
    /// engine's search and the list's length.
    #[test]
    fn needs_alike_share_a_search_and_get_their_own_lists() {
        let state = crowd();
        let open = open_needs(&state);
        assert_eq!(open.len(), 120);
        let every: Vec<usize> = (0..open.len()).collect();
        let go = AtomicBool::new(false);
        for search in [
            Search::Full,
            Search::Lean,
            Search::Nearest,
            Search::Tiered,
            Search::Roomy,
            Search::Joined,
        ] {
            for n in [1, 8, 32, 500] {
                let size = vec![n; open.len()];
                let shared = find_lists(&state, &open, &every, &size, search, &go, 1)
                    .expect("not cancelled");
                let alone = search_lists(&state, &open, &every, &size, search, &go, 1)
                    .expect("not cancelled");
                // Six shapes of need, so six searches: the others looked at nothing.
                assert_eq!(
                    shared.iter().filter(|f| f.looked > 0).count(),
                    6,
                    "{search:?} {n}"
                );
                assert!(alone.iter().all(|f| f.looked > 0));
                for (i, (a, b)) in shared.iter().zip(&alone).enumerate() {
                    assert!(!b.best.is_empty(), "need {i} has candidates");
                    assert_eq!(a.best, b.best, "{search:?} {n}: need {i}'s list");
                    assert_eq!(a.beyond, b.beyond, "{search:?} {n}: need {i}'s bound");
                }
            }
        }
    }
}

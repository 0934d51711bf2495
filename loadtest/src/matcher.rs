//! The matcher benchmark: the engine's rounds on generated surges, against first-come greedy,
//! with the optimum certified independently of the solver.
//!
//! Scenarios (from issue 3), each built by folding generated events into the engine's state as
//! the matcher would:
//! - `flood`: 2k open needs, 20k offers in a 40 km square around 6 flooded clusters, radius
//!   2–10 km, 8 skills, a mix of verifications.
//! - `scarce`: 10k needs, 15k offers; half the needs require an enhanced check, 10% of the
//!   volunteers hold one.
//!
//! Optimality certificate: a matching (with a private "unmatched" option per need) is a
//! minimum-cost assignment exactly when its residual graph has no negative cycle. The benchmark
//! builds that graph from the matching alone and searches it with Bellman-Ford (SPFA); it uses
//! nothing of the solver's internals, so a bug in the solver cannot hide behind it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use muster_matching::round::{RoundInstance, WideningStats};
use muster_matching::solver::{Instance, Solution};
use muster_matching::{State, solver};
use muster_schema::events::*;
use muster_schema::*;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which scenarios to run.
    #[arg(long, value_delimiter = ',', default_value = "flood,scarce,pandemic")]
    scenarios: Vec<String>,
    /// Size of the pandemic replay relative to the issue's (50k needs, 300k offers).
    #[arg(long, default_value_t = 0.1)]
    pandemic_scale: f64,
    /// Seed of the generators (same seed, same surge).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The engine the pandemic replay decides its rounds with (default: the matcher's).
    #[arg(long, default_value_t = muster_matching::round::ENGINE)]
    engine: u16,
    /// The short-list engines run on the flood and scarce states, next to engine 1.
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    engines: Vec<u16>,
    /// Threads a pandemic replay's short-list rounds search on (the matcher uses up to
    /// `SEARCH_THREADS`, as many as the machine has); the rounds are the same whatever the count.
    #[arg(long, default_value_t = muster_matching::round::SEARCH_THREADS)]
    search_threads: usize,
}

/// SplitMix64: a small, fixed, seedable generator, so a scenario is the same on every machine.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub(crate) fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

const T0: i64 = 1_800_000_000_000_000;
const HOUR: i64 = 3_600_000_000;
const CENTRE: (i32, i32) = (53_800_000, -1_550_000); // Leeds, microdegrees
/// Half of the 40 km square, in microdegrees of latitude and of longitude (at 53.8°N).
const HALF_LAT: i64 = 180_000;
const HALF_LON: i64 = 304_000;

struct Builder {
    state: State,
    seq: u64,
}

impl Builder {
    fn new() -> Self {
        let mut b = Self {
            state: State::default(),
            seq: 0,
        };
        b.apply(Event::IncidentDeclaredV1(IncidentDeclaredV1 {
            incident: IncidentId::parse("i", "bench").expect("valid"),
            name: "bench".into(),
            partitions: vec![],
            categories: vec![],
            policy: PolicyV1::default(),
        }));
        b
    }

    fn apply(&mut self, event: Event) {
        self.seq += 1;
        let env = Envelope {
            schema_version: ENVELOPE_VERSION,
            event_id: EntityId::hash(&[&self.seq.to_le_bytes()]),
            incident: IncidentId::parse("i", "bench").expect("valid"),
            partition: PartitionCode::parse("p", "A").expect("valid"),
            recorded_at: Timestamp(T0),
            actor: AgencyId::parse("a", "bench").expect("valid"),
            idempotency_key: String::new(),
            correlation_id: String::new(),
            causation_id: None,
            event,
        };
        self.state.apply(self.seq, &env);
    }
}

fn skill(i: u64) -> Skill {
    Skill::parse("s", &format!("skill-{i}")).expect("valid")
}

fn point(lat: i64, lon: i64) -> GeoPoint {
    GeoPoint {
        lat_e6: (i64::from(CENTRE.0) + lat) as i32,
        lon_e6: (i64::from(CENTRE.1) + lon) as i32,
    }
}

fn day() -> TimeWindow {
    TimeWindow {
        start: Timestamp(T0),
        end: Timestamp(T0 + 12 * HOUR),
    }
}

struct Mix {
    needs: usize,
    offers: usize,
    /// Percent of needs requiring an enhanced check.
    need_enhanced: u64,
    /// Percent of volunteers holding one.
    vol_enhanced: u64,
    /// Needs gather around this many flooded clusters (0: spread over the whole square).
    clusters: usize,
    skills: u64,
}

fn generate(mix: &Mix, seed: u64) -> State {
    let mut rng = Rng(seed);
    let mut b = Builder::new();
    let centres: Vec<(i64, i64)> = (0..mix.clusters)
        .map(|_| {
            (
                rng.between(-HALF_LAT, HALF_LAT),
                rng.between(-HALF_LON, HALF_LON),
            )
        })
        .collect();
    for o in 0..mix.offers {
        let vol = PersonId::parse("p", &format!("vol-{o}")).expect("valid");
        let mut skills: Vec<Skill> = (0..rng.between(1, 3))
            .map(|_| skill(rng.below(mix.skills)))
            .collect();
        skills.sort();
        skills.dedup();
        b.apply(Event::OfferRegisteredV1(OfferRegisteredV1 {
            offer: EntityId::hash(&[b"offer", &(o as u64).to_le_bytes()]),
            reference: Reference::parse("r", &format!("o{o}")).expect("valid"),
            provider: Provider::Volunteer(vol.clone()),
            spec: OfferSpecV1 {
                kinds: vec![Category::CareVisit, Category::Food, Category::Transport],
                skills,
                capacity: rng.between(1, 3) as u16,
                location: point(
                    rng.between(-HALF_LAT, HALF_LAT),
                    rng.between(-HALF_LON, HALF_LON),
                ),
                travel_radius_m: rng.between(2_000, 10_000) as u32,
                availability: vec![day()],
            },
            personal: Personal::None,
        }));
        let kind = if rng.chance(mix.vol_enhanced) {
            Some(VerificationKind::CriminalRecordEnhanced)
        } else if rng.chance(40) {
            Some(VerificationKind::CriminalRecordBasic)
        } else {
            None
        };
        if let Some(kind) = kind {
            b.apply(Event::VerificationRecordedV1(VerificationRecordedV1 {
                verification: EntityId::hash(&[b"verif", &(o as u64).to_le_bytes()]),
                reference: Reference::parse("r", &format!("v{o}")).expect("valid"),
                person: vol,
                kind,
                issuer: AgencyId::parse("i", "dbs").expect("valid"),
                issued_at: Timestamp(T0 - 24 * HOUR),
                expires_at: None,
                personal: Personal::None,
            }));
        }
    }
    for n in 0..mix.needs {
        let (lat, lon) = if centres.is_empty() {
            (
                rng.between(-HALF_LAT, HALF_LAT),
                rng.between(-HALF_LON, HALF_LON),
            )
        } else {
            let c = centres[rng.below(centres.len() as u64) as usize];
            (
                c.0 + rng.between(-40_000, 40_000),
                c.1 + rng.between(-68_000, 68_000),
            )
        };
        let required_verifications = if rng.chance(mix.need_enhanced) {
            vec![VerificationKind::CriminalRecordEnhanced]
        } else {
            vec![]
        };
        let required_skills = if rng.chance(30) {
            vec![skill(rng.below(mix.skills))]
        } else {
            vec![]
        };
        b.apply(Event::NeedReportedV1(NeedReportedV1 {
            need: EntityId::hash(&[b"need", &(n as u64).to_le_bytes()]),
            reference: Reference::parse("r", &format!("n{n}")).expect("valid"),
            spec: NeedSpecV1 {
                category: [Category::CareVisit, Category::Food, Category::Transport]
                    [rng.below(3) as usize],
                urgency: Urgency::new("u", rng.between(1, 5) as u32).expect("1..5"),
                party_size: 1,
                window: day(),
                location: point(
                    lat.clamp(-HALF_LAT, HALF_LAT),
                    lon.clamp(-HALF_LON, HALF_LON),
                ),
                required_skills,
                required_verifications,
                vulnerable: false,
            },
            personal: Personal::None,
        }));
    }
    b.state
}

/// Whether `s` is a maximum-weight matching of `inst`: no negative cycle in the residual graph
/// of the equivalent min-cost assignment (costs `-weight`; each row may take its private
/// zero-cost "unmatched" column; a super node lets a column become free or taken).
pub(crate) fn certify_optimal(inst: &Instance, s: &Solution) -> bool {
    let n = inst.rows.len();
    let m = inst.columns;
    // Nodes: rows 0..n, real columns n..n+m, dummy columns n+m..n+m+n, super node last.
    let (col, dummy, sup) = (|j: usize| n + j, |i: usize| n + m + i, n + m + n);
    let nodes = sup + 1;
    let mut arcs: Vec<Vec<(usize, i64)>> = vec![Vec::new(); nodes];
    let mut taken = vec![false; m + n];
    for (i, row) in inst.rows.iter().enumerate() {
        let matched = s.assigned[i];
        for &(j, w) in row {
            if matched == Some(j) {
                arcs[col(j)].push((i, w)); // undo: give back -cost
                taken[j] = true;
            } else {
                arcs[i].push((col(j), -w));
            }
        }
        if matched.is_none() {
            arcs[dummy(i)].push((i, 0));
            taken[m + i] = true;
        } else {
            arcs[i].push((dummy(i), 0));
        }
    }
    for (j, is_taken) in taken.iter().enumerate() {
        let node = if j < m { col(j) } else { dummy(j - m) };
        arcs[sup].push((node, 0));
        if !is_taken {
            arcs[node].push((sup, 0));
        }
    }
    // SPFA from every node at distance 0: a node relaxed `nodes` times lies on a negative cycle.
    let mut dist = vec![0i64; nodes];
    let mut count = vec![0usize; nodes];
    let mut queued = vec![true; nodes];
    let mut queue: VecDeque<usize> = (0..nodes).collect();
    while let Some(x) = queue.pop_front() {
        queued[x] = false;
        for &(y, c) in &arcs[x] {
            if dist[x] + c < dist[y] {
                dist[y] = dist[x] + c;
                if !queued[y] {
                    count[y] += 1;
                    if count[y] >= nodes {
                        return false;
                    }
                    queued[y] = true;
                    queue.push_back(y);
                }
            }
        }
    }
    true
}

/// The Gini coefficient of non-negative counts.
pub(crate) fn gini(mut xs: Vec<u64>) -> f64 {
    xs.sort_unstable();
    let n = xs.len() as f64;
    let total: f64 = xs.iter().map(|&x| x as f64).sum();
    if xs.is_empty() || total == 0.0 {
        return 0.0;
    }
    let weighted: f64 = xs
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as f64 + 1.0) * x as f64)
        .sum();
    (2.0 * weighted) / (n * total) - (n + 1.0) / n
}

fn run_scenario(name: &str, mix: &Mix, seed: u64, engines: &[u16]) {
    let t = Instant::now();
    let state = generate(mix, seed);
    let events = state.through_seq;
    let generated = t.elapsed();

    let t = Instant::now();
    let built = RoundInstance::build(&state);
    let inst = built.instance();
    let build = t.elapsed();
    let t = Instant::now();
    let exact = solver::solve(&inst);
    let solve = t.elapsed();
    let greedy = built.first_come_greedy(&state);
    let t = Instant::now();
    let certified = certify_optimal(&inst, &exact);
    let certify = t.elapsed();
    let edges: usize = inst.rows.iter().map(Vec::len).sum();
    // Engines 2 and 3 (what the matcher runs now) on the same state: short lists, widened by
    // duals, found through coarse and through fine cells.
    let widening: Vec<(u16, Solution, WideningStats, Duration)> = engines
        .iter()
        .map(|&engine| {
            let t = Instant::now();
            let (_, solution, stats) =
                RoundInstance::solve_widening(&state, engine).expect("checked by run");
            (engine, solution, stats, t.elapsed())
        })
        .collect();

    let matched = |s: &Solution| s.assigned.iter().filter(|a| a.is_some()).count();
    let urgent_rows: Vec<usize> = built
        .needs
        .iter()
        .enumerate()
        .filter(|(_, id)| state.needs[id].spec.urgency.get() == 5)
        .map(|(i, _)| i)
        .collect();
    let urgent_filled = |s: &Solution| {
        urgent_rows
            .iter()
            .filter(|&&i| s.assigned[i].is_some())
            .count()
    };
    let enhanced_rows: Vec<usize> = built
        .needs
        .iter()
        .enumerate()
        .filter(|(_, id)| !state.needs[id].spec.required_verifications.is_empty())
        .map(|(i, _)| i)
        .collect();
    let enhanced_filled = |s: &Solution| {
        enhanced_rows
            .iter()
            .filter(|&&i| s.assigned[i].is_some())
            .count()
    };
    let offered = |s: &Solution| s.assigned.iter().flatten().count();
    let tasks: Vec<u64> = {
        let mut per = vec![0u64; inst.columns];
        for a in exact.assigned.iter().flatten() {
            per[*a] += 1;
        }
        per
    };

    println!(
        "\n== {name}: {} needs, {} offers ({events} events folded in {:.2}s)",
        mix.needs,
        mix.offers,
        generated.as_secs_f64()
    );
    println!(
        "instance: {} open needs x {} providers with a candidate, {edges} eligible pairs; built in {:.1} ms",
        inst.rows.len(),
        inst.columns,
        build.as_secs_f64() * 1e3
    );
    println!(
        "exact:  total {:>10}  matched {:>6}  urgency-5 filled {}/{}  enhanced-needs filled {}/{}  solve {:.1} ms",
        exact.total,
        matched(&exact),
        urgent_filled(&exact),
        urgent_rows.len(),
        enhanced_filled(&exact),
        enhanced_rows.len(),
        solve.as_secs_f64() * 1e3
    );
    for (engine, widened, stats, took) in &widening {
        println!(
            "engine {engine}: total {:>10} ({} engine 1's certified optimum)  matched {:>6}  {} solves, {} lists widened, {} candidate pairs; build + solve {:.1} ms (engine 1: {:.1} ms)",
            widened.total,
            if widened.total == exact.total {
                "="
            } else {
                "DIFFERS FROM"
            },
            matched(widened),
            stats.solves,
            stats.widened,
            stats.candidates,
            took.as_secs_f64() * 1e3,
            (build + solve).as_secs_f64() * 1e3
        );
    }
    println!(
        "greedy: total {:>10}  matched {:>6}  urgency-5 filled {}/{}  enhanced-needs filled {}/{}  = {:.2}% of optimum",
        greedy.total,
        matched(&greedy),
        urgent_filled(&greedy),
        urgent_rows.len(),
        enhanced_filled(&greedy),
        enhanced_rows.len(),
        100.0 * greedy.total as f64 / exact.total.max(1) as f64
    );
    println!(
        "optimum certified (no negative cycle in the residual graph): {}  ({:.0} ms); exact = {:.2}% of optimum",
        if certified { "yes" } else { "NO" },
        certify.as_secs_f64() * 1e3,
        if certified { 100.0 } else { f64::NAN }
    );
    println!(
        "fairness: {:.1}% of volunteers with a candidate need offered a task this round; Gini of tasks over them {:.3}",
        100.0 * offered(&exact) as f64 / inst.columns.max(1) as f64,
        gini(tasks),
    );
}

pub fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "matcher benchmark (engine only; folds on one core, short-list rounds search on up to {} threads), seed {}",
        muster_matching::round::SEARCH_THREADS,
        args.seed
    );
    if let Some(e) = args
        .engines
        .iter()
        .find(|e| !(2..=muster_matching::round::LATEST_ENGINE).contains(e))
    {
        anyhow::bail!(
            "--engines takes the short-list engines 2 to {}, not {e}",
            muster_matching::round::LATEST_ENGINE
        );
    }
    for s in &args.scenarios {
        match s.as_str() {
            "flood" => run_scenario(
                "flash flood, abundant",
                &Mix {
                    needs: 2_000,
                    offers: 20_000,
                    need_enhanced: 20,
                    vol_enhanced: 20,
                    clusters: 6,
                    skills: 8,
                },
                args.seed,
                &args.engines,
            ),
            "scarce" => run_scenario(
                "scarce vetted carers",
                &Mix {
                    needs: 10_000,
                    offers: 15_000,
                    need_enhanced: 50,
                    vol_enhanced: 10,
                    clusters: 0,
                    skills: 8,
                },
                args.seed,
                &args.engines,
            ),
            "pandemic" => crate::pandemic::run(
                args.pandemic_scale,
                args.seed,
                args.engine,
                args.search_threads,
            )?,
            other => anyhow::bail!("unknown scenario {other}: flood, scarce or pandemic"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_accepts_the_optimum_and_rejects_a_worse_matching() {
        let inst = Instance {
            columns: 2,
            rows: vec![vec![(0, 10), (1, 9)], vec![(0, 8)]],
        };
        let exact = solver::solve(&inst);
        assert!(certify_optimal(&inst, &exact));
        let greedy = solver::greedy(&inst);
        assert!(greedy.total < exact.total);
        assert!(!certify_optimal(&inst, &greedy));
        // Leaving a row unmatched when it could take a free column is not optimal either.
        let lazy = Solution {
            assigned: vec![Some(1), None],
            total: 9,
        };
        assert!(!certify_optimal(&inst, &lazy));
    }

    #[test]
    fn gini_is_zero_for_equal_loads_and_high_for_concentrated_ones() {
        assert!(gini(vec![1, 1, 1, 1]).abs() < 1e-9);
        assert!(gini(vec![0, 0, 0, 4]) > 0.7);
    }
}

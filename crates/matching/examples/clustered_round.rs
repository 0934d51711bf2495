//! Times one round of the matcher's engine where many needs share one place — an evacuation
//! centre, a flooded street — against the same needs spread out, each at a volunteer's door.
//!
//! `cargo run --release -p muster-matching --example clustered_round -- [needs] [radius_m]`
//!
//! Volunteers stand on a grid about a kilometre apart (one per need, each able to take one
//! task, all within `radius_m` of every need). Clustered, every need ranks the volunteers in
//! the same order, so every need's short list starts with the same few volunteers and is
//! widened until the lists together hold a volunteer for each need: a dense instance. Needs
//! alike share one search for their lists, and the solver spreads out one row of them per
//! search, so what remains is the size of the instance.

use std::time::Instant;

use muster_matching::State;
use muster_matching::round::RoundInstance;
use muster_schema::events::*;
use muster_schema::*;

const T0: i64 = 1_800_000_000_000_000;

/// `n` volunteers on the grid, and `n` needs at the grid's corner (clustered) or each at a
/// volunteer's place (spread).
fn state(n: usize, radius_m: u32, clustered: bool) -> State {
    let incident = IncidentId::parse("i", "clustered").expect("valid");
    let window = TimeWindow::new(T0, T0 + 3_600_000_000).expect("valid");
    let place = |i: usize| {
        GeoPoint::from_degrees(
            53.9 + (i % 40) as f64 * 0.009,
            -1.1 + (i / 40) as f64 * 0.015,
        )
        .expect("valid")
    };
    let mut state = State::default();
    let mut seq = 0u64;
    let mut given = |event: Event| {
        seq += 1;
        state.apply(
            seq,
            &Envelope::generated(
                seq,
                incident.clone(),
                PartitionCode::parse("p", "A1").expect("valid"),
                Timestamp(T0),
                AgencyId::parse("a", "council").expect("valid"),
                event,
            ),
        );
    };
    given(Event::IncidentDeclaredV1(IncidentDeclaredV1 {
        incident: incident.clone(),
        name: "clustered".into(),
        partitions: vec![],
        categories: vec![],
        policy: PolicyV1::default(),
    }));
    for i in 0..n {
        given(Event::OfferRegisteredV1(OfferRegisteredV1 {
            offer: EntityId::hash(&[b"o", &i.to_le_bytes()]),
            reference: Reference::parse("r", &format!("o{i}")).expect("valid"),
            provider: Provider::Volunteer(PersonId::parse("p", &format!("v{i}")).expect("valid")),
            spec: OfferSpecV1 {
                kinds: vec![Category::Food],
                skills: vec![],
                capacity: 1,
                location: place(i),
                travel_radius_m: radius_m,
                availability: vec![window],
            },
            personal: Personal::None,
        }));
    }
    for i in 0..n {
        given(Event::NeedReportedV1(NeedReportedV1 {
            need: EntityId::hash(&[b"n", &i.to_le_bytes()]),
            reference: Reference::parse("r", &format!("n{i}")).expect("valid"),
            spec: NeedSpecV1 {
                category: Category::Food,
                urgency: Urgency::new("u", 3).expect("valid"),
                party_size: 1,
                window,
                location: if clustered { place(0) } else { place(i) },
                required_skills: vec![],
                required_verifications: vec![],
                vulnerable: false,
            },
            personal: Personal::None,
        }));
    }
    state
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let radius_m: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    for clustered in [false, true] {
        let state = state(n, radius_m, clustered);
        let started = Instant::now();
        let (_, solved, stats) =
            RoundInstance::solve_widening(&state, muster_matching::round::ENGINE)
                .expect("a short-list engine");
        let matched = solved.assigned.iter().flatten().count();
        println!(
            "{n} needs {}: round decided in {:.1} ms, {matched} matched; {} solves, {} lists widened, {} candidates in the last instance, {} offers judged",
            if clustered {
                "at one place"
            } else {
                "spread out"
            },
            started.elapsed().as_secs_f64() * 1e3,
            stats.solves,
            stats.widened,
            stats.candidates,
            stats.judged,
        );
    }
}

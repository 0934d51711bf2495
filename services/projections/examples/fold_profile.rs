//! Folds a generated log (offers, then needs) straight into a fresh RocksDB read model, with no
//! NATS: for profiling the fold (`perf record target/release/examples/fold_profile 200000`).

use std::time::Instant;

use muster_projections::db::Db;
use muster_projections::follow::{Commit, Item, fold_batch};
use muster_schema::events::*;
use muster_schema::*;

/// The allocator `muster` runs with, so the profile shows the fold as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let t0 = 1_800_000_000_000_000;
    let incident = IncidentId::parse("i", "profile").expect("valid");
    let window = TimeWindow::new(t0, t0 + 86_400_000_000).expect("valid");
    let mut items: Vec<Item> = Vec::new();
    let mut push = |event: Event| {
        let seq = items.len() as u64 + 1;
        let env = Envelope::generated(
            seq,
            incident.clone(),
            PartitionCode::parse("p", "A1").expect("valid"),
            Timestamp(t0 + seq as i64 * 1_000),
            AgencyId::parse("a", "council").expect("valid"),
            event,
        );
        items.push((seq, subject::for_envelope(&env), Ok(env)));
    };
    push(Event::IncidentDeclaredV1(IncidentDeclaredV1 {
        incident: incident.clone(),
        name: "profile".into(),
        partitions: vec![],
        categories: vec![],
        policy: PolicyV1::default(),
    }));
    for i in 0..n {
        let location =
            GeoPoint::from_degrees(53.0 + (i % 1000) as f64 * 0.001, -1.0).expect("valid");
        if i % 2 == 0 {
            push(Event::OfferRegisteredV1(OfferRegisteredV1 {
                offer: EntityId::hash(&[b"o", &i.to_le_bytes()]),
                reference: Reference::parse("r", &format!("o{i}")).expect("valid"),
                provider: Provider::Volunteer(
                    PersonId::parse("p", &format!("vol-{i}")).expect("valid"),
                ),
                spec: OfferSpecV1 {
                    kinds: vec![Category::Food],
                    skills: vec![],
                    capacity: 1,
                    location,
                    travel_radius_m: 5_000,
                    availability: vec![window],
                },
                personal: Personal::None,
            }));
        } else {
            push(Event::NeedReportedV1(NeedReportedV1 {
                need: EntityId::hash(&[b"n", &i.to_le_bytes()]),
                reference: Reference::parse("r", &format!("n{i}")).expect("valid"),
                spec: NeedSpecV1 {
                    category: Category::Food,
                    urgency: Urgency::new("u", (i % 5) as u32 + 1).expect("valid"),
                    party_size: 1,
                    window,
                    location,
                    required_skills: vec![],
                    required_verifications: vec![],
                    vulnerable: false,
                },
                personal: Personal::None,
            }));
        }
    }
    let dir = tempfile::tempdir()?;
    let db = Db::open(dir.path())?;
    let started = Instant::now();
    for chunk in items.chunks(5_000) {
        fold_batch(&db, chunk, Commit::Unlogged)?;
    }
    let elapsed = started.elapsed();
    println!(
        "{} events folded into RocksDB in {:.2}s: {:.0} events/s",
        items.len(),
        elapsed.as_secs_f64(),
        items.len() as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

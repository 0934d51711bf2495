//! What one snapshot of a large incident costs the matcher: its state after an NHS-sized import
//! (750,000 volunteer offers and a check for three in seven of them), encoded as the matcher
//! encodes it and written as the matcher writes it.
//!
//! `cargo run --release -p muster-matcher --example snapshot_cost -- [offers]`

use std::time::Instant;

use muster_matching::State;
use muster_schema::events::*;
use muster_schema::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(750_000);
    let t0 = 1_800_000_000_000_000;
    let incident = IncidentId::parse("i", "nhs").expect("valid");
    let window = TimeWindow::new(t0, t0 + 3_600_000_000).expect("valid");
    let mut state = State::default();
    let mut seq = 0u64;
    let mut given = |state: &mut State, event: Event| {
        seq += 1;
        let env = Envelope::generated(
            seq,
            incident.clone(),
            PartitionCode::parse("p", "A1").expect("valid"),
            Timestamp(t0),
            AgencyId::parse("a", "council").expect("valid"),
            event,
        );
        state.apply(seq, &env);
    };
    given(
        &mut state,
        Event::IncidentDeclaredV1(IncidentDeclaredV1 {
            incident: incident.clone(),
            name: "nhs".into(),
            partitions: vec![],
            categories: vec![],
            policy: PolicyV1::default(),
        }),
    );
    let started = Instant::now();
    for i in 0..n {
        let location = GeoPoint::from_degrees(
            50.0 + (i % 1000) as f64 * 0.005,
            -3.0 + (i / 1000) as f64 * 0.005,
        )
        .expect("valid");
        let volunteer = PersonId::parse("p", &format!("v{i}")).expect("valid");
        given(
            &mut state,
            Event::OfferRegisteredV1(OfferRegisteredV1 {
                offer: EntityId::hash(&[b"o", &i.to_le_bytes()]),
                reference: Reference::parse("r", &format!("o{i}")).expect("valid"),
                provider: Provider::Volunteer(volunteer.clone()),
                spec: OfferSpecV1 {
                    kinds: vec![Category::Food, Category::Transport],
                    skills: vec![],
                    capacity: 1,
                    location,
                    travel_radius_m: 5_000,
                    availability: vec![window],
                },
                personal: Personal::None,
            }),
        );
        if i % 7 < 3 {
            given(
                &mut state,
                Event::VerificationRecordedV1(VerificationRecordedV1 {
                    verification: EntityId::hash(&[b"v", &i.to_le_bytes()]),
                    reference: Reference::parse("r", &format!("v{i}")).expect("valid"),
                    person: volunteer,
                    kind: VerificationKind::CriminalRecordBasic,
                    issuer: AgencyId::parse("i", "dbs").expect("valid"),
                    issued_at: Timestamp(t0 - 1),
                    expires_at: None,
                    personal: Personal::None,
                }),
            );
        }
    }
    println!(
        "{} records folded from {seq} events in {:.2} s",
        state.records(),
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let bytes = muster_matcher::snapshot::encode(&muster_matcher::snapshot::IncidentRef {
        state: &state,
        last_input: seq,
        last_round: 0,
        cut_short: false,
        last_record: 0,
    })?;
    println!(
        "snapshot encoded: {} MB in {:.2} s",
        bytes.len() >> 20,
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir()?;
    let store = muster_store::Store::open(dir.path())?;
    let started = Instant::now();
    store.write([muster_store::Change::Put(b"snapshot".to_vec(), bytes)])?;
    println!(
        "snapshot written (synced): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

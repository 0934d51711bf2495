//! The three surges, generated from a seed: who needs help, who offers it, which checks they hold.
//!
//! Every scenario also plants a few needs no one can meet (out of every volunteer's reach, or
//! asking for what nobody holds or offers), so the end-of-run checks can tell "matched everything
//! matchable" from "matched everything".

use muster_proto::v1 as pb;

use crate::matcher::Rng;

/// Which surge to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// A city flooded in a few areas: transport out, shelter, supplies.
    Flood,
    /// Many small requests over a wide area (shopping, prescriptions, check-in visits), many
    /// volunteers.
    Pandemic,
    /// Families needing a host of their size; hosts with capacity and enhanced checks.
    Hosting,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Flood => "flood",
            Scenario::Pandemic => "pandemic",
            Scenario::Hosting => "hosting",
        }
    }
}

/// One need the surge will report, and whether the generator made it matchable.
#[derive(Debug, Clone)]
pub struct PlannedNeed {
    pub request: pb::ReportNeedRequest,
    pub urgency: u32,
    /// `None`: some volunteer can meet it; `Some(why)`: none can, by design.
    pub unmatchable: Option<&'static str>,
}

/// A whole surge: the incident's policy, what an agency imports first, then the needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub policy: pb::Policy,
    /// Verifications and offers, in import order (each person's checks before their offer).
    pub registrations: Vec<pb::bulk_item::Command>,
    /// Distinct providers (volunteers and organisations) among the offers.
    pub providers: usize,
    pub needs: Vec<PlannedNeed>,
}

/// Sizes and times of a generated surge.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub needs: usize,
    pub volunteers: usize,
    /// Wall-clock seconds (Unix) the surge starts: windows and checks are placed around it.
    pub now_s: i64,
    pub acceptance_timeout_s: u32,
}

const KM_LAT: f64 = 1.0 / 111.0;

fn around(rng: &mut Rng, (lat, lon): (f64, f64), km: f64) -> pb::Location {
    let dlat = (rng.between(-1000, 1000) as f64 / 1000.0) * km * KM_LAT;
    let dlon = (rng.between(-1000, 1000) as f64 / 1000.0) * km * KM_LAT / lat.to_radians().cos();
    pb::Location {
        lat: lat + dlat,
        lon: lon + dlon,
    }
}

fn ts(s: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: s,
        nanos: 0,
    })
}

fn window(size: &Size) -> pb::TimeWindow {
    pb::TimeWindow {
        start: ts(size.now_s - 3_600),
        end: ts(size.now_s + 3 * 86_400),
    }
}

struct Builder<'a> {
    rng: Rng,
    size: &'a Size,
    registrations: Vec<pb::bulk_item::Command>,
    providers: usize,
    checks: u64,
}

/// What check a provider holds, if any.
#[derive(Clone, Copy)]
enum Check {
    None,
    Basic,
    Enhanced,
    /// Held once, expired yesterday: must not count.
    Expired,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    fn provider(
        &mut self,
        partition: &str,
        organisation: bool,
        kinds: &[pb::Category],
        capacity: u32,
        at: pb::Location,
        radius_m: u32,
        check: Check,
    ) {
        let i = self.providers;
        self.providers += 1;
        let id = if organisation {
            format!("org-{i}")
        } else {
            format!("vol-{i}")
        };
        let now = self.size.now_s;
        let (kind, issued, expires) = match check {
            Check::None => (None, 0, None),
            Check::Basic => (
                Some(pb::VerificationKind::CriminalRecordBasic),
                now - 30 * 86_400,
                Some(now + 365 * 86_400),
            ),
            Check::Enhanced => (
                Some(pb::VerificationKind::CriminalRecordEnhanced),
                now - 60 * 86_400,
                Some(now + 3 * 365 * 86_400),
            ),
            Check::Expired => (
                Some(pb::VerificationKind::CriminalRecordEnhanced),
                now - 3 * 365 * 86_400,
                Some(now - 86_400),
            ),
        };
        if let Some(kind) = kind {
            self.checks += 1;
            self.registrations
                .push(pb::bulk_item::Command::RecordVerification(
                    pb::RecordVerificationRequest {
                        idempotency_key: String::new(),
                        incident: String::new(),
                        reference: format!("dbs-{}", self.checks),
                        person: id.clone(),
                        kind: kind as i32,
                        qualification: String::new(),
                        issuer: "dbs".into(),
                        issued_at: ts(issued),
                        expires_at: expires.and_then(ts),
                        personal: None,
                    },
                ));
        }
        self.registrations
            .push(pb::bulk_item::Command::RegisterOffer(
                pb::RegisterOfferRequest {
                    idempotency_key: String::new(),
                    incident: String::new(),
                    partition: partition.into(),
                    reference: format!("offer-{i}"),
                    provider: Some(pb::Provider {
                        kind: if organisation {
                            pb::ProviderKind::Organisation
                        } else {
                            pb::ProviderKind::Volunteer
                        } as i32,
                        id,
                    }),
                    offer: Some(pb::OfferSpec {
                        kinds: kinds.iter().map(|k| *k as i32).collect(),
                        skills: vec![],
                        capacity,
                        location: Some(at),
                        travel_radius_m: radius_m,
                        availability: vec![window(self.size)],
                    }),
                    personal: None,
                },
            ));
    }

    fn check(&mut self, basic: u64, enhanced: u64, expired: u64) -> Check {
        let r = self.rng.below(100);
        if r < expired {
            Check::Expired
        } else if r < expired + enhanced {
            Check::Enhanced
        } else if r < expired + enhanced + basic {
            Check::Basic
        } else {
            Check::None
        }
    }
}

/// What a need asks for; `at(...)` then `.party(n)`, `.vetted(...)` as needed.
struct Ask {
    category: pb::Category,
    urgency: u32,
    party: u32,
    at: pb::Location,
    checks: Vec<pb::VerificationRequirement>,
    vulnerable: bool,
}

impl Ask {
    fn new(category: pb::Category, urgency: u32, at: pb::Location) -> Self {
        Self {
            category,
            urgency,
            party: 1,
            at,
            checks: vec![],
            vulnerable: false,
        }
    }

    fn party(mut self, party: u32) -> Self {
        self.party = party;
        self
    }

    /// A vulnerable person: the helper must hold `check`.
    fn vulnerable(mut self, check: pb::VerificationRequirement) -> Self {
        self.checks = vec![check];
        self.vulnerable = true;
        self
    }

    /// The `i`-th need of the surge, in `partition`.
    fn need(self, i: usize, size: &Size, partition: &str) -> PlannedNeed {
        PlannedNeed {
            request: pb::ReportNeedRequest {
                idempotency_key: String::new(),
                incident: String::new(),
                partition: partition.into(),
                reference: format!("case-{i}"),
                need: Some(pb::NeedSpec {
                    category: self.category as i32,
                    urgency: self.urgency,
                    party_size: self.party,
                    window: Some(window(size)),
                    location: Some(self.at),
                    required_skills: vec![],
                    required_verifications: self.checks,
                    vulnerable: self.vulnerable,
                }),
                personal: None,
            },
            urgency: self.urgency,
            unmatchable: None,
        }
    }

    /// As [`Ask::need`], for a need no one can meet, and why.
    fn unmatchable(self, i: usize, size: &Size, partition: &str, why: &'static str) -> PlannedNeed {
        PlannedNeed {
            unmatchable: Some(why),
            ..self.need(i, size, partition)
        }
    }
}

fn requirement(kind: pb::VerificationKind) -> pb::VerificationRequirement {
    pb::VerificationRequirement {
        kind: kind as i32,
        qualification: String::new(),
    }
}

fn policy(size: &Size, max_radius_m: u32) -> pb::Policy {
    pb::Policy {
        weight_urgency: 100,
        weight_waiting: 10,
        weight_distance: 50,
        weight_fairness: 30,
        max_radius_m,
        acceptance_timeout_s: size.acceptance_timeout_s,
        round_every_events: 1_000,
        round_every_ms: 500,
        max_concurrent_per_volunteer: 3,
    }
}

/// One planted need in a hundred is unmatchable (at least one per surge).
fn planted(i: usize, n: usize) -> bool {
    i % 100 == 50 || (n < 100 && i == n / 2)
}

/// Generates `scenario` at `size` from `seed`: the same inputs give the same plan.
pub fn plan(scenario: Scenario, size: Size, seed: u64) -> Plan {
    let mut b = Builder {
        rng: Rng(seed),
        size: &size,
        registrations: Vec::new(),
        providers: 0,
        checks: 0,
    };
    let (policy, needs) = match scenario {
        Scenario::Flood => flood(&mut b),
        Scenario::Pandemic => pandemic(&mut b),
        Scenario::Hosting => hosting(&mut b),
    };
    Plan {
        scenario,
        policy,
        providers: b.providers,
        registrations: b.registrations,
        needs,
    }
}

/// York: five flooded areas within 6 km of the centre; drivers across the city, households
/// offering rooms, four rest centres run by organisations.
fn flood(b: &mut Builder<'_>) -> (pb::Policy, Vec<PlannedNeed>) {
    use pb::Category::*;
    let size = *b.size;
    let centre = (53.96, -1.08);
    let areas: Vec<pb::Location> = (0..5).map(|_| around(&mut b.rng, centre, 6.0)).collect();
    for _ in 0..4 {
        let at = around(&mut b.rng, centre, 5.0);
        b.provider(
            "E06000014",
            true,
            &[Shelter],
            150,
            at,
            20_000,
            Check::Enhanced,
        );
    }
    for _ in 4..size.volunteers {
        let at = around(&mut b.rng, centre, 10.0);
        if b.rng.chance(80) {
            let radius = b.rng.between(8_000, 15_000) as u32;
            let check = b.check(20, 0, 0);
            b.provider(
                "E06000014",
                false,
                &[Transport, Supplies],
                4,
                at,
                radius,
                check,
            );
        } else {
            let capacity = b.rng.between(2, 6) as u32;
            let check = b.check(0, 60, 3);
            b.provider("E06000014", false, &[Shelter], capacity, at, 15_000, check);
        }
    }
    const P: &str = "E06000014";
    let enhanced = requirement(pb::VerificationKind::CriminalRecordEnhanced);
    let needs = (0..size.needs)
        .map(|i| {
            let area = &areas[b.rng.below(5) as usize];
            let at = around(&mut b.rng, (area.lat, area.lon), 1.2);
            if planted(i, size.needs) {
                // A farm cut off 70 km out on the moors: beyond every volunteer's reach.
                let far = around(&mut b.rng, (54.45, -0.2), 1.0);
                let ask = Ask::new(Transport, 5, far).party(2);
                return ask.unmatchable(i, &size, P, "beyond every volunteer's reach");
            }
            let r = b.rng.below(100);
            if r < 45 {
                let urgency = b.rng.between(3, 5) as u32;
                let party = b.rng.between(1, 4) as u32;
                Ask::new(Transport, urgency, at)
                    .party(party)
                    .need(i, &size, P)
            } else if r < 75 {
                let urgency = b.rng.between(2, 5) as u32;
                let party = b.rng.between(1, 6) as u32;
                let ask = Ask::new(Shelter, urgency, at).party(party);
                let ask = if b.rng.chance(40) {
                    ask.vulnerable(enhanced.clone())
                } else {
                    ask
                };
                ask.need(i, &size, P)
            } else {
                let urgency = b.rng.between(1, 3) as u32;
                Ask::new(Supplies, urgency, at).need(i, &size, P)
            }
        })
        .collect();
    (policy(&size, 25_000), needs)
}

/// Norfolk: 25 towns within 50 km; shopping, prescriptions and check-in visits (visits to
/// vulnerable people need a basic check); volunteers near home with two tasks at a time.
fn pandemic(b: &mut Builder<'_>) -> (pb::Policy, Vec<PlannedNeed>) {
    use pb::Category::*;
    let size = *b.size;
    let centre = (52.65, 0.95);
    let towns: Vec<(f64, f64)> = (0..25)
        .map(|_| {
            let l = around(&mut b.rng, centre, 50.0);
            (l.lat, l.lon)
        })
        .collect();
    let partition = |t: usize| format!("E0700{:04}", 143 + t);
    for _ in 0..size.volunteers {
        let t = b.rng.below(25) as usize;
        let at = around(&mut b.rng, towns[t], 4.0);
        let kinds: Vec<pb::Category> = match b.rng.below(4) {
            0 => vec![Food, Supplies, CareVisit],
            1 => vec![Food, Supplies],
            2 => vec![Food, CareVisit],
            _ => vec![Supplies, CareVisit],
        };
        let radius = b.rng.between(4_000, 8_000) as u32;
        let check = b.check(40, 0, 3);
        b.provider(&partition(t), false, &kinds, 2, at, radius, check);
    }
    let needs = (0..size.needs)
        .map(|i| {
            let t = b.rng.below(25) as usize;
            let at = around(&mut b.rng, towns[t], 2.5);
            let urgency = if b.rng.chance(5) {
                5
            } else {
                b.rng.between(1, 4) as u32
            };
            if planted(i, size.needs) {
                let pharmacist = pb::VerificationRequirement {
                    kind: pb::VerificationKind::Qualification as i32,
                    qualification: "pharmacist".into(),
                };
                let ask = Ask::new(Supplies, urgency, at).vulnerable(pharmacist);
                return ask.unmatchable(
                    i,
                    &size,
                    &partition(t),
                    "needs a qualification no volunteer holds",
                );
            }
            let r = b.rng.below(100);
            let ask = if r < 45 {
                Ask::new(Food, urgency, at)
            } else if r < 80 {
                Ask::new(Supplies, urgency, at)
            } else if b.rng.chance(50) {
                let basic = requirement(pb::VerificationKind::CriminalRecordBasic);
                Ask::new(CareVisit, urgency, at).vulnerable(basic)
            } else {
                Ask::new(CareVisit, urgency, at)
            };
            ask.need(i, &size, &partition(t))
        })
        .collect();
    (policy(&size, 10_000), needs)
}

/// Families arriving at five reception cities need a host household of their size, and every
/// host of a family must hold an enhanced check; hosts live anywhere within reach.
fn hosting(b: &mut Builder<'_>) -> (pb::Policy, Vec<PlannedNeed>) {
    use pb::Category::*;
    let size = *b.size;
    let cities = [
        (51.51, -0.13),
        (52.49, -1.89),
        (53.48, -2.24),
        (53.80, -1.55),
        (51.45, -2.59),
    ];
    for _ in 0..size.volunteers {
        let city = cities[b.rng.below(5) as usize];
        let at = around(&mut b.rng, city, 40.0);
        let capacity = b.rng.between(1, 6) as u32;
        let radius = b.rng.between(60_000, 120_000) as u32;
        let check = b.check(0, 70, 4);
        b.provider("E92000001", false, &[Shelter], capacity, at, radius, check);
    }
    const P: &str = "E92000001";
    let needs = (0..size.needs)
        .map(|i| {
            let city = cities[b.rng.below(5) as usize];
            let at = around(&mut b.rng, city, 3.0);
            let urgency = b.rng.between(2, 5) as u32;
            let enhanced = requirement(pb::VerificationKind::CriminalRecordEnhanced);
            let ask = Ask::new(Shelter, urgency, at).vulnerable(enhanced);
            if planted(i, size.needs) {
                return ask
                    .party(9)
                    .unmatchable(i, &size, P, "a family of nine: no host has room");
            }
            let party = match b.rng.below(10) {
                0..=1 => 1,
                2..=4 => 2,
                5..=7 => 3,
                8 => 4,
                _ => b.rng.between(5, 6) as u32,
            };
            ask.party(party).need(i, &size, P)
        })
        .collect();
    (policy(&size, 150_000), needs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size() -> Size {
        Size {
            needs: 300,
            volunteers: 900,
            now_s: 1_800_000_000,
            acceptance_timeout_s: 60,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_another() {
        for s in [Scenario::Flood, Scenario::Pandemic, Scenario::Hosting] {
            let a = plan(s, size(), 7);
            let b = plan(s, size(), 7);
            let c = plan(s, size(), 8);
            assert_eq!(format!("{:?}", a.needs), format!("{:?}", b.needs));
            assert_eq!(a.registrations, b.registrations);
            assert_ne!(a.registrations, c.registrations, "{s:?}");
        }
    }

    #[test]
    fn every_scenario_plants_unmatchable_needs_and_sizes_as_asked() {
        for s in [Scenario::Flood, Scenario::Pandemic, Scenario::Hosting] {
            let p = plan(s, size(), 1);
            assert_eq!(p.needs.len(), 300);
            assert_eq!(p.providers, 900, "{s:?}");
            let planted = p.needs.iter().filter(|n| n.unmatchable.is_some()).count();
            assert_eq!(planted, 3, "{s:?}");
            let offers = p
                .registrations
                .iter()
                .filter(|c| matches!(c, pb::bulk_item::Command::RegisterOffer(_)))
                .count();
            assert_eq!(offers, 900);
        }
    }

    #[test]
    fn hosting_families_all_need_an_enhanced_check_and_hosts_fit_them() {
        let p = plan(Scenario::Hosting, size(), 3);
        for n in &p.needs {
            let spec = n.request.need.as_ref().expect("spec");
            assert_eq!(spec.required_verifications.len(), 1);
            if n.unmatchable.is_none() {
                assert!(spec.party_size <= 6);
            } else {
                assert!(spec.party_size > 6);
            }
        }
    }
}

//! What must hold after a surge, checked from the log itself (not from the matcher's state and
//! not with the matcher's rules): an independent fold of every assignment's life.
//!
//! - capacity: no offer ever holds live assignments for more people than its capacity, and no
//!   provider holds more live assignments than the policy allows;
//! - one live assignment per need at a time;
//! - verifications: every proposal's provider held each check the need requires, recorded at or
//!   before the round's cut, not revoked by then, and valid at the round's log time;
//! - declines: a provider who declined a need is never proposed for it again;
//! - matching: every need the generator made matchable ends held by a volunteer (proposed,
//!   accepted or completed), and none it made unmatchable is ever proposed.

use std::collections::{BTreeMap, HashMap, HashSet};

use muster_schema::events::*;
use muster_schema::*;

/// One invariant's verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Invariant {
    pub name: String,
    pub held: bool,
    /// How many cases were checked (proposals, needs, events).
    pub checked: u64,
    /// The first violations, or what was checked.
    pub detail: String,
}

#[derive(Default)]
struct Verdict {
    checked: u64,
    violations: Vec<String>,
    count: u64,
}

impl Verdict {
    fn fail(&mut self, what: String) {
        self.count += 1;
        if self.violations.len() < 5 {
            self.violations.push(what);
        }
    }

    fn finish(self, name: &str, ok_detail: String) -> Invariant {
        Invariant {
            name: name.to_string(),
            held: self.count == 0,
            checked: self.checked,
            detail: if self.count == 0 {
                ok_detail
            } else {
                format!(
                    "{} violations, first: {}",
                    self.count,
                    self.violations.join("; ")
                )
            },
        }
    }
}

struct Check {
    kind: VerificationKind,
    person: PersonId,
    issued: Timestamp,
    expires: Option<Timestamp>,
    recorded: u64,
    revoked: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Open,
    Proposed,
    Accepted,
    Completed,
    Withdrawn,
}

struct Live {
    need: EntityId,
    offer: EntityId,
    provider: PersonId,
    party: u32,
    accepted: bool,
}

/// The criminal-record ladder: a higher check satisfies a lower requirement.
fn level(kind: &VerificationKind) -> u8 {
    match kind {
        VerificationKind::CriminalRecordBasic => 1,
        VerificationKind::CriminalRecordStandard => 2,
        VerificationKind::CriminalRecordEnhanced => 3,
        VerificationKind::CriminalRecordEnhancedBarred => 4,
        _ => 0,
    }
}

fn meets(held: &VerificationKind, required: &VerificationKind) -> bool {
    match level(required) {
        0 => held == required,
        r => level(held) >= r,
    }
}

/// Checks the events of one incident (in log order) against the generator's design:
/// `unmatchable` maps each need's id (hex) to `Some(why)` when no one can meet it by design.
pub fn check(
    events: &[(u64, Envelope)],
    unmatchable: &HashMap<String, Option<&'static str>>,
) -> Vec<Invariant> {
    let mut capacity = Verdict::default();
    let mut single = Verdict::default();
    let mut verification = Verdict::default();
    let mut declines = Verdict::default();
    let mut matching = Verdict::default();

    let mut max_concurrent = u32::MAX;
    let mut needs: BTreeMap<EntityId, (NeedSpecV1, Status)> = BTreeMap::new();
    // When each need last became open (reported, or released by a decline, expiry or cancel).
    let mut opened: HashMap<EntityId, u64> = HashMap::new();
    // Each offer's capacity over time: (from sequence, capacity).
    let mut offers: HashMap<EntityId, Vec<(u64, u32)>> = HashMap::new();
    let mut checks: HashMap<EntityId, Check> = HashMap::new();
    let mut held_by: HashMap<PersonId, Vec<EntityId>> = HashMap::new();
    let mut live: HashMap<EntityId, Live> = HashMap::new();
    let mut offer_load: HashMap<EntityId, u32> = HashMap::new();
    let mut provider_load: HashMap<PersonId, u32> = HashMap::new();
    let mut need_live: HashMap<EntityId, EntityId> = HashMap::new();
    let mut declined: HashSet<(EntityId, PersonId)> = HashSet::new();
    let mut proposed_ever: HashSet<EntityId> = HashSet::new();
    let mut round: Option<(u64, Timestamp)> = None;

    let end = |a: &EntityId,
               live: &mut HashMap<EntityId, Live>,
               offer_load: &mut HashMap<EntityId, u32>,
               provider_load: &mut HashMap<PersonId, u32>,
               need_live: &mut HashMap<EntityId, EntityId>|
     -> Option<Live> {
        let l = live.remove(a)?;
        *offer_load.entry(l.offer).or_default() -= l.party;
        *provider_load.entry(l.provider.clone()).or_default() -= 1;
        need_live.remove(&l.need);
        Some(l)
    };

    for (seq, env) in events {
        let seq = *seq;
        match &env.event {
            Event::IncidentDeclaredV1(e) => max_concurrent = e.policy.max_concurrent_per_volunteer,
            Event::PolicyChangedV1(e) => max_concurrent = e.policy.max_concurrent_per_volunteer,
            Event::NeedReportedV1(e) => {
                needs.insert(e.need, (e.spec.clone(), Status::Open));
                opened.insert(e.need, seq);
            }
            Event::NeedUpdatedV1(e) => {
                if let Some(n) = needs.get_mut(&e.need) {
                    n.0 = e.spec.clone();
                }
            }
            Event::NeedWithdrawnV1(e) => {
                if let Some(n) = needs.get_mut(&e.need) {
                    n.1 = Status::Withdrawn;
                }
            }
            Event::OfferRegisteredV1(e) => {
                offers.insert(e.offer, vec![(seq, u32::from(e.spec.capacity))]);
            }
            Event::OfferUpdatedV1(e) => {
                offers
                    .entry(e.offer)
                    .or_default()
                    .push((seq, u32::from(e.spec.capacity)));
            }
            Event::OfferWithdrawnV1(e) => {
                offers.entry(e.offer).or_default().push((seq, 0));
            }
            Event::VerificationRecordedV1(e) => {
                held_by
                    .entry(e.person.clone())
                    .or_default()
                    .push(e.verification);
                checks.insert(
                    e.verification,
                    Check {
                        kind: e.kind.clone(),
                        person: e.person.clone(),
                        issued: e.issued_at,
                        expires: e.expires_at,
                        recorded: seq,
                        revoked: None,
                    },
                );
            }
            Event::VerificationRevokedV1(e) => {
                if let Some(c) = checks.get_mut(&e.verification) {
                    c.revoked.get_or_insert(seq);
                }
            }
            Event::RoundRecordedV1(_) | Event::RoundRecordedV2(_) | Event::RoundRecordedV3(_) => {
                round = env
                    .event
                    .round_record()
                    .map(|r| (r.through_seq, r.log_time));
            }
            Event::AssignmentProposedV1(p) => {
                capacity.checked += 1;
                single.checked += 1;
                verification.checked += 1;
                declines.checked += 1;
                proposed_ever.insert(p.need);
                let Some((spec, status)) = needs.get_mut(&p.need) else {
                    single.fail(format!(
                        "seq {seq}: proposal for need {} never reported",
                        p.need
                    ));
                    continue;
                };
                let party = u32::from(spec.party_size);
                // Capacity as of the round's cut (what the matcher could know).
                let through = round.map_or(p.round_through_seq, |r| r.0);
                let cap = offers
                    .get(&p.offer)
                    .and_then(|h| h.iter().rev().find(|(s, _)| *s <= through))
                    .map_or(0, |(_, c)| *c);
                let load = offer_load.get(&p.offer).copied().unwrap_or(0);
                if load + party > cap {
                    capacity.fail(format!(
                        "seq {seq}: offer {} of capacity {cap} holds {load} and is given {party} more",
                        p.offer
                    ));
                }
                let plod = provider_load.get(&p.volunteer).copied().unwrap_or(0);
                if plod + 1 > max_concurrent {
                    capacity.fail(format!(
                        "seq {seq}: {} holds {plod} assignments, the policy allows {max_concurrent}",
                        p.volunteer
                    ));
                }
                if let Some(other) = need_live.get(&p.need) {
                    single.fail(format!(
                        "seq {seq}: need {} proposed while assignment {other} is live",
                        p.need
                    ));
                }
                if declined.contains(&(p.need, p.volunteer.clone())) {
                    declines.fail(format!(
                        "seq {seq}: {} proposed again for need {} they declined",
                        p.volunteer, p.need
                    ));
                }
                let (cut, now) = round.unwrap_or((p.round_through_seq, env.recorded_at));
                for required in &spec.required_verifications {
                    let ok = held_by.get(&p.volunteer).is_some_and(|ids| {
                        ids.iter().filter_map(|id| checks.get(id)).any(|c| {
                            c.person == p.volunteer
                                && c.recorded <= cut
                                && c.revoked.is_none_or(|r| r > cut)
                                && c.issued <= now
                                && c.expires.is_none_or(|e| now < e)
                                && meets(&c.kind, required)
                        })
                    });
                    if !ok {
                        verification.fail(format!(
                            "seq {seq}: {} lacks a valid {required:?} for need {}",
                            p.volunteer, p.need
                        ));
                    }
                }
                // A need withdrawn after the round's cut stays withdrawn (the next round
                // cancels the proposal).
                if *status != Status::Withdrawn {
                    *status = Status::Proposed;
                }
                *offer_load.entry(p.offer).or_default() += party;
                *provider_load.entry(p.volunteer.clone()).or_default() += 1;
                need_live.insert(p.need, p.assignment);
                live.insert(
                    p.assignment,
                    Live {
                        need: p.need,
                        offer: p.offer,
                        provider: p.volunteer.clone(),
                        party,
                        accepted: false,
                    },
                );
            }
            Event::VolunteerRespondedV1(r) => match r.response {
                Response::Accept => {
                    if let Some(l) = live.get_mut(&r.assignment) {
                        l.accepted = true;
                        if let Some(n) = needs.get_mut(&l.need) {
                            n.1 = Status::Accepted;
                        }
                    }
                }
                // An answer counts only for a proposal not yet answered (intake refuses others).
                Response::Decline if live.get(&r.assignment).is_some_and(|l| !l.accepted) => {
                    if let Some(l) = end(
                        &r.assignment,
                        &mut live,
                        &mut offer_load,
                        &mut provider_load,
                        &mut need_live,
                    ) {
                        declined.insert((l.need, l.provider));
                        if let Some(n) = needs.get_mut(&l.need) {
                            n.1 = Status::Open;
                            opened.insert(l.need, seq);
                        }
                    }
                }
                Response::Decline => {}
            },
            Event::AssignmentCompletedV1(c) => {
                if let Some(l) = end(
                    &c.assignment,
                    &mut live,
                    &mut offer_load,
                    &mut provider_load,
                    &mut need_live,
                ) && let Some(n) = needs.get_mut(&l.need)
                {
                    n.1 = Status::Completed;
                }
            }
            // An expiry decided at a round's cut is void once the volunteer has answered.
            Event::AssignmentExpiredV1(AssignmentExpiredV1 { assignment, .. })
                if live.get(assignment).is_none_or(|l| l.accepted) => {}
            Event::AssignmentExpiredV1(AssignmentExpiredV1 { assignment, .. })
            | Event::AssignmentCancelledV1(AssignmentCancelledV1 { assignment, .. }) => {
                if let Some(l) = end(
                    assignment,
                    &mut live,
                    &mut offer_load,
                    &mut provider_load,
                    &mut need_live,
                ) && let Some(n) = needs.get_mut(&l.need)
                    && n.1 != Status::Withdrawn
                {
                    n.1 = Status::Open;
                    opened.insert(l.need, seq);
                }
            }
            _ => {}
        }
    }

    // A need that opened after the last round's cut has not been before a round yet.
    let last_cut = round.map_or(0, |r| r.0);
    let mut awaiting = 0u64;
    let mut matched = 0u64;
    let mut designed_unmatchable = 0u64;
    for (id, (_, status)) in &needs {
        matching.checked += 1;
        match unmatchable.get(&id.to_hex()) {
            None => matching.fail(format!("need {id} was not reported by this surge")),
            Some(Some(why)) => {
                designed_unmatchable += 1;
                if proposed_ever.contains(id) {
                    matching.fail(format!("need {id} was proposed, yet {why}"));
                }
            }
            Some(None) => match status {
                Status::Proposed | Status::Accepted | Status::Completed => matched += 1,
                Status::Open if opened.get(id).is_some_and(|&at| at > last_cut) => awaiting += 1,
                s => matching.fail(format!(
                    "matchable need {id} ended {s:?}, open since {} (the last round's cut: {last_cut})",
                    opened.get(id).copied().unwrap_or(0)
                )),
            },
        }
    }
    if needs.len() != unmatchable.len() {
        matching.fail(format!(
            "{} needs acknowledged, {} on the log",
            unmatchable.len(),
            needs.len()
        ));
    }
    let proposals = capacity.checked;
    vec![
        capacity.finish(
            "no capacity exceeded",
            format!("{proposals} proposals within their offer's capacity and the per-provider limit"),
        ),
        single.finish(
            "one live assignment per need",
            format!("{proposals} proposals, none for a need already held"),
        ),
        verification.finish(
            "no verification rule broken",
            format!("{proposals} proposals, every required check held and valid at the round's time"),
        ),
        declines.finish(
            "no one re-proposed a need they declined",
            format!("{} declines respected", declined.len()),
        ),
        matching.finish(
            "every matchable need matched",
            format!(
                "{matched} matchable needs held by a volunteer (proposed, accepted or done), {awaiting} released after the last round's cut; {designed_unmatchable} unmatchable by design, none proposed"
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Log {
        events: Vec<(u64, Envelope)>,
        now: i64,
    }

    fn id(s: &str) -> EntityId {
        EntityId::hash(&[s.as_bytes()])
    }

    fn person(s: &str) -> PersonId {
        PersonId::parse("p", s).expect("valid")
    }

    fn at() -> GeoPoint {
        GeoPoint {
            lat_e6: 54_000_000,
            lon_e6: -1_000_000,
        }
    }

    fn window() -> TimeWindow {
        TimeWindow {
            start: Timestamp(0),
            end: Timestamp(i64::MAX / 2),
        }
    }

    impl Log {
        fn new() -> Self {
            let mut l = Log {
                events: Vec::new(),
                now: 1_800_000_000_000_000,
            };
            l.push(Event::IncidentDeclaredV1(IncidentDeclaredV1 {
                incident: IncidentId::parse("i", "test").expect("valid"),
                name: "test".into(),
                partitions: vec![],
                categories: vec![],
                policy: PolicyV1 {
                    max_concurrent_per_volunteer: 2,
                    ..PolicyV1::default()
                },
            }));
            l
        }

        fn push(&mut self, event: Event) -> &mut Self {
            let seq = self.events.len() as u64 + 1;
            self.now += 1_000_000;
            self.events.push((
                seq,
                Envelope {
                    schema_version: ENVELOPE_VERSION,
                    event_id: EntityId::hash(&[&seq.to_le_bytes()]),
                    incident: IncidentId::parse("i", "test").expect("valid"),
                    partition: PartitionCode::incident_wide(),
                    recorded_at: Timestamp(self.now),
                    actor: AgencyId::parse("a", "council").expect("valid"),
                    idempotency_key: format!("k{seq}"),
                    correlation_id: String::new(),
                    causation_id: None,
                    event,
                },
            ));
            self
        }

        fn need(&mut self, n: &str, party: u16, checks: Vec<VerificationKind>) -> &mut Self {
            self.push(Event::NeedReportedV1(NeedReportedV1 {
                need: id(n),
                reference: Reference::parse("r", n).expect("valid"),
                spec: NeedSpecV1 {
                    category: Category::Shelter,
                    urgency: Urgency::new("u", 3).expect("valid"),
                    party_size: party,
                    window: window(),
                    location: at(),
                    required_skills: vec![],
                    required_verifications: checks,
                    vulnerable: false,
                },
                personal: Personal::None,
            }))
        }

        fn offer(&mut self, o: &str, who: &str, capacity: u16) -> &mut Self {
            self.push(Event::OfferRegisteredV1(OfferRegisteredV1 {
                offer: id(o),
                reference: Reference::parse("r", o).expect("valid"),
                provider: Provider::Volunteer(person(who)),
                spec: OfferSpecV1 {
                    kinds: vec![Category::Shelter],
                    skills: vec![],
                    capacity,
                    location: at(),
                    travel_radius_m: 5_000,
                    availability: vec![window()],
                },
                personal: Personal::None,
            }))
        }

        fn check(&mut self, v: &str, who: &str, kind: VerificationKind) -> &mut Self {
            let now = self.now;
            self.push(Event::VerificationRecordedV1(VerificationRecordedV1 {
                verification: id(v),
                reference: Reference::parse("r", v).expect("valid"),
                person: person(who),
                kind,
                issuer: AgencyId::parse("a", "dbs").expect("valid"),
                issued_at: Timestamp(now - 1_000_000_000),
                expires_at: None,
                personal: Personal::None,
            }))
        }

        fn round(&mut self) -> &mut Self {
            let through = self.events.len() as u64;
            let now = self.now;
            self.push(Event::RoundRecordedV1(RoundRecordedV1 {
                round: id(&format!("round-{through}")),
                through_seq: through,
                log_time: Timestamp(now),
                policy_version: 1,
                proposed: 1,
                expired: 0,
                cancelled: 0,
                total_score: 1,
            }))
        }

        fn propose(&mut self, a: &str, n: &str, o: &str, who: &str) -> &mut Self {
            self.round();
            let through = self.events.len() as u64 - 1;
            self.push(Event::AssignmentProposedV1(AssignmentProposedV1 {
                assignment: id(a),
                need: id(n),
                offer: id(o),
                volunteer: person(who),
                round_through_seq: through,
                policy_version: 1,
                distance_m: 10,
                score: ScoreV1 {
                    total: 1,
                    urgency: 1,
                    waiting: 0,
                    distance: 0,
                    fairness: 0,
                },
            }))
        }

        fn respond(&mut self, a: &str, response: Response) -> &mut Self {
            self.push(Event::VolunteerRespondedV1(VolunteerRespondedV1 {
                assignment: id(a),
                response,
                reason: String::new(),
            }))
        }

        fn complete(&mut self, a: &str) -> &mut Self {
            self.push(Event::AssignmentCompletedV1(AssignmentCompletedV1 {
                assignment: id(a),
                personal: Personal::None,
            }))
        }
    }

    fn design(entries: &[(&str, Option<&'static str>)]) -> HashMap<String, Option<&'static str>> {
        entries.iter().map(|(n, w)| (id(n).to_hex(), *w)).collect()
    }

    fn verdict(invariants: &[Invariant], name: &str) -> Invariant {
        invariants
            .iter()
            .find(|i| i.name == name)
            .cloned()
            .expect("invariant reported")
    }

    #[test]
    fn a_clean_surge_holds_every_invariant() {
        let mut log = Log::new();
        log.offer("o1", "ann", 4)
            .check("v1", "ann", VerificationKind::CriminalRecordEnhancedBarred)
            .need("n1", 2, vec![VerificationKind::CriminalRecordEnhanced])
            .need("n2", 2, vec![])
            .need("far", 1, vec![])
            .propose("a1", "n1", "o1", "ann")
            .respond("a1", Response::Accept)
            .propose("a2", "n2", "o1", "ann")
            .respond("a2", Response::Decline)
            .offer("o2", "bob", 2)
            .propose("a3", "n2", "o2", "bob")
            .respond("a3", Response::Accept)
            .complete("a3");
        let got = check(
            &log.events,
            &design(&[("n1", None), ("n2", None), ("far", Some("too far"))]),
        );
        for i in &got {
            assert!(i.held, "{i:?}");
        }
        assert_eq!(verdict(&got, "no capacity exceeded").checked, 3);
    }

    #[test]
    fn an_offer_given_more_people_than_its_capacity_is_caught() {
        let mut log = Log::new();
        log.offer("o1", "ann", 3)
            .need("n1", 2, vec![])
            .need("n2", 2, vec![])
            .propose("a1", "n1", "o1", "ann")
            .propose("a2", "n2", "o1", "ann");
        let got = check(&log.events, &design(&[("n1", None), ("n2", None)]));
        let v = verdict(&got, "no capacity exceeded");
        assert!(!v.held);
        assert!(v.detail.contains("capacity 3 holds 2"), "{}", v.detail);
    }

    #[test]
    fn completed_work_frees_capacity() {
        let mut log = Log::new();
        log.offer("o1", "ann", 2)
            .need("n1", 2, vec![])
            .need("n2", 2, vec![])
            .propose("a1", "n1", "o1", "ann")
            .respond("a1", Response::Accept)
            .complete("a1")
            .propose("a2", "n2", "o1", "ann")
            .respond("a2", Response::Accept);
        let got = check(&log.events, &design(&[("n1", None), ("n2", None)]));
        assert!(verdict(&got, "no capacity exceeded").held);
        assert!(verdict(&got, "every matchable need matched").held);
    }

    #[test]
    fn too_many_assignments_for_one_provider_are_caught() {
        let mut log = Log::new();
        log.offer("o1", "ann", 10);
        for n in ["n1", "n2", "n3"] {
            log.need(n, 1, vec![]);
        }
        log.propose("a1", "n1", "o1", "ann")
            .propose("a2", "n2", "o1", "ann")
            .propose("a3", "n3", "o1", "ann");
        let got = check(
            &log.events,
            &design(&[("n1", None), ("n2", None), ("n3", None)]),
        );
        let v = verdict(&got, "no capacity exceeded");
        assert!(!v.held);
        assert!(v.detail.contains("the policy allows 2"), "{}", v.detail);
    }

    #[test]
    fn a_proposal_without_the_required_check_is_caught() {
        let mut log = Log::new();
        log.offer("o1", "ann", 4)
            .check("v1", "ann", VerificationKind::CriminalRecordBasic)
            .need("n1", 1, vec![VerificationKind::CriminalRecordEnhanced])
            .propose("a1", "n1", "o1", "ann");
        let got = check(&log.events, &design(&[("n1", None)]));
        assert!(!verdict(&got, "no verification rule broken").held);
    }

    #[test]
    fn a_check_revoked_before_the_cut_or_expired_at_the_round_does_not_count() {
        let mut log = Log::new();
        log.offer("o1", "ann", 4)
            .check("v1", "ann", VerificationKind::CriminalRecordEnhanced)
            .push(Event::VerificationRevokedV1(VerificationRevokedV1 {
                verification: id("v1"),
                reason: "barred".into(),
            }))
            .need("n1", 1, vec![VerificationKind::CriminalRecordEnhanced])
            .propose("a1", "n1", "o1", "ann");
        let got = check(&log.events, &design(&[("n1", None)]));
        assert!(!verdict(&got, "no verification rule broken").held);

        let mut log = Log::new();
        let now = log.now;
        log.offer("o1", "ann", 4)
            .push(Event::VerificationRecordedV1(VerificationRecordedV1 {
                verification: id("v1"),
                reference: Reference::parse("r", "v1").expect("valid"),
                person: person("ann"),
                kind: VerificationKind::CriminalRecordEnhanced,
                issuer: AgencyId::parse("a", "dbs").expect("valid"),
                issued_at: Timestamp(now - 1_000_000_000),
                expires_at: Some(Timestamp(now)),
                personal: Personal::None,
            }));
        log.need("n1", 1, vec![VerificationKind::CriminalRecordEnhanced])
            .propose("a1", "n1", "o1", "ann");
        let got = check(&log.events, &design(&[("n1", None)]));
        assert!(!verdict(&got, "no verification rule broken").held);
    }

    #[test]
    fn a_second_live_assignment_for_a_need_is_caught() {
        let mut log = Log::new();
        log.offer("o1", "ann", 4)
            .offer("o2", "bob", 4)
            .need("n1", 1, vec![])
            .propose("a1", "n1", "o1", "ann")
            .propose("a2", "n1", "o2", "bob");
        let got = check(&log.events, &design(&[("n1", None)]));
        assert!(!verdict(&got, "one live assignment per need").held);
    }

    #[test]
    fn an_expiry_after_the_answer_is_void_and_the_assignment_stays_live() {
        let mut log = Log::new();
        log.offer("o1", "ann", 1)
            .offer("o2", "bob", 1)
            .need("n1", 1, vec![])
            .propose("a1", "n1", "o1", "ann")
            .respond("a1", Response::Accept);
        log.push(Event::AssignmentExpiredV1(AssignmentExpiredV1 {
            assignment: id("a1"),
            round_through_seq: 1,
        }));
        let got = check(&log.events, &design(&[("n1", None)]));
        for i in &got {
            assert!(i.held, "{i:?}");
        }
        // Still live: proposing its need again is a second live assignment.
        log.propose("a2", "n1", "o2", "bob");
        let got = check(&log.events, &design(&[("n1", None)]));
        assert!(!verdict(&got, "one live assignment per need").held);
    }

    #[test]
    fn proposing_a_declined_need_to_the_same_person_again_is_caught() {
        let mut log = Log::new();
        log.offer("o1", "ann", 4)
            .need("n1", 1, vec![])
            .propose("a1", "n1", "o1", "ann")
            .respond("a1", Response::Decline)
            .propose("a2", "n1", "o1", "ann");
        let got = check(&log.events, &design(&[("n1", None)]));
        assert!(!verdict(&got, "no one re-proposed a need they declined").held);
    }

    #[test]
    fn a_matchable_need_left_open_or_an_unmatchable_one_proposed_is_caught() {
        let mut log = Log::new();
        log.offer("o1", "ann", 4)
            .need("n1", 1, vec![])
            .need("far", 1, vec![])
            .propose("a1", "far", "o1", "ann");
        let got = check(
            &log.events,
            &design(&[("n1", None), ("far", Some("too far"))]),
        );
        let v = verdict(&got, "every matchable need matched");
        assert!(!v.held);
        assert!(v.detail.contains("2 violations"), "{}", v.detail);
    }

    #[test]
    fn a_need_released_after_the_last_cut_awaits_the_next_round_but_one_a_round_saw_does_not() {
        // Declined after the last round: no round has considered it since.
        let mut log = Log::new();
        log.offer("o1", "ann", 4)
            .need("n1", 1, vec![])
            .propose("a1", "n1", "o1", "ann")
            .respond("a1", Response::Decline);
        let got = check(&log.events, &design(&[("n1", None)]));
        let v = verdict(&got, "every matchable need matched");
        assert!(v.held, "{v:?}");
        assert!(
            v.detail.contains("1 released after the last round's cut"),
            "{}",
            v.detail
        );
        // A later round was cut with the need open and did not match it.
        log.round();
        let got = check(&log.events, &design(&[("n1", None)]));
        assert!(!verdict(&got, "every matchable need matched").held);
    }

    #[test]
    fn a_need_acknowledged_but_missing_from_the_log_is_caught() {
        let mut log = Log::new();
        log.offer("o1", "ann", 4)
            .need("n1", 1, vec![])
            .propose("a1", "n1", "o1", "ann")
            .respond("a1", Response::Accept);
        let got = check(&log.events, &design(&[("n1", None), ("lost", None)]));
        assert!(!verdict(&got, "every matchable need matched").held);
    }
}

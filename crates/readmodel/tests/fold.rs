//! Given these events, when folded, then these read models: one test per rule, and property
//! tests over random event streams (rounds cut by the real matching engine) checking that the
//! counters and indexes agree with a recount from the records, and that any batching with any
//! redeliveries gives byte-identical read models.

use muster_matching::State;
use muster_readmodel::counters;
use muster_readmodel::keys::{self, Cf};
use muster_readmodel::records::{
    AssignmentRecord, AssignmentStatus, EntityRecord, NeedEntry, NeedRecord, NeedStatus,
    OfferRecord, ProviderRecord, SetAsideRecord,
};
use muster_readmodel::{MemStore, Outcome, Tx, apply};
use muster_schema::events::*;
use muster_schema::*;

const T0: i64 = 1_800_000_000_000_000;
const MIN: i64 = 60_000_000;

fn id(name: &str) -> EntityId {
    EntityId::hash(&[name.as_bytes()])
}

fn person(name: &str) -> PersonId {
    PersonId::parse("p", name).expect("valid person")
}

fn incident() -> IncidentId {
    IncidentId::parse("i", "test").expect("valid")
}

fn window() -> TimeWindow {
    TimeWindow::new(T0, T0 + 48 * 60 * MIN).expect("valid window")
}

fn need_spec(urgency: u32, lat: f64, vulnerable: bool) -> NeedSpecV1 {
    NeedSpecV1 {
        category: Category::Food,
        urgency: Urgency::new("u", urgency).expect("1..5"),
        party_size: 1,
        window: window(),
        location: GeoPoint::from_degrees(lat, -1.08).expect("valid"),
        required_skills: vec![],
        required_verifications: vec![],
        vulnerable,
    }
}

fn offer_spec(lat: f64) -> OfferSpecV1 {
    OfferSpecV1 {
        kinds: vec![Category::Food],
        skills: vec![],
        capacity: 1,
        location: GeoPoint::from_degrees(lat, -1.08).expect("valid"),
        travel_radius_m: 20_000,
        availability: vec![window()],
    }
}

type Item = (u64, String, Result<Envelope, DecodeError>);

/// A log being written: events get the next sequence; the matcher's state follows along so
/// rounds can be cut by the real engine.
struct Log {
    items: Vec<Item>,
    state: State,
    now: i64,
}

impl Log {
    fn new() -> Self {
        let mut log = Self {
            items: Vec::new(),
            state: State::default(),
            now: T0,
        };
        log.event(
            "_",
            Event::IncidentDeclaredV1(IncidentDeclaredV1 {
                incident: incident(),
                name: "Test floods".into(),
                partitions: vec![],
                categories: vec![],
                policy: PolicyV1::default(),
            }),
        );
        log
    }

    fn seq(&self) -> u64 {
        self.items.len() as u64 + 1
    }

    fn event(&mut self, partition: &str, event: Event) -> &mut Self {
        let seq = self.seq();
        let env = Envelope {
            schema_version: ENVELOPE_VERSION,
            event_id: EntityId::hash(&[&seq.to_le_bytes()]),
            incident: incident(),
            partition: if partition == "_" {
                PartitionCode::incident_wide()
            } else {
                PartitionCode::parse("p", partition).expect("valid")
            },
            recorded_at: Timestamp(self.now),
            actor: AgencyId::parse("a", "council").expect("valid"),
            idempotency_key: format!("k{seq}"),
            correlation_id: String::new(),
            causation_id: None,
            event,
        };
        self.state.apply(seq, &env);
        self.items.push((seq, subject::for_envelope(&env), Ok(env)));
        self
    }

    fn garbage(&mut self, bytes: &[u8]) -> &mut Self {
        let seq = self.seq();
        self.items.push((
            seq,
            "muster.ev.test.A1.need.x".into(),
            Envelope::decode(bytes),
        ));
        self
    }

    fn later(&mut self, micros: i64) -> &mut Self {
        self.now += micros;
        self
    }

    fn need(&mut self, name: &str, urgency: u32, vulnerable: bool) -> &mut Self {
        self.event(
            "A1",
            Event::NeedReportedV1(NeedReportedV1 {
                need: id(name),
                reference: Reference::parse("r", name).expect("valid"),
                spec: need_spec(urgency, 53.96, vulnerable),
                personal: Personal::None,
            }),
        )
    }

    fn offer(&mut self, name: &str, volunteer: &str) -> &mut Self {
        self.event(
            "A1",
            Event::OfferRegisteredV1(OfferRegisteredV1 {
                offer: id(name),
                reference: Reference::parse("r", name).expect("valid"),
                provider: Provider::Volunteer(person(volunteer)),
                spec: offer_spec(53.97),
                personal: Personal::None,
            }),
        )
    }

    /// Cuts a round with the real engine and appends its events; returns the proposals'
    /// assignment ids.
    fn round(&mut self) -> Vec<EntityId> {
        let r = muster_matching::round(&self.state);
        let mut ids = Vec::new();
        for (_, event) in muster_matching::round::round_events(&self.state, &incident(), &r) {
            if let Event::AssignmentProposedV1(p) = &event {
                ids.push(p.assignment);
            }
            self.event("A1", event);
        }
        ids
    }

    /// Cuts a round with the real engine on the state as it is now, without appending it: the
    /// matcher deciding while other events reach the log. Append it with [`Log::append`].
    fn cut(&self) -> Vec<Event> {
        let r = muster_matching::round(&self.state);
        muster_matching::round::round_events(&self.state, &incident(), &r)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    /// Appends a round cut before; returns its proposals' assignment ids.
    fn append(&mut self, round: Vec<Event>) -> Vec<EntityId> {
        let mut ids = Vec::new();
        for event in round {
            if let Event::AssignmentProposedV1(p) = &event {
                ids.push(p.assignment);
            }
            self.event("A1", event);
        }
        ids
    }

    /// The set-aside events.
    fn set_aside(store: &MemStore) -> Vec<SetAsideRecord> {
        store
            .cf(Cf::SetAside)
            .map(|(_, v)| postcard::from_bytes(v).expect("decodes"))
            .collect()
    }

    fn respond(&mut self, assignment: EntityId, response: Response) -> &mut Self {
        self.event(
            "A1",
            Event::VolunteerRespondedV1(VolunteerRespondedV1 {
                assignment,
                response,
                reason: "because".into(),
            }),
        )
    }

    fn fold(&self) -> MemStore {
        let mut store = MemStore::default();
        store
            .fold_all(self.items.iter().map(|(s, sub, e)| (*s, sub.as_str(), e)))
            .expect("fold");
        store
    }
}

fn need_of(store: &MemStore, name: &str) -> NeedRecord {
    let tx = Tx::new(store);
    tx.get_rec(Cf::Needs, &id(name).0)
        .expect("decodes")
        .expect("need stored")
}

fn counter(store: &MemStore, name: &str) -> i64 {
    counter_in(store, &incident(), name)
}

fn counter_in(store: &MemStore, incident: &IncidentId, name: &str) -> i64 {
    Tx::new(store)
        .get_i64(Cf::Counters, &keys::counter_key(incident, name))
        .expect("counter")
}

fn open_needs(store: &MemStore) -> Vec<EntityId> {
    open_needs_in(store, &incident())
}

fn open_needs_in(store: &MemStore, incident: &IncidentId) -> Vec<EntityId> {
    let prefix = keys::open_needs_prefix(incident);
    store
        .cf(Cf::Index)
        .filter(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(k, _)| keys::trailing_id(k))
        .collect()
}

#[test]
fn a_reported_need_is_open_indexed_and_counted() {
    let mut log = Log::new();
    log.need("n1", 3, false).need("n2", 5, true);
    let store = log.fold();
    let n = need_of(&store, "n1");
    assert_eq!(n.status, NeedStatus::Open);
    assert_eq!(n.created_seq, 2);
    assert_eq!(n.last_seq, 2);
    // Most urgent first.
    assert_eq!(open_needs(&store), vec![id("n2"), id("n1")]);
    assert_eq!(counter(&store, "need.open"), 2);
    assert_eq!(counter(&store, "need.open.urgency.5"), 1);
    assert_eq!(counter(&store, "need.open.partition.A1"), 2);
    assert_eq!(counter(&store, "need.open.category.food"), 2);
    assert_eq!(counter(&store, counters::UNMET_SAFEGUARDED), 1);
}

#[test]
fn a_need_follows_its_assignment_to_completion() {
    let mut log = Log::new();
    log.need("n1", 3, true).offer("o1", "vol-1").later(5 * MIN);
    let proposed = log.round();
    assert_eq!(proposed.len(), 1, "the engine proposes the one pair");
    let a = proposed[0];
    let store = log.fold();
    let n = need_of(&store, "n1");
    assert_eq!(n.status, NeedStatus::Proposed);
    assert_eq!(n.current_assignment, Some(a));
    assert_eq!(n.first_matched_at, Some(Timestamp(T0 + 5 * MIN)));
    // Five minutes from report to proposal, in the urgency-3 histogram.
    let bucket = counters::bucket(5 * 60_000);
    assert_eq!(counter(&store, &counters::ttm_counter(3, bucket)), 1);
    assert_eq!(counter(&store, counters::PROVIDERS_NEVER_OFFERED), 0);
    assert_eq!(counter(&store, counters::PROVIDERS_AVAILABLE), 1);
    assert_eq!(
        counter(&store, counters::UNMET_SAFEGUARDED),
        1,
        "proposed is not yet met"
    );

    log.respond(a, Response::Accept);
    let store = log.fold();
    assert_eq!(need_of(&store, "n1").status, NeedStatus::Accepted);
    assert!(open_needs(&store).is_empty());
    assert_eq!(counter(&store, counters::UNMET_SAFEGUARDED), 0);

    log.event(
        "A1",
        Event::AssignmentCompletedV1(AssignmentCompletedV1 {
            assignment: a,
            personal: Personal::None,
        }),
    );
    let store = log.fold();
    let n = need_of(&store, "n1");
    assert_eq!(n.status, NeedStatus::Completed);
    assert_eq!(n.current_assignment, None);
    let assignment: AssignmentRecord = Tx::new(&store)
        .get_rec(Cf::Assignments, &a.0)
        .expect("decodes")
        .expect("stored");
    assert_eq!(assignment.status, AssignmentStatus::Completed);
    let offer: OfferRecord = Tx::new(&store)
        .get_rec(Cf::Offers, &id("o1").0)
        .expect("decodes")
        .expect("stored");
    assert_eq!((offer.active_assignments, offer.assignments), (0, 1));
    assert_eq!(counter(&store, "need.completed"), 1);
    assert_eq!(counter(&store, "need.open"), 0);
    assert_eq!(counter(&store, "assignment.completed"), 1);
    assert_eq!(counter(&store, "assignment.proposed"), 0);
}

#[test]
fn a_declined_assignment_reopens_its_need() {
    let mut log = Log::new();
    log.need("n1", 2, false).offer("o1", "vol-1");
    let a = log.round()[0];
    log.respond(a, Response::Decline);
    let store = log.fold();
    let n = need_of(&store, "n1");
    assert_eq!(n.status, NeedStatus::Open);
    assert_eq!(n.current_assignment, None);
    assert_eq!(open_needs(&store), vec![id("n1")]);
    assert_eq!(counter(&store, "assignment.declined"), 1);
}

#[test]
fn a_withdrawn_need_cancels_without_reopening() {
    let mut log = Log::new();
    log.need("n1", 2, false).offer("o1", "vol-1");
    log.round();
    log.event(
        "A1",
        Event::NeedWithdrawnV1(NeedWithdrawnV1 {
            need: id("n1"),
            reason: "helped by family".into(),
        }),
    );
    // The engine cancels the assignment in its next round.
    log.round();
    let store = log.fold();
    assert_eq!(need_of(&store, "n1").status, NeedStatus::Withdrawn);
    assert!(open_needs(&store).is_empty());
    assert_eq!(counter(&store, "assignment.cancelled"), 1);
    assert_eq!(counter(&store, "need.withdrawn"), 1);
    assert_eq!(counter(&store, "need.proposed"), 0);
}

/// The matcher decides a round on the log as of its cut; a need withdrawn before the round's
/// events are appended is still proposed. The proposal is applied (the volunteer may even
/// answer it) and the engine's next round cancels it; the need stays withdrawn throughout.
#[test]
fn a_proposal_decided_before_its_need_was_withdrawn_is_applied_then_cancelled() {
    let mut log = Log::new();
    log.need("n1", 2, false).offer("o1", "vol-1");
    let round = log.cut();
    log.event(
        "A1",
        Event::NeedWithdrawnV1(NeedWithdrawnV1 {
            need: id("n1"),
            reason: "helped by family".into(),
        }),
    );
    let proposed = log.append(round);
    assert_eq!(proposed.len(), 1);
    log.respond(proposed[0], Response::Accept);
    let store = log.fold();
    assert_eq!(
        Log::set_aside(&store),
        vec![],
        "nothing the engine decided is refused"
    );
    assert_eq!(need_of(&store, "n1").status, NeedStatus::Withdrawn);
    assert!(open_needs(&store).is_empty());
    assert_eq!(counter(&store, "assignment.accepted"), 1);
    assert_eq!(counter(&store, "need.withdrawn"), 1);
    assert_eq!(counter(&store, "need.accepted"), 0);

    // The engine's next round cancels it, and the offer is free again.
    assert_eq!(log.round(), vec![]);
    let store = log.fold();
    assert_eq!(Log::set_aside(&store), vec![]);
    assert_eq!(need_of(&store, "n1").status, NeedStatus::Withdrawn);
    assert_eq!(counter(&store, "assignment.cancelled"), 1);
    assert_eq!(counter(&store, "assignment.accepted"), 0);
    let offer: OfferRecord = Tx::new(&store)
        .get_rec(Cf::Offers, &id("o1").0)
        .expect("decodes")
        .expect("offer stored");
    assert_eq!(offer.active_assignments, 0);
    log.need("n2", 2, false);
    assert_eq!(log.round().len(), 1, "vol-1 is free for the next need");
}

/// A volunteer's answer that reached the log after a round's cut and before its events stands:
/// the round's expiry of that proposal is void.
#[test]
fn an_answer_that_beat_a_rounds_expiry_stands() {
    let mut log = Log::new();
    log.need("n1", 2, false)
        .offer("o1", "vol-1")
        .offer("o2", "vol-2");
    let first = log.round();
    assert_eq!(first.len(), 1);
    // Past the policy's hour to answer: the next round expires the proposal.
    log.later(61 * MIN).event(
        "_",
        Event::TickV1(TickV1 {
            incident: incident(),
        }),
    );
    let round = log.cut();
    assert!(
        round
            .iter()
            .any(|e| matches!(e, Event::AssignmentExpiredV1(x) if x.assignment == first[0])),
        "the round expires it"
    );
    log.respond(first[0], Response::Accept);
    let again = log.append(round);
    let store = log.fold();
    assert_eq!(Log::set_aside(&store), vec![]);
    let a: AssignmentRecord = Tx::new(&store)
        .get_rec(Cf::Assignments, &first[0].0)
        .expect("decodes")
        .expect("stored");
    assert_eq!(a.status, AssignmentStatus::Accepted, "the answer stands");
    assert_eq!(need_of(&store, "n1").status, NeedStatus::Accepted);
    assert_eq!(need_of(&store, "n1").current_assignment, Some(first[0]));
    assert_eq!(counter(&store, "assignment.expired"), 0);
    assert_eq!(
        again,
        vec![],
        "a need its round releases waits for the next round"
    );
    // The next round leaves the accepted assignment be.
    assert_eq!(log.round(), vec![]);
    let store = log.fold();
    assert_eq!(Log::set_aside(&store), vec![]);
    assert_eq!(need_of(&store, "n1").status, NeedStatus::Accepted);
}

#[test]
fn providers_never_offered_a_task_are_counted() {
    let mut log = Log::new();
    log.offer("o1", "vol-1")
        .offer("o2", "vol-2")
        .offer("o3", "vol-2");
    let store = log.fold();
    assert_eq!(counter(&store, counters::PROVIDERS_AVAILABLE), 2);
    assert_eq!(counter(&store, counters::PROVIDERS_NEVER_OFFERED), 2);
    log.need("n1", 3, false);
    log.round();
    let store = log.fold();
    assert_eq!(counter(&store, counters::PROVIDERS_NEVER_OFFERED), 1);
    log.event(
        "A1",
        Event::OfferWithdrawnV1(OfferWithdrawnV1 {
            offer: id("o1"),
            reason: "moved away".into(),
        }),
    );
    log.event(
        "A1",
        Event::OfferWithdrawnV1(OfferWithdrawnV1 {
            offer: id("o2"),
            reason: "moved away".into(),
        }),
    );
    let store = log.fold();
    let providers: Vec<ProviderRecord> = ["vol-1", "vol-2"]
        .iter()
        .map(|v| {
            Tx::new(&store)
                .get_rec(Cf::Providers, &keys::provider_key(&incident(), v))
                .expect("decodes")
                .expect("stored")
        })
        .collect();
    assert_eq!(
        counter(&store, counters::PROVIDERS_AVAILABLE),
        providers.iter().filter(|p| p.live_offers > 0).count() as i64
    );
    assert_eq!(counter(&store, "offer.withdrawn"), 2);
    assert_eq!(counter(&store, "offer.live"), 1);
}

#[test]
fn an_update_moves_the_need_between_counters_and_index_positions() {
    let mut log = Log::new();
    log.need("n1", 1, false).need("n2", 2, false);
    assert_eq!(open_needs(&log.fold()), vec![id("n2"), id("n1")]);
    log.event(
        "A1",
        Event::NeedUpdatedV1(NeedUpdatedV1 {
            need: id("n1"),
            spec: need_spec(5, 53.96, true),
            personal: Personal::None,
        }),
    );
    let store = log.fold();
    assert_eq!(open_needs(&store), vec![id("n1"), id("n2")]);
    assert_eq!(counter(&store, "need.open.urgency.1"), 0);
    assert_eq!(counter(&store, "need.open.urgency.5"), 1);
    assert_eq!(counter(&store, counters::UNMET_SAFEGUARDED), 1);
    assert_eq!(need_of(&store, "n1").last_seq, 4);
}

#[test]
fn a_malformed_event_is_set_aside_and_the_fold_goes_on() {
    let mut log = Log::new();
    log.need("n1", 3, false)
        .garbage(&[1, 0xff, 0xff, 0xff])
        .need("n2", 3, false);
    let store = log.fold();
    assert_eq!(
        open_needs(&store).len(),
        2,
        "the need after the poison is applied"
    );
    let aside: Vec<SetAsideRecord> = store
        .cf(Cf::SetAside)
        .map(|(_, v)| postcard::from_bytes(v).expect("decodes"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(aside[0].seq, 3);
    assert!(
        aside[0].reason.contains("undecodable"),
        "{}",
        aside[0].reason
    );
    let tx = Tx::new(&store);
    assert_eq!(
        tx.get_u64(Cf::Meta, keys::SET_ASIDE_COUNT).expect("count"),
        1
    );
    assert_eq!(tx.get_u64(Cf::Meta, keys::POSITION).expect("position"), 4);
}

#[test]
fn an_event_that_does_not_fit_is_set_aside_leaving_no_partial_change() {
    let mut log = Log::new();
    log.need("n1", 3, false);
    let before = log.fold();
    // An answer to an assignment that was never proposed.
    log.respond(id("nope"), Response::Accept);
    let after = log.fold();
    let mut changed: Vec<_> = after
        .data
        .iter()
        .filter(|(k, v)| before.data.get(*k) != Some(*v))
        .map(|((cf, _), _)| *cf)
        .collect();
    changed.dedup();
    assert_eq!(
        changed,
        vec![Cf::Meta, Cf::SetAside],
        "only the position and the set-aside record"
    );
}

#[test]
fn an_event_naming_another_incidents_entity_is_set_aside() {
    let mut log = Log::new();
    log.need("n1", 3, false);
    let before = log.fold();
    // A withdrawal recorded for another incident, naming this incident's need: ids are keys of
    // their own in the read models, so without the check it would withdraw the need here.
    log.event(
        "A1",
        Event::NeedWithdrawnV1(NeedWithdrawnV1 {
            need: id("n1"),
            reason: "done".into(),
        }),
    );
    if let Some((_, _, Ok(env))) = log.items.last_mut() {
        env.incident = IncidentId::parse("i", "other").expect("valid");
    }
    let after = log.fold();
    assert_eq!(need_of(&after, "n1"), need_of(&before, "n1"));
    let set_aside = Log::set_aside(&after);
    assert_eq!(set_aside.len(), 1);
    assert!(
        set_aside[0]
            .reason
            .contains("belongs to incident test, not other"),
        "{}",
        set_aside[0].reason
    );
}

#[test]
fn an_event_at_or_below_the_position_is_skipped() {
    let mut log = Log::new();
    log.need("n1", 3, false);
    let mut store = log.fold();
    let once = store.clone();
    let mut tx = Tx::new(&store);
    let (seq, subject, env) = &log.items[1];
    assert_eq!(
        apply(&mut tx, *seq, subject, env).expect("fold"),
        Outcome::Skipped
    );
    let changes: Vec<_> = tx.into_changes().collect();
    assert!(changes.is_empty());
    store.commit(changes.into_iter());
    assert_eq!(store, once);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Need(u8, u8, bool),
        Offer(u8, u8),
        Round,
        Respond(u8, bool),
        Complete(u8),
        WithdrawNeed(u8),
        WithdrawOffer(u8),
        Later(u8),
        Garbage,
        /// The matcher cuts a round here and appends it after the next step.
        Cut,
        /// A need's new description: its urgency, whether it now asks for an enhanced
        /// criminal-record check, and its party (two: beyond every offer's room).
        UpdateNeed(u8, u8, bool, u8),
        /// An enhanced check for a volunteer, and its revocation.
        Verify(u8, u8),
        Revoke(u8),
        /// The incident stood down: from here on only what intake still takes (withdrawals,
        /// revocations, declines, completions) and the matcher's rounds.
        StandDown,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u8..12, 1u8..=5, any::<bool>()).prop_map(|(n, u, v)| Step::Need(n, u, v)),
            3 => (0u8..8, 0u8..5).prop_map(|(o, v)| Step::Offer(o, v)),
            3 => Just(Step::Round),
            2 => (0u8..16, any::<bool>()).prop_map(|(a, y)| Step::Respond(a, y)),
            1 => (0u8..16).prop_map(Step::Complete),
            1 => (0u8..12).prop_map(Step::WithdrawNeed),
            1 => (0u8..8).prop_map(Step::WithdrawOffer),
            1 => (1u8..120).prop_map(Step::Later),
            1 => Just(Step::Garbage),
            2 => Just(Step::Cut),
            1 => (0u8..12, 1u8..=5, any::<bool>(), 1u8..=2)
                .prop_map(|(n, u, v, p)| Step::UpdateNeed(n, u, v, p)),
            1 => (0u8..6, 0u8..5).prop_map(|(c, v)| Step::Verify(c, v)),
            1 => (0u8..6).prop_map(Step::Revoke),
            1 => Just(Step::StandDown),
        ]
    }

    fn play(steps: &[Step]) -> Log {
        let mut log = Log::new();
        let mut proposed: Vec<EntityId> = Vec::new();
        // A round cut and not yet appended: the next step's events land before it.
        let mut cut: Option<Vec<Event>> = None;
        let mut stood_down = false;
        for s in steps {
            let refused = matches!(
                s,
                Step::Need(..)
                    | Step::Offer(..)
                    | Step::UpdateNeed(..)
                    | Step::Verify(..)
                    | Step::Respond(_, true)
                    | Step::StandDown
            );
            if stood_down && refused {
                continue;
            }
            let mut appending = cut.take();
            if matches!(s, Step::Round | Step::Cut)
                && let Some(round) = appending.take()
            {
                // The matcher cuts one round at a time: the last one's events come back first.
                proposed.extend(log.append(round));
            }
            match s {
                Step::Need(n, u, v) => {
                    // Re-reporting is set aside by the fold (creation is guarded on the log).
                    log.need(&format!("n{n}"), u32::from(*u), *v);
                }
                Step::Offer(o, v) => {
                    log.offer(&format!("o{o}"), &format!("vol-{v}"));
                }
                Step::Round => proposed.extend(log.round()),
                Step::Respond(a, yes) => {
                    if let Some(a) = proposed.get(*a as usize).copied() {
                        let r = if *yes {
                            Response::Accept
                        } else {
                            Response::Decline
                        };
                        log.respond(a, r);
                    }
                }
                Step::Complete(a) => {
                    if let Some(a) = proposed.get(*a as usize).copied() {
                        log.event(
                            "A1",
                            Event::AssignmentCompletedV1(AssignmentCompletedV1 {
                                assignment: a,
                                personal: Personal::None,
                            }),
                        );
                    }
                }
                Step::WithdrawNeed(n) => {
                    log.event(
                        "A1",
                        Event::NeedWithdrawnV1(NeedWithdrawnV1 {
                            need: id(&format!("n{n}")),
                            reason: "done".into(),
                        }),
                    );
                }
                Step::WithdrawOffer(o) => {
                    log.event(
                        "A1",
                        Event::OfferWithdrawnV1(OfferWithdrawnV1 {
                            offer: id(&format!("o{o}")),
                            reason: "gone".into(),
                        }),
                    );
                }
                Step::Later(m) => {
                    log.later(i64::from(*m) * MIN);
                }
                Step::Garbage => {
                    log.garbage(&[9, 9, 9]);
                }
                Step::Cut => cut = Some(log.cut()),
                Step::UpdateNeed(n, u, vetted, party) => {
                    let mut spec = need_spec(u32::from(*u), 53.96, false);
                    spec.party_size = u16::from(*party);
                    if *vetted {
                        spec.required_verifications =
                            vec![VerificationKind::CriminalRecordEnhanced];
                    }
                    log.event(
                        "A1",
                        Event::NeedUpdatedV1(NeedUpdatedV1 {
                            need: id(&format!("n{n}")),
                            spec,
                            personal: Personal::None,
                        }),
                    );
                }
                Step::Verify(c, v) => {
                    log.event(
                        "_",
                        Event::VerificationRecordedV1(VerificationRecordedV1 {
                            verification: id(&format!("c{c}")),
                            reference: Reference::parse("r", &format!("c{c}")).expect("valid"),
                            person: person(&format!("vol-{v}")),
                            kind: VerificationKind::CriminalRecordEnhanced,
                            issuer: AgencyId::parse("i", "dbs").expect("valid"),
                            issued_at: Timestamp(T0 - 60 * MIN),
                            expires_at: None,
                            personal: Personal::None,
                        }),
                    );
                }
                Step::Revoke(c) => {
                    log.event(
                        "_",
                        Event::VerificationRevokedV1(VerificationRevokedV1 {
                            verification: id(&format!("c{c}")),
                            reason: "barred".into(),
                        }),
                    );
                }
                Step::StandDown => {
                    stood_down = true;
                    log.event(
                        "_",
                        Event::IncidentStoodDownV1(IncidentStoodDownV1 {
                            incident: incident(),
                            reason: "over".into(),
                        }),
                    );
                }
            }
            if let Some(round) = appending {
                proposed.extend(log.append(round));
            }
        }
        if let Some(round) = cut {
            proposed.extend(log.append(round));
        }
        if stood_down {
            // The stand-down is new input: the matcher cuts a round after it.
            log.round();
        }
        log
    }

    /// Rounds cut after the incident was stood down propose nothing, and once the matcher has
    /// cut one no proposal is left awaiting an answer: in the matcher's state or the read
    /// models.
    fn stand_down_holds(log: &Log, store: &MemStore) {
        let Some(at) = log.items.iter().find_map(|(seq, _, env)| {
            env.as_ref()
                .ok()
                .filter(|e| matches!(e.event, Event::IncidentStoodDownV1(_)))
                .map(|_| *seq)
        }) else {
            return;
        };
        for (seq, _, env) in &log.items {
            if let Ok(env) = env
                && let Event::AssignmentProposedV1(p) = &env.event
            {
                assert!(
                    p.round_through_seq < at,
                    "seq {seq}: a round cut at {} (after the stand-down at {at}) proposed",
                    p.round_through_seq
                );
            }
        }
        assert!(
            log.state.assignments.values().all(|a| !matches!(
                a.status,
                muster_matching::state::AssignmentStatus::Pending { .. }
            )),
            "a proposal still awaits an answer after the stand-down's round"
        );
        assert_eq!(counter(store, "assignment.proposed"), 0);
    }

    /// Every event of the engine's rounds is applied, whatever landed between a round's cut
    /// and its append: the matcher and the read models agree on which assignments exist.
    fn rounds_applied(log: &Log, store: &MemStore) {
        let aside: Vec<u64> = Log::set_aside(store).iter().map(|r| r.seq).collect();
        for (seq, _, env) in &log.items {
            if let Ok(env) = env
                && env.event.is_round_event()
            {
                assert!(
                    !aside.contains(seq),
                    "{} at {seq} set aside: {:?}",
                    env.event.type_name(),
                    Log::set_aside(store)
                );
            }
        }
    }

    /// The counters and indexes, recomputed from the records alone, in every incident the
    /// records name.
    fn recount(store: &MemStore) {
        fn of<T: EntityRecord + serde::de::DeserializeOwned>(store: &MemStore) -> Vec<IncidentId> {
            store
                .cf(T::CF)
                .map(|(_, v)| {
                    let r: T = postcard::from_bytes(v).expect("decodes");
                    r.incident().clone()
                })
                .collect()
        }
        let mut incidents = std::collections::BTreeSet::from([incident()]);
        incidents.extend(of::<NeedRecord>(store));
        incidents.extend(of::<OfferRecord>(store));
        incidents.extend(of::<AssignmentRecord>(store));
        for inc in &incidents {
            recount_in(store, inc);
        }
    }

    fn recount_in(store: &MemStore, inc: &IncidentId) {
        let needs: Vec<(EntityId, NeedRecord)> = store
            .cf(Cf::Needs)
            .map(|(k, v)| {
                (
                    keys::trailing_id(k).expect("id key"),
                    postcard::from_bytes(v).expect("decodes"),
                )
            })
            .filter(|(_, r): &(EntityId, NeedRecord)| &r.incident == inc)
            .collect();
        for status in NeedStatus::ALL {
            let n = needs.iter().filter(|(_, r)| r.status == status).count() as i64;
            assert_eq!(
                counter_in(store, inc, &format!("need.{}", status.name())),
                n,
                "need.{}",
                status.name()
            );
            for u in 1..=5u8 {
                let n = needs
                    .iter()
                    .filter(|(_, r)| r.status == status && r.spec.urgency.get() == u)
                    .count() as i64;
                assert_eq!(
                    counter_in(store, inc, &format!("need.{}.urgency.{u}", status.name())),
                    n
                );
            }
        }
        let mut open: Vec<EntityId> = needs
            .iter()
            .filter(|(_, r)| r.status.is_open())
            .map(|(i, _)| *i)
            .collect();
        open.sort();
        let mut indexed = open_needs_in(store, inc);
        indexed.sort();
        assert_eq!(
            indexed, open,
            "the open-needs index holds exactly the open needs"
        );
        let safeguarded = needs
            .iter()
            .filter(|(_, r)| r.status.is_open() && r.spec.vulnerable)
            .count() as i64;
        assert_eq!(
            counter_in(store, inc, counters::UNMET_SAFEGUARDED),
            safeguarded
        );
        // Every open-index value agrees with its need.
        let prefix = keys::open_needs_prefix(inc);
        for (k, v) in store.cf(Cf::Index).filter(|(k, _)| k.starts_with(&prefix)) {
            let e: NeedEntry = postcard::from_bytes(v).expect("decodes");
            let need = needs
                .iter()
                .find(|(i, _)| Some(*i) == keys::trailing_id(k))
                .expect("indexed need exists");
            assert_eq!(e.status, need.1.status);
        }
        let assignments: Vec<(EntityId, AssignmentRecord)> = store
            .cf(Cf::Assignments)
            .map(|(k, v)| {
                (
                    keys::trailing_id(k).expect("id"),
                    postcard::from_bytes(v).expect("decodes"),
                )
            })
            .filter(|(_, r): &(EntityId, AssignmentRecord)| &r.incident == inc)
            .collect();
        for (need_id, need) in &needs {
            let active: Vec<_> = assignments
                .iter()
                .filter(|(_, a)| a.need == *need_id && a.status.is_active())
                .collect();
            assert!(active.len() <= 1, "a need has at most one live assignment");
            match (need.status, active.first()) {
                (NeedStatus::Proposed, Some((aid, a))) => {
                    assert_eq!(need.current_assignment, Some(*aid));
                    assert_eq!(a.status, AssignmentStatus::Proposed);
                }
                (NeedStatus::Accepted, Some((aid, a))) => {
                    assert_eq!(need.current_assignment, Some(*aid));
                    assert_eq!(a.status, AssignmentStatus::Accepted);
                }
                (NeedStatus::Withdrawn, _) => {}
                (status, active) => {
                    assert!(
                        active.is_none(),
                        "a {} need has a live assignment",
                        status.name()
                    );
                    assert_eq!(need.current_assignment, None);
                    assert!(
                        !matches!(status, NeedStatus::Proposed | NeedStatus::Accepted),
                        "a {} need without a live assignment",
                        status.name()
                    );
                }
            }
        }
        let offers: Vec<(EntityId, OfferRecord)> = store
            .cf(Cf::Offers)
            .map(|(k, v)| {
                (
                    keys::trailing_id(k).expect("id"),
                    postcard::from_bytes(v).expect("decodes"),
                )
            })
            .filter(|(_, r): &(EntityId, OfferRecord)| &r.incident == inc)
            .collect();
        for (oid, o) in &offers {
            let active = assignments
                .iter()
                .filter(|(_, a)| a.offer == *oid && a.status.is_active())
                .count() as u32;
            assert_eq!(
                o.active_assignments, active,
                "active assignments of an offer"
            );
        }
        let proposals = assignments.len() as i64;
        let by_status: i64 = [
            "proposed",
            "accepted",
            "declined",
            "completed",
            "expired",
            "cancelled",
        ]
        .iter()
        .map(|s| counter_in(store, inc, &format!("assignment.{s}")))
        .sum();
        assert_eq!(by_status, proposals);
    }

    /// The matcher's state and the read models, each a fold of the same log, agree on which
    /// assignments are live and which needs are open.
    fn matcher_agrees(log: &Log, store: &MemStore) {
        use muster_matching::state::NeedStatus as M;
        for (k, v) in store.cf(Cf::Assignments) {
            let id = keys::trailing_id(k).expect("id");
            let a: AssignmentRecord = postcard::from_bytes(v).expect("decodes");
            assert_eq!(
                a.status.is_active(),
                log.state.assignments.contains_key(&id),
                "assignment {id}: {} in the read models",
                a.status.name()
            );
        }
        for (k, v) in store.cf(Cf::Needs) {
            let id = keys::trailing_id(k).expect("id");
            let n: NeedRecord = postcard::from_bytes(v).expect("decodes");
            let m = log.state.needs.get(&id).map(|n| n.status);
            assert_eq!(
                n.status == NeedStatus::Open,
                m == Some(M::Open),
                "need {id}: {} in the read models, {m:?} in the matcher",
                n.status.name()
            );
            if let Some(M::Assigned(a)) = m {
                assert_eq!(n.current_assignment, Some(a), "need {id}");
            }
        }
    }

    /// Neither fold crashes on `log` or contradicts itself: the read models apply or set aside
    /// every event, move their position to the end, and their counters and indexes recount
    /// from their records in every incident; the matcher folds what decodes into one state per
    /// incident (as its service does), cuts rounds as it goes, and its derived sets agree with
    /// its state.
    fn both_folds_hold(log: &Log) -> Result<(), TestCaseError> {
        let store = log.fold();
        recount(&store);
        let position = store
            .data
            .get(&(Cf::Meta, keys::POSITION.to_vec()))
            .and_then(|v| muster_readmodel::tx::decode_i64(v));
        prop_assert_eq!(position, Some(log.items.len() as i64));
        let undecodable = log.items.iter().filter(|(_, _, e)| e.is_err()).count();
        prop_assert!(Log::set_aside(&store).len() >= undecodable);
        let mut states: std::collections::BTreeMap<IncidentId, State> = Default::default();
        for (n, (seq, _, env)) in log.items.iter().enumerate() {
            let Ok(env) = env else { continue };
            let state = states.entry(env.incident.clone()).or_default();
            state.apply(*seq, env);
            if n % 5 == 4 {
                let r = muster_matching::round(state);
                muster_matching::round::round_events(state, &env.incident, &r);
            }
        }
        for (incident, state) in &states {
            state.check_derived();
            let r = muster_matching::round(state);
            muster_matching::round::round_events(state, incident, &r);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn counters_and_indexes_agree_with_the_records(steps in prop::collection::vec(step(), 1..60)) {
            let log = play(&steps);
            let store = log.fold();
            recount(&store);
            rounds_applied(&log, &store);
            matcher_agrees(&log, &store);
            stand_down_holds(&log, &store);
        }

        #[test]
        fn any_batching_with_any_redeliveries_gives_the_same_read_model(
            steps in prop::collection::vec(step(), 1..50),
            cuts in prop::collection::vec((0usize..200, 0usize..200), 0..8),
        ) {
            let log = play(&steps);
            let once = log.fold();
            // Fold in batches, and after some batches go back and deliver an earlier stretch
            // again (a crash before the ack, a redelivery).
            let mut store = MemStore::default();
            let n = log.items.len();
            let mut at = 0;
            let mut cuts = cuts.into_iter();
            while at < n {
                let (len, back) = cuts.next().unwrap_or((n, 0));
                let end = (at + 1 + len % 7).min(n);
                let start = at.saturating_sub(back % 5);
                let mut tx = Tx::new(&store);
                for (s, sub, e) in &log.items[start..end] {
                    apply(&mut tx, *s, sub, e).expect("fold");
                }
                let changes: Vec<_> = tx.into_changes().collect();
                store.commit(changes.into_iter());
                at = end;
            }
            prop_assert_eq!(store.checksum(), once.checksum());
        }

        /// Bytes in the log that still decode can carry what intake would never write (an
        /// urgency of 0, a point off the Earth, a window that ends before it starts, a policy's
        /// weights at their maximum, another incident): see [`both_folds_hold`].
        #[test]
        fn events_mangled_in_the_log_crash_neither_fold(
            steps in prop::collection::vec(step(), 1..40),
            edits in prop::collection::vec(
                (any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()),
                1..24,
            ),
        ) {
            let mut log = play(&steps);
            for (item, at, byte) in edits {
                let i = item.index(log.items.len());
                let (_, _, env) = &mut log.items[i];
                if let Ok(e) = env.as_ref() {
                    let mut bytes = e.encode();
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                    *env = Envelope::decode(&bytes);
                }
            }
            both_folds_hold(&log)?;
        }

        /// Events out of the order intake and the matcher keep (two neighbours trading
        /// places, their sequences still rising): see [`both_folds_hold`].
        #[test]
        fn events_out_of_order_crash_neither_fold(
            steps in prop::collection::vec(step(), 1..40),
            swaps in prop::collection::vec(any::<prop::sample::Index>(), 1..6),
        ) {
            let mut log = play(&steps);
            for swap in swaps {
                if log.items.len() > 1 {
                    let i = swap.index(log.items.len() - 1);
                    let (a, b) = log.items.split_at_mut(i + 1);
                    std::mem::swap(&mut a[i].1, &mut b[0].1);
                    std::mem::swap(&mut a[i].2, &mut b[0].2);
                }
            }
            both_folds_hold(&log)?;
        }
    }
}

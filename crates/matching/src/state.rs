//! The matcher's state, folded from the log's events in stream order.
//!
//! Providers and offers are interned into dense slots (in order of first appearance on the log,
//! so the same log gives the same slots) and everything a round reads per candidate is an array
//! index away. Ids map to slots through ordered maps; nothing iterates a `HashMap`. The spatial
//! index of offers is updated as offers arrive, change and leave, and as their providers'
//! verifications change.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use muster_schema::assignment::{Move, Stage};
use muster_schema::events::{CancelReason, EntityRef, NeedSpecV1, OfferSpecV1};
use muster_schema::ids::EntityKind;
use muster_schema::{
    EntityId, Envelope, Event, PartitionCode, PersonId, PolicyV1, Provider, Timestamp,
};

use crate::index::{Class, SpatialIndex};
use crate::rules::{self, HeldVerification};

/// Who stands behind offers: one assignment per provider per round.
pub type ProviderKey = PersonId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NeedStatus {
    Open,
    /// Has a pending or accepted assignment.
    Assigned(EntityId),
    Withdrawn,
    Completed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Need {
    /// The area the need is in (its events' partition, fixed for its life).
    pub partition: PartitionCode,
    pub spec: NeedSpecV1,
    pub reported_at: Timestamp,
    pub status: NeedStatus,
}

impl Need {
    /// The criminal-record level its required verifications call for (0: none).
    pub fn required_level(&self) -> u8 {
        self.spec
            .required_verifications
            .iter()
            .map(rules::criminal_record_level)
            .max()
            .unwrap_or(0)
    }

    /// The qualifications its required verifications call for, as
    /// [`rules::qualification_bits`] (0: none).
    pub fn required_quals(&self) -> u16 {
        self.spec
            .required_verifications
            .iter()
            .fold(0, |bits, k| bits | rules::qualification_bits(k))
    }

    /// How long it has waited at log time `now`, in microseconds.
    pub fn waited_us(&self, now: Timestamp) -> i64 {
        now.micros() - self.reported_at.micros()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Offer {
    pub id: EntityId,
    /// Slot of the provider in [`State::providers`].
    pub provider: u32,
    pub spec: OfferSpecV1,
    /// Capacity taken by pending and accepted assignments.
    pub committed: u32,
    pub withdrawn: bool,
}

impl Offer {
    pub fn remaining(&self) -> u32 {
        u32::from(self.spec.capacity).saturating_sub(self.committed)
    }
}

/// A volunteer or organisation, with what the rules need to know about them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderState {
    pub id: ProviderKey,
    /// Pending and accepted assignments.
    pub load: u32,
    /// Assignments ever proposed (fairness).
    pub tasks: u32,
    pub verifications: Vec<(EntityId, HeldVerification)>,
    /// Offer slots.
    pub offers: Vec<u32>,
}

impl ProviderState {
    pub fn held(&self) -> impl Iterator<Item = &HeldVerification> + Clone {
        self.verifications.iter().map(|(_, h)| h)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignmentStatus {
    Pending { proposed_at: Timestamp },
    Accepted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub need: EntityId,
    pub offer: EntityId,
    pub provider: ProviderKey,
    pub party: u32,
    pub status: AssignmentStatus,
}

/// Everything the matcher knows, as of `through_seq`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub policy: PolicyV1,
    pub policy_version: u32,
    /// The incident was stood down: rounds propose nothing more, and cancel every proposal
    /// still awaiting an answer.
    pub stood_down: bool,
    pub through_seq: u64,
    /// The latest recorded time seen: the log's clock.
    pub now: Timestamp,
    pub needs: BTreeMap<EntityId, Need>,
    pub offers: Vec<Offer>,
    offer_slot: BTreeMap<EntityId, u32>,
    pub providers: Vec<ProviderState>,
    /// Provider slots by a hash of the provider's id (ties: checked against the id itself), so
    /// a lookup compares integers, not strings on the heap.
    provider_slot: BTreeSet<(u64, u32)>,
    /// Which provider holds each verification.
    verification_owner: BTreeMap<EntityId, u32>,
    pub assignments: BTreeMap<EntityId, Assignment>,
    /// Provider slots that declined each need.
    declined: BTreeMap<EntityId, BTreeSet<u32>>,
    pub index: SpatialIndex,
    /// Kept alongside `needs` and `assignments` so a round reads only what concerns it, not
    /// everything the incident ever had (see [`State::check_derived`]):
    /// the open needs,
    open: BTreeSet<EntityId>,
    /// pending assignments by the time they were proposed (expiries are a prefix),
    pending: BTreeSet<(Timestamp, EntityId)>,
    /// live assignments a round must check for cancellation: every one that has a reason to
    /// be cancelled now (and some that had one once). Reasons come with events (a need or
    /// offer withdrawn, a verification recorded or revoked, a need's requirements changed) or
    /// with time (a required verification expiring or coming into force): those are
    /// rechecked when the log's clock passes the next such moment,
    watch: BTreeSet<EntityId>,
    recheck: BTreeSet<(Timestamp, EntityId)>,
    recheck_at: BTreeMap<EntityId, Timestamp>,
    /// and live assignments by need, by offer and by provider slot.
    live_by_need: BTreeMap<EntityId, BTreeSet<EntityId>>,
    live_by_offer: BTreeMap<EntityId, BTreeSet<EntityId>>,
    live_by_provider: BTreeMap<u32, BTreeSet<EntityId>>,
}

/// FNV-1a over an id's bytes: fixed forever (snapshots keep it), cheap, and only ever a hint
/// (every hit is checked against the id).
fn id_hash(id: &ProviderKey) -> u64 {
    rules::fnv1a(id.as_str().as_bytes())
}

fn provider_key(p: &Provider) -> ProviderKey {
    match p {
        Provider::Volunteer(id) | Provider::Organisation(id) => id.clone(),
    }
}

impl State {
    pub fn offer(&self, id: &EntityId) -> Option<&Offer> {
        self.offer_slot.get(id).map(|s| &self.offers[*s as usize])
    }

    /// The live (pending or accepted) assignments of `need`, by id.
    pub fn live_assignments(
        &self,
        need: &EntityId,
    ) -> impl Iterator<Item = (&EntityId, &Assignment)> + '_ {
        self.live_by_need
            .get(need)
            .into_iter()
            .flatten()
            .filter_map(|id| self.assignments.get(id).map(|a| (id, a)))
    }

    pub fn provider(&self, id: &ProviderKey) -> Option<&ProviderState> {
        self.slot_of_provider(id)
            .map(|s| &self.providers[s as usize])
    }

    /// The slot of provider `id`, if known.
    fn slot_of_provider(&self, id: &ProviderKey) -> Option<u32> {
        let h = id_hash(id);
        self.provider_slot
            .range((h, 0)..=(h, u32::MAX))
            .map(|(_, slot)| *slot)
            .find(|slot| self.providers[*slot as usize].id == *id)
    }

    /// The verifications `person` holds (valid or not: the rules decide).
    pub fn held_by<'a>(
        &'a self,
        person: &ProviderKey,
    ) -> impl Iterator<Item = &'a HeldVerification> + Clone {
        self.provider(person)
            .into_iter()
            .flat_map(ProviderState::held)
    }

    /// Whether `provider` declined `need` before.
    pub fn has_declined(&self, need: &EntityId, provider: &ProviderKey) -> bool {
        self.slot_of_provider(provider)
            .is_some_and(|p| self.declined_by(need).is_some_and(|d| d.contains(&p)))
    }

    /// The provider slots that declined `need` (`None`: none did).
    pub(crate) fn declined_by(&self, need: &EntityId) -> Option<&BTreeSet<u32>> {
        self.declined.get(need)
    }

    fn provider_slot_of(&mut self, id: &ProviderKey) -> u32 {
        if let Some(s) = self.slot_of_provider(id) {
            return s;
        }
        let slot = self.providers.len() as u32;
        self.providers.push(ProviderState {
            id: id.clone(),
            load: 0,
            tasks: 0,
            verifications: Vec::new(),
            offers: Vec::new(),
        });
        self.provider_slot.insert((id_hash(id), slot));
        slot
    }

    /// The highest criminal-record level a provider holds that is, or will become, valid: the
    /// index class. A superset of what is valid at any later time (the rules decide exactly).
    fn level_of(&self, provider: u32) -> u8 {
        self.lasting(provider)
            .map(|h| rules::criminal_record_level(&h.kind))
            .max()
            .unwrap_or(0)
    }

    /// How the index files a provider's offers: their level, the qualifications they hold
    /// that are or will become valid (as [`rules::qualification_bits`], a superset as the
    /// level is) and their tasks.
    fn class_of(&self, provider: u32) -> Class {
        Class {
            level: self.level_of(provider),
            quals: self
                .lasting(provider)
                .fold(0, |bits, h| bits | rules::qualification_bits(&h.kind)),
            tasks: self.providers[provider as usize].tasks,
        }
    }

    /// A provider's verifications that are valid now or will be.
    fn lasting(&self, provider: u32) -> impl Iterator<Item = &HeldVerification> {
        self.providers[provider as usize]
            .held()
            .filter(|h| h.valid_at(self.now) || h.issued_at > self.now)
    }

    fn reindex_provider(&mut self, provider: u32) {
        let class = self.class_of(provider);
        for slot in self.providers[provider as usize].offers.clone() {
            let o = &self.offers[slot as usize];
            if !o.withdrawn {
                self.index.insert(slot, &o.spec, class, o.remaining());
            }
        }
    }

    /// Sets a need's status, keeping the open set.
    fn set_status(&mut self, need: &EntityId, status: NeedStatus) {
        if let Some(n) = self.needs.get_mut(need) {
            n.status = status;
            if status == NeedStatus::Open {
                self.open.insert(*need);
            } else {
                self.open.remove(need);
            }
        }
    }

    /// Why a live assignment can no longer stand at the log's time, if it cannot: its need or
    /// offer withdrawn, a verification its need requires no longer held, either changed so
    /// that the offer no longer serves the need, or (a proposal not yet answered) the incident
    /// stood down.
    pub fn cancel_reason(&self, a: &Assignment) -> Option<CancelReason> {
        self.broken(a).or_else(|| {
            (self.stood_down && matches!(a.status, AssignmentStatus::Pending { .. }))
                .then_some(CancelReason::IncidentStoodDown)
        })
    }

    /// Why a live assignment's need and offer can no longer stand together, if they cannot.
    fn broken(&self, a: &Assignment) -> Option<CancelReason> {
        let need = self.needs.get(&a.need);
        let offer = self.offer(&a.offer);
        let offer_gone = offer.is_none_or(|o| o.withdrawn);
        match need {
            Some(n) if n.status == NeedStatus::Withdrawn => Some(CancelReason::NeedWithdrawn),
            _ if offer_gone => Some(CancelReason::OfferWithdrawn),
            Some(n)
                if !rules::verifications_hold(
                    &n.spec.required_verifications,
                    self.held_by(&a.provider),
                    self.now,
                ) =>
            {
                Some(CancelReason::VerificationLost)
            }
            Some(n) => offer
                .filter(|o| {
                    let room = u32::from(o.spec.capacity)
                        .saturating_sub(o.committed.saturating_sub(a.party));
                    !rules::still_fits(&n.spec, &o.spec, room)
                })
                .map(|_| CancelReason::NoLongerFits),
            None => None,
        }
    }

    /// The next log time after now at which one of `provider`'s verifications comes into force
    /// or expires.
    fn next_change(&self, provider: &ProviderKey) -> Option<Timestamp> {
        self.held_by(provider)
            .filter(|h| !h.revoked)
            .flat_map(|h| [Some(h.issued_at), h.expires_at])
            .flatten()
            .filter(|t| *t > self.now)
            .min()
    }

    /// Watches a live assignment if it has a reason to be cancelled now; otherwise, if its
    /// need requires verifications, schedules a recheck for when they next change with time.
    fn assess(&mut self, id: EntityId) {
        if let Some(at) = self.recheck_at.remove(&id) {
            self.recheck.remove(&(at, id));
        }
        let Some(a) = self.assignments.get(&id) else {
            return;
        };
        if self.cancel_reason(a).is_some() {
            self.watch.insert(id);
            return;
        }
        let vetted = self
            .needs
            .get(&a.need)
            .is_some_and(|n| !n.spec.required_verifications.is_empty());
        if vetted && let Some(at) = self.next_change(&a.provider) {
            self.recheck.insert((at, id));
            self.recheck_at.insert(id, at);
        }
    }

    /// Assesses the live assignments in `live` (of one need, offer or provider).
    fn assess_all(&mut self, live: Option<BTreeSet<EntityId>>) {
        for id in live.into_iter().flatten() {
            self.assess(id);
        }
    }

    /// Rechecks the assignments whose verifications changed with the clock.
    fn assess_due(&mut self) {
        while let Some(&(at, id)) = self.recheck.first()
            && at <= self.now
        {
            self.assess(id);
        }
    }

    fn link(&mut self, id: EntityId, a: &Assignment) {
        if let AssignmentStatus::Pending { proposed_at } = a.status {
            self.pending.insert((proposed_at, id));
        }
        self.live_by_need.entry(a.need).or_default().insert(id);
        self.live_by_offer.entry(a.offer).or_default().insert(id);
        if let Some(p) = self.slot_of_provider(&a.provider) {
            self.live_by_provider.entry(p).or_default().insert(id);
        }
    }

    fn unlink(&mut self, id: &EntityId, a: &Assignment) {
        if let AssignmentStatus::Pending { proposed_at } = a.status {
            self.pending.remove(&(proposed_at, *id));
        }
        self.watch.remove(id);
        if let Some(at) = self.recheck_at.remove(id) {
            self.recheck.remove(&(at, *id));
        }
        fn drop_from<K: Ord>(map: &mut BTreeMap<K, BTreeSet<EntityId>>, key: K, id: &EntityId) {
            if let Some(set) = map.get_mut(&key) {
                set.remove(id);
                if set.is_empty() {
                    map.remove(&key);
                }
            }
        }
        drop_from(&mut self.live_by_need, a.need, id);
        drop_from(&mut self.live_by_offer, a.offer, id);
        if let Some(p) = self.slot_of_provider(&a.provider) {
            drop_from(&mut self.live_by_provider, p, id);
        }
    }

    /// The open needs, in id order.
    pub fn open_needs(&self) -> impl Iterator<Item = (&EntityId, &Need)> {
        self.open.iter().map(|id| (id, &self.needs[id]))
    }

    /// The live assignments a round may end, in id order: every one pending since `cutoff` or
    /// before, and every one that may be cancelled. A superset: the round decides.
    pub fn may_end(&self, cutoff: Timestamp) -> BTreeSet<EntityId> {
        let mut out = self.watch.clone();
        out.extend(
            self.pending
                .iter()
                .take_while(|(at, _)| *at <= cutoff)
                .map(|(_, id)| *id),
        );
        out
    }

    /// Checks the sets kept alongside `needs` and `assignments` against a recomputation from
    /// them (for tests): panics on the first difference.
    pub fn check_derived(&self) {
        let open: BTreeSet<EntityId> = self
            .needs
            .iter()
            .filter(|(_, n)| n.status == NeedStatus::Open)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(self.open, open, "open needs");
        for (slot, o) in self.offers.iter().enumerate() {
            let tier = self.index.tier_of(slot as u32);
            if o.withdrawn {
                assert_eq!(tier, None, "offer {slot} is withdrawn and not indexed");
            } else {
                let tasks = self.providers[o.provider as usize].tasks;
                assert_eq!(
                    tier.map(u32::from),
                    Some(tasks.min(u32::from(crate::index::TIERS) - 1)),
                    "offer {slot}'s fairness tier"
                );
                assert_eq!(
                    self.index.room_of(slot as u32).map(u32::from),
                    Some(o.remaining().min(u32::from(u16::MAX))),
                    "offer {slot}'s room"
                );
            }
        }
        let pending: BTreeSet<(Timestamp, EntityId)> = self
            .assignments
            .iter()
            .filter_map(|(id, a)| match a.status {
                AssignmentStatus::Pending { proposed_at } => Some((proposed_at, *id)),
                AssignmentStatus::Accepted => None,
            })
            .collect();
        assert_eq!(self.pending, pending, "pending assignments");
        for (id, a) in &self.assignments {
            assert!(
                self.cancel_reason(a).is_none() || self.watch.contains(id),
                "assignment {id} has a reason to be cancelled but is not watched"
            );
            assert!(self.live_by_need[&a.need].contains(id), "by need");
            assert!(self.live_by_offer[&a.offer].contains(id), "by offer");
            let p = self
                .slot_of_provider(&a.provider)
                .expect("a known provider");
            assert!(self.live_by_provider[&p].contains(id), "by provider");
        }
        let rechecks: BTreeSet<(Timestamp, EntityId)> =
            self.recheck_at.iter().map(|(id, at)| (*at, *id)).collect();
        assert_eq!(self.recheck, rechecks, "rechecks");
        assert!(
            self.recheck.iter().all(|(at, _)| *at > self.now),
            "a recheck is overdue"
        );
        for set in [&self.watch]
            .into_iter()
            .chain(self.live_by_need.values())
            .chain(self.live_by_offer.values())
            .chain(self.live_by_provider.values())
        {
            assert!(
                set.iter().all(|id| self.assignments.contains_key(id)),
                "only live assignments are kept"
            );
        }
    }

    fn release(&mut self, assignment: &EntityId) -> Option<Assignment> {
        let a = self.assignments.remove(assignment)?;
        self.unlink(assignment, &a);
        if let Some(slot) = self.offer_slot.get(&a.offer) {
            let o = &mut self.offers[*slot as usize];
            o.committed = o.committed.saturating_sub(a.party);
            let room = o.remaining();
            self.index.set_room(*slot, room);
        }
        if let Some(slot) = self.slot_of_provider(&a.provider) {
            let p = &mut self.providers[slot as usize];
            p.load = p.load.saturating_sub(1);
        }
        Some(a)
    }

    /// Moves `need` to `to` if `assignment` is what it is assigned to: a need withdrawn (or
    /// given to another assignment) meanwhile does not follow an assignment that ends.
    fn follow(&mut self, need: &EntityId, assignment: EntityId, to: NeedStatus) {
        if self
            .needs
            .get(need)
            .is_some_and(|n| n.status == NeedStatus::Assigned(assignment))
        {
            self.set_status(need, to);
        }
    }

    /// Ends an assignment and opens its need to be matched again.
    fn reopen(&mut self, assignment: &EntityId) {
        if let Some(a) = self.release(assignment) {
            self.follow(&a.need, *assignment, NeedStatus::Open);
        }
    }

    /// An assignment's event, by the rule every reader of the log applies
    /// ([`muster_schema::assignment`]): a round's decision that no longer holds, and anything
    /// out of turn, change nothing.
    fn moved(&mut self, event: &Event) {
        let EntityRef::Entity(EntityKind::Assignment, id) = event.entity() else {
            return;
        };
        let stage = match self.assignments.get(&id).map(|a| a.status) {
            Some(AssignmentStatus::Pending { .. }) => Stage::Proposed,
            Some(AssignmentStatus::Accepted) => Stage::Accepted,
            None => Stage::Ended,
        };
        match (stage.on(event), event) {
            (Move::To(Stage::Accepted), _) => {
                if let Some(a) = self.assignments.get_mut(&id) {
                    if let AssignmentStatus::Pending { proposed_at } = a.status {
                        self.pending.remove(&(proposed_at, id));
                    }
                    a.status = AssignmentStatus::Accepted;
                }
            }
            (Move::To(_), Event::VolunteerRespondedV1(_)) => {
                if let Some(a) = self.release(&id) {
                    let provider = self.provider_slot_of(&a.provider);
                    self.declined.entry(a.need).or_default().insert(provider);
                    // A need withdrawn meanwhile stays withdrawn.
                    self.follow(&a.need, id, NeedStatus::Open);
                }
            }
            (Move::To(_), Event::AssignmentCompletedV1(_)) => {
                if let Some(a) = self.release(&id) {
                    self.follow(&a.need, id, NeedStatus::Completed);
                }
            }
            (Move::To(_), Event::AssignmentCancelledV1(c))
                if c.reason == CancelReason::NeedWithdrawn =>
            {
                self.release(&id);
            }
            (Move::To(_), _) => self.reopen(&id),
            (Move::Void | Move::Invalid, _) => {}
        }
    }

    /// How many records the state holds (needs, offers, verifications, live assignments): what
    /// the cost of encoding it grows with.
    pub fn records(&self) -> usize {
        self.needs.len()
            + self.offers.len()
            + self.verification_owner.len()
            + self.assignments.len()
    }

    /// Whether the incident's declaration has been folded (it sets the first policy version).
    /// Intake takes nothing for an incident before it is declared, so an undeclared one's
    /// events come from another writer to the log: folded, but no round decides over them.
    pub fn declared(&self) -> bool {
        self.policy_version > 0
    }

    /// Folds one event. Events the matcher does not need (and references to unknown entities)
    /// change nothing.
    pub fn apply(&mut self, seq: u64, env: &Envelope) {
        self.through_seq = self.through_seq.max(seq);
        self.now = self.now.max(env.recorded_at);
        self.fold(env);
        self.assess_due();
    }

    fn fold(&mut self, env: &Envelope) {
        match &env.event {
            Event::IncidentDeclaredV1(e) => {
                self.policy = e.policy.clone();
                self.policy_version = 1;
            }
            Event::PolicyChangedV1(e) => {
                self.policy = e.policy.clone();
                self.policy_version = e.policy_version;
            }
            Event::IncidentStoodDownV1(_) => {
                self.stood_down = true;
                let pending: Vec<EntityId> = self.pending.iter().map(|(_, id)| *id).collect();
                for id in pending {
                    self.assess(id);
                }
            }
            Event::TickV1(_)
            | Event::RoundRecordedV1(_)
            | Event::RoundRecordedV2(_)
            | Event::RoundRecordedV3(_) => {}
            Event::NeedReportedV1(e) => {
                if let std::collections::btree_map::Entry::Vacant(vacant) = self.needs.entry(e.need)
                {
                    vacant.insert(Need {
                        partition: env.partition.clone(),
                        spec: e.spec.clone(),
                        reported_at: env.recorded_at,
                        status: NeedStatus::Open,
                    });
                    self.open.insert(e.need);
                    // Assignments proposed before their need was known (a log out of order).
                    self.assess_all(self.live_by_need.get(&e.need).cloned());
                }
            }
            Event::NeedUpdatedV1(e) => {
                if let Some(n) = self.needs.get_mut(&e.need) {
                    n.spec = e.spec.clone();
                    self.assess_all(self.live_by_need.get(&e.need).cloned());
                }
            }
            Event::NeedWithdrawnV1(e) => {
                self.set_status(&e.need, NeedStatus::Withdrawn);
                self.assess_all(self.live_by_need.get(&e.need).cloned());
            }
            // Creation is guarded on the log (one registration per entity subject); should a
            // second one ever appear, the first stands, so committed capacity is never reset.
            Event::OfferRegisteredV1(e) => {
                let slot = self.offers.len() as u32;
                let std::collections::btree_map::Entry::Vacant(vacant) =
                    self.offer_slot.entry(e.offer)
                else {
                    return;
                };
                vacant.insert(slot);
                let provider = self.provider_slot_of(&provider_key(&e.provider));
                self.offers.push(Offer {
                    id: e.offer,
                    provider,
                    spec: e.spec.clone(),
                    committed: 0,
                    withdrawn: false,
                });
                self.providers[provider as usize].offers.push(slot);
                let class = self.class_of(provider);
                self.index
                    .insert(slot, &e.spec, class, u32::from(e.spec.capacity));
            }
            Event::OfferUpdatedV1(e) => {
                let Some(&slot) = self.offer_slot.get(&e.offer) else {
                    return;
                };
                let o = &mut self.offers[slot as usize];
                if o.withdrawn {
                    return;
                }
                o.spec = e.spec.clone();
                let (provider, room) = (o.provider, o.remaining());
                let class = self.class_of(provider);
                self.index.insert(slot, &e.spec, class, room);
                self.assess_all(self.live_by_offer.get(&e.offer).cloned());
            }
            Event::OfferWithdrawnV1(e) => {
                if let Some(&slot) = self.offer_slot.get(&e.offer) {
                    self.offers[slot as usize].withdrawn = true;
                    self.index.remove(slot);
                    self.assess_all(self.live_by_offer.get(&e.offer).cloned());
                }
            }
            Event::VerificationRecordedV1(e)
                if self.verification_owner.contains_key(&e.verification) => {}
            Event::VerificationRecordedV1(e) => {
                let held = HeldVerification {
                    kind: e.kind.clone(),
                    issued_at: e.issued_at,
                    expires_at: e.expires_at,
                    revoked: false,
                };
                let provider = self.provider_slot_of(&e.person);
                self.providers[provider as usize]
                    .verifications
                    .push((e.verification, held));
                self.verification_owner.insert(e.verification, provider);
                self.reindex_provider(provider);
                self.assess_all(self.live_by_provider.get(&provider).cloned());
            }
            Event::VerificationRevokedV1(e) => {
                let Some(&provider) = self.verification_owner.get(&e.verification) else {
                    return;
                };
                for (id, h) in &mut self.providers[provider as usize].verifications {
                    if *id == e.verification {
                        h.revoked = true;
                    }
                }
                self.reindex_provider(provider);
                self.assess_all(self.live_by_provider.get(&provider).cloned());
            }
            Event::AssignmentProposedV1(e) => {
                let party = self
                    .needs
                    .get(&e.need)
                    .map_or(1, |n| u32::from(n.spec.party_size));
                // A need withdrawn after the round's cut stays withdrawn: the proposal stands
                // (capacity committed) until the next round cancels it (`cancel_reason`).
                if self
                    .needs
                    .get(&e.need)
                    .is_some_and(|n| n.status != NeedStatus::Withdrawn)
                {
                    self.set_status(&e.need, NeedStatus::Assigned(e.assignment));
                }
                if let Some(&slot) = self.offer_slot.get(&e.offer) {
                    let o = &mut self.offers[slot as usize];
                    o.committed += party;
                    let room = o.remaining();
                    self.index.set_room(slot, room);
                }
                let provider = self.provider_slot_of(&e.volunteer);
                let p = &mut self.providers[provider as usize];
                p.load += 1;
                p.tasks += 1;
                let tasks = p.tasks;
                for &slot in &self.providers[provider as usize].offers {
                    self.index.set_tasks(slot, tasks);
                }
                let a = Assignment {
                    need: e.need,
                    offer: e.offer,
                    provider: e.volunteer.clone(),
                    party,
                    status: AssignmentStatus::Pending {
                        proposed_at: env.recorded_at,
                    },
                };
                if let Some(old) = self.assignments.remove(&e.assignment) {
                    // A second proposal under one id replaces the first, as it always has.
                    self.unlink(&e.assignment, &old);
                }
                self.link(e.assignment, &a);
                self.assignments.insert(e.assignment, a);
                // The offer's other live assignments too: a log that commits an offer beyond
                // its capacity (never one the matcher writes) leaves none of them fitting.
                self.assess_all(self.live_by_offer.get(&e.offer).cloned());
            }
            Event::VolunteerRespondedV1(_)
            | Event::AssignmentCompletedV1(_)
            | Event::AssignmentExpiredV1(_)
            | Event::AssignmentCancelledV1(_) => self.moved(&env.event),
        }
    }
}

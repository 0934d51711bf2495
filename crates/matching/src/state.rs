//! The matcher's state, folded from the log's events in stream order.
//!
//! Providers and offers are interned into dense slots (in order of first appearance on the log,
//! so the same log gives the same slots) and everything a round reads per candidate is an array
//! index away. Ids map to slots through ordered maps; nothing iterates a `HashMap`. The spatial
//! index of offers is updated as offers arrive, change and leave, and as their providers'
//! verifications change.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use muster_schema::events::{CancelReason, NeedSpecV1, OfferSpecV1};
use muster_schema::{
    Category, EntityId, Envelope, Event, GeoPoint, PartitionCode, PersonId, PolicyV1, Provider,
    Response, Timestamp,
};

use crate::geo;
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

/// Index key: the category an offer serves and its provider's criminal-record level.
type ClassKey = (Category, u8);
/// A grid cell of the index (see [`geo::cell`]).
type Cell = (i32, i32);

/// Offer slots by class and grid cell.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SpatialIndex {
    cells: BTreeMap<(ClassKey, Cell), BTreeSet<u32>>,
    placed: BTreeMap<u32, Vec<(ClassKey, Cell)>>,
    /// The largest travel radius of any offer ever indexed: no search need reach further.
    max_radius_m: u32,
}

impl SpatialIndex {
    fn remove(&mut self, slot: u32) {
        for key in self.placed.remove(&slot).unwrap_or_default() {
            if let Some(set) = self.cells.get_mut(&key) {
                set.remove(&slot);
                if set.is_empty() {
                    self.cells.remove(&key);
                }
            }
        }
    }

    fn insert(&mut self, slot: u32, spec: &OfferSpecV1, level: u8) {
        self.remove(slot);
        self.max_radius_m = self.max_radius_m.max(spec.travel_radius_m);
        let cell = geo::cell(&spec.location);
        let keys: Vec<_> = spec.kinds.iter().map(|k| ((*k, level), cell)).collect();
        for key in &keys {
            self.cells.entry(*key).or_default().insert(slot);
        }
        self.placed.insert(slot, keys);
    }

    /// The largest travel radius of any offer indexed so far.
    pub fn max_radius_m(&self) -> u32 {
        self.max_radius_m
    }

    /// Offer slots serving `category` in `cell`, from providers at criminal-record level
    /// `min_level` or above.
    pub fn in_cell(&self, category: Category, min_level: u8, cell: Cell, out: &mut Vec<u32>) {
        for level in min_level..=4 {
            if let Some(set) = self.cells.get(&((category, level), cell)) {
                out.extend(set.iter().copied());
            }
        }
    }

    /// Offer slots that may serve `category` within `radius_m` of `at`, from providers at
    /// criminal-record level `min_level` or above: a superset, sorted and unique (the rules
    /// check each candidate).
    pub fn candidates(
        &self,
        category: Category,
        min_level: u8,
        at: &GeoPoint,
        radius_m: u32,
    ) -> Vec<u32> {
        let radius_m = radius_m.min(self.max_radius_m);
        let mut out = Vec::new();
        for level in min_level..=4 {
            for cell in geo::cells_within(at, radius_m) {
                if let Some(set) = self.cells.get(&((category, level), cell)) {
                    out.extend(set.iter().copied());
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Everything the matcher knows, as of `through_seq`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub policy: PolicyV1,
    pub policy_version: u32,
    pub through_seq: u64,
    /// The latest recorded time seen: the log's clock.
    pub now: Timestamp,
    pub needs: BTreeMap<EntityId, Need>,
    pub offers: Vec<Offer>,
    offer_slot: BTreeMap<EntityId, u32>,
    pub providers: Vec<ProviderState>,
    provider_slot: BTreeMap<ProviderKey, u32>,
    /// Which provider holds each verification.
    verification_owner: BTreeMap<EntityId, u32>,
    pub assignments: BTreeMap<EntityId, Assignment>,
    /// Provider slots that declined each need.
    declined: BTreeMap<EntityId, BTreeSet<u32>>,
    pub index: SpatialIndex,
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

    pub fn provider(&self, id: &ProviderKey) -> Option<&ProviderState> {
        self.provider_slot
            .get(id)
            .map(|s| &self.providers[*s as usize])
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
        self.provider_slot
            .get(provider)
            .is_some_and(|p| self.declined_slot(need, *p))
    }

    pub(crate) fn declined_slot(&self, need: &EntityId, provider: u32) -> bool {
        self.declined
            .get(need)
            .is_some_and(|d| d.contains(&provider))
    }

    fn provider_slot_of(&mut self, id: &ProviderKey) -> u32 {
        if let Some(s) = self.provider_slot.get(id) {
            return *s;
        }
        let slot = self.providers.len() as u32;
        self.providers.push(ProviderState {
            id: id.clone(),
            load: 0,
            tasks: 0,
            verifications: Vec::new(),
            offers: Vec::new(),
        });
        self.provider_slot.insert(id.clone(), slot);
        slot
    }

    /// The highest criminal-record level a provider holds that is, or will become, valid: the
    /// index class. A superset of what is valid at any later time (the rules decide exactly).
    fn level_of(&self, provider: u32) -> u8 {
        self.providers[provider as usize]
            .held()
            .filter(|h| h.valid_at(self.now) || h.issued_at > self.now)
            .map(|h| rules::criminal_record_level(&h.kind))
            .max()
            .unwrap_or(0)
    }

    fn reindex_provider(&mut self, provider: u32) {
        let level = self.level_of(provider);
        for slot in self.providers[provider as usize].offers.clone() {
            let o = &self.offers[slot as usize];
            if !o.withdrawn {
                self.index.insert(slot, &o.spec, level);
            }
        }
    }

    fn release(&mut self, assignment: &EntityId) -> Option<Assignment> {
        let a = self.assignments.remove(assignment)?;
        if let Some(slot) = self.offer_slot.get(&a.offer) {
            let o = &mut self.offers[*slot as usize];
            o.committed = o.committed.saturating_sub(a.party);
        }
        if let Some(slot) = self.provider_slot.get(&a.provider) {
            let p = &mut self.providers[*slot as usize];
            p.load = p.load.saturating_sub(1);
        }
        Some(a)
    }

    /// Ends an assignment and opens its need to be matched again.
    fn reopen(&mut self, assignment: &EntityId) {
        if let Some(a) = self.release(assignment)
            && let Some(n) = self.needs.get_mut(&a.need)
            && n.status == NeedStatus::Assigned(*assignment)
        {
            n.status = NeedStatus::Open;
        }
    }

    /// Folds one event. Events the matcher does not need (and references to unknown entities)
    /// change nothing.
    pub fn apply(&mut self, seq: u64, env: &Envelope) {
        self.through_seq = self.through_seq.max(seq);
        self.now = self.now.max(env.recorded_at);
        match &env.event {
            Event::IncidentDeclaredV1(e) => {
                self.policy = e.policy.clone();
                self.policy_version = 1;
            }
            Event::PolicyChangedV1(e) => {
                self.policy = e.policy.clone();
                self.policy_version = e.policy_version;
            }
            Event::IncidentStoodDownV1(_)
            | Event::TickV1(_)
            | Event::RoundRecordedV1(_)
            | Event::RoundRecordedV2(_) => {}
            Event::NeedReportedV1(e) => {
                self.needs.entry(e.need).or_insert(Need {
                    partition: env.partition.clone(),
                    spec: e.spec.clone(),
                    reported_at: env.recorded_at,
                    status: NeedStatus::Open,
                });
            }
            Event::NeedUpdatedV1(e) => {
                if let Some(n) = self.needs.get_mut(&e.need) {
                    n.spec = e.spec.clone();
                }
            }
            Event::NeedWithdrawnV1(e) => {
                if let Some(n) = self.needs.get_mut(&e.need) {
                    n.status = NeedStatus::Withdrawn;
                }
            }
            // Creation is guarded on the log (one registration per entity subject); should a
            // second one ever appear, the first stands, so committed capacity is never reset.
            Event::OfferRegisteredV1(e) if self.offer_slot.contains_key(&e.offer) => {}
            Event::OfferRegisteredV1(e) => {
                let provider = self.provider_slot_of(&provider_key(&e.provider));
                let slot = self.offers.len() as u32;
                self.offers.push(Offer {
                    id: e.offer,
                    provider,
                    spec: e.spec.clone(),
                    committed: 0,
                    withdrawn: false,
                });
                self.offer_slot.insert(e.offer, slot);
                self.providers[provider as usize].offers.push(slot);
                let level = self.level_of(provider);
                self.index.insert(slot, &e.spec, level);
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
                let provider = o.provider;
                let level = self.level_of(provider);
                self.index.insert(slot, &e.spec, level);
            }
            Event::OfferWithdrawnV1(e) => {
                if let Some(&slot) = self.offer_slot.get(&e.offer) {
                    self.offers[slot as usize].withdrawn = true;
                    self.index.remove(slot);
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
            }
            Event::AssignmentProposedV1(e) => {
                let party = self
                    .needs
                    .get(&e.need)
                    .map_or(1, |n| u32::from(n.spec.party_size));
                if let Some(n) = self.needs.get_mut(&e.need) {
                    n.status = NeedStatus::Assigned(e.assignment);
                }
                if let Some(&slot) = self.offer_slot.get(&e.offer) {
                    self.offers[slot as usize].committed += party;
                }
                let provider = self.provider_slot_of(&e.volunteer);
                let p = &mut self.providers[provider as usize];
                p.load += 1;
                p.tasks += 1;
                self.assignments.insert(
                    e.assignment,
                    Assignment {
                        need: e.need,
                        offer: e.offer,
                        provider: e.volunteer.clone(),
                        party,
                        status: AssignmentStatus::Pending {
                            proposed_at: env.recorded_at,
                        },
                    },
                );
            }
            Event::VolunteerRespondedV1(e) => match e.response {
                Response::Accept => {
                    if let Some(a) = self.assignments.get_mut(&e.assignment) {
                        a.status = AssignmentStatus::Accepted;
                    }
                }
                Response::Decline => {
                    if let Some(a) = self.release(&e.assignment) {
                        let provider = self.provider_slot_of(&a.provider);
                        self.declined.entry(a.need).or_default().insert(provider);
                        if let Some(n) = self.needs.get_mut(&a.need) {
                            n.status = NeedStatus::Open;
                        }
                    }
                }
            },
            Event::AssignmentExpiredV1(e) => self.reopen(&e.assignment),
            Event::AssignmentCancelledV1(e) => {
                if e.reason == CancelReason::NeedWithdrawn {
                    self.release(&e.assignment);
                } else {
                    self.reopen(&e.assignment);
                }
            }
            Event::AssignmentCompletedV1(e) => {
                if let Some(a) = self.release(&e.assignment)
                    && let Some(n) = self.needs.get_mut(&a.need)
                {
                    n.status = NeedStatus::Completed;
                }
            }
        }
    }
}

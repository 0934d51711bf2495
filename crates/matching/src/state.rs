//! The matcher's state, folded from the log's events in stream order.
//!
//! Everything is kept in ordered maps (never iterated `HashMap`s), so whatever iterates the
//! state does so in one fixed order. The spatial index of offers is updated as offers arrive,
//! change and leave, and as their providers' verifications change.

use std::collections::{BTreeMap, BTreeSet};

use muster_schema::events::{NeedSpecV1, OfferSpecV1};
use muster_schema::{
    Category, EntityId, Envelope, Event, PersonId, PolicyV1, Provider, Response, Timestamp,
};

use crate::geo;
use crate::rules::{self, HeldVerification};

/// Who stands behind offers: one assignment per provider per round.
pub type ProviderKey = PersonId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeedStatus {
    Open,
    /// Has a pending or accepted assignment.
    Assigned(EntityId),
    Withdrawn,
    Completed,
}

#[derive(Debug, Clone)]
pub struct Need {
    pub spec: NeedSpecV1,
    pub reported_at: Timestamp,
    pub status: NeedStatus,
}

#[derive(Debug, Clone)]
pub struct Offer {
    pub provider: ProviderKey,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignmentStatus {
    Pending { proposed_at: Timestamp },
    Accepted,
}

#[derive(Debug, Clone)]
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

/// Offers by class and grid cell.
#[derive(Debug, Default, Clone)]
pub struct SpatialIndex {
    cells: BTreeMap<(ClassKey, Cell), BTreeSet<EntityId>>,
    placed: BTreeMap<EntityId, Vec<(ClassKey, Cell)>>,
}

impl SpatialIndex {
    fn remove(&mut self, offer: &EntityId) {
        for key in self.placed.remove(offer).unwrap_or_default() {
            if let Some(set) = self.cells.get_mut(&key) {
                set.remove(offer);
                if set.is_empty() {
                    self.cells.remove(&key);
                }
            }
        }
    }

    fn insert(&mut self, id: EntityId, spec: &OfferSpecV1, level: u8) {
        self.remove(&id);
        let cell = geo::cell(&spec.location);
        let keys: Vec<_> = spec.kinds.iter().map(|k| ((*k, level), cell)).collect();
        for key in &keys {
            self.cells.entry(*key).or_default().insert(id);
        }
        self.placed.insert(id, keys);
    }

    /// Offers that may serve `category` within `radius_m` of `at`, from providers at criminal
    /// record level `min_level` or above (a superset: the rules check each candidate).
    pub fn candidates(
        &self,
        category: Category,
        min_level: u8,
        at: &muster_schema::GeoPoint,
        radius_m: u32,
    ) -> BTreeSet<EntityId> {
        let mut out = BTreeSet::new();
        for level in min_level..=4 {
            for cell in geo::cells_within(at, radius_m) {
                if let Some(set) = self.cells.get(&((category, level), cell)) {
                    out.extend(set.iter().copied());
                }
            }
        }
        out
    }
}

/// Everything the matcher knows, as of `through_seq`.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub policy: PolicyV1,
    pub policy_version: u32,
    pub through_seq: u64,
    /// The latest recorded time seen: the log's clock.
    pub now: Timestamp,
    pub needs: BTreeMap<EntityId, Need>,
    pub offers: BTreeMap<EntityId, Offer>,
    pub verifications: BTreeMap<EntityId, (PersonId, HeldVerification)>,
    pub held: BTreeMap<PersonId, BTreeSet<EntityId>>,
    pub offers_of: BTreeMap<ProviderKey, BTreeSet<EntityId>>,
    pub assignments: BTreeMap<EntityId, Assignment>,
    /// Pending and accepted assignments per provider.
    pub load: BTreeMap<ProviderKey, u32>,
    /// Assignments ever proposed per provider (fairness).
    pub tasks: BTreeMap<ProviderKey, u32>,
    pub declined: BTreeSet<(EntityId, ProviderKey)>,
    pub index: SpatialIndex,
}

fn provider_key(p: &Provider) -> ProviderKey {
    match p {
        Provider::Volunteer(id) | Provider::Organisation(id) => id.clone(),
    }
}

impl State {
    /// The verifications `person` holds (valid or not: the rules decide).
    pub fn held_by<'a>(
        &'a self,
        person: &PersonId,
    ) -> impl Iterator<Item = &'a HeldVerification> + Clone {
        self.held
            .get(person)
            .into_iter()
            .flatten()
            .filter_map(|id| self.verifications.get(id).map(|(_, h)| h))
    }

    /// The highest criminal-record level `person` holds, valid now: the index class.
    fn level_of(&self, person: &PersonId) -> u8 {
        self.held_by(person)
            .filter(|h| h.valid_at(self.now) || h.issued_at > self.now)
            .map(|h| rules::criminal_record_level(&h.kind))
            .max()
            .unwrap_or(0)
    }

    fn reindex_provider(&mut self, person: &PersonId) {
        let level = self.level_of(person);
        for id in self.offers_of.get(person).cloned().unwrap_or_default() {
            if let Some(o) = self.offers.get(&id)
                && !o.withdrawn
            {
                self.index.insert(id, &o.spec, level);
            }
        }
    }

    fn release(&mut self, assignment: &EntityId) -> Option<Assignment> {
        let a = self.assignments.remove(assignment)?;
        if let Some(o) = self.offers.get_mut(&a.offer) {
            o.committed = o.committed.saturating_sub(a.party);
        }
        if let Some(l) = self.load.get_mut(&a.provider) {
            *l = l.saturating_sub(1);
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

    /// Folds one event. Events the matcher does not need (and out-of-order references) change
    /// nothing.
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
            Event::IncidentStoodDownV1(_) | Event::TickV1(_) => {}
            Event::NeedReportedV1(e) => {
                self.needs.entry(e.need).or_insert(Need {
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
            Event::OfferRegisteredV1(e) if self.offers.contains_key(&e.offer) => {}
            Event::OfferRegisteredV1(e) => {
                let provider = provider_key(&e.provider);
                self.offers_of
                    .entry(provider.clone())
                    .or_default()
                    .insert(e.offer);
                self.offers.insert(
                    e.offer,
                    Offer {
                        provider: provider.clone(),
                        spec: e.spec.clone(),
                        committed: 0,
                        withdrawn: false,
                    },
                );
                let level = self.level_of(&provider);
                self.index.insert(e.offer, &e.spec, level);
            }
            Event::OfferUpdatedV1(e) => {
                let Some(o) = self.offers.get_mut(&e.offer) else {
                    return;
                };
                if o.withdrawn {
                    return;
                }
                o.spec = e.spec.clone();
                let provider = o.provider.clone();
                let level = self.level_of(&provider);
                self.index.insert(e.offer, &e.spec, level);
            }
            Event::OfferWithdrawnV1(e) => {
                if let Some(o) = self.offers.get_mut(&e.offer) {
                    o.withdrawn = true;
                    self.index.remove(&e.offer);
                }
            }
            Event::VerificationRecordedV1(e)
                if self.verifications.contains_key(&e.verification) => {}
            Event::VerificationRecordedV1(e) => {
                let held = HeldVerification {
                    kind: e.kind.clone(),
                    issued_at: e.issued_at,
                    expires_at: e.expires_at,
                    revoked: false,
                };
                self.verifications
                    .insert(e.verification, (e.person.clone(), held));
                self.held
                    .entry(e.person.clone())
                    .or_default()
                    .insert(e.verification);
                self.reindex_provider(&e.person.clone());
            }
            Event::VerificationRevokedV1(e) => {
                let Some((person, v)) = self.verifications.get_mut(&e.verification) else {
                    return;
                };
                v.revoked = true;
                let person = person.clone();
                self.reindex_provider(&person);
            }
            Event::AssignmentProposedV1(e) => {
                let party = self
                    .needs
                    .get(&e.need)
                    .map_or(1, |n| u32::from(n.spec.party_size));
                if let Some(n) = self.needs.get_mut(&e.need) {
                    n.status = NeedStatus::Assigned(e.assignment);
                }
                if let Some(o) = self.offers.get_mut(&e.offer) {
                    o.committed += party;
                }
                *self.load.entry(e.volunteer.clone()).or_default() += 1;
                *self.tasks.entry(e.volunteer.clone()).or_default() += 1;
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
                        self.declined.insert((a.need, a.provider));
                        if let Some(n) = self.needs.get_mut(&a.need) {
                            n.status = NeedStatus::Open;
                        }
                    }
                }
            },
            Event::RoundRecordedV1(_) => {}
            Event::AssignmentExpiredV1(e) => self.reopen(&e.assignment),
            Event::AssignmentCancelledV1(e) => {
                if e.reason == muster_schema::events::CancelReason::NeedWithdrawn {
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

//! Column families and key layouts.
//!
//! Strings inside keys (incidents, partitions, people) are tokens that never contain a NUL byte,
//! so a string followed by `\0` is a prefix no other string's key shares. Sequences are
//! big-endian so keys sort in log order.

use muster_schema::{EntityId, IncidentId, PersonId};

/// The column families of the read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// `position` (u64), `format` (u32), `set_aside` (count).
    Meta,
    /// Incident name → [`crate::records::IncidentRecord`].
    Incidents,
    /// Need id → [`crate::records::NeedRecord`].
    Needs,
    Offers,
    Assignments,
    Verifications,
    /// Incident + provider → [`crate::records::ProviderRecord`].
    Providers,
    /// Secondary indexes (see the `*_key` functions): values small, keys ordered for paging.
    Index,
    /// Incident + counter name → i64.
    Counters,
    /// Entity + sequence → [`crate::records::HistoryEntry`].
    History,
    /// Incident + sequence → [`crate::records::ChangeRecord`]: what a watch replays.
    Changes,
    /// Sequence → [`crate::records::SetAsideRecord`].
    SetAside,
}

impl Cf {
    pub const ALL: [Cf; 12] = [
        Cf::Meta,
        Cf::Incidents,
        Cf::Needs,
        Cf::Offers,
        Cf::Assignments,
        Cf::Verifications,
        Cf::Providers,
        Cf::Index,
        Cf::Counters,
        Cf::History,
        Cf::Changes,
        Cf::SetAside,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Incidents => "incidents",
            Cf::Needs => "needs",
            Cf::Offers => "offers",
            Cf::Assignments => "assignments",
            Cf::Verifications => "verifications",
            Cf::Providers => "providers",
            Cf::Index => "index",
            Cf::Counters => "counters",
            Cf::History => "history",
            Cf::Changes => "changes",
            Cf::SetAside => "set_aside",
        }
    }

    /// Whether the family is read by key (the fold's lookups, gets by id) or only scanned by
    /// prefix (indexes, histories, changes, set-aside events): it decides the family's filters.
    pub fn point_reads(self) -> bool {
        !matches!(self, Cf::Index | Cf::History | Cf::Changes | Cf::SetAside)
    }
}

pub const POSITION: &[u8] = b"position";
pub const FORMAT: &[u8] = b"format";
pub const SET_ASIDE_COUNT: &[u8] = b"set_aside";

fn with_nul(tag: u8, s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(s.len() + 2 + 32);
    k.push(tag);
    k.extend_from_slice(s.as_bytes());
    k.push(0);
    k
}

/// Index tags (the first byte of an `Index` key).
pub mod tag {
    /// Open needs of an incident: most urgent first, then in report order.
    pub const OPEN_NEEDS: u8 = b'o';
    /// Every need of an incident, in report order.
    pub const NEEDS: u8 = b'n';
    pub const ASSIGNMENTS_BY_NEED: u8 = b'q';
    pub const ASSIGNMENTS_BY_VOLUNTEER: u8 = b'v';
    pub const ASSIGNMENTS_BY_INCIDENT: u8 = b'i';
    pub const VERIFICATIONS_BY_PERSON: u8 = b'p';
}

pub fn open_needs_prefix(incident: &IncidentId) -> Vec<u8> {
    with_nul(tag::OPEN_NEEDS, incident.as_str())
}

/// Key of an open need: incident, urgency (5 first), report sequence, id.
pub fn open_need_key(
    incident: &IncidentId,
    urgency: u8,
    created_seq: u64,
    id: &EntityId,
) -> Vec<u8> {
    let mut k = open_needs_prefix(incident);
    k.push(u8::MAX - urgency);
    k.extend_from_slice(&created_seq.to_be_bytes());
    k.extend_from_slice(&id.0);
    k
}

pub fn needs_prefix(incident: &IncidentId) -> Vec<u8> {
    with_nul(tag::NEEDS, incident.as_str())
}

pub fn need_key(incident: &IncidentId, created_seq: u64, id: &EntityId) -> Vec<u8> {
    let mut k = needs_prefix(incident);
    k.extend_from_slice(&created_seq.to_be_bytes());
    k.extend_from_slice(&id.0);
    k
}

pub fn by_need_prefix(need: &EntityId) -> Vec<u8> {
    let mut k = vec![tag::ASSIGNMENTS_BY_NEED];
    k.extend_from_slice(&need.0);
    k
}

pub fn by_volunteer_prefix(volunteer: &PersonId) -> Vec<u8> {
    with_nul(tag::ASSIGNMENTS_BY_VOLUNTEER, volunteer.as_str())
}

pub fn by_incident_prefix(incident: &IncidentId) -> Vec<u8> {
    with_nul(tag::ASSIGNMENTS_BY_INCIDENT, incident.as_str())
}

/// The three index keys of an assignment proposed at `seq` (by need, volunteer, incident);
/// the assignment id is the key's last 16 bytes.
pub fn assignment_keys(
    incident: &IncidentId,
    need: &EntityId,
    volunteer: &PersonId,
    seq: u64,
    id: &EntityId,
) -> [Vec<u8>; 3] {
    [
        by_need_prefix(need),
        by_volunteer_prefix(volunteer),
        by_incident_prefix(incident),
    ]
    .map(|mut k| {
        k.extend_from_slice(&seq.to_be_bytes());
        k.extend_from_slice(&id.0);
        k
    })
}

pub fn verifications_prefix(person: &PersonId) -> Vec<u8> {
    with_nul(tag::VERIFICATIONS_BY_PERSON, person.as_str())
}

pub fn verification_of_person_key(person: &PersonId, id: &EntityId) -> Vec<u8> {
    let mut k = verifications_prefix(person);
    k.extend_from_slice(&id.0);
    k
}

/// The entity id at the end of an index key.
pub fn trailing_id(key: &[u8]) -> Option<EntityId> {
    let tail = key.get(key.len().checked_sub(16)?..)?;
    let mut id = [0u8; 16];
    id.copy_from_slice(tail);
    Some(EntityId(id))
}

pub fn provider_key(incident: &IncidentId, provider: &str) -> Vec<u8> {
    let mut k = incident.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(provider.as_bytes());
    k
}

pub fn counters_prefix(incident: &IncidentId) -> Vec<u8> {
    let mut k = incident.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

pub fn counter_key(incident: &IncidentId, name: &str) -> Vec<u8> {
    let mut k = counters_prefix(incident);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Whose history an entry is: an entity by id, or an incident by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryOf<'a> {
    Entity(&'a EntityId),
    Incident(&'a IncidentId),
}

pub fn history_prefix(of: &HistoryOf<'_>) -> Vec<u8> {
    match of {
        HistoryOf::Entity(id) => {
            let mut k = vec![b'e'];
            k.extend_from_slice(&id.0);
            k
        }
        HistoryOf::Incident(i) => with_nul(b'i', i.as_str()),
    }
}

pub fn history_key(of: &HistoryOf<'_>, seq: u64) -> Vec<u8> {
    let mut k = history_prefix(of);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn changes_prefix(incident: &IncidentId) -> Vec<u8> {
    let mut k = incident.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

pub fn change_key(incident: &IncidentId, seq: u64) -> Vec<u8> {
    let mut k = changes_prefix(incident);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence at the end of a history or change key.
pub fn trailing_seq(key: &[u8]) -> Option<u64> {
    let tail = key.get(key.len().checked_sub(8)?..)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(tail);
    Some(u64::from_be_bytes(b))
}

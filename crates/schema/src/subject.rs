//! Subjects: how an event's routing maps onto the log.
//!
//! `muster.ev.{incident}.{partition}.{kind}.{id}`, where `partition` is `_` for incident-wide
//! events and `kind` is `incident`, `need`, `offer`, `verif`, `assign` or `tick`. One subject per
//! entity gives each entity its own version (the subject sequence) for optimistic concurrency;
//! the leading tokens let a service consume one incident or one partition. A need or offer
//! never changes partition, so its subject is fixed at creation.

use crate::envelope::Envelope;
use crate::events::EntityRef;
use crate::ids::{EntityId, EntityKind, IncidentId, PartitionCode};

/// The prefix of every event subject.
pub const PREFIX: &str = "muster.ev";

/// The stream's subject filter: every event of every incident.
pub fn all() -> String {
    format!("{PREFIX}.>")
}

/// Every event of one incident.
pub fn incident_filter(incident: &IncidentId) -> String {
    format!("{PREFIX}.{incident}.>")
}

/// Every event of one partition of an incident (not including incident-wide events).
pub fn partition_filter(incident: &IncidentId, partition: &PartitionCode) -> String {
    format!("{PREFIX}.{incident}.{partition}.>")
}

/// The subject of an incident's own events (declaration, policy changes, stand-down).
pub fn incident(incident: &IncidentId) -> String {
    format!("{PREFIX}.{incident}._.incident.{incident}")
}

/// Every incident's own events, across incidents.
pub fn all_incidents() -> String {
    format!("{PREFIX}.*._.incident.*")
}

/// The subject of one entity's events.
pub fn entity(
    incident: &IncidentId,
    partition: &PartitionCode,
    kind: EntityKind,
    id: &EntityId,
) -> String {
    entity_subject(incident, partition.as_str(), kind, id)
}

/// A filter matching the subjects of every round of `incident` (their records).
pub fn rounds(incident: &IncidentId) -> String {
    format!("{PREFIX}.{incident}._.{}.*", EntityKind::Round.token())
}

/// A filter matching one entity's subject whatever its partition: used to find an entity
/// from its id alone, and to guard creation across partitions.
pub fn entity_any_partition(incident: &IncidentId, kind: EntityKind, id: &EntityId) -> String {
    entity_subject(incident, "*", kind, id)
}

/// `{PREFIX}.{incident}.{partition}.{kind}.{id}`, written straight into one allocation: intake
/// builds two of these for every item of a bulk request.
fn entity_subject(
    incident: &IncidentId,
    partition: &str,
    kind: EntityKind,
    id: &EntityId,
) -> String {
    let (incident, kind) = (incident.as_str(), kind.token());
    let mut s =
        String::with_capacity(PREFIX.len() + incident.len() + partition.len() + kind.len() + 36);
    for part in [PREFIX, ".", incident, ".", partition, ".", kind, "."] {
        s.push_str(part);
    }
    s.push_str(id.hex().as_str());
    s
}

/// The subject of an incident's ticks.
pub fn tick(incident: &IncidentId) -> String {
    format!("{PREFIX}.{incident}._.tick.t")
}

/// The subject an envelope is appended to.
pub fn for_envelope(env: &Envelope) -> String {
    match env.event.entity() {
        EntityRef::Incident(i) => incident(&i),
        EntityRef::Entity(kind, id) => entity(&env.incident, &env.partition, kind, &id),
        EntityRef::Tick => tick(&env.incident),
    }
}

/// The partition token of a subject (`_` for incident-wide), if it is an event subject.
pub fn partition_of(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let mut parts = rest.split('.');
    let _incident = parts.next()?;
    parts.next()
}

/// Whether `subject` matches `filter`, token by token, with NATS wildcards (`*` one token, `>`
/// the rest, at least one).
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for f in filter.split('.') {
        match (f, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_subjects_token_by_token() {
        let s = "muster.ev.york.E08000035.need.ab12";
        for (filter, expected) in [
            ("muster.ev.york.E08000035.need.ab12", true),
            ("muster.ev.york.*.need.ab12", true),
            ("muster.ev.york.>", true),
            ("muster.ev.york.*.need.ab1", false),
            ("muster.ev.york.*.offer.ab12", false),
            ("muster.ev.yorks.*.need.ab12", false),
            ("muster.ev.york.*.need", false),
            ("muster.ev.york.*.need.ab12.more", false),
            ("muster.ev.york.E08000035.need.ab12.>", false),
        ] {
            assert_eq!(matches(filter, s), expected, "{filter}");
        }
    }

    #[test]
    fn subjects_carry_incident_partition_kind_and_id() {
        let i = IncidentId::parse("i", "york-floods").expect("valid");
        let p = PartitionCode::parse("p", "E08000035").expect("valid");
        let id = EntityId([0xab; 16]);
        let s = entity(&i, &p, EntityKind::Need, &id);
        assert_eq!(
            s,
            format!("muster.ev.york-floods.E08000035.need.{}", "ab".repeat(16))
        );
        assert_eq!(partition_of(&s), Some("E08000035"));
        assert_eq!(
            entity_any_partition(&i, EntityKind::Need, &id),
            format!("muster.ev.york-floods.*.need.{}", "ab".repeat(16))
        );
        assert_eq!(incident(&i), "muster.ev.york-floods._.incident.york-floods");
        let id = EntityId([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54,
            0x32, 0x10,
        ]);
        assert_eq!(
            entity(&i, &p, EntityKind::Offer, &id),
            "muster.ev.york-floods.E08000035.offer.0123456789abcdeffedcba9876543210"
        );
        assert_eq!(id.to_hex(), hex::encode(id.0));
        assert_eq!(EntityId::parse("id", &id.to_string()), Ok(id));
        assert_eq!(partition_of("other.subject"), None);
    }
}

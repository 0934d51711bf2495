//! Identifiers and the rules they obey.
//!
//! Identifiers that appear in subjects (incident, partition, entity ids) are restricted to
//! characters that are safe as a NATS subject token. Entity ids (needs, offers, verifications)
//! are derived from the submitting agency and its own reference, so the same agency reporting the
//! same reference twice names the same entity: that is what makes re-running an import harmless.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use crate::violation::Violation;

fn token_rule(
    field: &str,
    s: &str,
    max: usize,
    first: impl Fn(char) -> bool,
    rest: impl Fn(char) -> bool,
    rule: &str,
) -> Result<(), Violation> {
    let mut chars = s.chars();
    match chars.next() {
        None => Err(Violation::new(field, "is required")),
        Some(_) if s.len() > max => Err(Violation::new(
            field,
            format!("must be at most {max} characters"),
        )),
        Some(c) if first(c) && chars.all(rest) => Ok(()),
        Some(_) => Err(Violation::new(field, rule)),
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// An incident, named by the planner who declares it: `2026-york-floods`.
    /// Lowercase letters, digits and `-`, starting with a letter or digit, at most 64 characters.
    IncidentId
);
impl IncidentId {
    pub fn parse(field: &str, s: &str) -> Result<Self, Violation> {
        let lower_alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        token_rule(
            field,
            s,
            64,
            lower_alnum,
            |c| lower_alnum(c) || c == '-',
            "must be lowercase letters, digits and '-', starting with a letter or digit",
        )?;
        Ok(Self(s.to_string()))
    }
}

string_id!(
    /// A partition of an incident: an area such as a local authority (`E08000035`).
    /// Letters, digits, `-` and `_`, starting with a letter or digit, at most 32 characters.
    /// [`PartitionCode::incident_wide`] (`_`) is reserved for events that belong to no area.
    PartitionCode
);
impl PartitionCode {
    pub fn parse(field: &str, s: &str) -> Result<Self, Violation> {
        token_rule(
            field,
            s,
            32,
            |c| c.is_ascii_alphanumeric(),
            |c| c.is_ascii_alphanumeric() || c == '-' || c == '_',
            "must be letters, digits, '-' and '_', starting with a letter or digit",
        )?;
        Ok(Self(s.to_string()))
    }

    /// The pseudo-partition of incident-wide events (declarations, verifications, ticks).
    pub fn incident_wide() -> Self {
        Self("_".to_string())
    }
}

string_id!(
    /// An agency acting on Muster (a council, a charity, a vetting body).
    /// Lowercase letters, digits, `-` and `_`, at most 64 characters.
    AgencyId
);
impl AgencyId {
    pub fn parse(field: &str, s: &str) -> Result<Self, Violation> {
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        token_rule(
            field,
            s,
            64,
            ok,
            |c| ok(c) || c == '-' || c == '_',
            "must be lowercase letters, digits, '-' and '_', starting with a letter or digit",
        )?;
        Ok(Self(s.to_string()))
    }
}

string_id!(
    /// A person (a volunteer) or an organisation behind offers and verifications, in the
    /// identifier scheme the agencies of an incident share (e.g. the scheme's volunteer number).
    /// A pseudonym, never a name. Letters, digits, `-` and `_`, at most 64 characters.
    PersonId
);
impl PersonId {
    pub fn parse(field: &str, s: &str) -> Result<Self, Violation> {
        token_rule(
            field,
            s,
            64,
            |c| c.is_ascii_alphanumeric(),
            |c| c.is_ascii_alphanumeric() || c == '-' || c == '_',
            "must be letters, digits, '-' and '_', starting with a letter or digit",
        )?;
        Ok(Self(s.to_string()))
    }
}

string_id!(
    /// An agency's own reference for something it submits (its case number, its row id).
    /// 1 to 128 printable characters, no control characters.
    Reference
);
impl Reference {
    pub fn parse(field: &str, s: &str) -> Result<Self, Violation> {
        if s.is_empty() {
            return Err(Violation::new(field, "is required"));
        }
        if s.len() > 128 {
            return Err(Violation::new(field, "must be at most 128 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(Violation::new(field, "must not contain control characters"));
        }
        Ok(Self(s.to_string()))
    }
}

/// The kinds of entity that have their own subject (and so their own version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntityKind {
    Incident,
    Need,
    Offer,
    Verification,
    Assignment,
    /// A matcher round (its record; the round's decisions are on their assignments' subjects).
    Round,
}

impl EntityKind {
    /// The subject token of this kind.
    pub fn token(self) -> &'static str {
        match self {
            EntityKind::Incident => "incident",
            EntityKind::Need => "need",
            EntityKind::Offer => "offer",
            EntityKind::Verification => "verif",
            EntityKind::Assignment => "assign",
            EntityKind::Round => "round",
        }
    }
}

/// A 128-bit entity id (need, offer, verification, assignment), shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntityId(pub [u8; 16]);

impl EntityId {
    /// The id of the entity of `kind` that `agency` submitted in `incident` under its own
    /// `reference`. Deterministic, so a re-submission names the same entity; an agency's
    /// references are its own within one incident (the next incident's `case-1` is another
    /// entity), as the log's subjects and the creation guard are per incident.
    pub fn derive(
        kind: EntityKind,
        incident: &IncidentId,
        agency: &AgencyId,
        reference: &Reference,
    ) -> Self {
        Self::hash(&[
            kind.token().as_bytes(),
            incident.as_str().as_bytes(),
            agency.as_str().as_bytes(),
            reference.as_str().as_bytes(),
        ])
    }

    /// A 128-bit id from the SHA-256 of `parts`, each length-prefixed so no two part lists collide.
    pub fn hash(parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        Self(id)
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, Violation> {
        let mut id = [0u8; 16];
        if s.is_empty() {
            return Err(Violation::new(field, "is required"));
        }
        hex::decode_to_slice(s, &mut id)
            .map_err(|_| Violation::new(field, "must be 32 lowercase hex digits"))?;
        if s.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(Violation::new(field, "must be 32 lowercase hex digits"));
        }
        Ok(Self(id))
    }

    pub fn to_hex(&self) -> String {
        self.hex().as_str().to_string()
    }

    /// The 32 hex digits, on the stack: for building subjects and keys without a `String` each.
    pub fn hex(&self) -> HexId {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (pair, b) in out.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
        HexId(out)
    }
}

/// An [`EntityId`]'s 32 lowercase hex digits.
#[derive(Debug, Clone, Copy)]
pub struct HexId([u8; 32]);

impl HexId {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Debug for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incident_ids_follow_the_subject_token_rule() {
        assert!(IncidentId::parse("incident", "2026-york-floods").is_ok());
        for bad in ["", "York", "a.b", "a b", "-a", "a*", "a>"] {
            let v = IncidentId::parse("incident", bad).expect_err(bad);
            assert_eq!(v.field, "incident");
        }
        assert!(IncidentId::parse("incident", &"a".repeat(65)).is_err());
    }

    #[test]
    fn the_incident_wide_partition_cannot_be_submitted() {
        assert!(PartitionCode::parse("partition", "E08000035").is_ok());
        assert!(PartitionCode::parse("partition", "_").is_err());
        assert!(PartitionCode::parse("partition", "a.b").is_err());
    }

    #[test]
    fn derived_ids_depend_on_kind_incident_agency_and_reference() {
        let i = IncidentId::parse("i", "york-floods").expect("valid");
        let j = IncidentId::parse("i", "york-floods-2").expect("valid");
        let a = AgencyId::parse("a", "york-council").expect("valid");
        let b = AgencyId::parse("a", "leeds-council").expect("valid");
        let r = Reference::parse("r", "case-1").expect("valid");
        let s = Reference::parse("r", "case-2").expect("valid");
        let n = EntityId::derive(EntityKind::Need, &i, &a, &r);
        assert_eq!(n, EntityId::derive(EntityKind::Need, &i, &a, &r));
        assert_ne!(n, EntityId::derive(EntityKind::Offer, &i, &a, &r));
        assert_ne!(n, EntityId::derive(EntityKind::Need, &j, &a, &r));
        assert_ne!(n, EntityId::derive(EntityKind::Need, &i, &b, &r));
        assert_ne!(n, EntityId::derive(EntityKind::Need, &i, &a, &s));
        // Pinned (ids are in the log: the derivation must not change silently); the value is
        // the first 16 bytes of SHA-256 over the parts, each after its length as 8 bytes LE,
        // computed independently with Python's hashlib.
        assert_eq!(n.to_hex(), "b3af8dcf2db3cd68042d5222e7f00616");
        assert_eq!(EntityId::parse("id", &n.to_hex()), Ok(n));
        assert!(EntityId::parse("id", "xyz").is_err());
        assert!(EntityId::parse("id", &n.to_hex().to_uppercase()).is_err());
    }

    #[test]
    fn references_reject_control_characters_and_overlong_values() {
        assert!(Reference::parse("r", "row 17 / sheet 2").is_ok());
        assert!(Reference::parse("r", "a\nb").is_err());
        assert!(Reference::parse("r", "").is_err());
        assert!(Reference::parse("r", &"x".repeat(129)).is_err());
    }
}

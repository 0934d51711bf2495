//! The versioned envelope around every event, and the codec that writes it to the log.
//!
//! Wire format: the postcard encoding of [`Envelope`], whose first field is the envelope's
//! `schema_version` (a varint). The decoder reads that version first and picks the matching
//! layout, so a future `Envelope` layout gets a new version and old bytes still decode.
//! Trailing bytes are an error: a payload is exactly one envelope.

use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::ids::{AgencyId, EntityId, IncidentId, PartitionCode};
use crate::values::Timestamp;

/// The envelope layout written today.
pub const ENVELOPE_VERSION: u16 = 1;

/// An event id: deterministic from the request that caused it, so a retried request produces
/// the same ids.
pub type EventId = EntityId;

/// An event with everything known about how it came to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The layout of this envelope; always first in the encoding.
    pub schema_version: u16,
    pub event_id: EventId,
    pub incident: IncidentId,
    /// The area the event belongs to, or `_` for incident-wide events.
    pub partition: PartitionCode,
    /// Log time: when intake (or the matcher) recorded the event.
    pub recorded_at: Timestamp,
    /// The agency that acted (`muster` for events the system itself derives).
    pub actor: AgencyId,
    /// The client's idempotency key for the request that produced this event.
    pub idempotency_key: String,
    /// Ties together every event that one piece of work caused, across services.
    pub correlation_id: String,
    /// The event this one is a consequence of, if any.
    pub causation_id: Option<EventId>,
    pub event: Event,
}

/// Why a payload from the log could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is empty")]
    Empty,
    #[error("unknown envelope schema version {0}")]
    UnknownVersion(u16),
    #[error("malformed envelope (schema version {version}): {reason}")]
    Malformed { version: u16, reason: String },
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
}

impl Envelope {
    /// An envelope with the bookkeeping of a generated log: event id and idempotency key
    /// (`k{n}`) derived from `n`, no correlation or causation. For tests, benchmarks and
    /// simulated logs, which only vary the incident, partition, time, actor and event.
    pub fn generated(
        n: u64,
        incident: IncidentId,
        partition: PartitionCode,
        recorded_at: Timestamp,
        actor: AgencyId,
        event: Event,
    ) -> Self {
        Self {
            schema_version: ENVELOPE_VERSION,
            event_id: EntityId::hash(&[&n.to_le_bytes()]),
            incident,
            partition,
            recorded_at,
            actor,
            idempotency_key: format!("k{n}"),
            correlation_id: String::new(),
            causation_id: None,
            event,
        }
    }

    /// Encodes this envelope for the log.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data to a Vec cannot fail: no maps with non-string keys, no
        // unbounded sequences of unknown length.
        postcard::to_stdvec(self).expect("postcard encoding of an envelope cannot fail")
    }

    /// Decodes a payload from the log, upcasting old event versions to the current ones.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        let (version, _) =
            postcard::take_from_bytes::<u16>(bytes).map_err(|e| DecodeError::Malformed {
                version: 0,
                reason: e.to_string(),
            })?;
        match version {
            1 => {
                let (mut env, rest) =
                    postcard::take_from_bytes::<Envelope>(bytes).map_err(|e| {
                        DecodeError::Malformed {
                            version,
                            reason: e.to_string(),
                        }
                    })?;
                if !rest.is_empty() {
                    return Err(DecodeError::TrailingBytes(rest.len()));
                }
                env.event = env.event.upcast();
                Ok(env)
            }
            v => Err(DecodeError::UnknownVersion(v)),
        }
    }
}

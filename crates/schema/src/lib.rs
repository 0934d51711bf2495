//! The log's schema: everything that is written to Muster's log, and nothing that does I/O.
//!
//! # Layout
//! - [`ids`]: identifiers (incident, partition, agency, person, entity ids) and their rules.
//! - [`values`]: domain values (time, location, categories, verification kinds, policy,
//!   personal data) with validating constructors.
//! - [`events`]: the event types, one struct per event *version*.
//! - [`assignment`]: how an assignment moves from event to event, the rule every reader
//!   applies.
//! - [`envelope`]: the versioned envelope around every event and its postcard codec.
//! - [`subject`]: how an event's routing (incident, partition, kind, entity) maps to a subject.
//! - [`violation`]: field-level validation errors shared by every constructor.
//!
//! # The log is forever
//! Postcard is not self-describing: bytes decode only with the exact types that wrote them.
//! So a written type never changes. A new field means a new struct (`NeedReportedV2`) and a
//! new variant appended at the *end* of [`events::Event`], plus an upcaster in
//! [`events::Event::upcast`]. `tests/golden.rs` freezes the bytes of every version ever written.

pub mod assignment;
pub mod envelope;
pub mod events;
pub mod ids;
pub mod subject;
pub mod values;
pub mod violation;

pub use envelope::{DecodeError, ENVELOPE_VERSION, Envelope};
pub use events::Event;
pub use ids::{AgencyId, EntityId, IncidentId, PartitionCode, PersonId, Reference};
pub use values::*;
pub use violation::{Violation, Violations};

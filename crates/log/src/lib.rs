//! The JetStream adapter: Muster's log on a NATS JetStream stream.
//!
//! # Layout
//! - [`stream`]: idempotent provisioning of the log's stream (file storage, keep everything,
//!   atomic batches and direct gets allowed, a duplicate window for retries).
//! - [`appender`]: the group-commit appender. Concurrent appends are gathered into one atomic
//!   batch (one fsync, one acknowledgement); a batch the server rejects because of one member
//!   is split until the offending member is isolated, so its batch-mates still succeed.
//! - [`reader`]: direct reads of single messages (an entity's first or last event, a sequence).
//! - [`consumer`]: durable consumers for the services that fold the log.
//!
//! Subjects and the event encoding live in `muster-schema`; this crate moves bytes.

pub mod appender;
pub mod consumer;
pub mod reader;
pub mod stream;

pub use appender::{AppendError, Appended, Appender, AppenderConfig, Expect, Outgoing};
pub use consumer::{Delivered, LogConsumer};
pub use reader::{LogReader, ReadError, StoredMessage};
pub use stream::{LogConfig, ProvisionError, provision};

/// Connects to NATS with the options every Muster service uses: retries on the initial connect
/// are bounded by the caller; reconnects are unbounded so a restarted server is picked up.
pub async fn connect(
    url: &str,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .request_timeout(Some(std::time::Duration::from_secs(10)))
        .connect(url)
        .await
}

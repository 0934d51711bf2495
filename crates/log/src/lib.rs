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

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

/// Connects as `name` and provisions the log: how every service starts.
pub async fn open(
    url: &str,
    name: &str,
    config: &LogConfig,
) -> Result<(async_nats::Client, async_nats::jetstream::stream::Stream), OpenError> {
    let client = connect(url, name)
        .await
        .map_err(|source| OpenError::Connect {
            url: url.to_string(),
            source,
        })?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = provision(&js, config).await?;
    Ok((client, stream))
}

/// Connects to NATS with the options every Muster service uses: retries on the initial connect
/// are bounded by the caller; reconnects are unbounded so a restarted server is picked up.
/// `url` may list several servers, comma-separated (the nodes of a cluster): the client
/// connects to one and moves to another if it goes down (it also learns the cluster's other
/// nodes from the one it reaches).
pub async fn connect(
    url: &str,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .request_timeout(Some(std::time::Duration::from_secs(10)))
        .connect(servers)
        .await
}

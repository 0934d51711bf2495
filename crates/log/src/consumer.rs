//! Durable consumers for the services that fold the log (matcher, projections).
//!
//! A consumer delivers messages in stream order with explicit acks. Each delivery carries the
//! decoded envelope *or* the reason it could not be decoded, so a malformed event is set aside
//! by the caller and never stops the flow.

use async_nats::jetstream::{self, consumer::pull, stream::Stream};
use futures::StreamExt;
use muster_schema::{DecodeError, Envelope};

/// One message from the log, decoded if it could be.
#[derive(Debug)]
pub struct Delivered {
    pub seq: u64,
    pub subject: String,
    pub envelope: Result<Envelope, DecodeError>,
    message: jetstream::Message,
}

impl Delivered {
    /// Acknowledges the message: call only once its effects are durably stored.
    pub async fn ack(self) -> Result<(), async_nats::Error> {
        self.message.double_ack().await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("could not create consumer {name}: {reason}")]
    Create { name: String, reason: String },
    #[error("could not read from consumer: {0}")]
    Read(String),
}

/// A durable pull consumer over some of the log's subjects.
pub struct LogConsumer {
    messages: pull::Stream,
}

impl std::fmt::Debug for LogConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogConsumer").finish_non_exhaustive()
    }
}

impl LogConsumer {
    /// Creates (or reuses) the durable consumer `name` over `filters`, starting from the
    /// beginning of the log the first time and from its acknowledged position afterwards.
    /// Messages delivered but not acknowledged (a crashed or restarted reader) are delivered
    /// again after `ack_wait`.
    pub async fn durable(
        stream: &Stream,
        name: &str,
        filters: Vec<String>,
        ack_wait: std::time::Duration,
    ) -> Result<Self, ConsumerError> {
        let create = |reason: String| ConsumerError::Create {
            name: name.to_string(),
            reason,
        };
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                name,
                pull::Config {
                    durable_name: Some(name.to_string()),
                    filter_subjects: filters,
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    max_ack_pending: 10_000,
                    ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| create(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| create(e.to_string()))?;
        Ok(Self { messages })
    }

    /// The next message, in stream order. `None` when the consumer is closed.
    pub async fn next(&mut self) -> Option<Result<Delivered, ConsumerError>> {
        let message = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(ConsumerError::Read(e.to_string()))),
        };
        let seq = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => return Some(Err(ConsumerError::Read(e.to_string()))),
        };
        Some(Ok(Delivered {
            seq,
            subject: message.subject.to_string(),
            envelope: Envelope::decode(&message.payload),
            message,
        }))
    }
}

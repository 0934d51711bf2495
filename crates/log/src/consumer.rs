//! Durable consumers for the services that fold the log (matcher, projections).
//!
//! A consumer delivers messages in stream order. Each delivery carries the decoded envelope *or*
//! the reason it could not be decoded, so a malformed event is set aside by the caller and never
//! stops the flow. Two kinds:
//! - [`LogConsumer::durable`]: the server remembers the position (explicit acks);
//! - [`LogConsumer::ordered`]: the reader keeps its position itself (in a snapshot, or by
//!   rebuilding from the start); no acks, and gaps are repaired by the client library.

use std::pin::Pin;

use async_nats::jetstream::{self, consumer::pull, stream::Stream};
use futures::StreamExt;
use muster_schema::{DecodeError, Envelope};

/// One message from the log, decoded if it could be.
#[derive(Debug)]
pub struct Delivered {
    pub seq: u64,
    /// Messages left after this one when it was delivered: 0 means the reader has caught up.
    pub pending: u64,
    pub subject: String,
    pub envelope: Result<Envelope, DecodeError>,
    message: jetstream::Message,
}

impl Delivered {
    /// Acknowledges the message (durable consumers): call only once its effects are durably
    /// stored.
    pub async fn ack(self) -> Result<(), async_nats::Error> {
        self.message.double_ack().await
    }

    /// Acknowledges this message and, on an acknowledge-all consumer, every one before it,
    /// without waiting for the server's confirmation (a lost ack only means a redelivery, which
    /// a reader that keeps its own position skips).
    pub async fn ack_through(&self) -> Result<(), async_nats::Error> {
        self.message.ack().await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("could not create consumer {name}: {reason}")]
    Create { name: String, reason: String },
    #[error("could not read from consumer: {0}")]
    Read(String),
}

fn start_at(from_seq: u64) -> jetstream::consumer::DeliverPolicy {
    if from_seq <= 1 {
        jetstream::consumer::DeliverPolicy::All
    } else {
        jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: from_seq,
        }
    }
}

type Messages = Pin<Box<dyn futures::Stream<Item = Result<jetstream::Message, String>> + Send>>;

/// A consumer over some of the log's subjects.
pub struct LogConsumer {
    messages: Messages,
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
        Ok(Self {
            messages: Box::pin(messages.map(|r| r.map_err(|e| e.to_string()))),
        })
    }

    /// A durable consumer named `name` that starts at `from_seq` whatever the server remembers:
    /// for readers that keep their position next to their state (the projections). An existing
    /// consumer of that name is replaced. Acknowledging a message acknowledges every one before
    /// it ([`Delivered::ack_through`]); the consumer is removed by the server after
    /// `inactive_threshold` without a reader.
    pub async fn durable_from(
        stream: &Stream,
        name: &str,
        filters: Vec<String>,
        from_seq: u64,
        ack_wait: std::time::Duration,
        inactive_threshold: std::time::Duration,
    ) -> Result<Self, ConsumerError> {
        let create = |reason: String| ConsumerError::Create {
            name: name.to_string(),
            reason,
        };
        match stream.delete_consumer(name).await {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::stream::ConsumerErrorKind::JetStream(j)
                        if j.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND
                ) => {}
            Err(e) => return Err(create(format!("removing the old consumer: {e}"))),
        }
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.to_string()),
                filter_subjects: filters,
                ack_policy: jetstream::consumer::AckPolicy::All,
                deliver_policy: start_at(from_seq),
                max_ack_pending: 50_000,
                ack_wait,
                inactive_threshold,
                ..Default::default()
            })
            .await
            .map_err(|e| create(e.to_string()))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(2_000)
            .messages()
            .await
            .map_err(|e| create(e.to_string()))?;
        Ok(Self {
            messages: Box::pin(messages.map(|r| r.map_err(|e| e.to_string()))),
        })
    }

    /// A fast reader of the whole log from `from_seq` for replays: an ephemeral consumer without
    /// acks that pulls large batches. The log never has gaps (nothing is deleted), so a gap in
    /// what arrives is reported as an error rather than skipped.
    pub async fn replay(stream: &Stream, from_seq: u64) -> Result<Self, ConsumerError> {
        let create = |reason: String| ConsumerError::Create {
            name: "replay".to_string(),
            reason,
        };
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                ack_policy: jetstream::consumer::AckPolicy::None,
                deliver_policy: start_at(from_seq),
                inactive_threshold: std::time::Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .map_err(|e| create(e.to_string()))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(5_000)
            .messages()
            .await
            .map_err(|e| create(e.to_string()))?;
        let mut expected = from_seq.max(1);
        let checked = messages.map(move |r| {
            let m = r.map_err(|e| e.to_string())?;
            let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
            if seq != expected {
                return Err(format!(
                    "gap in the log: expected sequence {expected}, got {seq}"
                ));
            }
            expected = seq + 1;
            Ok(m)
        });
        Ok(Self {
            messages: Box::pin(checked),
        })
    }

    /// An ordered consumer over `filters` from stream sequence `from_seq` (1: the beginning).
    pub async fn ordered(
        stream: &Stream,
        filters: Vec<String>,
        from_seq: u64,
    ) -> Result<Self, ConsumerError> {
        let create = |reason: String| ConsumerError::Create {
            name: "ordered".to_string(),
            reason,
        };
        let deliver_policy = start_at(from_seq);
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subjects: filters,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| create(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| create(e.to_string()))?;
        Ok(Self {
            messages: Box::pin(messages.map(|r| r.map_err(|e| e.to_string()))),
        })
    }

    /// The next message, in stream order. `None` when the consumer is closed.
    pub async fn next(&mut self) -> Option<Result<Delivered, ConsumerError>> {
        let message = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(ConsumerError::Read(e))),
        };
        let (seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => return Some(Err(ConsumerError::Read(e.to_string()))),
        };
        Some(Ok(Delivered {
            seq,
            pending,
            subject: message.subject.to_string(),
            envelope: Envelope::decode(&message.payload),
            message,
        }))
    }
}

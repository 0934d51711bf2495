//! Durable consumers for the services that fold the log (matcher, projections).
//!
//! A consumer delivers messages in stream order. Each delivery carries the decoded envelope *or*
//! the reason it could not be decoded, so a malformed event is set aside by the caller and never
//! stops the flow. Two kinds:
//! - [`LogConsumer::durable`]: the server remembers the position (explicit acks);
//! - [`LogConsumer::ordered`]: the reader keeps its position itself (in a snapshot, or by
//!   rebuilding from the start); no acks, and gaps are repaired by the client library.
//! - [`LogConsumer::tail`]: the same contract as `ordered`, pulling large batches: a reader that
//!   must keep up with the log while it is being appended to (the matcher).

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
    fn new(seq: u64, pending: u64, message: jetstream::Message) -> Self {
        Self {
            seq,
            pending,
            subject: message.subject.to_string(),
            envelope: Envelope::decode(&message.payload),
            message,
        }
    }

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
    /// Set for [`LogConsumer::tail`]: how to start again where it was.
    tail: Option<Tail>,
}

/// Messages a tailing consumer asks for in one pull request. The client library's ordered
/// consumer asks for 500; while the log is being appended to (every append fsynced), a reader
/// pulling 500 at a time reads ~80k events/s on 2 cores, and one pulling 5,000 ~260k/s
/// (`loadtest/examples/tail_under_ingest.rs`).
const TAIL_BATCH: usize = 5_000;
/// A tailing consumer's server sends a heartbeat this often when there is nothing to deliver;
/// two missed ones and it starts again.
const TAIL_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);
const TAIL_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
const TAIL_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// A tailing consumer's position, from which it recreates its server-side consumer when a
/// message went missing in flight or the consumer was lost (a server restart, missed heartbeats).
struct Tail {
    stream: Stream,
    filters: Vec<String>,
    /// Stream sequence of the last message delivered (0: none yet).
    last_seq: u64,
    /// The first sequence to read when nothing has been delivered yet.
    from_seq: u64,
    /// Consumer sequence of the last message delivered by the current server-side consumer.
    delivered: u64,
    /// Why the current consumer cannot be trusted any more: recreate it before reading on.
    broken: Option<String>,
    /// Wait before the next attempt to recreate it.
    backoff: std::time::Duration,
}

impl Tail {
    fn next_seq(&self) -> u64 {
        if self.last_seq == 0 {
            self.from_seq
        } else {
            self.last_seq + 1
        }
    }

    /// [`LogConsumer::next`] of a tailing consumer reading `messages`: starts its server-side
    /// consumer again after the last message delivered when it is broken, and breaks it on an
    /// error, an end, or a delivery that skips one. A consumer that broke before delivering
    /// anything (or could not be started) is started again only after a pause that doubles
    /// each time, so a log that keeps failing is not retried in a tight loop.
    async fn next(&mut self, messages: &mut Messages) -> Result<Delivered, ConsumerError> {
        loop {
            if let Some(reason) = self.broken.clone() {
                if self.delivered == 0 {
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(TAIL_BACKOFF_MAX);
                }
                // Whatever happens next, the consumer that delivered those is gone.
                self.delivered = 0;
                let from = self.next_seq();
                tracing::debug!(from, %reason, "tailing consumer starting again");
                let filters = self.filters.clone();
                let restarted = ephemeral(&self.stream, filters, from, TAIL_BATCH, TAIL_HEARTBEAT)
                    .await
                    .map_err(|e| {
                        ConsumerError::Read(format!(
                            "starting again from sequence {from} after \"{reason}\": {e}"
                        ))
                    })?;
                *messages = restarted;
                self.broken = None;
            }
            let message = match messages.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    self.broken = Some(e.clone());
                    return Err(ConsumerError::Read(e));
                }
                None => {
                    self.broken = Some("the consumer ended".into());
                    continue;
                }
            };
            let info = message
                .info()
                .map_err(|e| ConsumerError::Read(e.to_string()))?;
            if info.consumer_sequence != self.delivered + 1 {
                self.broken = Some(format!(
                    "delivery {} after {}: a message went missing in flight",
                    info.consumer_sequence, self.delivered
                ));
                continue;
            }
            let (seq, pending) = (info.stream_sequence, info.pending);
            self.delivered = info.consumer_sequence;
            self.last_seq = seq;
            self.backoff = TAIL_BACKOFF;
            return Ok(Delivered::new(seq, pending, message));
        }
    }
}

/// An ephemeral consumer without acks over `filters` from `from_seq`, pulling `batch` messages
/// at a time; the server removes it a minute after its reader has gone.
async fn ephemeral(
    stream: &Stream,
    filters: Vec<String>,
    from_seq: u64,
    batch: usize,
    heartbeat: std::time::Duration,
) -> Result<Messages, String> {
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            filter_subjects: filters,
            ack_policy: jetstream::consumer::AckPolicy::None,
            deliver_policy: start_at(from_seq),
            inactive_threshold: std::time::Duration::from_secs(60),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(heartbeat)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    Ok(Box::pin(messages.map(|r| r.map_err(|e| e.to_string()))))
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
            tail: None,
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
            tail: None,
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
        let messages = ephemeral(
            stream,
            Vec::new(),
            from_seq,
            5_000,
            std::time::Duration::from_secs(15),
        )
        .await
        .map_err(create)?;
        let mut expected = from_seq.max(1);
        let checked = messages.map(move |r| {
            let m = r?;
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
            tail: None,
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
            tail: None,
        })
    }

    /// A reader over `filters` from stream sequence `from_seq` (1: the beginning) that keeps up
    /// with a log being appended to: an ephemeral consumer without acks pulling large batches,
    /// which, like [`LogConsumer::ordered`], starts again after the last message it delivered
    /// when one went missing in flight or the server-side consumer was lost. It never ends:
    /// while the log cannot be reached, [`LogConsumer::next`] reports each failed attempt to
    /// start again as an error (after a growing pause) and the reader calls it again.
    pub async fn tail(
        stream: &Stream,
        filters: Vec<String>,
        from_seq: u64,
    ) -> Result<Self, ConsumerError> {
        let messages = ephemeral(
            stream,
            filters.clone(),
            from_seq,
            TAIL_BATCH,
            TAIL_HEARTBEAT,
        )
        .await
        .map_err(|reason| ConsumerError::Create {
            name: "tail".to_string(),
            reason,
        })?;
        Ok(Self {
            messages,
            tail: Some(Tail {
                stream: stream.clone(),
                filters,
                last_seq: 0,
                from_seq: from_seq.max(1),
                delivered: 0,
                broken: None,
                backoff: TAIL_BACKOFF,
            }),
        })
    }

    /// The next message, in stream order. `None` when the consumer is closed (a tailing
    /// consumer never is).
    ///
    /// Cancel-safe for a tailing consumer: a call dropped while it waits loses nothing.
    pub async fn next(&mut self) -> Option<Result<Delivered, ConsumerError>> {
        if let Some(tail) = self.tail.as_mut() {
            return Some(tail.next(&mut self.messages).await);
        }
        let message = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(ConsumerError::Read(e))),
        };
        let (seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => return Some(Err(ConsumerError::Read(e.to_string()))),
        };
        Some(Ok(Delivered::new(seq, pending, message)))
    }
}

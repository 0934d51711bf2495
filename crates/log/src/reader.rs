//! Direct reads of single messages from the log: an entity's first or last event, the message
//! at a sequence. Intake uses these to check that an entity exists, to find its current version,
//! and to recognise a retried request after JetStream's duplicate window has passed.

use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use bytes::Bytes;

/// One message as stored in the log.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub seq: u64,
    pub subject: String,
    /// The `Nats-Msg-Id` it was appended with.
    pub msg_id: Option<String>,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("reading the log failed: {0}")]
pub struct ReadError(String);

/// Reads single messages from the log's stream (which must allow direct gets).
#[derive(Debug, Clone)]
pub struct LogReader {
    stream: Stream,
}

/// How many messages of one subject [`LogReader::find_msg_id`] looks through at most.
const MAX_SCAN: usize = 10_000;

impl LogReader {
    pub fn new(stream: Stream) -> Self {
        Self { stream }
    }

    fn convert(
        r: Result<
            async_nats::jetstream::message::StreamMessage,
            async_nats::jetstream::stream::DirectGetError,
        >,
    ) -> Result<Option<StoredMessage>, ReadError> {
        match r {
            Ok(m) => Ok(Some(StoredMessage {
                seq: m.sequence,
                subject: m.subject.to_string(),
                msg_id: m
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|v| v.to_string()),
                payload: m.payload,
            })),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(ReadError(e.to_string())),
        }
    }

    /// The last message on subjects matching `filter` (wildcards allowed).
    pub async fn last(&self, filter: &str) -> Result<Option<StoredMessage>, ReadError> {
        Self::convert(self.stream.direct_get_last_for_subject(filter).await)
    }

    /// The first message at or after `from_seq` on subjects matching `filter`.
    pub async fn next(
        &self,
        filter: &str,
        from_seq: u64,
    ) -> Result<Option<StoredMessage>, ReadError> {
        Self::convert(
            self.stream
                .direct_get_next_for_subject(filter, Some(from_seq.max(1)))
                .await,
        )
    }

    /// The message at `seq`.
    pub async fn at(&self, seq: u64) -> Result<Option<StoredMessage>, ReadError> {
        Self::convert(self.stream.direct_get(seq).await)
    }

    /// The message on `filter` that was appended with `msg_id`, searching from the newest
    /// backwards is not possible with direct gets, so this walks the entity's subject forwards.
    /// An entity has few events, so this is a handful of reads on a rare path (a retry after
    /// the duplicate window).
    pub async fn find_msg_id(
        &self,
        filter: &str,
        msg_id: &str,
    ) -> Result<Option<StoredMessage>, ReadError> {
        let mut from = 1;
        for _ in 0..MAX_SCAN {
            match self.next(filter, from).await? {
                None => return Ok(None),
                Some(m) if m.msg_id.as_deref() == Some(msg_id) => return Ok(Some(m)),
                Some(m) => from = m.seq + 1,
            }
        }
        Err(ReadError(format!(
            "{filter} has more than {MAX_SCAN} messages; gave up looking for {msg_id}"
        )))
    }
}

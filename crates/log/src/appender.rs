//! The group-commit appender.
//!
//! Each call to [`Appender::append`] is one *request*: one or more messages that must be stored
//! together or not at all. Requests that arrive while earlier batches are in flight are gathered
//! into one JetStream atomic batch (at most [`MAX_BATCH`] messages), which the server stores and
//! fsyncs as a whole and acknowledges once; each caller is then answered with the sequences of
//! its own messages, which follow from the batch acknowledgement (last sequence and count).
//!
//! The server rejects a whole batch when one member fails (a `Nats-Msg-Id` already stored,
//! 10201; a `Nats-Expected-Last-Subject-Sequence` that does not hold, 10071) without saying
//! which. The appender then splits the batch in halves and commits each again, recursively,
//! until the offending request stands alone: its batch-mates are stored, and only it gets the
//! error. A lone single-message request rejected as a duplicate is published once more without
//! batch headers, which makes JetStream answer with the original sequence.
//!
//! When the outcome is unknown (a timeout, the connection lost mid-batch) the caller gets
//! [`AppendError::Unavailable`]: the request may or may not be stored, and retrying it with the
//! same message ids is safe.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The most messages the server takes in one atomic batch.
pub const MAX_BATCH: usize = 1000;

/// JetStream's error code for "atomic publish batch contains duplicate message id".
const ERR_BATCH_DUPLICATE: u64 = 10201;
/// JetStream's error code for "wrong last sequence".
const ERR_WRONG_LAST_SEQUENCE: u64 = 10071;

/// What must hold on the log for a message to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Nothing: store it.
    Anything,
    /// No message yet on any subject matching `filter` (a new entity, whatever its partition).
    Nothing { filter: String },
    /// The last message on the message's own subject has this sequence (the entity's version).
    LastOnSubject(u64),
    /// The last message on any subject matching `filter` has sequence `seq` (0: there is none).
    LastOn { filter: String, seq: u64 },
}

/// One message to append.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub payload: Bytes,
    /// Becomes `Nats-Msg-Id`: a retried request with the same ids is stored once.
    pub msg_id: String,
    pub expect: Expect,
}

impl Outgoing {
    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, self.msg_id.as_str());
        match &self.expect {
            Expect::Anything => {}
            Expect::Nothing { filter } => {
                h.insert("Nats-Expected-Last-Subject-Sequence", "0");
                h.insert(
                    "Nats-Expected-Last-Subject-Sequence-Subject",
                    filter.as_str(),
                );
            }
            Expect::LastOnSubject(seq) => {
                h.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    seq.to_string().as_str(),
                );
            }
            Expect::LastOn { filter, seq } => {
                h.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    seq.to_string().as_str(),
                );
                h.insert(
                    "Nats-Expected-Last-Subject-Sequence-Subject",
                    filter.as_str(),
                );
            }
        }
        h
    }
}

/// Where a request's messages landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Stream sequence of the request's first message; the rest follow contiguously.
    pub first_seq: u64,
    pub count: u64,
    /// The request had been stored before; these are the original sequences.
    pub duplicate: bool,
}

impl Appended {
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.count - 1
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// An expectation did not hold (an entity already exists, or its version moved on).
    #[error("expected version did not hold: {0}")]
    WrongLastSequence(String),
    /// A multi-message request repeats message ids that are already stored: it was stored before.
    #[error("the request's message ids are already stored")]
    DuplicateRequest,
    /// The server refused the request for another reason.
    #[error("the log refused the append ({err_code}): {description}")]
    Rejected { err_code: u64, description: String },
    /// The outcome is unknown (timeout, connection lost): retry with the same message ids.
    #[error("the log is unavailable, outcome unknown: {0}")]
    Unavailable(String),
    #[error("request has {0} messages; at most {MAX_BATCH} are allowed")]
    TooLarge(usize),
    #[error("the request has no messages")]
    Empty,
    #[error("the appender has stopped")]
    Closed,
}

/// Tuning of the appender.
#[derive(Debug, Clone)]
pub struct AppenderConfig {
    /// Batches committed concurrently (the server takes at most 50 per stream).
    pub max_in_flight: usize,
    /// Messages per batch, at most [`MAX_BATCH`].
    pub max_batch: usize,
    /// Requests waiting to be batched before callers are slowed down.
    pub queue: usize,
    /// How long a batch waits for more requests once its first has arrived (zero: take only
    /// what is already queued). A moment of waiting turns a trickle of requests into one
    /// fsync instead of many.
    pub linger: std::time::Duration,
}

impl Default for AppenderConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 4,
            max_batch: MAX_BATCH,
            queue: 16_384,
            linger: std::time::Duration::from_millis(1),
        }
    }
}

struct Pending {
    messages: Vec<Outgoing>,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
}

/// Appends requests to the log, group-committing concurrent ones. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Appender {
    tx: mpsc::Sender<Pending>,
}

impl Appender {
    /// Starts the batching task. It stops when every clone of the appender has been dropped,
    /// after committing what was queued.
    pub fn start(
        client: async_nats::Client,
        config: AppenderConfig,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue);
        let committer = Committer {
            client,
            batch_ids: Arc::new(BatchIds::new()),
        };
        let handle = tokio::spawn(run(committer, rx, config));
        (Self { tx }, handle)
    }

    /// Appends `messages` atomically; resolves once the log has acknowledged them.
    pub async fn append(&self, messages: Vec<Outgoing>) -> Result<Appended, AppendError> {
        if messages.is_empty() {
            return Err(AppendError::Empty);
        }
        if messages.len() > MAX_BATCH {
            return Err(AppendError::TooLarge(messages.len()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { messages, reply })
            .await
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)?
    }
}

async fn run(committer: Committer, mut rx: mpsc::Receiver<Pending>, config: AppenderConfig) {
    let max_batch = config.max_batch.clamp(1, MAX_BATCH);
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut carry: Option<Pending> = None;
    loop {
        // Wait for a free slot first: while all slots are busy, requests queue up and the next
        // batch grows. That is the group commit.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        let mut size = first.messages.len();
        let mut group = vec![first];
        let deadline = tokio::time::Instant::now() + config.linger;
        while size < max_batch {
            let next = match rx.try_recv() {
                Ok(p) => Some(p),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) if config.linger.is_zero() => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
            };
            match next {
                Some(p) if size + p.messages.len() > max_batch => {
                    carry = Some(p);
                    break;
                }
                Some(p) => {
                    size += p.messages.len();
                    group.push(p);
                }
                None => break,
            }
        }
        let committer = committer.clone();
        tokio::spawn(async move {
            committer.settle(group).await;
            drop(slot);
        });
    }
    // Let in-flight batches finish before reporting the appender stopped.
    let _ = slots.acquire_many(config.max_in_flight.max(1) as u32).await;
}

/// The server's answer to a publish or a batch commit.
#[derive(Debug, Deserialize)]
struct Ack {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Debug, Clone, Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

enum CommitError {
    Api(ApiError),
    Unavailable(String),
}

struct BatchIds {
    prefix: String,
    next: AtomicU64,
}

impl BatchIds {
    fn new() -> Self {
        Self {
            prefix: nuid_like(),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// A process-unique prefix for batch ids (batch ids need only be unique among in-flight batches).
fn nuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), nanos)
}

#[derive(Clone)]
struct Committer {
    client: async_nats::Client,
    batch_ids: Arc<BatchIds>,
}

type Settling<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

impl Committer {
    /// Commits `group` and answers every request in it, isolating requests that fail.
    fn settle(&self, group: Vec<Pending>) -> Settling<'_> {
        Box::pin(async move {
            let single_message = group.len() == 1 && group[0].messages.len() == 1;
            let result = if single_message {
                self.publish_one(&group[0].messages[0]).await
            } else {
                let messages: Vec<&Outgoing> =
                    group.iter().flat_map(|p| p.messages.iter()).collect();
                self.commit(&messages).await
            };
            match result {
                Ok(ack) => {
                    let total: u64 = group.iter().map(|p| p.messages.len() as u64).sum();
                    // For a batch, `seq` is the last message's; for a duplicate single
                    // publish, the original's.
                    let Some(mut next) = (ack.seq + 1).checked_sub(total) else {
                        let reason =
                            format!("acknowledged sequence {} below batch size {total}", ack.seq);
                        for p in group {
                            let _ = p.reply.send(Err(AppendError::Unavailable(reason.clone())));
                        }
                        return;
                    };
                    for p in group {
                        let count = p.messages.len() as u64;
                        let _ = p.reply.send(Ok(Appended {
                            first_seq: next,
                            count,
                            duplicate: ack.duplicate,
                        }));
                        next += count;
                    }
                }
                // Any refusal of a batch of several requests may come from one of them: split
                // until each refusal stands alone (at most log2(1000) = 10 levels).
                Err(CommitError::Api(e)) if group.len() > 1 => {
                    tracing::debug!(
                        requests = group.len(),
                        err_code = e.err_code,
                        "batch rejected by one member; splitting"
                    );
                    let mut left = group;
                    let right = left.split_off(left.len() / 2);
                    futures::join!(self.settle(left), self.settle(right));
                }
                Err(CommitError::Api(e)) => {
                    let Some(p) = group.into_iter().next() else {
                        return;
                    };
                    let err = match e.err_code {
                        ERR_BATCH_DUPLICATE if p.messages.len() == 1 => {
                            // Cannot happen for a lone message (it is published plainly), but
                            // answer it properly if the server ever says so.
                            match self.publish_one(&p.messages[0]).await {
                                Ok(ack) => {
                                    let _ = p.reply.send(Ok(Appended {
                                        first_seq: ack.seq,
                                        count: 1,
                                        duplicate: ack.duplicate,
                                    }));
                                    return;
                                }
                                Err(CommitError::Api(e)) => api_error(e),
                                Err(CommitError::Unavailable(s)) => AppendError::Unavailable(s),
                            }
                        }
                        ERR_BATCH_DUPLICATE => AppendError::DuplicateRequest,
                        _ => api_error(e),
                    };
                    let _ = p.reply.send(Err(err));
                }
                Err(CommitError::Unavailable(reason)) => {
                    tracing::warn!(requests = group.len(), %reason, "append outcome unknown");
                    for p in group {
                        let _ = p.reply.send(Err(AppendError::Unavailable(reason.clone())));
                    }
                }
            }
        })
    }

    /// Publishes one message on its own (not as a batch) and waits for its acknowledgement.
    async fn publish_one(&self, m: &Outgoing) -> Result<Ack, CommitError> {
        let reply = self
            .client
            .request_with_headers(m.subject.clone(), m.headers(), m.payload.clone())
            .await
            .map_err(|e| CommitError::Unavailable(e.to_string()))?;
        parse_ack(&reply.payload)
    }

    /// Publishes `messages` as one atomic batch and waits for the commit's acknowledgement.
    async fn commit(&self, messages: &[&Outgoing]) -> Result<Ack, CommitError> {
        let batch_id = self.batch_ids.next();
        let last = messages.len();
        for (i, m) in messages.iter().enumerate() {
            let mut h = m.headers();
            h.insert("Nats-Batch-Id", batch_id.as_str());
            h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            if i + 1 < last {
                self.client
                    .publish_with_headers(m.subject.clone(), h, m.payload.clone())
                    .await
                    .map_err(|e| CommitError::Unavailable(e.to_string()))?;
            } else {
                h.insert("Nats-Batch-Commit", "1");
                let reply = self
                    .client
                    .request_with_headers(m.subject.clone(), h, m.payload.clone())
                    .await
                    .map_err(|e| CommitError::Unavailable(e.to_string()))?;
                let ack = parse_ack(&reply.payload)?;
                if ack.count != Some(last as u64) {
                    return Err(CommitError::Unavailable(format!(
                        "batch acknowledged {:?} messages, {last} were sent",
                        ack.count
                    )));
                }
                return Ok(ack);
            }
        }
        Err(CommitError::Unavailable("empty batch".into()))
    }
}

fn parse_ack(payload: &[u8]) -> Result<Ack, CommitError> {
    let ack: Ack = serde_json::from_slice(payload).map_err(|e| {
        CommitError::Unavailable(format!(
            "unreadable acknowledgement ({e}): {}",
            String::from_utf8_lossy(payload)
        ))
    })?;
    match ack.error {
        Some(e) => Err(CommitError::Api(e)),
        None if ack.seq == 0 => Err(CommitError::Unavailable(format!(
            "acknowledgement without a sequence: {}",
            String::from_utf8_lossy(payload)
        ))),
        None => Ok(ack),
    }
}

fn api_error(e: ApiError) -> AppendError {
    match e.err_code {
        ERR_WRONG_LAST_SEQUENCE => AppendError::WrongLastSequence(e.description),
        // A batch the server abandoned (incomplete after a reconnect, too many in flight):
        // nothing of it was stored, so the request can be retried.
        10_000..=10_999
            if e.description.contains("incomplete") || e.description.contains("inflight") =>
        {
            AppendError::Unavailable(e.description)
        }
        code => AppendError::Rejected {
            err_code: code,
            description: e.description,
        },
    }
}

//! The matcher service: the log in, rounds of assignments out.
//!
//! # Layout
//! - [`service`]: folds the log per incident with the pure engine (`muster-matching`), catches up
//!   on history without inventing rounds for the past, then cuts live rounds and appends them.
//! - [`audit`]: replays the log through the engine and checks every recorded round.
//! - [`evaluate`]: decides every recorded round again under another policy and compares.
//! - [`snapshot`]: the state in RocksDB with the position it reflects, so a restart resumes
//!   rather than refolding the log from the start.
//!
//! A round cut at sequence S is appended as its decisions followed by its `RoundRecorded`
//! record, with message ids derived from the incident and S, and the record guarded by its own
//! subject: a crash between cutting and appending, or between appending and reading the round
//! back, leaves no duplicate. The matcher cuts no new round of an incident until it has read its
//! previous round back from the log, so every round's state is exactly the fold of the log up to
//! its S — which is what the audit recomputes.

pub mod audit;
pub mod evaluate;
pub mod service;
pub mod snapshot;

pub use service::{Config, Running, Shard, run, spawn};

/// Why the matcher (or an audit) stopped.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    #[error(transparent)]
    Open(#[from] muster_log::OpenError),
    #[error(transparent)]
    Consumer(#[from] muster_log::consumer::ConsumerError),
    #[error("reading the log's state: {0}")]
    Info(String),
    #[error(transparent)]
    Store(#[from] muster_store::StoreError),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("matcher thread: {0}")]
    Thread(String),
    #[error("appending round {through_seq} of {incident}: {source}")]
    Append {
        incident: String,
        through_seq: u64,
        source: muster_log::AppendError,
    },
}

/// Connects and provisions the log: what both the service and the audit start with.
async fn open_log(
    nats_url: &str,
    name: &str,
    log: &muster_log::LogConfig,
) -> Result<(async_nats::Client, async_nats::jetstream::stream::Stream), MatcherError> {
    Ok(muster_log::open(nats_url, name, log).await?)
}

/// The last sequence of the log right now: where history ends for a reader starting now.
async fn last_sequence(
    stream: &mut async_nats::jetstream::stream::Stream,
) -> Result<u64, MatcherError> {
    Ok(stream
        .info()
        .await
        .map_err(|e| MatcherError::Info(e.to_string()))?
        .state
        .last_sequence)
}

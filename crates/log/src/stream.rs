//! Provisioning of the log's stream: create it, or bring an existing one to the settings Muster
//! relies on. Safe to run from every service at every start.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

/// The log's stream settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Stream name.
    pub stream: String,
    /// 1 for a single node, 3 (or 5) in a cluster.
    pub replicas: usize,
    /// How long JetStream remembers `Nats-Msg-Id`s to drop a retried append. Creation is
    /// guarded beyond it by per-entity subjects; this covers quick retries of any request.
    pub duplicate_window: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            stream: "MUSTER".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("could not read stream {stream}: {source}")]
    Get {
        stream: String,
        source: jetstream::context::GetStreamError,
    },
    #[error("could not create stream {stream}: {source}")]
    Create {
        stream: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error("could not update stream {stream}: {source}")]
    Update {
        stream: String,
        source: jetstream::context::UpdateStreamError,
    },
    #[error("could not read stream info of {stream}: {source}")]
    Info {
        stream: String,
        source: jetstream::context::RequestError,
    },
}

impl LogConfig {
    /// The full stream configuration: file storage, limits retention with no age, count or size
    /// limit (the log is the system of record), atomic batches and direct gets allowed.
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![muster_schema::subject::all()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            max_age: Duration::ZERO,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            max_message_size: 1024 * 1024,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            allow_direct: true,
            allow_atomic_publish: true,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        }
    }
}

/// Creates the stream, or updates an existing one whose settings differ. Returns it.
pub async fn provision(
    js: &jetstream::Context,
    config: &LogConfig,
) -> Result<stream::Stream, ProvisionError> {
    let wanted = config.stream_config();
    let name = config.stream.clone();
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|source| ProvisionError::Info {
                    stream: name.clone(),
                    source,
                })?;
            let have = &info.config;
            let differs = have.subjects != wanted.subjects
                || have.max_age != wanted.max_age
                || have.max_messages != wanted.max_messages
                || have.max_bytes != wanted.max_bytes
                || have.num_replicas != wanted.num_replicas
                || have.duplicate_window != wanted.duplicate_window
                || !have.allow_direct
                || !have.allow_atomic_publish;
            if differs {
                tracing::info!(stream = %name, "updating stream settings");
                js.update_stream(wanted)
                    .await
                    .map_err(|source| ProvisionError::Update {
                        stream: name.clone(),
                        source,
                    })?;
                return js
                    .get_stream(&name)
                    .await
                    .map_err(|source| ProvisionError::Get {
                        stream: name,
                        source,
                    });
            }
            Ok(existing)
        }
        Err(e) if !is_not_found(&e) => Err(ProvisionError::Get {
            stream: name,
            source: e,
        }),
        Err(_) => {
            tracing::info!(stream = %name, "creating stream");
            match js.create_stream(wanted).await {
                Ok(s) => Ok(s),
                // Another service created it at the same moment: use theirs.
                Err(create) => js
                    .get_stream(&name)
                    .await
                    .map_err(|_| ProvisionError::Create {
                        stream: name,
                        source: create,
                    }),
            }
        }
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(je)
            if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

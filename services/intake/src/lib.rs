//! The intake service: agencies' commands in, events durably in the log, exactly once.
//!
//! # Layout
//! - [`convert`]: wire messages into domain values, naming every field that breaks a rule.
//! - [`commands`]: a request becomes a draft event, then a plan checked against the log.
//! - [`directory`]: what intake knows about incidents (declared, stood down, policy version).
//! - [`service`]: the `muster.v1.Intake` gRPC service.
//! - [`error`]: intake's errors and their one mapping to gRPC statuses.
//!
//! [`run`] serves the service with gRPC health and reflection on a listener until `shutdown`
//! resolves, then drains in-flight requests and the appender before returning.

pub mod commands;
pub mod convert;
pub mod directory;
pub mod error;
pub mod service;

use std::future::Future;
use std::time::Duration;

use muster_log::{Appender, AppenderConfig, LogConfig, LogReader};
use muster_proto::v1::intake_server::IntakeServer;
use tokio::net::TcpListener;

pub use service::{AGENCY_HEADER, CORRELATION_HEADER, IntakeService};

/// Intake's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    pub log: LogConfig,
    pub appender: AppenderConfig,
    /// How long intake trusts what it read about an incident.
    pub incident_cache_ttl: Duration,
}

impl Config {
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            log: LogConfig::default(),
            appender: AppenderConfig::default(),
            incident_cache_ttl: Duration::from_secs(1),
        }
    }
}

/// The pieces of a running intake that outlive its gRPC server: built once, shared by
/// `muster up` (which serves several services on one address) and [`run`].
#[derive(Debug)]
pub struct Intake {
    pub service: IntakeService,
    appender_task: tokio::task::JoinHandle<()>,
    client: async_nats::Client,
}

impl Intake {
    /// Connects to NATS, provisions the log and starts the appender.
    pub async fn connect(config: &Config) -> Result<Self, ServeError> {
        let (client, stream) =
            muster_log::open(&config.nats_url, "muster-intake", &config.log).await?;
        let reader = LogReader::new(stream);
        let (appender, appender_task) = Appender::start(client.clone(), config.appender.clone());
        let directory = directory::Directory::new(reader.clone(), config.incident_cache_ttl);
        Ok(Self {
            service: IntakeService::new(appender, reader, directory),
            appender_task,
            client,
        })
    }

    /// Lets queued appends finish and flushes the connection. Call after the gRPC server has
    /// stopped taking requests.
    pub async fn drain(self) {
        let Intake {
            service,
            appender_task,
            client,
        } = self;
        drop(service);
        if tokio::time::timeout(Duration::from_secs(10), appender_task)
            .await
            .is_err()
        {
            tracing::warn!("appender did not drain within 10s");
        }
        let _ = client.flush().await;
    }
}

/// Why intake could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Open(#[from] muster_log::OpenError),
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

pub use muster_proto::health_and_reflection;

/// Serves intake alone on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let intake = Intake::connect(&config).await?;
    let (reporter, health, reflection) = health_and_reflection();
    reporter.set_serving::<IntakeServer<IntakeService>>().await;
    tracing::info!(addr = ?listener.local_addr().ok(), "intake serving");
    let served = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(IntakeServer::new(intake.service.clone()))
        .serve_with_incoming_shutdown(muster_proto::incoming(listener), shutdown)
        .await;
    intake.drain().await;
    Ok(served?)
}

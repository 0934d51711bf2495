//! The projections service: the log folded into read models in RocksDB, served over gRPC.
//!
//! # Layout
//! - [`db`]: the read models' RocksDB (a column family per model, the position in `meta`).
//! - [`follow`]: folding deliveries a batch at a time with the pure fold of `muster-readmodel`;
//!   the position is committed in the same `WriteBatch` as the changes, acks follow commits.
//! - [`query`]: the `muster.v1.Query` gRPC service: gets, paged lists, the dashboard,
//!   histories, set-aside events, and `WatchIncident`; every query can wait for a sequence.
//! - [`replay`]: rebuilding the read models from sequence 1, or building them as of a sequence
//!   or a log time into another directory.
//! - [`convert`]: records into wire messages.
//!
//! Exactly once: the consumer starts at the stored position + 1 whatever the server remembers,
//! events at or below the position are skipped, and the position moves in the same atomic write
//! as the changes. The write need not be fsynced for that: a crash of the machine loses the
//! position together with the changes it covers, and they are folded again from the log.

pub mod convert;
pub mod db;
pub mod follow;
pub mod query;
pub mod replay;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use muster_log::{LogConfig, LogConsumer};
use muster_proto::v1::query_server::QueryServer;
use muster_schema::subject;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::db::Db;
pub use crate::query::QueryService;

/// The projections' settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    pub log: LogConfig,
    /// Where the read models live (a RocksDB directory).
    pub data_dir: PathBuf,
    /// The durable consumer's name: one per projections instance.
    pub consumer: String,
    /// How durable each commit is: buffered by default, since fsync is not needed for
    /// exactly-once (see the crate's docs).
    pub commit: follow::Commit,
    /// A delivery not acknowledged for this long is delivered again.
    pub ack_wait: Duration,
}

impl Config {
    pub fn new(nats_url: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            nats_url: nats_url.into(),
            log: LogConfig::default(),
            data_dir: data_dir.into(),
            consumer: "muster-projections".to_string(),
            commit: follow::Commit::Buffered,
            ack_wait: Duration::from_secs(60),
        }
    }
}

/// Why the projections stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionsError {
    #[error(transparent)]
    Open(#[from] muster_log::OpenError),
    #[error(transparent)]
    Consumer(#[from] muster_log::consumer::ConsumerError),
    #[error(transparent)]
    Store(#[from] muster_store::StoreError),
    #[error(transparent)]
    Corrupt(#[from] muster_readmodel::Corrupt),
    #[error("reading the log's state: {0}")]
    Info(String),
    #[error("a blocking task failed: {0}")]
    Task(String),
    #[error(
        "the read models at {dir} have format {found}; this build writes format {expected}: rebuild them with `muster replay rebuild`"
    )]
    Format {
        dir: String,
        found: u32,
        expected: u32,
    },
    #[error("{0}")]
    Replay(String),
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Read models being kept up to date (or a read-only snapshot), ready to be queried.
#[derive(Debug, Clone)]
pub struct Projections {
    db: Arc<Db>,
    applied: watch::Receiver<u64>,
    /// Set when the server is shutting down: watch streams end so the server can drain.
    closing: Arc<watch::Sender<bool>>,
}

impl Projections {
    /// The query service over these read models.
    pub fn query_server(&self) -> QueryServer<QueryService> {
        QueryServer::new(QueryService::new(
            Arc::clone(&self.db),
            self.applied.clone(),
            self.closing.subscribe(),
        ))
    }

    /// Ends every open `WatchIncident` stream (after what it has already sent): call it when
    /// shutdown begins, or a graceful server shutdown waits for those streams forever.
    pub fn close_watches(&self) {
        self.closing.send_replace(true);
    }

    /// The last sequence applied.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// A receiver of the applied position, updated after each commit.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Opens read models built earlier (`muster replay as-of`) for queries only.
    pub fn open_read_only(dir: &std::path::Path) -> Result<Self, ProjectionsError> {
        let db = Db::open_read_only(dir)?;
        let (_, applied) = watch::channel(db.position()?);
        Ok(Self {
            db: Arc::new(db),
            applied,
            closing: Arc::new(watch::channel(false).0),
        })
    }
}

/// The fold task started by [`start`].
pub type FoldTask = tokio::task::JoinHandle<Result<(), ProjectionsError>>;

/// Opens the read models, connects to the log and starts folding it; the fold runs until
/// `shutdown` resolves (finishing the batch in hand).
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Projections, FoldTask), ProjectionsError> {
    let dir = config.data_dir.clone();
    let db = tokio::task::spawn_blocking(move || Db::open(&dir))
        .await
        .map_err(|e| ProjectionsError::Task(e.to_string()))??;
    if let Some(found) = db.format()?
        && found != muster_readmodel::FORMAT
    {
        return Err(ProjectionsError::Format {
            dir: config.data_dir.display().to_string(),
            found,
            expected: muster_readmodel::FORMAT,
        });
    }
    let db = Arc::new(db);
    let position = db.position()?;
    let (_client, stream) =
        muster_log::open(&config.nats_url, "muster-projections", &config.log).await?;
    let consumer = LogConsumer::durable_from(
        &stream,
        &config.consumer,
        vec![subject::all()],
        position + 1,
        config.ack_wait,
        Duration::from_secs(3_600),
    )
    .await?;
    let (applied_tx, applied) = watch::channel(position);
    tracing::info!(from = position + 1, dir = %config.data_dir.display(), "projections folding the log");
    let task = tokio::spawn(follow(
        Arc::clone(&db),
        consumer,
        applied_tx,
        config.commit,
        shutdown,
    ));
    let projections = Projections {
        db,
        applied,
        closing: Arc::new(watch::channel(false).0),
    };
    Ok((projections, task))
}

async fn follow(
    db: Arc<Db>,
    mut consumer: LogConsumer,
    applied: watch::Sender<u64>,
    commit: follow::Commit,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProjectionsError> {
    tokio::pin!(shutdown);
    // While a surge is read, batch N+1 is read and folded while batch N is committed; once the
    // consumer has caught up, each batch is committed before the next is awaited.
    let mut pipeline = follow::Pipeline::new(db, commit);
    loop {
        let batch = tokio::select! {
            () = &mut shutdown => break,
            b = follow::next_batch(&mut consumer, follow::MAX_BATCH) => b,
        };
        let Some(mut batch) = batch else { break };
        let items = follow::items(&mut batch);
        let Some(last) = batch.pop() else { continue };
        let caught_up = last.pending == 0;
        committed(pipeline.push(items, last).await?, &applied).await;
        if caught_up {
            committed(pipeline.settle().await?, &applied).await;
        }
    }
    committed(pipeline.settle().await?, &applied).await;
    tracing::info!(position = *applied.borrow(), "projections stopped");
    Ok(())
}

/// Acknowledges a committed batch (which acknowledges every delivery up to its last) and
/// publishes the new position to queries and watchers.
async fn committed(
    done: Option<(follow::BatchReport, muster_log::Delivered)>,
    applied: &watch::Sender<u64>,
) {
    if let Some((report, last)) = done {
        if let Err(e) = last.ack_through().await {
            tracing::warn!(seq = last.seq, error = %e, "ack failed; the batch will be delivered again and skipped");
        }
        // Deliveries come in stream order from the stored position on: it only moves forward.
        applied.send_replace(report.last_seq);
    }
}

/// Runs the projections alone: folds the log and serves `muster.v1.Query` (with health and
/// reflection) on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProjectionsError> {
    let (stop_fold, fold_stopped) = tokio::sync::oneshot::channel::<()>();
    let (projections, task) = start(config, async {
        let _ = fold_stopped.await;
    })
    .await?;
    // Serving stops when asked to, or when the fold ends on its own (an error).
    let fold_ended = Arc::new(tokio::sync::Notify::new());
    let watcher = {
        let fold_ended = Arc::clone(&fold_ended);
        tokio::spawn(async move {
            let r = task.await;
            fold_ended.notify_one();
            r
        })
    };
    let served = serve(projections, listener, async move {
        tokio::select! {
            () = shutdown => {},
            () = fold_ended.notified() => {},
        }
    })
    .await;
    let _ = stop_fold.send(());
    let folded = watcher
        .await
        .map_err(|e| ProjectionsError::Task(e.to_string()))?
        .map_err(|e| ProjectionsError::Task(e.to_string()))?;
    folded.and(served)
}

/// Serves `muster.v1.Query` over `projections` (with health and reflection) until `shutdown`.
pub async fn serve(
    projections: Projections,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ProjectionsError> {
    let (reporter, health, reflection) = muster_proto::health_and_reflection();
    reporter.set_serving::<QueryServer<QueryService>>().await;
    tracing::info!(addr = ?listener.local_addr().ok(), applied = projections.applied(), "projections serving queries");
    let server = projections.query_server();
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(server)
        .serve_with_incoming_shutdown(muster_proto::incoming(listener), async move {
            shutdown.await;
            projections.close_watches();
        })
        .await?;
    Ok(())
}

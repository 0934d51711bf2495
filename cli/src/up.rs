//! `muster up`: Muster on one machine.
//!
//! Starts (or connects to) NATS, runs the matcher and the projections (read models in
//! `DATA_DIR/projections`), and serves every gRPC service on one address
//! with health and reflection. The embedded nats-server runs as a supervised child: if it dies it is restarted on
//! the same port and store (clients reconnect by themselves); on Ctrl-C the gRPC server stops
//! taking requests, in-flight requests drain, then nats-server is stopped cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use muster_natsd::{NatsServer, NodeConfig};
use muster_proto::v1::intake_server::IntakeServer;
use tokio::sync::oneshot;

use crate::LogArgs;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the embedded nats-server keeps the log (and services their state).
    #[arg(long, env = "MUSTER_DATA_DIR", default_value = ".muster")]
    data_dir: PathBuf,
    /// Address to serve every gRPC service on.
    #[arg(long, env = "MUSTER_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Use this NATS server or cluster instead of starting one.
    #[arg(long, env = "MUSTER_NATS_URL")]
    nats_url: Option<String>,
    /// The nats-server binary to supervise (default: the pinned install of scripts/install-nats-server).
    #[arg(long, env = "MUSTER_NATS_SERVER")]
    nats_server_bin: Option<PathBuf>,
    /// Port for the embedded nats-server (default: a free one, printed at start).
    #[arg(long, env = "MUSTER_NATS_PORT")]
    nats_port: Option<u16>,
    #[command(flatten)]
    log: LogArgs,
}

const NATS_GRACE: Duration = Duration::from_secs(10);
const MAX_RESTARTS: u32 = 5;

pub async fn run(
    args: UpArgs,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (nats_url, supervisor) = match &args.nats_url {
        Some(url) => (url.clone(), None),
        None => {
            let bin = args
                .nats_server_bin
                .clone()
                .unwrap_or_else(muster_natsd::default_binary);
            let mut node = NodeConfig::new(bin, args.data_dir.join("nats"));
            node.port = args.nats_port;
            let server = NatsServer::start(node)
                .await
                .context("starting the embedded nats-server")?;
            let url = server.url();
            tracing::info!(%url, data_dir = %args.data_dir.display(), "nats-server ready (fsync on every append)");
            let (stop, stopped) = oneshot::channel();
            (url, Some((stop, tokio::spawn(supervise(server, stopped)))))
        }
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let intake = muster_intake::Intake::connect(&args.log.intake_config(&nats_url)).await?;
    let (stop_projections, projections_stopped) = oneshot::channel::<()>();
    let (projections, projections_task) = muster_projections::start(
        args.log
            .projections_config(&nats_url, args.data_dir.join("projections")),
        async {
            let _ = projections_stopped.await;
        },
    )
    .await
    .context("starting the projections")?;
    let (reporter, health, reflection) = muster_proto::health_and_reflection();
    reporter
        .set_serving::<IntakeServer<muster_intake::IntakeService>>()
        .await;
    reporter
        .set_serving::<muster_proto::v1::query_server::QueryServer<muster_projections::QueryService>>()
        .await;
    println!(
        "muster is up: gRPC on {addr} (health, reflection, muster.v1.Intake, muster.v1.Query); log on {nats_url}"
    );
    println!("  try: grpcurl -plaintext {addr} list");

    let (stop_matcher, matcher_stopped) = oneshot::channel::<()>();
    let mut matcher_config = args.log.matcher_config(&nats_url);
    matcher_config.data_dir = Some(args.data_dir.join("matcher"));
    let matcher = muster_matcher::spawn(matcher_config, async {
        let _ = matcher_stopped.await;
    })?;
    let (nats_died_tx, nats_died) = oneshot::channel::<()>();
    let shutdown = async {
        tokio::select! {
            () = signal => {},
            _ = nats_died => tracing::error!("nats-server could not be kept running; stopping"),
        }
        // Open watch streams end, or the server would wait for them forever.
        projections.close_watches();
    };
    let served = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(IntakeServer::new(intake.service.clone()))
        .add_service(projections.query_server())
        .serve_with_incoming_shutdown(muster_proto::incoming(listener), shutdown)
        .await;
    intake.drain().await;
    let _ = stop_matcher.send(());
    if let Err(e) = matcher.join().await {
        tracing::error!(error = %e, "matcher stopped with an error");
    }
    let _ = stop_projections.send(());
    match projections_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "projections stopped with an error"),
        Err(e) => tracing::error!(error = %e, "projections task failed"),
    }
    drop(nats_died_tx);
    if let Some((stop, task)) = supervisor {
        let _ = stop.send(());
        task.await??;
    }
    served.context("serving gRPC")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Keeps the embedded nats-server running until told to stop, then stops it gracefully.
async fn supervise(mut server: NatsServer, mut stop: oneshot::Receiver<()>) -> anyhow::Result<()> {
    let mut restarts = 0;
    loop {
        tokio::select! {
            _ = &mut stop => {
                server.stop(NATS_GRACE).await?;
                tracing::info!("nats-server stopped");
                return Ok(());
            }
            status = server.wait_exit() => {
                restarts += 1;
                tracing::error!(?status, restarts, log = %server.recent_log(), "nats-server exited unexpectedly; restarting");
                if restarts > MAX_RESTARTS {
                    anyhow::bail!("nats-server exited {restarts} times; giving up");
                }
                tokio::time::sleep(Duration::from_millis(500 * u64::from(restarts))).await;
                server.restart().await.context("restarting nats-server")?;
            }
        }
    }
}

//! `muster-loadtest`: benchmarks that drive Muster through its public API, each against its own
//! real nats-server, printing figures and their ratios to a baseline measured in the same run.
//!
//! - `intake`: raw JetStream (pipelined single publishes; atomic batches of 1000) against Muster
//!   intake (unary requests from many concurrent clients; bulk requests of 1000), all on one
//!   nats-server with `sync_interval: always`.
//! - `matcher`: the matcher engine's exact rounds on generated surges against first-come greedy,
//!   with the optimum certified independently.
//! - `projections`: rebuild throughput against raw JetStream consume of the same log, and query
//!   latency under concurrent readers while intake ingests.

mod intake;
mod matcher;
mod pandemic;
mod projections;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "muster-loadtest",
    about = "Benchmarks and load generators for Muster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Intake throughput and latency against raw JetStream on the same fsync-durable server.
    Intake(intake::Args),
    /// The matcher engine's rounds on generated surges, against first-come greedy.
    Matcher(matcher::Args),
    /// Projection rebuild throughput against raw consume, and query latency under ingest.
    Projections(projections::Args),
}

/// Starts the nats-server `bin` (default: the pinned install) with its store in `dir`.
async fn start_nats(
    bin: Option<&std::path::PathBuf>,
    dir: std::path::PathBuf,
) -> anyhow::Result<muster_natsd::NatsServer> {
    let bin = bin.cloned().unwrap_or_else(muster_natsd::default_binary);
    Ok(muster_natsd::NatsServer::start(muster_natsd::NodeConfig::new(bin, dir)).await?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Intake(args) => intake::run(args).await,
            Command::Matcher(args) => matcher::run(args),
            Command::Projections(args) => projections::run(args).await,
        }
    })
}

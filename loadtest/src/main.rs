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
//! - `surge`: a whole surge through `muster up`'s public API, with volunteers who answer, and a
//!   report (Markdown, JSON, SVG) a planner can read.

use clap::{Parser, Subcommand};
use muster_loadtest::{intake, matcher, projections, surge};

/// The allocator `muster` runs with, so that the services this process hosts for a benchmark
/// (intake, projections) measure as they run in `muster`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// A surge (flood, pandemic or hosting) driven through the public gRPC API, with a report.
    Surge(surge::Args),
    /// Writes a surge's report (Markdown and SVG charts) again from its JSON.
    SurgeReport {
        /// The report's JSON (`surge-report/<scenario>.json`).
        json: std::path::PathBuf,
        /// Where to write it.
        #[arg(long, default_value = "surge-report")]
        out: std::path::PathBuf,
    },
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
            Command::Surge(args) => surge::run(args).await,
            Command::SurgeReport { json, out } => {
                let report: surge::Report = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
                for f in report.write(&out)? {
                    println!("{f}");
                }
                Ok(())
            }
        }
    })
}

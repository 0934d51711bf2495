//! Benchmarks and load generators that drive Muster through its public API (the `muster-loadtest`
//! binary), and the surge simulator the end-to-end tests run at small scale.

pub mod intake;
pub mod matcher;
pub mod pandemic;
pub mod projections;
pub mod stats;
pub mod surge;

/// Starts the nats-server `bin` (default: the pinned install) with its store in `dir`.
pub async fn start_nats(
    bin: Option<&std::path::PathBuf>,
    dir: std::path::PathBuf,
) -> anyhow::Result<muster_natsd::NatsServer> {
    let bin = bin.cloned().unwrap_or_else(muster_natsd::default_binary);
    Ok(muster_natsd::NatsServer::start(muster_natsd::NodeConfig::new(bin, dir)).await?)
}

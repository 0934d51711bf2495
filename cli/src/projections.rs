//! `muster projections` and `muster replay`: the read models, live or rebuilt.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use muster_projections::replay::{self, Progress, Until};
use muster_schema::Timestamp;

use crate::LogArgs;

#[derive(Debug, Args)]
pub struct ProjectionsArgs {
    /// NATS server(s) to connect to, comma-separated (not used with --read-only).
    #[arg(long, env = "MUSTER_NATS_URL")]
    nats_url: Option<String>,
    /// Where the read models live (RocksDB).
    #[arg(
        long,
        env = "MUSTER_PROJECTIONS_DATA_DIR",
        default_value = ".muster/projections"
    )]
    data_dir: PathBuf,
    /// Address to serve the Query gRPC service on.
    #[arg(
        long,
        env = "MUSTER_PROJECTIONS_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    listen: SocketAddr,
    /// The durable consumer's name: one per projections instance.
    #[arg(
        long,
        env = "MUSTER_PROJECTIONS_CONSUMER",
        default_value = "muster-projections"
    )]
    consumer: String,
    /// Serve read models built by `muster replay as-of` from DIR for audit queries, without
    /// following the log.
    #[arg(long, value_name = "DIR")]
    read_only: Option<PathBuf>,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Drop the read models and rebuild them from sequence 1 (stop the projections service
    /// first; the old read models stay until the rebuild has finished).
    Rebuild {
        /// NATS server(s) to connect to, comma-separated.
        #[arg(long, env = "MUSTER_NATS_URL")]
        nats_url: String,
        /// The read models to rebuild.
        #[arg(
            long,
            env = "MUSTER_PROJECTIONS_DATA_DIR",
            default_value = ".muster/projections"
        )]
        data_dir: PathBuf,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Build the read models as they stood at a sequence or a log time into a new directory
    /// (serve it with `muster projections --read-only DIR`).
    AsOf {
        /// NATS server(s) to connect to, comma-separated.
        #[arg(long, env = "MUSTER_NATS_URL")]
        nats_url: String,
        /// Through this stream sequence.
        #[arg(long, required_unless_present = "time", conflicts_with = "time")]
        seq: Option<u64>,
        /// As of this log time (RFC 3339 in UTC, e.g. 2026-11-22T10:00:00Z): the log up to the
        /// first event recorded after it.
        #[arg(long)]
        time: Option<String>,
        /// A new directory to build into.
        #[arg(long)]
        into: PathBuf,
        #[command(flatten)]
        log: LogArgs,
    },
}

impl LogArgs {
    pub fn projections_config(
        &self,
        nats_url: &str,
        data_dir: PathBuf,
    ) -> muster_projections::Config {
        let mut c = muster_projections::Config::new(nats_url, data_dir);
        c.log = self.log_config();
        c
    }
}

pub async fn run(
    args: ProjectionsArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    if let Some(dir) = &args.read_only {
        let projections = muster_projections::Projections::open_read_only(dir)
            .with_context(|| format!("opening {} read-only", dir.display()))?;
        println!(
            "muster projections (read-only, {} at sequence {}) listening on {addr}",
            dir.display(),
            projections.applied()
        );
        muster_projections::serve(projections, listener, shutdown).await?;
        return Ok(());
    }
    let nats_url = args
        .nats_url
        .context("--nats-url (or MUSTER_NATS_URL) is required unless --read-only is given")?;
    let mut config = args.log.projections_config(&nats_url, args.data_dir);
    config.consumer = args.consumer;
    println!("muster projections listening on {addr}");
    muster_projections::run(config, listener, shutdown).await?;
    Ok(())
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` into log time.
pub fn parse_utc(s: &str) -> anyhow::Result<Timestamp> {
    let bad =
        || anyhow::anyhow!("--time {s:?}: expected RFC 3339 in UTC, e.g. 2026-11-22T10:00:00Z");
    let body = s.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = body.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let t: Vec<i64> = hms
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    if !(1..=12).contains(m) || !(1..=31).contains(day) || *hh > 23 || *mm > 59 || *ss > 60 {
        return Err(bad());
    }
    let micros_frac: i64 = if frac.is_empty() {
        0
    } else {
        if frac.len() > 6 || !frac.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        format!("{frac:0<6}").parse().map_err(|_| bad())?
    };
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let (y, m) = if *m <= 2 { (y - 1, m + 9) } else { (*y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3_600 + mm * 60 + ss;
    Timestamp::from_micros("--time", secs * 1_000_000 + micros_frac)
        .map_err(|v| anyhow::anyhow!("{v}"))
}

/// A progress line on stderr, at most five times a second.
fn progress_printer() -> impl FnMut(&Progress) {
    let mut last = Instant::now() - Duration::from_secs(1);
    move |p: &Progress| {
        if last.elapsed() < Duration::from_millis(200) && p.position < p.target {
            return;
        }
        last = Instant::now();
        let pct = if p.target == 0 {
            100.0
        } else {
            p.position as f64 * 100.0 / p.target as f64
        };
        let filled = (pct / 5.0) as usize;
        eprint!(
            "\r[{:<20}] {:5.1}%  {}/{}  {:.0} events/s  ETA {}s   ",
            "#".repeat(filled.min(20)),
            pct,
            p.position,
            p.target,
            p.events_per_s(),
            p.eta().as_secs()
        );
        let _ = std::io::stderr().flush();
    }
}

pub async fn replay(command: ReplayCommand) -> anyhow::Result<()> {
    let report = match command {
        ReplayCommand::Rebuild {
            nats_url,
            data_dir,
            log,
        } => replay::rebuild(&nats_url, &log.log_config(), &data_dir, progress_printer()).await?,
        ReplayCommand::AsOf {
            nats_url,
            seq,
            time,
            into,
            log,
        } => {
            let until = match (seq, time) {
                (Some(n), _) => Until::Seq(n),
                (None, Some(t)) => Until::Time(parse_utc(&t)?),
                (None, None) => anyhow::bail!("give --seq or --time"),
            };
            replay::build(
                &nats_url,
                &log.log_config(),
                &into,
                until,
                progress_printer(),
            )
            .await?
        }
    };
    eprintln!();
    println!(
        "built {} at sequence {}: {} events in {:.1}s ({:.0} events/s), {} set aside",
        report.dir.display(),
        report.position,
        report.events,
        report.elapsed.as_secs_f64(),
        report.events as f64 / report.elapsed.as_secs_f64().max(1e-9),
        report.set_aside
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_utc;

    #[test]
    fn utc_times_parse_to_microseconds_since_the_epoch() {
        assert_eq!(
            parse_utc("2026-11-22T10:00:00Z").expect("parses").micros(),
            1_795_341_600_000_000
        );
        assert_eq!(
            parse_utc("2000-03-01T00:00:00.5Z")
                .expect("parses")
                .micros(),
            951_868_800_500_000
        );
        for bad in [
            "2026-11-22 10:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-22T10:00:00+01:00",
            "x",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad} parsed");
        }
    }
}

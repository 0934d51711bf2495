//! `muster`: the one binary operators run.
//!
//! `main` only parses flags, sets up telemetry and signals, and calls the services' libraries.
//! - `muster up`: everything in one process against a nats-server it supervises as a child.
//! - `muster intake`: the intake service alone, against an external nats-server or cluster.
//! - `muster matcher`: the matcher alone.
//! - `muster projections`: the read models and the Query service alone (or a read-only snapshot).
//! - `muster replay rebuild|as-of`: rebuild the read models, or build them as of a point.
//! - `muster audit verify|export-round`: replay the log and check every recorded round.
//! - `muster audit evaluate`: decide every recorded round again under another policy, compare.

mod projections;
mod telemetry;
mod up;

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "muster",
    version,
    about = "Crisis-response coordination: needs, offers, verifications, matched."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run Muster on one machine: a supervised local nats-server and every service in one process.
    Up(up::UpArgs),
    /// Run the intake gRPC service alone against an external NATS server or cluster.
    Intake(IntakeArgs),
    /// Run the matcher alone against an external NATS server or cluster.
    Matcher(MatcherArgs),
    /// Run the projections (read models and the Query gRPC service) alone.
    Projections(projections::ProjectionsArgs),
    /// Rebuild the read models from the log, or build them as of a sequence or a log time.
    #[command(subcommand)]
    Replay(projections::ReplayCommand),
    /// Check the log: replay it through the matcher's engine.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Args)]
struct MatcherArgs {
    /// NATS server(s) to connect to, comma-separated.
    #[arg(long, env = "MUSTER_NATS_URL")]
    nats_url: String,
    /// Where the matcher keeps its snapshots (RocksDB); without it the state is rebuilt from
    /// the log at every start.
    #[arg(long, env = "MUSTER_MATCHER_DATA_DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Decide only the incidents of shard K of N (`K/N`, e.g. `2/3`): run N matchers, shards
    /// 1/N to N/N, to share a log's incidents between them. Default: every incident.
    #[arg(long, env = "MUSTER_MATCHER_SHARD", default_value = "1/1")]
    shard: muster_matcher::Shard,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Replay the log and check that every recorded round is reproduced exactly; exits non-zero
    /// at the first divergence (sequence, expected, got).
    Verify {
        /// NATS server(s) to connect to, comma-separated.
        #[arg(long, env = "MUSTER_NATS_URL")]
        nats_url: String,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Write one round's instance as JSON (needs, candidate offers with eligibility and scores,
    /// the chosen assignment) so it can be checked with an outside solver.
    ExportRound {
        /// NATS server(s) to connect to, comma-separated.
        #[arg(long, env = "MUSTER_NATS_URL")]
        nats_url: String,
        /// The incident.
        #[arg(long)]
        incident: String,
        /// The round's stream sequence S (its `through_seq`).
        #[arg(long)]
        seq: u64,
        /// Where to write the JSON (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Decide every recorded round again under another policy, on the situation that really
    /// arose at its cut, and compare what the two proposed (by urgency, distance, how the load
    /// spreads over volunteers).
    Evaluate {
        /// NATS server(s) to connect to, comma-separated.
        #[arg(long, env = "MUSTER_NATS_URL")]
        nats_url: String,
        /// A JSON file holding the policy fields to change, e.g. {"weight_fairness": 60}:
        /// weight_urgency, weight_waiting, weight_distance, weight_fairness, max_radius_m,
        /// acceptance_timeout_s, max_concurrent_per_volunteer. The others stay as recorded, and
        /// the rounds compared are the recorded ones.
        #[arg(long)]
        policy: std::path::PathBuf,
        /// Only this incident (default: every incident on the log).
        #[arg(long)]
        incident: Option<String>,
        /// Re-run the whole log instead: the alternative's rounds hold its own decisions, and
        /// each answer or completion on the log goes to the alternative's assignment of the
        /// same need (a model: volunteers asked instead might have answered otherwise).
        #[arg(long)]
        rerun: bool,
        /// Print the comparison as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        log: LogArgs,
    },
}

/// Settings of the log shared by every service.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Name of the JetStream stream holding the log.
    #[arg(long, env = "MUSTER_STREAM", default_value = "MUSTER")]
    pub stream: String,
    /// Replicas of the log's stream: 1 on a single node, 3 (or 5) in a cluster.
    #[arg(long, env = "MUSTER_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// Seconds JetStream remembers message ids to drop retried appends.
    #[arg(long, env = "MUSTER_DUPLICATE_WINDOW_S", default_value_t = 300)]
    pub duplicate_window_s: u64,
    /// Atomic batches intake commits concurrently.
    #[arg(long, env = "MUSTER_BATCHES_IN_FLIGHT", default_value_t = muster_log::AppenderConfig::default().max_in_flight)]
    pub batches_in_flight: usize,
    /// Seconds without events after which the matcher ticks an incident that has assignments
    /// waiting to be accepted (log time decides expiry).
    #[arg(long, env = "MUSTER_TICK_S", default_value_t = 30)]
    pub tick_s: u64,
    /// Microseconds intake waits to fill a batch once its first request has arrived.
    #[arg(long, env = "MUSTER_LINGER_US", default_value_t = muster_log::AppenderConfig::default().linger.as_micros() as u64)]
    pub linger_us: u64,
}

impl LogArgs {
    pub fn log_config(&self) -> muster_log::LogConfig {
        muster_log::LogConfig {
            stream: self.stream.clone(),
            replicas: self.replicas,
            duplicate_window: std::time::Duration::from_secs(self.duplicate_window_s),
        }
    }

    pub fn appender_config(&self) -> muster_log::AppenderConfig {
        muster_log::AppenderConfig {
            max_in_flight: self.batches_in_flight,
            linger: std::time::Duration::from_micros(self.linger_us),
            ..Default::default()
        }
    }

    pub fn intake_config(&self, nats_url: &str) -> muster_intake::Config {
        let mut c = muster_intake::Config::new(nats_url);
        c.log = self.log_config();
        c.appender = self.appender_config();
        c
    }

    pub fn matcher_config(&self, nats_url: &str) -> muster_matcher::Config {
        let mut c = muster_matcher::Config::new(nats_url);
        c.log = self.log_config();
        c.appender = self.appender_config();
        c.tick_every = std::time::Duration::from_secs(self.tick_s.max(1));
        c
    }
}

#[derive(Debug, Args)]
struct IntakeArgs {
    /// NATS server(s) to connect to, comma-separated.
    #[arg(long, env = "MUSTER_NATS_URL")]
    nats_url: String,
    /// Address to serve gRPC on.
    #[arg(long, env = "MUSTER_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    #[command(flatten)]
    log: LogArgs,
}

/// Resolves on the first SIGINT or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: `main` calls it before anything else, so a signal that
/// arrives while a service is still starting is not lost (and does not kill the process).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, signal = name, "cannot listen for the signal");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(interrupt, "SIGINT") => {},
            () = wait(terminate, "SIGTERM") => {},
        }
        tracing::info!("shutdown requested; draining");
    }
}

/// Runs `work` unless a shutdown signal comes first.
async fn interruptible(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::select! {
        r = work => r,
        () = shutdown => anyhow::bail!("interrupted"),
    }
}

async fn audit_verify(nats_url: &str, log: &LogArgs) -> anyhow::Result<()> {
    let report = muster_matcher::audit::verify(nats_url, &log.log_config()).await?;
    println!(
        "audited {} events: {} rounds and {} decisions reproduced exactly; {} malformed events set aside",
        report.events, report.rounds_verified, report.decisions_verified, report.set_aside
    );
    if report.rounds_cut_short > 0 {
        println!(
            "{} rounds cut short: the matcher stopped between two of a round's parts; what they recorded is reproduced, the rest was never decided (the next round decided again)",
            report.rounds_cut_short
        );
    }
    match report.divergence {
        None => {
            println!("audit passed");
            Ok(())
        }
        Some(d) => {
            println!(
                "first divergence at sequence {}:\n  expected: {}\n  got:      {}",
                d.seq, d.expected, d.got
            );
            anyhow::bail!("audit failed at sequence {}", d.seq)
        }
    }
}

async fn export_round(
    nats_url: &str,
    incident: &str,
    seq: u64,
    out: Option<&std::path::Path>,
    log: &LogArgs,
) -> anyhow::Result<()> {
    let incident = muster_schema::IncidentId::parse("--incident", incident)
        .map_err(|v| anyhow::anyhow!("{v}"))?;
    let json =
        muster_matcher::audit::export_round(nats_url, &log.log_config(), &incident, seq).await?;
    let text = serde_json::to_string_pretty(&json)?;
    match out {
        Some(path) => std::fs::write(path, text + "\n")?,
        None => println!("{text}"),
    }
    Ok(())
}

async fn evaluate(
    nats_url: &str,
    policy: &std::path::Path,
    incident: Option<&str>,
    rerun: bool,
    json: bool,
    log: &LogArgs,
) -> anyhow::Result<()> {
    use muster_matcher::evaluate::{Evaluation, Outcome, PolicyChange};
    let text = std::fs::read_to_string(policy)
        .map_err(|e| anyhow::anyhow!("--policy {}: {e}", policy.display()))?;
    let change = PolicyChange::from_json(&text)
        .map_err(|e| anyhow::anyhow!("--policy {}: {e}", policy.display()))?;
    let incident = incident
        .map(|i| muster_schema::IncidentId::parse("--incident", i))
        .transpose()
        .map_err(|v| anyhow::anyhow!("{v}"))?;
    if rerun {
        let found = muster_matcher::evaluate::rerun(
            nats_url,
            &log.log_config(),
            incident.as_ref(),
            &change,
        )
        .await?;
        return print_rerun(&found, json);
    }
    let found =
        muster_matcher::evaluate::evaluate(nats_url, &log.log_config(), incident.as_ref(), &change)
            .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    if found.is_empty() {
        println!("no incident on the log");
    }
    let row = |name: &str, f: &dyn Fn(&Outcome) -> String, e: &Evaluation| {
        println!(
            "  {name:<36} {:>14} {:>14}",
            f(&e.recorded),
            f(&e.alternative)
        );
    };
    for e in &found {
        println!(
            "\nincident {}: {} recorded rounds decided again ({} volunteers and organisations)",
            e.incident, e.rounds, e.providers
        );
        let (before, after) = (
            serde_json::to_value(&e.policy_recorded)?,
            serde_json::to_value(&e.policy_alternative)?,
        );
        for (field, was) in before.as_object().into_iter().flatten() {
            if let Some(now) = after.get(field).filter(|now| *now != was) {
                println!("  policy: {field} {was} -> {now}");
            }
        }
        println!("  {:<36} {:>14} {:>14}", "", "recorded", "alternative");
        row("proposals", &|o| o.proposals.to_string(), e);
        for u in (1..=5).rev() {
            row(
                &format!("  for needs of urgency {u}"),
                &|o| o.by_urgency[u - 1].to_string(),
                e,
            );
        }
        println!("  {:<36} {:>29}", "same need to the same provider", e.same);
        row(
            "expired / cancelled",
            &|o| format!("{} / {}", o.expired, o.cancelled),
            e,
        );
        row(
            "distance mean (m)",
            &|o| format!("{:.0}", o.distance_mean_m),
            e,
        );
        row(
            "distance p50 / p90 (m)",
            &|o| format!("{} / {}", o.distance_p50_m, o.distance_p90_m),
            e,
        );
        row(
            "to providers never asked before",
            &|o| o.to_first_timers.to_string(),
            e,
        );
        row(
            "to providers busy at the time",
            &|o| o.to_busy.to_string(),
            e,
        );
        row(
            "tasks the chosen had before (mean)",
            &|o| format!("{:.2}", o.prior_tasks_mean),
            e,
        );
    }
    Ok(())
}

fn print_rerun(found: &[muster_matcher::evaluate::Rerun], json: bool) -> anyhow::Result<()> {
    use muster_matcher::evaluate::Course;
    if json {
        println!("{}", serde_json::to_string_pretty(found)?);
        return Ok(());
    }
    if found.is_empty() {
        println!("no incident on the log");
    }
    for r in found {
        let row = |name: &str, f: &dyn Fn(&Course) -> String| {
            println!(
                "  {name:<40} {:>22} {:>22}",
                f(&r.recorded),
                f(&r.alternative)
            );
        };
        println!(
            "\nincident {}: the log re-run under the alternative ({} rounds at the recorded cuts; \
             answers follow the need)",
            r.incident, r.rounds
        );
        println!("  {:<40} {:>22} {:>22}", "", "recorded", "alternative");
        row("needs", &|c| c.needs.to_string());
        row("proposed / accepted / completed", &|c| {
            format!("{} / {} / {}", c.proposed, c.accepted, c.completed)
        });
        row("proposals", &|c| c.proposals.to_string());
        for u in (1..=5).rev() {
            row(
                &format!("urgency {u}: proposed, first p50 / p90 (s)"),
                &|c| match c.proposed_by_urgency[u - 1] {
                    0 => "-".to_string(),
                    n => format!(
                        "{n}, {:.2} / {:.2}",
                        c.first_proposal_p50_s[u - 1],
                        c.first_proposal_p90_s[u - 1]
                    ),
                },
            );
        }
        row("distance mean (m)", &|c| {
            format!("{:.0}", c.distance_mean_m)
        });
        row("providers proposed a task", &|c| {
            format!("{} of {}", c.providers_proposed, r.providers)
        });
        row("most proposals to one provider", &|c| {
            c.most_to_one.to_string()
        });
        row("Gini of proposals over providers", &|c| {
            format!("{:.3}", c.gini)
        });
        println!(
            "  {:<40} {:>45}",
            "answers with no assignment to go to", r.answers_dropped
        );
    }
    Ok(())
}

/// mimalloc instead of glibc's malloc: a profile of `muster up` in a surge spent a quarter of the
/// process's CPU in glibc's malloc and free (consolidating and unlinking chunks freed by other
/// threads); see BENCHMARKS.md for what the change measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal();
        let telemetry = telemetry::init("muster")?;
        let result = match cli.command {
            Command::Up(args) => up::run(args, shutdown).await,
            Command::Intake(args) => {
                let listener = tokio::net::TcpListener::bind(args.listen).await?;
                println!("muster intake listening on {}", listener.local_addr()?);
                muster_intake::run(args.log.intake_config(&args.nats_url), listener, shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            }
            Command::Matcher(args) => {
                let mut config = args.log.matcher_config(&args.nats_url);
                config.data_dir = args.data_dir;
                config.shard = args.shard;
                muster_matcher::run(config, shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            }
            Command::Projections(args) => projections::run(args, shutdown).await,
            // One-shot commands stop where they are on Ctrl-C.
            Command::Replay(command) => interruptible(projections::replay(command), shutdown).await,
            Command::Audit(AuditCommand::Verify { nats_url, log }) => {
                interruptible(audit_verify(&nats_url, &log), shutdown).await
            }
            Command::Audit(AuditCommand::ExportRound {
                nats_url,
                incident,
                seq,
                out,
                log,
            }) => {
                interruptible(
                    export_round(&nats_url, &incident, seq, out.as_deref(), &log),
                    shutdown,
                )
                .await
            }
            Command::Audit(AuditCommand::Evaluate {
                nats_url,
                policy,
                incident,
                rerun,
                json,
                log,
            }) => {
                interruptible(
                    evaluate(&nats_url, &policy, incident.as_deref(), rerun, json, &log),
                    shutdown,
                )
                .await
            }
        };
        if let Err(e) = &result {
            tracing::error!(error = format!("{e:#}"), "muster stopped with an error");
        }
        telemetry.shutdown();
        result
    })
}

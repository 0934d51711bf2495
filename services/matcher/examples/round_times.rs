//! Decides every recorded round of a log again and prints how long each took, with the
//! engine's counts (solves, lists widened, candidate pairs, offers looked at and judged): where
//! a surge's rounds spent their time, on the state they had.
//!
//! ```sh
//! round_times --nats-url nats://127.0.0.1:4222 [--min-open 1000] [--dump-at SEQ --dump FILE]
//! round_times --state FILE      # one saved state, engine 3 and the current engine
//! ```
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use muster_log::{LogConfig, LogConsumer};
use muster_matching::State;
use muster_matching::round::{ENGINE, round_with_stats};
use muster_schema::{IncidentId, subject};

#[derive(Parser)]
struct Args {
    /// The log to read (its stream is the default `MUSTER`).
    #[arg(long, conflicts_with = "state")]
    nats_url: Option<String>,
    /// Time only the rounds with at least this many open needs.
    #[arg(long, default_value_t = 0)]
    min_open: usize,
    /// Save the state (postcard) as it stood when the round recorded at this sequence was
    /// decided, into `--dump`, and stop.
    #[arg(long, requires = "dump")]
    dump_at: Option<u64>,
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Decide one saved state's round instead of a log's.
    #[arg(long)]
    state: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.state {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let state: State = postcard::from_bytes(&bytes).context("decoding the saved state")?;
        for (engine, threads) in [(3, 1), (ENGINE, 1), (ENGINE, 2)] {
            let t = Instant::now();
            let (r, s) = round_with_stats(&state, engine, threads).context("a known engine")?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            println!(
                "engine {engine}, {threads} thread(s): {} open needs in {ms:.1} ms: {s:?}, {} proposals, total {}",
                state.open_needs().count(),
                r.proposals.len(),
                r.total_score
            );
        }
        return Ok(());
    }
    let url = args.nats_url.context("--nats-url or --state")?;
    let (_client, mut stream) =
        muster_log::open(&url, "round-times", &LogConfig::default()).await?;
    let end = stream.info().await?.state.last_sequence;
    // Pass 1: which rounds were recorded.
    let mut recorded: BTreeSet<(IncidentId, u64)> = BTreeSet::new();
    let mut consumer = LogConsumer::ordered(&stream, vec![subject::all()], 1).await?;
    while let Some(d) = consumer.next().await {
        let d = d?;
        if let Ok(env) = d.envelope
            && let Some(r) = env.event.round_record()
        {
            recorded.insert((env.incident.clone(), r.through_seq));
        }
        if d.seq >= end {
            break;
        }
    }
    // Pass 2: fold, and decide each recorded round again right after its last input.
    let mut states: BTreeMap<IncidentId, State> = BTreeMap::new();
    let mut consumer = LogConsumer::ordered(&stream, vec![subject::all()], 1).await?;
    println!("seq\topen\tms\tsolves\twidened\tcandidates\tlooked\tjudged\tproposals");
    while let Some(d) = consumer.next().await {
        let d = d?;
        if let Ok(env) = d.envelope {
            let state = states.entry(env.incident.clone()).or_default();
            state.apply(d.seq, &env);
            if recorded.contains(&(env.incident.clone(), d.seq)) {
                if args.dump_at == Some(d.seq)
                    && let Some(path) = &args.dump
                {
                    std::fs::write(path, postcard::to_allocvec(&*state)?)?;
                    println!("state as of {} saved to {}", d.seq, path.display());
                    return Ok(());
                }
                let open = state.open_needs().count();
                if open >= args.min_open {
                    let t = Instant::now();
                    let (r, s) = round_with_stats(state, ENGINE, 2).context("the engine")?;
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    println!(
                        "{}\t{open}\t{ms:.1}\t{}\t{}\t{}\t{}\t{}\t{}",
                        d.seq,
                        s.solves,
                        s.widened,
                        s.candidates,
                        s.looked,
                        s.judged,
                        r.proposals.len()
                    );
                }
            }
        }
        if d.seq >= end {
            break;
        }
    }
    Ok(())
}

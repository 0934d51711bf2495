//! How fast a reader tailing the log (as the matcher does) reads while appends are fsynced.
//!
//! ```sh
//! cargo build --release --workspace --examples
//! target/release/examples/tail_under_ingest [BACKLOG] [APPEND_PER_S]   # default 100000 10000
//! ```
//!
//! A fresh fsync-durable nats-server; `BACKLOG` events are appended first. Then a reader starts
//! from sequence 1 while writers append `APPEND_PER_S` events a second in requests of 10 (as
//! agencies' bulk needs arrive), and the reader's catch-up is timed: how long until it has read
//! everything appended so far, and at what rate it read. Each reader (the client library's
//! ordered consumer, which the matcher used to tail the log with, and `LogConsumer::tail`, which
//! it uses now) is measured with the writers idle and with them running, each on a fresh server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use muster_log::{Appender, AppenderConfig, Expect, LogConfig, LogConsumer, Outgoing};
use muster_schema::{
    AgencyId, Envelope, Event, IncidentId, PartitionCode, Timestamp, events::TickV1, subject,
};

fn outgoing(n: u64) -> Outgoing {
    let incident = IncidentId::parse("i", "tail").expect("valid");
    let env = Envelope::generated(
        n,
        incident.clone(),
        PartitionCode::incident_wide(),
        Timestamp(1_800_000_000_000_000),
        AgencyId::parse("a", "bench").expect("valid"),
        Event::TickV1(TickV1 { incident }),
    );
    Outgoing {
        subject: subject::for_envelope(&env),
        payload: env.encode().into(),
        msg_id: format!("tail-{n}"),
        expect: Expect::Anything,
    }
}

/// Appends `count` events from `*next` on, `per_request` a request, 16 requests in flight,
/// at most `per_s` a second (0: as fast as the log takes them), until `stop` is set; `last`
/// keeps the highest sequence appended.
async fn write(
    appender: Arc<Appender>,
    next: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    count: u64,
    per_request: u64,
    per_s: u64,
    stop: Arc<AtomicBool>,
) {
    let start = Instant::now();
    let begin = next.load(Ordering::Relaxed);
    let end = begin.saturating_add(count);
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (appender, next, last, stop) =
                (appender.clone(), next.clone(), last.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let first = next.fetch_add(per_request, Ordering::Relaxed);
                    if first >= end {
                        return;
                    }
                    if per_s > 0 {
                        let due = Duration::from_secs_f64((first - begin) as f64 / per_s as f64);
                        tokio::time::sleep_until((start + due).into()).await;
                    }
                    let batch = (first..first + per_request).map(outgoing).collect();
                    let appended = appender.append(batch).await.expect("appended");
                    last.fetch_max(appended.last_seq(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("writer");
    }
}

async fn catch_up(
    stream: &async_nats::jetstream::stream::Stream,
    tail: bool,
    appended: &AtomicU64,
) -> anyhow::Result<(u64, Duration)> {
    let mut consumer = if tail {
        LogConsumer::tail(stream, vec![subject::all()], 1).await?
    } else {
        LogConsumer::ordered(stream, vec![subject::all()], 1).await?
    };
    let start = Instant::now();
    loop {
        let d = consumer
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the consumer closed"))??;
        if d.seq >= appended.load(Ordering::Relaxed) {
            return Ok((d.seq, start.elapsed()));
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let backlog: u64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let per_s: u64 = args.next().map_or(Ok(10_000), |a| a.parse())?;
    println!("tail_under_ingest: backlog {backlog}, appends {per_s}/s in requests of 10");
    for tail in [false, true] {
        for writing in [false, true] {
            let dir = tempfile::tempdir()?;
            let server = muster_loadtest::start_nats(None, dir.path().into()).await?;
            let (client, stream) =
                muster_log::open(&server.url(), "tail", &LogConfig::default()).await?;
            let (appender, task) = Appender::start(client.clone(), AppenderConfig::default());
            let appender = Arc::new(appender);
            let next = Arc::new(AtomicU64::new(1));
            let last = Arc::new(AtomicU64::new(0));
            let never = Arc::new(AtomicBool::new(false));
            write(
                appender.clone(),
                next.clone(),
                last.clone(),
                backlog,
                1000,
                0,
                never,
            )
            .await;
            next.store(backlog + 1, Ordering::Relaxed);
            let stop = Arc::new(AtomicBool::new(false));
            let writer = writing.then(|| {
                tokio::spawn(write(
                    appender.clone(),
                    next.clone(),
                    last.clone(),
                    u64::MAX / 4,
                    10,
                    per_s,
                    stop.clone(),
                ))
            });
            // The reader catches up with what had been appended 200 ms after the writers started.
            let appended = AtomicU64::new(0);
            let reading = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                appended.store(last.load(Ordering::Relaxed), Ordering::Relaxed);
                catch_up(&stream, tail, &appended).await
            };
            let (read, took) = reading.await?;
            stop.store(true, Ordering::Relaxed);
            if let Some(w) = writer {
                w.await?;
            }
            println!(
                "{:<40} writers {:<4}: read {read} events in {:.2} s: {:.0} events/s",
                if tail {
                    "LogConsumer::tail (pulls 5,000)"
                } else {
                    "LogConsumer::ordered (pulls 500)"
                },
                if writing { "on" } else { "off" },
                took.as_secs_f64(),
                read as f64 / took.as_secs_f64()
            );
            drop(appender);
            let _ = task.await;
            server.stop(Duration::from_secs(5)).await?;
        }
    }
    Ok(())
}

//! The intake benchmark: raw JetStream against Muster intake, one nats-server, one run.
//!
//! All four phases run against the same nats-server (`sync_interval: always`: every
//! acknowledged append is fsynced), each on a stream of the same settings as Muster's log:
//! - (a) raw pipelined single publishes (a window of outstanding publishes, each with a msg id);
//! - (b) raw atomic batches of 1000 (a few batches in flight);
//! - (c) intake `ReportNeed` unary requests from many concurrent gRPC clients;
//! - (d) intake `SubmitBulk` requests of 1000 `ReportNeed` commands.
//!
//! Raw payloads are real encoded `NeedReported` envelopes, the same size intake writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use muster_proto::v1 as pb;
use muster_proto::v1::intake_client::IntakeClient;
use tonic::transport::Channel;

use crate::stats::{CpuMeter, Phase};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// (a): messages published.
    #[arg(long, default_value_t = 30_000)]
    raw_single: u64,
    /// (a): publishes outstanding at once.
    #[arg(long, default_value_t = 256)]
    raw_window: usize,
    /// (b) and (d): batches (bulk requests) of 1000 sent.
    #[arg(long, default_value_t = 150)]
    batches: u64,
    /// (b) and (d): batches (bulk requests) in flight at once.
    #[arg(long, default_value_t = 4)]
    batch_concurrency: usize,
    /// (c): concurrent unary clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// (c): requests per client.
    #[arg(long, default_value_t = 600)]
    per_client: u64,
    /// Atomic batches intake's appender commits concurrently.
    #[arg(long, default_value_t = muster_log::AppenderConfig::default().max_in_flight)]
    in_flight: usize,
    /// How long intake's appender waits to fill a batch, in microseconds.
    #[arg(long, default_value_t = muster_log::AppenderConfig::default().linger.as_micros() as u64)]
    linger_us: u64,
    /// The `muster` binary to run intake with (default: next to this one).
    #[arg(long)]
    muster_bin: Option<std::path::PathBuf>,
    /// The nats-server binary (default: the pinned install).
    #[arg(long, env = "MUSTER_NATS_SERVER")]
    nats_server_bin: Option<std::path::PathBuf>,
}

const BATCH: u64 = 1000;
const INCIDENT: &str = "bench";
const AGENCY: &str = "bench-agency";
const T0: i64 = 1_800_000_000;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bin = args
        .nats_server_bin
        .clone()
        .unwrap_or_else(muster_natsd::default_binary);
    let version = muster_natsd::check_binary(&bin).await?;
    let server = crate::start_nats(Some(&bin), dir.path().into()).await?;
    let url = server.url();
    println!(
        "intake benchmark: {version}, sync_interval: always, {} cores, intake batches in flight {}, linger {} us, store {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.in_flight,
        args.linger_us,
        dir.path().display()
    );

    let client = muster_log::connect(&url, "muster-bench").await?;
    let js = async_nats::jetstream::new(client.clone());
    let payload = sample_payload();
    println!(
        "payload: {} bytes (an encoded NeedReported envelope)\n",
        payload.len()
    );

    let me = std::process::id();
    let raw_processes = [
        ("nats-server", server.pid().unwrap_or_default()),
        ("client", me),
    ];
    let meter = CpuMeter::start(&raw_processes);
    let mut a = raw_single(&js, &payload, &args).await?;
    meter.finish(&mut a);
    println!("{}", a.line());
    let meter = CpuMeter::start(&raw_processes);
    let mut b = raw_batches(&client, &js, &payload, &args).await?;
    meter.finish(&mut b);
    println!("{}", b.line());

    let (mut intake, addr) = start_intake(&args, &url).await?;
    let processes = [
        ("nats-server", server.pid().unwrap_or_default()),
        ("intake", intake.id().unwrap_or_default()),
        ("clients", me),
    ];
    let channels = connect_channels(addr, 8).await?;
    declare(&channels[0]).await?;
    let meter = CpuMeter::start(&processes);
    let mut c = intake_unary(&channels, &args).await?;
    meter.finish(&mut c);
    println!("{}", c.line());
    let meter = CpuMeter::start(&processes);
    let mut d = intake_bulk(&channels, &args).await?;
    meter.finish(&mut d);
    println!("{}", d.line());
    intake.kill().await?;
    server.stop(Duration::from_secs(10)).await?;

    let db = d.rate() / b.rate();
    let ca = c.rate() / a.rate();
    println!("\nratios (same server, same run):");
    println!(
        "  (d) bulk / (b) raw batches  = {db:.2}   target >= 0.80  {}",
        verdict(db >= 0.8)
    );
    println!(
        "  (c) unary / (a) raw singles = {ca:.2}   target >= 5.00  {}",
        verdict(ca >= 5.0)
    );
    println!(
        "\nmarkdown:\n| phase | events/s | p50 ms | p99 ms | CPU µs per event |\n|---|---|---|---|---|"
    );
    for p in [&a, &b, &c, &d] {
        println!("{}", p.markdown_row());
    }
    println!("| ratio (d)/(b) | {db:.2} | | | |\n| ratio (c)/(a) | {ca:.2} | | | |");
    Ok(())
}

/// Starts `muster intake` as its own process, so its CPU is measured apart from the clients'.
async fn start_intake(
    args: &Args,
    nats_url: &str,
) -> anyhow::Result<(tokio::process::Child, std::net::SocketAddr)> {
    use tokio::io::AsyncBufReadExt;
    let bin = match &args.muster_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("muster"),
    };
    let mut child = tokio::process::Command::new(&bin)
        .args(["intake", "--nats-url", nats_url, "--listen", "127.0.0.1:0"])
        .args(["--batches-in-flight", &args.in_flight.to_string()])
        .args(["--linger-us", &args.linger_us.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "starting {} (build it with cargo build --release -p muster): {e}",
                bin.display()
            )
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(addr) = line.strip_prefix("muster intake listening on ") {
            let addr = addr.trim().parse()?;
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, addr));
        }
    }
    anyhow::bail!("muster intake exited before listening")
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// A stream with the log's settings on its own subjects, so each phase counts only its own.
async fn bench_stream(js: &async_nats::jetstream::Context, name: &str) -> anyhow::Result<()> {
    let mut config = muster_log::LogConfig::default().stream_config();
    config.name = name.to_string();
    config.subjects = vec![format!("{}.>", name.to_lowercase())];
    js.create_stream(config).await?;
    Ok(())
}

pub(crate) fn need(key: &str, reference: &str) -> pb::ReportNeedRequest {
    let ts = |s| {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    };
    pb::ReportNeedRequest {
        idempotency_key: key.into(),
        incident: INCIDENT.into(),
        partition: "E08000035".into(),
        reference: reference.into(),
        need: Some(pb::NeedSpec {
            category: pb::Category::Food as i32,
            urgency: 3,
            party_size: 2,
            window: Some(pb::TimeWindow {
                start: ts(T0),
                end: ts(T0 + 86_400),
            }),
            location: Some(pb::Location {
                lat: 53.8,
                lon: -1.55,
            }),
            required_skills: vec!["driving".into()],
            required_verifications: vec![],
            vulnerable: false,
        }),
        personal: Some(pb::PersonalDetails {
            name: "A. Person".into(),
            contact: "07700 900123".into(),
            ..Default::default()
        }),
    }
}

/// The bytes intake would write for one `need(..)` request.
fn sample_payload() -> Bytes {
    use muster_schema::*;
    let incident = IncidentId::parse("i", INCIDENT).expect("valid");
    let agency = AgencyId::parse("a", AGENCY).expect("valid");
    let reference = Reference::parse("r", "bench-need-000000").expect("valid");
    let r = need("bench-key-000000", "bench-need-000000");
    let spec = muster_intake::convert::need_spec("need", r.need.as_ref()).expect("valid sample");
    let env = Envelope {
        schema_version: ENVELOPE_VERSION,
        event_id: EntityId([3; 16]),
        incident: incident.clone(),
        partition: PartitionCode::parse("p", "E08000035").expect("valid"),
        recorded_at: Timestamp(T0 * 1_000_000),
        actor: agency.clone(),
        idempotency_key: "bench-key-000000".into(),
        correlation_id: "bench-agency:bench-key-000000".into(),
        causation_id: None,
        event: Event::NeedReportedV1(events::NeedReportedV1 {
            need: EntityId::derive(ids::EntityKind::Need, &incident, &agency, &reference),
            reference,
            spec,
            personal: Personal::from_details(PersonalDetails {
                name: "A. Person".into(),
                contact: "07700 900123".into(),
                ..Default::default()
            })
            .expect("valid"),
        }),
    };
    env.encode().into()
}

fn msg_id_headers(id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    h
}

/// (a) Pipelined single publishes: a window of outstanding publishes, each acknowledged alone.
async fn raw_single(
    js: &async_nats::jetstream::Context,
    payload: &Bytes,
    args: &Args,
) -> anyhow::Result<Phase> {
    bench_stream(js, "BENCHA").await?;
    let mut phase = Phase::new("(a) raw JetStream, pipelined single publishes");
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    for i in 0..args.raw_single {
        if pending.len() >= args.raw_window
            && let Some(r) = pending.next().await
        {
            settle(&mut phase, r);
        }
        let sent = Instant::now();
        let ack = js
            .publish_with_headers(
                format!("bencha.e.{i}"),
                msg_id_headers(&format!("a{i}")),
                payload.clone(),
            )
            .await?;
        pending.push(async move { (sent, ack.await.map(|_| ())) });
    }
    while let Some(r) = pending.next().await {
        settle(&mut phase, r);
    }
    phase.elapsed = start.elapsed();
    Ok(phase)
}

/// Waits for a phase's workers and merges what they measured.
async fn join_workers(
    name: &'static str,
    start: Instant,
    workers: Vec<tokio::task::JoinHandle<Phase>>,
) -> anyhow::Result<Phase> {
    let mut phase = Phase::new(name);
    for w in workers {
        phase.merge(&w.await?);
    }
    phase.elapsed = start.elapsed();
    Ok(phase)
}

fn settle<E>(phase: &mut Phase, (sent, r): (Instant, Result<(), E>)) {
    phase.record(sent.elapsed());
    match r {
        Ok(()) => phase.events += 1,
        Err(_) => phase.errors += 1,
    }
}

/// (b) Atomic batches of 1000 published directly, a few in flight.
async fn raw_batches(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    payload: &Bytes,
    args: &Args,
) -> anyhow::Result<Phase> {
    bench_stream(js, "BENCHB").await?;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..args.batch_concurrency)
        .map(|w| {
            let (client, payload, next, total) = (client.clone(), payload.clone(), next.clone(), args.batches);
            tokio::spawn(async move {
                let mut phase = Phase::new("");
                loop {
                    let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if b >= total {
                        return phase;
                    }
                    let sent = Instant::now();
                    let batch_id = format!("w{w}-b{b}");
                    let mut ok = true;
                    for i in 1..=BATCH {
                        let mut h = msg_id_headers(&format!("b{b}-{i}"));
                        h.insert("Nats-Batch-Id", batch_id.as_str());
                        h.insert("Nats-Batch-Sequence", i.to_string().as_str());
                        let subject = format!("benchb.e.{b}.{i}");
                        if i < BATCH {
                            ok &= client.publish_with_headers(subject, h, payload.clone()).await.is_ok();
                        } else {
                            h.insert("Nats-Batch-Commit", "1");
                            let reply = client.request_with_headers(subject, h, payload.clone()).await;
                            ok &= matches!(&reply, Ok(m) if !String::from_utf8_lossy(&m.payload).contains("error"));
                        }
                    }
                    phase.record(sent.elapsed());
                    if ok {
                        phase.events += BATCH;
                    } else {
                        phase.errors += 1;
                    }
                }
            })
        })
        .collect();
    join_workers("(b) raw JetStream, atomic batches of 1000", start, workers).await
}

async fn connect_channels(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    Ok(out)
}

fn request<T>(body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-muster-agency", AGENCY.parse().expect("ascii agency"));
    r
}

async fn declare(channel: &Channel) -> anyhow::Result<()> {
    IntakeClient::new(channel.clone())
        .declare_incident(request(pb::DeclareIncidentRequest {
            idempotency_key: "declare".into(),
            incident: INCIDENT.into(),
            name: "Benchmark".into(),
            partitions: vec![],
            categories: vec![],
            policy: None,
        }))
        .await?;
    Ok(())
}

/// (c) Unary `ReportNeed` requests from many concurrent clients.
async fn intake_unary(channels: &[Channel], args: &Args) -> anyhow::Result<Phase> {
    let start = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|c| {
            let mut client = IntakeClient::new(channels[c % channels.len()].clone());
            let n = args.per_client;
            tokio::spawn(async move {
                let mut phase = Phase::new("");
                for i in 0..n {
                    let key = format!("c{c}-{i}");
                    let sent = Instant::now();
                    let r = client.report_need(request(need(&key, &key))).await;
                    phase.record(sent.elapsed());
                    match r {
                        Ok(_) => phase.events += 1,
                        Err(_) => phase.errors += 1,
                    }
                }
                phase
            })
        })
        .collect();
    join_workers(
        "(c) intake, unary ReportNeed, concurrent clients",
        start,
        workers,
    )
    .await
}

/// (d) `SubmitBulk` requests of 1000 `ReportNeed` commands, a few in flight.
async fn intake_bulk(channels: &[Channel], args: &Args) -> anyhow::Result<Phase> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..args.batch_concurrency)
        .map(|w| {
            let mut client = IntakeClient::new(channels[w % channels.len()].clone());
            let (next, total) = (next.clone(), args.batches);
            tokio::spawn(async move {
                let mut phase = Phase::new("");
                loop {
                    let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if b >= total {
                        return phase;
                    }
                    let items = (0..BATCH)
                        .map(|i| {
                            let reference = format!("bulk-{b}-{i}");
                            pb::BulkItem {
                                command: Some(pb::bulk_item::Command::ReportNeed(need(
                                    "", &reference,
                                ))),
                            }
                        })
                        .collect();
                    let bulk = pb::SubmitBulkRequest {
                        idempotency_key: format!("bulk-{b}"),
                        incident: INCIDENT.into(),
                        items,
                    };
                    let sent = Instant::now();
                    let r = client.submit_bulk(request(bulk)).await;
                    phase.record(sent.elapsed());
                    match r {
                        Ok(_) => phase.events += BATCH,
                        Err(_) => phase.errors += 1,
                    }
                }
            })
        })
        .collect();
    join_workers("(d) intake, SubmitBulk of 1000", start, workers).await
}

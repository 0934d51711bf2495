//! The surge simulator: plays a whole surge against a running Muster through its public gRPC API
//! and reports what a planner would ask (`muster-loadtest surge`).
//!
//! 1. Declares an incident and bulk-imports volunteers' checks and offers as an agency would.
//! 2. Streams needs at a rate that rises to a peak and falls again, from many concurrent clients
//!    (`ReportNeed`, or `SubmitBulk` of a few needs when `batch` > 1).
//! 3. Plays the volunteers: a `WatchIncident` stream shows each proposal; the volunteer accepts,
//!    declines or ignores it (decided by a hash of the assignment, so runs are comparable), and
//!    completes accepted tasks a little later. Ignored proposals expire in log time and the need
//!    is matched again.
//! 4. Waits until a volunteer holds every matchable need (or the drain time is up), then checks the
//!    invariants: from the log itself ([`invariants`]) and from the projections (every
//!    acknowledged event applied and readable).
//!
//! Measured: ingest rate, latency from a need's scheduled report to its proposal visible through
//! the Query API (p50/p99; from the scheduled time, so a client falling behind counts), the
//! matcher's and projections' share of it (acknowledged → visible), projection lag, fill rate,
//! time to match by urgency, and how evenly work spread over volunteers.

pub mod invariants;
pub mod report;
pub mod scenario;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use muster_proto::v1 as pb;
use muster_proto::v1::intake_client::IntakeClient;
use muster_proto::v1::query_client::QueryClient;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

pub use invariants::Invariant;
pub use report::Report;
pub use scenario::Scenario;

/// How the simulated volunteers answer.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// Percent of proposals accepted...
    pub accept: u64,
    /// ...declined (the rest are ignored and expire).
    pub decline: u64,
    /// Milliseconds before answering (uniform in the range).
    pub respond_ms: (u64, u64),
    /// Milliseconds from acceptance to completion.
    pub complete_ms: (u64, u64),
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            accept: 75,
            decline: 10,
            respond_ms: (100, 1_500),
            complete_ms: (1_000, 5_000),
        }
    }
}

/// One surge run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Muster's gRPC address (`http://host:port`).
    pub grpc: String,
    /// The log's NATS URL: when given, the invariants are checked against the log itself.
    pub nats_url: Option<String>,
    /// The log's stream name.
    pub stream: String,
    pub scenario: Scenario,
    /// The incident id (unique per run: a run's idempotency keys derive from it).
    pub incident: String,
    pub needs: usize,
    pub volunteers: usize,
    pub seed: u64,
    /// Needs arrive over this long, rising to a peak at half time and falling again.
    pub surge: Duration,
    /// Concurrent reporting clients.
    pub clients: usize,
    /// Needs per request: 1 sends `ReportNeed`, more send `SubmitBulk`.
    pub batch: usize,
    /// Bulk imports of 1,000 in flight at once.
    pub bulk_in_flight: usize,
    pub acceptance_timeout_s: u32,
    pub behaviour: Behaviour,
    /// How long to wait after the last need for every matchable need to be held by a volunteer.
    pub drain: Duration,
    /// Also wait (within `drain`) until an ignored proposal has expired, so a run shows the
    /// expiry and re-matching path (it takes the policy's acceptance timeout).
    pub await_expiry: bool,
    /// Print a progress line every second (to stderr).
    pub progress: bool,
}

impl Config {
    /// A small surge of `scenario`, as CI runs it: a few thousand events.
    pub fn small(scenario: Scenario, grpc: &str, nats_url: Option<String>) -> Self {
        Self {
            grpc: grpc.to_string(),
            nats_url,
            stream: muster_log::LogConfig::default().stream,
            scenario,
            incident: format!("ci-{}", scenario.name()),
            needs: 400,
            volunteers: 1_200,
            seed: 7,
            surge: Duration::from_secs(6),
            clients: 16,
            batch: 1,
            bulk_in_flight: 2,
            acceptance_timeout_s: 60,
            behaviour: Behaviour {
                respond_ms: (50, 800),
                complete_ms: (300, 2_000),
                ..Behaviour::default()
            },
            drain: Duration::from_secs(150),
            await_expiry: true,
            progress: false,
        }
    }
}

fn agency(s: Scenario) -> &'static str {
    match s {
        Scenario::Flood => "york-council",
        Scenario::Pandemic => "norfolk-council",
        Scenario::Hosting => "homes-for-ukraine",
    }
}

fn request<T>(s: Scenario, body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-muster-agency", agency(s).parse().expect("ascii"));
    r
}

/// How long a client keeps sending a request again while Muster is unavailable.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// Sends a request (`send` builds and sends it afresh each time) again while its outcome is
/// unknown: Muster answers UNAVAILABLE (restarting, or the log could not confirm the append),
/// or the connection broke under the request (tonic's UNKNOWN "transport error", or CANCELLED
/// "connection closed": it may have been stored). Pauses 100 ms doubling to 2 s, for up to `within`; the same request, so its
/// idempotency key makes the retry safe (a stored one is answered as a duplicate), as the API
/// asks of its clients. Any other answer is returned as it is.
async fn retrying<T, F, Fut>(within: Duration, mut send: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(100);
    loop {
        match send().await {
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) && tokio::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            answer => return answer,
        }
    }
}

/// A deterministic draw in 0..n from the seed and a string (an assignment's id).
fn draw(seed: u64, what: &str, salt: u64, n: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed ^ salt.rotate_left(17);
    for b in what.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    crate::matcher::Rng(h).below(n)
}

fn between(seed: u64, what: &str, salt: u64, (lo, hi): (u64, u64)) -> Duration {
    Duration::from_millis(lo + draw(seed, what, salt, hi.saturating_sub(lo) + 1))
}

/// When the `i`-th of `n` needs is due: the rate rises linearly to a peak at half time and falls
/// back (a triangle), so the cumulative share is 2u² before the peak and 1 − 2(1−u)² after.
pub fn due(i: usize, n: usize, surge: Duration) -> Duration {
    let q = (i as f64 + 0.5) / n.max(1) as f64;
    let u = if q <= 0.5 {
        (q / 2.0).sqrt()
    } else {
        1.0 - ((1.0 - q) / 2.0).sqrt()
    };
    surge.mul_f64(u)
}

#[derive(Debug, Default)]
struct NeedTrack {
    scheduled: Duration,
    acked: Option<Duration>,
    seq: u64,
    urgency: u32,
    unmatchable: bool,
    proposed: Option<Duration>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Second {
    needs_acked: u64,
    events_acked: u64,
    proposals: u64,
    accepted: u64,
    projection_lag: u64,
}

#[derive(Debug, Default)]
struct Counts {
    proposals: u64,
    accepted: u64,
    declined: u64,
    ignored: u64,
    expired: u64,
    cancelled: u64,
    completed: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Everything the run observed, shared by the clients, the watcher and the sampler.
#[derive(Debug)]
pub(crate) struct Tracker {
    start: Instant,
    needs: Vec<NeedTrack>,
    by_id: HashMap<String, usize>,
    /// Proposals seen before their need's acknowledgement came back.
    early: HashMap<String, Duration>,
    max_seq: u64,
    seconds: BTreeMap<u64, Second>,
    offered: HashSet<String>,
    tasks: HashMap<String, u64>,
    counts: Counts,
    /// Each need's state as the watch last showed it: `true` while a volunteer holds it
    /// (proposed, accepted or completed).
    held: HashMap<String, bool>,
    /// The most the reporting clients fell behind the schedule.
    behind: Duration,
}

impl Tracker {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn second(&mut self) -> &mut Second {
        let s = self.now().as_secs();
        self.seconds.entry(s).or_default()
    }

    fn acked(&mut self, seq: u64, events: u64) {
        self.max_seq = self.max_seq.max(seq);
        self.second().events_acked += events;
    }

    fn need_acked(&mut self, i: usize, id: String, seq: u64) {
        let now = self.now();
        self.acked(seq, 1);
        self.second().needs_acked += 1;
        let n = &mut self.needs[i];
        n.acked = Some(now);
        n.seq = seq;
        if let Some(at) = self.early.remove(&id) {
            n.proposed.get_or_insert(at);
        }
        self.by_id.insert(id, i);
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        self.counts.errors += 1;
        if self.counts.first_error.is_none() {
            self.counts.first_error = Some(e.to_string());
        }
    }

    /// Matchable, acknowledged needs a volunteer holds right now.
    fn matched_now(&self) -> u64 {
        self.by_id
            .iter()
            .filter(|(id, i)| !self.needs[**i].unmatchable && self.held.get(*id) == Some(&true))
            .count() as u64
    }

    fn matchable(&self) -> u64 {
        self.needs.iter().filter(|n| !n.unmatchable).count() as u64
    }
}

type Shared = Arc<Mutex<Tracker>>;

/// Locks what the run's tasks share; a task that panicked holding it leaves data still worth
/// reporting.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn connect(grpc: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        let endpoint = Channel::from_shared(grpc.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let mut last = None;
        let mut channel = None;
        for _ in 0..50 {
            match endpoint.connect().await {
                Ok(c) => {
                    channel = Some(c);
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        match channel {
            Some(c) => out.push(c),
            None => anyhow::bail!("connecting to {grpc}: {last:?}"),
        }
    }
    Ok(out)
}

/// Runs one surge and returns its report (invariants included).
pub async fn drive(config: Config) -> anyhow::Result<Report> {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let plan = scenario::plan(
        config.scenario,
        scenario::Size {
            needs: config.needs,
            volunteers: config.volunteers,
            now_s,
            acceptance_timeout_s: config.acceptance_timeout_s,
        },
        config.seed,
    );
    let channels = connect(&config.grpc, config.clients.div_ceil(16)).await?;
    let mut intake = IntakeClient::new(channels[0].clone());
    let mut query = QueryClient::new(channels[0].clone());
    let s = config.scenario;
    let incident = config.incident.clone();

    let tracker: Shared = Arc::new(Mutex::new(Tracker {
        start: Instant::now(),
        needs: plan
            .needs
            .iter()
            .enumerate()
            .map(|(i, n)| NeedTrack {
                scheduled: due(i, plan.needs.len(), config.surge),
                urgency: n.urgency,
                unmatchable: n.unmatchable.is_some(),
                ..NeedTrack::default()
            })
            .collect(),
        by_id: HashMap::new(),
        early: HashMap::new(),
        max_seq: 0,
        seconds: BTreeMap::new(),
        offered: HashSet::new(),
        tasks: HashMap::new(),
        counts: Counts::default(),
        held: HashMap::new(),
        behind: Duration::ZERO,
    }));

    let declared = intake
        .declare_incident(request(
            s,
            pb::DeclareIncidentRequest {
                idempotency_key: format!("{incident}-declare"),
                incident: incident.clone(),
                name: format!("{} surge ({incident})", s.name()),
                partitions: vec![],
                categories: vec![],
                policy: Some(plan.policy),
            },
        ))
        .await
        .context("declaring the incident")?
        .into_inner();
    lock(&tracker).acked(declared.sequence, 1);

    // The volunteers watch from before anything is proposed.
    let (stop_watch, watch_stopped) = tokio::sync::watch::channel(false);
    let in_flight = Arc::new(AtomicI64::new(0));
    let watcher = tokio::spawn(volunteers(
        channels.clone(),
        config.clone(),
        tracker.clone(),
        in_flight.clone(),
        watch_stopped,
    ));

    // 1. Registrations: checks and offers in bulks of 1,000.
    let registrations = import(&channels, &config, &plan, &tracker).await?;
    let registered_through = lock(&tracker).max_seq;
    let caught_up = wait_applied(&mut query, registered_through, Duration::from_secs(600)).await?;
    // Through the whole pipeline: acknowledged by intake and applied by the projections.
    let pipeline_s = caught_up
        .duration_since(registrations.started)
        .as_secs_f64();

    // 2. The surge of needs, with a sampler for projection lag and progress.
    let (stop_sampler, sampler_stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample(
        channels[0].clone(),
        tracker.clone(),
        config.progress,
        sampler_stopped,
    ));
    let surge = report_needs(&channels, &config, &plan, &tracker).await;

    // 3. Drain: every matchable need held by a volunteer, every volunteer's answer sent, and
    // (when asked) an ignored proposal seen to expire.
    let drain_started = Instant::now();
    loop {
        let (matched, matchable, expiry_pending) = {
            let t = lock(&tracker);
            let c = &t.counts;
            let pending = config.await_expiry && c.ignored > 0 && c.expired == 0;
            (t.matched_now(), t.matchable(), pending)
        };
        if matched >= matchable && !expiry_pending && in_flight.load(Ordering::SeqCst) == 0 {
            break;
        }
        if drain_started.elapsed() > config.drain {
            eprintln!(
                "{}: drain time up with {matched} of {matchable} matchable needs held by a volunteer",
                config.incident
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_sampler.send(true);
    let _ = sampler.await;
    let max_seq = lock(&tracker).max_seq;
    wait_applied(&mut query, max_seq, Duration::from_secs(120)).await?;
    let _ = stop_watch.send(true);
    let _ = watcher.await;

    let dashboard = query
        .get_dashboard(pb::GetDashboardRequest {
            incident: incident.clone(),
            unmet_thresholds_s: vec![],
            min_sequence: max_seq,
        })
        .await
        .context("reading the dashboard")?
        .into_inner();

    let mut invariants = Vec::new();
    invariants.push(projections_hold(&mut query, &tracker, &plan, &dashboard).await?);
    if let Some(url) = &config.nats_url {
        let events = read_log(url, &config.stream, &incident, max_seq).await?;
        let design: HashMap<String, Option<&'static str>> = {
            let t = lock(&tracker);
            t.by_id
                .iter()
                .map(|(id, &i)| (id.clone(), plan.needs[i].unmatchable))
                .collect()
        };
        invariants.extend(invariants::check(&events, &design));
    }

    let t = lock(&tracker);
    Ok(report::build(
        &config,
        &plan,
        &t,
        report::Phases {
            registrations,
            pipeline_s,
            surge,
        },
        &dashboard,
        invariants,
    ))
}

/// What the registration phase measured.
#[derive(Debug)]
pub(crate) struct Import {
    started: Instant,
    events: u64,
    seconds: f64,
    latency: Histogram<u64>,
}

async fn import(
    channels: &[Channel],
    config: &Config,
    plan: &scenario::Plan,
    tracker: &Shared,
) -> anyhow::Result<Import> {
    let started = Instant::now();
    let chunks: Vec<Vec<pb::bulk_item::Command>> = plan
        .registrations
        .chunks(1_000)
        .map(<[_]>::to_vec)
        .collect();
    let results: Vec<anyhow::Result<(u64, Duration)>> =
        futures::stream::iter(chunks.into_iter().enumerate().map(|(k, items)| {
            let client = IntakeClient::new(channels[k % channels.len()].clone());
            let incident = config.incident.clone();
            let s = config.scenario;
            let tracker = tracker.clone();
            async move {
                let n = items.len() as u64;
                let sent = Instant::now();
                let bulk = pb::SubmitBulkRequest {
                    idempotency_key: format!("{incident}-import-{k}"),
                    incident,
                    items: items
                        .into_iter()
                        .map(|command| pb::BulkItem {
                            command: Some(command),
                        })
                        .collect(),
                };
                let reply = retrying(RETRY_FOR, || {
                    let (mut client, bulk) = (client.clone(), bulk.clone());
                    async move { client.submit_bulk(request(s, bulk)).await }
                })
                .await
                .with_context(|| format!("bulk import {k}"))?
                .into_inner();
                let last = reply.items.iter().map(|i| i.sequence).max().unwrap_or(0);
                lock(&tracker).acked(last, n);
                Ok((n, sent.elapsed()))
            }
        }))
        .buffer_unordered(config.bulk_in_flight.max(1))
        .collect()
        .await;
    let mut latency = report::histogram();
    let mut events = 0;
    for r in results {
        let (n, took) = r?;
        events += n;
        latency.saturating_record(took.as_micros() as u64);
    }
    Ok(Import {
        started,
        events,
        seconds: started.elapsed().as_secs_f64(),
        latency,
    })
}

/// Waits until the projections have applied `seq`; returns when they had.
async fn wait_applied(
    query: &mut QueryClient<Channel>,
    seq: u64,
    within: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let p = query
            .get_position(pb::GetPositionRequest {})
            .await
            .context("reading the projections' position")?
            .into_inner();
        if p.applied_sequence >= seq {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the projections applied {} of {seq} within {within:?}",
                p.applied_sequence
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the needs phase measured.
#[derive(Debug)]
pub(crate) struct SurgePhase {
    seconds: f64,
    acked: u64,
    ack_latency: Histogram<u64>,
}

async fn report_needs(
    channels: &[Channel],
    config: &Config,
    plan: &scenario::Plan,
    tracker: &Shared,
) -> SurgePhase {
    let start = lock(tracker).start;
    let phase_start = start.elapsed();
    let permits = Arc::new(Semaphore::new(config.clients.max(1)));
    let latency = Arc::new(Mutex::new(report::histogram()));
    let mut tasks = tokio::task::JoinSet::new();
    let n = plan.needs.len();
    let mut i = 0;
    let mut k = 0usize;
    while i < n {
        let due_at = phase_start + due(i, n, config.surge);
        tokio::time::sleep_until((start + due_at).into()).await;
        let now = start.elapsed();
        let mut j = i + 1;
        while j < n && j - i < config.batch.max(1) && phase_start + due(j, n, config.surge) <= now {
            j += 1;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        {
            let mut t = lock(tracker);
            for idx in i..j {
                t.needs[idx].scheduled = phase_start + due(idx, n, config.surge);
            }
            let behind = start.elapsed().saturating_sub(due_at);
            t.behind = t.behind.max(behind);
        }
        let items: Vec<(usize, pb::ReportNeedRequest)> =
            (i..j).map(|x| (x, plan.needs[x].request.clone())).collect();
        let client = IntakeClient::new(channels[k % channels.len()].clone());
        k += 1;
        let tracker = tracker.clone();
        let latency = latency.clone();
        let incident = config.incident.clone();
        let s = config.scenario;
        tasks.spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            let first = items[0].0;
            let result: Result<Vec<(usize, String, u64)>, tonic::Status> = if items.len() == 1 {
                let (x, mut r) = items.into_iter().next().expect("one");
                r.idempotency_key = format!("{incident}-need-{x}");
                r.incident = incident;
                retrying(RETRY_FOR, || {
                    let (mut client, r) = (client.clone(), r.clone());
                    async move { client.report_need(request(s, r)).await }
                })
                .await
                .map(|reply| {
                    let reply = reply.into_inner();
                    vec![(x, reply.entity_id, reply.sequence)]
                })
            } else {
                let idx: Vec<usize> = items.iter().map(|(x, _)| *x).collect();
                let bulk = pb::SubmitBulkRequest {
                    idempotency_key: format!("{incident}-needs-{first}"),
                    incident,
                    items: items
                        .into_iter()
                        .map(|(_, r)| pb::BulkItem {
                            command: Some(pb::bulk_item::Command::ReportNeed(r)),
                        })
                        .collect(),
                };
                retrying(RETRY_FOR, || {
                    let (mut client, bulk) = (client.clone(), bulk.clone());
                    async move { client.submit_bulk(request(s, bulk)).await }
                })
                .await
                .map(|reply| {
                    idx.into_iter()
                        .zip(reply.into_inner().items)
                        .map(|(x, r)| (x, r.entity_id, r.sequence))
                        .collect()
                })
            };
            let took = sent.elapsed();
            let mut t = lock(&tracker);
            match result {
                Ok(acks) => {
                    for (x, id, seq) in acks {
                        t.need_acked(x, id, seq);
                        let scheduled = t.needs[x].scheduled;
                        let since_due = t.now().saturating_sub(scheduled).max(took);
                        lock(&latency).saturating_record(since_due.as_micros() as u64);
                    }
                }
                Err(e) => t.error(format!("reporting needs from {first}: {e}")),
            }
        });
        i = j;
    }
    while tasks.join_next().await.is_some() {}
    let seconds = (start.elapsed() - phase_start).as_secs_f64();
    let acked = lock(tracker).by_id.len() as u64;
    let ack_latency = lock(&latency).clone();
    SurgePhase {
        seconds,
        acked,
        ack_latency,
    }
}

/// Samples the projections' lag every second and prints progress.
async fn sample(
    channel: Channel,
    tracker: Shared,
    progress: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut query = QueryClient::new(channel);
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        let Ok(p) = query.get_position(pb::GetPositionRequest {}).await else {
            continue;
        };
        let mut t = lock(&tracker);
        let lag = t.max_seq.saturating_sub(p.into_inner().applied_sequence);
        t.second().projection_lag = lag;
        if progress {
            let acked = t.by_id.len();
            eprintln!(
                "[{:>4}s] needs {acked}/{} acknowledged, {} of {} matchable held by a volunteer, {} proposals, projection lag {lag} events, errors {}",
                t.now().as_secs(),
                t.needs.len(),
                t.matched_now(),
                t.matchable(),
                t.counts.proposals,
                t.counts.errors,
            );
        }
    }
}

/// The volunteers: watch the incident, answer proposals, complete accepted tasks.
async fn volunteers(
    channels: Vec<Channel>,
    config: Config,
    tracker: Shared,
    in_flight: Arc<AtomicI64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut query = QueryClient::new(channels[0].clone());
    let mut after = 0u64;
    let mut k = 0usize;
    'watch: loop {
        let stream = query
            .watch_incident(pb::WatchIncidentRequest {
                incident: config.incident.clone(),
                after_sequence: after,
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(e) => {
                lock(&tracker).error(format!("watching: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let change = tokio::select! {
                c = stream.message() => c,
                _ = stop.changed() => break 'watch,
            };
            let change = match change {
                Ok(Some(c)) => c,
                Ok(None) => continue 'watch,
                Err(e) => {
                    lock(&tracker).error(format!("watch stream: {e}"));
                    continue 'watch;
                }
            };
            after = change.sequence;
            if change.entity_kind != "assign" {
                continue;
            }
            let action = observe(&tracker, &config, &change);
            if let Some(action) = action {
                k += 1;
                let client = IntakeClient::new(channels[k % channels.len()].clone());
                in_flight.fetch_add(1, Ordering::SeqCst);
                let tracker = tracker.clone();
                let in_flight = in_flight.clone();
                let incident = config.incident.clone();
                let s = config.scenario;
                tokio::spawn(async move {
                    act(client, s, incident, action, &tracker).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    }
}

#[derive(Debug)]
enum Action {
    Respond(String, pb::AssignmentResponse, Duration),
    Complete(String, Duration),
}

/// Records a change to an assignment; returns what the volunteer does about it.
fn observe(tracker: &Shared, config: &Config, c: &pb::Change) -> Option<Action> {
    let b = &config.behaviour;
    let mut t = lock(tracker);
    let now = t.now();
    match c.status.as_str() {
        "proposed" => {
            t.counts.proposals += 1;
            t.second().proposals += 1;
            t.offered.insert(c.volunteer.clone());
            t.held.insert(c.need_id.clone(), true);
            match t.by_id.get(&c.need_id) {
                Some(&i) => {
                    t.needs[i].proposed.get_or_insert(now);
                }
                None => {
                    t.early.entry(c.need_id.clone()).or_insert(now);
                }
            }
            let roll = draw(config.seed, &c.entity_id, 1, 100);
            let delay = between(config.seed, &c.entity_id, 2, b.respond_ms);
            if roll < b.accept {
                Some(Action::Respond(
                    c.entity_id.clone(),
                    pb::AssignmentResponse::Accept,
                    delay,
                ))
            } else if roll < b.accept + b.decline {
                Some(Action::Respond(
                    c.entity_id.clone(),
                    pb::AssignmentResponse::Decline,
                    delay,
                ))
            } else {
                t.counts.ignored += 1;
                None
            }
        }
        "accepted" => {
            t.counts.accepted += 1;
            t.second().accepted += 1;
            *t.tasks.entry(c.volunteer.clone()).or_default() += 1;
            Some(Action::Complete(
                c.entity_id.clone(),
                between(config.seed, &c.entity_id, 3, b.complete_ms),
            ))
        }
        "completed" => {
            t.counts.completed += 1;
            None
        }
        other => {
            match other {
                "declined" => t.counts.declined += 1,
                "expired" => t.counts.expired += 1,
                "cancelled" => t.counts.cancelled += 1,
                _ => {}
            }
            t.held.insert(c.need_id.clone(), false);
            None
        }
    }
}

async fn act(
    client: IntakeClient<Channel>,
    s: Scenario,
    incident: String,
    action: Action,
    tracker: &Shared,
) {
    let result = match action {
        Action::Respond(a, response, delay) => {
            tokio::time::sleep(delay).await;
            let answer = pb::RespondToAssignmentRequest {
                idempotency_key: format!("answer-{a}"),
                incident,
                assignment_id: a,
                response: response as i32,
                reason: if response == pb::AssignmentResponse::Decline {
                    "cannot make it".into()
                } else {
                    String::new()
                },
            };
            retrying(RETRY_FOR, || {
                let (mut client, answer) = (client.clone(), answer.clone());
                async move { client.respond_to_assignment(request(s, answer)).await }
            })
            .await
        }
        Action::Complete(a, delay) => {
            tokio::time::sleep(delay).await;
            let done = pb::CompleteAssignmentRequest {
                idempotency_key: format!("done-{a}"),
                incident,
                assignment_id: a,
                personal: None,
            };
            retrying(RETRY_FOR, || {
                let (mut client, done) = (client.clone(), done.clone());
                async move { client.complete_assignment(request(s, done)).await }
            })
            .await
        }
    };
    let mut t = lock(tracker);
    match result {
        Ok(r) => t.acked(r.into_inner().sequence, 1),
        Err(e) => t.error(format!("volunteer answer: {e}")),
    }
}

/// No acknowledged event missing from the projections: they applied the last acknowledged
/// sequence, every acknowledged need reads back (at least as new as its acknowledgement), and the
/// dashboard counts as many needs as were acknowledged.
async fn projections_hold(
    query: &mut QueryClient<Channel>,
    tracker: &Shared,
    plan: &scenario::Plan,
    dashboard: &pb::Dashboard,
) -> anyhow::Result<Invariant> {
    const MAX_READS: usize = 20_000;
    let (needs, offers_acked): (Vec<(String, u64)>, u64) = {
        let t = lock(tracker);
        let mut v: Vec<(String, u64)> = t
            .by_id
            .iter()
            .map(|(id, &i)| (id.clone(), t.needs[i].seq))
            .collect();
        v.sort();
        let offers = plan
            .registrations
            .iter()
            .filter(|c| matches!(c, pb::bulk_item::Command::RegisterOffer(_)))
            .count() as u64;
        (v, offers)
    };
    let step = needs.len().div_ceil(MAX_READS).max(1);
    let sample: Vec<(String, u64)> = needs.iter().step_by(step).cloned().collect();
    let checked = sample.len() as u64;
    let problems: Vec<String> = futures::stream::iter(sample.into_iter().map(|(id, seq)| {
        let mut q = query.clone();
        async move {
            match q
                .get_need(pb::GetEntityRequest {
                    id: id.clone(),
                    min_sequence: seq,
                    ..Default::default()
                })
                .await
            {
                Ok(n) if n.get_ref().last_sequence >= seq => None,
                Ok(n) => Some(format!(
                    "need {id} reads as of {} though acknowledged at {seq}",
                    n.get_ref().last_sequence
                )),
                Err(e) => Some(format!("need {id} acknowledged at {seq}: {}", e.message())),
            }
        }
    }))
    .buffer_unordered(32)
    .filter_map(|p| async move { p })
    .collect()
    .await;
    let counted: i64 = dashboard.needs_by_status.iter().map(|c| c.count).sum();
    let offers: i64 = dashboard.offers_by_status.iter().map(|c| c.count).sum();
    let mut detail = Vec::new();
    if counted != needs.len() as i64 {
        detail.push(format!(
            "dashboard counts {counted} needs, {} acknowledged",
            needs.len()
        ));
    }
    if offers != offers_acked as i64 {
        detail.push(format!(
            "dashboard counts {offers} offers, {offers_acked} acknowledged"
        ));
    }
    let count = detail.len() + problems.len();
    detail.extend(problems.iter().take(5).cloned());
    let held = count == 0;
    Ok(Invariant {
        name: "no acknowledged event missing from the projections".into(),
        held,
        checked,
        detail: if held {
            format!(
                "applied through {}; {checked} acknowledged needs read back; dashboard counts {counted} needs and {offers} offers",
                dashboard.applied_sequence
            )
        } else {
            format!("{count} problems, first: {}", detail.join("; "))
        },
    })
}

/// The incident's events on the log through `through`, in order.
async fn read_log(
    url: &str,
    stream: &str,
    incident: &str,
    through: u64,
) -> anyhow::Result<Vec<(u64, muster_schema::Envelope)>> {
    let client = muster_log::connect(url, "muster-surge-check")
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(stream)
        .await
        .with_context(|| format!("opening the log stream {stream}"))?;
    let mut consumer = muster_log::LogConsumer::replay(&stream, 1).await?;
    let mut out = Vec::new();
    while let Some(d) = consumer.next().await {
        let d = d?;
        let seq = d.seq;
        if let Ok(env) = d.envelope
            && env.incident.as_str() == incident
        {
            out.push((seq, env));
        }
        if seq >= through {
            break;
        }
    }
    Ok(out)
}

/// `muster-loadtest surge`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenarios to run, one after another against the same Muster.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Scenario::Flood, Scenario::Pandemic, Scenario::Hosting])]
    pub scenario: Vec<Scenario>,
    /// Needs reported in each scenario.
    #[arg(long, default_value_t = 10_000)]
    pub needs: usize,
    /// Volunteers (and organisations) registered in each scenario.
    #[arg(long, default_value_t = 30_000)]
    pub volunteers: usize,
    /// Seconds over which the needs arrive (rising to a peak of 2 × needs ÷ seconds per second).
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Concurrent reporting clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Needs per request (1: ReportNeed; more: SubmitBulk).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Bulk imports in flight during registration.
    #[arg(long, default_value_t = 4)]
    pub bulk_in_flight: usize,
    /// Seconds of log time before an unanswered proposal expires (the policy's minimum is 60).
    #[arg(long, default_value_t = 60)]
    pub acceptance_timeout_s: u32,
    /// Seconds to wait after the surge for every matchable need to be held by a volunteer.
    #[arg(long, default_value_t = 180)]
    pub drain_s: u64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Drive an already running Muster at this gRPC address instead of starting `muster up`.
    #[arg(long)]
    pub target: Option<String>,
    /// With --target: the log's NATS URL, to check the invariants against the log.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// The muster binary (default: next to this one).
    #[arg(long)]
    pub muster_bin: Option<std::path::PathBuf>,
    /// Where the report goes (Markdown, JSON, SVG per scenario).
    #[arg(long, default_value = "surge-report")]
    pub report: std::path::PathBuf,
}

/// A `muster up` started for a run, stopped with SIGTERM.
#[derive(Debug)]
pub struct Muster {
    pub child: tokio::process::Child,
    /// `http://host:port`
    pub grpc: String,
    pub nats_url: String,
}

impl Muster {
    /// Starts `bin up` on a free port with its data in `data_dir`, passing `extra` arguments,
    /// and waits for its "muster is up" line.
    pub async fn start(
        bin: &std::path::Path,
        data_dir: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(bin)
            .arg("up")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it: cargo build --release --workspace)",
                    bin.display()
                )
            })?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("muster is up") {
                    return Ok(line);
                }
            }
            anyhow::bail!("muster up exited before it was up")
        })
        .await
        .context("muster up did not come up within 120 s")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let after = |marker: &str| -> anyhow::Result<String> {
            line.split(marker)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(|w| w.trim_end_matches([',', ';']).to_string())
                .with_context(|| format!("no {marker:?} in {line:?}"))
        };
        Ok(Self {
            grpc: format!("http://{}", after("gRPC on ")?),
            nats_url: after("log on ")?,
            child,
        })
    }

    /// Stops it as Ctrl-C would and waits for a clean exit.
    pub async fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        Ok(tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await??)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (muster, grpc, nats_url) = match &args.target {
        Some(t) => (None, t.clone(), args.nats_url.clone()),
        None => {
            let bin = match &args.muster_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?.with_file_name("muster"),
            };
            let m = Muster::start(&bin, dir.path(), &["--tick-s", "1"]).await?;
            eprintln!(
                "muster up (pid {:?}) on {}, log on {}",
                m.child.id(),
                m.grpc,
                m.nats_url
            );
            let (g, n) = (m.grpc.clone(), Some(m.nats_url.clone()));
            (Some(m), g, n)
        }
    };
    let pid = muster.as_ref().and_then(|m| m.child.id());
    std::fs::create_dir_all(&args.report)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut all_held = true;
    for &scenario in &args.scenario {
        let config = Config {
            grpc: grpc.clone(),
            nats_url: nats_url.clone(),
            stream: muster_log::LogConfig::default().stream,
            scenario,
            incident: format!("surge-{}-{stamp}", scenario.name()),
            needs: args.needs,
            volunteers: args.volunteers,
            seed: args.seed,
            surge: Duration::from_secs(args.seconds.max(1)),
            clients: args.clients,
            batch: args.batch,
            bulk_in_flight: args.bulk_in_flight,
            acceptance_timeout_s: args.acceptance_timeout_s,
            behaviour: Behaviour::default(),
            drain: Duration::from_secs(args.drain_s),
            await_expiry: false,
            progress: true,
        };
        eprintln!(
            "{}: {} needs over {} s (peak {:.0}/s), {} volunteers, {} clients, batch {}",
            scenario.name(),
            args.needs,
            args.seconds,
            2.0 * args.needs as f64 / args.seconds.max(1) as f64,
            args.volunteers,
            args.clients,
            args.batch
        );
        let cpu0 = pid.and_then(crate::stats::cpu_seconds);
        let self0 = crate::stats::cpu_seconds(std::process::id());
        let mut report = drive(config).await?;
        if let (Some(p), Some(c0)) = (pid, cpu0)
            && let Some(c1) = crate::stats::cpu_seconds(p)
        {
            report.cpu.push((
                "muster up (intake, matcher, projections, nats-server excluded)".into(),
                c1 - c0,
            ));
        }
        if let (Some(c0), Some(c1)) = (self0, crate::stats::cpu_seconds(std::process::id())) {
            report.cpu.push(("load generator".into(), c1 - c0));
        }
        let files = report.write(&args.report)?;
        println!("{}", report.summary());
        println!("report: {}", files.join(", "));
        all_held &= report.invariants.iter().all(|i| i.held);
    }
    if let Some(m) = muster {
        let status = m.stop().await?;
        anyhow::ensure!(status.success(), "muster up stopped with {status}");
    }
    anyhow::ensure!(all_held, "an invariant did not hold: see the report");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_rises_to_a_peak_at_half_time_and_falls_back() {
        let n = 10_000;
        let d = Duration::from_secs(100);
        let times: Vec<f64> = (0..n).map(|i| due(i, n, d).as_secs_f64()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        let in_window = |a: f64, b: f64| times.iter().filter(|&&t| t >= a && t < b).count();
        // The triangle: a quarter of the needs in the first 35.4 s, half by 50 s, and the
        // busiest 10 s are around the middle with about 1.9× the average rate.
        let half = in_window(0.0, 50.0);
        assert!((4_990..=5_010).contains(&half), "{half}");
        let middle = in_window(45.0, 55.0);
        let edge = in_window(0.0, 10.0);
        assert!(middle > 1_850 && middle < 1_950, "{middle}");
        assert!(edge < 250, "{edge}");
        assert!(times[n - 1] < 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_of_unknown_outcome_are_sent_again_and_others_are_not() {
        let sent = std::cell::Cell::new(0);
        let answer = retrying(RETRY_FOR, || {
            sent.set(sent.get() + 1);
            let n = sent.get();
            async move {
                if n == 1 {
                    Err(tonic::Status::unavailable("restarting"))
                } else if n == 2 {
                    Err(tonic::Status::unknown("transport error"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(answer.expect("answered"), 3);
        sent.set(0);
        let refused: Result<(), _> = retrying(RETRY_FOR, || {
            sent.set(sent.get() + 1);
            async { Err(tonic::Status::invalid_argument("bad")) }
        })
        .await;
        assert_eq!(
            refused.expect_err("refused").code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(sent.get(), 1, "not sent again");
        sent.set(0);
        let started = tokio::time::Instant::now();
        let down: Result<(), _> = retrying(Duration::from_secs(10), || {
            sent.set(sent.get() + 1);
            async { Err(tonic::Status::unavailable("down")) }
        })
        .await;
        assert_eq!(down.expect_err("gave up").code(), tonic::Code::Unavailable);
        assert!(started.elapsed() <= Duration::from_secs(10));
        // Sent at 0, 0.1, 0.3, 0.7, 1.5, 3.1, 5.1, 7.1 and 9.1 s; the next would be past 10 s.
        assert_eq!(sent.get(), 9);
    }

    #[test]
    fn volunteers_decide_the_same_way_for_the_same_assignment() {
        let a = draw(7, "abc", 1, 100);
        assert_eq!(a, draw(7, "abc", 1, 100));
        let spread: HashSet<u64> = (0..200)
            .map(|i| draw(7, &format!("assignment-{i}"), 1, 100))
            .collect();
        assert!(spread.len() > 50, "draws are spread: {}", spread.len());
    }
}

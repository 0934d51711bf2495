//! The matcher's loop: fold the log in order, cut rounds when live, append them.
//!
//! History (everything on the log when the matcher starts) is only folded: rounds recorded in it
//! are applied like any other event and no round is cut for the past. Once live, a round of an
//! incident is cut when something new has happened to it and either the matcher has caught up
//! with the log or the policy's count of events per round has been reached. A stood-down
//! incident's rounds propose nothing: they cancel the proposals still awaiting an answer, and
//! end what can no longer stand (a need withdrawn, a check revoked) as before.
//!
//! One writer decides an incident: each part of a round is appended only if the incident's last
//! round record on the log is the one this matcher read last (see [`append_round`]), so a
//! second matcher on the same log is refused rather than stored beside the first.
//!
//! The state lives in memory and is snapshotted to RocksDB (with the position it reflects) every
//! `snapshot_every` events (less often once the state is large: [`snapshot_due`]) and at
//! shutdown; a restart resumes from the snapshot's position + 1.
//! The position is the snapshot's, so the consumer is a tailing one from there (ordered, pulling
//! large batches), not a durable one whose server-side position could disagree with the state
//! saved next to it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use muster_log::{
    AppendError, Appender, AppenderConfig, Expect, LogConfig, LogConsumer, LogReader, Outgoing,
};
use muster_matching::State;
use muster_matching::round::{Round, round_events, round_until};
use muster_schema::{AgencyId, ENVELOPE_VERSION, EntityId, Envelope, Event, IncidentId, subject};

use crate::MatcherError;
use crate::snapshot::{IncidentRef, Snapshots};

/// The matcher's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    pub log: LogConfig,
    pub appender: AppenderConfig,
    /// An incident with pending assignments and no new events for this long gets a tick, so
    /// log time (which decides expiry) moves on.
    pub tick_every: Duration,
    /// Where snapshots are kept (`None`: none; the state is rebuilt from the log at each start).
    pub data_dir: Option<std::path::PathBuf>,
    /// Events folded between snapshots, at least: see [`snapshot_due`].
    pub snapshot_every: u64,
    /// The incidents this matcher decides (all, by default).
    pub shard: Shard,
}

/// Which incidents a matcher decides: those whose id hashes to shard `index` of `of` (every
/// incident when `of` is 1). Matchers given the shards 1/n … n/n of one log share its
/// incidents between them, each incident decided by one of them; the hash is fixed, so an
/// incident stays with its shard across restarts. (Overlapping shards are safe, not useful:
/// one writer decides an incident, see [`append_round`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    /// From 0.
    pub index: u32,
    pub of: u32,
}

impl Shard {
    /// Every incident.
    pub const ALL: Shard = Shard { index: 0, of: 1 };

    /// Whether this shard decides `incident`.
    pub fn owns(&self, incident: &IncidentId) -> bool {
        if self.of <= 1 {
            return true;
        }
        let h = EntityId::hash(&[b"shard", incident.as_str().as_bytes()]).0;
        let h = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        h % u64::from(self.of) == u64::from(self.index)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.of)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `K/N`: the K-th of N shards, 1 ≤ K ≤ N.
    fn from_str(s: &str) -> Result<Self, String> {
        let rule = || format!("shard {s:?}: expected K/N with 1 <= K <= N (e.g. 2/3)");
        let (k, n) = s.split_once('/').ok_or_else(rule)?;
        let (k, n): (u32, u32) = (
            k.trim().parse().map_err(|_| rule())?,
            n.trim().parse().map_err(|_| rule())?,
        );
        if k == 0 || k > n {
            return Err(rule());
        }
        Ok(Shard {
            index: k - 1,
            of: n,
        })
    }
}

impl Config {
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            log: LogConfig::default(),
            appender: AppenderConfig::default(),
            tick_every: Duration::from_secs(30),
            data_dir: None,
            snapshot_every: 50_000,
            shard: Shard::ALL,
        }
    }
}

/// What the matcher tracks per incident besides the engine's state.
#[derive(Debug)]
struct Incident {
    id: IncidentId,
    state: State,
    /// Sequence of the last event that is not the matcher's own.
    last_input: u64,
    /// S of the last round cut or read back.
    last_round: u64,
    /// Inputs since the last round was cut (the policy's events-per-round rule).
    since_cut: u32,
    /// A round appended but not yet read back from the log (to its last part).
    awaiting: Option<u64>,
    /// Sequence of the last round record of this incident read back (any part; 0: none): a
    /// round is recorded only if it is still the last (one writer decides an incident).
    last_record: u64,
    /// The last round read back ended at a part that was not its last: its other decisions
    /// are not on the log (yet, or ever, if the matcher that cut it stopped between parts).
    cut_short: bool,
    /// When (wall clock) the matcher last read an event of this incident.
    last_heard: std::time::Instant,
    /// Rounds given up because another matcher recorded one first, since the last warning.
    overtaken: Overtaken,
}

/// Warnings about another matcher deciding the same incident: the first at once, then one a
/// minute with how many rounds were given up meanwhile (a second matcher left running would
/// otherwise warn at every round).
#[derive(Debug, Default)]
struct Overtaken {
    since_warned: u64,
    warned: Option<std::time::Instant>,
}

impl Overtaken {
    const EVERY: Duration = Duration::from_secs(60);

    /// Counts one round given up; `Some(n)` when it is time to warn about the `n` given up
    /// since the last warning.
    fn count(&mut self) -> Option<u64> {
        self.since_warned += 1;
        if self.warned.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return None;
        }
        self.warned = Some(std::time::Instant::now());
        Some(std::mem::take(&mut self.since_warned))
    }
}

impl Incident {
    /// Whether log time should be moved on: live, something waiting on time, nothing heard for
    /// `quiet`, and no round of ours in flight.
    fn tick_due(&self, quiet: Duration) -> bool {
        self.state.declared()
            && !self.state.stood_down
            && self.awaiting.is_none()
            && self.last_heard.elapsed() >= quiet
            && self.state.assignments.values().any(|a| {
                matches!(
                    a.status,
                    muster_matching::state::AssignmentStatus::Pending { .. }
                )
            })
    }

    /// Something happened that no round has considered yet, or the last round was cut short
    /// (with no round of ours in flight, what it left undecided is work for the next one), in
    /// an incident that was declared ([`State::declared`]).
    fn dirty(&self) -> bool {
        self.state.declared() && (self.last_input > self.last_round || self.cut_short)
    }
}

/// The actor of the matcher's events.
pub fn matcher_actor() -> AgencyId {
    AgencyId::parse("actor", "muster-matcher").expect("a valid agency id")
}

/// Message id of event `i` of the round cut at `through_seq` in `incident`.
pub fn decision_msg_id(incident: &IncidentId, through_seq: u64, i: usize) -> String {
    format!("muster-matcher:{incident}:{through_seq}#{i}")
}

/// Runs the matcher until `shutdown` resolves. A round in progress then is given up (nothing of
/// it is appended; the next start cuts it again), so a stop never waits for a long round.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MatcherError> {
    let mut stopper = Stopper::watch(shutdown);
    run_until(config, &stopper.cancel, &mut stopper.stop).await
}

/// Watches the shutdown future in a task of its own, on the runtime it is created on: rounds
/// run on the matcher's task and poll nothing while they do, so the watcher must run elsewhere
/// to give a long round up.
struct Stopper {
    cancel: Arc<AtomicBool>,
    stop: tokio::sync::watch::Receiver<bool>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Stopper {
    fn watch(shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let cancel = Arc::new(AtomicBool::new(false));
        let (stopping, stop) = tokio::sync::watch::channel(false);
        let watcher = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                shutdown.await;
                cancel.store(true, Ordering::Relaxed);
                let _ = stopping.send(true);
            })
        };
        Self {
            cancel,
            stop,
            watcher,
        }
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The matcher running on a thread of its own ([`spawn`]).
#[derive(Debug)]
pub struct Running {
    done: tokio::sync::oneshot::Receiver<Result<(), MatcherError>>,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Waits for the matcher to stop (after its `shutdown` resolved, or on an error).
    pub async fn join(self) -> Result<(), MatcherError> {
        let result = self.done.await;
        // The result is sent as the thread's last act: joining now does not block for long.
        let joined = tokio::task::spawn_blocking(move || self.thread.join()).await;
        match (result, joined) {
            (Ok(result), Ok(Ok(()))) => result,
            _ => Err(MatcherError::Thread("the matcher's thread panicked".into())),
        }
    }
}

/// Runs the matcher like [`run`], on an OS thread of its own with a single-threaded runtime.
/// Call it from within a Tokio runtime: `shutdown` is watched there, so that a stop reaches a
/// round that holds the matcher's own thread.
///
/// In a process that also serves gRPC and folds projections (`muster up`), the matcher is then
/// scheduled by the OS as a thread among threads rather than as one task among hundreds on a
/// shared runtime: it reads the log as fast as its share of the CPU allows (on the shared
/// runtime a surge's request tasks starved it to a few thousand events a second), and a round
/// decided for seconds holds up none of the shared runtime's workers. Its NATS connection, its
/// consumer and its appender live on its own runtime too.
pub fn spawn(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, MatcherError> {
    let mut stopper = Stopper::watch(shutdown);
    let (tx, done) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("muster-matcher".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| MatcherError::Thread(format!("starting its runtime: {e}")))
                .and_then(|runtime| {
                    runtime.block_on(run_until(config, &stopper.cancel, &mut stopper.stop))
                });
            drop(stopper);
            let _ = tx.send(result);
        })
        .map_err(|e| MatcherError::Thread(format!("starting its thread: {e}")))?;
    Ok(Running { done, thread })
}

async fn run_until(
    config: Config,
    cancel: &AtomicBool,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), MatcherError> {
    let (client, mut stream) =
        crate::open_log(&config.nats_url, "muster-matcher", &config.log).await?;
    let history_ends = crate::last_sequence(&mut stream).await?;
    let (appender, appender_task) = Appender::start(client.clone(), config.appender.clone());
    let reader = LogReader::new(stream.clone());
    let snapshots = match &config.data_dir {
        Some(dir) => Some(Snapshots::open(dir.clone(), config.shard).await?),
        None => None,
    };
    let mut incidents: BTreeMap<IncidentId, Incident> = BTreeMap::new();
    let mut folded = 0u64;
    if let Some(snapshots) = &snapshots
        && let Some((through_seq, restored)) = snapshots.load().await?
    {
        for (id, s) in restored {
            incidents.insert(
                id.clone(),
                Incident {
                    id,
                    state: s.state,
                    last_input: s.last_input,
                    last_round: s.last_round,
                    since_cut: 0,
                    awaiting: None,
                    cut_short: s.cut_short,
                    last_record: s.last_record,
                    last_heard: std::time::Instant::now(),
                    overtaken: Overtaken::default(),
                },
            );
        }
        folded = through_seq;
        tracing::info!(
            through_seq,
            incidents = incidents.len(),
            "matcher resumed from its snapshot"
        );
    }
    let mut consumer = LogConsumer::tail(&stream, vec![subject::all()], folded + 1).await?;
    let mut set_aside = 0u64;
    let mut since_snapshot = 0u64;
    // The records in the last snapshot (or the one resumed from).
    let mut snapshot_records = records(&incidents);
    tracing::info!(from = folded + 1, history_ends, "matcher folding the log");
    let mut ticker = tokio::time::interval(config.tick_every.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Live from the start when there is no history left to fold (an empty log, or a snapshot
    // that is already at its end): then cut what the snapshot left undecided right away.
    let mut live = history_ends <= folded;
    if live {
        for inc in incidents.values_mut() {
            if inc.dirty() {
                cut(inc, &appender, &reader, cancel).await?;
            }
        }
    }
    let result = loop {
        let delivered = tokio::select! {
            _ = stop.changed() => break Ok(()),
            _ = ticker.tick(), if live => {
                for inc in incidents.values_mut().filter(|i| i.tick_due(config.tick_every)) {
                    tick(inc, &appender).await;
                }
                continue;
            }
            d = consumer.next() => d,
        };
        let Some(delivered) = delivered else {
            break Ok(());
        };
        if let Ok(d) = &delivered {
            folded = d.seq;
            since_snapshot += 1;
        }
        let d = match delivered {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "reading the log failed; the consumer recovers by itself");
                continue;
            }
        };
        match d.envelope {
            Ok(env) if config.shard.owns(&env.incident) => fold(&mut incidents, d.seq, &env),
            // Another matcher's incident.
            Ok(_) => {}
            Err(e) => {
                set_aside += 1;
                tracing::warn!(seq = d.seq, subject = %d.subject, error = %e, set_aside, "malformed event set aside");
            }
        }
        if d.seq < history_ends {
            continue;
        }
        live = true;
        if d.seq == history_ends {
            tracing::info!(
                seq = d.seq,
                incidents = incidents.len(),
                set_aside,
                "matcher caught up; cutting live rounds"
            );
        }
        let caught_up = d.pending == 0;
        let mut failure = None;
        for inc in incidents.values_mut() {
            let due = caught_up || inc.since_cut >= inc.state.policy.round_every_events;
            if due
                && inc.dirty()
                && inc.awaiting.is_none()
                && let Err(e) = cut(inc, &appender, &reader, cancel).await
            {
                failure = Some(e);
                break;
            }
        }
        if let Some(e) = failure {
            break Err(e);
        }
        if since_snapshot >= config.snapshot_every
            && let Some(snapshots) = &snapshots
            && snapshot_due(since_snapshot, config.snapshot_every, snapshot_records)
        {
            if let Err(e) = save(snapshots, folded, &incidents).await {
                break Err(e);
            }
            since_snapshot = 0;
            snapshot_records = records(&incidents);
        }
    };
    // A clean stop leaves a snapshot of everything folded.
    let result = match (result, &snapshots) {
        (Ok(()), Some(snapshots)) if since_snapshot > 0 => {
            save(snapshots, folded, &incidents).await
        }
        (r, _) => r,
    };
    drop(appender);
    let _ = appender_task.await;
    let _ = client.flush().await;
    result
}

/// Folds one event of an incident this matcher decides.
fn fold(incidents: &mut BTreeMap<IncidentId, Incident>, seq: u64, env: &Envelope) {
    let inc = incidents.entry(env.incident.clone()).or_insert_with(|| {
        if !matches!(env.event, Event::IncidentDeclaredV1(_)) {
            tracing::warn!(
                incident = %env.incident,
                seq,
                "an incident never declared: its events are folded, no round decides them"
            );
        }
        Incident {
            id: env.incident.clone(),
            state: State::default(),
            last_input: 0,
            last_round: 0,
            since_cut: 0,
            awaiting: None,
            cut_short: false,
            last_record: 0,
            last_heard: std::time::Instant::now(),
            overtaken: Overtaken::default(),
        }
    });
    inc.last_heard = std::time::Instant::now();
    inc.state.apply(seq, env);
    match env.event.round_record() {
        Some(r) => {
            if inc.awaiting == Some(r.through_seq) && r.is_last_part() {
                inc.awaiting = None;
            }
            inc.cut_short = !r.is_last_part();
            inc.last_record = seq;
            inc.last_round = inc.last_round.max(r.through_seq);
            // Its expiries and cancellations opened needs (and freed volunteers) that no
            // round has considered: work for the next one, even if nothing else happens.
            if r.expired > 0 || r.cancelled > 0 {
                inc.last_input = seq;
            }
        }
        None if env.event.is_round_event() => {}
        None => {
            inc.last_input = seq;
            inc.since_cut += 1;
        }
    }
}

/// Whether a snapshot is due `since` events after the last, which held `records`: every
/// `every` events, but not before as many events as that snapshot held records. A snapshot
/// encodes and writes the whole state (750,000 volunteers: 113 MB, ~1.6 s of the matcher's
/// time), so at a fixed interval a state that keeps growing costs more and more per event
/// folded (the NHS surge's 1.07M registrations: 21 snapshots, ~17 s in all); this way a
/// growing state is snapshotted at doubling intervals (all of them together cost about two
/// final snapshots), and a restart still folds at most about as many events as it loaded.
fn snapshot_due(since: u64, every: u64, records: u64) -> bool {
    since >= every.max(records)
}

/// The records every incident's state holds ([`State::records`]).
fn records(incidents: &BTreeMap<IncidentId, Incident>) -> u64 {
    incidents.values().map(|i| i.state.records() as u64).sum()
}

/// Snapshots every incident as folded through `folded`.
async fn save(
    snapshots: &Snapshots,
    folded: u64,
    incidents: &BTreeMap<IncidentId, Incident>,
) -> Result<(), MatcherError> {
    let encoded = incidents
        .values()
        .map(|i| {
            let r = IncidentRef {
                state: &i.state,
                last_input: i.last_input,
                last_round: i.last_round,
                cut_short: i.cut_short,
                last_record: i.last_record,
            };
            crate::snapshot::encode(&r).map(|bytes| (i.id.clone(), bytes))
        })
        .collect::<Result<Vec<_>, _>>()?;
    snapshots.save(folded, encoded).await?;
    tracing::debug!(through_seq = folded, "matcher snapshot written");
    Ok(())
}

/// Appends a tick to `inc` at the wall clock's time: an input like any other, so rounds after
/// it are still exactly the fold of the log.
async fn tick(inc: &mut Incident, appender: &Appender) {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let now = muster_schema::Timestamp(micros.max(inc.state.now.micros()));
    let msg_id = format!("muster-matcher:tick:{}:{}", inc.id, now.micros());
    let env = Envelope {
        schema_version: ENVELOPE_VERSION,
        event_id: EntityId::hash(&[msg_id.as_bytes()]),
        incident: inc.id.clone(),
        partition: muster_schema::PartitionCode::incident_wide(),
        recorded_at: now,
        actor: matcher_actor(),
        idempotency_key: format!("tick-{}", now.micros()),
        correlation_id: msg_id.clone(),
        causation_id: None,
        event: Event::TickV1(muster_schema::events::TickV1 {
            incident: inc.id.clone(),
        }),
    };
    let out = Outgoing {
        subject: subject::for_envelope(&env),
        payload: env.encode().into(),
        msg_id,
        expect: Expect::Anything,
    };
    match appender.append(vec![out]).await {
        Ok(_) => inc.last_heard = std::time::Instant::now(),
        Err(e) => {
            tracing::warn!(incident = %inc.id, error = %e, "tick not appended; will try again")
        }
    }
}

/// Cuts a round of `inc` and appends it (the round's events come back through the log).
async fn cut(
    inc: &mut Incident,
    appender: &Appender,
    reader: &LogReader,
    cancel: &AtomicBool,
) -> Result<(), MatcherError> {
    let deciding = std::time::Instant::now();
    let Some(r) = round_until(&inc.state, cancel) else {
        tracing::info!(incident = %inc.id, "round given up: stopping");
        return Ok(());
    };
    let decided = deciding.elapsed();
    inc.since_cut = 0;
    let before = (inc.last_round, inc.cut_short);
    inc.last_round = r.through_seq;
    // This round decides afresh over whatever a round cut short left undecided.
    inc.cut_short = false;
    if r.is_empty() {
        return Ok(());
    }
    let s = r.through_seq;
    let parts = round_appends(&inc.id, &inc.state, &r);
    tracing::info!(incident = %inc.id, through_seq = s, proposed = r.proposals.len(), expired = r.expired.len(), cancelled = r.cancelled.len(), parts = parts.len(), decided_ms = decided.as_millis() as u64, "round cut");
    let appending = std::time::Instant::now();
    let events: usize = parts.iter().map(Vec::len).sum();
    match append_round(appender, reader, &inc.id, s, parts, inc.last_record).await? {
        RoundAppend::Stored => {
            tracing::info!(incident = %inc.id, through_seq = s, events, appended_ms = appending.elapsed().as_millis() as u64, "round appended");
            inc.awaiting = Some(s);
        }
        RoundAppend::Overtaken { parts_stored } => {
            if let Some(rounds) = inc.overtaken.count() {
                tracing::warn!(
                    incident = %inc.id,
                    through_seq = s,
                    parts_stored,
                    rounds,
                    "another matcher recorded a round of this incident first (is a second matcher running?): rounds given up since the last warning, each decided again once the other's is read"
                );
            }
            if parts_stored == 0 {
                (inc.last_round, inc.cut_short) = before;
            }
        }
    }
    Ok(())
}

// A part of a round and its record must fit one atomic append.
const _: () = assert!(muster_matching::round::DECISIONS_PER_PART < muster_log::appender::MAX_BATCH);

/// Round `r` of `incident` (decided over `state`) as the matcher appends it: one atomic append
/// per part, each its decisions then the part's record ([`round_events`]). The records' guards
/// are set by [`append_round`].
pub fn round_appends(incident: &IncidentId, state: &State, r: &Round) -> Vec<Vec<Outgoing>> {
    let s = r.through_seq;
    let mut parts = Vec::new();
    let mut part = Vec::new();
    for (i, (partition, event)) in round_events(state, incident, r).into_iter().enumerate() {
        let msg_id = decision_msg_id(incident, s, i);
        let is_record = event.round_record().is_some();
        let env = Envelope {
            schema_version: ENVELOPE_VERSION,
            event_id: EntityId::hash(&[msg_id.as_bytes()]),
            incident: incident.clone(),
            partition,
            recorded_at: state.now,
            actor: matcher_actor(),
            idempotency_key: format!("round-{s}"),
            correlation_id: format!("round-{incident}-{s}"),
            causation_id: None,
            event,
        };
        part.push(Outgoing {
            subject: subject::for_envelope(&env),
            payload: env.encode().into(),
            msg_id,
            expect: Expect::Anything,
        });
        if is_record {
            parts.push(std::mem::take(&mut part));
        }
    }
    debug_assert!(part.is_empty(), "a round's events end with a record");
    parts
}

/// How appending a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundAppend {
    /// Every part is on the log.
    Stored,
    /// Another writer recorded a round of the incident first; the first `parts_stored` parts
    /// are on the log (the round is cut short there), the rest were not appended.
    Overtaken { parts_stored: usize },
}

/// Appends a round's parts in order, each only if the last round record of the incident on
/// the log is the one before it: for the first part, `after_record` (the sequence of the last
/// record the matcher read; 0: none), for each later part the record of the part before. So
/// one writer decides an incident: a round decided without another writer's latest round is
/// refused, not stored beside it. A part already stored (a retry whose first outcome was
/// unknown) counts as stored.
pub async fn append_round(
    appender: &Appender,
    reader: &LogReader,
    incident: &IncidentId,
    through_seq: u64,
    parts: Vec<Vec<Outgoing>>,
    after_record: u64,
) -> Result<RoundAppend, MatcherError> {
    let filter = subject::rounds(incident);
    let mut after = after_record;
    for (stored, mut part) in parts.into_iter().enumerate() {
        let Some(record) = part.last_mut() else {
            continue;
        };
        record.expect = Expect::LastOn {
            filter: filter.clone(),
            seq: after,
        };
        let record_id = record.msg_id.clone();
        match append_until_stored(appender, part, incident, through_seq).await? {
            Some(seq) => after = seq,
            None => match reader.last(&filter).await {
                Ok(Some(m)) if m.msg_id.as_deref() == Some(record_id.as_str()) => after = m.seq,
                Ok(_) => {
                    return Ok(RoundAppend::Overtaken {
                        parts_stored: stored,
                    });
                }
                Err(e) => {
                    return Err(MatcherError::Append {
                        incident: incident.to_string(),
                        through_seq,
                        source: AppendError::Unavailable(e.to_string()),
                    });
                }
            },
        }
    }
    Ok(RoundAppend::Stored)
}

/// Appends one part of a round, retrying while the log is unavailable (the ids make retries
/// safe). Returns the sequence of its record (its last message), or `None` if the log refused
/// it as stored before or as not following the round record it expects (the caller tells
/// which).
async fn append_until_stored(
    appender: &Appender,
    part: Vec<Outgoing>,
    incident: &IncidentId,
    s: u64,
) -> Result<Option<u64>, MatcherError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match appender.append(part.clone()).await {
            Ok(a) => return Ok(Some(a.first_seq + a.count.saturating_sub(1))),
            Err(AppendError::DuplicateRequest | AppendError::WrongLastSequence(_)) => {
                return Ok(None);
            }
            Err(AppendError::Unavailable(reason)) => {
                tracing::warn!(%incident, through_seq = s, %reason, "log unavailable; retrying the round");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(source) => {
                return Err(MatcherError::Append {
                    incident: incident.to_string(),
                    through_seq: s,
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_written_k_of_n() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 1, of: 3 }));
        assert_eq!(" 1 / 1 ".parse::<Shard>(), Ok(Shard::ALL));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", ""] {
            let err = bad.parse::<Shard>().expect_err(bad);
            assert!(err.contains("K/N"), "{bad}: {err}");
        }
        assert_eq!(Shard { index: 1, of: 3 }.to_string(), "2/3");
    }

    #[test]
    fn shards_1_to_n_of_n_own_every_incident_once_and_share_them_out() {
        let incidents: Vec<IncidentId> = (0..600)
            .map(|i| IncidentId::parse("i", &format!("incident-{i}")).expect("valid"))
            .collect();
        let shards: Vec<Shard> = (0..3).map(|index| Shard { index, of: 3 }).collect();
        let mut owned = [0usize; 3];
        for inc in &incidents {
            let owners: Vec<usize> = (0..3).filter(|&k| shards[k].owns(inc)).collect();
            assert_eq!(owners.len(), 1, "{inc}: {owners:?}");
            owned[owners[0]] += 1;
            assert!(Shard::ALL.owns(inc));
        }
        assert!(owned.iter().all(|&n| n > 150), "{owned:?}");
    }

    #[test]
    fn snapshots_come_every_so_many_events_and_no_more_often_than_the_state_holds_records() {
        assert!(!snapshot_due(49_999, 50_000, 10));
        assert!(snapshot_due(50_000, 50_000, 10));
        assert!(!snapshot_due(50_000, 50_000, 750_000));
        assert!(!snapshot_due(749_999, 50_000, 750_000));
        assert!(snapshot_due(750_000, 50_000, 750_000));
        // Over a surge of registrations (each one record), from an empty state: snapshots at
        // 50k, 100k, 200k, 400k, 800k, ... events, instead of every 50k.
        let (mut snapshot_records, mut since, mut taken) = (0u64, 0u64, Vec::new());
        for event in 1..=1_000_000u64 {
            since += 1;
            if snapshot_due(since, 50_000, snapshot_records) {
                taken.push(event);
                since = 0;
                snapshot_records = event;
            }
        }
        assert_eq!(taken, [50_000, 100_000, 200_000, 400_000, 800_000]);
    }

    #[test]
    fn being_overtaken_warns_at_once_then_once_a_minute_with_the_count() {
        let mut o = Overtaken::default();
        assert_eq!(o.count(), Some(1));
        assert_eq!(o.count(), None);
        assert_eq!(o.count(), None);
        // A minute on: the rounds given up meanwhile, this one included.
        o.warned = o
            .warned
            .and_then(|at| at.checked_sub(Overtaken::EVERY + Duration::from_secs(1)));
        assert_eq!(o.count(), Some(3));
        assert_eq!(o.count(), None);
    }
}

//! The matcher's loop: fold the log in order, cut rounds when live, append them.
//!
//! History (everything on the log when the matcher starts) is only folded: rounds recorded in it
//! are applied like any other event and no round is cut for the past. Once live, a round of an
//! incident is cut when something new has happened to it and either the matcher has caught up
//! with the log or the policy's count of events per round has been reached.
//!
//! The state lives in memory and is rebuilt from the log at every start (snapshots come with
//! RocksDB); the consumer is therefore an ordered one from sequence 1, not a durable one whose
//! acknowledged position would be meaningless without the state that goes with it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use muster_log::{AppendError, Appender, AppenderConfig, Expect, LogConfig, LogConsumer, Outgoing};
use muster_matching::round::round_events;
use muster_matching::{State, round};
use muster_schema::{AgencyId, ENVELOPE_VERSION, EntityId, Envelope, Event, IncidentId, subject};

use crate::MatcherError;

/// The matcher's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    pub log: LogConfig,
    pub appender: AppenderConfig,
}

impl Config {
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            log: LogConfig::default(),
            appender: AppenderConfig::default(),
        }
    }
}

/// What the matcher tracks per incident besides the engine's state.
#[derive(Debug)]
struct Incident {
    id: IncidentId,
    state: State,
    stood_down: bool,
    /// Sequence of the last event that is not the matcher's own.
    last_input: u64,
    /// S of the last round cut or read back.
    last_round: u64,
    /// Inputs since the last round was cut (the policy's events-per-round rule).
    since_cut: u32,
    /// A round appended but not yet read back from the log.
    awaiting: Option<u64>,
}

impl Incident {
    /// Something happened that no round has considered yet.
    fn dirty(&self) -> bool {
        self.last_input > self.last_round
    }
}

/// Whether `event` is one the matcher itself writes.
fn is_decision(event: &Event) -> bool {
    matches!(
        event,
        Event::AssignmentProposedV1(_)
            | Event::AssignmentExpiredV1(_)
            | Event::AssignmentCancelledV1(_)
            | Event::RoundRecordedV1(_)
    )
}

/// The actor of the matcher's events.
pub fn matcher_actor() -> AgencyId {
    AgencyId::parse("actor", "muster-matcher").expect("a valid agency id")
}

/// Message id of event `i` of the round cut at `through_seq` in `incident`.
pub fn decision_msg_id(incident: &IncidentId, through_seq: u64, i: usize) -> String {
    format!("muster-matcher:{incident}:{through_seq}#{i}")
}

/// Runs the matcher until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), MatcherError> {
    let (client, mut stream) =
        crate::open_log(&config.nats_url, "muster-matcher", &config.log).await?;
    let history_ends = crate::last_sequence(&mut stream).await?;
    let (appender, appender_task) = Appender::start(client.clone(), config.appender.clone());
    let mut consumer = LogConsumer::ordered(&stream, vec![subject::all()], 1).await?;
    let mut incidents: BTreeMap<IncidentId, Incident> = BTreeMap::new();
    let mut set_aside = 0u64;
    tracing::info!(history_ends, "matcher folding the log");
    tokio::pin!(shutdown);
    let result = loop {
        let delivered = tokio::select! {
            () = &mut shutdown => break Ok(()),
            d = consumer.next() => d,
        };
        let Some(delivered) = delivered else {
            break Ok(());
        };
        let d = match delivered {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "reading the log failed; the consumer recovers by itself");
                continue;
            }
        };
        let env = match d.envelope {
            Ok(env) => env,
            Err(e) => {
                set_aside += 1;
                tracing::warn!(seq = d.seq, subject = %d.subject, error = %e, set_aside, "malformed event set aside");
                continue;
            }
        };
        let inc = incidents
            .entry(env.incident.clone())
            .or_insert_with(|| Incident {
                id: env.incident.clone(),
                state: State::default(),
                stood_down: false,
                last_input: 0,
                last_round: 0,
                since_cut: 0,
                awaiting: None,
            });
        inc.state.apply(d.seq, &env);
        match &env.event {
            Event::RoundRecordedV1(r) => {
                if inc.awaiting == Some(r.through_seq) {
                    inc.awaiting = None;
                }
                inc.last_round = inc.last_round.max(r.through_seq);
            }
            e if is_decision(e) => {}
            e => {
                inc.stood_down |= matches!(e, Event::IncidentStoodDownV1(_));
                inc.last_input = d.seq;
                inc.since_cut += 1;
            }
        }
        if d.seq < history_ends {
            continue;
        }
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
                && !inc.stood_down
                && let Err(e) = cut(inc, &appender).await
            {
                failure = Some(e);
                break;
            }
        }
        if let Some(e) = failure {
            break Err(e);
        }
    };
    drop(appender);
    let _ = appender_task.await;
    let _ = client.flush().await;
    result
}

/// Cuts a round of `inc` and appends it (the round's events come back through the log).
async fn cut(inc: &mut Incident, appender: &Appender) -> Result<(), MatcherError> {
    let r = round(&inc.state);
    inc.since_cut = 0;
    inc.last_round = r.through_seq;
    if r.is_empty() {
        return Ok(());
    }
    let s = r.through_seq;
    let events = round_events(&inc.state, &inc.id, &r);
    let last = events.len() - 1;
    let outgoing: Vec<Outgoing> = events
        .into_iter()
        .enumerate()
        .map(|(i, (partition, event))| {
            let msg_id = decision_msg_id(&inc.id, s, i);
            let env = Envelope {
                schema_version: ENVELOPE_VERSION,
                event_id: EntityId::hash(&[msg_id.as_bytes()]),
                incident: inc.id.clone(),
                partition,
                recorded_at: inc.state.now,
                actor: matcher_actor(),
                idempotency_key: format!("round-{s}"),
                correlation_id: format!("round-{}-{s}", inc.id),
                causation_id: None,
                event,
            };
            let subject = subject::for_envelope(&env);
            // The record is guarded by its own subject: recorded once, even after the
            // duplicate window.
            let expect = if i == last {
                Expect::Nothing {
                    filter: subject.clone(),
                }
            } else {
                Expect::Anything
            };
            Outgoing {
                subject,
                payload: env.encode().into(),
                msg_id,
                expect,
            }
        })
        .collect();
    tracing::info!(incident = %inc.id, through_seq = s, proposed = r.proposals.len(), expired = r.expired.len(), cancelled = r.cancelled.len(), "round cut");
    for chunk in outgoing.chunks(muster_log::appender::MAX_BATCH) {
        append_until_stored(appender, chunk.to_vec(), &inc.id, s).await?;
    }
    inc.awaiting = Some(s);
    Ok(())
}

/// Appends one chunk of a round, retrying while the log is unavailable (the ids make retries
/// safe). A chunk already stored (a crash after appending it) counts as stored.
async fn append_until_stored(
    appender: &Appender,
    chunk: Vec<Outgoing>,
    incident: &IncidentId,
    s: u64,
) -> Result<(), MatcherError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match appender.append(chunk.clone()).await {
            Ok(_) | Err(AppendError::DuplicateRequest | AppendError::WrongLastSequence(_)) => {
                return Ok(());
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

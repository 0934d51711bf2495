//! What intake knows about incidents: declared or not, stood down or not, policy version.
//!
//! Folded from the incident's own subject on the log and cached briefly (an incident changes a
//! handful of times in its life; needs arrive thousands of times a second). Intake's own writes
//! to an incident invalidate its entry at once; another intake instance's are seen within the
//! cache's time to live. Only positive answers are cached, so an incident is usable as soon as its
//! declaration is acknowledged. Loads are one at a time: when an entry expires under a bulk
//! request, its thousand items wait for one read of the log instead of making a thousand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_log::LogReader;
use muster_schema::events::IncidentDeclaredV1;
use muster_schema::{Envelope, Event, IncidentId, subject};

use crate::error::IntakeError;

/// An incident as intake needs to know it.
#[derive(Debug, Clone)]
pub struct IncidentState {
    pub declared: IncidentDeclaredV1,
    pub policy_version: u32,
    pub stood_down: bool,
    /// Sequence of the incident's last event: its version.
    pub version: u64,
    /// `Nats-Msg-Id` of the incident's last event.
    pub last_msg_id: Option<String>,
}

#[derive(Debug)]
pub struct Directory {
    reader: LogReader,
    ttl: Duration,
    cache: Mutex<HashMap<IncidentId, (Instant, Arc<IncidentState>)>>,
    /// Held while an incident is read from the log (one read at a time).
    loading: tokio::sync::Mutex<()>,
    /// Incidents read from the log so far.
    loads: AtomicU64,
}

impl Directory {
    pub fn new(reader: LogReader, ttl: Duration) -> Self {
        Self {
            reader,
            ttl,
            cache: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
            loads: AtomicU64::new(0),
        }
    }

    /// How many times an incident has been read from the log.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    fn cached(&self, id: &IncidentId) -> Option<Arc<IncidentState>> {
        let cache = self.cache.lock().ok()?;
        let (at, state) = cache.get(id)?;
        (at.elapsed() < self.ttl).then(|| state.clone())
    }

    /// The incident's state, or `None` if it was never declared.
    pub async fn get(&self, id: &IncidentId) -> Result<Option<Arc<IncidentState>>, IntakeError> {
        if let Some(state) = self.cached(id) {
            return Ok(Some(state));
        }
        let _loading = self.loading.lock().await;
        // Whoever held the lock before may have just loaded it.
        if let Some(state) = self.cached(id) {
            return Ok(Some(state));
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        let Some(state) = self.load(id).await? else {
            return Ok(None);
        };
        let state = Arc::new(state);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(id.clone(), (Instant::now(), state.clone()));
        }
        Ok(Some(state))
    }

    /// The incident's state, which must exist (stood down or not).
    pub async fn declared(&self, id: &IncidentId) -> Result<Arc<IncidentState>, IntakeError> {
        self.get(id).await?.ok_or_else(|| {
            IntakeError::not_found("incident", format!("incident {id} has not been declared"))
        })
    }

    /// The incident's state, which must exist and not be stood down.
    pub async fn active(&self, id: &IncidentId) -> Result<Arc<IncidentState>, IntakeError> {
        match self.declared(id).await? {
            s if s.stood_down => Err(IntakeError::precondition(
                "incident",
                format!(
                    "incident {id} has been stood down: only withdrawals, revocations, declines and completions are taken"
                ),
            )),
            s => Ok(s),
        }
    }

    /// Forgets the cached state of `id` (after intake itself changed it).
    pub fn invalidate(&self, id: &IncidentId) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(id);
        }
    }

    async fn load(&self, id: &IncidentId) -> Result<Option<IncidentState>, IntakeError> {
        let subject = subject::incident(id);
        let mut state: Option<IncidentState> = None;
        let mut from = 1;
        while let Some(m) = self.reader.next(&subject, from).await? {
            from = m.seq + 1;
            let env = match Envelope::decode(&m.payload) {
                Ok(env) => env,
                Err(e) => {
                    tracing::warn!(seq = m.seq, %subject, error = %e, "skipping malformed incident event");
                    continue;
                }
            };
            match (env.event, state.as_mut()) {
                (Event::IncidentDeclaredV1(d), None) => {
                    state = Some(IncidentState {
                        declared: d,
                        policy_version: 1,
                        stood_down: false,
                        version: m.seq,
                        last_msg_id: m.msg_id,
                    });
                }
                (Event::PolicyChangedV1(p), Some(s)) => {
                    s.policy_version = p.policy_version;
                    s.declared.policy = p.policy;
                    s.version = m.seq;
                    s.last_msg_id = m.msg_id;
                }
                (Event::IncidentStoodDownV1(_), Some(s)) => {
                    s.stood_down = true;
                    s.version = m.seq;
                    s.last_msg_id = m.msg_id;
                }
                (other, _) => {
                    tracing::warn!(
                        seq = m.seq,
                        event = other.type_name(),
                        "unexpected event on an incident subject"
                    );
                }
            }
        }
        Ok(state)
    }
}

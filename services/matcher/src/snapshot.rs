//! Snapshots of the matcher's state in RocksDB, with the log position they reflect.
//!
//! Every incident's state and the one sequence through which all of them are folded are written
//! in a single synced batch, so a restart resumes from that sequence + 1 and neither skips nor
//! refolds an event. A snapshot of another format (an older engine), of another shard (it holds
//! other incidents) or one that does not decode is discarded with a warning: the state is
//! rebuilt from the log, which is the truth.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use muster_matching::State;
use muster_schema::IncidentId;
use muster_store::{Change, Store};
use serde::{Deserialize, Serialize};

use crate::MatcherError;
use crate::service::Shard;

/// Bump when the engine's state changes shape: old snapshots are then rebuilt from the log.
pub const SNAPSHOT_FORMAT: u32 = 10;

const META: &[u8] = b"matcher/meta";
const INCIDENTS: &[u8] = b"matcher/incident/";

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    /// First, so that a snapshot of any format tells its format.
    format: u32,
    through_seq: u64,
    shard: Shard,
}

/// What the matcher keeps of one incident, borrowed for writing.
#[derive(Debug, Serialize)]
pub struct IncidentRef<'a> {
    pub state: &'a State,
    pub last_input: u64,
    pub last_round: u64,
    pub cut_short: bool,
    pub last_record: u64,
}

/// What the matcher keeps of one incident, as read back (same encoding as [`IncidentRef`]).
#[derive(Debug, Deserialize)]
pub struct IncidentSnapshot {
    pub state: State,
    pub last_input: u64,
    pub last_round: u64,
    pub cut_short: bool,
    pub last_record: u64,
}

/// The matcher's snapshot store, for the incidents of one shard.
#[derive(Debug, Clone)]
pub struct Snapshots {
    store: Arc<Store>,
    shard: Shard,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MatcherError> + Send + 'static,
) -> Result<T, MatcherError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MatcherError::Snapshot(format!("snapshot task failed: {e}")))?
}

impl Snapshots {
    pub async fn open(dir: PathBuf, shard: Shard) -> Result<Self, MatcherError> {
        blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| MatcherError::Snapshot(format!("{}: {e}", dir.display())))?;
            Ok(Self {
                store: Arc::new(Store::open(&dir)?),
                shard,
            })
        })
        .await
    }

    /// The position and incidents of the last snapshot, if there is a usable one.
    pub async fn load(
        &self,
    ) -> Result<Option<(u64, Vec<(IncidentId, IncidentSnapshot)>)>, MatcherError> {
        let (store, shard) = (self.store.clone(), self.shard);
        blocking(move || {
            let Some(meta) = store.get(META)? else { return Ok(None) };
            match postcard::take_from_bytes::<u32>(&meta) {
                Ok((SNAPSHOT_FORMAT, _)) => {}
                Ok((found, _)) => {
                    tracing::warn!(found, expected = SNAPSHOT_FORMAT, "matcher snapshot of another format; rebuilding from the log");
                    return Ok(None);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable matcher snapshot; rebuilding from the log");
                    return Ok(None);
                }
            }
            let meta: Meta = match postcard::from_bytes(&meta) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable matcher snapshot; rebuilding from the log");
                    return Ok(None);
                }
            };
            if meta.shard != shard {
                tracing::warn!(found = %meta.shard, expected = %shard, "matcher snapshot of another shard; rebuilding from the log");
                return Ok(None);
            }
            let mut incidents = Vec::new();
            for (key, value) in store.scan_prefix(INCIDENTS)? {
                let id = std::str::from_utf8(&key[INCIDENTS.len()..])
                    .ok()
                    .and_then(|s| IncidentId::parse("snapshot", s).ok());
                let snapshot = postcard::from_bytes::<IncidentSnapshot>(&value).ok();
                match (id, snapshot) {
                    (Some(id), Some(s)) => incidents.push((id, s)),
                    _ => {
                        tracing::warn!("a matcher snapshot entry does not decode; rebuilding from the log");
                        return Ok(None);
                    }
                }
            }
            Ok(Some((meta.through_seq, incidents)))
        })
        .await
    }

    /// Writes every incident's encoded state and the position they reflect, atomically.
    pub async fn save(
        &self,
        through_seq: u64,
        incidents: Vec<(IncidentId, Vec<u8>)>,
    ) -> Result<(), MatcherError> {
        let (store, shard) = (self.store.clone(), self.shard);
        blocking(move || {
            let meta = postcard::to_stdvec(&Meta {
                format: SNAPSHOT_FORMAT,
                through_seq,
                shard,
            })
            .map_err(|e| MatcherError::Snapshot(e.to_string()))?;
            let changes = incidents
                .into_iter()
                .map(|(id, bytes)| Change::Put([INCIDENTS, id.as_str().as_bytes()].concat(), bytes))
                .chain(std::iter::once(Change::Put(META.to_vec(), meta)));
            Ok(store.write(changes)?)
        })
        .await
    }
}

/// The position of the snapshot in `dir` for `shard`, if it holds a usable one (for operators
/// and tests).
pub async fn position(dir: &Path, shard: Shard) -> Result<Option<u64>, MatcherError> {
    Ok(Snapshots::open(dir.to_path_buf(), shard)
        .await?
        .load()
        .await?
        .map(|(seq, _)| seq))
}

/// Encodes one incident for a snapshot.
pub fn encode(incident: &IncidentRef<'_>) -> Result<Vec<u8>, MatcherError> {
    postcard::to_stdvec(incident).map_err(|e| MatcherError::Snapshot(e.to_string()))
}

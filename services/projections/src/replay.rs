//! Replay for operators: read models rebuilt from sequence 1, or built as of a point in the log.
//!
//! Both read the log with an ordered consumer (no server-side state) into a fresh database.
//! A rebuild builds next to the live read models and swaps directories only once it has
//! finished, so a failed rebuild leaves the old read models in place. The picture "as of a log
//! time T" is the longest prefix of the log whose events were all recorded at or before T: it
//! ends just before the first event recorded after T, so it is a state that really existed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_log::{LogConfig, LogConsumer};
use muster_schema::Timestamp;

use crate::ProjectionsError;
use crate::db::Db;
use crate::follow;

/// How far to fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The end of the log when the replay starts.
    End,
    /// Through this sequence.
    Seq(u64),
    /// Up to (not including) the first event recorded after this log time.
    Time(Timestamp),
}

/// Where a replay has got to.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub position: u64,
    pub target: u64,
    pub events: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn eta(&self) -> Duration {
        let rate = self.events_per_s();
        if rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.target.saturating_sub(self.position) as f64 / rate)
    }
}

/// What a replay built.
#[derive(Debug, Clone)]
pub struct Report {
    pub dir: PathBuf,
    pub position: u64,
    pub events: u64,
    pub set_aside: u64,
    pub elapsed: Duration,
    /// Of `elapsed`, the time the folding stage was busy: folding, or waiting for the previous
    /// batch's commit (the rest it waited for the log).
    pub folding: Duration,
}

/// Folds the log from sequence 1 into a new database at `into` (which must not hold one yet).
pub async fn build(
    nats_url: &str,
    log: &LogConfig,
    into: &Path,
    until: Until,
    mut progress: impl FnMut(&Progress),
) -> Result<Report, ProjectionsError> {
    if into.exists()
        && std::fs::read_dir(into)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ProjectionsError::Replay(format!(
            "{} already exists and is not empty: choose a new directory",
            into.display()
        )));
    }
    let (_client, mut stream) = muster_log::open(nats_url, "muster-replay", log).await?;
    let last = stream
        .info()
        .await
        .map_err(|e| ProjectionsError::Info(e.to_string()))?
        .state
        .last_sequence;
    let target = match until {
        Until::Seq(n) if n > last => {
            return Err(ProjectionsError::Replay(format!(
                "--seq {n} is beyond the end of the log (sequence {last})"
            )));
        }
        Until::Seq(n) => n,
        Until::End | Until::Time(_) => last,
    };
    let dir = into.to_path_buf();
    let db = Arc::new(
        tokio::task::spawn_blocking(move || Db::open(&dir))
            .await
            .map_err(|e| ProjectionsError::Task(e.to_string()))??,
    );
    let started = Instant::now();
    let mut report = Report {
        dir: into.to_path_buf(),
        position: 0,
        events: 0,
        set_aside: 0,
        elapsed: Duration::ZERO,
        folding: Duration::ZERO,
    };
    if target > 0 {
        let mut consumer = LogConsumer::replay(&stream, 1).await?;
        // Three stages at once: this loop reads batch N+2 while a task folds batch N+1 over
        // batch N, which is being committed.
        let (to_fold, mut batches) = tokio::sync::mpsc::channel::<Vec<follow::Item>>(1);
        let (done_tx, mut done) = tokio::sync::watch::channel((0u64, 0u64, 0u64));
        let folder = {
            let db = Arc::clone(&db);
            tokio::spawn(async move {
                let mut pipeline = follow::Pipeline::new(db, follow::Commit::Unlogged);
                let mut busy = Duration::ZERO;
                let (mut events, mut set_aside) = (0, 0);
                let mut count = |r: Option<(follow::BatchReport, ())>| {
                    if let Some((r, ())) = r {
                        events += r.applied + r.set_aside;
                        set_aside += r.set_aside;
                        done_tx.send_replace((r.last_seq, events, set_aside));
                    }
                };
                while let Some(items) = batches.recv().await {
                    let t = Instant::now();
                    count(pipeline.push(items, ()).await?);
                    busy += t.elapsed();
                }
                let t = Instant::now();
                count(pipeline.settle().await?);
                busy += t.elapsed();
                Ok::<_, ProjectionsError>(busy)
            })
        };
        let mut read_to = 0;
        while read_to < target {
            let Some(mut batch) = follow::next_batch(&mut consumer, 5_000).await else {
                break;
            };
            read_to = batch.last().map_or(read_to, |d| d.seq);
            let mut items = follow::items(&mut batch);
            let mut end = false;
            if let Some(cut) = items.iter().position(|(seq, _, env)| {
                *seq > target
                    || matches!((until, env), (Until::Time(t), Ok(e)) if e.recorded_at > t)
            }) {
                items.truncate(cut);
                end = true;
            }
            if !items.is_empty() && to_fold.send(items).await.is_err() {
                break; // the folder stopped: its error comes from awaiting it below
            }
            let (position, events, _) = *done.borrow_and_update();
            progress(&Progress {
                position,
                target,
                events,
                elapsed: started.elapsed(),
            });
            if end {
                break;
            }
        }
        drop(to_fold);
        report.folding = folder
            .await
            .map_err(|e| ProjectionsError::Task(e.to_string()))??;
        (report.position, report.events, report.set_aside) = *done.borrow();
    }
    let flushed = Arc::clone(&db);
    tokio::task::spawn_blocking(move || flushed.flush())
        .await
        .map_err(|e| ProjectionsError::Task(e.to_string()))??;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Drops the read models at `dir` and rebuilds them from sequence 1 to the end of the log.
/// The projections service must not be running on `dir`.
pub async fn rebuild(
    nats_url: &str,
    log: &LogConfig,
    dir: &Path,
    progress: impl FnMut(&Progress),
) -> Result<Report, ProjectionsError> {
    if dir.exists() {
        // Opening takes RocksDB's lock: it fails while a service holds the directory.
        let probe = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Db::open(&probe).map(drop))
            .await
            .map_err(|e| ProjectionsError::Task(e.to_string()))?
            .map_err(|e| {
                ProjectionsError::Replay(format!(
                    "cannot open {} ({e}): is a projections service running on it? stop it first",
                    dir.display()
                ))
            })?;
    }
    let fresh = sibling(dir, "rebuild");
    remove_dir(&fresh)?;
    let mut report = build(nats_url, log, &fresh, Until::End, progress).await?;
    let old = sibling(dir, "old");
    remove_dir(&old)?;
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| io("moving the old read models aside", dir, &e))?;
    }
    std::fs::rename(&fresh, dir).map_err(|e| io("moving the rebuilt read models in", dir, &e))?;
    remove_dir(&old)?;
    report.dir = dir.to_path_buf();
    Ok(report)
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

fn remove_dir(dir: &Path) -> Result<(), ProjectionsError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", dir, &e)),
    }
}

fn io(what: &str, dir: &Path, e: &std::io::Error) -> ProjectionsError {
    ProjectionsError::Replay(format!("{what} {}: {e}", dir.display()))
}

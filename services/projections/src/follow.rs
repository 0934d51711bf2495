//! Folding deliveries from the log into the database, a batch at a time.
//!
//! A batch is what the consumer has ready (up to [`MAX_BATCH`] events, or until it has caught
//! up): it is folded in one transaction and committed in one `WriteBatch` holding the changes
//! and the new position. Only then is the last message acknowledged (which acknowledges the
//! batch) and the position published to queries and watchers.

use std::sync::Arc;
use std::time::Duration;

use muster_log::{Delivered, LogConsumer};
use muster_readmodel::{Changes, Layered, Outcome, Read, Tx, apply};
use muster_schema::{DecodeError, Envelope};

use crate::ProjectionsError;
use crate::db::Db;

/// The most events folded into one transaction.
pub const MAX_BATCH: usize = 2_000;

/// One event to fold.
pub type Item = (u64, String, Result<Envelope, DecodeError>);

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub applied: u64,
    pub skipped: u64,
    pub set_aside: u64,
    pub last_seq: u64,
}

/// The next batch: waits for one delivery, then takes what follows while the consumer says
/// more is pending (each for at most a short moment). `None` when the consumer has closed.
pub async fn next_batch(consumer: &mut LogConsumer, max: usize) -> Option<Vec<Delivered>> {
    let mut batch = Vec::new();
    loop {
        match consumer.next().await? {
            Ok(d) => {
                batch.push(d);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the log failed; the consumer recovers by itself");
            }
        }
    }
    while batch.len() < max && batch.last().is_some_and(|d| d.pending > 0) {
        match tokio::time::timeout(Duration::from_millis(50), consumer.next()).await {
            Ok(Some(Ok(d))) => batch.push(d),
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "reading the log failed; the consumer recovers by itself");
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

/// Takes the events out of deliveries (the deliveries are kept for acknowledging).
pub fn items(batch: &mut [Delivered]) -> Vec<Item> {
    batch
        .iter_mut()
        .map(|d| {
            let env = std::mem::replace(&mut d.envelope, Err(DecodeError::Empty));
            (d.seq, d.subject.clone(), env)
        })
        .collect()
}

pub use muster_store::Durability as Commit;

/// Folds `items` in one transaction over `base` (the database, or the database under a batch
/// still being committed) and returns its changes, not yet committed.
pub fn fold<R: Read + ?Sized>(
    base: &R,
    items: &[Item],
) -> Result<(BatchReport, Changes), ProjectionsError> {
    let mut report = BatchReport::default();
    let mut tx = Tx::new(base);
    for (seq, subject, env) in items {
        match apply(&mut tx, *seq, subject, env)? {
            Outcome::Applied => report.applied += 1,
            Outcome::Skipped => report.skipped += 1,
            Outcome::SetAside(reason) => {
                report.set_aside += 1;
                tracing::warn!(seq, %subject, %reason, "event set aside");
            }
        }
        report.last_seq = *seq;
    }
    Ok((report, tx.finish()))
}

/// Folds `items` in one transaction and commits it (blocking: run on a blocking thread).
pub fn fold_batch(
    db: &Db,
    items: &[Item],
    commit: Commit,
) -> Result<BatchReport, ProjectionsError> {
    let (report, changes) = fold(db, items)?;
    if !changes.is_empty() {
        db.commit(&changes, commit)?;
    }
    Ok(report)
}

/// A batch whose commit is running.
struct InFlight<T> {
    changes: Arc<Changes>,
    report: BatchReport,
    token: T,
    commit: tokio::task::JoinHandle<Result<(), muster_store::StoreError>>,
}

/// Folding and committing overlapped: batch N+1 is folded on one blocking thread, reading
/// through batch N's changes ([`Layered`]) while batch N is committed on another. Batches are
/// committed one at a time, in order; each comes back (with the token it was pushed with, e.g.
/// the delivery to acknowledge) only once its commit has finished.
pub struct Pipeline<T> {
    db: Arc<Db>,
    durability: Commit,
    in_flight: Option<InFlight<T>>,
}

impl<T> std::fmt::Debug for Pipeline<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("durability", &self.durability)
            .field(
                "committing",
                &self.in_flight.as_ref().map(|b| b.report.last_seq),
            )
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Pipeline<T> {
    pub fn new(db: Arc<Db>, durability: Commit) -> Self {
        Self {
            db,
            durability,
            in_flight: None,
        }
    }

    /// Folds `items` over the database and the batch being committed, waits for that commit,
    /// and starts committing this batch. Returns the batch whose commit finished, if any.
    pub async fn push(
        &mut self,
        items: Vec<Item>,
        token: T,
    ) -> Result<Option<(BatchReport, T)>, ProjectionsError> {
        let db = Arc::clone(&self.db);
        let top = self.in_flight.as_ref().map(|f| Arc::clone(&f.changes));
        let (report, changes) = tokio::task::spawn_blocking(move || match &top {
            Some(top) => fold(&Layered { top, base: &*db }, &items),
            None => fold(&*db, &items),
        })
        .await
        .map_err(|e| ProjectionsError::Task(e.to_string()))??;
        let committed = self.settle().await?;
        let changes = Arc::new(changes);
        let (db, to_commit, durability) =
            (Arc::clone(&self.db), Arc::clone(&changes), self.durability);
        let commit = tokio::task::spawn_blocking(move || {
            if to_commit.is_empty() {
                Ok(())
            } else {
                db.commit(&to_commit, durability)
            }
        });
        self.in_flight = Some(InFlight {
            changes,
            report,
            token,
            commit,
        });
        Ok(committed)
    }

    /// Waits for the batch being committed, if any, and returns it.
    pub async fn settle(&mut self) -> Result<Option<(BatchReport, T)>, ProjectionsError> {
        let Some(f) = self.in_flight.take() else {
            return Ok(None);
        };
        f.commit
            .await
            .map_err(|e| ProjectionsError::Task(e.to_string()))??;
        Ok(Some((f.report, f.token)))
    }
}

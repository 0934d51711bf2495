//! Folding deliveries from the log into the database, a batch at a time.
//!
//! A batch is what the consumer has ready (up to [`MAX_BATCH`] events, or until it has caught
//! up): it is folded in one transaction and committed in one `WriteBatch` holding the changes
//! and the new position. Only then is the last message acknowledged (which acknowledges the
//! batch) and the position published to queries and watchers.

use std::sync::Arc;
use std::time::Duration;

use muster_log::{Delivered, LogConsumer};
use muster_readmodel::{Outcome, Tx, apply};
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

/// Folds `items` in one transaction and commits it (blocking: run on a blocking thread).
pub fn fold_batch(
    db: &Db,
    items: &[Item],
    commit: Commit,
) -> Result<BatchReport, ProjectionsError> {
    let mut report = BatchReport::default();
    let mut tx = Tx::new(db);
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
    if !tx.is_empty() {
        db.commit(tx.into_changes(), commit)?;
    }
    Ok(report)
}

/// [`fold_batch`] on a blocking thread.
pub async fn fold_batch_blocking(
    db: &Arc<Db>,
    items: Vec<Item>,
    commit: Commit,
) -> Result<BatchReport, ProjectionsError> {
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || fold_batch(&db, &items, commit))
        .await
        .map_err(|e| ProjectionsError::Task(e.to_string()))?
}

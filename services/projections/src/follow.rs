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
                // Room for what is waiting after it, so the batch is not copied as it grows.
                batch.reserve_exact((d.pending as usize).min(max.saturating_sub(1)) + 1);
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

/// Takes the events and their subjects out of deliveries (the deliveries are kept for
/// acknowledging).
pub fn items(batch: &mut [Delivered]) -> Vec<Item> {
    batch
        .iter_mut()
        .map(|d| {
            let env = std::mem::replace(&mut d.envelope, Err(DecodeError::Empty));
            (d.seq, std::mem::take(&mut d.subject), env)
        })
        .collect()
}

pub use muster_store::Durability as Commit;

/// Folds `items` in one transaction over `base` (the database, or the database under a batch
/// still being committed) and returns its changes, not yet committed. `expect` is how many
/// changes each column family will probably take ([`Tx::sized`]; empty: no idea).
pub fn fold<R: Read + ?Sized>(
    base: &R,
    items: &[Item],
    expect: &[usize],
) -> Result<(BatchReport, Changes), ProjectionsError> {
    let mut report = BatchReport::default();
    let mut tx = Tx::sized(base, expect);
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
    let (report, changes) = fold(db, items, &[])?;
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
        // Batches in a row look alike: expect this one's changes in the last one's proportions.
        let expect: Vec<usize> = match &self.in_flight {
            Some(f) => {
                let events = (f.report.applied + f.report.skipped + f.report.set_aside).max(1);
                let per_event = |n: usize| n * items.len() / events as usize;
                f.changes.lens().into_iter().map(per_event).collect()
            }
            None => Vec::new(),
        };
        let (report, changes) = tokio::task::spawn_blocking(move || match &top {
            Some(top) => fold(&Layered { top, base: &*db }, &items, &expect),
            None => fold(&*db, &items, &expect),
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

#[cfg(test)]
mod tests {
    use muster_readmodel::MemStore;
    use muster_schema::events::*;
    use muster_schema::*;

    use super::*;

    /// A log whose later events read what earlier ones wrote: needs updated and withdrawn,
    /// offers of shared providers withdrawn, a need reported twice (set aside), an event that
    /// does not decode.
    fn log() -> Vec<Item> {
        let t0 = 1_800_000_000_000_000;
        let incident = IncidentId::parse("i", "pipeline").expect("valid");
        let window = TimeWindow::new(t0, t0 + 86_400_000_000).expect("valid");
        let location = GeoPoint::from_degrees(53.0, -1.0).expect("valid");
        let need_spec = |urgency: u32| NeedSpecV1 {
            category: Category::Food,
            urgency: Urgency::new("u", urgency).expect("valid"),
            party_size: 1,
            window,
            location,
            required_skills: vec![],
            required_verifications: vec![],
            vulnerable: urgency == 5,
        };
        let need = |i: u64| EntityId::hash(&[b"n", &i.to_le_bytes()]);
        let offer = |i: u64| EntityId::hash(&[b"o", &i.to_le_bytes()]);
        let mut events = vec![Event::IncidentDeclaredV1(IncidentDeclaredV1 {
            incident: incident.clone(),
            name: "pipeline".into(),
            partitions: vec![],
            categories: vec![],
            policy: PolicyV1::default(),
        })];
        for i in 0..20u64 {
            events.push(Event::OfferRegisteredV1(OfferRegisteredV1 {
                offer: offer(i),
                reference: Reference::parse("r", &format!("o{i}")).expect("valid"),
                provider: Provider::Volunteer(
                    PersonId::parse("p", &format!("vol-{}", i % 7)).expect("valid"),
                ),
                spec: OfferSpecV1 {
                    kinds: vec![Category::Food],
                    skills: vec![],
                    capacity: 1,
                    location,
                    travel_radius_m: 5_000,
                    availability: vec![window],
                },
                personal: Personal::None,
            }));
            events.push(Event::NeedReportedV1(NeedReportedV1 {
                need: need(i),
                reference: Reference::parse("r", &format!("n{i}")).expect("valid"),
                spec: need_spec((i % 5) as u32 + 1),
                personal: Personal::None,
            }));
        }
        for i in (0..20).step_by(3) {
            events.push(Event::NeedUpdatedV1(NeedUpdatedV1 {
                need: need(i),
                spec: need_spec(5),
                personal: Personal::None,
            }));
        }
        for i in (0..20).step_by(4) {
            events.push(Event::NeedWithdrawnV1(NeedWithdrawnV1 {
                need: need(i),
                reason: "resolved".into(),
            }));
        }
        for i in (0..20).step_by(5) {
            events.push(Event::OfferWithdrawnV1(OfferWithdrawnV1 {
                offer: offer(i),
                reason: "away".into(),
            }));
        }
        events.push(Event::NeedReportedV1(NeedReportedV1 {
            need: need(1),
            reference: Reference::parse("r", "n1-again").expect("valid"),
            spec: need_spec(2),
            personal: Personal::None,
        }));
        let mut items: Vec<Item> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                let seq = i as u64 + 1;
                let env = Envelope::generated(
                    seq,
                    incident.clone(),
                    PartitionCode::parse("p", "A1").expect("valid"),
                    Timestamp(t0 + seq as i64 * 1_000),
                    AgencyId::parse("a", "council").expect("valid"),
                    event,
                );
                (seq, subject::for_envelope(&env), Ok(env))
            })
            .collect();
        let seq = items.len() as u64 + 1;
        items.push((seq, "muster.garbage".into(), Err(DecodeError::Empty)));
        items
    }

    fn copy(items: &[Item]) -> Vec<Item> {
        items
            .iter()
            .map(|(seq, subject, env)| {
                let env = match env {
                    Ok(e) => Ok(e.clone()),
                    Err(_) => Err(DecodeError::Empty),
                };
                (*seq, subject.clone(), env)
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipelined_fold_equals_one_transaction_per_event() {
        let items = log();
        let mut expected = MemStore::default();
        expected
            .fold_all(items.iter().map(|(seq, s, env)| (*seq, s.as_str(), env)))
            .expect("folds");
        // Small batches several times over: folding through the batch being committed is
        // what makes the result right, whether or not that commit has landed yet.
        for size in [1, 1, 1, 1, 1, 2, 3, 7, 50, 1_000] {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = Arc::new(Db::open(dir.path()).expect("open"));
            let mut pipeline = Pipeline::new(Arc::clone(&db), Commit::Unlogged);
            let mut committed = Vec::new();
            for (i, batch) in items.chunks(size).enumerate() {
                committed.extend(pipeline.push(copy(batch), i).await.expect("push"));
            }
            committed.extend(pipeline.settle().await.expect("settle"));
            let order: Vec<usize> = committed.iter().map(|(_, i)| *i).collect();
            let batches = items.len().div_ceil(size);
            assert_eq!(
                order,
                (0..batches).collect::<Vec<_>>(),
                "in order, each once"
            );
            let set_aside: u64 = committed.iter().map(|(r, _)| r.set_aside).sum();
            assert_eq!(set_aside, 2, "the second report and the garbage");
            assert_eq!(
                committed.last().map(|(r, _)| r.last_seq),
                Some(items.len() as u64)
            );
            assert_eq!(
                db.checksum().expect("checksum"),
                expected.checksum(),
                "batches of {size}"
            );
        }
    }
}

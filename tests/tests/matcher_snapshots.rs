//! The matcher resumes from its RocksDB snapshot and decides as if it had never stopped; an
//! unreadable snapshot is rebuilt from the log; a stop gives up a round in progress and still
//! snapshots what was folded.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use muster_proto::v1 as pb;
use muster_schema::Event;
use muster_tests::workload::{self, needs, offers, req};
use muster_tests::{Intake, Nats, read_all};

async fn bulk(
    c: &mut muster_proto::v1::intake_client::IntakeClient<tonic::transport::Channel>,
    key: &str,
    items: Vec<pb::bulk_item::Command>,
) {
    workload::bulk(c, "thirsk", key, items).await;
}

/// Runs the matcher until the log has been quiet for a second, then stops it cleanly.
async fn run_matcher_until_quiet(nats: &Nats, dir: &std::path::Path) {
    let mut config = muster_matcher::Config::new(nats.url());
    config.data_dir = Some(dir.to_path_buf());
    config.snapshot_every = 7;
    let matcher = muster_tests::Matcher::start(config);
    let (_, stream) = nats.log().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut len = read_all(&stream).await.len();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(1) {
        assert!(Instant::now() < deadline, "the log never went quiet");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = read_all(&stream).await.len();
        if now != len {
            len = now;
            quiet_since = Instant::now();
        }
    }
    matcher.stop().await;
}

async fn check(nats: &Nats) -> usize {
    let (_, stream) = nats.log().await;
    let log = read_all(&stream).await;
    let mut assigned = BTreeSet::new();
    for (_, _, e) in &log {
        if let Event::AssignmentProposedV1(p) = &e.event {
            assert!(assigned.insert(p.need), "need {} assigned twice", p.need);
        }
    }
    let report = muster_matcher::audit::verify(&nats.url(), &Default::default())
        .await
        .expect("audit");
    assert_eq!(report.divergence, None);
    assigned.len()
}

type Client = muster_proto::v1::intake_client::IntakeClient<tonic::transport::Channel>;

/// A nats-server, intake, and the incident declared.
async fn setup() -> (Nats, Intake, Client) {
    let nats = Nats::start().await;
    let intake = Intake::start(&nats.url()).await;
    let mut c = intake.client().await;
    c.declare_incident(req(pb::DeclareIncidentRequest {
        idempotency_key: "d".into(),
        incident: "thirsk".into(),
        name: "Thirsk".into(),
        partitions: vec![],
        categories: vec![],
        policy: None,
    }))
    .await
    .expect("declare");
    (nats, intake, c)
}

#[tokio::test]
async fn the_matcher_resumes_from_its_snapshot() {
    let (nats, _intake, mut c) = setup().await;
    bulk(&mut c, "offers", offers(0, 20)).await;
    bulk(&mut c, "needs-1", needs(0, 8)).await;
    let dir = tempfile::tempdir().expect("tempdir");

    run_matcher_until_quiet(&nats, dir.path()).await;
    let (_, mut stream) = nats.log().await;
    let end = stream.info().await.expect("info").state.last_sequence;
    let first = muster_matcher::snapshot::position(dir.path(), muster_matcher::Shard::ALL)
        .await
        .expect("snapshot")
        .expect("a snapshot");
    assert_eq!(first, end, "a clean stop snapshots everything folded");
    assert_eq!(check(&nats).await, 8);

    // While it is stopped, more needs arrive; it resumes from the snapshot and matches them.
    bulk(&mut c, "needs-2", needs(8, 8)).await;
    run_matcher_until_quiet(&nats, dir.path()).await;
    let second = muster_matcher::snapshot::position(dir.path(), muster_matcher::Shard::ALL)
        .await
        .expect("snapshot")
        .expect("a snapshot");
    assert!(second > first);
    assert_eq!(
        check(&nats).await,
        16,
        "every need matched once across the restart"
    );
}

#[tokio::test]
async fn an_unreadable_snapshot_is_rebuilt_from_the_log() {
    let (nats, _intake, mut c) = setup().await;
    bulk(&mut c, "offers", offers(0, 10)).await;
    bulk(&mut c, "needs", needs(0, 5)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = muster_store::Store::open(dir.path()).expect("open");
        store
            .write([muster_store::Change::Put(
                b"matcher/meta".to_vec(),
                b"not a snapshot".to_vec(),
            )])
            .expect("corrupt");
    }
    run_matcher_until_quiet(&nats, dir.path()).await;
    assert_eq!(check(&nats).await, 5, "rebuilt from the log and matched");
    assert!(
        muster_matcher::snapshot::position(dir.path(), muster_matcher::Shard::ALL)
            .await
            .expect("read")
            .is_some(),
        "a fresh snapshot replaced it"
    );
}

/// Waits until the server has delivered the whole log to some consumer of it (the matcher's).
async fn wait_until_delivered(stream: &async_nats::jetstream::stream::Stream, last: u64) {
    use futures::TryStreamExt;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let consumers: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .expect("list consumers");
        if consumers
            .iter()
            .any(|c| c.delivered.stream_sequence >= last)
        {
            return;
        }
        assert!(Instant::now() < deadline, "the log was never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stop_gives_up_a_round_in_progress_on_the_matchers_own_thread() {
    // Everyone at one point: every need's candidates are every offer, a round that takes
    // minutes in a debug build.
    const N: usize = 3_000;
    let (nats, _intake, mut c) = setup().await;
    for from in (0..N).step_by(1_000) {
        bulk(&mut c, &format!("offers-{from}"), offers(from, 1_000)).await;
        bulk(&mut c, &format!("needs-{from}"), needs(from, 1_000)).await;
    }
    let (_, stream) = nats.log().await;
    let last = muster_tests::last_seq(&stream).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = muster_matcher::Config::new(nats.url());
    config.data_dir = Some(dir.path().to_path_buf());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let matcher = muster_matcher::spawn(config, async {
        let _ = stopped.await;
    })
    .expect("spawn");
    // Once it has the whole log it cuts its first round, on its own thread.
    wait_until_delivered(&stream, last).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        muster_tests::last_seq(&stream).await,
        last,
        "the round is still being decided {:?} after the start",
        started.elapsed()
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), matcher.join())
        .await
        .expect("a stop gives the round up rather than waiting for it")
        .expect("stopped cleanly");
    assert_eq!(
        muster_tests::last_seq(&stream).await,
        last,
        "nothing of the round given up was appended"
    );
    assert_eq!(
        muster_matcher::snapshot::position(dir.path(), muster_matcher::Shard::ALL)
            .await
            .expect("snapshot")
            .expect("a snapshot"),
        last,
        "the clean stop snapshotted everything folded"
    );
}

#[tokio::test]
async fn a_snapshot_of_another_shard_is_not_resumed() {
    let (nats, _intake, mut c) = setup().await;
    bulk(&mut c, "offers", offers(0, 4)).await;
    bulk(&mut c, "needs", needs(0, 2)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    run_matcher_until_quiet(&nats, dir.path()).await;
    let all = muster_matcher::Shard::ALL;
    assert!(
        muster_matcher::snapshot::position(dir.path(), all)
            .await
            .expect("read")
            .is_some()
    );
    // Taken over every incident: a matcher of one shard of two must not resume from it.
    let half = muster_matcher::Shard { index: 0, of: 2 };
    assert_eq!(
        muster_matcher::snapshot::position(dir.path(), half)
            .await
            .expect("read"),
        None
    );
}

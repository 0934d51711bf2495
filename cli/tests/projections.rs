//! The projections as operators run them: the real `muster projections` process folding a log
//! that keeps growing, killed with SIGKILL at random points and restarted each time. Once it
//! has caught up, its RocksDB read model must equal an independent in-memory fold of the log,
//! byte for byte: nothing skipped, nothing applied twice. Then `muster replay rebuild` and
//! `muster replay as-of` are run as an operator would.

use std::process::Stdio;
use std::time::{Duration, Instant};

use muster_proto::v1 as pb;
use muster_tests::workload::{self, req};
use muster_tests::{Intake, Nats, independent_fold, last_seq};
use rand::{Rng, SeedableRng};
use tokio::process::{Child, Command};

const INCIDENT: &str = "thirsk";

fn projections(nats_url: &str, dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_muster"))
        .args(["projections", "--nats-url", nats_url, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn muster projections")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn position(port: u16) -> Option<u64> {
    let mut q =
        muster_proto::v1::query_client::QueryClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .ok()?;
    Some(
        q.get_position(req(pb::GetPositionRequest {}))
            .await
            .ok()?
            .into_inner()
            .applied_sequence,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_points_the_read_model_still_equals_the_fold_of_the_log() {
    let seed: u64 = std::env::var("MUSTER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("seed {seed} (set MUSTER_TEST_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let nats = Nats::start().await;
    let intake = Intake::start(&nats.url()).await;
    let mut c = intake.client().await;
    workload::declare(&mut c, INCIDENT).await;
    workload::bulk(&mut c, INCIDENT, "offers", workload::offers(0, 300)).await;
    let (_, stream) = nats.log().await;

    // The matcher runs alongside so the log holds rounds and assignments too.
    let matcher = muster_tests::Matcher::start(muster_matcher::Config::new(nats.url()));
    // Needs keep arriving in batches of random size for the whole test.
    let writer = {
        let mut c = intake.client().await;
        let sizes: Vec<usize> = (0..40).map(|_| rng.random_range(1..60)).collect();
        tokio::spawn(async move {
            let mut from = 0;
            for (b, n) in sizes.into_iter().enumerate() {
                workload::bulk(
                    &mut c,
                    INCIDENT,
                    &format!("needs-{b}"),
                    workload::needs(from, n),
                )
                .await;
                from += n;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut kills = 0;
    let mut positions_at_kill = Vec::new();
    for i in 0..8 {
        let mut p = projections(&nats.url(), dir.path(), port);
        if i == 0 {
            // However slow the machine, the first kill lands once something has been applied
            // and while the log is still growing.
            let deadline = Instant::now() + Duration::from_secs(30);
            while position(port).await.is_none_or(|p| p == 0) {
                assert!(
                    Instant::now() < deadline,
                    "the projection never started folding"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        positions_at_kill.push(position(port).await);
        p.start_kill().expect("kill -9");
        p.wait().await.expect("reaped");
        kills += 1;
    }
    writer.await.expect("writer");
    tokio::time::sleep(Duration::from_millis(500)).await;
    matcher.stop().await;

    // One last start: it must catch up with the whole log.
    let end = last_seq(&stream).await;
    let mut p = projections(&nats.url(), dir.path(), port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while position(port).await != Some(end) {
        assert!(
            Instant::now() < deadline,
            "the projection never caught up with {end}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stop it cleanly (SIGTERM) so its directory can be opened here.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.id().expect("pid") as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = p.wait().await.expect("reaped");
    assert!(status.success(), "a clean stop: {status}");
    assert_eq!(kills, 8);
    println!("positions at the kills: {positions_at_kill:?}; log end {end}");
    assert!(
        positions_at_kill
            .iter()
            .flatten()
            .any(|p| *p > 0 && *p < end),
        "some kills landed in the middle of the log: {positions_at_kill:?} of {end}"
    );

    let memory = independent_fold(&stream).await;
    let db = muster_projections::db::Db::open(dir.path()).expect("open the read model");
    assert_eq!(db.position().expect("position"), end);
    assert_eq!(
        db.checksum().expect("checksum"),
        memory.checksum(),
        "the read model after {kills} kills is the fold of the log (seed {seed})"
    );
    drop(db);

    // The operators' tools on the same log.
    let rebuild = Command::new(env!("CARGO_BIN_EXE_muster"))
        .args(["replay", "rebuild", "--nats-url", &nats.url(), "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .expect("run muster replay rebuild");
    let out = String::from_utf8_lossy(&rebuild.stdout);
    assert!(
        rebuild.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    assert!(out.contains(&format!("at sequence {end}")), "{out}");
    assert!(
        String::from_utf8_lossy(&rebuild.stderr).contains("events/s"),
        "a progress line"
    );
    let db = muster_projections::db::Db::open(dir.path()).expect("open the rebuilt model");
    assert_eq!(db.checksum().expect("checksum"), memory.checksum());
    drop(db);

    let past = dir.path().join("as-of-100");
    let as_of = Command::new(env!("CARGO_BIN_EXE_muster"))
        .args([
            "replay",
            "as-of",
            "--seq",
            "100",
            "--nats-url",
            &nats.url(),
            "--into",
        ])
        .arg(&past)
        .output()
        .await
        .expect("run muster replay as-of");
    assert!(
        as_of.status.success(),
        "{}",
        String::from_utf8_lossy(&as_of.stderr)
    );
    let snapshot = muster_projections::db::Db::open_read_only(&past).expect("open as-of");
    assert_eq!(snapshot.position().expect("position"), 100);
}

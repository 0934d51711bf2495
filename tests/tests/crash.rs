//! The log survives a crash of nats-server in the middle of a concurrent load: every request
//! that was answered OK is in the stream exactly once, and every request that failed can be
//! retried with its idempotency key without storing anything twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use muster_proto::v1 as pb;
use muster_tests::{Intake, Nats, read_all};
use tonic::Request;

const AGENCY: &str = "leeds-council";
const INCIDENT: &str = "leeds-floods";
const CLIENTS: usize = 24;
const PER_CLIENT: usize = 60;

fn req<T>(body: T) -> Request<T> {
    let mut r = Request::new(body);
    r.metadata_mut()
        .insert("x-muster-agency", AGENCY.parse().expect("ascii"));
    r
}

fn need(key: &str) -> pb::ReportNeedRequest {
    let ts = |s| {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    };
    pb::ReportNeedRequest {
        idempotency_key: key.into(),
        incident: INCIDENT.into(),
        partition: "E08000035".into(),
        reference: format!("ref-{key}"),
        need: Some(pb::NeedSpec {
            category: pb::Category::Food as i32,
            urgency: 3,
            party_size: 1,
            window: Some(pb::TimeWindow {
                start: ts(1_800_000_000),
                end: ts(1_800_086_400),
            }),
            location: Some(pb::Location {
                lat: 53.8,
                lon: -1.55,
            }),
            required_skills: vec![],
            required_verifications: vec![],
            vulnerable: false,
        }),
        personal: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_requests_survive_a_kill_9_and_failed_ones_retry_safely() {
    let mut nats = Nats::start().await;
    let intake = Intake::start(&nats.url()).await;
    let mut admin = intake.client().await;
    admin
        .declare_incident(req(pb::DeclareIncidentRequest {
            idempotency_key: "declare".into(),
            incident: INCIDENT.into(),
            name: "Leeds floods".into(),
            partitions: vec![],
            categories: vec![],
            policy: None,
        }))
        .await
        .expect("declare");

    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let mut client = intake.client().await;
        let answered = answered.clone();
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..PER_CLIENT {
                let key = format!("c{c}-r{i}");
                let mut r = req(need(&key));
                r.set_timeout(Duration::from_secs(15));
                let outcome = client.report_need(r).await.map(|r| r.into_inner());
                if outcome.is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                outcomes.push((key, outcome));
            }
            outcomes
        }));
    }

    // Kill the server once a fair part of the load has been acknowledged, mid-flight.
    while answered.load(Ordering::Relaxed) < CLIENTS * PER_CLIENT / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nats.server.kill9().await.expect("kill -9");
    let at_kill = answered.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.server
        .restart()
        .await
        .expect("restart on the same port and store");

    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = Vec::new();
    for c in clients {
        for (key, outcome) in c.await.expect("client task") {
            match outcome {
                Ok(reply) => {
                    acked.insert(key, reply.sequence);
                }
                Err(status) => failed.push((key, status.code())),
            }
        }
    }
    assert!(
        at_kill < CLIENTS * PER_CLIENT,
        "the kill happened before the load finished"
    );
    eprintln!(
        "acked {} (at kill: {at_kill}), failed {}: {:?}",
        acked.len(),
        failed.len(),
        failed.iter().take(3).collect::<Vec<_>>()
    );

    let (_, stream) = nats.log().await;
    let check = |log: &[(u64, String, muster_schema::Envelope)], acked: &BTreeMap<String, u64>| {
        let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (seq, _, env) in log {
            by_key
                .entry(env.idempotency_key.as_str())
                .or_default()
                .push(*seq);
        }
        for (key, seq) in acked {
            assert_eq!(
                by_key.get(key.as_str()),
                Some(&vec![*seq]),
                "acknowledged {key} must be stored once, at {seq}"
            );
        }
        for (key, seqs) in &by_key {
            assert_eq!(seqs.len(), 1, "{key} stored {} times", seqs.len());
        }
    };
    check(&read_all(&stream).await, &acked);

    // Every client that got an error retries with the same key: each is stored exactly once.
    let mut client = intake.client().await;
    for (key, _) in &failed {
        let reply = client
            .report_need(req(need(key)))
            .await
            .expect("retry after restart")
            .into_inner();
        acked.insert(key.clone(), reply.sequence);
    }
    assert_eq!(acked.len(), CLIENTS * PER_CLIENT);
    let log = read_all(&stream).await;
    check(&log, &acked);
    assert_eq!(
        log.len(),
        1 + CLIENTS * PER_CLIENT,
        "the declaration and every request, once each"
    );
}

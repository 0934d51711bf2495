//! The services run against a 3-node JetStream cluster, as `infra/cluster/` deploys them: the
//! log's stream has 3 replicas, every service is given all three nodes' URLs, and the pipeline
//! goes on with one node killed.

use std::time::Duration;

use muster_proto::v1 as pb;
use muster_tests::workload::{self, by_reference, req};
use muster_tests::{Cluster, Intake, Matcher, Projections};

const INCIDENT: &str = "thirsk";

/// Submits `items` as one bulk, sending it again with the same key while the log is
/// unavailable (a node gone, its streams electing a new leader): as an agency's client does.
async fn bulk_until_stored(
    c: &mut muster_proto::v1::intake_client::IntakeClient<tonic::transport::Channel>,
    key: &str,
    items: Vec<pb::bulk_item::Command>,
) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let request = pb::SubmitBulkRequest {
            idempotency_key: key.into(),
            incident: INCIDENT.into(),
            items: items
                .iter()
                .cloned()
                .map(|command| pb::BulkItem {
                    command: Some(command),
                })
                .collect(),
        };
        match c.submit_bulk(req(request)).await {
            Ok(r) => return r.into_inner().items.iter().map(|i| i.sequence).collect(),
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("bulk {key}: {e:?}"),
        }
    }
}

/// Waits until the projections show need `reference` assigned (proposed to a volunteer).
async fn assigned(projections: &Projections, reference: &str, min_sequence: u64) -> pb::Need {
    let mut q = projections.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut request = req(by_reference(INCIDENT, reference, min_sequence));
        request.set_timeout(Duration::from_secs(20));
        let need = q.get_need(request).await.expect("get need").into_inner();
        if !need.current_assignment_id.is_empty() {
            return need;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{reference} not assigned within 60 s: {need:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_services_run_on_a_three_node_cluster_and_go_on_with_a_node_killed() {
    let mut cluster = Cluster::start(3).await;
    let url = cluster.url();
    let log = muster_log::LogConfig {
        replicas: 3,
        ..Default::default()
    };
    // The stream can be created once the nodes have found one another and elected a leader.
    let client = muster_log::connect(&url, "muster-test")
        .await
        .expect("connect to the cluster");
    let js = async_nats::jetstream::new(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match muster_log::provision(&js, &log).await {
            Ok(s) => break s,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("the cluster did not take the stream within 30 s: {e}"),
        }
    };
    assert_eq!(
        stream
            .info()
            .await
            .expect("stream info")
            .config
            .num_replicas,
        3
    );

    let mut intake_config = muster_intake::Config::new(url.clone());
    intake_config.log = log.clone();
    let intake = Intake::start_with(intake_config).await;
    let mut matcher_config = muster_matcher::Config::new(url.clone());
    matcher_config.log = log.clone();
    let matcher = Matcher::start(matcher_config);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut projections_config = muster_projections::Config::new(url.clone(), dir.path());
    projections_config.log = log.clone();
    let projections = Projections::start_with(projections_config).await;

    let mut c = intake.client().await;
    workload::declare(&mut c, INCIDENT).await;
    bulk_until_stored(&mut c, "offers-1", workload::offers(0, 4)).await;
    let seqs = bulk_until_stored(&mut c, "needs-1", workload::needs(0, 2)).await;
    for (i, seq) in seqs.iter().enumerate() {
        assigned(&projections, &format!("n{i}"), *seq).await;
    }

    // The node that leads the log's stream dies: the other two are a quorum and elect
    // another leader; the services' clients move to a live node.
    let leader = stream
        .info()
        .await
        .expect("stream info")
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    let n: usize = leader
        .strip_prefix("node-")
        .and_then(|n| n.parse().ok())
        .expect("a node of ours leads");
    cluster.nodes[n - 1]
        .kill9()
        .await
        .expect("kill -9 the leader");
    let seqs = bulk_until_stored(&mut c, "needs-2", workload::needs(2, 2)).await;
    for (i, seq) in seqs.iter().enumerate() {
        assigned(&projections, &format!("n{}", i + 2), *seq).await;
    }
    let info = stream.info().await.expect("stream info after the kill");
    assert_eq!(info.config.num_replicas, 3);
    assert!(
        info.state.last_sequence >= *seqs.last().expect("two needs"),
        "{:?}",
        info.state
    );

    matcher.stop().await;
    projections.shutdown().await.expect("projections stopped");
    intake.shutdown().await.expect("intake stopped");
}

//! `muster up` as a user runs it: the real binary, a supervised nats-server, gRPC over TCP.

use std::process::Stdio;
use std::time::Duration;

use muster_proto::v1 as pb;
use muster_proto::v1::intake_client::IntakeClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

struct Up {
    child: Child,
    grpc: String,
    nats: String,
}

/// `muster up` against `nats` instead of its own server, with its data in `data`.
async fn up_external(nats: &muster_tests::Nats, data: &tempfile::TempDir) -> Up {
    up(&[
        "--data-dir",
        data.path().to_str().expect("utf-8"),
        "--nats-url",
        &nats.url(),
    ])
    .await
}

/// Starts `muster up` with `args` and waits for its "muster is up" line.
async fn up(args: &[&str]) -> Up {
    let mut child = Command::new(env!("CARGO_BIN_EXE_muster"))
        .arg("up")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn muster up");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.starts_with("muster is up") {
                return line;
            }
        }
        panic!("muster up exited before it was up");
    })
    .await
    .expect("muster up within 30s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let word_after = |marker: &str| {
        line.split(marker)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("address in the up line")
            .to_string()
    };
    Up {
        grpc: format!("http://{}", word_after("gRPC on ")),
        nats: word_after("log on "),
        child,
    }
}

impl Up {
    async fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().expect("running") as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("stopped within 20s")
            .expect("wait");
        assert!(status.success(), "muster up exited with {status}");
    }
}

fn req<T>(body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-muster-agency", "hull-council".parse().expect("ascii"));
    r
}

fn declare() -> pb::DeclareIncidentRequest {
    pb::DeclareIncidentRequest {
        idempotency_key: "declare-hull".into(),
        incident: "hull-floods".into(),
        name: "Hull floods".into(),
        partitions: vec![],
        categories: vec![],
        policy: None,
    }
}

#[tokio::test]
async fn up_serves_stops_cleanly_and_keeps_its_state() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().to_str().expect("utf-8 path");
    let first = up(&["--data-dir", dir]).await;
    let mut client = IntakeClient::connect(first.grpc.clone())
        .await
        .expect("connect");
    let declared = client
        .declare_incident(req(declare()))
        .await
        .expect("declare")
        .into_inner();
    assert!(!declared.duplicate);
    // The read models are served on the same address, read-your-writes.
    let mut query = muster_proto::v1::query_client::QueryClient::connect(first.grpc.clone())
        .await
        .expect("connect query");
    let dashboard = query
        .get_dashboard(req(pb::GetDashboardRequest {
            incident: "hull-floods".into(),
            min_sequence: declared.sequence,
            ..Default::default()
        }))
        .await
        .expect("dashboard")
        .into_inner();
    assert_eq!(dashboard.name, "Hull floods");
    let nats_addr = first.nats.trim_start_matches("nats://").to_string();
    first.stop().await;
    // The supervised nats-server went down with it.
    assert!(
        tokio::net::TcpStream::connect(&nats_addr).await.is_err(),
        "nats-server still listening"
    );

    let second = up(&["--data-dir", dir]).await;
    let mut client = IntakeClient::connect(second.grpc.clone())
        .await
        .expect("connect");
    let again = client
        .declare_incident(req(declare()))
        .await
        .expect("retry")
        .into_inner();
    assert!(again.duplicate, "the log survived the restart");
    assert_eq!(again.sequence, declared.sequence);
    let mut query = muster_proto::v1::query_client::QueryClient::connect(second.grpc.clone())
        .await
        .expect("connect query");
    let position = query
        .get_position(req(pb::GetPositionRequest {}))
        .await
        .expect("position")
        .into_inner();
    assert_eq!(
        position.applied_sequence, declared.sequence,
        "the read models survived too"
    );
    second.stop().await;
}

/// Declares the Hull incident through `muster`'s intake (a retry the second time).
async fn declare_on(muster: &Up) -> pb::AppendReply {
    IntakeClient::connect(muster.grpc.clone())
        .await
        .expect("connect")
        .declare_incident(req(declare()))
        .await
        .expect("declare")
        .into_inner()
}

/// The nats-server `muster up` supervises, by the pid file it writes.
fn nats_pid(data: &std::path::Path) -> i32 {
    std::fs::read_to_string(data.join("nats/nats-server.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

/// Killed with SIGKILL (the OOM killer, `kill -9`), `muster up` cannot stop its nats-server,
/// which keeps running on the store. Started again, muster stops that one before its own
/// starts, so two servers never share the store, and finds its state; a second `muster up` on
/// a directory a running one owns is refused.
#[tokio::test]
async fn up_after_a_kill_9_stops_the_server_left_behind_and_keeps_its_state() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().to_str().expect("utf-8 path");
    let mut first = up(&["--data-dir", dir]).await;
    let declared = declare_on(&first).await;
    let left = nats_pid(data.path());
    // Started again at once, as a supervisor would: the killed one may not have released the
    // directory yet, and its nats-server (which a SIGKILL leaves running) is still up.
    first.child.start_kill().expect("kill -9");
    let second = up(&["--data-dir", dir]).await;
    assert!(
        !muster_natsd::running(left),
        "the server left behind was stopped"
    );
    assert_ne!(nats_pid(data.path()), left);
    let again = declare_on(&second).await;
    assert!(again.duplicate, "the log survived");
    assert_eq!(again.sequence, declared.sequence);

    let third = Command::new(env!("CARGO_BIN_EXE_muster"))
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir", dir])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let third = tokio::time::timeout(Duration::from_secs(30), third)
        .await
        .expect("exits within 30s")
        .expect("ran");
    assert!(!third.status.success());
    let stderr = String::from_utf8_lossy(&third.stderr);
    assert!(
        stderr.contains("is in use by another running muster"),
        "{stderr}"
    );
    assert!(
        muster_natsd::running(nats_pid(data.path())),
        "the running one is untouched"
    );
    second.stop().await;
}

#[tokio::test]
async fn up_uses_an_external_nats_server_when_given_one() {
    let nats = muster_tests::Nats::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let muster = up_external(&nats, &data).await;
    assert_eq!(muster.nats, nats.url());
    let mut client = IntakeClient::connect(muster.grpc.clone())
        .await
        .expect("connect");
    client
        .declare_incident(req(declare()))
        .await
        .expect("declare");
    muster.stop().await;
    let (_, stream) = nats.log().await;
    let log = muster_tests::read_all(&stream).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].2.event.type_name(), "IncidentDeclared");
    assert!(
        !data.path().join("nats").exists(),
        "no embedded server was started"
    );
}

#[tokio::test]
async fn a_sigterm_right_after_start_is_a_clean_stop() {
    // The "muster is up" line is printed before the gRPC server runs; a signal sent at once
    // must still be handled (not kill the process by default action).
    let nats = muster_tests::Nats::start().await;
    for _ in 0..3 {
        let data = tempfile::tempdir().expect("tempdir");
        let muster = up_external(&nats, &data).await;
        muster.stop().await;
    }
}

#[tokio::test]
async fn a_need_and_an_offer_become_an_assignment_a_watcher_sees() {
    use futures::StreamExt;
    use muster_tests::workload;
    // The README's walkthrough, through gRPC against `muster up` and its own nats-server.
    let data = tempfile::tempdir().expect("tempdir");
    let muster = up(&["--data-dir", data.path().to_str().expect("utf-8")]).await;
    let mut intake = IntakeClient::connect(muster.grpc.clone())
        .await
        .expect("connect");
    let mut query = muster_proto::v1::query_client::QueryClient::connect(muster.grpc.clone())
        .await
        .expect("connect query");
    workload::declare(&mut intake, "thirsk").await;
    let mut watch = query
        .watch_incident(workload::req(pb::WatchIncidentRequest {
            incident: "thirsk".into(),
            after_sequence: 0,
        }))
        .await
        .expect("watch")
        .into_inner();
    workload::bulk(&mut intake, "thirsk", "offer", workload::offers(0, 1)).await;
    let need = workload::bulk(&mut intake, "thirsk", "need", workload::needs(0, 1)).await[0];

    // The matcher proposes; the watcher sees the assignment arrive.
    let proposed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let change = watch.next().await.expect("stream open").expect("change");
            if change.entity_kind == "assign" && change.status == "proposed" {
                return change;
            }
        }
    })
    .await
    .expect("an assignment within 20 s");
    assert!(proposed.sequence > need);
    let got = query
        .get_need(workload::req(workload::by_reference(
            "thirsk",
            "n0",
            proposed.sequence,
        )))
        .await
        .expect("need")
        .into_inner();
    assert_eq!(got.status, pb::NeedStatus::Proposed as i32);
    assert_eq!(got.current_assignment_id, proposed.entity_id);
    assert_eq!(got.id, proposed.need_id);

    // The volunteer accepts; the watcher and the dashboard see it.
    let accepted = intake
        .respond_to_assignment(workload::req(pb::RespondToAssignmentRequest {
            idempotency_key: "accept".into(),
            incident: "thirsk".into(),
            assignment_id: proposed.entity_id.clone(),
            response: pb::AssignmentResponse::Accept as i32,
            reason: String::new(),
        }))
        .await
        .expect("accept")
        .into_inner();
    // After the round's record, the acceptance.
    let mut round = None;
    let change = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let c = watch.next().await.expect("stream open").expect("change");
            if c.entity_kind == "assign" {
                return c;
            }
            assert_eq!(c.entity_kind, "round", "{c:?}");
            round = Some(c.entity_id);
        }
    })
    .await
    .expect("the acceptance is watched");
    assert_eq!(
        (change.sequence, change.status.as_str()),
        (accepted.sequence, "accepted")
    );
    let dashboard = query
        .get_dashboard(workload::req(pb::GetDashboardRequest {
            incident: "thirsk".into(),
            min_sequence: accepted.sequence,
            ..Default::default()
        }))
        .await
        .expect("dashboard")
        .into_inner();
    let count = |key: &str| {
        dashboard
            .needs_by_status
            .iter()
            .find(|c| c.key == key)
            .map_or(0, |c| c.count)
    };
    assert_eq!((count("accepted"), count("open")), (1, 0));
    assert_eq!(dashboard.providers_available, 1);
    assert_eq!(dashboard.providers_never_offered, 0);
    assert!(
        dashboard
            .time_to_match
            .iter()
            .any(|t| t.urgency == 0 && t.matched == 1)
    );
    // The assignment by its id, and in each of its lists.
    let assignment = query
        .get_assignment(workload::req(pb::GetEntityRequest {
            id: proposed.entity_id.clone(),
            min_sequence: accepted.sequence,
            ..Default::default()
        }))
        .await
        .expect("assignment")
        .into_inner();
    assert_eq!(
        (
            assignment.need_id.as_str(),
            assignment.offer_id.as_str(),
            assignment.volunteer.as_str(),
            assignment.status,
            assignment.proposed_sequence,
            assignment.last_sequence,
        ),
        (
            proposed.need_id.as_str(),
            proposed.offer_id.as_str(),
            "vol-0",
            pb::AssignmentStatus::Accepted as i32,
            proposed.sequence,
            accepted.sequence,
        )
    );
    assert!(assignment.score.is_some_and(|s| s.total > 0));
    for by in [
        pb::ListAssignmentsRequest {
            need_id: proposed.need_id.clone(),
            ..Default::default()
        },
        pb::ListAssignmentsRequest {
            volunteer: "vol-0".into(),
            ..Default::default()
        },
        pb::ListAssignmentsRequest {
            incident: "thirsk".into(),
            ..Default::default()
        },
    ] {
        let listed = query
            .list_assignments(workload::req(by.clone()))
            .await
            .expect("assignments")
            .into_inner();
        assert_eq!(
            listed
                .assignments
                .iter()
                .map(|a| (a.id.as_str(), a.status))
                .collect::<Vec<_>>(),
            [(
                proposed.entity_id.as_str(),
                pb::AssignmentStatus::Accepted as i32
            )],
            "{by:?}"
        );
    }
    for (by, names) in [
        (
            pb::ListAssignmentsRequest {
                volunteer: "vol-1".into(),
                ..Default::default()
            },
            "no one else's",
        ),
        (
            pb::ListAssignmentsRequest {
                incident: "ripon".into(),
                ..Default::default()
            },
            "no other incident's",
        ),
    ] {
        let listed = query
            .list_assignments(workload::req(by))
            .await
            .expect("assignments")
            .into_inner();
        assert!(listed.assignments.is_empty(), "{names}");
    }
    let err = query
        .list_assignments(workload::req(pb::ListAssignmentsRequest {
            need_id: proposed.need_id.clone(),
            volunteer: "vol-0".into(),
            ..Default::default()
        }))
        .await
        .expect_err("two lists at once");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let history = query
        .get_history(workload::req(pb::GetHistoryRequest {
            id: proposed.entity_id.clone(),
            ..Default::default()
        }))
        .await
        .expect("history")
        .into_inner();
    assert_eq!(history.entries.len(), 2, "proposed, then accepted");
    assert!(
        history.entries[0]
            .score
            .as_ref()
            .is_some_and(|s| s.total > 0),
        "the score explains the proposal"
    );
    // Every kind of entity has its history, in log order: the need's and the offer's (each
    // touched by the proposal and the answer), the round's and the incident's.
    let lines = |id: String| {
        let mut query = query.clone();
        async move {
            query
                .get_history(workload::req(pb::GetHistoryRequest {
                    id,
                    ..Default::default()
                }))
                .await
                .expect("history")
                .into_inner()
                .entries
                .into_iter()
                .map(|e| (e.sequence, e.event_type))
                .collect::<Vec<_>>()
        }
    };
    let moves = [
        (proposed.sequence, "AssignmentProposed".to_string()),
        (accepted.sequence, "VolunteerResponded".to_string()),
    ];
    let need_lines = lines(proposed.need_id.clone()).await;
    assert_eq!(need_lines.len(), 3, "{need_lines:?}");
    assert_eq!(need_lines[0], (need, "NeedReported".to_string()));
    assert_eq!(need_lines[1..], moves);
    let offer_lines = lines(proposed.offer_id.clone()).await;
    assert_eq!(offer_lines.len(), 3, "{offer_lines:?}");
    assert_eq!(offer_lines[0].1, "OfferRegistered");
    assert_eq!(offer_lines[1..], moves);
    let round = round.expect("the round's record was watched");
    let round_lines = lines(round).await;
    assert_eq!(round_lines.len(), 1, "{round_lines:?}");
    assert!(
        round_lines[0].1.starts_with("RoundRecorded"),
        "{round_lines:?}"
    );
    let incident_lines = lines("thirsk".into()).await;
    assert_eq!(
        incident_lines[0].1, "IncidentDeclared",
        "{incident_lines:?}"
    );
    muster.stop().await;
}

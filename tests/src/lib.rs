//! The test harness: real parts, isolated per test.
//!
//! [`Nats`] starts the pinned nats-server on a random port with a temporary store
//! (`sync_interval: always`), and kills it and removes the store on drop; it can kill -9 and
//! restart the server on the same port and store. [`Intake`] serves the intake service over real
//! TCP on `127.0.0.1:0` with a shutdown path. Nothing here is a mock.

pub mod workload;

use std::net::SocketAddr;
use std::time::Duration;

use muster_natsd::{NatsServer, NodeConfig};
use muster_proto::v1::intake_client::IntakeClient;
use tonic::transport::Channel;

/// A nats-server of this test's own.
#[derive(Debug)]
pub struct Nats {
    pub server: NatsServer,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts the pinned nats-server (`MUSTER_NATS_SERVER` overrides where it is).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for nats-server");
        let bin = std::env::var_os("MUSTER_NATS_SERVER")
            .map(Into::into)
            .unwrap_or_else(muster_natsd::default_binary);
        let server = NatsServer::start(NodeConfig::new(bin, dir.path().to_path_buf()))
            .await
            .expect("start nats-server (run scripts/install-nats-server first)");
        Self { server, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub async fn client(&self) -> async_nats::Client {
        muster_log::connect(&self.url(), "muster-test")
            .await
            .expect("connect to nats-server")
    }

    /// Connects and provisions the log's stream with default settings.
    pub async fn log(&self) -> (async_nats::Client, async_nats::jetstream::stream::Stream) {
        let client = self.client().await;
        let js = async_nats::jetstream::new(client.clone());
        let stream = muster_log::provision(&js, &muster_log::LogConfig::default())
            .await
            .expect("provision the log");
        (client, stream)
    }
}

/// A JetStream cluster of pinned nats-servers of this test's own, on random ports with
/// temporary stores (`sync_interval: always`), each node killed on drop.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<NatsServer>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` nodes routed to one another.
    pub async fn start(n: usize) -> Self {
        let bin: std::path::PathBuf = std::env::var_os("MUSTER_NATS_SERVER")
            .map(Into::into)
            .unwrap_or_else(muster_natsd::default_binary);
        // Routes must name their ports before the nodes start: free ports, picked now.
        let ports: Vec<u16> = (0..n)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port()
            })
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let dirs: Vec<tempfile::TempDir> = (0..n)
            .map(|_| tempfile::tempdir().expect("temp dir for nats-server"))
            .collect();
        let starts = dirs.iter().zip(&ports).enumerate().map(|(i, (dir, port))| {
            let mut config = NodeConfig::new(bin.clone(), dir.path().to_path_buf());
            config.cluster = Some(muster_natsd::ClusterConfig {
                name: "muster-test".into(),
                server_name: format!("node-{}", i + 1),
                port: *port,
                routes: routes.clone(),
            });
            NatsServer::start(config)
        });
        let nodes = futures::future::try_join_all(starts)
            .await
            .expect("start the cluster's nodes");
        Self { nodes, _dirs: dirs }
    }

    /// Every node's client URL, comma-separated (as a service is given them).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The intake service on a real TCP port, stopped on drop.
#[derive(Debug)]
pub struct Intake {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), muster_intake::ServeError>>>,
}

impl Intake {
    pub async fn start(nats_url: &str) -> Self {
        Self::start_with(muster_intake::Config::new(nats_url)).await
    }

    pub async fn start_with(config: muster_intake::Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            muster_intake::run(config, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        let intake = Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        intake.wait_serving().await;
        intake
    }

    async fn wait_serving(&self) {
        for _ in 0..100 {
            if let Ok(ch) = Channel::from_shared(format!("http://{}", self.addr))
                .expect("uri")
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
                if let Ok(r) = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    && r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("intake did not become healthy at {}", self.addr);
    }

    pub async fn client(&self) -> IntakeClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect to intake");
        IntakeClient::new(ch)
    }

    /// Stops serving and waits for the service to finish draining.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(t) => Ok(t.await??),
            None => Ok(()),
        }
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// How many proposals each need has on `log` (as [`read_all`] returns it).
pub fn proposals_per_need(
    log: &[(u64, String, muster_schema::Envelope)],
) -> std::collections::BTreeMap<muster_schema::EntityId, u32> {
    let mut per_need = std::collections::BTreeMap::new();
    for (_, _, e) in log {
        if let muster_schema::Event::AssignmentProposedV1(p) = &e.event {
            *per_need.entry(p.need).or_insert(0) += 1;
        }
    }
    per_need
}

/// Reads every message of the stream, in order, decoding each envelope.
pub async fn read_all(
    stream: &async_nats::jetstream::stream::Stream,
) -> Vec<(u64, String, muster_schema::Envelope)> {
    read_raw(stream)
        .await
        .into_iter()
        .map(|(seq, subject, env)| (seq, subject, env.expect("every stored event decodes")))
        .collect()
}

/// Reads the log until `done` holds of it, for up to `within`; panics naming `what` if it never
/// does. Returns the log that satisfied it.
pub async fn log_until(
    stream: &async_nats::jetstream::stream::Stream,
    within: Duration,
    what: &str,
    done: impl Fn(&[(u64, String, muster_schema::Envelope)]) -> bool,
) -> Vec<(u64, String, muster_schema::Envelope)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let log = read_all(stream).await;
        if done(&log) {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A matcher running on this test's runtime until [`Matcher::stop`].
#[derive(Debug)]
pub struct Matcher {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), muster_matcher::MatcherError>>,
}

impl Matcher {
    pub fn start(config: muster_matcher::Config) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(muster_matcher::run(config, async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Stops it and checks that it stopped cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("matcher task")
            .expect("matcher stopped cleanly");
    }
}

/// The projections service (fold + Query over gRPC) on a real TCP port, stopped on drop.
#[derive(Debug)]
pub struct Projections {
    pub addr: SocketAddr,
    pub projections: muster_projections::Projections,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Projections {
    /// Starts folding the log of `nats_url` into `dir` and serving queries.
    pub async fn start(nats_url: &str, dir: &std::path::Path) -> Self {
        Self::start_with(muster_projections::Config::new(nats_url, dir)).await
    }

    /// As [`Projections::start`], with `config`.
    pub async fn start_with(config: muster_projections::Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (stop_fold, fold_stopped) = tokio::sync::oneshot::channel::<()>();
        let (projections, fold) = muster_projections::start(config, async {
            let _ = fold_stopped.await;
        })
        .await
        .expect("start projections");
        let served = projections.clone();
        let task = tokio::spawn(async move {
            muster_projections::serve(served, listener, async {
                let _ = stopped.await;
            })
            .await?;
            let _ = stop_fold.send(());
            fold.await??;
            Ok(())
        });
        Self {
            addr,
            projections,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> muster_proto::v1::query_client::QueryClient<Channel> {
        for _ in 0..100 {
            if let Ok(ch) = Channel::from_shared(format!("http://{}", self.addr))
                .expect("uri")
                .connect()
                .await
            {
                return muster_proto::v1::query_client::QueryClient::new(ch);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("projections not reachable at {}", self.addr);
    }

    /// Waits until the projection has applied `seq`.
    pub async fn wait_for(&self, seq: u64) {
        let mut applied = self.projections.applied_watch();
        tokio::time::timeout(Duration::from_secs(30), applied.wait_for(|p| *p >= seq))
            .await
            .expect("projection caught up within 30 s")
            .expect("projection running");
    }

    /// Stops serving and folding, and waits for both.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(t) => t.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Projections {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The last sequence of the log.
/// Appends `event` of `incident` to the log as the matcher would (its decisions and ticks do
/// not go through intake), recorded at `at` (log time, microseconds); returns its sequence.
pub async fn append_as_matcher(
    nats: &Nats,
    incident: &str,
    partition: &str,
    at: i64,
    msg_id: &str,
    event: muster_schema::Event,
) -> u64 {
    let (client, _) = nats.log().await;
    let (appender, _) = muster_log::Appender::start(client, Default::default());
    let env = muster_schema::Envelope {
        schema_version: muster_schema::ENVELOPE_VERSION,
        event_id: muster_schema::EntityId::hash(&[msg_id.as_bytes()]),
        incident: muster_schema::IncidentId::parse("i", incident).expect("valid"),
        partition: if partition == "_" {
            muster_schema::PartitionCode::incident_wide()
        } else {
            muster_schema::PartitionCode::parse("p", partition).expect("valid")
        },
        recorded_at: muster_schema::Timestamp(at),
        actor: muster_schema::AgencyId::parse("a", "muster-matcher").expect("valid"),
        idempotency_key: msg_id.into(),
        correlation_id: msg_id.into(),
        causation_id: None,
        event,
    };
    appender
        .append(vec![muster_log::Outgoing {
            subject: muster_schema::subject::for_envelope(&env),
            payload: env.encode().into(),
            msg_id: format!("muster-matcher:{msg_id}"),
            expect: muster_log::Expect::Anything,
        }])
        .await
        .expect("appended as the matcher")
        .first_seq
}

pub async fn last_seq(stream: &async_nats::jetstream::stream::Stream) -> u64 {
    let mut s = stream.clone();
    s.info().await.expect("stream info").state.last_sequence
}

/// Every message of the log as the projections see it: sequence, subject, and the decoded
/// envelope or why it does not decode.
pub async fn read_raw(
    stream: &async_nats::jetstream::stream::Stream,
) -> Vec<(
    u64,
    String,
    Result<muster_schema::Envelope, muster_schema::DecodeError>,
)> {
    let reader = muster_log::LogReader::new(stream.clone());
    let mut out = Vec::new();
    let mut from = 1;
    while let Some(m) = reader
        .next(&muster_schema::subject::all(), from)
        .await
        .expect("read the log")
    {
        from = m.seq + 1;
        out.push((
            m.seq,
            m.subject,
            muster_schema::Envelope::decode(&m.payload),
        ));
    }
    out
}

/// The read model an independent, in-memory fold of the whole log builds, and its checksum.
pub async fn independent_fold(
    stream: &async_nats::jetstream::stream::Stream,
) -> muster_readmodel::MemStore {
    let log = read_raw(stream).await;
    let mut store = muster_readmodel::MemStore::default();
    store
        .fold_all(log.iter().map(|(s, sub, e)| (*s, sub.as_str(), e)))
        .expect("fold the log in memory");
    store
}

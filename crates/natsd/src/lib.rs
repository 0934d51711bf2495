//! A local nats-server as a child process: found, checked, configured, started, stopped.
//!
//! `muster up` uses this to supervise its embedded server and the tests use it to start a real
//! server per test. The binary is the pinned build that `scripts/install-nats-server` installs
//! (never whatever `nats-server` happens to be on `PATH`), and its version is checked before use:
//! Muster needs atomic batch publish, which arrived in 2.12.
//!
//! The server is configured through a generated config file (one node, JetStream, file storage,
//! `sync_interval: always` so every acknowledged append has been fsynced). Readiness and the bound
//! port are read from the server's own log, so a random port (`-1`) works without races.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// The nats-server version `scripts/install-nats-server` installs
/// (`infra/nats-server.requirements.txt`).
pub const PINNED_VERSION: &str = "2.15.1";

/// The oldest server with what Muster relies on (atomic batch publish).
pub const MIN_VERSION: (u32, u32) = (2, 12);

#[derive(Debug, thiserror::Error)]
pub enum NatsdError {
    #[error(
        "nats-server not found at {0}: run scripts/install-nats-server, or pass --nats-server-bin / MUSTER_NATS_SERVER"
    )]
    NotFound(PathBuf),
    #[error("{bin}: version {found} is too old, Muster needs nats-server >= {}.{}", MIN_VERSION.0, MIN_VERSION.1)]
    TooOld { bin: PathBuf, found: String },
    #[error("{bin}: could not read its version: {reason}")]
    Version { bin: PathBuf, reason: String },
    #[error("nats-server I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("nats-server did not become ready within {timeout:?}; last log lines:\n{log}")]
    NotReady { timeout: Duration, log: String },
    #[error(
        "{0} is in use by another running muster (its nats-server and store): stop that one first, or choose another --data-dir"
    )]
    InUse(PathBuf),
}

/// Where the pinned nats-server is installed by default: `$MUSTER_TOOLS_DIR` or
/// `~/.cache/muster/tools`, then `nats-server-<version>/nats-server`.
pub fn default_binary() -> PathBuf {
    let tools = std::env::var_os("MUSTER_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/muster/tools")))
        .unwrap_or_else(|| PathBuf::from(".cache/muster/tools"));
    tools
        .join(format!("nats-server-{PINNED_VERSION}"))
        .join("nats-server")
}

/// Parses `nats-server: v2.15.1` into (2, 15, 1).
pub fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let v = s.trim().rsplit(' ').next()?.trim_start_matches('v');
    let mut it = v.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// Checks that `bin` exists and is new enough; returns its version string.
pub async fn check_binary(bin: &Path) -> Result<String, NatsdError> {
    if !bin.is_file() {
        return Err(NatsdError::NotFound(bin.to_path_buf()));
    }
    let out = Command::new(bin).arg("--version").output().await?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let Some((major, minor, _)) = parse_version(&text) else {
        return Err(NatsdError::Version {
            bin: bin.to_path_buf(),
            reason: format!("unexpected output {text:?}"),
        });
    };
    if (major, minor) < MIN_VERSION {
        return Err(NatsdError::TooOld {
            bin: bin.to_path_buf(),
            found: text,
        });
    }
    Ok(text)
}

/// How to run one nats-server node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub bin: PathBuf,
    /// Holds the generated config file, the JetStream store and the server's log.
    pub data_dir: PathBuf,
    pub host: String,
    /// `None` binds a random free port; the bound port is read from the server's log.
    pub port: Option<u16>,
    /// fsync every append before acknowledging it (`sync_interval: always`).
    pub sync_always: bool,
    /// Membership of a cluster (`None`: a single node).
    pub cluster: Option<ClusterConfig>,
}

/// A node's place in a JetStream cluster, as in `infra/cluster/`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The cluster's name, the same on every node.
    pub name: String,
    /// This node's name, unique in the cluster (JetStream's placement and quorum use it).
    pub server_name: String,
    /// The port this node takes routes from the others on.
    pub port: u16,
    /// Every node's route URL (`nats-route://host:port`; listing this node's own is harmless).
    pub routes: Vec<String>,
}

impl NodeConfig {
    pub fn new(bin: PathBuf, data_dir: PathBuf) -> Self {
        Self {
            bin,
            data_dir,
            host: "127.0.0.1".into(),
            port: None,
            sync_always: true,
            cluster: None,
        }
    }

    fn render(&self, port: Option<u16>) -> String {
        let store = self.data_dir.join("jetstream");
        let port = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
        let sync = if self.sync_always {
            "\n  sync_interval: always"
        } else {
            ""
        };
        let cluster = self.cluster.as_ref().map_or_else(String::new, |c| {
            let routes: String = c.routes.iter().map(|r| format!("    {r}\n")).collect();
            format!(
                "server_name: \"{server}\"\n\
                 cluster {{\n  name: \"{name}\"\n  listen: \"{host}:{port}\"\n  routes: [\n{routes}  ]\n}}\n",
                server = c.server_name,
                name = c.name,
                host = self.host,
                port = c.port,
            )
        });
        format!(
            "# Generated by muster; edit infra/ configs for long-lived servers instead.\n\
             listen: \"{host}:{port}\"\n\
             max_payload: 1MB\n\
             pid_file: \"{pid}\"\n\
             jetstream {{\n  store_dir: \"{store}\"{sync}\n}}\n{cluster}",
            host = self.host,
            pid = self.pid_file().display(),
            store = store.display(),
        )
    }

    /// Where the server writes its process id (so a later start can find it).
    fn pid_file(&self) -> PathBuf {
        self.data_dir.join("nats-server.pid")
    }

    /// The data directory's lock, held by the process that supervises its server for as long
    /// as it runs (the descriptor is not inherited by the server): released by any death, so
    /// a server still running on an unlocked directory was left behind.
    ///
    /// A process killed a moment ago may not have released it yet (a supervisor restarting
    /// muster at once), so a held lock is retried for [`LOCK_WAIT`].
    async fn lock(&self) -> Result<std::fs::File, NatsdError> {
        std::fs::create_dir_all(&self.data_dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.data_dir.join("muster.lock"))?;
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(NatsdError::InUse(self.data_dir.clone()));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
            }
        }
    }
}

/// A running nats-server child. Killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    config: NodeConfig,
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    /// The data directory's lock ([`NodeConfig::lock`]).
    lock: std::fs::File,
}

/// Whether process `pid` is running (not gone, not a zombie awaiting its parent).
pub fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z')
    })
}

/// Stops a nats-server that an earlier muster started on this data directory and left running
/// when it died without stopping it (kill -9, the OOM killer): a new server must not share its
/// store, and the old one would hold its port. Called with the directory's lock held, so no
/// live muster owns that server. Only a process started with this directory's config file is
/// touched (a pid can be reused).
async fn stop_left_behind(config: &NodeConfig, conf_path: &Path) {
    let Some(pid) = std::fs::read_to_string(config.pid_file())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == conf_path.as_os_str().as_encoded_bytes())
    });
    if !ours || !running(pid) {
        return;
    }
    tracing::warn!(
        pid,
        dir = %config.data_dir.display(),
        "stopping the nats-server an earlier muster left running on this data directory"
    );
    let target = nix::unistd::Pid::from_raw(pid);
    for (signal, wait) in [
        (nix::sys::signal::Signal::SIGTERM, 200),
        (nix::sys::signal::Signal::SIGKILL, 100),
    ] {
        let _ = nix::sys::signal::kill(target, signal);
        for _ in 0..wait {
            if !running(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a start waits for a data directory's lock (see [`NodeConfig::lock`]).
const LOCK_WAIT: Duration = Duration::from_secs(3);
const LOG_LINES_KEPT: usize = 200;

impl NatsServer {
    /// Starts a node and waits until it accepts clients.
    pub async fn start(config: NodeConfig) -> Result<Self, NatsdError> {
        check_binary(&config.bin).await?;
        let port = config.port;
        let lock = config.lock().await?;
        Self::spawn(config, port, lock).await
    }

    async fn spawn(
        config: NodeConfig,
        port: Option<u16>,
        lock: std::fs::File,
    ) -> Result<Self, NatsdError> {
        let conf_path = config.data_dir.join("nats-server.conf");
        stop_left_behind(&config, &conf_path).await;
        std::fs::write(&conf_path, config.render(port))?;
        let mut child = Command::new(&config.bin)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| std::io::Error::other("nats-server stderr was not captured"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = oneshot::channel::<u16>();
        tokio::spawn(read_log(stderr, log.clone(), ready_tx));
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(port)) => Ok(Self {
                config,
                child,
                port,
                log,
                lock,
            }),
            _ => {
                let _ = child.start_kill();
                let log = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                Err(NatsdError::NotReady {
                    timeout: READY_TIMEOUT,
                    log,
                })
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.config.host, self.port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The server's recent log lines, for diagnostics.
    pub fn recent_log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Stops the server gracefully (SIGTERM), waiting up to `grace` before killing it.
    pub async fn stop(mut self, grace: Duration) -> Result<(), NatsdError> {
        self.terminate(grace).await
    }

    async fn terminate(&mut self, grace: Duration) -> Result<(), NatsdError> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return Ok(());
            }
        }
        self.child.kill().await?;
        Ok(())
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it.
    pub async fn kill9(&mut self) -> Result<(), NatsdError> {
        self.child.kill().await?;
        Ok(())
    }

    /// Starts the server again on the same port and store (after [`NatsServer::kill9`] or a
    /// crash), so clients reconnect to the same URL and find the same data.
    pub async fn restart(&mut self) -> Result<(), NatsdError> {
        let _ = self.child.kill().await;
        let mut last = None;
        // The old socket may linger for a moment; retry binding the same port briefly.
        for _ in 0..20 {
            // The same open lock: this process still owns the directory.
            match Self::spawn(self.config.clone(), Some(self.port), self.lock.try_clone()?).await {
                Ok(fresh) => {
                    *self = fresh;
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        Err(last.unwrap_or(NatsdError::NotReady {
            timeout: READY_TIMEOUT,
            log: String::new(),
        }))
    }

    /// Resolves when the server process exits, with its exit status.
    pub async fn wait_exit(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }
}

async fn read_log(
    stderr: tokio::process::ChildStderr,
    log: Arc<Mutex<Vec<String>>>,
    ready: oneshot::Sender<u16>,
) {
    let mut lines = BufReader::new(stderr).lines();
    let mut ready = Some(ready);
    let mut port = None;
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(target: "nats_server", "{line}");
        if let Some(p) = line
            .split("Listening for client connections on ")
            .nth(1)
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|p| p.trim().parse::<u16>().ok())
        {
            port = Some(p);
        }
        if line.contains("Server is ready")
            && let (Some(tx), Some(p)) = (ready.take(), port)
        {
            let _ = tx.send(p);
        }
        if let Ok(mut l) = log.lock() {
            if l.len() == LOG_LINES_KEPT {
                l.remove(0);
            }
            l.push(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.12.0-RC.1"), Some((2, 12, 0)));
        assert_eq!(parse_version("garbage"), None);
        assert!((2, 11) < MIN_VERSION && (2, 15) >= MIN_VERSION);
    }

    #[test]
    fn the_pinned_version_is_the_one_the_installer_pins() {
        let req = include_str!("../../../infra/nats-server.requirements.txt");
        assert!(
            req.contains(&format!("nats-server-bin=={PINNED_VERSION} ")),
            "PINNED_VERSION and infra/nats-server.requirements.txt disagree"
        );
    }

    #[test]
    fn generated_config_is_durable_and_binds_a_random_port_by_default() {
        let c = NodeConfig::new("/bin/nats-server".into(), "/d".into());
        let text = c.render(None);
        assert!(text.contains("listen: \"127.0.0.1:-1\""));
        assert!(text.contains("sync_interval: always"));
        assert!(text.contains("store_dir: \"/d/jetstream\""));
        assert!(text.contains("pid_file: \"/d/nats-server.pid\""));
        assert!(c.render(Some(4333)).contains("127.0.0.1:4333"));
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = check_binary(&dir.path().join("nope"))
            .await
            .expect_err("missing");
        assert!(err.to_string().contains("scripts/install-nats-server"));
    }

    #[tokio::test]
    async fn a_too_old_binary_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("nats-server");
        std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.10.4'\n").expect("write");
        let mut perms = std::fs::metadata(&fake).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&fake, perms).expect("chmod");
        let err = check_binary(&fake).await.expect_err("too old");
        assert!(matches!(err, NatsdError::TooOld { .. }), "{err}");
    }
}

//! A real `nats-server` with JetStream (file store) on loopback, one per test.
//!
//! The server gets a unique `server_name`; readiness means a client connected, saw that
//! name (not some other test's server on a reused port) and JetStream answered.

mod cluster;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

pub use cluster::NatsCluster;

use crate::dir::TestDir;
use crate::ports::{free_port, retry_on_port_conflict};
use crate::process::ChildProcess;
use crate::timeout::eventually;
use crate::tools::Tools;

/// Start, restart and recovery of the JetStream store are well below this.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// One readiness probe; a healthy local server answers in milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// One `nats-server` process with its store, config and log in a test folder.
#[derive(Debug)]
pub struct NatsServer {
    // Declared before `dir`: the process dies before its folder is removed.
    process: ChildProcess,
    spec: Spec,
    dir: TestDir,
}

/// Everything needed to start (and restart) the same server.
#[derive(Debug, Clone)]
struct Spec {
    binary: PathBuf,
    name: String,
    port: u16,
    monitor_port: u16,
    /// Flags after the standard ones (cluster routes).
    extra_args: Vec<String>,
    /// Contents of `nats.conf`, if any.
    config: Option<String>,
}

impl NatsServer {
    /// A standalone server with JetStream.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_config("").await
    }

    /// A standalone server that also reads `extra_config` (nats-server config syntax, e.g.
    /// `accounts { … }` or `leafnodes { … }`). Command-line flags (listen address, port,
    /// store folder) take precedence over the file.
    pub async fn start_with_config(extra_config: &str) -> anyhow::Result<Self> {
        let binary = Tools::locate()?.nats_server()?;
        let config = (!extra_config.is_empty()).then(|| extra_config.to_owned());
        retry_on_port_conflict(|| async {
            let port = free_port();
            let spec = Spec {
                binary: binary.clone(),
                name: format!("herald-{}-{port}", std::process::id()),
                port,
                monitor_port: free_port(),
                extra_args: Vec::new(),
                config: config.clone(),
            };
            let mut server = Self::spawn(spec, "nats")?;
            server.wait_ready().await?;
            Ok(server)
        })
        .await
    }

    /// Spawns without waiting for readiness (a cluster node needs its peers first).
    fn spawn(spec: Spec, dir_prefix: &str) -> anyhow::Result<Self> {
        let dir = TestDir::new(dir_prefix)?;
        if let Some(config) = &spec.config {
            std::fs::write(dir.join("nats.conf"), config)?;
        }
        let process = ChildProcess::spawn(
            &format!("nats-server {}", spec.name),
            spec.command(dir.path()),
            &dir.join("nats-server.log"),
        )?;
        Ok(Self { process, spec, dir })
    }

    /// Waits until our server accepts clients and JetStream answers.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = self.url();
        let name = self.spec.name.clone();
        let process = &mut self.process;
        let ready = eventually(READY_TIMEOUT, &format!("{name} to be ready"), || {
            let running = process.ensure_running();
            let (url, name) = (&url, &name);
            async move {
                running?;
                Ok(is_ready(url, name).await.then_some(()))
            }
        })
        .await;
        ready.map_err(|error| self.process.explain(error))
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.spec.port)
    }

    pub fn port(&self) -> u16 {
        self.spec.port
    }

    /// The unique `server_name` of this server.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// A new client connection. Panics if the server is down.
    pub async fn client(&self) -> async_nats::Client {
        let url = self.url();
        async_nats::connect(&url)
            .await
            .unwrap_or_else(|error| panic!("connecting to {url}: {error}"))
    }

    /// JetStream on a new client connection. Panics if the server is down.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }

    /// The test folder of this server (store, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// For signals other than stop and kill (e.g. SIGSTOP to freeze the server).
    pub fn process_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// Graceful shutdown: SIGTERM and wait (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        self.process.terminate();
    }

    /// SIGKILL: no chance to flush or say goodbye to clients.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// An outage: SIGKILL, `down` without the server (the fault a test injects, not a
    /// wait for something), then [`NatsServer::restart`].
    pub async fn outage(&mut self, down: Duration) -> anyhow::Result<()> {
        self.kill();
        tokio::time::sleep(down).await;
        self.restart().await
    }

    /// Starts the server again on the same port with the same store, after `stop` or
    /// `kill` (a running server is stopped first), and waits until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let name = self.process.name().to_owned();
        let log = self.process.log_path().to_owned();
        self.process = ChildProcess::spawn(&name, self.spec.command(self.dir.path()), &log)?;
        self.wait_ready()
            .await
            .with_context(|| format!("restarting {}", self.spec.name))
    }
}

impl Spec {
    fn command(&self, dir: &Path) -> Command {
        let mut command = Command::new(&self.binary);
        if self.config.is_some() {
            command.arg("-c").arg(dir.join("nats.conf"));
        }
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .args(["--server_name", &self.name, "-js", "-sd"])
            .arg(dir.join("jetstream"))
            .args(&self.extra_args);
        command
    }
}

/// Connects, checks the server's name, and asks JetStream for the account info. Until a
/// cluster has a meta leader that request gets no answer at all, so each probe is short.
async fn is_ready(url: &str, name: &str) -> bool {
    let probe = async {
        let client = async_nats::connect(url).await.ok()?;
        if client.server_info().server_name != name {
            return None;
        }
        let js = async_nats::jetstream::new(client);
        js.query_account().await.ok()
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(_))
    )
}

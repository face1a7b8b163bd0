//! Herald's own binaries as processes: `herald-watcher`, `herald-projector` and
//! `herald-api`, started with the flags a test needs, ready when /readyz says 200,
//! and restartable with the same flags (after a SIGKILL, say).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::bail;

use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::timeout::within;
use crate::tools::herald_binary;

/// StartingPoint of a debug binary, its first connection to NATS and Kubernetes, and its
/// first resync are well below this.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One Herald process and what is needed to start it again the same way.
#[derive(Debug)]
pub struct HeraldProcess {
    process: ChildProcess,
    binary: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    health: String,
    starts: usize,
}

impl HeraldProcess {
    /// `herald-watcher` for `cluster`, reading Kubernetes through `kubeconfig`.
    pub async fn watcher(
        kubeconfig: &Path,
        cluster: &str,
        nats_url: &str,
        dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let port = free_port();
        let mut args = strings(&[
            "--log-format",
            "json",
            "--cluster-id",
            cluster,
            "--nats-url",
            nats_url,
            "--shutdown-timeout",
            "5s",
        ]);
        args.extend(["--health-listen".into(), format!("127.0.0.1:{port}")]);
        if !extra.contains(&"--heartbeat-interval") {
            args.extend(strings(&["--heartbeat-interval", "1s"]));
        }
        args.extend(strings(extra));
        let envs = vec![
            (
                "KUBECONFIG".to_owned(),
                kubeconfig.to_string_lossy().into_owned(),
            ),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ];
        Self::start(
            "herald-watcher",
            args,
            envs,
            &dir.join(format!("watcher-{cluster}.log")),
            format!("http://127.0.0.1:{port}"),
        )
        .await
    }

    /// `herald-projector run` with small batches (so that a kill lands mid-batch).
    pub async fn projector(nats_url: &str, dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let port = free_port();
        let mut args = strings(&["--log-format", "json", "--nats-url", nats_url]);
        args.extend(["--health-listen".into(), format!("127.0.0.1:{port}")]);
        if !extra.contains(&"--ack-wait") {
            args.extend(strings(&["--ack-wait", "2s"]));
        }
        args.extend(strings(extra));
        Self::start(
            "herald-projector",
            args,
            vec![("RUST_LOG".to_owned(), "info".to_owned())],
            &dir.join("projector.log"),
            format!("http://127.0.0.1:{port}"),
        )
        .await
    }

    /// `herald-api`; [`HeraldProcess::base`] is its URL.
    pub async fn api(nats_url: &str, dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let port = free_port();
        let mut args = strings(&["--log-format", "json", "--nats-url", nats_url]);
        args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        args.extend(strings(&["--discovery-interval", "200ms"]));
        args.extend(strings(extra));
        Self::start(
            "herald-api",
            args,
            vec![("RUST_LOG".to_owned(), "info".to_owned())],
            &dir.join("api.log"),
            format!("http://127.0.0.1:{port}"),
        )
        .await
    }

    async fn start(
        binary: &str,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        log: &Path,
        health: String,
    ) -> anyhow::Result<Self> {
        let process = spawn(binary, &args, &envs, log)?;
        let mut me = Self {
            process,
            binary: binary.to_owned(),
            args,
            envs,
            log: log.to_owned(),
            health,
            starts: 1,
        };
        me.wait_ready().await?;
        Ok(me)
    }

    /// Base URL of the HTTP listener (health for watcher and projector; the API itself
    /// for `herald-api`).
    pub fn base(&self) -> &str {
        &self.health
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    pub fn process_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM and a bounded wait.
    pub fn terminate(&mut self) {
        self.process.terminate();
    }

    /// Starts the process again with the same flags (killing it first if it runs) and
    /// waits until it is ready. Each start logs to its own file.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.respawn()?;
        self.wait_ready().await
    }

    /// Starts the process again with the same flags (killing it first if it runs),
    /// without waiting for it to be ready.
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        if self.process.is_running() {
            self.process.kill();
        }
        self.starts += 1;
        let log = self.log.with_extension(format!("{}.log", self.starts));
        self.process = spawn(&self.binary, &self.args, &self.envs, &log)?;
        Ok(())
    }

    /// The text of /metrics (empty while the process does not answer).
    pub async fn metrics(&self) -> String {
        let get = async {
            reqwest::get(format!("{}/metrics", self.health))
                .await?
                .text()
                .await
        };
        get.await.unwrap_or_default()
    }

    /// The sum of every sample of `family` in /metrics (0 when absent).
    pub async fn metric_sum(&self, family: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| {
                l.strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls /readyz until 200; fails at once if the process exits.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.health);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let binary = self.binary.clone();
        let process = &mut self.process;
        let poll = async {
            loop {
                if let Some(status) = process.try_exit() {
                    bail!("{binary} exited ({status}) before it was ready");
                }
                if let Ok(r) = http.get(&url).send().await
                    && r.status().is_success()
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let result = within(READY_TIMEOUT, &format!("{} /readyz 200", self.binary), poll).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => Err(self.process.explain(e)),
        }
    }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

fn spawn(
    binary: &str,
    args: &[String],
    envs: &[(String, String)],
    log: &Path,
) -> anyhow::Result<ChildProcess> {
    let mut command = Command::new(herald_binary(binary));
    command.args(args);
    for (k, v) in envs {
        command.env(k, v);
    }
    ChildProcess::spawn(binary, command, log)
}

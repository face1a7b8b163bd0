//! `scripts/local` as the README's reader runs it, for the tests that try the local
//! environment: every port free and moved with `HERALD_LOCAL_*_PORT`, the state in a
//! test folder (`HERALD_LOCAL_DIR`), the binaries of `target/debug` as they are. Whatever
//! `up` started is killed when the [`LocalEnv`] is dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::Value;
use tokio::process::Command;

use crate::dir::TestDir;
use crate::ports::free_port;
use crate::timeout::within;
use crate::tools::workspace_root;

/// Longest `scripts/local` command: a first `up` starts and waits for every part.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

/// One local environment: its folder and ports.
#[derive(Debug)]
pub struct LocalEnv {
    dir: TestDir,
    ports: Vec<(&'static str, u16)>,
}

impl LocalEnv {
    pub fn new() -> anyhow::Result<Self> {
        let ports = [
            "NATS",
            "NATS_MONITOR",
            "ETCD",
            "KUBE",
            "API",
            "API_HEALTH",
            "WATCHER",
            "PROJECTOR",
        ]
        .into_iter()
        .map(|name| (name, free_port()))
        .collect();
        Ok(Self {
            dir: TestDir::new("local-env")?,
            ports,
        })
    }

    /// The port of a part (`NATS`, `API`, …).
    pub fn port(&self, name: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no port named {name}"))
            .1
    }

    /// `HERALD_LOCAL_DIR`: the state of the environment (keys, trust file, logs, pids).
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The NATS URL of the environment.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port("NATS"))
    }

    /// Runs `scripts/local <args>`; its output, or an error quoting its logs.
    pub async fn local(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(workspace_root().join("scripts/local"));
        cmd.args(args)
            .env("HERALD_LOCAL_DIR", self.dir.path())
            .env("HERALD_LOCAL_SKIP_BUILD", "1")
            .kill_on_drop(true);
        for (name, port) in &self.ports {
            cmd.env(format!("HERALD_LOCAL_{name}_PORT"), port.to_string());
        }
        let what = format!("scripts/local {}", args.join(" "));
        let out = within(COMMAND_TIMEOUT, &what, cmd.output()).await??;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "{what} failed: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        Ok(stdout)
    }

    /// The end of every log of the environment.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("logs")) {
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                all += &format!("--- {}\n", entry.path().display());
                all += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                all += "\n";
            }
        }
        all
    }

    /// The whole log of one part (`projector`, `watcher`, …).
    pub fn log(&self, part: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{part}.log")))
            .unwrap_or_default()
    }

    /// The pid of each part `up` started.
    pub fn pids(&self) -> BTreeMap<String, u32> {
        std::fs::read_dir(self.dir.join("pids"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let pid = std::fs::read_to_string(e.path())
                            .ok()?
                            .trim()
                            .parse()
                            .ok()?;
                        Some((e.file_name().to_string_lossy().into_owned(), pid))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `kubectl <args>` against the environment's API server.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut kubectl = Command::new("kubectl");
        kubectl
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .kill_on_drop(true);
        let out = within(Duration::from_secs(60), "kubectl", kubectl.output())
            .await?
            .context("running kubectl")?;
        ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// GET `path` of the environment's herald-api, as JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port("API"));
        Ok(reqwest::get(&url).await?.error_for_status()?.json().await?)
    }
}

impl Drop for LocalEnv {
    /// A failing test must not leave servers running.
    fn drop(&mut self) {
        for pid in self.pids().values() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

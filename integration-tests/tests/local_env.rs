//! The README's first command, end to end: `scripts/local up` serves the
//! examples, a change made with kubectl shows in the API, a second `up`
//! starts nothing new, and `down` leaves no process behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use herald_integration_tests::dir::TestDir;
use herald_integration_tests::ports::free_port;
use herald_integration_tests::timeout::{eventually, within};
use herald_integration_tests::tools::workspace_root;
use serde_json::Value;
use tokio::process::Command;

struct LocalEnv {
    dir: TestDir,
    ports: Vec<(&'static str, u16)>,
}

impl LocalEnv {
    fn new() -> anyhow::Result<Self> {
        let ports = [
            "NATS",
            "NATS_MONITOR",
            "ETCD",
            "KUBE",
            "API",
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

    fn port(&self, name: &str) -> u16 {
        self.ports.iter().find(|(n, _)| *n == name).unwrap().1
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    async fn local(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(workspace_root().join("scripts/local"));
        cmd.args(args)
            .env("HERALD_LOCAL_DIR", self.dir.path())
            .env("HERALD_LOCAL_SKIP_BUILD", "1")
            .kill_on_drop(true);
        for (name, port) in &self.ports {
            cmd.env(format!("HERALD_LOCAL_{name}_PORT"), port.to_string());
        }
        let what = format!("scripts/local {}", args.join(" "));
        let out = within(Duration::from_secs(240), &what, cmd.output()).await??;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "{what} failed: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        Ok(stdout)
    }

    fn logs(&self) -> String {
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

    fn pids(&self) -> BTreeMap<String, u32> {
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

    async fn kubectl(&self, args: &[&str]) -> anyhow::Result<()> {
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

    /// `kubectl annotate` of the `time` MCPServer with `annotation`, then waits until the
    /// API's entry for it (`None` when absent) satisfies `served`.
    async fn annotate_time_until(
        &self,
        annotation: &[&str],
        what: &str,
        served: impl Fn(Option<&Value>) -> bool,
    ) -> anyhow::Result<()> {
        let mut args = vec!["annotate", "mcpserver", "time", "-n", "tools"];
        args.extend_from_slice(annotation);
        self.kubectl(&args).await?;
        eventually(Duration::from_secs(20), what, || async {
            let list = self.get("/v0.1/servers").await?;
            Ok(served(server(&list, "com.toolhive.k8s.tools/time")).then_some(()))
        })
        .await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
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

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn server<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["servers"]
        .as_array()?
        .iter()
        .find(|e| e["server"]["name"] == name)
        .map(|e| &e["server"])
}

#[tokio::test(flavor = "multi_thread")]
async fn up_serves_the_examples_follows_kubectl_and_down_stops_everything() -> anyhow::Result<()> {
    let env = LocalEnv::new()?;
    let printed = env.local(&["up"]).await?;
    assert!(
        printed.contains(&format!(
            "http://127.0.0.1:{}/v0.1/servers",
            env.port("API")
        )),
        "{printed}"
    );
    assert!(printed.contains("scripts/local down"), "{printed}");

    let default = env.get("/v0.1/servers").await?;
    for name in [
        "com.toolhive.k8s.tools/fetch",
        "com.toolhive.k8s.tools/time",
        "com.toolhive.k8s.tools/everything",
    ] {
        assert!(
            server(&default, name).is_some(),
            "{name} missing from {default:#}"
        );
    }
    assert!(
        server(&default, "com.toolhive.k8s.tools/internal-only").is_none(),
        "not opted in"
    );
    assert!(
        server(&default, "com.toolhive.k8s.tools/broken-description").is_none(),
        "rejected"
    );

    let engineering = env.get("/registry/engineering/v0.1/servers").await?;
    let github =
        server(&engineering, "io.github.github/github-mcp-server").expect("github in engineering");
    assert_eq!(
        github["remotes"].as_array().unwrap().len(),
        2,
        "two deployments, one entry: {github:#}"
    );
    assert_eq!(github["remotes"][0]["headers"][0]["name"], "Authorization");
    let docs = server(&engineering, "com.toolhive.k8s.knowledge/docs")
        .expect("the MCPServerEntry in engineering");
    assert_eq!(
        docs["remotes"][0]["url"],
        "https://mcp.docs.example.com/mcp"
    );
    assert_eq!(docs["remotes"][0]["headers"].as_array().unwrap().len(), 3);

    let before = env.pids();
    assert_eq!(before.len(), 6, "{before:?}");
    env.local(&["up"]).await?;
    assert_eq!(env.pids(), before, "a second up starts nothing new");

    env.annotate_time_until(
        &[
            "--overwrite",
            "toolhive.stacklok.dev/registry-description=Changed with kubectl",
        ],
        "the new description in the API",
        |time| time.is_some_and(|s| s["description"] == "Changed with kubectl"),
    )
    .await?;
    env.annotate_time_until(
        &["toolhive.stacklok.dev/registry-export-"],
        "the opted-out server gone from the API",
        |time| time.is_none(),
    )
    .await?;

    env.local(&["down"]).await?;
    for (part, pid) in &before {
        assert!(!alive(*pid), "{part} (pid {pid}) still runs after down");
    }
    assert!(env.pids().is_empty(), "pid files are removed");
    Ok(())
}

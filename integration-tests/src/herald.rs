//! Herald's own binaries as processes, all started one way: a [`Herald`] builder names
//! the binary and its flags, then either
//! - [`Herald::start`]: a long-running process ([`HeraldProcess`]), ready when its
//!   /readyz says 200, restartable with the same flags;
//! - [`Herald::spawn`]: the same, without waiting (a process that is not expected to
//!   become ready, or whose start a benchmark times itself);
//! - [`Herald::output`]: a command run to completion (`herald-projector events`,
//!   `replay`, `status`, a catalog import), its output captured ([`Finished`]).
//!
//! Each constructor sets what the binary needs to run in a test: the NATS URL, a free
//! loopback port for its listener, `RUST_LOG=info`, and flags that keep tests fast
//! (`--log-format json`, short intervals). Those flags are defaults: a flag given with
//! [`Herald::flag`] or [`Herald::args`] replaces the default of the same name, and
//! [`Herald::quiet`] drops them all (the benchmark runs with only the flags it names).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::dir::TestDir;
use crate::kube::KubeApi;
use crate::netns::Host;
use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::timeout::{eventually, within};
use crate::tools::herald_binary;

/// The catalog importer: its binary and subcommand. The one place that names them
/// (`herald-catalog sync`).
pub const CATALOG_SYNC: (&str, &[&str]) = ("herald-catalog", &["sync"]);

/// Start of a debug binary, its first connection to NATS and Kubernetes, and its
/// first resync (or load of its view) are well below this.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// One /readyz probe; a process that answers at all answers in milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a Herald binary is to be started: binary, flags, environment, log file.
#[derive(Debug, Clone)]
#[must_use = "a Herald builder does nothing until started"]
pub struct Herald {
    binary: String,
    subcommand: Vec<String>,
    /// Flags in order, as the test gives them.
    args: Vec<String>,
    /// The connection and the listener: after `args`.
    fixed: Vec<String>,
    /// Flags added unless `args` names them.
    defaults: Vec<(String, String)>,
    /// Variables to set, or with `None` to remove from what the test inherits.
    envs: Vec<(String, Option<String>)>,
    /// The flag and port of the HTTP listener (health for watcher, projector and
    /// importer; the API itself for `herald-api`).
    listen: Option<(String, u16)>,
    /// The host (network namespace) to run in; loopback without one.
    host: Option<Host>,
    dir: Option<PathBuf>,
    log_name: String,
    ready_timeout: Duration,
}

impl Herald {
    fn new(binary: &str, nats_url: &str, log_name: &str) -> Self {
        Self::bare(binary)
            .log_name(log_name)
            .env("RUST_LOG", "info")
            .fixed("--nats-url", nats_url)
    }

    /// `binary` (`herald-watcher`, …) with only the arguments given, e.g. to check what
    /// it says about a bad command line.
    pub fn bare(binary: &str) -> Self {
        Self {
            binary: binary.to_owned(),
            subcommand: Vec::new(),
            args: Vec::new(),
            fixed: Vec::new(),
            defaults: Vec::new(),
            envs: Vec::new(),
            listen: None,
            host: None,
            dir: None,
            log_name: format!("{binary}.log"),
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// `herald-watcher` for `cluster`, reading Kubernetes through `kube`'s kubeconfig.
    pub fn watcher(kube: &KubeApi, cluster: &str, nats_url: &str) -> Self {
        Self::new(
            "herald-watcher",
            nats_url,
            &format!("watcher-{cluster}.log"),
        )
        .fixed("--cluster-id", cluster)
        .env("KUBECONFIG", kube.kubeconfig_path().to_string_lossy())
        .listen("--health-listen")
        .default_flag("--log-format", "json")
        .default_flag("--shutdown-timeout", "5s")
    }

    /// `herald-projector run`.
    pub fn projector(nats_url: &str) -> Self {
        Self::new("herald-projector", nats_url, "projector.log")
            .subcommand(&["run"])
            .listen("--health-listen")
            .default_flag("--log-format", "json")
    }

    /// `herald-api`; [`HeraldProcess::base`] is its URL.
    pub fn api(nats_url: &str) -> Self {
        Self::new("herald-api", nats_url, "api.log")
            .listen("--listen")
            // Tests that are not about authentication read anonymously;
            // tests/auth.rs gives --auth-mode oauth.
            .default_flag("--auth-mode", "anonymous")
            .default_flag("--log-format", "json")
            .default_flag("--discovery-interval", "200ms")
    }

    /// `herald-projector` with an ops subcommand given by [`Herald::args`] (`events`,
    /// `replay`, `status`); its logs stay at `warn`, under what it prints.
    pub fn projector_ops(nats_url: &str) -> Self {
        Self::new("herald-projector", nats_url, "projector-ops.log").env("RUST_LOG", "warn")
    }

    /// The catalog importer ([`CATALOG_SYNC`]); its flags (`--source-id`, `--file` or
    /// `--url`, …) come from [`Herald::args`]. Its log is text, as an operator reads it.
    pub fn catalog_sync(nats_url: &str) -> Self {
        let (binary, subcommand) = CATALOG_SYNC;
        // Health on a free port: with `--interval` it is served on 8083 by default,
        // which tests running side by side would share.
        Self::new(binary, nats_url, "catalog-sync.log")
            .subcommand(subcommand)
            .health()
    }

    /// Subcommand words, before every flag.
    fn subcommand(mut self, words: &[&str]) -> Self {
        self.subcommand = words.iter().map(|w| (*w).to_owned()).collect();
        self
    }

    /// A flag the constructor sets, after the test's own.
    fn fixed(mut self, name: &str, value: &str) -> Self {
        self.fixed.extend([name.to_owned(), value.to_owned()]);
        self
    }

    /// Listens on a free loopback port with `flag` (`--health-listen`, `--listen`).
    fn listen(mut self, flag: &str) -> Self {
        self.listen = Some((flag.to_owned(), free_port()));
        self
    }

    /// Runs in `host`'s network namespace, listening on its control address (see
    /// [`crate::netns`]); the NATS URL and kubeconfig must name addresses it reaches.
    pub fn on_host(mut self, host: &Host) -> Self {
        self.host = Some(host.clone());
        self
    }

    /// Where the listener binds and the test reaches it.
    fn listen_ip(&self) -> String {
        self.host
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_owned(), |h| h.ctl.to_string())
    }

    /// Serves /healthz, /readyz and /metrics on a free port.
    pub fn health(self) -> Self {
        self.listen("--health-listen")
    }

    /// One argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Arguments in order (subcommand words, flags and their values).
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// `name value`.
    pub fn flag(self, name: &str, value: &str) -> Self {
        self.args([name, value])
    }

    /// `name value` unless the arguments name `name` themselves; replaces an earlier
    /// default of the same name.
    pub fn default_flag(mut self, name: &str, value: &str) -> Self {
        self.defaults.retain(|(n, _)| n != name);
        self.defaults.push((name.to_owned(), value.to_owned()));
        self
    }

    /// An environment variable of the process (replaces one of the same name).
    pub fn env(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.envs.retain(|(k, _)| k != key);
        self.envs
            .push((key.to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes a variable the test process would pass on (`HERALD_…` set by a user).
    pub fn env_remove(mut self, key: &str) -> Self {
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_owned(), None));
        self
    }

    /// As the benchmark runs Herald: logs at `warn`, and no default flags (only the
    /// connection, the listener and what [`Herald::flag`] adds).
    pub fn quiet(self) -> Self {
        let mut me = self.env("RUST_LOG", "warn");
        me.defaults.clear();
        me
    }

    /// The folder of the log file; without one, the process gets a test folder of its
    /// own.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_owned());
        self
    }

    /// The log file's name in [`Herald::dir`] (by default named after the binary).
    pub fn log_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.log_name);
        self
    }

    /// How long [`Herald::start`] waits for /readyz (default 60 s).
    pub fn ready_within(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The command line after the binary: subcommand, the test's arguments, the
    /// constructor's, then the defaults the arguments leave.
    fn command_line(&self) -> Vec<String> {
        let named = |flag: &str| {
            self.args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        let mut line = self.subcommand.clone();
        line.extend(self.args.iter().cloned());
        line.extend(self.fixed.iter().cloned());
        if let Some((flag, port)) = &self.listen {
            line.extend([flag.clone(), format!("{}:{port}", self.listen_ip())]);
        }
        for (flag, value) in &self.defaults {
            if !named(flag) {
                line.extend([flag.clone(), value.clone()]);
            }
        }
        line
    }

    fn describe(&self) -> String {
        let words: Vec<&str> = self
            .subcommand
            .iter()
            .chain(&self.args)
            .map(String::as_str)
            .collect();
        format!("{} {}", self.binary, words.join(" "))
    }

    /// Starts the process and waits until /readyz says 200 (a constructor or
    /// [`Herald::health`] gave it a listener).
    pub async fn start(self) -> anyhow::Result<HeraldProcess> {
        let mut process = self.spawn()?;
        process.wait_ready().await?;
        Ok(process)
    }

    /// Starts the process without waiting for it to be ready.
    pub fn spawn(self) -> anyhow::Result<HeraldProcess> {
        let (dir, own_dir) = match &self.dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let own = TestDir::new(&self.binary)?;
                (own.path().to_owned(), Some(own))
            }
        };
        let spec = Spec {
            binary: self.binary.clone(),
            args: self.command_line(),
            envs: self.envs.clone(),
            netns: self.host.as_ref().map(|h| h.netns.clone()),
            log: dir.join(&self.log_name),
        };
        let process = spec.spawn(&spec.log)?;
        Ok(HeraldProcess {
            process,
            spec,
            base: self
                .listen
                .as_ref()
                .map(|(_, port)| format!("http://{}:{port}", self.listen_ip())),
            ready_timeout: self.ready_timeout,
            starts: 1,
            _dir: own_dir,
        })
    }

    /// Runs the command to completion, within `timeout`, and captures its output.
    pub async fn output(self, timeout: Duration) -> anyhow::Result<Finished> {
        let netns = self.host.as_ref().map(|h| h.netns.as_str());
        let command = command(&self.binary, &self.command_line(), &self.envs, netns);
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let what = self.describe();
        let out = within(timeout, &what, command.output())
            .await?
            .with_context(|| format!("running {what}"))?;
        Ok(Finished {
            what,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A command that ran to completion.
#[derive(Debug)]
pub struct Finished {
    what: String,
    pub status: ExitStatus,
    pub stdout: String,
    /// Its log.
    pub stderr: String,
}

impl Finished {
    /// The exit code; an error (quoting stderr) when a signal ended the process.
    pub fn code(&self) -> anyhow::Result<i32> {
        self.status
            .code()
            .with_context(|| format!("{} ended by a signal:\n{}", self.what, self.stderr))
    }

    /// Itself if it exited 0; otherwise an error quoting its log.
    pub fn success(self) -> anyhow::Result<Self> {
        if !self.status.success() {
            bail!("{} failed ({}):\n{}", self.what, self.status, self.stderr);
        }
        Ok(self)
    }
}

/// Everything needed to start the same process again.
#[derive(Debug, Clone)]
struct Spec {
    binary: String,
    args: Vec<String>,
    envs: Vec<(String, Option<String>)>,
    netns: Option<String>,
    log: PathBuf,
}

impl Spec {
    fn spawn(&self, log: &Path) -> anyhow::Result<ChildProcess> {
        let command = command(&self.binary, &self.args, &self.envs, self.netns.as_deref());
        ChildProcess::spawn(&self.binary, command, log)
    }
}

fn command(
    binary: &str,
    args: &[String],
    envs: &[(String, Option<String>)],
    netns: Option<&str>,
) -> Command {
    let mut command = match netns {
        // `ip netns exec` execs the binary: same process, environment and
        // parent-death signal.
        Some(netns) => {
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", netns])
                .arg(herald_binary(binary));
            command
        }
        None => Command::new(herald_binary(binary)),
    };
    command.args(args);
    for (k, v) in envs {
        match v {
            Some(v) => command.env(k, v),
            None => command.env_remove(k),
        };
    }
    command
}

/// One running Herald process and what is needed to start it again the same way.
#[derive(Debug)]
pub struct HeraldProcess {
    process: ChildProcess,
    spec: Spec,
    base: Option<String>,
    ready_timeout: Duration,
    starts: usize,
    // After `process`: the process dies before its folder is removed.
    _dir: Option<TestDir>,
}

impl HeraldProcess {
    /// Base URL of the HTTP listener (health for watcher, projector and importer; the
    /// API itself for `herald-api`). Panics for a process started without one.
    pub fn base(&self) -> &str {
        self.base
            .as_deref()
            .unwrap_or_else(|| panic!("{} was started without a listener", self.spec.binary))
    }

    /// The port of the HTTP listener.
    pub fn port(&self) -> u16 {
        let port = self.base().rsplit(':').next().and_then(|p| p.parse().ok());
        port.expect("the base URL ends with a port")
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// For signals and waits other than those below.
    pub fn process_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The whole log of the current start.
    pub fn log_contents(&self) -> String {
        self.process.log_contents()
    }

    /// Adds the end of the log to an error about this process.
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        self.process.explain(error)
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// An error quoting the end of the log if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.process.ensure_running()
    }

    /// SIGKILL.
    pub fn kill(&mut self) -> ExitStatus {
        self.process.kill()
    }

    /// SIGTERM and a bounded wait.
    pub fn terminate(&mut self) -> ExitStatus {
        self.process.terminate()
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
        let log = self.spec.log.with_extension(format!("{}.log", self.starts));
        self.process = self.spec.spawn(&log)?;
        Ok(())
    }

    /// The text of /metrics (empty while the process does not answer).
    pub async fn metrics(&self) -> String {
        let get = async {
            reqwest::get(format!("{}/metrics", self.base()))
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

    /// The value of one sample, e.g. `herald_watcher_rejections_total{reason="invalid_url"}`
    /// (0 when absent); an error when /metrics does not answer.
    pub async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let body = reqwest::get(format!("{}/metrics", self.base()))
            .await?
            .text()
            .await?;
        let value = body
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map(|v| v.trim().parse::<f64>())
            .transpose()?;
        Ok(value.unwrap_or(0.0))
    }

    /// Polls /readyz until 200; fails at once if the process exits.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.wait_readyz(200).await
    }

    /// Polls /readyz until 503 (e.g. while NATS is down); fails at once if the process
    /// exits.
    pub async fn wait_not_ready(&mut self) -> anyhow::Result<()> {
        self.wait_readyz(503).await
    }

    async fn wait_readyz(&mut self, want: u16) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.base());
        let http = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build()?;
        let binary = self.spec.binary.clone();
        let what = format!("{binary} /readyz {want}");
        let process = &mut self.process;
        let ready = eventually(self.ready_timeout, &what, || {
            let exited = process.try_exit();
            let (http, url, binary) = (&http, &url, &binary);
            async move {
                if let Some(status) = exited {
                    bail!("{binary} exited ({status}) while waiting for /readyz {want}");
                }
                let status = http.get(url).send().await.map(|r| r.status().as_u16());
                Ok((status.ok() == Some(want)).then_some(()))
            }
        })
        .await;
        ready.map_err(|e| self.process.explain(e))
    }
}

/// Runs an ops subcommand of `herald-projector` to completion; returns its exit code
/// (0, or 1 for a difference `replay --check` found) and what it printed. Any other
/// ending is an error that quotes its log.
pub async fn projector_ops(
    nats_url: &str,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<(i32, String)> {
    let out = Herald::projector_ops(nats_url)
        .args(args)
        .output(timeout)
        .await?;
    match out.code()? {
        code @ (0 | 1) => Ok((code, out.stdout)),
        code => bail!("herald-projector {args:?} exited {code}:\n{}", out.stderr),
    }
}

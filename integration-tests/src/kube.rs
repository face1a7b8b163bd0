//! A real Kubernetes API server on loopback: etcd plus our `kube-apiserver` build (see
//! `scripts/test-deps`), with the ToolHive CRDs of `deploy/crds/` installed.
//!
//! That server serves only `apiextensions.k8s.io` and custom resources (no namespaces,
//! Events or Services) and treats every request as coming from `system:masters`, so the
//! kubeconfig carries no real credentials.

mod crds;
mod etcd;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::dir::TestDir;
use crate::netns::Host;
use crate::ports::{free_port, retry_on_port_conflict};
use crate::process::ChildProcess;
use crate::timeout::eventually;
use crate::tools::{Tools, workspace_root};

/// etcd starts in well under a second, the API server in one or two.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// etcd and the API server, their data, certificates and logs in one test folder.
pub struct KubeApi {
    // Processes before `dir` (dropped first), the API server before etcd.
    apiserver: ChildProcess,
    etcd: ChildProcess,
    spec: Spec,
    client: kube::Client,
    dir: TestDir,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kube::Client is not Debug.
        f.debug_struct("KubeApi")
            .field("apiserver", &self.apiserver)
            .field("etcd", &self.etcd)
            .field("spec", &self.spec)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Binaries and ports, kept for restarts.
#[derive(Debug, Clone)]
struct Spec {
    etcd_binary: PathBuf,
    apiserver_binary: PathBuf,
    etcd_name: String,
    etcd_port: u16,
    etcd_peer_port: u16,
    api_port: u16,
    /// Where etcd and the API server listen: loopback, or a host's control address.
    ip: Ipv4Addr,
    /// The host's network namespace, if any.
    netns: Option<String>,
}

impl KubeApi {
    /// Starts etcd and the API server on free ports and installs every CRD found in
    /// `<workspace>/deploy/crds/*.yaml`, waiting until each is Established.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(None).await
    }

    /// As [`KubeApi::start`], in `host`'s network namespace (see [`crate::netns`]) on
    /// its control address, which the test and the host's own processes reach.
    pub async fn start_on(host: Option<&Host>) -> anyhow::Result<Self> {
        let tools = Tools::locate()?;
        let (etcd_binary, apiserver_binary) = (tools.etcd()?, tools.kube_apiserver()?);
        let crds = crds::read_dir(&workspace_root().join("deploy/crds"))?;
        let api = retry_on_port_conflict(|| async {
            let etcd_port = free_port();
            let mut spec = Spec {
                etcd_binary: etcd_binary.clone(),
                apiserver_binary: apiserver_binary.clone(),
                etcd_name: format!("herald-{}-{etcd_port}", std::process::id()),
                etcd_port,
                etcd_peer_port: free_port(),
                // The API server picks its own port the first time (no collisions).
                api_port: 0,
                ip: host.map_or(Ipv4Addr::LOCALHOST, |h| h.ctl),
                netns: host.map(|h| h.netns.clone()),
            };
            let dir = TestDir::new("kube")?;
            let (etcd, apiserver) = spec.launch(&dir).await?;
            // The certificate exists now: the kubeconfig can name its CA.
            let kubeconfig = dir.join("kubeconfig");
            std::fs::write(&kubeconfig, spec.kubeconfig(&dir))?;
            let client = client_from(&kubeconfig).await?;
            let mut api = Self {
                apiserver,
                etcd,
                spec,
                client,
                dir,
            };
            api.wait_ready().await?;
            Ok(api)
        })
        .await?;
        crds::install(&api.client, crds).await?;
        Ok(api)
    }

    /// Serves `events.k8s.io/v1` Events from now on, through the test-only
    /// stand-in CRD of `integration-tests/kube/` (the server has no Events API
    /// of its own), so what a binary records as Events can be read back.
    pub async fn serve_events(&self) -> anyhow::Result<()> {
        let crds = crds::read_dir(&workspace_root().join("integration-tests/kube"))?;
        crds::install(&self.client, crds).await
    }

    /// Installs again the ToolHive CRD `name` of `deploy/crds/` (after a test deleted
    /// it), waiting until it is served.
    pub async fn install_toolhive_crd(&self, name: &str) -> anyhow::Result<()> {
        let crds: Vec<_> = crds::read_dir(&workspace_root().join("deploy/crds"))?
            .into_iter()
            .filter(|crd| crd.metadata.name.as_deref() == Some(name))
            .collect();
        anyhow::ensure!(!crds.is_empty(), "no CRD {name} in deploy/crds");
        crds::install(&self.client, crds).await
    }

    /// A client for the API server (cheap to clone; survives restarts).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kubeconfig file for Herald's binaries and kubectl (`KUBECONFIG=…`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.spec.url()
    }

    /// The test folder (etcd data, certificates, kubeconfig, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn etcd_process(&self) -> &ChildProcess {
        &self.etcd
    }

    pub fn apiserver_process(&self) -> &ChildProcess {
        &self.apiserver
    }

    /// Graceful shutdown of the API server, then etcd.
    pub fn stop(&mut self) {
        self.apiserver.terminate();
        self.etcd.terminate();
    }

    /// SIGKILL to both: watches break without a goodbye.
    pub fn kill(&mut self) {
        self.apiserver.kill();
        self.etcd.kill();
    }

    /// Starts both again on the same ports with the same etcd data and certificate, after
    /// `stop` or `kill` (running processes are stopped first); CRDs and objects are still
    /// there.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        (self.etcd, self.apiserver) = self.spec.launch(&self.dir).await?;
        self.wait_ready()
            .await
            .context("restarting the Kubernetes API")
    }

    /// Waits for `/readyz` (etcd reachable, CRD informers synced).
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let (apiserver, etcd, client) = (&mut self.apiserver, &mut self.etcd, &self.client);
        let ready = eventually(READY_TIMEOUT, "kube-apiserver /readyz", || {
            let running = apiserver.ensure_running().and(etcd.ensure_running());
            async move {
                running?;
                let readyz = http::Request::get("/readyz").body(Vec::new())?;
                Ok(client.request_text(readyz).await.ok().map(drop))
            }
        })
        .await;
        ready.map_err(|error| self.apiserver.explain(error))?;
        // Had another test's etcd held our port, ours would have exited by now.
        self.etcd.ensure_running()
    }
}

impl Spec {
    fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.api_port)
    }

    /// Starts etcd, waits for it, then starts the API server and waits until it has bound
    /// its port (recording the port on the first launch).
    async fn launch(&mut self, dir: &TestDir) -> anyhow::Result<(ChildProcess, ChildProcess)> {
        let mut etcd = ChildProcess::spawn("etcd", self.etcd_command(dir), &dir.join("etcd.log"))?;
        etcd::wait_ready(&mut etcd, self.ip, self.etcd_port, &self.etcd_name).await?;
        let port_file = dir.join("kube-apiserver.port");
        let _ = std::fs::remove_file(&port_file);
        let mut apiserver = ChildProcess::spawn(
            "kube-apiserver",
            self.apiserver_command(dir, &port_file),
            &dir.join("kube-apiserver.log"),
        )?;
        let port = eventually(READY_TIMEOUT, "kube-apiserver to listen", || {
            let running = apiserver.ensure_running();
            let port = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.trim().parse::<u16>().ok());
            async move { running.map(|()| port) }
        })
        .await
        .map_err(|error| apiserver.explain(error))?;
        self.api_port = port;
        Ok((etcd, apiserver))
    }

    fn etcd_command(&self, dir: &TestDir) -> Command {
        let client_url = format!("http://{}:{}", self.ip, self.etcd_port);
        let peer_url = format!("http://{}:{}", self.ip, self.etcd_peer_port);
        let mut command = self.command(&self.etcd_binary);
        command
            .args(["--name", &self.etcd_name, "--data-dir"])
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args([
                "--initial-cluster",
                &format!("{}={peer_url}", self.etcd_name),
            ])
            // Test data need not survive a power cut; fsync makes every write slow.
            .arg("--unsafe-no-fsync");
        command
    }

    fn apiserver_command(&self, dir: &TestDir, port_file: &Path) -> Command {
        let mut command = self.command(&self.apiserver_binary);
        command
            .args([
                "--etcd-servers",
                &format!("http://{}:{}", self.ip, self.etcd_port),
            ])
            .args(["--bind-address", &self.ip.to_string()])
            .args(["--secure-port", &self.api_port.to_string()])
            .arg("--port-file")
            .arg(port_file)
            .arg("--cert-dir")
            .arg(dir.join("certs"));
        command
    }

    /// `binary`, in the host's namespace if there is one.
    fn command(&self, binary: &Path) -> Command {
        match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(binary);
                command
            }
            None => Command::new(binary),
        }
    }

    /// The server authenticates everyone and ignores the token, which is there only so
    /// that kubectl does not prompt for a user name. `apiserver.crt` holds the serving
    /// certificate and the CA that signed it.
    fn kubeconfig(&self, dir: &TestDir) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: herald-test
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: herald-test
  user:
    token: not-checked
contexts:
- name: herald-test
  context:
    cluster: herald-test
    user: herald-test
current-context: herald-test
",
            url = self.url(),
            ca = dir.join("certs/apiserver.crt").display()
        )
    }
}

/// A client configured exactly as Herald's binaries will be, from the kubeconfig file.
async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

//! The whole pipeline on loopback, as the end-to-end and reliability tests use it:
//! NATS, one Kubernetes API server (with the ToolHive CRDs) per cluster, a watcher per
//! cluster, a projector and an API, their logs in one test folder; and the helpers those
//! tests repeat (object APIs, the registries, a storm over the clusters, the oracle).
//!
//! ```ignore
//! let stack = Stack::builder("reliability-faults").registries(&["default", "team-a"]).build().await?;
//! let stack = Stack::builder("multi").clusters(&["alpha", "beta", "gamma"]).build().await?;
//! let stack = Stack::builder("nats-cluster").build_on(NatsCluster::start(3)).await?;
//! ```

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use herald_core::RegistryName;
use herald_core::names::STREAM;
use kube::api::{Api, DynamicObject};

use crate::dir::TestDir;
use crate::herald::{Herald, HeraldProcess};
use crate::kube::KubeApi;
use crate::nats::{NatsCluster, NatsServer};
use crate::objects;
use crate::oracle::{ClusterUnderTest, Converged, assert_converges};
use crate::storm::Storm;
use crate::timeout::within;

/// Start of the servers; their own start timeouts are shorter and quote their logs.
const START: Duration = Duration::from_secs(60);
/// How long the oracle waits for the API to serve what the clusters hold, by default.
const CONVERGE: Duration = Duration::from_secs(45);

/// The NATS a stack runs on: one server, a cluster, a hub with leaf nodes.
pub trait Nats {
    /// The URL Herald's binaries connect to.
    fn url(&self) -> String;
}

impl Nats for NatsServer {
    fn url(&self) -> String {
        NatsServer::url(self)
    }
}

impl Nats for NatsCluster {
    fn url(&self) -> String {
        self.client_url()
    }
}

/// What to start; see [`Stack::builder`].
#[derive(Debug, Clone)]
#[must_use = "a stack builder does nothing until built"]
pub struct StackBuilder {
    name: String,
    clusters: Vec<String>,
    registries: Vec<String>,
    watchers: bool,
    herald: bool,
    watcher_flags: Vec<String>,
    projector_flags: Vec<String>,
    api_flags: Vec<String>,
    converge: Duration,
}

/// The pipeline; fields are public so a test can fault one part while it uses another.
#[derive(Debug)]
pub struct Stack<N = NatsServer> {
    // Herald processes before the servers they use, the folder last.
    /// `herald-api` (absent with [`StackBuilder::servers_only`]).
    pub api: Option<HeraldProcess>,
    /// `herald-projector run` (absent with [`StackBuilder::servers_only`]).
    pub projector: Option<HeraldProcess>,
    /// One `herald-watcher` per cluster, in the order of the clusters (none with
    /// [`StackBuilder::without_watchers`]).
    pub watchers: Vec<HeraldProcess>,
    /// One API server per cluster.
    pub kubes: Vec<KubeApi>,
    pub nats: N,
    pub dir: TestDir,
    clusters: Vec<String>,
    registries: Vec<String>,
    watcher_flags: Vec<String>,
    converge: Duration,
}

impl Stack {
    /// A stack whose logs go to a test folder `herald-<name>-…`: by default one cluster
    /// `east`, registry `default`, and every Herald process.
    pub fn builder(name: &str) -> StackBuilder {
        StackBuilder {
            name: name.to_owned(),
            clusters: vec!["east".to_owned()],
            registries: vec!["default".to_owned()],
            watchers: true,
            herald: true,
            watcher_flags: Vec::new(),
            projector_flags: Vec::new(),
            api_flags: Vec::new(),
            converge: CONVERGE,
        }
    }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

impl StackBuilder {
    /// One Kubernetes API server and one watcher per name, in this order.
    pub fn clusters(mut self, names: &[&str]) -> Self {
        self.clusters = strings(names);
        self
    }

    /// Every registry an object could target: the oracle checks that nothing phantom
    /// is served in any of them.
    pub fn registries(mut self, names: &[&str]) -> Self {
        self.registries = strings(names);
        self
    }

    /// No watcher at start (a test starts its own with [`Stack::watcher`]).
    pub fn without_watchers(mut self) -> Self {
        self.watchers = false;
        self
    }

    /// Only NATS and the API servers: the test starts Herald itself.
    pub fn servers_only(mut self) -> Self {
        self.herald = false;
        self.watchers = false;
        self
    }

    /// Flags of every watcher (also of those started with [`Stack::watcher`]).
    pub fn watcher_flags(mut self, flags: &[&str]) -> Self {
        self.watcher_flags = strings(flags);
        self
    }

    pub fn projector_flags(mut self, flags: &[&str]) -> Self {
        self.projector_flags = strings(flags);
        self
    }

    pub fn api_flags(mut self, flags: &[&str]) -> Self {
        self.api_flags = strings(flags);
        self
    }

    /// How long [`Stack::converge`] waits (default 45 s).
    pub fn converge_within(mut self, timeout: Duration) -> Self {
        self.converge = timeout;
        self
    }

    /// Starts a NATS server and the rest.
    pub async fn build(self) -> anyhow::Result<Stack> {
        self.build_on(NatsServer::start()).await
    }

    /// Starts the rest on the NATS that `nats` starts (a cluster, a server with a
    /// config of its own), while the API servers start.
    pub async fn build_on<N: Nats>(
        self,
        nats: impl Future<Output = anyhow::Result<N>>,
    ) -> anyhow::Result<Stack<N>> {
        let dir = TestDir::new(&self.name)?;
        let kubes = futures::future::try_join_all(self.clusters.iter().map(|cluster| {
            let what = format!("kube-apiserver {cluster}");
            async move { within(START, &what, KubeApi::start()).await? }
        }));
        let nats = async { within(START, "NATS", nats).await? };
        let (kubes, nats) = tokio::try_join!(kubes, nats)?;
        let mut stack = Stack {
            api: None,
            projector: None,
            watchers: Vec::new(),
            kubes,
            nats,
            dir,
            clusters: self.clusters,
            registries: self.registries,
            watcher_flags: self.watcher_flags,
            converge: self.converge,
        };
        // All at once: whoever comes first creates the stream (`ensure` tolerates the
        // race), and the projector's consumer reads from the start of it.
        let url = stack.nats.url();
        let watchers = match self.watchers {
            true => (0..stack.clusters.len())
                .map(|i| stack.watcher(i, &url))
                .collect(),
            false => Vec::new(),
        };
        let watchers = futures::future::try_join_all(watchers.into_iter().map(Herald::start));
        let projector = Herald::projector(&url)
            .dir(stack.dir.path())
            .default_flag("--ack-wait", "2s")
            .args(&self.projector_flags);
        let api = Herald::api(&url)
            .dir(stack.dir.path())
            .args(&self.api_flags);
        let herald = async {
            match self.herald {
                true => tokio::try_join!(projector.start(), api.start()).map(Some),
                false => Ok(None),
            }
        };
        let (watchers, herald) = tokio::try_join!(watchers, herald)?;
        stack.watchers = watchers;
        if let Some((projector, api)) = herald {
            stack.projector = Some(projector);
            stack.api = Some(api);
        }
        Ok(stack)
    }
}

impl<N: Nats> Stack<N> {
    /// A watcher for cluster `i` on `nats_url`, with the stack's flags and a heartbeat
    /// every second, to start (or spawn) with more flags.
    pub fn watcher(&self, i: usize, nats_url: &str) -> Herald {
        Herald::watcher(&self.kubes[i], &self.clusters[i], nats_url)
            .dir(self.dir.path())
            .default_flag("--heartbeat-interval", "1s")
            .args(&self.watcher_flags)
    }

    /// `herald-api`. Panics for a stack built without it.
    pub fn api(&self) -> &HeraldProcess {
        self.api
            .as_ref()
            .expect("this stack was built without herald-api")
    }

    pub fn api_mut(&mut self) -> &mut HeraldProcess {
        self.api
            .as_mut()
            .expect("this stack was built without herald-api")
    }

    /// `herald-projector`. Panics for a stack built without it.
    pub fn projector_mut(&mut self) -> &mut HeraldProcess {
        self.projector
            .as_mut()
            .expect("this stack was built without herald-projector")
    }

    /// The API server of the first cluster.
    pub fn kube(&self) -> &KubeApi {
        &self.kubes[0]
    }

    /// MCPServers in `namespace` of cluster `i`.
    pub fn mcpservers(&self, i: usize, namespace: &str) -> Api<DynamicObject> {
        objects::mcpservers(self.kubes[i].client(), namespace)
    }

    /// The registries named to the builder.
    pub fn registries(&self) -> BTreeSet<RegistryName> {
        self.registries
            .iter()
            .map(|r| {
                r.parse()
                    .expect("registry names given to the builder are valid")
            })
            .collect()
    }

    /// Every cluster as the oracle sees it (the watchers' default policy).
    pub fn clusters(&self) -> Vec<ClusterUnderTest> {
        ClusterUnderTest::each(&self.kubes, &self.clusters)
    }

    /// A storm of changes to `names` MCPServers in `namespaces` of every cluster,
    /// labelled into the stack's registries; seeded by `HERALD_STORM_SEED` or
    /// `default_seed`.
    pub fn storm(&self, default_seed: u64, namespaces: &[&str], names: usize) -> Storm {
        Storm::over(
            default_seed,
            &self.kubes,
            &self.clusters,
            &self.registries,
            namespaces,
            names,
        )
    }

    /// Waits until the API serves exactly what the clusters hold (the oracle).
    pub async fn converge(&self) -> anyhow::Result<Converged> {
        assert_converges(
            self.converge,
            &self.clusters(),
            self.api().base(),
            &self.registries(),
        )
        .await
    }

    /// The last sequence of HERALD_EVENTS.
    pub async fn last_sequence(&self) -> anyhow::Result<u64> {
        let client = async_nats::connect(self.nats.url()).await?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(STREAM).await?;
        Ok(stream.info().await?.state.last_sequence)
    }
}

//! The pipeline across hosts on one machine ([`crate::netns`]): the hub's three NATS
//! nodes (`n0`, `n1`, `n2`: one JetStream cluster, domain `hub`, stream and buckets at
//! three replicas), the projector (`proj`) and the API (`api`) each on a host of its
//! own, and per workload cluster a host `w-<cluster>` with etcd, the Kubernetes API
//! server, a NATS leaf node connected to every hub node (as `deploy/nats/leaf.conf`:
//! no JetStream of its own, `$JS.API.>` mapped to the hub's domain) and the watcher,
//! which publishes to the leaf only.
//!
//! Hosts talk over the data network, the test over the control links, so a partition
//! ([`MultiHost::cut`]) leaves the storm and the oracle running. With
//! [`MultiHostBuilder::proxied`] a cluster's leaf reaches the hub through
//! [`LinkProxy`]s in the test process instead (delay and loss).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::stream;
use herald_core::RegistryName;
use herald_core::names::STREAM;

use crate::dir::TestDir;
use crate::herald::{Herald, HeraldProcess};
use crate::kube::KubeApi;
use crate::link_proxy::LinkProxy;
use crate::netns::{Host, Network};
use crate::oracle::{ClusterUnderTest, Converged, assert_converges};
use crate::process::ChildProcess;
use crate::storm::Storm;
use crate::timeout::{eventually, within};
use crate::tools::Tools;

/// Ports inside every host: each namespace has its own, so they never collide.
pub const CLIENT_PORT: u16 = 4222;
pub const ROUTE_PORT: u16 = 6222;
pub const LEAF_PORT: u16 = 7422;
const MONITOR_PORT: u16 = 8222;
/// The hub's JetStream domain (`deploy/nats/hub-cluster.conf`).
const DOMAIN: &str = "hub";
const HUB: [&str; 3] = ["n0", "n1", "n2"];
/// Starting servers, forming the cluster, connecting the leaves.
const START: Duration = Duration::from_secs(90);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_STREAM: &str = "HARNESS_CLUSTER_PROBE";
/// A stream's leader election.
const ELECTION: Duration = Duration::from_secs(20);
/// Stepdowns [`MultiHost::move_leader`] tries (each picks one of two nodes).
const MOVE_ATTEMPTS: usize = 12;

/// One `nats-server` in a host, its config, store and log in a test folder.
#[derive(Debug)]
pub struct NatsNode {
    // Before `dir`: the process dies before its folder is removed.
    process: ChildProcess,
    pub host: Host,
    /// Its `server_name`.
    pub name: String,
    _dir: TestDir,
}

impl NatsNode {
    fn spawn(host: &Host, name: &str, config: &str) -> anyhow::Result<Self> {
        let dir = TestDir::new(&format!("nats-{name}"))?;
        let store = dir.join("jetstream");
        let config = config.replace("@STORE@", &store.to_string_lossy());
        let path = dir.join("nats.conf");
        std::fs::write(&path, config)?;
        let mut command = host.command(Tools::locate()?.nats_server()?);
        command.arg("-c").arg(&path);
        let process = ChildProcess::spawn(
            &format!("nats-server {name}"),
            command,
            &dir.join("nats-server.log"),
        )?;
        Ok(Self {
            process,
            host: host.clone(),
            name: name.to_owned(),
            _dir: dir,
        })
    }

    /// Its client URL on the control link (for the test).
    pub fn url(&self) -> String {
        format!("nats://{}:{CLIENT_PORT}", self.host.ctl)
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// Until it serves clients with our name and JetStream (the hub's, for a leaf)
    /// answers through it.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let (url, name) = (self.url(), self.name.clone());
        let process = &mut self.process;
        let ready = eventually(START, &format!("{name} to serve JetStream"), || {
            let running = process.ensure_running();
            let (url, name) = (&url, &name);
            async move {
                running?;
                let probe = async {
                    let client = async_nats::connect(url.as_str()).await.ok()?;
                    if client.server_info().server_name != *name {
                        return None;
                    }
                    async_nats::jetstream::new(client)
                        .query_account()
                        .await
                        .ok()
                };
                Ok(tokio::time::timeout(PROBE_TIMEOUT, probe)
                    .await
                    .ok()
                    .flatten()
                    .map(drop))
            }
        })
        .await;
        ready.map_err(|error| self.process.explain(error))
    }
}

/// What to start; see [`MultiHost::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until built"]
pub struct MultiHostBuilder {
    name: String,
    clusters: Vec<String>,
    registries: Vec<String>,
    proxied: Vec<String>,
    converge: Duration,
}

/// Everything, started; fields in the order they are dropped (processes before the
/// network, the folder last).
#[derive(Debug)]
pub struct MultiHost {
    pub api: HeraldProcess,
    pub projector: HeraldProcess,
    /// One per cluster, in order.
    pub watchers: Vec<HeraldProcess>,
    /// The leaf node of each cluster.
    pub leaves: Vec<NatsNode>,
    /// Per cluster: its proxies to `n0`, `n1`, `n2` (empty unless proxied).
    pub proxies: Vec<Vec<LinkProxy>>,
    pub kubes: Vec<KubeApi>,
    pub hub: Vec<NatsNode>,
    pub net: Network,
    pub dir: TestDir,
    clusters: Vec<String>,
    registries: Vec<String>,
    converge: Duration,
}

impl MultiHost {
    /// By default clusters `east` and `west`, registry `default`.
    pub fn builder(name: &str) -> MultiHostBuilder {
        MultiHostBuilder {
            name: name.to_owned(),
            clusters: vec!["east".into(), "west".into()],
            registries: vec!["default".into()],
            proxied: Vec::new(),
            converge: Duration::from_secs(90),
        }
    }

    /// The host of cluster `i` (`w-<cluster>`).
    pub fn cluster_host(&self, i: usize) -> String {
        format!("w-{}", self.clusters[i])
    }

    /// Partitions a host from all others ([`Network::cut`]).
    pub fn cut(&self, host: &str) -> anyhow::Result<()> {
        self.net.cut(host)
    }

    pub fn heal(&self, host: &str) -> anyhow::Result<()> {
        self.net.heal(host)
    }

    /// A client of the hub through the control links of `nodes` (indices of `n0`…).
    pub async fn hub_client(&self, nodes: &[usize]) -> anyhow::Result<async_nats::Client> {
        let urls: Vec<String> = nodes.iter().map(|&i| self.hub[i].url()).collect();
        Ok(async_nats::connect(urls.as_slice()).await?)
    }

    /// JetStream of the hub through every node.
    pub async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(
            self.hub_client(&[0, 1, 2]).await?,
        ))
    }

    /// The hub node that leads `stream` now, asked with `$JS.API.STREAM.INFO` through
    /// `via` (never guessed).
    pub async fn leader_of(&self, stream: &str, via: &[usize]) -> anyhow::Result<usize> {
        let js = async_nats::jetstream::new(self.hub_client(via).await?);
        let info = within(PROBE_TIMEOUT * 2, "stream info", async {
            anyhow::Ok(js.get_stream(stream).await?.info().await?.clone())
        })
        .await??;
        let leader = info
            .cluster
            .and_then(|c| c.leader)
            .with_context(|| format!("stream {stream} has no leader"))?;
        self.hub
            .iter()
            .position(|n| n.name == leader)
            .with_context(|| format!("the leader {leader} is no hub node"))
    }

    /// Moves the leader of `stream` to hub node `to`: the leader steps down until the
    /// election lands there (nats-server 2.10 takes no preferred leader).
    pub async fn move_leader(&self, stream: &str, to: usize) -> anyhow::Result<()> {
        let client = self.hub_client(&[0, 1, 2]).await?;
        let all = [0, 1, 2];
        for _ in 0..MOVE_ATTEMPTS {
            let now = eventually(ELECTION, &format!("a leader of {stream}"), || async {
                Ok(self.leader_of(stream, &all).await.ok())
            })
            .await?;
            if now == to {
                return Ok(());
            }
            let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
            within(ELECTION, "a stepdown", client.request(subject, "".into())).await??;
            eventually(ELECTION, &format!("{stream} to elect again"), || async {
                let next = self.leader_of(stream, &all).await.ok();
                Ok(next.filter(|&l| l != now).map(drop))
            })
            .await?;
        }
        anyhow::bail!(
            "{stream} did not elect {} in {MOVE_ATTEMPTS} stepdowns",
            self.hub[to].name
        )
    }

    /// `Some` once hub node `node` leads `stream` or is a current replica of it (for
    /// [`eventually`]).
    pub async fn replica_current(&self, stream: &str, node: usize) -> anyhow::Result<Option<()>> {
        let js = self.jetstream().await?;
        let info = within(PROBE_TIMEOUT * 2, "stream info", async {
            anyhow::Ok(js.get_stream(stream).await?.info().await?.clone())
        })
        .await;
        let Ok(Ok(info)) = info else { return Ok(None) };
        let name = &self.hub[node].name;
        let cluster = info.cluster.context("a stream without cluster info")?;
        let current = cluster.leader.as_ref() == Some(name)
            || cluster
                .replicas
                .iter()
                .any(|p| &p.name == name && p.current && !p.offline);
        Ok(current.then_some(()))
    }

    /// The registries named to the builder.
    pub fn registries(&self) -> BTreeSet<RegistryName> {
        self.registries
            .iter()
            .map(|r| r.parse().expect("valid registry names"))
            .collect()
    }

    /// Every cluster as the oracle sees it.
    pub fn clusters(&self) -> Vec<ClusterUnderTest> {
        ClusterUnderTest::each(&self.kubes, &self.clusters)
    }

    /// A storm over every cluster ([`crate::stack::Stack::storm`]).
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

    /// The oracle: waits until the API serves exactly what the clusters hold.
    pub async fn converge(&self) -> anyhow::Result<Converged> {
        assert_converges(
            self.converge,
            &self.clusters(),
            self.api.base(),
            &self.registries(),
        )
        .await
    }

    /// The last sequence of `HERALD_EVENTS`, through `via`.
    pub async fn last_sequence(&self, via: &[usize]) -> anyhow::Result<u64> {
        let js = async_nats::jetstream::new(self.hub_client(via).await?);
        within(PROBE_TIMEOUT * 2, "HERALD_EVENTS info", async {
            Ok(js
                .get_stream(STREAM)
                .await?
                .info()
                .await?
                .state
                .last_sequence)
        })
        .await?
    }
}

impl MultiHostBuilder {
    /// One workload host per name.
    pub fn clusters(mut self, names: &[&str]) -> Self {
        self.clusters = names.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    pub fn registries(mut self, names: &[&str]) -> Self {
        self.registries = names.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The leaf of `cluster` reaches the hub through [`LinkProxy`]s.
    pub fn proxied(mut self, cluster: &str) -> Self {
        self.proxied.push(cluster.to_owned());
        self
    }

    /// Starts everything; `Err` with [`crate::netns::Unavailable`] in its chain where
    /// namespaces cannot be created.
    pub async fn build(self) -> anyhow::Result<MultiHost> {
        let mut names: Vec<String> = HUB.iter().map(|s| (*s).to_owned()).collect();
        names.extend(["proj".to_owned(), "api".to_owned()]);
        names.extend(self.clusters.iter().map(|c| format!("w-{c}")));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let net = Network::create(&names)?;
        let dir = TestDir::new(&self.name)?;
        let hub_hosts: Vec<&Host> = HUB.iter().map(|n| net.host(n)).collect();
        let routes: Vec<String> = hub_hosts
            .iter()
            .map(|h| format!("\"nats://{}:{ROUTE_PORT}\"", h.data))
            .collect();
        let mut hub = Vec::new();
        for (host, name) in hub_hosts.iter().zip(HUB) {
            hub.push(NatsNode::spawn(host, name, &hub_config(name, &routes))?);
        }
        let kubes = futures::future::try_join_all(self.clusters.iter().map(|cluster| {
            let host = net.host(&format!("w-{cluster}")).clone();
            let what = format!("kube-apiserver {cluster}");
            async move { within(START, &what, KubeApi::start_on(Some(&host))).await? }
        }));
        let hub_ready = async {
            for node in &mut hub {
                node.wait_ready().await?;
            }
            await_all_peers(&hub).await
        };
        let (kubes, ()) = tokio::try_join!(kubes, hub_ready)?;
        // Leaves: straight over the data network, or through proxies here.
        let mut leaves = Vec::new();
        let mut proxies = Vec::new();
        for (i, cluster) in self.clusters.iter().enumerate() {
            let host = net.host(&format!("w-{cluster}"));
            let mut links = Vec::new();
            let urls: Vec<String> = if self.proxied.contains(cluster) {
                for (j, node) in hub.iter().enumerate() {
                    let proxy = LinkProxy::start(
                        SocketAddr::new(host.gateway.into(), 0),
                        SocketAddr::new(node.host.ctl.into(), LEAF_PORT),
                        0x11f0 + (i * 8 + j) as u64,
                    )
                    .await?;
                    links.push(proxy);
                }
                links
                    .iter()
                    .map(|p| format!("\"nats-leaf://{}\"", p.addr()))
                    .collect()
            } else {
                hub.iter()
                    .map(|n| format!("\"nats-leaf://{}:{LEAF_PORT}\"", n.host.data))
                    .collect()
            };
            let name = format!("leaf-{cluster}");
            let mut leaf = NatsNode::spawn(host, &name, &leaf_config(&name, &urls))?;
            leaf.wait_ready().await?;
            leaves.push(leaf);
            proxies.push(links);
        }
        // The hub's clients use the data network, the test the control links.
        let hub_url: String = hub
            .iter()
            .map(|n| format!("nats://{}:{CLIENT_PORT}", n.host.data))
            .collect::<Vec<_>>()
            .join(",");
        let watchers = futures::future::try_join_all(self.clusters.iter().zip(&kubes).map(
            |(cluster, kube)| {
                Herald::watcher(kube, cluster, &format!("nats://127.0.0.1:{CLIENT_PORT}"))
                    .on_host(net.host(&format!("w-{cluster}")))
                    .dir(dir.path())
                    .default_flag("--heartbeat-interval", "1s")
                    .flag("--stream-replicas", "3")
                    .start()
            },
        ));
        let projector = Herald::projector(&hub_url)
            .on_host(net.host("proj"))
            .dir(dir.path())
            .default_flag("--ack-wait", "2s")
            .args(["--stream-replicas", "3", "--bucket-replicas", "3"])
            .start();
        let api = Herald::api(&hub_url)
            .on_host(net.host("api"))
            .dir(dir.path())
            .start();
        let (watchers, projector, api) = tokio::try_join!(watchers, projector, api)?;
        Ok(MultiHost {
            api,
            projector,
            watchers,
            leaves,
            proxies,
            kubes,
            hub,
            net,
            dir,
            clusters: self.clusters,
            registries: self.registries,
            converge: self.converge,
        })
    }
}

/// As `deploy/nats/hub-cluster.conf` and `leaf.conf`: a silent partition is noticed
/// within about 20 s.
const PINGS: &str = "ping_interval: \"5s\"\nping_max: 3\n";

/// A hub node: routes to all three over the data network, nothing advertised to
/// clients (they would learn addresses the test cannot reach).
fn hub_config(name: &str, routes: &[String]) -> String {
    format!(
        "server_name: {name}\n\
         listen: \"0.0.0.0:{CLIENT_PORT}\"\n\
         {PINGS}\
         http: \"0.0.0.0:{MONITOR_PORT}\"\n\
         jetstream {{ domain: {DOMAIN}, store_dir: \"@STORE@\" }}\n\
         cluster {{\n  name: herald-hub\n  listen: \"0.0.0.0:{ROUTE_PORT}\"\n  \
         no_advertise: true\n  routes: [{}]\n}}\n\
         leafnodes {{ listen: \"0.0.0.0:{LEAF_PORT}\", no_advertise: true }}\n",
        routes.join(", ")
    )
}

/// A leaf node as `deploy/nats/leaf.conf` (no accounts or TLS here).
fn leaf_config(name: &str, urls: &[String]) -> String {
    format!(
        "server_name: {name}\n\
         listen: \"0.0.0.0:{CLIENT_PORT}\"\n\
         {PINGS}\
         mappings = {{ \"$JS.API.>\": \"$JS.{DOMAIN}.API.>\" }}\n\
         leafnodes {{ remotes = [ {{ urls: [{}] }} ] }}\n",
        urls.join(", ")
    )
}

/// The cluster has formed when a stream with three replicas can be created.
async fn await_all_peers(hub: &[NatsNode]) -> anyhow::Result<()> {
    let urls: Vec<String> = hub.iter().map(NatsNode::url).collect();
    let js = async_nats::jetstream::new(async_nats::connect(urls.as_slice()).await?);
    let config = stream::Config {
        name: PROBE_STREAM.into(),
        subjects: vec!["harness.cluster.probe".into()],
        num_replicas: hub.len(),
        storage: stream::StorageType::Memory,
        ..Default::default()
    };
    eventually(START, "the hub's JetStream cluster to form", || async {
        let create = tokio::time::timeout(PROBE_TIMEOUT, js.create_stream(config.clone()));
        Ok(matches!(create.await, Ok(Ok(_))).then_some(()))
    })
    .await?;
    js.delete_stream(PROBE_STREAM).await?;
    Ok(())
}

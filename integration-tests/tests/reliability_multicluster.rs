//! Reliability, multi-cluster: three Kubernetes API servers ("clusters") with a watcher
//! each, one NATS, one projector, one API. The same server deployed in the three clusters
//! is one entry with three remotes; a change in one cluster touches only its remote; a
//! storm across the three clusters converges to what the oracle computes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use herald_core::annotations as ann;
use herald_core::object::TOOLHIVE_GROUP;
use herald_core::{ClusterId, Kind, RegistryName, WatcherPolicy};
use herald_integration_tests::dir::TestDir;
use herald_integration_tests::herald::HeraldProcess;
use herald_integration_tests::kube::KubeApi;
use herald_integration_tests::large_stack::run_on_large_stack as run;
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::oracle::{ClusterUnderTest, assert_converges, served_view};
use herald_integration_tests::storm::{Storm, StormTarget, seed};
use herald_integration_tests::timeout::within;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

const START: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(30);
const CLUSTERS: [&str; 3] = ["alpha", "beta", "gamma"];
const REGISTRIES: [&str; 3] = ["default", "team-a", "team-b"];

struct Env {
    // Herald processes before the servers they use.
    _api: HeraldProcess,
    _projector: HeraldProcess,
    _watchers: Vec<HeraldProcess>,
    api_base: String,
    kubes: Vec<KubeApi>,
    _nats: NatsServer,
    _dir: TestDir,
}

impl Env {
    async fn start() -> anyhow::Result<Env> {
        let dir = TestDir::new("reliability-multicluster")?;
        let (a, b, c, nats) = tokio::join!(
            within(START, "kube-apiserver alpha", KubeApi::start()),
            within(START, "kube-apiserver beta", KubeApi::start()),
            within(START, "kube-apiserver gamma", KubeApi::start()),
            within(START, "nats-server", NatsServer::start()),
        );
        let kubes = vec![a??, b??, c??];
        let nats = nats??;
        let mut watchers = Vec::new();
        for (kube, cluster) in kubes.iter().zip(CLUSTERS) {
            watchers.push(
                HeraldProcess::watcher(
                    &kube.kubeconfig_path(),
                    cluster,
                    &nats.url(),
                    dir.path(),
                    &[],
                )
                .await?,
            );
        }
        let projector = HeraldProcess::projector(&nats.url(), dir.path(), &[]).await?;
        let api = HeraldProcess::api(&nats.url(), dir.path(), &[]).await?;
        Ok(Env {
            api_base: api.base().to_owned(),
            _api: api,
            _projector: projector,
            _watchers: watchers,
            kubes,
            _nats: nats,
            _dir: dir,
        })
    }

    fn clusters(&self) -> anyhow::Result<Vec<ClusterUnderTest>> {
        self.kubes
            .iter()
            .zip(CLUSTERS)
            .map(|(k, c)| {
                Ok(ClusterUnderTest {
                    client: k.client(),
                    policy: WatcherPolicy::new(c.parse::<ClusterId>()?),
                })
            })
            .collect()
    }

    fn storm_targets(&self) -> Vec<StormTarget> {
        self.kubes
            .iter()
            .zip(CLUSTERS)
            .map(|(k, c)| StormTarget {
                cluster: c.to_owned(),
                client: k.client(),
            })
            .collect()
    }

    fn mcpservers(&self, cluster: usize, ns: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk(TOOLHIVE_GROUP, Kind::MCPServer.versions()[0], "MCPServer");
        let ar = ApiResource::from_gvk_with_plural(&gvk, Kind::MCPServer.plural());
        Api::namespaced_with(self.kubes[cluster].client(), ns, &ar)
    }
}

fn registries() -> anyhow::Result<BTreeSet<RegistryName>> {
    REGISTRIES.iter().map(|r| Ok(r.parse()?)).collect()
}

fn url(cluster: &str) -> String {
    format!("https://shared.{cluster}.example/mcp")
}

async fn deploy_shared(api: &Api<DynamicObject>, cluster: &str) -> anyhow::Result<()> {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{TOOLHIVE_GROUP}/{}", Kind::MCPServer.versions()[0]),
        "kind": "MCPServer",
        "metadata": {
            "name": "shared",
            "annotations": {
                ann::REGISTRY_EXPORT: "true",
                ann::REGISTRY_DESCRIPTION: "one server, three clusters",
                ann::REGISTRY_URL: url(cluster),
            },
        },
        "spec": {},
    }))?;
    api.create(&PostParams::default(), &object).await?;
    api.patch_status(
        "shared",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await?;
    Ok(())
}

/// Remote URLs and deployment clusters of the one entry served in `default`.
async fn shared_entry(base: &str) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
    let view = served_view(base, &registries()?).await?;
    let entries = view
        .get(&"default".parse::<RegistryName>()?)
        .context("registry default is empty")?;
    anyhow::ensure!(entries.len() == 1, "one entry expected: {entries:#?}");
    let entry = entries.iter().next().context("one entry")?;
    Ok((
        entry.remotes.iter().map(|(_, u, _)| u.clone()).collect(),
        entry.deployments.iter().map(|d| d.0.clone()).collect(),
    ))
}

#[test]
fn one_server_in_three_clusters_is_one_entry_with_three_remotes() -> anyhow::Result<()> {
    run(one_server_in_three_clusters_steps)
}

async fn one_server_in_three_clusters_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let env = Env::start().await?;
    let clusters = env.clusters()?;
    for (i, cluster) in CLUSTERS.iter().enumerate() {
        deploy_shared(&env.mcpservers(i, "team"), cluster).await?;
    }
    let converged = assert_converges(CONVERGE, &clusters, &env.api_base, &registries()?).await?;
    assert_eq!(
        converged.entries, 1,
        "the same server in three clusters is one entry"
    );
    let (urls, deployed) = shared_entry(&env.api_base).await?;
    assert_eq!(urls, CLUSTERS.iter().map(|c| url(c)).collect());
    assert_eq!(deployed, CLUSTERS.iter().map(|c| (*c).to_owned()).collect());

    // A change in beta touches beta's remote only.
    env.mcpservers(1, "team")
        .patch(
            "shared",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                ann::REGISTRY_URL: "https://moved.beta.example/mcp"
            }}})),
        )
        .await?;
    assert_converges(CONVERGE, &clusters, &env.api_base, &registries()?).await?;
    let (urls, _) = shared_entry(&env.api_base).await?;
    assert_eq!(
        urls,
        [
            url("alpha"),
            "https://moved.beta.example/mcp".into(),
            url("gamma")
        ]
        .into_iter()
        .collect()
    );

    // Deleted in gamma: two remotes left, alpha's and beta's untouched.
    env.mcpservers(2, "team")
        .delete("shared", &DeleteParams::default())
        .await?;
    assert_converges(CONVERGE, &clusters, &env.api_base, &registries()?).await?;
    let (urls, deployed) = shared_entry(&env.api_base).await?;
    assert_eq!(
        urls,
        [url("alpha"), "https://moved.beta.example/mcp".into()]
            .into_iter()
            .collect()
    );
    assert_eq!(
        deployed,
        ["alpha".to_owned(), "beta".to_owned()]
            .into_iter()
            .collect()
    );
    eprintln!(
        "RELIABILITY multicluster-shared: clusters=3 entries_compared={} duration={:.1}s",
        converged.entries,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[test]
fn a_storm_across_three_clusters_converges() -> anyhow::Result<()> {
    run(a_storm_across_three_clusters_steps)
}

async fn a_storm_across_three_clusters_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let env = Env::start().await?;
    let clusters = env.clusters()?;
    let mut storm = Storm::new(
        seed(0x5eed_0001),
        env.storm_targets(),
        &["team", "payments", "search"],
        6,
        &REGISTRIES,
    );
    storm.run(300, Duration::from_millis(5)).await?;
    let converged = assert_converges(CONVERGE, &clusters, &env.api_base, &registries()?).await?;
    eprintln!(
        "RELIABILITY multicluster-storm: changes={} stats={:?} faults=0 registries={} entries_compared={} duration={:.1}s",
        storm.stats.changes(),
        storm.stats,
        converged.registries,
        converged.entries,
        started.elapsed().as_secs_f64()
    );
    assert!(converged.entries > 0, "the storm left something deployed");
    Ok(())
}

//! Tests of the harness itself: the servers start, keep their data across restarts, and
//! leave no process behind.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::kv;
use futures::{StreamExt as _, TryStreamExt as _};
use herald_integration_tests::dir::TestDir;
use herald_integration_tests::kube::KubeApi;
use herald_integration_tests::nats::{NatsCluster, NatsServer};
use herald_integration_tests::timeout::{eventually, within};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::watcher;
use serde_json::json;

/// A safety net only: the harness has its own, shorter start timeouts whose errors
/// quote the servers' logs.
const START: Duration = Duration::from_secs(180);
const STEP: Duration = Duration::from_secs(15);
/// Re-electing stream leaders after a node dies takes a few seconds.
const FAILOVER: Duration = Duration::from_secs(30);

async fn get(kv: &kv::Store, key: &str) -> anyhow::Result<Option<String>> {
    let value = within(STEP, &format!("get {key}"), kv.get(key)).await??;
    Ok(value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// For `eventually`: `Some` once `key` holds `expected`; errors count as "not yet".
async fn has_value(kv: &kv::Store, key: &str, expected: &str) -> anyhow::Result<Option<()>> {
    let value = kv.get(key).await.ok().flatten();
    Ok((value.as_deref() == Some(expected.as_bytes())).then_some(()))
}

#[tokio::test]
async fn nats_kv_survives_stop_and_kill() -> anyhow::Result<()> {
    let mut nats = within(START, "nats-server", NatsServer::start()).await??;
    let config = kv::Config {
        bucket: "harness".into(),
        ..Default::default()
    };
    let kv = nats.jetstream().await.create_key_value(config).await?;
    kv.put("k", "v1".into()).await?;
    assert_eq!(get(&kv, "k").await?.as_deref(), Some("v1"));

    nats.stop();
    within(START, "restart after stop", nats.restart()).await??;
    let kv = nats.jetstream().await.get_key_value("harness").await?;
    assert_eq!(get(&kv, "k").await?.as_deref(), Some("v1"));
    kv.put("k", "v2".into()).await?;

    nats.kill();
    within(START, "restart after kill", nats.restart()).await??;
    let kv = nats.jetstream().await.get_key_value("harness").await?;
    assert_eq!(get(&kv, "k").await?.as_deref(), Some("v2"));
    Ok(())
}

#[tokio::test]
async fn nats_cluster_survives_a_node() -> anyhow::Result<()> {
    let mut cluster = within(START, "3-node cluster", NatsCluster::start(3)).await??;
    let config = kv::Config {
        bucket: "harness".into(),
        num_replicas: 3,
        ..Default::default()
    };
    let kv = cluster.jetstream().await.create_key_value(config).await?;
    kv.put("k", "v1".into()).await?;

    cluster.kill_node(0);
    // Puts and gets fail while the client reconnects and the bucket elects a new leader;
    // a put in flight on the dead connection waits for an ack that never comes.
    eventually(FAILOVER, "a put with node 0 down", || async {
        let put = tokio::time::timeout(Duration::from_secs(1), kv.put("k", "v2".into())).await;
        Ok(put.ok().and_then(Result::ok))
    })
    .await?;
    eventually(FAILOVER, "a get with node 0 down", || {
        has_value(&kv, "k", "v2")
    })
    .await?;

    within(START, "node 0 to rejoin", cluster.restart_node(0)).await??;
    // Direct gets may be answered by node 0's replica: it must catch up.
    let node0 = cluster
        .node(0)
        .jetstream()
        .await
        .get_key_value("harness")
        .await?;
    eventually(FAILOVER, "node 0 to catch up", || {
        has_value(&node0, "k", "v2")
    })
    .await?;
    Ok(())
}

/// Waits for the next watcher event on an object named `name` that satisfies `accept`.
async fn next_event<S>(
    events: &mut S,
    what: &str,
    name: &str,
    accept: impl Fn(&watcher::Event<DynamicObject>) -> bool,
) -> anyhow::Result<()>
where
    S: futures::Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Unpin,
{
    within(STEP, what, async {
        while let Some(event) = events.try_next().await? {
            let about_name = match &event {
                watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                    o.metadata.name.as_deref() == Some(name)
                }
                _ => false,
            };
            if about_name && accept(&event) {
                return Ok(());
            }
        }
        anyhow::bail!("watch ended")
    })
    .await?
}

fn toolhive(version: &str, kind: &str, plural: &str) -> ApiResource {
    let gvk = GroupVersionKind::gvk("toolhive.stacklok.dev", version, kind);
    ApiResource::from_gvk_with_plural(&gvk, plural)
}

#[tokio::test]
async fn kube_mcpserver_lifecycle() -> anyhow::Result<()> {
    let kube = within(START, "etcd + kube-apiserver", KubeApi::start()).await??;
    let client = kube.client();
    let (namespace, name) = ("team-a", "fetch");
    let v1alpha1 = toolhive("v1alpha1", "MCPServer", "mcpservers");
    let v1beta1 = toolhive("v1beta1", "MCPServer", "mcpservers");
    let alpha: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &v1alpha1);
    let beta: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &v1beta1);

    let mut events = watcher(beta.clone(), watcher::Config::default()).boxed();
    within(STEP, "initial list", async {
        while let Some(event) = events.try_next().await? {
            if matches!(event, watcher::Event::InitDone) {
                return Ok(());
            }
        }
        anyhow::bail!("watch ended")
    })
    .await??;

    let server = DynamicObject::new(name, &v1alpha1)
        .within(namespace)
        .data(json!({
            "spec": {
                "image": "ghcr.io/stackloklabs/gofetch/server:1.0.1",
                "transport": "streamable-http",
                "port": 8080,
            }
        }));
    alpha
        .create(&PostParams::default(), &server)
        .await
        .context("creating a v1alpha1 MCPServer")?;
    next_event(&mut events, "the created MCPServer", name, |_| true).await?;

    let read = beta.get(name).await?;
    assert_eq!(
        read.types.as_ref().map(|t| t.api_version.as_str()),
        Some("toolhive.stacklok.dev/v1beta1")
    );
    assert_eq!(
        read.data["spec"]["image"],
        "ghcr.io/stackloklabs/gofetch/server:1.0.1"
    );

    let url = format!("http://mcp-{name}-proxy.{namespace}.svc.cluster.local:8080/mcp");
    let status = json!({ "status": { "phase": "Ready", "url": url } });
    beta.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("patching the status")?;
    next_event(&mut events, "the status update", name, |event| {
        matches!(event, watcher::Event::Apply(o) if o.data["status"]["phase"] == "Ready" && o.data["status"]["url"] == url.as_str())
    })
    .await?;

    beta.delete(name, &DeleteParams::default()).await?;
    next_event(&mut events, "the deletion", name, |event| {
        matches!(event, watcher::Event::Delete(_))
    })
    .await?;

    // The other two kinds are served as well.
    let proxy = toolhive("v1alpha1", "MCPRemoteProxy", "mcpremoteproxies");
    let proxies: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &proxy);
    let remote = DynamicObject::new("remote", &proxy)
        .within(namespace)
        .data(json!({
            "spec": { "remoteURL": "https://mcp.example.com/mcp", "transport": "streamable-http" }
        }));
    proxies
        .create(&PostParams::default(), &remote)
        .await
        .context("creating an MCPRemoteProxy")?;
    let virtual_server = toolhive("v1alpha1", "VirtualMCPServer", "virtualmcpservers");
    let virtual_servers: Api<DynamicObject> =
        Api::namespaced_with(client, namespace, &virtual_server);
    let vmcp = DynamicObject::new("aggregate", &virtual_server)
        .within(namespace)
        .data(json!({
            "spec": { "groupRef": { "name": "team-a-tools" } }
        }));
    virtual_servers
        .create(&PostParams::default(), &vmcp)
        .await
        .context("creating a VirtualMCPServer")?;
    Ok(())
}

#[tokio::test]
async fn kube_api_keeps_objects_across_restarts() -> anyhow::Result<()> {
    let mut kube = within(START, "etcd + kube-apiserver", KubeApi::start()).await??;
    let v1beta1 = toolhive("v1beta1", "MCPServer", "mcpservers");
    let servers: Api<DynamicObject> = Api::namespaced_with(kube.client(), "team-a", &v1beta1);
    let server = DynamicObject::new("kept", &v1beta1)
        .within("team-a")
        .data(json!({ "spec": { "image": "example/kept:1.0.0" } }));
    servers.create(&PostParams::default(), &server).await?;

    kube.kill();
    within(START, "restart after kill", kube.restart()).await??;
    within(STEP, "get after kill", servers.get("kept")).await??;

    kube.stop();
    within(START, "restart after stop", kube.restart()).await??;
    within(STEP, "get after stop", servers.get("kept")).await??;
    Ok(())
}

/// Whether a process exists and is not a zombie (a container's init may never reap it).
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

#[tokio::test]
async fn processes_are_gone_after_drop() -> anyhow::Result<()> {
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let pid = nats.pid();
    assert!(is_alive(pid));
    drop(nats);
    assert!(!is_alive(pid), "nats-server {pid} survived its handle");

    let kube = within(START, "etcd + kube-apiserver", KubeApi::start()).await??;
    let pids = [kube.etcd_process().pid(), kube.apiserver_process().pid()];
    drop(kube);
    for pid in pids {
        assert!(!is_alive(pid), "process {pid} survived KubeApi");
    }
    Ok(())
}

const ORPHAN_ENV: &str = "HERALD_HARNESS_ORPHAN";

/// The child side of `servers_die_with_a_killed_test_process`: starts a server, prints
/// its pid, and waits to be killed.
#[tokio::test]
#[ignore = "run by servers_die_with_a_killed_test_process"]
async fn orphan_helper() {
    if std::env::var_os(ORPHAN_ENV).is_none() {
        return;
    }
    let nats = NatsServer::start().await.expect("nats-server");
    println!("nats-server pid {}", nats.pid());
    // Not synchronisation: only a bound on this helper's life if nobody kills it.
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test]
async fn servers_die_with_a_killed_test_process() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt as _;

    // The killed helper cannot remove its test folder: give it one inside ours.
    let scratch = TestDir::new("orphan")?;
    let mut helper = tokio::process::Command::new(std::env::current_exe()?)
        .args(["orphan_helper", "--exact", "--ignored", "--nocapture"])
        .env(ORPHAN_ENV, "1")
        .env("TMPDIR", scratch.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(helper.stdout.take().context("stdout")?).lines();
    let pid: u32 = within(START, "the helper's nats-server pid", async {
        while let Some(line) = lines.next_line().await? {
            if let Some(pid) = line.strip_prefix("nats-server pid ") {
                return Ok(pid.trim().parse()?);
            }
        }
        anyhow::bail!("the helper exited without starting nats-server")
    })
    .await??;
    assert!(is_alive(pid));

    helper.start_kill()?; // SIGKILL: no destructor runs in the helper
    within(STEP, "the helper to die", helper.wait()).await??;
    eventually(STEP, "the orphaned nats-server to die", || async {
        Ok((!is_alive(pid)).then_some(()))
    })
    .await?;
    Ok(())
}

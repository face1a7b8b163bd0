//! The four NATS roles of deploy/nats/permissions.conf against a real nats-server: the
//! shipped file, with each sample public key replaced by a key whose seed the test holds,
//! runs the real binaries (watcher, importer, projector and its ops commands, API), and
//! raw clients with each role's key are refused, by the server, what the role must not do.
//! Through a leaf node (deploy/nats/leaf.conf) a compromised leaf reaches no more than its
//! cluster's user allows. And a process that connects without authentication to a server
//! off loopback says so: a WARN at start and `herald_nats_unauthenticated 1`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt as _;
use herald_core::Kind;
use herald_core::annotations as ann;
use herald_core::names::{DLQ_STREAM, STREAM};
use herald_core::object::TOOLHIVE_GROUP;
use herald_integration_tests::dir::TestDir;
use herald_integration_tests::herald::{Herald, HeraldProcess};
use herald_integration_tests::kube::KubeApi;
use herald_integration_tests::large_stack::run_on_large_stack as run;
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::objects::resource;
use herald_integration_tests::ports::free_port;
use herald_integration_tests::process::ChildProcess;
use herald_integration_tests::roles::{
    API, CLUSTER_A, IMPORTER, PROJECTOR, RoleKeys, deploy_nats, render_permissions, without_tls,
};
use herald_integration_tests::timeout::{eventually, within};
use herald_integration_tests::tools::{herald_binary, workspace_root};
use herald_runtime::nats::{OPEN_STREAM_WARNING, UNAUTHENTICATED_METRIC};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const START: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(45);
/// A refusal is one server round trip; this is generous.
const REFUSAL: Duration = Duration::from_secs(5);
/// Requests that are expected to go unanswered.
const SHORT: Duration = Duration::from_secs(1);

/// The importer's source and registry in the sample.
const SOURCE: &str = "official";
const REGISTRY: &str = "default";
const BUCKET: &str = "herald-default";
const KV_STREAM: &str = "KV_herald-default";
/// Keys of 1 KiB that make the server ask a watcher for flow control.
const BULK_KEYS: usize = 3000;

// ------------------------------------------------------------------ the leaf, rendered

/// The seed of the leaf node's own local user for the watcher (leaf.conf).
const LEAF_WATCHER: &str = "LEAF_WATCHER";

/// deploy/nats/leaf.conf for a leaf on loopback: the hub's leafnodes port, cluster-a's seed
/// for the link, the test's key for the local watcher user, no TLS, plus an account
/// PROBE for the harness's readiness probe and a user `rogue` without limits in the
/// account HERALD: a leaf whose operator is hostile.
fn render_leaf(keys: &RoleKeys, hub_leaf_port: u16) -> anyhow::Result<String> {
    let text = without_tls(&deploy_nats("leaf.conf")?);
    let mut out = String::from("no_auth_user: probe\njetstream { domain: leaf }\n");
    let mut local_users = 0;
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or_default();
        let mut line = line.to_owned();
        if let Some((_, key)) = code.split_once("nkey = ") {
            line = line.replace(key.trim(), &keys.public(LEAF_WATCHER));
            local_users += 1;
        }
        if code.contains("$HERALD_LEAF_NKEY_SEED") {
            line = line.replace(
                "$HERALD_LEAF_NKEY_SEED",
                &format!("\"{}\"", keys.seed(CLUSTER_A)?),
            );
        }
        if let Some(start) = code.find("nats-leaf://") {
            let end = code[start..].find('"').map_or(code.len(), |e| start + e);
            line = line.replace(
                &code[start..end],
                &format!("nats-leaf://127.0.0.1:{hub_leaf_port}"),
            );
        }
        out.push_str(&line);
        out.push('\n');
        if code.trim_start().starts_with("accounts {") {
            out.push_str(
                "  PROBE { jetstream: enabled, users = [ { user: probe, password: probe } ] }\n",
            );
        }
        if code.trim_start().starts_with("users = [") {
            out.push_str("      { user: rogue, password: rogue }\n");
        }
    }
    ensure!(
        local_users == 1,
        "leaf.conf has {local_users} nkey users, expected the watcher's"
    );
    Ok(out)
}

// ------------------------------------------------------------------ a client of one role

/// A raw client with one role's key and inbox prefix, and the errors the server sends it.
struct Probe {
    role: String,
    /// Refusals seen.
    refusals: usize,
    client: async_nats::Client,
    js: jetstream::Context,
    errors: mpsc::UnboundedReceiver<String>,
}

impl Probe {
    async fn connect(url: &str, keys: &RoleKeys, role: &str, inbox: &str) -> anyhow::Result<Self> {
        Self::connect_with(
            url,
            async_nats::ConnectOptions::new().nkey(keys.seed(role)?),
            role,
            inbox,
        )
        .await
    }

    async fn connect_with(
        url: &str,
        options: async_nats::ConnectOptions,
        role: &str,
        inbox: &str,
    ) -> anyhow::Result<Self> {
        let (tx, errors) = mpsc::unbounded_channel();
        let client = options
            .custom_inbox_prefix(inbox)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(err) = event {
                        let _ = tx.send(err.to_string());
                    }
                }
            })
            .connect(url)
            .await
            .with_context(|| format!("connecting as {role}"))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(SHORT)
            .build(client.clone());
        Ok(Self {
            role: role.to_owned(),
            refusals: 0,
            client,
            js,
            errors,
        })
    }

    /// Waits for the server's permissions violation naming `op` ("Publish",
    /// "Subscription") and `subject`.
    async fn refused(&mut self, op: &str, subject: &str) -> anyhow::Result<()> {
        let wanted = format!("permissions violation for {op} to \"{subject}\"").to_lowercase();
        let role = self.role.clone();
        let errors = &mut self.errors;
        within(
            REFUSAL,
            &format!("the server to refuse {role}: {op} {subject}"),
            async {
                while let Some(err) = errors.recv().await {
                    if err.to_lowercase().contains(&wanted) {
                        return Ok(());
                    }
                }
                bail!("the connection of {role} closed")
            },
        )
        .await??;
        self.refusals += 1;
        Ok(())
    }

    /// Publishes to `subject` (with a reply inbox, as a JetStream request would) and
    /// expects the server to refuse it.
    async fn publish_refused(&mut self, subject: &str) -> anyhow::Result<()> {
        let reply = self.client.new_inbox();
        self.client
            .publish_with_reply(subject.to_owned(), reply, "{}".into())
            .await?;
        self.client.flush().await?;
        self.refused("publish", subject).await
    }

    async fn subscribe_refused(&mut self, subject: &str) -> anyhow::Result<()> {
        let _subscription = self.client.subscribe(subject.to_owned()).await?;
        self.client.flush().await?;
        self.refused("subscription", subject).await
    }

    /// Every subject in `subjects` is refused for publishing.
    async fn publishes_refused(&mut self, subjects: &[&str]) -> anyhow::Result<()> {
        for subject in subjects {
            self.publish_refused(subject).await?;
        }
        Ok(())
    }

    async fn subscribes_refused(&mut self, subjects: &[&str]) -> anyhow::Result<()> {
        for subject in subjects {
            self.subscribe_refused(subject).await?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ Kubernetes and the API

async fn create_running(kube: &KubeApi, ns: &str, name: &str) -> anyhow::Result<()> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(kube.client(), ns, &resource(Kind::MCPServer));
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{TOOLHIVE_GROUP}/{}", Kind::MCPServer.versions()[0]),
        "kind": "MCPServer",
        "metadata": { "name": name, "annotations": {
            ann::REGISTRY_EXPORT: "true",
            ann::REGISTRY_DESCRIPTION: "served through four NATS roles",
            ann::REGISTRY_URL: format!("https://{name}.example/mcp"),
        } },
        "spec": {},
    }))?;
    api.create(&PostParams::default(), &object).await?;
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await?;
    Ok(())
}

/// The server names the API serves in the default registry.
async fn served_names(api: &HeraldProcess) -> anyhow::Result<Vec<String>> {
    let body: Value = reqwest::get(format!("{}/v0.1/servers?limit=100", api.base()))
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(body["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["server"]["name"].as_str().map(str::to_owned))
        .collect())
}

async fn wait_served(api: &HeraldProcess, name: &str, present: bool) -> anyhow::Result<()> {
    let what = format!(
        "{name} to be {}served",
        if present { "" } else { "no longer " }
    );
    eventually(CONVERGE, &what, || async {
        let names = served_names(api).await.unwrap_or_default();
        Ok((names.iter().any(|n| n == name) == present).then_some(()))
    })
    .await
}

/// Every subject in a stream (the streams here hold a few dozen messages).
async fn subjects(js: &jetstream::Context, stream: &str) -> anyhow::Result<Vec<String>> {
    let mut stream = js.get_stream(stream).await?;
    let state = stream.info().await?.state.clone();
    let mut subjects = Vec::new();
    if state.messages == 0 {
        return Ok(subjects);
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(seq).await {
            subjects.push(message.subject.to_string());
        }
    }
    Ok(subjects)
}

// ------------------------------------------------------------------ Herald's binaries

/// A one-shot `herald-projector` command with `role`'s key; its output on success.
async fn projector_command(
    nats: &str,
    keys: &RoleKeys,
    role: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    command(nats, keys, role, "herald-projector", args).await
}

/// `binary` with `args`, as `role`, run to completion; its output.
async fn command(
    nats: &str,
    keys: &RoleKeys,
    role: &str,
    binary: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let output = within(
        START,
        &format!("{binary} {}", args.join(" ")),
        tokio::process::Command::new(herald_binary(binary))
            .args(args)
            .args(["--nats-url", nats, "--nats-nkey", &keys.seed_file(role)])
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success(),
        "{binary} {} as {role} failed ({}): {text}",
        args.join(" "),
        output.status
    );
    Ok(text)
}

fn catalog_file(dir: &Path, name: &str, examples: &[&str]) -> anyhow::Result<String> {
    let folder = workspace_root().join("spec/registry/server-json-examples/valid");
    let servers = examples
        .iter()
        .map(|e| {
            let doc: Value = serde_json::from_str(&std::fs::read_to_string(folder.join(e))?)?;
            Ok(json!({ "server": doc }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let path = dir.join(name);
    std::fs::write(
        &path,
        json!({ "servers": servers, "metadata": { "count": servers.len() } }).to_string(),
    )?;
    Ok(path.to_string_lossy().into_owned())
}

/// `herald-catalog sync` once, with the importer's key.
async fn import(nats: &str, keys: &RoleKeys, file: &str) -> anyhow::Result<String> {
    command(
        nats,
        keys,
        IMPORTER,
        "herald-catalog",
        &[
            "sync",
            "--source-id",
            SOURCE,
            "--registry",
            REGISTRY,
            "--file",
            file,
        ],
    )
    .await
}

// ------------------------------------------------------------------ one hub, four roles

#[test]
fn each_nats_role_runs_herald_with_its_own_user_and_is_refused_the_rest() -> anyhow::Result<()> {
    run(four_roles_steps)
}

async fn four_roles_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = TestDir::new("nats-roles")?;
    let keys = RoleKeys::new(dir.path(), &[LEAF_WATCHER])?;
    let config = render_permissions(&keys)?;
    let (kube, nats) = tokio::join!(
        within(START, "kube-apiserver", KubeApi::start()),
        within(START, "nats-server", NatsServer::start_with_config(&config)),
    );
    let (kube, mut nats) = (kube??, nats??);
    let url = nats.url();
    let key = |role| ["--nats-nkey".to_owned(), keys.seed_file(role)];

    // A watcher may only look the stream up: started before the projector, it says why
    // it is not ready, and becomes ready once the projector has created the stream.
    let early_port = free_port();
    let mut command = std::process::Command::new(herald_binary("herald-watcher"));
    command
        .env("KUBECONFIG", kube.kubeconfig_path())
        .env("RUST_LOG", "info")
        .args([
            "--log-format",
            "json",
            "--cluster-id",
            "cluster-a",
            "--nats-url",
            &url,
        ])
        .args(key(CLUSTER_A))
        .args(["--health-listen", &format!("127.0.0.1:{early_port}")]);
    let early = ChildProcess::spawn(
        "herald-watcher (early)",
        command,
        &dir.join("watcher-early.log"),
    )?;
    let readyz = format!("http://127.0.0.1:{early_port}/readyz");
    let readiness = || async {
        let response = reqwest::get(&readyz).await.ok()?;
        Some((response.status().is_success(), response.text().await.ok()?))
    };
    eventually(
        CONVERGE,
        "the early watcher to say why it is not ready",
        || async {
            Ok(readiness()
                .await
                .filter(|(_, why)| why.contains("start herald-projector"))
                .map(drop))
        },
    )
    .await?;

    // The pipeline, every process with its own user: the projector first (it creates the
    // stream), then the API, a watcher of cluster-a and the importer of `official`.
    let projector = Herald::projector(&url)
        .dir(dir.path())
        .args(key(PROJECTOR))
        .start()
        .await?;
    eventually(CONVERGE, "the early watcher to be ready", || async {
        Ok(readiness().await.filter(|(ready, _)| *ready).map(drop))
    })
    .await?;
    drop(early);
    let api = Herald::api(&url)
        .dir(dir.path())
        .args(key(API))
        .start()
        .await?;
    let watcher = Herald::watcher(&kube, "cluster-a", &url)
        .dir(dir.path())
        .args(key(CLUSTER_A))
        .start()
        .await?;
    create_running(&kube, "team", "time").await?;
    wait_served(&api, "com.toolhive.k8s.team/time", true).await?;
    let both = catalog_file(
        dir.path(),
        "catalog.json",
        &["with-remote.json", "minimal.json"],
    )?;
    import(&url, &keys, &both).await?;
    wait_served(&api, "io.github.user/weather", true).await?;
    wait_served(&api, "io.github.user/remote-weather", true).await?;
    // The importer reads the bucket: a second sync without one entry withdraws it.
    let one = catalog_file(dir.path(), "catalog-one.json", &["with-remote.json"])?;
    import(&url, &keys, &one).await?;
    wait_served(&api, "io.github.user/weather", false).await?;
    let admin = nats.jetstream().await;

    // The projector dead-letters: a malformed event from cluster-a lands in HERALD_DLQ.
    let mut cluster_a =
        Probe::connect(&url, &keys, CLUSTER_A, "_INBOX.herald-watcher.cluster-a").await?;
    cluster_a
        .js
        .publish("herald.events.cluster-a.default", "not an event".into())
        .await?
        .await
        .context("cluster-a publishes its own subject")?;
    eventually(CONVERGE, "the malformed event to be dead-lettered", || {
        let admin = admin.clone();
        async move {
            Ok(subjects(&admin, DLQ_STREAM)
                .await
                .ok()
                .filter(|s| !s.is_empty()))
        }
    })
    .await?;

    // The projector's ops commands with its user.
    let status = projector_command(&url, &keys, PROJECTOR, &["status"]).await?;
    ensure!(status.contains(BUCKET), "status names the bucket: {status}");
    let events = projector_command(&url, &keys, PROJECTOR, &["events", "--last", "5"]).await?;
    ensure!(
        events.contains("catalog"),
        "events shows the catalog events: {events}"
    );
    let replay = projector_command(&url, &keys, PROJECTOR, &["replay", "--check"]).await?;
    ensure!(
        replay.contains("no differences"),
        "replay finds no differences: {replay}"
    );
    for _ in 0..2 {
        // The second one drops the first one's scratch bucket.
        projector_command(&url, &keys, PROJECTOR, &["replay", "--keep"]).await?;
    }

    // The watcher's heartbeats go on; nothing else may change.
    let quiet = |subjects: Vec<String>| -> Vec<String> {
        subjects
            .into_iter()
            .filter(|s| s != "herald.events.cluster-a._cluster")
            .collect()
    };
    let before = quiet(subjects(&admin, STREAM).await?);

    // The API reads and does nothing else.
    let mut api_user = Probe::connect(&url, &keys, API, "_INBOX.herald-api").await?;
    api_user
        .publishes_refused(&[
            &format!("$KV.{BUCKET}.deployment.forged"),
            "$KV.herald_clusters.cluster-a",
            "herald.events.cluster-a.default",
            "herald.events._catalog.official.default",
            "herald.dlq.forged",
            "$JS.API.STREAM.CREATE.KV_herald-forged",
            &format!("$JS.API.STREAM.UPDATE.{KV_STREAM}"),
            &format!("$JS.API.STREAM.DELETE.{KV_STREAM}"),
            &format!("$JS.API.STREAM.PURGE.{KV_STREAM}"),
            &format!("$JS.API.STREAM.MSG.DELETE.{KV_STREAM}"),
            "$JS.API.STREAM.DELETE.HERALD_EVENTS",
            "$JS.API.STREAM.PURGE.HERALD_EVENTS",
            "$JS.API.STREAM.INFO.HERALD_EVENTS",
            "$JS.API.CONSUMER.CREATE.HERALD_EVENTS",
            "$JS.API.CONSUMER.CREATE.HERALD_EVENTS.reader.herald.events.>",
            "$JS.API.CONSUMER.CREATE.HERALD_DLQ",
            "$JS.API.CONSUMER.DELETE.HERALD_EVENTS.herald-projector",
            &format!("$JS.API.CONSUMER.DELETE.{KV_STREAM}.any"),
            &format!("$JS.API.DIRECT.GET.{KV_STREAM}"),
            "$JS.ACK.HERALD_EVENTS.herald-projector.1.1.1.1.0",
        ])
        .await?;
    api_user
        .subscribes_refused(&[
            "_INBOX.>",
            "_INBOX.herald-projector.>",
            "herald.events.>",
            "$KV.>",
        ])
        .await?;
    // The same through the JetStream API: each call fails, nothing changes.
    let store = api_user.js.get_key_value(BUCKET).await?;
    ensure!(
        store.put("deployment.forged", "{}".into()).await.is_err(),
        "the API user put a key"
    );
    ensure!(
        api_user
            .js
            .create_key_value(kv::Config {
                bucket: "herald-forged".to_owned(),
                ..Default::default()
            })
            .await
            .is_err(),
        "the API user created a bucket"
    );
    ensure!(
        api_user.js.delete_stream(STREAM).await.is_err(),
        "the API user deleted the stream"
    );
    // What it may do: look a bucket up and watch it, also a bucket big enough that the
    // server asks for flow control ($JS.FC.<stream>.<consumer>.<token>) while it delivers.
    let mut watch = store.watch_with_history(">").await?;
    within(REFUSAL, "the API user's watch to deliver", watch.next())
        .await?
        .context("the watch ended")??;
    let bulk = admin
        .create_key_value(kv::Config {
            bucket: "bulk".to_owned(),
            ..Default::default()
        })
        .await?;
    let value = bytes::Bytes::from(vec![b'x'; 1024]);
    for i in 0..BULK_KEYS {
        bulk.put(format!("k{i}"), value.clone()).await?;
    }
    let mut watch = api_user
        .js
        .get_key_value("bulk")
        .await?
        .watch_with_history(">")
        .await?;
    within(CONVERGE, "the API user's watch of a big bucket", async {
        for _ in 0..BULK_KEYS {
            watch.next().await.context("the watch ended")??;
        }
        anyhow::Ok(())
    })
    .await??;
    while let Ok(err) = api_user.errors.try_recv() {
        ensure!(!err.contains("$JS.FC"), "flow control refused: {err}");
    }

    // A watcher publishes its own cluster's events, looks the stream up, and nothing else.
    cluster_a
        .publishes_refused(&[
            "herald.events.cluster-b.default",
            "herald.events.cluster-b._cluster",
            "herald.events._catalog.official.default",
            &format!("$KV.{BUCKET}.deployment.forged"),
            "herald.dlq.forged",
            "$JS.API.STREAM.CREATE.HERALD_EVENTS",
            "$JS.API.STREAM.DELETE.HERALD_EVENTS",
            "$JS.API.STREAM.PURGE.HERALD_EVENTS",
            &format!("$JS.API.STREAM.INFO.{KV_STREAM}"),
            &format!("$JS.API.CONSUMER.CREATE.{KV_STREAM}"),
            "$JS.API.CONSUMER.CREATE.HERALD_EVENTS",
            "$JS.API.STREAM.NAMES",
        ])
        .await?;
    cluster_a
        .subscribes_refused(&[
            "herald.events.>",
            "_INBOX.>",
            "_INBOX.herald-watcher.cluster-b.>",
            "_INBOX.herald-api.>",
        ])
        .await?;
    cluster_a
        .js
        .get_stream(STREAM)
        .await
        .context("cluster-a looks the stream up")?;

    // The importer publishes its own source's events and reads its registry's bucket.
    let mut importer = Probe::connect(
        &url,
        &keys,
        IMPORTER,
        &format!("_INBOX.herald-catalog.{SOURCE}"),
    )
    .await?;
    importer
        .publishes_refused(&[
            "herald.events.cluster-a.default",
            "herald.events.cluster-a._cluster",
            "herald.events._catalog.other.default",
            &format!("$KV.{BUCKET}.catalog.official.forged"),
            "$JS.API.STREAM.CREATE.HERALD_EVENTS",
            "$JS.API.STREAM.CREATE.KV_herald-forged",
            &format!("$JS.API.STREAM.DELETE.{KV_STREAM}"),
            &format!("$JS.API.STREAM.PURGE.{KV_STREAM}"),
            "$JS.API.CONSUMER.CREATE.HERALD_EVENTS",
            "$JS.API.CONSUMER.CREATE.KV_herald-other",
            "$JS.API.STREAM.INFO.KV_herald_clusters",
        ])
        .await?;
    importer
        .subscribes_refused(&[
            "_INBOX.>",
            "_INBOX.herald-catalog.other.>",
            "herald.events.>",
        ])
        .await?;

    // The projector writes buckets and dead letters, and publishes no event.
    let mut projector_user =
        Probe::connect(&url, &keys, PROJECTOR, "_INBOX.herald-projector").await?;
    projector_user
        .publishes_refused(&[
            "herald.events.cluster-a.default",
            "herald.events.cluster-a._cluster",
            "herald.events._catalog.official.default",
            "$JS.API.STREAM.DELETE.HERALD_EVENTS",
            "$JS.API.STREAM.DELETE.HERALD_DLQ",
            "$JS.API.STREAM.DELETE.KV_herald_clusters",
            "$JS.API.STREAM.PURGE.HERALD_EVENTS",
            "$JS.API.STREAM.MSG.DELETE.HERALD_EVENTS",
            "$JS.API.STREAM.UPDATE.HERALD_EVENTS",
            "$JS.API.CONSUMER.DELETE.HERALD_EVENTS.herald-projector",
        ])
        .await?;
    projector_user
        .subscribes_refused(&["_INBOX.>", "_INBOX.herald-api.>", "herald.events.>"])
        .await?;

    // Nothing of the above reached the stream or the bucket.
    let after = quiet(subjects(&admin, STREAM).await?);
    ensure!(
        before == after,
        "the stream changed: {before:?} -> {after:?}"
    );
    let store = admin.get_key_value(BUCKET).await?;
    for key in ["deployment.forged", "catalog.official.forged"] {
        ensure!(store.entry(key).await?.is_none(), "{key} was written");
    }
    for stream in [STREAM, DLQ_STREAM, KV_STREAM, "KV_herald_clusters"] {
        admin
            .get_stream(stream)
            .await
            .with_context(|| format!("{stream} is gone"))?;
    }
    ensure!(
        admin.get_stream("KV_herald-forged").await.is_err(),
        "a forged bucket exists"
    );
    // And the pipeline still serves.
    wait_served(&api, "com.toolhive.k8s.team/time", true).await?;
    deliver_subject_escape(&mut api_user, &admin).await?;

    // After a restart of NATS each process recovers with its own permissions (consumers
    // recreated, the API's watch among them): a new object is served.
    nats.restart().await?;
    let restarted = Instant::now();
    create_running(&kube, "team", "after-restart").await?;
    wait_served(&api, "com.toolhive.k8s.team/after-restart", true).await?;
    let recovered = restarted.elapsed();

    eprintln!(
        "NATS roles: pipeline served; refusals checked: api={} watcher={} importer={} projector={}; served again {:.1}s after a NATS restart; duration={:.1}s",
        api_user.refusals,
        cluster_a.refusals,
        importer.refusals,
        projector_user.refusals,
        recovered.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop((watcher, api, projector));
    Ok(())
}

/// A reader may create a consumer on a bucket's stream, and subject permissions cannot
/// see the push consumer's deliver subject: pointed at an event subject, does the server
/// publish the bucket's values into the event stream? It must not.
async fn deliver_subject_escape(
    api_user: &mut Probe,
    admin: &jetstream::Context,
) -> anyhow::Result<()> {
    let created = api_user
        .js
        .create_consumer_on_stream(
            consumer::push::Config {
                deliver_subject: "herald.events.cluster-b.default".to_owned(),
                ..Default::default()
            },
            KV_STREAM,
        )
        .await;
    let leaked = eventually(SHORT * 2, "bucket values in the event stream", || async {
        let subjects = subjects(admin, STREAM).await?;
        Ok(subjects
            .iter()
            .any(|s| s.starts_with("herald.events.cluster-b."))
            .then_some(()))
    })
    .await;
    ensure!(
        leaked.is_err(),
        "a push consumer of the API user delivered bucket values into the event stream"
    );
    eprintln!(
        "NATS roles: a push consumer aimed at an event subject (created: {}) delivered nothing to the stream",
        created.is_ok()
    );
    Ok(())
}

// ------------------------------------------------------------------ loud when open

/// A binary pointed at an address that is not on loopback (TEST-NET-3, RFC 5737: nothing
/// answers there) without credentials warns and sets the gauge; with credentials, or on
/// loopback, it does neither.
#[test]
fn a_process_without_nats_credentials_off_loopback_warns_and_says_so_in_metrics()
-> anyhow::Result<()> {
    run(loud_steps)
}

const OFF_LOOPBACK: &str = "nats://203.0.113.1:4222";

struct Spawned {
    process: ChildProcess,
    metrics: Option<String>,
}

fn spawn(
    dir: &Path,
    binary: &str,
    label: &str,
    args: &[&str],
    health: bool,
) -> anyhow::Result<Spawned> {
    let port = free_port();
    let mut command = std::process::Command::new(herald_binary(binary));
    command
        .env("RUST_LOG", "info")
        .args(["--log-format", "json"])
        .args(args);
    let listen = format!("127.0.0.1:{port}");
    if health {
        let flag = if binary == "herald-api" {
            "--listen"
        } else {
            "--health-listen"
        };
        command.args([flag, listen.as_str()]);
    }
    if binary == "herald-api" {
        command.args(["--auth-mode", "anonymous"]);
    }
    if binary == "herald-watcher" {
        command
            .env("KUBECONFIG", dir.join("kubeconfig"))
            .args(["--cluster-id", "cluster-a"]);
    }
    let process = ChildProcess::spawn(label, command, &dir.join(format!("{label}.log")))?;
    Ok(Spawned {
        process,
        metrics: health.then(|| format!("http://{listen}/metrics")),
    })
}

/// The gauge's value in /metrics, once it answers.
async fn gauge(spawned: &Spawned) -> anyhow::Result<String> {
    let url = spawned.metrics.clone().context("no health listener")?;
    eventually(START, &format!("{url} to answer"), || {
        let url = url.clone();
        async move {
            let Ok(response) = reqwest::get(&url).await else {
                return Ok(None);
            };
            let text = response.text().await.unwrap_or_default();
            Ok(text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{UNAUTHENTICATED_METRIC} ")))
                .map(str::to_owned))
        }
    })
    .await
}

fn warned(spawned: &Spawned) -> bool {
    spawned.process.log_contents().lines().any(|line| {
        serde_json::from_str::<Value>(line).is_ok_and(|v| {
            v["level"] == "WARN"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(OPEN_STREAM_WARNING))
        })
    })
}

async fn loud_steps() -> anyhow::Result<()> {
    let dir = TestDir::new("nats-open")?;
    // The watcher needs a kubeconfig; nothing listens there, it never gets that far.
    std::fs::write(
        dir.join("kubeconfig"),
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    )?;
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let local = nats.url();
    let open = ["--nats-url", OFF_LOOPBACK];
    let token = ["--nats-url", OFF_LOOPBACK, "--nats-token", "t"];
    let loopback = ["--nats-url", local.as_str()];
    let mut checked = 0;
    for (binary, extra) in [
        ("herald-api", &[][..]),
        ("herald-projector", &["run"][..]),
        ("herald-watcher", &[][..]),
    ] {
        for (label, flags, expect_open) in [
            ("open", &open[..], true),
            ("token", &token[..], false),
            ("loopback", &loopback[..], false),
        ] {
            let args: Vec<&str> = extra.iter().chain(flags).copied().collect();
            let name = format!("{binary}-{label}");
            let spawned = spawn(dir.path(), binary, &name, &args, true)?;
            let value = gauge(&spawned).await?;
            // The warning, if any, comes just before this line.
            eventually(START, &format!("{name} to connect"), || async {
                Ok(spawned
                    .process
                    .log_contents()
                    .contains("connecting to NATS")
                    .then_some(()))
            })
            .await?;
            ensure!(
                value == if expect_open { "1" } else { "0" },
                "{name}: {UNAUTHENTICATED_METRIC} is {value}"
            );
            ensure!(
                warned(&spawned) == expect_open,
                "{name}: the log {} the warning:\n{}",
                if expect_open { "lacks" } else { "has" },
                spawned.process.log_contents()
            );
            checked += 1;
        }
    }
    // The importer warns before it does anything else.
    let importer = spawn(
        dir.path(),
        "herald-catalog",
        "importer-open",
        &[
            "sync",
            "--source-id",
            SOURCE,
            "--file",
            "/nonexistent",
            "--nats-url",
            OFF_LOOPBACK,
        ],
        false,
    )?;
    eventually(START, "the importer to warn", || async {
        Ok(warned(&importer).then_some(()))
    })
    .await?;
    eprintln!("NATS open: {} processes checked", checked + 1);
    Ok(())
}

// ------------------------------------------------------------------ a hostile leaf node

#[test]
fn a_leaf_node_reaches_only_what_its_clusters_user_allows() -> anyhow::Result<()> {
    run(leaf_steps)
}

async fn leaf_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = TestDir::new("nats-roles-leaf")?;
    let keys = RoleKeys::new(dir.path(), &[LEAF_WATCHER])?;
    let leaf_port = free_port();
    // The hub as in hub-cluster.conf: JetStream domain `hub`, a leafnodes port.
    let hub_config = format!(
        "{}\njetstream {{ domain: hub }}\nleafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n",
        render_permissions(&keys)?
    );
    let leaf_config = render_leaf(&keys, leaf_port)?;
    let (kube, hub) = tokio::join!(
        within(START, "kube-apiserver", KubeApi::start()),
        within(START, "hub", NatsServer::start_with_config(&hub_config)),
    );
    let (kube, hub) = (kube??, hub??);
    let leaf = within(START, "leaf", NatsServer::start_with_config(&leaf_config)).await??;
    let key = |role| ["--nats-nkey".to_owned(), keys.seed_file(role)];
    let projector = Herald::projector(&hub.url())
        .dir(dir.path())
        .args(key(PROJECTOR))
        .start()
        .await?;
    let api = Herald::api(&hub.url())
        .dir(dir.path())
        .args(key(API))
        .start()
        .await?;
    // The watcher behind the leaf, with the leaf's local user.
    let watcher = Herald::watcher(&kube, "cluster-a", &leaf.url())
        .dir(dir.path())
        .args(key(LEAF_WATCHER))
        .start()
        .await?;
    create_running(&kube, "team", "time").await?;
    wait_served(&api, "com.toolhive.k8s.team/time", true).await?;

    // A rogue client on the leaf, without limits there: the link carries only what
    // cluster-a's user on the hub may publish, and brings back only its own inboxes.
    let rogue = async_nats::ConnectOptions::with_user_and_password("rogue".into(), "rogue".into());
    let rogue = Probe::connect_with(&leaf.url(), rogue, "rogue", "_INBOX.rogue").await?;
    let mut overheard = rogue.client.subscribe("_INBOX.>").await?;
    let admin = hub.jetstream().await;
    let before = subjects(&admin, STREAM).await?;
    for subject in [
        "herald.events.cluster-b.default",
        "herald.events._catalog.official.default",
    ] {
        let sent = async {
            rogue.js.publish(subject, "{}".into()).await?.await?;
            anyhow::Ok(())
        };
        let acked = within(REFUSAL, "a publish ack", sent).await;
        ensure!(
            !matches!(acked, Ok(Ok(()))),
            "the hub's stream acknowledged {subject} from the leaf"
        );
    }
    for request in [
        "$JS.API.STREAM.DELETE.HERALD_EVENTS",
        "$JS.API.STREAM.NAMES",
    ] {
        let answer = within(SHORT * 2, request, rogue.client.request(request, "".into())).await;
        ensure!(
            !matches!(answer, Ok(Ok(_))),
            "the hub answered {request} from the leaf: {answer:?}"
        );
    }
    // Meanwhile the hub is busy: the API and the projector get replies on their inboxes.
    create_running(&kube, "team", "clock").await?;
    wait_served(&api, "com.toolhive.k8s.team/clock", true).await?;
    let projector_status = projector_command(&hub.url(), &keys, PROJECTOR, &["status"]).await?;
    ensure!(projector_status.contains(STREAM), "{projector_status}");
    let mut heard = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(SHORT, overheard.next()).await {
        heard.push(message.subject.to_string());
    }
    let others: Vec<&String> = heard
        .iter()
        .filter(|s| {
            !s.starts_with("_INBOX.herald-watcher.cluster-a.") && !s.starts_with("_INBOX.rogue.")
        })
        .collect();
    ensure!(
        others.is_empty(),
        "the leaf overheard other clients' replies: {others:?}"
    );
    let after = subjects(&admin, STREAM).await?;
    let smuggled: Vec<&String> = after
        .iter()
        .filter(|s| !s.starts_with("herald.events.cluster-a."))
        .collect();
    ensure!(
        smuggled.is_empty(),
        "events from the leaf beyond cluster-a: {smuggled:?}"
    );
    ensure!(
        after.len() > before.len(),
        "cluster-a's watcher published nothing"
    );
    admin
        .get_stream(STREAM)
        .await
        .context("the stream is gone")?;
    eprintln!(
        "NATS roles leaf: overheard {} replies (all cluster-a's), duration={:.1}s",
        heard.len(),
        started.elapsed().as_secs_f64()
    );
    drop((watcher, api, projector));
    Ok(())
}

//! herald-watcher against a real Kubernetes API server and a real NATS server: the
//! events on the stream for each lifecycle step of opted-in ToolHive objects.
//!
//! Each test starts the real binary and reads the stream with an ordered consumer, so it
//! asserts the exact events, in order. Several steps share one watcher where that keeps
//! the suite fast.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use herald_core::WithdrawReason;
use herald_core::annotations as ann;
use herald_core::event::{Event, EventData, EventType};
use herald_core::names::STREAM;
use herald_core::object::{Kind, ObjectRef, TOOLHIVE_GROUP};
use herald_core::record::{DeploymentRecord, Phase, RemoteTransport};
use herald_integration_tests::herald::{Herald, HeraldProcess};
use herald_integration_tests::large_stack_test;
use herald_integration_tests::objects::{
    self, create, in_registry, merge, opted_in, set_status, with,
};
use herald_integration_tests::stack::Stack;
use herald_integration_tests::timeout::{eventually, within};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::{Value, json};

const START: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(15);
/// Publishing resumes within the retry backoff cap after NATS returns.
const CATCH_UP: Duration = Duration::from_secs(45);
const CLUSTER: &str = "test-cluster";

// ---------------------------------------------------------------------------------------
// Servers and the watcher process

/// NATS and one API server; each test starts its own watcher.
async fn servers() -> anyhow::Result<Stack> {
    Stack::builder("watcher")
        .clusters(&[CLUSTER])
        .servers_only()
        .build()
        .await
}

/// `kind` objects at `version` in one namespace (the API of those objects by `Deref`).
struct Objects {
    api: Api<DynamicObject>,
    kind: Kind,
    version: &'static str,
    namespace: &'static str,
}

impl std::ops::Deref for Objects {
    type Target = Api<DynamicObject>;

    fn deref(&self) -> &Self::Target {
        &self.api
    }
}

impl Objects {
    fn new(env: &Stack, kind: Kind, version: &'static str, namespace: &'static str) -> Self {
        Self {
            api: objects::api_at(env.kube().client(), kind, version, namespace),
            kind,
            version,
            namespace,
        }
    }

    /// Creates `body` and sets `status`; returns the object after the status change.
    async fn create_with(&self, body: Value, status: Value) -> anyhow::Result<DynamicObject> {
        let name = body["metadata"]["name"]
            .as_str()
            .context("the body names the object")?
            .to_owned();
        create(&self.api, self.kind, self.version, body).await?;
        set_status(&self.api, &name, status).await
    }

    fn object_ref(&self, name: &str) -> ObjectRef {
        object_ref(self.kind, self.namespace, name)
    }
}

/// Starts `herald-watcher` (logging to `log`) and waits until it reports ready.
async fn start_watcher(env: &Stack, log: &str, extra: &[&str]) -> anyhow::Result<HeraldProcess> {
    Herald::watcher(env.kube(), CLUSTER, &env.nats.url())
        .dir(env.dir.path())
        .log_name(log)
        .env("RUST_LOG", "info,herald_watcher=debug")
        // Heartbeats are left out of what tests read; keep them rare.
        .default_flag("--heartbeat-interval", "1h")
        .args(extra)
        .ready_within(START)
        .start()
        .await
}

/// SIGTERM: the watcher exits 0 within 3 s.
fn sigterm_exits_promptly(watcher: &mut HeraldProcess) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    watcher
        .process_mut()
        .signal(nix::sys::signal::Signal::SIGTERM);
    let status = watcher.process_mut().wait_exit(Duration::from_secs(5))?;
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reading the stream

/// An ordered consumer on this cluster's events, heartbeats left out.
struct Reader {
    messages: consumer::pull::Ordered,
}

impl Reader {
    async fn open(js: &jetstream::Context) -> anyhow::Result<Reader> {
        let stream = eventually(STEP, "the stream exists", || async {
            Ok(js.get_stream(STREAM).await.ok())
        })
        .await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("herald.events.{CLUSTER}.>"),
                ..Default::default()
            })
            .await?;
        Ok(Reader {
            messages: consumer.messages().await?,
        })
    }

    async fn next(&mut self) -> anyhow::Result<Event> {
        loop {
            let (_, event) = self.next_with_sequence().await?;
            if event.event_type() != EventType::ClusterHeartbeat {
                return Ok(event);
            }
        }
    }

    /// The next event, heartbeats included, with its stream sequence.
    async fn next_with_sequence(&mut self) -> anyhow::Result<(u64, Event)> {
        let message = within(STEP, "the next event", self.messages.next())
            .await?
            .context("the consumer ended")??;
        let sequence = message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        let event = Event::decode_on(message.subject.as_str(), &message.payload)?;
        Ok((sequence, event))
    }

    /// Every event up to and including stream sequence `last`, heartbeats left out.
    async fn up_to(&mut self, last: u64) -> anyhow::Result<Vec<Event>> {
        let mut events = Vec::new();
        loop {
            let (sequence, event) = self.next_with_sequence().await?;
            if event.event_type() != EventType::ClusterHeartbeat {
                events.push(event);
            }
            if sequence >= last {
                return Ok(events);
            }
        }
    }

    /// The resync brackets of all three kinds after a (re)start: per kind the
    /// started and completed epochs and the objects applied in between.
    async fn startup(&mut self) -> anyhow::Result<BTreeMap<Kind, Bracket>> {
        self.brackets(&Kind::ALL).await
    }

    /// The resync brackets of `kinds`, until each one completed.
    async fn brackets(&mut self, kinds: &[Kind]) -> anyhow::Result<BTreeMap<Kind, Bracket>> {
        let mut brackets: BTreeMap<Kind, Bracket> = BTreeMap::new();
        while brackets.values().filter(|b| b.completed.is_some()).count() < kinds.len() {
            let event = self.next().await?;
            match event.data {
                EventData::ResyncStarted(r) => {
                    assert!(kinds.contains(&r.kind), "a resync of {}", r.kind);
                    let previous = brackets.insert(r.kind, Bracket::new(r.epoch));
                    assert!(previous.is_none(), "two resync.started for {}", r.kind);
                }
                EventData::ResyncCompleted(r) => {
                    let b = brackets
                        .get_mut(&r.kind)
                        .context("completed before started")?;
                    assert_eq!(r.epoch, b.epoch, "resync.completed names its epoch");
                    assert_eq!(r.advertised, Some(b.applied.len() as u64));
                    b.completed = Some(r.epoch);
                }
                EventData::Applied(record) => {
                    let b = brackets
                        .get_mut(&record.object.kind())
                        .context("applied outside a bracket at startup")?;
                    assert!(b.completed.is_none(), "applied after resync.completed");
                    assert_eq!(record.epoch, b.epoch, "re-applied with the list's epoch");
                    b.applied.push(*record);
                }
                other => bail!("unexpected event at startup: {other:?}"),
            }
        }
        Ok(brackets)
    }

    async fn applied(&mut self) -> anyhow::Result<DeploymentRecord> {
        match self.next().await?.data {
            EventData::Applied(record) => Ok(*record),
            other => bail!("expected deployment.applied, got {other:?}"),
        }
    }

    /// The next event applies `object` of `objects`, at its resource version.
    async fn applied_as(
        &mut self,
        objects: &Objects,
        object: &DynamicObject,
    ) -> anyhow::Result<DeploymentRecord> {
        let record = self.applied().await?;
        let name = object.metadata.name.as_deref().unwrap_or_default();
        assert_eq!(record.object, objects.object_ref(name));
        assert_eq!(record.resource_version, rv(object));
        Ok(record)
    }

    async fn withdrawn(&mut self) -> anyhow::Result<herald_core::record::Withdrawal> {
        match self.next().await?.data {
            EventData::Withdrawn(w) => Ok(w),
            other => bail!("expected deployment.withdrawn, got {other:?}"),
        }
    }
}

#[derive(Debug)]
struct Bracket {
    epoch: u64,
    applied: Vec<DeploymentRecord>,
    completed: Option<u64>,
}

impl Bracket {
    fn new(epoch: u64) -> Self {
        Bracket {
            epoch,
            applied: Vec::new(),
            completed: None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Objects

fn rv(object: &DynamicObject) -> String {
    object.metadata.resource_version.clone().unwrap_or_default()
}

fn object_ref(kind: Kind, ns: &str, name: &str) -> ObjectRef {
    ObjectRef::new(kind, ns, name).expect("valid test object names")
}

// ---------------------------------------------------------------------------------------
// Tests

large_stack_test!(lifecycle_of_opted_in_servers => lifecycle_of_opted_in_servers_steps);

/// Creation in both CRD eras and each kind, readiness later, opt-out, a move between
/// registries, deletion, rejections (new and of an advertised object), metrics and
/// SIGTERM, all with one watcher.
async fn lifecycle_of_opted_in_servers_steps() -> anyhow::Result<()> {
    let env = servers().await?;
    let args = ["--registry-namespaces", "partners=team-a"];
    let mut watcher = start_watcher(&env, "watcher.log", &args).await?;
    let mut reader = Reader::open(&env.nats.jetstream().await).await?;
    let brackets = reader.startup().await?;
    assert!(brackets.values().all(|b| b.applied.is_empty()));

    // v1alpha1 MCPServer: not advertised while Pending; applied once Running.
    let alpha = Objects::new(&env, Kind::MCPServer, "v1alpha1", "team-a");
    let body = opted_in("alpha", "Fetches web pages");
    let body = with(body, &["spec", "transport"], json!("sse"));
    let body = with(body, &["spec", "port"], json!(9090));
    let body = with(body, &["spec", "image"], json!("ghcr.io/x/fetch:2.1.0"));
    let running = alpha.create_with(body, json!({"phase": "Running"})).await?;
    let record = reader.applied().await?;
    assert_eq!(record.object, alpha.object_ref("alpha"));
    assert_eq!(
        record.resource_version,
        rv(&running),
        "applied only once Running"
    );
    assert_eq!(record.registry.as_str(), "default");
    assert_eq!(record.cluster.as_str(), CLUSTER);
    assert_eq!(record.server_name.as_str(), "com.toolhive.k8s.team-a/alpha");
    assert_eq!(record.version, "2.1.0");
    assert_eq!(record.description, "Fetches web pages");
    assert_eq!(record.remote.transport, RemoteTransport::Sse);
    assert_eq!(
        record.remote.url,
        "http://mcp-alpha-proxy.team-a.svc.cluster.local:9090/sse#alpha"
    );
    assert_eq!(record.phase, Phase::Running);
    assert_eq!(record.epoch, brackets[&Kind::MCPServer].epoch);
    assert_eq!(record.uid, running.metadata.uid.clone().unwrap_or_default());

    // v1beta1 MCPServer with auth and a status URL, Ready right away.
    let beta = Objects::new(&env, Kind::MCPServer, "v1beta1", "team-b");
    let body = opted_in("beta", "Searches the web");
    let body = with(body, &["spec", "proxyPort"], json!(8081));
    let body = with(body, &["spec", "oidcConfigRef"], json!({"name": "idp"}));
    let url = "http://mcp-beta-proxy.team-b.svc.cluster.local:8081/mcp";
    let ready = beta
        .create_with(body, json!({"phase": "Ready", "url": url}))
        .await?;
    let record = reader.applied_as(&beta, &ready).await?;
    assert_eq!(record.remote.url, url);
    assert_eq!(record.remote.transport, RemoteTransport::StreamableHttp);
    assert_eq!(record.remote.headers.len(), 1);
    assert!(record.remote.headers[0].is_secret && record.remote.headers[0].is_required);
    assert_eq!(record.version, "1.0.0");

    // MCPRemoteProxy into another registry, with the URL annotation.
    let proxies = Objects::new(&env, Kind::MCPRemoteProxy, "v1alpha1", "team-a");
    let body = opted_in("remote", "A remote proxy");
    let body = in_registry(body, "partners");
    let body = with(
        body,
        &["metadata", "annotations", ann::REGISTRY_URL],
        json!("https://mcp.example.com/mcp"),
    );
    let ready = proxies.create_with(body, json!({"phase": "Ready"})).await?;
    let record = reader.applied_as(&proxies, &ready).await?;
    assert_eq!(record.registry.as_str(), "partners");
    assert_eq!(record.remote.url, "https://mcp.example.com/mcp");

    // VirtualMCPServer.
    let virtuals = Objects::new(&env, Kind::VirtualMCPServer, "v1alpha1", "team-a");
    let body = opted_in("virtual", "Aggregates tools");
    let ready = virtuals
        .create_with(body, json!({"phase": "Ready"}))
        .await?;
    let record = reader.applied_as(&virtuals, &ready).await?;
    assert_eq!(
        record.remote.url,
        "http://vmcp-virtual.team-a.svc.cluster.local:8080/mcp"
    );

    // Annotation removed → withdrawn, opted out.
    let patch = json!({"metadata": {"annotations": {ann::REGISTRY_EXPORT: null}}});
    let changed = merge(&alpha, "alpha", patch).await?;
    let w = reader.withdrawn().await?;
    assert_eq!(w.object, object_ref(Kind::MCPServer, "team-a", "alpha"));
    assert_eq!(w.reason, WithdrawReason::OptedOut);
    assert_eq!(w.registry.as_str(), "default");
    assert_eq!(w.resource_version, rv(&changed));

    // Registry label changed → withdrawn from the old registry, applied to the new one.
    let patch = json!({"metadata": {"labels": {ann::REGISTRY_NAME: "internal"}}});
    let moved = merge(&beta, "beta", patch).await?;
    let w = reader.withdrawn().await?;
    assert_eq!(w.object, object_ref(Kind::MCPServer, "team-b", "beta"));
    assert_eq!(
        (w.reason, w.registry.as_str()),
        (WithdrawReason::Moved, "default")
    );
    let record = reader.applied().await?;
    assert_eq!(record.registry.as_str(), "internal");
    assert_eq!(record.resource_version, rv(&moved));

    // Not ready any more → withdrawn.
    set_status(&virtuals, "virtual", json!({"phase": "Failed"})).await?;
    let w = reader.withdrawn().await?;
    assert_eq!(
        w.object,
        object_ref(Kind::VirtualMCPServer, "team-a", "virtual")
    );
    assert_eq!(w.reason, WithdrawReason::NotReady);

    // Deleted → withdrawn.
    proxies.delete("remote", &DeleteParams::default()).await?;
    let w = reader.withdrawn().await?;
    assert_eq!(
        w.object,
        object_ref(Kind::MCPRemoteProxy, "team-a", "remote")
    );
    assert_eq!(
        (w.reason, w.registry.as_str()),
        (WithdrawReason::Deleted, "partners")
    );

    // Valid → invalid (description too long) → withdrawn as rejected, with the reason.
    let long = "x".repeat(150);
    let patch = json!({"metadata": {"annotations": {ann::REGISTRY_DESCRIPTION: long}}});
    merge(&beta, "beta", patch).await?;
    let w = reader.withdrawn().await?;
    assert_eq!(w.object, object_ref(Kind::MCPServer, "team-b", "beta"));
    assert_eq!(
        (w.reason, w.registry.as_str()),
        (WithdrawReason::Rejected, "internal")
    );
    let message = w.message.unwrap_or_default();
    assert!(
        message.contains("description is 150 characters"),
        "{message}"
    );

    // Invalid from the start: no applied. A valid object created after them is the next
    // event, and one watch stream keeps the order of a kind's objects.
    let ready = json!({"phase": "Ready"});
    let body = opted_in("bad-url", "Bad URL");
    let body = with(
        body,
        &["metadata", "annotations", ann::REGISTRY_URL],
        json!("ftp://example.com/x"),
    );
    alpha.create_with(body, ready.clone()).await?;
    let mut body = opted_in("no-description", "");
    body["metadata"]["annotations"]
        .as_object_mut()
        .context("annotations")?
        .remove(ann::REGISTRY_DESCRIPTION);
    alpha.create_with(body, ready.clone()).await?;
    let body = opted_in("bad-registry", "Bad registry");
    let body = in_registry(body, "Not_A_Label");
    alpha.create_with(body, ready.clone()).await?;
    // Only team-a may publish into "partners" (--registry-namespaces).
    let team_b = Objects::new(&env, Kind::MCPServer, "v1alpha1", "team-b");
    let body = opted_in("not-allowed", "Wrong namespace");
    let body = in_registry(body, "partners");
    team_b.create_with(body, ready.clone()).await?;
    let sentinel = alpha
        .create_with(opted_in("sentinel", "Valid"), ready.clone())
        .await?;
    reader.applied_as(&alpha, &sentinel).await?;

    for reason in [
        "invalid_url",
        "missing_description",
        "invalid_registry",
        "registry_not_allowed",
        "description_too_long",
    ] {
        let sample = format!("herald_watcher_rejections_total{{reason=\"{reason}\"}}");
        assert_eq!(
            watcher.metric(&sample).await?,
            1.0,
            "{sample}, reported once"
        );
    }
    let log = watcher.log_contents();
    for needle in [
        r#""name":"bad-url""#,
        r#""reason":"invalid_url""#,
        r#"scheme \"ftp\" is not http or https"#,
        r#""name":"no-description""#,
        r#""reason":"missing_description""#,
        r#""name":"bad-registry""#,
        r#""reason":"invalid_registry""#,
        "namespace team-b is not allowed to publish into registry partners",
    ] {
        assert!(log.contains(needle), "log mentions {needle}:\n{log}");
    }
    // Applied: alpha, beta, remote, virtual, beta (moved), sentinel.
    let applied = "herald_watcher_events_published_total{type=\"deployment.applied\"}";
    assert_eq!(watcher.metric(applied).await?, 6.0);
    let withdrawn = "herald_watcher_events_published_total{type=\"deployment.withdrawn\"}";
    assert_eq!(watcher.metric(withdrawn).await?, 5.0);
    assert_eq!(watcher.metric("herald_watcher_pending_events").await?, 0.0);
    let resync = "herald_watcher_last_resync_timestamp_seconds{kind=\"MCPServer\"}";
    assert!(watcher.metric(resync).await? > 1.7e9);

    // SIGTERM: exits 0, promptly.
    sigterm_exits_promptly(&mut watcher)?;
    Ok(())
}

large_stack_test!(restart_resyncs_what_was_deleted_meanwhile => restart_resyncs_what_was_deleted_meanwhile_steps);

/// Objects deleted while the watcher was stopped: the restart's resync bracket re-applies
/// what still exists with a newer epoch, so a consumer can sweep the rest.
async fn restart_resyncs_what_was_deleted_meanwhile_steps() -> anyhow::Result<()> {
    let env = servers().await?;
    let api = Objects::new(&env, Kind::MCPServer, "v1beta1", "ns");
    for name in ["kept", "gone"] {
        let ready = json!({"phase": "Ready"});
        api.create_with(opted_in(name, "A server"), ready).await?;
    }
    let mut watcher = start_watcher(&env, "first.log", &[]).await?;
    let mut reader = Reader::open(&env.nats.jetstream().await).await?;
    let first = reader.startup().await?;
    let names: Vec<&str> = first[&Kind::MCPServer]
        .applied
        .iter()
        .map(|r| r.object.name())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(
        names.contains(&"kept") && names.contains(&"gone"),
        "{names:?}"
    );
    let stale_epoch = first[&Kind::MCPServer].applied[0].epoch;
    assert!(watcher.terminate().success());

    api.delete("gone", &DeleteParams::default()).await?;
    let _watcher = start_watcher(&env, "second.log", &[]).await?;
    let second = reader.startup().await?;
    let bracket = &second[&Kind::MCPServer];
    assert!(
        bracket.epoch > stale_epoch,
        "{} > {stale_epoch}",
        bracket.epoch
    );
    assert_eq!(bracket.completed, Some(bracket.epoch));
    let names: Vec<&str> = bracket.applied.iter().map(|r| r.object.name()).collect();
    assert_eq!(names, vec!["kept"]);
    Ok(())
}

large_stack_test!(nats_outage_loses_nothing => nats_outage_loses_nothing_steps);

/// NATS stops while objects change: the watcher reports not-ready, keeps the latest state
/// per object, and after NATS returns the last event of every object matches the API
/// server, with each object's events in order.
async fn nats_outage_loses_nothing_steps() -> anyhow::Result<()> {
    let mut env = servers().await?;
    let api = Objects::new(&env, Kind::MCPServer, "v1beta1", "ns");
    for name in ["moves", "deleted", "opts-out", "flaps"] {
        let ready = json!({"phase": "Ready"});
        api.create_with(opted_in(name, "A server"), ready).await?;
    }
    let args = ["--shutdown-timeout", "1s"];
    let mut watcher = start_watcher(&env, "watcher.log", &args).await?;
    let mut reader = Reader::open(&env.nats.jetstream().await).await?;
    assert_eq!(reader.startup().await?[&Kind::MCPServer].applied.len(), 4);
    drop(reader);

    env.nats.stop();
    merge(
        &api,
        "moves",
        json!({"metadata": {"labels": {ann::REGISTRY_NAME: "other"}}}),
    )
    .await?;
    api.delete("deleted", &DeleteParams::default()).await?;
    merge(
        &api,
        "opts-out",
        json!({"metadata": {"annotations": {ann::REGISTRY_EXPORT: "false"}}}),
    )
    .await?;
    let ready = json!({"phase": "Ready"});
    api.create_with(opted_in("new", "A new server"), ready)
        .await?;
    for i in 0..20 {
        let patch = json!({"metadata": {"annotations": {ann::REGISTRY_DESCRIPTION: format!("Version {i}")}}});
        merge(&api, "flaps", patch).await?;
    }
    watcher.wait_not_ready().await?;
    // One event per (object, registry) waits, however often "flaps" changed: six keys,
    // one of them possibly in the publisher's hands.
    let pending = eventually(STEP, "the outbox holds the changes", || async {
        let n = watcher.metric("herald_watcher_pending_events").await?;
        Ok((n >= 5.0).then_some(n))
    })
    .await?;
    assert!(pending <= 6.0, "{pending} pending events");

    within(START, "NATS restart", env.nats.restart()).await??;
    watcher.wait_ready().await?;
    eventually(CATCH_UP, "an empty outbox", || async {
        Ok((watcher.metric("herald_watcher_pending_events").await? == 0.0).then_some(()))
    })
    .await?;

    // Everything on the stream, from the start: the last event per (object, registry).
    let js = env.nats.jetstream().await;
    let last_sequence = js
        .get_stream(STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let mut reader = Reader::open(&js).await?;
    let mut last: BTreeMap<(String, String), Event> = BTreeMap::new();
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in reader.up_to(last_sequence).await? {
        if let (Some(object), Some(registry)) = (event.data.object(), event.data.registry()) {
            let rv = match &event.data {
                EventData::Applied(r) => r.resource_version.parse::<u64>()?,
                EventData::Withdrawn(w) => w.resource_version.parse::<u64>()?,
                _ => 0,
            };
            versions
                .entry(object.name().to_owned())
                .or_default()
                .push(rv);
            last.insert((object.name().to_owned(), registry.to_string()), event);
        }
    }
    for (name, rvs) in &versions {
        assert!(
            rvs.windows(2).all(|w| w[0] <= w[1]),
            "{name} events in order: {rvs:?}"
        );
    }
    let applied_rv = |key: (&str, &str)| -> anyhow::Result<String> {
        match last
            .get(&(key.0.to_owned(), key.1.to_owned()))
            .map(|e| &e.data)
        {
            Some(EventData::Applied(r)) => Ok(r.resource_version.clone()),
            other => bail!("{key:?}: expected applied last, got {other:?}"),
        }
    };
    let withdrawn = |key: (&str, &str)| -> anyhow::Result<WithdrawReason> {
        match last
            .get(&(key.0.to_owned(), key.1.to_owned()))
            .map(|e| &e.data)
        {
            Some(EventData::Withdrawn(w)) => Ok(w.reason),
            other => bail!("{key:?}: expected withdrawn last, got {other:?}"),
        }
    };
    let current = |name: &str| {
        let api = api.clone();
        let name = name.to_owned();
        async move { anyhow::Ok(rv(&api.get(&name).await?)) }
    };
    assert_eq!(withdrawn(("moves", "default"))?, WithdrawReason::Moved);
    assert_eq!(applied_rv(("moves", "other"))?, current("moves").await?);
    assert_eq!(withdrawn(("deleted", "default"))?, WithdrawReason::Deleted);
    assert_eq!(
        withdrawn(("opts-out", "default"))?,
        WithdrawReason::OptedOut
    );
    assert_eq!(applied_rv(("new", "default"))?, current("new").await?);
    assert_eq!(applied_rv(("flaps", "default"))?, current("flaps").await?);
    match &last[&("flaps".to_owned(), "default".to_owned())].data {
        EventData::Applied(r) => assert_eq!(r.description, "Version 19"),
        _ => unreachable!("checked above"),
    }

    // SIGTERM while NATS is down: the flush gives up after --shutdown-timeout, exit 0.
    env.nats.stop();
    merge(
        &api,
        "new",
        json!({"metadata": {"annotations": {ann::REGISTRY_EXPORT: "false"}}}),
    )
    .await?;
    watcher.wait_not_ready().await?;
    sigterm_exits_promptly(&mut watcher)?;
    assert!(watcher.log_contents().contains("shutdown timeout reached"));
    Ok(())
}

/// A bad flag or cluster id: non-zero exit and a one-line reason.
#[tokio::test]
async fn bad_cluster_id_exits_with_one_line() -> anyhow::Result<()> {
    let output = Herald::bare("herald-watcher")
        .args(["--cluster-id", "Not_Valid"])
        .env_remove("HERALD_CLUSTER_ID")
        .output(STEP)
        .await?;
    assert!(!output.status.success());
    let stderr = &output.stderr;
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cluster-id"), "{stderr}");
    Ok(())
}

large_stack_test!(late_kind_and_namespace_list => late_kind_and_namespace_list_steps);

/// A kind the cluster does not serve at start is picked up once its CRD is installed,
/// without a restart and within 5 s (the CRD watch, not the re-check, which is an hour
/// here); only the configured namespaces are watched, in one resync bracket per kind;
/// heartbeats flow.
async fn late_kind_and_namespace_list_steps() -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    let env = servers().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(env.kube().client());
    let crd_name = format!("{}.{TOOLHIVE_GROUP}", Kind::VirtualMCPServer.plural());
    let mut crd = crds.get(&crd_name).await?;
    crds.delete(&crd_name, &DeleteParams::default()).await?;
    eventually(STEP, "the CRD is gone", || async {
        Ok(crds.get_opt(&crd_name).await?.is_none().then_some(()))
    })
    .await?;

    for ns in ["team-a", "team-b", "team-c"] {
        let api = Objects::new(&env, Kind::MCPServer, "v1beta1", ns);
        let ready = json!({"phase": "Ready"});
        api.create_with(opted_in("srv", "A server"), ready).await?;
    }
    let args = [
        "--namespaces",
        "team-a,team-b",
        "--kind-recheck-interval",
        "1h",
        "--heartbeat-interval",
        "200ms",
    ];
    let watcher = start_watcher(&env, "watcher.log", &args).await?;
    let mut reader = Reader::open(&env.nats.jetstream().await).await?;
    let present = [Kind::MCPServer, Kind::MCPRemoteProxy, Kind::MCPServerEntry];
    let brackets = reader.brackets(&present).await?;
    let mut listed: Vec<&str> = brackets[&Kind::MCPServer]
        .applied
        .iter()
        .map(|r| r.object.namespace())
        .collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        ["team-a", "team-b"],
        "one bracket over both namespaces"
    );
    assert!(
        watcher.log_contents().contains("does not serve this kind"),
        "the missing kind is logged"
    );

    // Install the kind: its watch starts within 5 s.
    crd.metadata = kube::api::ObjectMeta {
        name: Some(crd_name.clone()),
        ..Default::default()
    };
    crd.status = None;
    let installed = std::time::Instant::now();
    crds.create(&PostParams::default(), &crd).await?;
    let brackets = within(
        Duration::from_secs(5),
        "the new kind's first list",
        reader.brackets(&[Kind::VirtualMCPServer]),
    )
    .await??;
    let picked_up = installed.elapsed();
    assert!(brackets[&Kind::VirtualMCPServer].applied.is_empty());
    eprintln!("the CRD installed after the watcher was watched within {picked_up:?}");
    let virtuals = Objects::new(&env, Kind::VirtualMCPServer, "v1alpha1", "team-b");
    let ready = json!({"phase": "Ready"});
    let ready = virtuals
        .create_with(opted_in("late", "Late"), ready)
        .await?;
    within(
        Duration::from_secs(5),
        "the new kind's object",
        reader.applied_as(&virtuals, &ready),
    )
    .await??;

    let heartbeats = "herald_watcher_events_published_total{type=\"cluster.heartbeat\"}";
    eventually(STEP, "heartbeats", || async {
        Ok((watcher.metric(heartbeats).await? >= 2.0).then_some(()))
    })
    .await?;
    Ok(())
}

large_stack_test!(rejections_are_events_on_their_objects => rejections_are_events_on_their_objects_steps);

/// Against an API server that serves `events.k8s.io/v1`: every rejection is a Warning
/// Event on the rejected object with its reason, once per reason, so a tenant sees why
/// (a name it does not own included), and the strict flags (`--require-url-annotation`,
/// `--deny-unlisted-registries`) reject what they say.
async fn rejections_are_events_on_their_objects_steps() -> anyhow::Result<()> {
    let env = servers().await?;
    env.kube().serve_events().await?;
    let args = [
        "--require-url-annotation",
        "--deny-unlisted-registries",
        "--registry-namespaces",
        "partners=team-a",
    ];
    let watcher = start_watcher(&env, "watcher.log", &args).await?;
    let mut reader = Reader::open(&env.nats.jetstream().await).await?;
    reader.startup().await?;

    let team_a = Objects::new(&env, Kind::MCPServer, "v1beta1", "team-a");
    let team_b = Objects::new(&env, Kind::MCPServer, "v1beta1", "team-b");
    let ready = json!({"phase": "Ready"});
    let with_url = |name: &str, registry: &str| {
        let body = in_registry(opted_in(name, "Strict"), registry);
        let url = format!("https://mcp.example.com/{name}/mcp");
        with(
            body,
            &["metadata", "annotations", ann::REGISTRY_URL],
            json!(url),
        )
    };
    // Rejected: no URL annotation; a registry no rule lists; a namespace the rule of
    // "partners" leaves out. Then a valid one, which must be the next event.
    let no_url = in_registry(opted_in("no-url", "No URL"), "partners");
    team_a.create_with(no_url, ready.clone()).await?;
    team_a
        .create_with(with_url("unlisted", "elsewhere"), ready.clone())
        .await?;
    team_b
        .create_with(with_url("outsider", "partners"), ready.clone())
        .await?;
    // A name that is team-b's default, claimed from team-a.
    let claim = with(
        with_url("claimant", "partners"),
        &["metadata", "annotations", ann::REGISTRY_SERVER_NAME],
        json!("com.toolhive.k8s.team-b/outsider"),
    );
    team_a.create_with(claim, ready.clone()).await?;
    let valid = team_a
        .create_with(with_url("valid", "partners"), ready.clone())
        .await?;
    reader.applied_as(&team_a, &valid).await?;

    let expected = [
        ("team-a", "no-url", "annotation"),
        ("team-a", "unlisted", "registry elsewhere"),
        ("team-b", "outsider", "registry partners"),
        ("team-a", "claimant", "com.toolhive.k8s.team-b/outsider"),
    ];
    for (namespace, name, words) in expected {
        let events = events_on(&env, namespace, name, 1).await?;
        let [event] = events.as_slice() else {
            bail!("{namespace}/{name}: expected one Event, got {events:#?}");
        };
        assert_eq!(event["type"], "Warning", "{event:#}");
        assert_eq!(event["reportingController"], "herald-watcher", "{event:#}");
        assert_eq!(event["regarding"]["kind"], "MCPServer", "{event:#}");
        assert_eq!(event["regarding"]["namespace"], namespace, "{event:#}");
        let note = event["note"].as_str().unwrap_or_default();
        assert!(note.contains(words), "{namespace}/{name}: {note}");
    }
    // Recorded after the Events of the objects created before it, had it had one.
    assert!(
        events_on(&env, "team-a", "valid", 0).await?.is_empty(),
        "no Event on an advertised object"
    );

    // A new reason is a new Event; the old one stays as it was.
    let patch = json!({"metadata": {"annotations": {ann::REGISTRY_DESCRIPTION: "x".repeat(150)}}});
    merge(&team_a, "no-url", patch).await?;
    let events = events_on(&env, "team-a", "no-url", 2).await?;
    let notes: Vec<&str> = events.iter().filter_map(|e| e["note"].as_str()).collect();
    assert!(
        notes.iter().any(|n| n.contains("150 characters")),
        "{notes:?}"
    );
    for (reason, count) in [
        ("url_required", 1.0),
        ("registry_not_allowed", 2.0),
        ("description_too_long", 1.0),
        ("name_not_owned", 1.0),
    ] {
        let sample = format!("herald_watcher_rejections_total{{reason=\"{reason}\"}}");
        assert_eq!(watcher.metric(&sample).await?, count, "{sample}");
    }
    Ok(())
}

/// The watcher's rejection Events on one object, once there are at least `least`: they
/// are recorded in the background after the rejection.
async fn events_on(
    env: &Stack,
    namespace: &str,
    name: &str,
    least: usize,
) -> anyhow::Result<Vec<Value>> {
    let gvk = kube::api::GroupVersionKind::gvk("events.k8s.io", "v1", "Event");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "events");
    let events: Api<DynamicObject> =
        Api::namespaced_with(env.kube().client(), namespace, &resource);
    let what = format!("{least} Events on {namespace}/{name}");
    eventually(STEP, &what, || async {
        let list = events.list(&Default::default()).await?;
        let mine: Vec<Value> = list
            .items
            .into_iter()
            .map(|e| e.data)
            .filter(|e| e["regarding"]["name"] == name && e["reason"] == "RegistryRejected")
            .collect();
        Ok((mine.len() >= least).then_some(mine))
    })
    .await
}

large_stack_test!(a_record_larger_than_nats_takes_is_rejected_not_retried => too_large_steps);

/// A NATS server that takes at most 16 KiB per message: a record over it is a rejection
/// with its reason (a withdrawal when it was advertised), and the next object is
/// published right after it, so the outbox never sticks on it.
async fn too_large_steps() -> anyhow::Result<()> {
    let env = Stack::builder("watcher-max-payload")
        .clusters(&[CLUSTER])
        .servers_only()
        .build_on(
            herald_integration_tests::nats::NatsServer::start_with_config("max_payload: 16384"),
        )
        .await?;
    let watcher = start_watcher(&env, "watcher.log", &[]).await?;
    let mut reader = Reader::open(&env.nats.jetstream().await).await?;
    reader.startup().await?;
    let team = Objects::new(&env, Kind::MCPServer, "v1beta1", "team");
    let ready = json!({"phase": "Ready"});
    let tools = |n: usize| {
        let names: Vec<String> = (0..n)
            .map(|i| format!("tool-{i:03}-{}", "x".repeat(100)))
            .collect();
        json!(serde_json::to_string(&names).unwrap_or_default())
    };

    // Too large from the start: nothing published for it; the next object is.
    let body = with(
        opted_in("huge", "Huge"),
        &["metadata", "annotations", ann::TOOLS],
        tools(200),
    );
    team.create_with(body, ready.clone()).await?;
    let small = team
        .create_with(opted_in("small", "Small"), ready.clone())
        .await?;
    reader.applied_as(&team, &small).await?;

    // Advertised, then grown over the limit: withdrawn as rejected, with the reason.
    let patch = json!({"metadata": {"annotations": {ann::TOOLS: tools(200)}}});
    merge(&team, "small", patch).await?;
    let w = reader.withdrawn().await?;
    assert_eq!(w.object, team.object_ref("small"));
    assert_eq!(w.reason, WithdrawReason::Rejected);
    let message = w.message.unwrap_or_default();
    assert!(message.contains("max_payload"), "{message}");
    let after = team
        .create_with(opted_in("after", "After"), ready.clone())
        .await?;
    reader.applied_as(&team, &after).await?;

    let sample = "herald_watcher_rejections_total{reason=\"too_large\"}";
    assert_eq!(watcher.metric(sample).await?, 2.0, "{sample}");
    assert!(watcher.log_contents().contains(r#""reason":"too_large""#));
    Ok(())
}

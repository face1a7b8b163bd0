//! herald-projector against a real nats-server: events built with herald-core are
//! published on HERALD_EVENTS and the buckets are read back. Most tests run the library
//! in-process; the kill, SIGTERM, `events` and `replay` tests run the real binary.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt as _;
use herald_core::cluster_state::ClusterState;
use herald_core::event::{Heartbeat, Resync};
use herald_core::names::{CLUSTERS_BUCKET, DeploymentKey, STREAM, bucket_name};
use herald_core::record::{Phase, Remote, RemoteTransport};
use herald_core::stored::{DeploymentState, StoredDeployment};
use herald_core::{
    ClusterId, DeploymentRecord, Event, EventData, Kind, ObjectRef, RegistryName, WithdrawReason,
};
use herald_integration_tests::events::{publish, withdrawal};
use herald_integration_tests::herald::{Herald, HeraldProcess, projector_ops};
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::timeout::{eventually, within};
use herald_projector::CancellationToken;
use herald_projector::apply::{self, KeyWritten};
use herald_projector::fold::{self, Effect};
use herald_projector::metrics::{Metrics, Registry};
use herald_projector::ops::replay::{ReplayOptions, replay};
use herald_projector::ops::starting_point::StartingPoint;
use herald_projector::run::{RunConfig, run};
use herald_projector::writes::{self, BucketSettings};
use herald_runtime::buckets;
use herald_runtime::health::Readiness;
use herald_runtime::stream::StreamArgs;
use serde_json::Value;

const START: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- events

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
}

fn cluster(s: &str) -> ClusterId {
    s.parse().unwrap()
}

fn registry(s: &str) -> RegistryName {
    s.parse().unwrap()
}

/// A realistic record of an MCPServer `name` in `ns`, as the watcher builds it.
fn record(
    c: &str,
    reg: &str,
    kind: Kind,
    ns: &str,
    name: &str,
    rv: u64,
    epoch: u64,
) -> DeploymentRecord {
    DeploymentRecord {
        v: 1,
        cluster: cluster(c),
        registry: registry(reg),
        object: ObjectRef::new(kind, ns, name).unwrap(),
        // Stable for the object, as Kubernetes keeps it.
        uid: format!("0b5f-uid-{c}-{ns}-{name}"),
        resource_version: rv.to_string(),
        generation: Some(1 + i64::try_from(rv % 3).unwrap()),
        created_at: Some(at(0)),
        observed_at: at(i64::try_from(rv).unwrap()),
        changed_at: None,
        epoch,
        server_name: format!("com.toolhive.k8s.{ns}/{name}").parse().unwrap(),
        version: format!("1.{}.0", rv % 4),
        description: format!("{name} MCP server in {ns}"),
        title: Some(name.to_owned()),
        icon: None,
        category: Some("search".to_owned()),
        tools: vec!["search".to_owned(), "fetch".to_owned()],
        remote: Remote {
            transport: RemoteTransport::StreamableHttp,
            url: format!(
                "http://{}.{ns}.svc.cluster.local:8080/mcp",
                kind.service_name(name).unwrap_or_else(|| name.to_owned())
            ),
            headers: Vec::new(),
            extra: Default::default(),
        },
        phase: Phase::Ready,
        image: Some(format!("ghcr.io/acme/{name}:1.{}.0", rv % 4)),
        transport: "streamable-http".to_owned(),
        group: None,
        tool_definitions: Vec::new(),
        authz_claims: None,
        package: None,
    }
}

fn applied(r: &DeploymentRecord) -> Event {
    Event::new(EventData::Applied(Box::new(r.clone())), r.observed_at)
}

fn withdrawn(r: &DeploymentRecord, rv: u64, reason: WithdrawReason) -> Event {
    let data = EventData::Withdrawn(withdrawal(r, &rv.to_string(), reason));
    Event::new(data, at(i64::try_from(rv).unwrap()))
}

fn resync(c: &str, kind: Kind, epoch: u64, completed: Option<u64>, time: i64) -> Event {
    let body = Resync {
        v: 1,
        cluster: cluster(c),
        kind,
        epoch,
        advertised: completed,
    };
    let data = match completed {
        Some(_) => EventData::ResyncCompleted(body),
        None => EventData::ResyncStarted(body),
    };
    Event::new(data, at(time))
}

fn heartbeat(c: &str, time: i64) -> Event {
    Event::new(
        EventData::Heartbeat(Heartbeat {
            v: 1,
            cluster: cluster(c),
            started_at: at(0),
            interval_seconds: 30,
            watcher_version: "0.1.0".to_owned(),
        }),
        at(time),
    )
}

async fn publish_raw(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: Vec<u8>,
) -> anyhow::Result<u64> {
    let ack = js
        .publish_with_headers(subject.to_owned(), headers, payload.into())
        .await?
        .await?;
    Ok(ack.sequence)
}

async fn publish_all(js: &jetstream::Context, events: &[Event]) -> anyhow::Result<u64> {
    let mut last = 0;
    for event in events {
        last = publish(js, event).await?;
    }
    Ok(last)
}

/// xorshift64*: a seeded, dependency-free source of test workloads.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// A random but watcher-like history: objects in two clusters and two registries are
/// applied, changed and withdrawn; each cluster re-lists now and then (started,
/// re-applies of what it still has, completed) and sends heartbeats.
fn random_history(seed: u64, n: usize) -> Vec<Event> {
    let mut rng = Rng(seed);
    let clusters = ["east", "west"];
    let registries = ["default", "team-a"];
    let mut epoch = [1u64, 1];
    // (cluster, registry, name) → alive
    let mut alive: BTreeMap<(usize, usize, u64), bool> = BTreeMap::new();
    let mut rv = 0u64;
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        rv += 1;
        let c = usize::try_from(rng.below(2)).unwrap();
        let roll = rng.below(100);
        if roll < 2 {
            // A re-list: confirm a random subset of what is alive; the rest is swept.
            epoch[c] += 1;
            events.push(resync(
                clusters[c],
                Kind::MCPServer,
                epoch[c],
                None,
                rv as i64,
            ));
            let mut confirmed = 0;
            for ((oc, reg, name), live) in alive.iter_mut() {
                if *oc != c || !*live {
                    continue;
                }
                rv += 1;
                if rng.below(4) == 0 {
                    *live = false; // deleted while unobserved
                    continue;
                }
                let r = record(
                    clusters[c],
                    registries[*reg],
                    Kind::MCPServer,
                    "tools",
                    &format!("srv-{name}"),
                    rv,
                    epoch[c],
                );
                events.push(applied(&r));
                confirmed += 1;
            }
            rv += 1;
            events.push(resync(
                clusters[c],
                Kind::MCPServer,
                epoch[c],
                Some(confirmed),
                rv as i64,
            ));
        } else if roll < 6 {
            events.push(heartbeat(clusters[c], rv as i64));
        } else {
            let reg = usize::try_from(rng.below(2)).unwrap();
            let name = rng.below(12);
            let r = record(
                clusters[c],
                registries[reg],
                Kind::MCPServer,
                "tools",
                &format!("srv-{name}"),
                rv,
                epoch[c],
            );
            if rng.below(5) == 0 {
                events.push(withdrawn(&r, rv, WithdrawReason::Deleted));
                alive.insert((c, reg, name), false);
            } else {
                events.push(applied(&r));
                alive.insert((c, reg, name), true);
            }
        }
    }
    events.truncate(n);
    events
}

// ---------------------------------------------------------------- projector helpers

fn stream_args() -> StreamArgs {
    StreamArgs {
        stream_max_age: Duration::from_secs(3600),
        stream_replicas: 1,
        stream_duplicate_window: Duration::from_secs(120),
        stream_max_bytes: None,
        stream_max_messages: None,
    }
}

/// Small, so that the tests run into both limits: writes wait for a free
/// slot, and cached values are evicted (the histories have up to 48 keys).
const IN_FLIGHT: NonZeroUsize = NonZeroUsize::new(8).unwrap();
const CACHE_KEYS: NonZeroUsize = NonZeroUsize::new(16).unwrap();

fn run_config(consumer: &str, batch: usize, ack_wait: Duration) -> RunConfig {
    RunConfig {
        consumer: consumer.to_owned(),
        batch,
        max_ack_pending: 1000,
        max_deliver: 5,
        ack_wait,
        max_in_flight: IN_FLIGHT,
        cache_keys: CACHE_KEYS,
        buckets: BucketSettings::default(),
        stream: stream_args(),
        gate: Default::default(),
        liveness_interval: herald_projector::liveness::DEFAULT_INTERVAL,
    }
}

/// One deployment event written into the live buckets directly, the way
/// `run` writes a key (no cached value: it reads the key first).
async fn write_one(js: &jetstream::Context, event: &Event, seq: u64) -> anyhow::Result<KeyWritten> {
    let (registry, key, kind) = fold::slot(event).context("a key's event")?;
    let store =
        writes::open_or_create(js, &bucket_name(registry), &BucketSettings::default()).await?;
    Ok(apply::write_key(&store, &key, kind, None, &[(event, seq)]).await?)
}

/// A projector running in this process.
struct InProcess {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    async fn start(nats: &NatsServer, config: RunConfig, metrics: Metrics) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            nats.client().await,
            config,
            metrics,
            Readiness::default(),
            shutdown.clone(),
        ));
        Self { shutdown, task }
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        within(STEP, "the projector to stop", self.task).await???;
        Ok(())
    }
}

async fn ensure_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    stream_args().ensure(js).await?;
    Ok(())
}

/// A nats-server with HERALD_EVENTS, and JetStream on it.
async fn nats_with_stream() -> anyhow::Result<(NatsServer, jetstream::Context)> {
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let js = nats.jetstream().await;
    ensure_stream(&js).await?;
    Ok((nats, js))
}

/// Two nats-servers with the same history; the sequence of its last event (the same on
/// both).
async fn twins(events: &[Event]) -> anyhow::Result<(NatsServer, NatsServer, u64)> {
    let (a, b) = tokio::try_join!(nats_with_stream(), nats_with_stream())?;
    let mut last = 0;
    for js in [&a.1, &b.1] {
        last = publish_all(js, events).await?;
    }
    Ok((a.0, b.0, last))
}

/// Runs a projector in this process (consumer `herald-projector`, batches of 100) until
/// it acknowledged everything up to `last`, then stops it.
async fn project(nats: &NatsServer, metrics: Metrics, last: u64) -> anyhow::Result<()> {
    let config = run_config("herald-projector", 100, Duration::from_secs(30));
    let projector = InProcess::start(nats, config, metrics).await;
    caught_up(&nats.jetstream().await, "herald-projector", last).await?;
    projector.stop().await
}

/// Takes the first event from the durable consumer of `config` and holds it, not
/// acknowledged, as another projector would.
async fn take_event_1(
    js: &jetstream::Context,
    config: &RunConfig,
) -> anyhow::Result<jetstream::Message> {
    let consumer = herald_projector::run::bind_consumer(js, config).await?;
    let mut taken = consumer.fetch().max_messages(1).messages().await?;
    within(STEP, "taking event 1", taken.next())
        .await?
        .context("event 1")?
        .map_err(|e| anyhow::anyhow!(e))
}

/// Waits until the consumer acknowledged everything up to `last`.
async fn caught_up(js: &jetstream::Context, consumer: &str, last: u64) -> anyhow::Result<()> {
    eventually(
        STEP,
        &format!("{consumer} to acknowledge up to {last}"),
        || async {
            let stream = js.get_stream(STREAM).await?;
            let info = match stream.consumer_info(consumer).await {
                Ok(info) => info,
                Err(_) => return Ok(None),
            };
            Ok((info.ack_floor.stream_sequence >= last && info.num_ack_pending == 0).then_some(()))
        },
    )
    .await
}

/// Every registry bucket and the clusters bucket: (bucket, key) → value as JSON.
async fn snapshot(js: &jetstream::Context) -> anyhow::Result<BTreeMap<(String, String), Value>> {
    let mut all = BTreeMap::new();
    let mut names: Vec<String> = buckets::registry_buckets(js)
        .await?
        .iter()
        .map(bucket_name)
        .collect();
    names.push(CLUSTERS_BUCKET.to_owned());
    for name in names {
        let Some(store) = buckets::open_existing(js, &name).await else {
            continue;
        };
        for item in buckets::scan(&store, "").await? {
            all.insert(
                (name.clone(), item.key),
                serde_json::from_slice(&item.value)?,
            );
        }
    }
    Ok(all)
}

/// The snapshot without `changedAt` of deployments: these tests write records without
/// the watcher's `changedAt` stamp (as watchers before it did), and for those, when
/// events of one key are applied in another order (two projectors, a redelivery after a
/// crash) the stored state is the same but "last changed" may be the time of a later,
/// equivalent event. Stamped records do not have that freedom (core's property test
/// `changed_at_is_a_function_of_the_history_not_of_the_order_of_folding`). Also without
/// the clusters' liveness times, which are the stream's clock (see
/// [`without_stream_times`]).
fn without_changed_at(
    mut snapshot: BTreeMap<(String, String), Value>,
) -> BTreeMap<(String, String), Value> {
    for ((bucket, _), value) in snapshot.iter_mut() {
        if bucket != CLUSTERS_BUCKET
            && let Some(object) = value.as_object_mut()
        {
            object.remove("changedAt");
        }
    }
    without_stream_times(snapshot)
}

/// The snapshot without the clusters' `lastSeen` and `lastHeartbeat`: they are when
/// the stream stored the events, so the same history published into two streams gives
/// two different times.
fn without_stream_times(
    mut snapshot: BTreeMap<(String, String), Value>,
) -> BTreeMap<(String, String), Value> {
    for ((bucket, _), value) in snapshot.iter_mut() {
        if bucket == CLUSTERS_BUCKET
            && let Some(object) = value.as_object_mut()
        {
            object.remove("lastSeen");
            object.remove("lastHeartbeat");
        }
    }
    snapshot
}

async fn stored(
    js: &jetstream::Context,
    reg: &str,
    key: &DeploymentKey,
) -> anyhow::Result<Option<(StoredDeployment, u64)>> {
    let store = js.get_key_value(bucket_name(&registry(reg))).await?;
    let entry = store.entry(key.to_string()).await?;
    Ok(match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            Some((StoredDeployment::from_json(&e.value)?, e.revision))
        }
        _ => None,
    })
}

fn key_of(r: &DeploymentRecord) -> DeploymentKey {
    DeploymentKey::new(r.cluster.clone(), r.object.clone())
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

fn metrics_text(registry: &Registry) -> String {
    herald_projector::metrics::render(registry)
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn applies_events_in_order_into_one_bucket_per_registry() -> anyhow::Result<()> {
    let (nats, js) = nats_with_stream().await?;
    let a1 = record("east", "default", Kind::MCPServer, "tools", "search", 10, 1);
    let b = record("east", "default", Kind::MCPServer, "tools", "fetch", 11, 1);
    let a2 = DeploymentRecord {
        version: "2.0.0".into(),
        ..record("east", "default", Kind::MCPServer, "tools", "search", 12, 1)
    };
    let other = record(
        "west",
        "team-a",
        Kind::VirtualMCPServer,
        "vmcp",
        "gateway",
        13,
        1,
    );
    let events = [
        applied(&a1),
        applied(&b),
        applied(&a2),
        withdrawn(&b, 14, WithdrawReason::OptedOut),
        applied(&other),
        heartbeat("east", 15),
    ];
    let last = publish_all(&js, &events).await?;
    assert_eq!(last, 6);

    let mut prometheus = Registry::default();
    let metrics = Metrics::register(&mut prometheus);
    project(&nats, metrics, last).await?;

    let (a, _) = stored(&js, "default", &key_of(&a1))
        .await?
        .context("search is stored")?;
    assert_eq!(a.seq, 3);
    assert_eq!(a.live(), Some(&a2));
    let (b_stored, _) = stored(&js, "default", &key_of(&b))
        .await?
        .context("fetch is stored")?;
    assert_eq!(b_stored.seq, 4);
    match &b_stored.state {
        DeploymentState::Withdrawn(w) => assert_eq!(w.reason, WithdrawReason::OptedOut),
        other => panic!("fetch should be withdrawn, is {other:?}"),
    }
    let (o, _) = stored(&js, "team-a", &key_of(&other))
        .await?
        .context("gateway is stored")?;
    assert_eq!(o.live(), Some(&other));
    let clusters = js.get_key_value(CLUSTERS_BUCKET).await?;
    let east: ClusterState = serde_json::from_slice(&clusters.get("east").await?.context("east")?)?;
    assert_eq!(
        (east.seq, east.watcher_version.as_deref()),
        (6, Some("0.1.0"))
    );
    // Liveness is the stream's clock (when it stored the events), not the
    // time the events claim (`at(15)`, days ago).
    assert!(east.last_seen > at(15) && east.last_seen <= Utc::now());
    assert_eq!(
        buckets::registry_buckets(&js).await?,
        [registry("default"), registry("team-a")].into()
    );

    let text = metrics_text(&prometheus);
    assert_eq!(
        metric(
            &text,
            "herald_projector_events_applied_total{type=\"deployment.applied\"} "
        ),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &text,
            "herald_projector_events_applied_total{type=\"deployment.withdrawn\"} "
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "herald_projector_events_applied_total{type=\"cluster.heartbeat\"} "
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "herald_projector_last_applied_sequence "),
        Some(6.0)
    );
    Ok(())
}

#[tokio::test]
async fn duplicates_and_older_redeliveries_never_regress_a_key() -> anyhow::Result<()> {
    let (nats, js) = nats_with_stream().await?;
    let v1 = record("east", "default", Kind::MCPServer, "tools", "search", 10, 1);
    let v2 = DeploymentRecord {
        version: "2.0.0".into(),
        ..record("east", "default", Kind::MCPServer, "tools", "search", 11, 1)
    };
    let s1 = publish(&js, &applied(&v1)).await?;
    // A retried publish of the same event is dropped by the server's duplicate window.
    assert_eq!(publish(&js, &applied(&v1)).await?, s1);
    let s2 = publish(&js, &applied(&v2)).await?;
    assert_eq!((s1, s2), (1, 2));

    // Someone takes event 1 from the durable consumer and never acknowledges it: the
    // projector applies event 2 first and gets event 1 again after the ack wait.
    let config = run_config("herald-projector", 10, Duration::from_secs(1));
    let first = take_event_1(&js, &config).await?;
    assert_eq!(
        first
            .info()
            .map_err(|e| anyhow::anyhow!(e))?
            .stream_sequence,
        1
    );

    let mut prometheus = Registry::default();
    let metrics = Metrics::register(&mut prometheus);
    let projector = InProcess::start(&nats, config, metrics).await;
    caught_up(&js, "herald-projector", s2).await?;
    projector.stop().await?;
    let text = metrics_text(&prometheus);
    assert_eq!(
        metric(&text, "herald_projector_redelivered_total "),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "herald_projector_events_stale_total{type=\"deployment.applied\"} "
        ),
        Some(1.0)
    );
    let (now, revision) = stored(&js, "default", &key_of(&v1))
        .await?
        .context("stored")?;
    assert_eq!((now.seq, now.live()), (2, Some(&v2)));

    // The write path itself, with the sequences of a redelivery and a duplicate.
    for (event, seq) in [
        (applied(&v1), s1),
        (applied(&v2), s2),
        (withdrawn(&v1, 10, WithdrawReason::Deleted), s1),
    ] {
        let outcome = write_one(&js, &event, seq).await?;
        assert_eq!(outcome.effects, [Effect::Stale], "seq {seq}");
    }
    let (after, after_revision) = stored(&js, "default", &key_of(&v1))
        .await?
        .context("stored")?;
    assert_eq!((after, after_revision), (now, revision), "no write at all");
    Ok(())
}

#[tokio::test]
async fn two_projectors_on_one_consumer_build_the_same_buckets_as_one() -> anyhow::Result<()> {
    let (shared, single, last) = twins(&random_history(7, 600)).await?;
    assert_eq!(
        last, 600,
        "every event is stored once, at the same sequence on both"
    );

    let config = run_config("shared", 7, Duration::from_secs(30));
    let (mut prom_one, mut prom_two) = (Registry::default(), Registry::default());
    let one = InProcess::start(&shared, config.clone(), Metrics::register(&mut prom_one)).await;
    let two = InProcess::start(&shared, config.clone(), Metrics::register(&mut prom_two)).await;
    let alone = InProcess::start(&single, config, Metrics::default()).await;
    let (js_shared, js_single) = (shared.jetstream().await, single.jetstream().await);
    caught_up(&js_shared, "shared", last).await?;
    caught_up(&js_single, "shared", last).await?;
    for p in [one, two, alone] {
        p.stop().await?;
    }
    for prom in [&prom_one, &prom_two] {
        let applied = metric(
            &metrics_text(prom),
            "herald_projector_events_applied_total{type=\"deployment.applied\"} ",
        );
        assert!(
            applied.is_some_and(|n| n > 0.0),
            "both projectors took a share: {applied:?}"
        );
    }
    let together = without_stream_times(snapshot(&js_shared).await?);
    let apart = without_stream_times(snapshot(&js_single).await?);
    assert!(
        together.len() > 30,
        "a meaningful workload: {} keys",
        together.len()
    );
    let clusters = |s: &BTreeMap<(String, String), Value>| {
        s.iter()
            .filter(|((b, _), _)| b == CLUSTERS_BUCKET)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        clusters(&together),
        clusters(&apart),
        "cluster records are identical"
    );
    assert_eq!(without_changed_at(together), without_changed_at(apart));
    Ok(())
}

#[tokio::test]
async fn a_resync_sweeps_exactly_the_unconfirmed_keys_of_its_cluster_and_kind() -> anyhow::Result<()>
{
    let (nats, js) = nats_with_stream().await?;
    let east = |reg, kind, name, rv| record("east", reg, kind, "tools", name, rv, 1);
    let kept = east("default", Kind::MCPServer, "kept", 1);
    let gone = east("default", Kind::MCPServer, "gone", 2);
    let gone_elsewhere = east("team-a", Kind::MCPServer, "gone-too", 3);
    let other_kind = east("default", Kind::MCPRemoteProxy, "proxy", 4);
    let other_cluster = record("west", "default", Kind::MCPServer, "tools", "gone", 5, 1);
    let already_withdrawn = east("default", Kind::MCPServer, "old", 6);
    let mut events = vec![
        applied(&kept),
        applied(&gone),
        applied(&gone_elsewhere),
        applied(&other_kind),
        applied(&other_cluster),
        applied(&already_withdrawn),
        withdrawn(&already_withdrawn, 7, WithdrawReason::Deleted),
        resync("east", Kind::MCPServer, 2, None, 8),
    ];
    let kept2 = record("east", "default", Kind::MCPServer, "tools", "kept", 9, 2);
    events.push(applied(&kept2));
    events.push(resync("east", Kind::MCPServer, 2, Some(1), 10));
    let before = {
        let last = publish_all(&js, &events[..events.len() - 1]).await?;
        project(&nats, Metrics::default(), last).await?;
        snapshot(&js).await?
    };
    let mut prometheus = Registry::default();
    let completed = publish(&js, events.last().unwrap()).await?;
    project(&nats, Metrics::register(&mut prometheus), completed).await?;
    let after = snapshot(&js).await?;

    let changed: Vec<&(String, String)> = after
        .keys()
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    let expected = [
        ("herald-default".to_owned(), key_of(&gone).to_string()),
        (
            "herald-team-a".to_owned(),
            key_of(&gone_elsewhere).to_string(),
        ),
        (CLUSTERS_BUCKET.to_owned(), "east".to_owned()),
    ];
    assert_eq!(changed, expected.iter().collect::<Vec<_>>());
    for (reg, r) in [("default", &gone), ("team-a", &gone_elsewhere)] {
        let (s, _) = stored(&js, reg, &key_of(r)).await?.context("swept key")?;
        assert_eq!(s.seq, completed);
        match s.state {
            DeploymentState::Withdrawn(w) => {
                assert_eq!(
                    (w.reason, w.epoch, w.uid.as_str()),
                    (WithdrawReason::Unconfirmed, 2, r.uid.as_str())
                );
            }
            other => panic!("{} should be swept, is {other:?}", r.object),
        }
    }
    assert_eq!(
        metric(
            &metrics_text(&prometheus),
            "herald_projector_records_swept_total "
        ),
        Some(2.0)
    );
    let (k, _) = stored(&js, "default", &key_of(&kept))
        .await?
        .context("kept")?;
    assert_eq!(k.live(), Some(&kept2));
    Ok(())
}

#[tokio::test]
async fn a_sweep_waits_for_earlier_events_another_projector_holds() -> anyhow::Result<()> {
    let (nats, js) = nats_with_stream().await?;
    // Applied just before a re-list that no longer finds it: the sweep must see it.
    let doomed = record("east", "default", Kind::MCPServer, "tools", "doomed", 1, 1);
    publish(&js, &applied(&doomed)).await?;
    publish(&js, &resync("east", Kind::MCPServer, 2, None, 2)).await?;
    let completed = publish(&js, &resync("east", Kind::MCPServer, 2, Some(0), 3)).await?;

    // A second, slower projector on the same consumer holds the applied event.
    let config = run_config("herald-projector", 10, Duration::from_secs(10));
    let message = take_event_1(&js, &config).await?;
    let p = InProcess::start(&nats, config, Metrics::default()).await;
    // The slow projector's work: it finishes after the other took the sweep.
    eventually(STEP, "the running projector to take the sweep", || async {
        let stream = js.get_stream(STREAM).await?;
        let delivered = match stream.consumer_info("herald-projector").await {
            Ok(info) => info.delivered.stream_sequence,
            Err(_) => 0,
        };
        Ok((delivered >= completed).then_some(()))
    })
    .await?;
    let event = Event::decode_on(&message.subject, &message.payload)?;
    assert_eq!(write_one(&js, &event, 1).await?.effects, [Effect::Changed]);
    message.double_ack().await.map_err(|e| anyhow::anyhow!(e))?;

    caught_up(&js, "herald-projector", completed).await?;
    p.stop().await?;
    let (s, _) = stored(&js, "default", &key_of(&doomed))
        .await?
        .context("doomed")?;
    assert_eq!(
        s.seq, completed,
        "swept after the earlier event was applied: {s:?}"
    );
    assert!(s.live().is_none());
    Ok(())
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_later_events_still_apply() -> anyhow::Result<()> {
    let (nats, js) = nats_with_stream().await?;
    let watcher = nats.client().await;
    let mut dlq = watcher.subscribe("herald.dlq.>").await?;
    watcher.flush().await?;

    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "poison-1");
    headers.insert("X-Trace", "abc");
    let s1 = publish_raw(
        &js,
        "herald.events.east.default",
        headers,
        b"{not json".to_vec(),
    )
    .await?;
    // A west event published on east's subject: the cluster disagrees.
    let west = record("west", "default", Kind::MCPServer, "tools", "search", 1, 1);
    let s2 = publish_raw(
        &js,
        "herald.events.east.default",
        HeaderMap::new(),
        applied(&west).to_json(),
    )
    .await?;
    let good = record("east", "default", Kind::MCPServer, "tools", "search", 2, 1);
    let s3 = publish(&js, &applied(&good)).await?;

    let mut prometheus = Registry::default();
    let metrics = Metrics::register(&mut prometheus);
    project(&nats, metrics, s3).await?;

    let first = within(STEP, "the first dead letter", dlq.next())
        .await?
        .context("dlq closed")?;
    assert_eq!(first.subject.as_str(), "herald.dlq.malformed");
    assert_eq!(first.payload.as_ref(), b"{not json");
    let h = first.headers.context("dead letters carry headers")?;
    assert_eq!(h.get("X-Trace").map(|v| v.as_str()), Some("abc"));
    assert_eq!(
        h.get("Herald-Original-Subject").map(|v| v.as_str()),
        Some("herald.events.east.default")
    );
    assert_eq!(
        h.get("Herald-Original-Sequence").map(|v| v.as_str()),
        Some(s1.to_string().as_str())
    );
    assert!(
        h.get("Herald-Dlq-Reason")
            .is_some_and(|v| v.as_str().starts_with("not JSON")),
        "{h:?}"
    );

    let second = within(STEP, "the second dead letter", dlq.next())
        .await?
        .context("dlq closed")?;
    assert_eq!(second.subject.as_str(), "herald.dlq.wrong_subject");
    assert_eq!(second.payload.as_ref(), applied(&west).to_json().as_slice());
    let h = second.headers.context("headers")?;
    assert_eq!(
        h.get("Herald-Original-Sequence").map(|v| v.as_str()),
        Some(s2.to_string().as_str())
    );
    assert_eq!(
        h.get("Herald-Dlq-Reason").map(|v| v.as_str()),
        Some(
            "published on herald.events.east.default but its body says herald.events.west.default"
        )
    );

    // Both are kept in HERALD_DLQ, not only passed by subscribers.
    let mut kept = js.get_stream(herald_core::names::DLQ_STREAM).await?;
    assert_eq!(kept.info().await?.state.messages, 2);
    let first_kept = kept.get_raw_message(1).await?;
    assert_eq!(first_kept.subject.as_str(), "herald.dlq.malformed");

    let (s, _) = stored(&js, "default", &key_of(&good))
        .await?
        .context("the good event applied")?;
    assert_eq!((s.seq, s.live()), (s3, Some(&good)));
    assert!(stored(&js, "default", &key_of(&west)).await?.is_none());
    let text = metrics_text(&prometheus);
    assert_eq!(
        metric(
            &text,
            "herald_projector_dead_lettered_total{reason=\"malformed\"} "
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "herald_projector_dead_lettered_total{reason=\"wrong_subject\"} "
        ),
        Some(1.0)
    );
    Ok(())
}

// ---------------------------------------------------------------- the binary

/// `herald-projector run` with `extra` flags, on the stream the tests create (one hour).
fn projector(nats: &NatsServer, extra: &[&str]) -> Herald {
    Herald::projector(&nats.url())
        .flag("--stream-max-age", "1h")
        .args(extra)
}

/// Runs an ops subcommand to completion; returns (exit code, stdout).
async fn ops(nats: &NatsServer, args: &[&str]) -> anyhow::Result<(i32, String)> {
    projector_ops(&nats.url(), args, STEP).await
}

#[tokio::test]
async fn sigkill_mid_batch_and_restart_ends_like_an_uninterrupted_run() -> anyhow::Result<()> {
    let (crashing, calm, last) = twins(&random_history(11, 1500)).await?;
    let js = crashing.jetstream().await;
    let args = ["--batch", "50", "--ack-wait", "1s"];
    let mut first = projector(&crashing, &args).spawn()?;
    eventually(STEP, "the projector to be part-way", || async {
        let stream = js.get_stream(STREAM).await?;
        let floor = stream
            .consumer_info("herald-projector")
            .await
            .map(|i| i.ack_floor.stream_sequence)
            .unwrap_or(0);
        Ok((floor >= 300).then_some(()))
    })
    .await
    .map_err(|e| first.explain(e))?;
    first.kill();
    let stream = js.get_stream(STREAM).await?;
    let at_kill = stream.consumer_info("herald-projector").await?.clone();
    assert!(
        at_kill.ack_floor.stream_sequence < last,
        "killed before the end: {at_kill:?}"
    );

    let mut second = projector(&crashing, &args).spawn()?;
    let calm_projector = InProcess::start(
        &calm,
        run_config("herald-projector", 50, Duration::from_secs(1)),
        Metrics::default(),
    )
    .await;
    caught_up(&js, "herald-projector", last)
        .await
        .map_err(|e| second.explain(e))?;
    caught_up(&calm.jetstream().await, "herald-projector", last).await?;
    assert_eq!(second.terminate().code(), Some(0));
    calm_projector.stop().await?;
    let crashed = snapshot(&js).await?;
    let uninterrupted = snapshot(&calm.jetstream().await).await?;
    assert!(crashed.len() > 30);
    assert_eq!(
        without_changed_at(crashed),
        without_changed_at(uninterrupted)
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_finishes_the_batch_acks_it_and_exits_zero() -> anyhow::Result<()> {
    let (nats, js) = nats_with_stream().await?;
    let last = publish_all(&js, &random_history(3, 800)).await?;
    // Ready: /readyz says 200.
    let mut projector = projector(&nats, &["--batch", "100"]).start().await?;
    let http = reqwest::Client::new();
    let base = projector.base().to_owned();
    assert!(
        http.get(format!("{base}/healthz"))
            .send()
            .await?
            .status()
            .is_success()
    );
    eventually(STEP, "some events applied", || async {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok(metric(&text, "herald_projector_last_applied_sequence ")
            .filter(|s| *s >= 100.0)
            .map(|_| text))
    })
    .await?;
    let status = projector.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        projector.process().log_tail(20)
    );
    assert!(projector.log_contents().contains("projector stopped"));
    let stream = js.get_stream(STREAM).await?;
    let info = stream.consumer_info("herald-projector").await?.clone();
    assert_eq!(
        info.num_ack_pending, 0,
        "every delivered event was acknowledged: {info:?}"
    );
    assert_eq!(
        info.ack_floor.stream_sequence,
        info.delivered.stream_sequence
    );
    assert!(info.ack_floor.stream_sequence <= last);
    Ok(())
}

#[tokio::test]
async fn replay_rebuilds_the_live_buckets_and_shows_a_tampered_key() -> anyhow::Result<()> {
    let (nats, js) = nats_with_stream().await?;
    let events = random_history(42, 2000);
    let last = publish_all(&js, &events).await?;
    // Plus a poison message, which replay skips as run dead-letters it.
    publish_raw(
        &js,
        "herald.events.east.default",
        HeaderMap::new(),
        b"garbage".to_vec(),
    )
    .await?;
    let last = last + 1;
    project(&nats, Metrics::default(), last).await?;

    let options = ReplayOptions {
        registry: None,
        start: StartingPoint::Beginning,
        until: None,
        scratch_prefix: "herald_replay_".to_owned(),
        keep: false,
        apply: false,
        gate: Default::default(),
    };
    let mut out = Vec::new();
    let report = replay(&js, &options, &mut out).await?;
    let text = String::from_utf8(out)?;
    assert!(report.diffs.is_empty(), "{text}");
    assert_eq!(report.range, Some((1, last)));
    assert_eq!(report.undecodable, 1);
    assert!(text.ends_with("no differences\n"), "{text}");
    assert!(
        buckets::bucket_names(&js)
            .await?
            .iter()
            .all(|b| !b.starts_with("herald_replay_")),
        "scratch buckets are deleted"
    );

    // --keep leaves the rebuilt state in scratch buckets: the live state.
    let kept = ReplayOptions {
        keep: true,
        ..options.clone()
    };
    replay(&js, &kept, &mut Vec::new()).await?;
    for registry in ["default", "team-a"] {
        let json = |items: Vec<buckets::Item>| {
            items
                .into_iter()
                .map(|i| Ok((i.key, serde_json::from_slice::<Value>(&i.value)?)))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let live = js.get_key_value(format!("herald-{registry}")).await?;
        let scratch = js
            .get_key_value(format!("herald_replay_{registry}"))
            .await?;
        let live = json(buckets::scan(&live, "").await?)?;
        assert!(!live.is_empty(), "{registry}");
        assert_eq!(
            live,
            json(buckets::scan(&scratch, "").await?)?,
            "{registry}"
        );
    }

    // Tamper with one key behind the projector's back.
    let live = js.get_key_value("herald-default").await?;
    let items = buckets::scan(&live, "").await?;
    let victim = &items[items.len() / 2];
    let mut value: StoredDeployment = StoredDeployment::from_json(&victim.value)?;
    value.seq += 100_000;
    live.put(&victim.key, value.to_json().into()).await?;

    let (code, stdout) = ops(&nats, &["replay", "--check"]).await?;
    assert_eq!(code, 1, "--check fails on a difference:\n{stdout}");
    let diff_lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(diff_lines.len(), 1, "{stdout}");
    assert!(
        diff_lines[0].starts_with(&format!("  ~ {}  live: seq {}", victim.key, value.seq)),
        "{stdout}"
    );
    let summary = |bucket: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{bucket}: ")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        summary("herald-default").ends_with("rebuilt: 0 added, 0 removed, 1 changed"),
        "{stdout}"
    );
    assert!(
        summary("herald-team-a").ends_with("rebuilt: 0 added, 0 removed, 0 changed"),
        "{stdout}"
    );

    let (code, stdout) = ops(&nats, &["replay", "--registry", "default", "--apply"]).await?;
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("1 differences, 1 written into the live buckets"),
        "{stdout}"
    );
    let restored = live
        .get(&victim.key)
        .await?
        .context("the key is still there")?;
    assert_eq!(
        serde_json::from_slice::<Value>(&restored)?,
        serde_json::from_slice::<Value>(&victim.value)?,
        "--apply wrote back the state the history gives"
    );

    let (_, status) = ops(&nats, &["status"]).await?;
    let after = snapshot(&js).await?;
    for bucket in ["herald-default", "herald-team-a"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(bucket))
            .unwrap_or_default();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells.join(" "),
            format!("{bucket} {}", snapshot_counts(&after, bucket)),
            "{status}"
        );
    }
    assert!(
        status.contains(&format!("stream HERALD_EVENTS: {last} messages")),
        "{status}"
    );
    assert!(
        status.contains("consumer herald-projector: 0 pending, 0 ack pending"),
        "{status}"
    );
    for cluster in ["east", "west"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(cluster))
            .unwrap_or_default();
        // The heartbeats claim 2026-11-24T10:00, but liveness is when the stream stored
        // them, moments ago: the watchers count as alive.
        assert!(
            !line.contains("STALE") && line.contains("mcpserver="),
            "{status}"
        );
    }
    Ok(())
}

/// "<live> <tombstones> 0" for a bucket of a snapshot, as `status` prints it.
fn snapshot_counts(snapshot: &BTreeMap<(String, String), Value>, bucket: &str) -> String {
    let values: Vec<&Value> = snapshot
        .iter()
        .filter(|((b, _), _)| b == bucket)
        .map(|(_, v)| v)
        .collect();
    let live = values.iter().filter(|v| v.get("live").is_some()).count();
    format!("{live} {} 0", values.len() - live)
}

#[tokio::test]
async fn events_prints_the_lines_a_filter_selects() -> anyhow::Result<()> {
    let (nats, js) = nats_with_stream().await?;
    let search = record("east", "default", Kind::MCPServer, "tools", "search", 10, 3);
    let fetch = record("east", "default", Kind::MCPServer, "tools", "fetch", 11, 3);
    let west = record("west", "default", Kind::MCPServer, "tools", "search", 12, 1);
    publish_all(
        &js,
        &[
            applied(&search),
            applied(&fetch),
            heartbeat("east", 13),
            applied(&west),
            withdrawn(&search, 14, WithdrawReason::NotReady),
            resync("east", Kind::MCPServer, 4, Some(2), 15),
        ],
    )
    .await?;

    let (_, table) = ops(
        &nats,
        &["events", "--cluster", "east", "--object", "tools/search"],
    )
    .await?;
    let line = |cells: [&str; 7]| {
        format!(
            "{:<3}  {:<24}  {:<20}  {:<7}  {:<8}  {:<22}  {}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        )
    };
    let expected = [
        line(["SEQ", "TIME", "TYPE", "CLUSTER", "REGISTRY", "SUBJECT", "SUMMARY"]),
        line([
            "1",
            "2026-11-24T10:00:10.000Z",
            "deployment.applied",
            "east",
            "default",
            "mcpserver/tools/search",
            "com.toolhive.k8s.tools/search 1.2.0 streamable-http http://mcp-search-proxy.tools.svc.cluster.local:8080/mcp Ready epoch 3",
        ]),
        line([
            "5",
            "2026-11-24T10:00:14.000Z",
            "deployment.withdrawn",
            "east",
            "default",
            "mcpserver/tools/search",
            "not_ready epoch 3",
        ]),
    ]
    .concat();
    assert_eq!(table, expected);

    // Shared flags go before or after the subcommand.
    let (_, control) = ops(
        &nats,
        &[
            "--log-format",
            "json",
            "events",
            "--from-seq",
            "2",
            "--type",
            "heartbeat,resync.completed",
        ],
    )
    .await?;
    let rows: Vec<Vec<&str>> = control
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(6).collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec![
                "3",
                "2026-11-24T10:00:13.000Z",
                "cluster.heartbeat",
                "east",
                "-",
                "-"
            ],
            vec![
                "6",
                "2026-11-24T10:00:15.000Z",
                "resync.completed",
                "east",
                "-",
                "mcpserver"
            ],
        ]
    );

    let (_, json) = ops(
        &nats,
        &["events", "--registry", "default", "--last", "2", "--json"],
    )
    .await?;
    let lines: Vec<Value> = json
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![4, 5]);
    assert_eq!(lines[0]["cluster"], "west");
    assert_eq!(lines[1]["event"]["type"], "dev.herald.deployment.withdrawn");
    assert_eq!(lines[1]["natsSubject"], "herald.events.east.default");

    // --follow keeps printing new events until it is told to stop.
    let mut follow = Herald::projector_ops(&nats.url())
        .args([
            "events",
            "--follow",
            "--json",
            "--cluster",
            "west",
            "--log-format",
            "json",
        ])
        .log_name("follow.log")
        .spawn()?;
    let printed = |follow: &HeraldProcess, seq: u64| {
        follow
            .log_contents()
            .lines()
            .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["seq"] == seq))
    };
    eventually(STEP, "the existing west event", || async {
        Ok(printed(&follow, 4).then_some(()))
    })
    .await
    .map_err(|e| follow.explain(e))?;
    let later = record("west", "default", Kind::MCPServer, "tools", "later", 20, 1);
    let seq = publish(&js, &applied(&later)).await?;
    eventually(STEP, "the new west event", || async {
        Ok(printed(&follow, seq).then_some(()))
    })
    .await
    .map_err(|e| follow.explain(e))?;
    assert_eq!(follow.terminate().code(), Some(0));
    Ok(())
}

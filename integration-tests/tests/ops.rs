//! The ops commands that look back, against a real nats-server: histories as the
//! watchers publish them are projected by a real projector (in this process), then
//! - `herald-projector explain` must say, for each reason Herald can withhold a server,
//!   that reason (one test per reason, one with the binary for the table and `--json`);
//! - `herald-projector replay --until … --keep` must rebuild the registries as they
//!   were then, and a herald-api given `--bucket-prefix` must serve that past.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, TimeZone, Utc};
use herald_core::claims::parse_annotation;
use herald_core::event::Resync;
use herald_core::record::{Phase, Remote, RemoteTransport, Withdrawal};
use herald_core::validate::UrlRules;
use herald_core::{DeploymentRecord, Event, EventData, Kind, ObjectRef, WithdrawReason};
use herald_integration_tests::events::{publish, withdrawal};
use herald_integration_tests::herald::{Herald, projector_ops};
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::timeout::{eventually, within};
use herald_projector::CancellationToken;
use herald_projector::gate::Gate;
use herald_projector::metrics::{Metrics, Registry};
use herald_projector::ops::explain::{ExplainOptions, Explanation, Target, explain};
use herald_projector::ops::starting_point::StartingPoint;
use herald_projector::run::{RunConfig, run};
use herald_projector::writes::BucketSettings;
use herald_runtime::health::Readiness;
use herald_runtime::stream::StreamArgs;

const START: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(20);
const SERVER: &str = "io.github.acme/search";
/// What the hub grants in every test but one: the servers' names to their namespace.
const GRANT: &str = "io.github.acme/*=tools";

fn at(seconds: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::minutes(30) + chrono::Duration::seconds(seconds)
}

/// The record a watcher of `cluster` publishes for MCPServer `tools/<name>`, server
/// name `io.github.acme/<name>`.
fn record(cluster: &str, name: &str, rv: u64, epoch: u64) -> DeploymentRecord {
    DeploymentRecord {
        v: 1,
        cluster: cluster.parse().unwrap(),
        registry: "default".parse().unwrap(),
        object: ObjectRef::new(Kind::MCPServer, "tools", name).unwrap(),
        uid: format!("uid-{cluster}-{name}"),
        resource_version: rv.to_string(),
        generation: Some(1),
        created_at: Some(Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()),
        observed_at: at(i64::try_from(rv).unwrap()),
        changed_at: None,
        epoch,
        server_name: format!("io.github.acme/{name}").parse().unwrap(),
        version: "1.0.0".to_owned(),
        description: "Search MCP server".to_owned(),
        title: None,
        icon: None,
        category: None,
        tools: vec!["search".to_owned()],
        remote: Remote {
            transport: RemoteTransport::StreamableHttp,
            url: format!("https://{name}.{cluster}.example.com/mcp"),
            headers: Vec::new(),
            extra: Default::default(),
        },
        phase: Phase::Ready,
        package: None,
        image: None,
        transport: "streamable-http".to_owned(),
        group: None,
        tool_definitions: Vec::new(),
        authz_claims: None,
    }
}

fn applied(r: &DeploymentRecord) -> Event {
    Event::new(EventData::Applied(Box::new(r.clone())), r.observed_at)
}

fn withdrawn(w: Withdrawal, rv: u64) -> Event {
    Event::new(
        EventData::Withdrawn(Withdrawal {
            resource_version: rv.to_string(),
            ..w
        }),
        at(i64::try_from(rv).unwrap()),
    )
}

fn resync(cluster: &str, epoch: u64, completed: bool, seconds: i64) -> Event {
    let body = Resync {
        v: 1,
        cluster: cluster.parse().unwrap(),
        kind: Kind::MCPServer,
        epoch,
        advertised: completed.then_some(0),
    };
    let data = if completed {
        EventData::ResyncCompleted(body)
    } else {
        EventData::ResyncStarted(body)
    };
    Event::new(data, at(seconds))
}

/// The hub's gate, with server names `io.github.acme/*` granted to `namespace`.
fn granted_to(namespace: &str) -> Gate {
    let grant = GRANT.replace("tools", namespace).parse().unwrap();
    Gate::new(
        None,
        vec![grant],
        chrono::Duration::minutes(15),
        UrlRules::default(),
    )
    .unwrap()
}

fn config(gate: Gate) -> RunConfig {
    RunConfig {
        consumer: "herald-projector".to_owned(),
        batch: 100,
        max_ack_pending: 1000,
        max_deliver: 5,
        ack_wait: Duration::from_secs(30),
        max_in_flight: NonZeroUsize::new(8).unwrap(),
        cache_keys: NonZeroUsize::new(64).unwrap(),
        buckets: BucketSettings::default(),
        stream: StreamArgs {
            stream_max_age: Duration::from_secs(3600),
            stream_replicas: 1,
            stream_duplicate_window: Duration::from_secs(120),
            stream_max_bytes: None,
            stream_max_messages: None,
        },
        gate: Arc::new(gate),
        liveness_interval: herald_projector::liveness::DEFAULT_INTERVAL,
    }
}

/// A nats-server whose history `events` a real projector (behind `gate`) has
/// projected up to the last one.
async fn projected(events: &[Event], gate: Gate) -> anyhow::Result<NatsServer> {
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    let js = nats.jetstream().await;
    let config = config(gate);
    config.stream.ensure(&js).await?;
    config.stream.ensure_dead_letters(&js).await?;
    let mut last = 0;
    for event in events {
        last = publish(&js, event).await?;
    }
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    let task = tokio::spawn(run(
        nats.client().await,
        config,
        Metrics::register(&mut registry),
        Readiness::default(),
        shutdown.clone(),
    ));
    caught_up(&js, last).await?;
    shutdown.cancel();
    within(STEP, "the projector to stop", task).await???;
    Ok(nats)
}

async fn caught_up(js: &jetstream::Context, last: u64) -> anyhow::Result<()> {
    eventually(STEP, "the projector to acknowledge every event", || async {
        let stream = js.get_stream(herald_core::names::STREAM).await?;
        // The projector creates its consumer once it runs.
        let Ok(info) = stream.consumer_info("herald-projector").await else {
            return Ok(None);
        };
        Ok((info.ack_floor.stream_sequence >= last).then_some(()))
    })
    .await
}

async fn explained(nats: &NatsServer, target: &str) -> anyhow::Result<Explanation> {
    let options = ExplainOptions {
        target: target.parse::<Target>().map_err(anyhow::Error::msg)?,
        registry: None,
        start: StartingPoint::Beginning,
        max_read: 10_000,
        last: 20,
    };
    explain(&nats.jetstream().await, &options).await
}

/// The verdict codes, in order.
fn codes(e: &Explanation) -> Vec<String> {
    e.verdicts
        .iter()
        .map(|v| match &v.refusal {
            Some(r) => format!("{}:{r}", v.code),
            None => v.code.clone(),
        })
        .collect()
}

#[tokio::test]
async fn a_served_server_names_its_deployments_and_versions() -> anyhow::Result<()> {
    let east = record("east", "search", 1, 1);
    let west = record("west", "search", 1, 1);
    let nats = projected(&[applied(&east), applied(&west)], granted_to("tools")).await?;
    let e = explained(&nats, SERVER).await?;
    assert_eq!(codes(&e), ["served", "served"], "{}", e.render());
    assert_eq!(e.served.len(), 1, "{}", e.render());
    let served = &e.served[0];
    assert_eq!((served.version.as_str(), served.is_latest), ("1.0.0", true));
    assert_eq!(
        served.deployments,
        ["east/mcpserver/tools/search", "west/mcpserver/tools/search"]
    );
    assert_eq!(served.remotes.len(), 2);
    assert_eq!(e.events.len(), 2);
    assert!(e.dead_letters.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_server_the_watcher_rejected_says_why() -> anyhow::Result<()> {
    let r = record("east", "search", 1, 1);
    let message = "annotation toolhive.stacklok.dev/registry-description is missing; the registry requires a description";
    let w = Withdrawal::of(&r, 1, WithdrawReason::Rejected, Some(message.to_owned()));
    let nats = projected(&[applied(&r), withdrawn(w, 2)], granted_to("tools")).await?;
    // By server name (the name is only in the applied event) and by object.
    for target in [SERVER, "mcpserver/tools/search", "tools/search"] {
        let e = explained(&nats, target).await?;
        assert_eq!(codes(&e), ["rejected"], "{target}: {}", e.render());
        assert!(e.verdicts[0].detail.contains(message), "{}", e.render());
        assert!(e.served.is_empty());
        assert_eq!(e.events.len(), 2, "{}", e.render());
    }
    Ok(())
}

#[tokio::test]
async fn a_server_the_gate_refused_names_the_dead_letter_code() -> anyhow::Result<()> {
    // The hub grants the name to namespace `platform` only: `tools` may not publish it.
    let gate = granted_to("platform");
    let r = record("east", "search", 1, 1);
    let nats = projected(&[applied(&r)], gate).await?;
    let e = explained(&nats, SERVER).await?;
    assert_eq!(codes(&e), ["refused:name_not_owned"], "{}", e.render());
    assert_eq!(e.dead_letters.len(), 1);
    assert_eq!(e.dead_letters[0].original_seq, Some(1));
    assert!(e.served.is_empty() && e.keys.is_empty(), "{}", e.render());
    Ok(())
}

#[tokio::test]
async fn a_server_that_is_not_ready_says_so() -> anyhow::Result<()> {
    let r = record("east", "search", 1, 1);
    let w = withdrawal(&r, "2", WithdrawReason::NotReady);
    let nats = projected(&[applied(&r), withdrawn(w, 2)], granted_to("tools")).await?;
    let e = explained(&nats, SERVER).await?;
    assert_eq!(codes(&e), ["not_ready"], "{}", e.render());
    Ok(())
}

#[tokio::test]
async fn a_server_that_opted_out_says_so() -> anyhow::Result<()> {
    let r = record("east", "search", 1, 1);
    let w = withdrawal(&r, "2", WithdrawReason::OptedOut);
    let nats = projected(&[applied(&r), withdrawn(w, 2)], granted_to("tools")).await?;
    let e = explained(&nats, "mcpserver/tools/search").await?;
    assert_eq!(codes(&e), ["opted_out"], "{}", e.render());
    Ok(())
}

#[tokio::test]
async fn a_deleted_server_says_so() -> anyhow::Result<()> {
    let r = record("east", "search", 1, 1);
    let w = withdrawal(&r, "2", WithdrawReason::Deleted);
    let nats = projected(&[applied(&r), withdrawn(w, 2)], granted_to("tools")).await?;
    let e = explained(&nats, SERVER).await?;
    assert_eq!(codes(&e), ["deleted"], "{}", e.render());
    Ok(())
}

#[tokio::test]
async fn a_server_a_resync_swept_says_which_relist() -> anyhow::Result<()> {
    let r = record("east", "search", 1, 1);
    let events = [
        applied(&r),
        resync("east", 2, false, 10),
        resync("east", 2, true, 11),
    ];
    let nats = projected(&events, granted_to("tools")).await?;
    let e = explained(&nats, SERVER).await?;
    assert_eq!(codes(&e), ["withdrawn_by_sweep"], "{}", e.render());
    assert!(e.verdicts[0].detail.contains("epoch 2"), "{}", e.render());
    // The completed re-list that swept it is among its events.
    assert!(
        e.events.iter().any(|l| l.ty == "resync.completed"),
        "{}",
        e.render()
    );
    Ok(())
}

#[tokio::test]
async fn a_server_hidden_by_claims_names_the_claims_not_their_values() -> anyhow::Result<()> {
    let mut r = record("east", "search", 1, 1);
    r.authz_claims = parse_annotation(r#"{"groups": ["secret-team-value"]}"#)?;
    let nats = projected(&[applied(&r)], granted_to("tools")).await?;
    let e = explained(&nats, SERVER).await?;
    assert_eq!(codes(&e), ["hidden_by_claims"], "{}", e.render());
    assert_eq!(e.served[0].claims, ["groups"]);
    let text = e.render() + &e.to_json();
    assert!(text.contains("groups"), "{text}");
    assert!(!text.contains("secret-team-value"), "{text}");
    Ok(())
}

#[tokio::test]
async fn a_server_never_seen_points_at_the_watcher_events() -> anyhow::Result<()> {
    let other = record("east", "other", 1, 1);
    let nats = projected(&[applied(&other)], granted_to("tools")).await?;
    let e = explained(&nats, "mcpserver/tools/search").await?;
    assert_eq!(codes(&e), ["not_seen"], "{}", e.render());
    assert!(
        e.verdicts[0]
            .detail
            .contains("kubectl get events -n tools --field-selector reason=RegistryRejected"),
        "{}",
        e.render()
    );
    assert!(e.events.is_empty() && e.keys.is_empty());
    Ok(())
}

#[tokio::test]
async fn explain_reads_a_bounded_window_and_prints_a_table_and_json() -> anyhow::Result<()> {
    // 50 events of another server, then the one: --max-read 10 still finds it.
    let mut events: Vec<Event> = (1..=50)
        .map(|rv| applied(&record("east", "other", rv, 1)))
        .collect();
    let r = record("east", "search", 1, 1);
    events.push(applied(&r));
    events.push(withdrawn(withdrawal(&r, "2", WithdrawReason::NotReady), 2));
    let nats = projected(&events, granted_to("tools")).await?;

    let (code, table) = projector_ops(
        &nats.url(),
        &["explain", SERVER, "--max-read", "10", "--last", "1"],
        STEP,
    )
    .await?;
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("VERDICT"), "{table}");
    assert!(table.contains("not_ready"), "{table}");
    assert!(table.contains("only the newest"), "{table}");
    // --last 1: only the withdrawal among the events.
    assert!(table.contains("withdrawn"), "{table}");
    assert!(!table.contains("streamable-http"), "{table}");

    let (code, json) = projector_ops(&nats.url(), &["explain", SERVER, "--json"], STEP).await?;
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(v["verdicts"][0]["code"], "not_ready", "{json}");
    assert_eq!(v["events"].as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(v["windows"][0]["read"], 52, "{json}");
    assert_eq!(v["windows"][0]["truncated"], false, "{json}");

    // A --since after everything reads nothing; the bucket still says why.
    let (_, json) = projector_ops(
        &nats.url(),
        &[
            "explain",
            "mcpserver/tools/search",
            "--json",
            "--since",
            "2099-01-01T00:00:00Z",
        ],
        STEP,
    )
    .await?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(v["windows"][0]["read"], 0, "{json}");
    assert_eq!(v["verdicts"][0]["code"], "not_ready", "{json}");
    Ok(())
}

// ---------------------------------------------------------------- replay --until

/// `(name, version)` of every entry `path` of `api` lists.
async fn listed(api: &str, path: &str) -> anyhow::Result<Vec<(String, String)>> {
    let response = within(STEP, path, reqwest::get(format!("{api}{path}"))).await??;
    anyhow::ensure!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    let body: serde_json::Value = response.json().await?;
    let mut entries: Vec<(String, String)> = body["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["server"]["name"].as_str().unwrap_or("").to_owned(),
                e["server"]["version"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    entries.sort();
    Ok(entries)
}

#[tokio::test]
async fn replay_until_keep_lets_herald_api_serve_the_past() -> anyhow::Result<()> {
    // t1: search 1.0.0 and alpha; t2: search 2.0.0, alpha deleted.
    let search = record("east", "search", 1, 1);
    let alpha = record("east", "alpha", 1, 1);
    let mut search2 = record("east", "search", 3, 1);
    search2.version = "2.0.0".to_owned();
    let t2 = [
        applied(&search2),
        withdrawn(withdrawal(&alpha, "4", WithdrawReason::Deleted), 4),
    ];
    let mut history = vec![applied(&search), applied(&alpha)];
    history.extend(t2.iter().cloned());
    let nats = projected(&history, granted_to("tools")).await?;
    let js = nats.jetstream().await;
    // The moment the stream stored the last event of t1 (sequence 2).
    let stream = js.get_stream(herald_core::names::STREAM).await?;
    let t1_stored = stream.get_raw_message(2).await?.time;
    let t1 = DateTime::<Utc>::from_timestamp_nanos(
        i64::try_from(t1_stored.unix_timestamp_nanos()).unwrap(),
    )
    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);

    let (code, out) = projector_ops(
        &nats.url(),
        &["replay", "--until", &t1, "--keep", "--grant-name", GRANT],
        STEP,
    )
    .await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed HERALD_EVENTS 1..=2"), "{out}");
    assert!(out.contains("as of "), "{out}");

    let past = Herald::api(&nats.url())
        .flag("--bucket-prefix", "herald_replay_")
        .log_name("api-past.log")
        .start()
        .await?;
    let now = Herald::api(&nats.url()).start().await?;
    let at_t1 = vec![
        ("io.github.acme/alpha".to_owned(), "1.0.0".to_owned()),
        (SERVER.to_owned(), "1.0.0".to_owned()),
    ];
    assert_eq!(listed(past.base(), "/v0.1/servers").await?, at_t1);
    assert_eq!(
        listed(now.base(), "/v0.1/servers").await?,
        [(SERVER.to_owned(), "2.0.0".to_owned())]
    );

    // --until a sequence is the same moment; --apply with --until is refused.
    let (code, out) = projector_ops(
        &nats.url(),
        &["replay", "--until", "2", "--keep", "--grant-name", GRANT],
        STEP,
    )
    .await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed HERALD_EVENTS 1..=2"), "{out}");
    let refused = Herald::projector_ops(&nats.url())
        .args(["replay", "--until", "2", "--apply"])
        .output(STEP)
        .await?;
    assert_eq!(refused.code()?, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--apply"), "{}", refused.stderr);
    // The live buckets were not touched.
    assert_eq!(
        listed(now.base(), "/v0.1/servers").await?,
        [(SERVER.to_owned(), "2.0.0".to_owned())]
    );
    Ok(())
}

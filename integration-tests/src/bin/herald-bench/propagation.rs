//! Scenario 1, propagation latency: an event published on HERALD_EVENTS → folded by
//! `herald-projector` → served by `herald-api` → received by an SSE subscriber, at
//! 1,000 events/s and at increasing rates up to the highest one sustained; and a
//! Kubernetes object change → `herald-watcher` → … → SSE receipt. Baseline: a raw
//! JetStream publish → receipt by a plain subscriber, at the same rates.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use herald_core::Kind;
use herald_core::annotations as ann;
use herald_integration_tests::events::message;
use herald_integration_tests::herald::HeraldProcess;
use herald_integration_tests::kube::KubeApi;
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::objects;
use kube::api::{Api as KubeObjects, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::common::{self, FEED, Latency, MARKER, SseReader};
use crate::report::{Report, Row, per_second, ratio};

/// Objects the events rotate over (a change of each one is its own SSE upsert).
const OBJECTS: usize = 100;
/// How long after the last send a step waits for the stragglers.
const DRAIN: Duration = Duration::from_secs(5);
const TARGET_P99_MS: f64 = 3.0;

/// What one paced step measured.
#[derive(Debug, Clone, Copy)]
struct Step {
    rate: f64,
    /// Rate the publisher actually achieved.
    sent_rate: f64,
    lost: usize,
    /// Publish → receipt at the last hop (the SSE subscriber, or the raw subscriber).
    latency: Latency,
    /// Publish → the value in the registry bucket (the projector's hop), when measured.
    bucket: Option<Latency>,
}

impl Step {
    /// Kept pace, lost nothing, and latency stays bounded (not a growing queue).
    fn sustained(&self) -> bool {
        self.lost == 0 && self.sent_rate >= 0.95 * self.rate && self.latency.p99 < 100.0
    }

    fn json(&self) -> Value {
        json!({"rate": self.rate, "sent_rate": self.sent_rate, "lost": self.lost,
               "latency": self.latency.json(), "sustained": self.sustained(),
               "to_bucket": self.bucket.map(|b| b.json())})
    }
}

pub async fn run(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let (seconds_at_1000, step_seconds, rates): (f64, f64, &[f64]) = if quick {
        (3.0, 2.0, &[2_000.0, 5_000.0])
    } else {
        (10.0, 5.0, &[2_000.0, 5_000.0, 10_000.0, 20_000.0, 40_000.0])
    };
    let dir = common::scenario_dir("propagation")?;
    let (nats, js) = common::nats_with_stream().await?;
    let mut projector = common::spawn_projector(&nats, &dir)?;
    let (api, _) = common::start_api(&nats, &dir, &[]).await?;

    // Raw baseline on its own stream of the same server.
    js.create_stream(stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let raw_sub = nats.client().await.subscribe("bench.raw").await?;
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures::StreamExt as _;
        let mut raw_sub = raw_sub;
        while let Some(message) = raw_sub.next().await {
            let at = Instant::now();
            if let Some(n) = marker_in(&message.payload) {
                let _ = raw_tx.send((0, n, at));
            }
        }
    });

    let mut sse = SseReader::connect(api.port(), FEED).await?;
    sse.wait_for(b"event: snapshot").await?;
    let (sse_tx, mut sse_rx) = mpsc::unbounded_channel();
    // The projector's hop: the bucket's values as they are written.
    let bucket = common::registry_bucket(&js).await?;
    let mut values = bucket.watch(">").await?;
    let bucket_tx = sse_tx.clone();
    tokio::spawn(async move {
        use futures::StreamExt as _;
        while let Some(Ok(entry)) = values.next().await {
            let at = Instant::now();
            if let Some(n) = marker_in(&entry.value)
                && bucket_tx.send((0, n, at)).is_err()
            {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Ok(n) = sse.next_marker().await {
            if sse_tx.send((1, n, Instant::now())).is_err() {
                break;
            }
        }
    });

    // Warm-up: every object exists once, so later events are plain updates.
    let mut next_seq = 1u64;
    let warm = paced_publish(Path::Herald, &js, &mut sse_rx, next_seq, OBJECTS, 500.0).await?;
    anyhow::ensure!(
        warm.lost == 0,
        "warm-up: {} events never reached SSE",
        warm.lost
    );
    next_seq += OBJECTS as u64;

    let mut steps = Vec::new();
    let mut raw_steps = Vec::new();
    for (i, rate) in std::iter::once(1_000.0)
        .chain(rates.iter().copied())
        .enumerate()
    {
        let seconds = if i == 0 {
            seconds_at_1000
        } else {
            step_seconds
        };
        let count = (rate * seconds) as usize;
        let raw = paced_publish(Path::Raw, &js, &mut raw_rx, next_seq, count, rate).await?;
        let herald = paced_publish(
            Path::Herald,
            &js,
            &mut sse_rx,
            next_seq + count as u64,
            count,
            rate,
        )
        .await?;
        next_seq += 2 * count as u64;
        projector.ensure_running()?;
        eprintln!(
            "   {rate}/s: herald {} lost {} (sent {:.0}/s; to the bucket {}) | raw {} lost {}",
            herald.latency.show(),
            herald.lost,
            herald.sent_rate,
            herald.bucket.unwrap_or_default().show(),
            raw.latency.show(),
            raw.lost
        );
        let sustained = herald.sustained();
        steps.push(herald);
        raw_steps.push(raw);
        if !sustained && i > 0 {
            break;
        }
    }

    // The API hop's own baseline: axum SSE from memory at 1,000/s, with the socket
    // options of herald-api (Nagle on) and with TCP_NODELAY.
    let count = (1_000.0 * seconds_at_1000) as usize;
    let sse_nagle = sse_from_memory(false, count, 1_000.0).await?;
    let sse_nodelay = sse_from_memory(true, count, 1_000.0).await?;
    eprintln!(
        "   axum SSE from memory at 1000/s: Nagle on {} | TCP_NODELAY {}",
        sse_nagle.latency.show(),
        sse_nodelay.latency.show()
    );

    let at_1000 = steps[0];
    let raw_1000 = raw_steps[0];
    report.row(Row {
        scenario: "propagation",
        figure: "event → SSE at 1,000/s".into(),
        herald: at_1000.latency.show(),
        baseline: format!("raw JetStream {}", raw_1000.latency.show()),
        ratio: format!("p99 {}", ratio(at_1000.latency.p99, raw_1000.latency.p99)),
        target: format!("p99 ≤ {TARGET_P99_MS} ms"),
        met: Some(at_1000.lost == 0 && at_1000.latency.p99 <= TARGET_P99_MS),
    });
    if let Some(bucket) = at_1000.bucket {
        report.row(Row {
            scenario: "propagation",
            figure: "of which event → registry bucket (projector hop) at 1,000/s".into(),
            herald: bucket.show(),
            baseline: format!("raw JetStream {}", raw_1000.latency.show()),
            ratio: format!("p99 {}", ratio(bucket.p99, raw_1000.latency.p99)),
            target: "—".into(),
            met: None,
        });
    }
    report.row(Row {
        scenario: "propagation",
        figure: "axum SSE from memory at 1,000/s, Nagle on (as herald-api)".into(),
        herald: sse_nagle.latency.show(),
        baseline: format!("with TCP_NODELAY {}", sse_nodelay.latency.show()),
        ratio: format!(
            "p99 {}",
            ratio(sse_nagle.latency.p99, sse_nodelay.latency.p99)
        ),
        target: "—".into(),
        met: None,
    });
    let best = steps.iter().zip(&raw_steps).rfind(|(s, _)| s.sustained());
    if let Some((best, raw)) = best {
        report.row(Row {
            scenario: "propagation",
            figure: format!(
                "highest sustained rate ({} tried)",
                per_second(steps[steps.len() - 1].rate)
            ),
            herald: format!("{} — {}", per_second(best.rate), best.latency.show()),
            baseline: format!("raw JetStream {}", raw.latency.show()),
            ratio: format!("p99 {}", ratio(best.latency.p99, raw.latency.p99)),
            target: "—".into(),
            met: None,
        });
    }

    let kube = kube_path(&nats, &dir, &api, quick).await;
    let kube_json = match &kube {
        Ok((latency, watch)) => {
            report.row(Row {
                scenario: "propagation",
                figure: "Kubernetes change → SSE".into(),
                herald: latency.show(),
                baseline: format!("kube watch {}", watch.show()),
                ratio: format!("p99 {}", ratio(latency.p99, watch.p99)),
                target: "—".into(),
                met: None,
            });
            json!({"herald": latency.json(), "kube_watch": watch.json()})
        }
        Err(error) => {
            eprintln!("   Kubernetes path failed: {error:#}");
            json!({"error": format!("{error:#}")})
        }
    };
    report.figures(
        "propagation",
        json!({
            "herald_steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
            "raw_steps": raw_steps.iter().map(Step::json).collect::<Vec<_>>(),
            "axum_sse_nagle": sse_nagle.json(),
            "axum_sse_nodelay": sse_nodelay.json(),
            "kubernetes": kube_json,
        }),
    );
    drop(api);
    drop(projector);
    kube.map(|_| ())
}

/// The marker number in a payload.
fn marker_in(bytes: &[u8]) -> Option<u64> {
    let at = bytes.windows(MARKER.len()).position(|w| w == MARKER)?;
    let digits = &bytes[at + MARKER.len()..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Where a paced step publishes.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// Applied events on HERALD_EVENTS, as the watcher publishes them; receipts from the
    /// bucket and the SSE subscriber (two hops).
    Herald,
    /// The same payload on a plain stream, read by a subscriber (one hop).
    Raw,
}

/// Publishes `count` applied events (markers `first..first+count`) at `rate` on `path`
/// and collects their receipts.
async fn paced_publish(
    path: Path,
    js: &jetstream::Context,
    receipts: &mut mpsc::UnboundedReceiver<(usize, u64, Instant)>,
    first: u64,
    count: usize,
    rate: f64,
) -> anyhow::Result<Step> {
    let js = js.clone();
    let hops = match path {
        Path::Herald => 2,
        Path::Raw => 1,
    };
    paced(receipts, hops, first, count, rate, move |seq| {
        let js = js.clone();
        async move {
            let object = usize::try_from(seq)? % OBJECTS;
            let event = common::applied(&common::record(0, object, seq)?);
            let ack = match path {
                Path::Herald => {
                    let (subject, headers, payload) = message(&event);
                    js.publish_with_headers(subject, headers, payload).await?
                }
                Path::Raw => js.publish("bench.raw", event.to_json().into()).await?,
            };
            Ok(Some(ack))
        }
    })
    .await
}

/// Sends `count` messages at `rate` (acknowledgements awaited off the send path), then
/// waits for every receipt at each of `hops` hops, or `DRAIN` after the last send.
async fn paced<F, Fut>(
    receipts: &mut mpsc::UnboundedReceiver<(usize, u64, Instant)>,
    hops: usize,
    first: u64,
    count: usize,
    rate: f64,
    send: F,
) -> anyhow::Result<Step>
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<Option<async_nats::jetstream::context::PublishAckFuture>>>
        + Send,
{
    while receipts.try_recv().is_ok() {}
    let (ack_tx, mut ack_rx) =
        mpsc::unbounded_channel::<async_nats::jetstream::context::PublishAckFuture>();
    let acks = tokio::spawn(async move {
        while let Some(ack) = ack_rx.recv().await {
            ack.await?;
        }
        anyhow::Ok(())
    });
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let publisher = tokio::spawn(async move {
        let mut sent = Vec::with_capacity(count);
        for i in 0..count {
            tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
            sent.push(Instant::now());
            let Some(ack) = send(first + i as u64).await? else {
                continue;
            };
            if ack_tx.send(ack).is_err() {
                break;
            }
        }
        anyhow::Ok(sent)
    });
    let mut received: Vec<Vec<Option<Instant>>> = vec![vec![None; count]; hops];
    let mut got = 0;
    let mut deadline = None;
    let mut publisher = Some(publisher);
    let mut sent = None;
    while got < count * hops {
        if publisher.as_ref().is_some_and(|p| p.is_finished()) {
            let handle = publisher.take().context("publisher")?;
            sent = Some(handle.await??);
            deadline = Some(tokio::time::Instant::now() + DRAIN);
        }
        let wait = match deadline {
            Some(deadline) => deadline.saturating_duration_since(tokio::time::Instant::now()),
            None => Duration::from_millis(50),
        };
        match tokio::time::timeout(wait, receipts.recv()).await {
            Ok(Some((hop, n, at))) => {
                if let Some(slot) = n
                    .checked_sub(first)
                    .and_then(|i| received.get_mut(hop)?.get_mut(usize::try_from(i).ok()?))
                    && slot.is_none()
                {
                    *slot = Some(at);
                    got += 1;
                }
            }
            Ok(None) => anyhow::bail!("the receiver stopped"),
            Err(_) if deadline.is_some() => break,
            Err(_) => {}
        }
    }
    let sent = match sent {
        Some(sent) => sent,
        None => publisher.take().context("publisher")?.await??,
    };
    acks.await??;
    let span = match (sent.first(), sent.last()) {
        (Some(a), Some(b)) if count > 1 => (*b - *a).as_secs_f64(),
        _ => 0.0,
    };
    let sent_rate = if span > 0.0 {
        (count - 1) as f64 / span
    } else {
        rate
    };
    let hop = |received: &[Option<Instant>]| -> Vec<f64> {
        sent.iter()
            .zip(received)
            .filter_map(|(s, r)| r.map(|r| common::ms(r.saturating_duration_since(*s))))
            .collect()
    };
    let mut samples = hop(&received[hops - 1]);
    let bucket = (hops > 1).then(|| Latency::of(&mut hop(&received[0])));
    Ok(Step {
        rate,
        sent_rate,
        lost: count - samples.len(),
        latency: Latency::of(&mut samples),
        bucket,
    })
}

/// The Kubernetes path: a watcher on a real API server feeds the same NATS; each
/// change of an annotation is timed to its SSE receipt. Baseline: the API server's own
/// watch event for the change.
async fn kube_path(
    nats: &NatsServer,
    dir: &herald_integration_tests::dir::TestDir,
    api: &HeraldProcess,
    quick: bool,
) -> anyhow::Result<(Latency, Latency)> {
    let changes = if quick { 20 } else { 200 };
    let kube = KubeApi::start().await?;
    let mut watcher = common::spawn_watcher(nats, &kube, dir, "cluster-k8s")?;
    let objects = mcpservers(&kube, "tools");
    let body = mcpserver("kube-0", 1);
    let object: DynamicObject = serde_json::from_value(body)?;
    objects.create(&PostParams::default(), &object).await?;
    let patch = Patch::Merge(json!({"status": {"phase": "Running"}}));
    objects
        .patch_status("kube-0", &PatchParams::default(), &patch)
        .await?;

    let mut sse = SseReader::connect(api.port(), FEED).await?;
    let mut watch = {
        use futures::StreamExt as _;
        use kube::runtime::watcher;
        watcher::watcher(
            objects.clone(),
            watcher::Config::default().fields("metadata.name=kube-0"),
        )
        .boxed()
    };
    common::within_start("the first Kubernetes object on SSE", async {
        loop {
            if sse.next_marker().await? == 1 {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .map_err(|e| watcher.explain(e))?;

    let mut herald = Vec::new();
    let mut watched = Vec::new();
    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures::StreamExt as _;
        while let Some(event) = watch.next().await {
            let at = Instant::now();
            if let Ok(kube::runtime::watcher::Event::Apply(object)) = event {
                let description = object
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ann::REGISTRY_DESCRIPTION))
                    .and_then(|d| marker_in(d.as_bytes()));
                if let Some(n) = description
                    && watch_tx.send((n, at)).is_err()
                {
                    break;
                }
            }
        }
    });
    for n in 2..2 + changes {
        let patch = Patch::Merge(json!({"metadata": {"annotations": {
            ann::REGISTRY_DESCRIPTION: format!("bench-seq-{n}- from Kubernetes")}}}));
        let started = Instant::now();
        objects
            .patch("kube-0", &PatchParams::default(), &patch)
            .await?;
        common::within_start("a Kubernetes change on SSE", async {
            loop {
                if sse.next_marker().await? == n {
                    return anyhow::Ok(());
                }
            }
        })
        .await
        .map_err(|e| watcher.explain(e))?;
        herald.push(common::ms(started.elapsed()));
        while let Ok((seen, at)) = watch_rx.try_recv() {
            if seen == n {
                watched.push(common::ms(at.saturating_duration_since(started)));
            }
        }
    }
    watcher.ensure_running()?;
    Ok((Latency::of(&mut herald), Latency::of(&mut watched)))
}

/// MCPServers (v1alpha1) in `namespace`.
pub fn mcpservers(kube: &KubeApi, namespace: &str) -> KubeObjects<DynamicObject> {
    objects::api_at(kube.client(), Kind::MCPServer, "v1alpha1", namespace)
}

/// An opted-in MCPServer whose description carries marker `seq`.
pub fn mcpserver(name: &str, seq: u64) -> Value {
    json!({
        "apiVersion": "toolhive.stacklok.dev/v1alpha1",
        "kind": "MCPServer",
        "metadata": {
            "name": name,
            "annotations": {
                ann::REGISTRY_EXPORT: "true",
                ann::REGISTRY_DESCRIPTION: format!("bench-seq-{seq}- from Kubernetes"),
            },
        },
        "spec": {"transport": "sse", "port": 9090, "image": "ghcr.io/acme/bench:1.0.0"},
    })
}

/// An axum SSE feed from memory in this process, one event per message of a broadcast
/// channel, paced at `rate`: the API hop without the API. `nodelay` sets TCP_NODELAY on
/// accepted sockets (axum 0.8's `serve` does not by default).
async fn sse_from_memory(nodelay: bool, count: usize, rate: f64) -> anyhow::Result<Step> {
    use axum::response::sse::{Event, Sse};
    use axum::serve::ListenerExt as _;
    use std::convert::Infallible;

    let (tx, _) = tokio::sync::broadcast::channel::<u64>(65_536);
    let feed_tx = tx.clone();
    let padding = "x".repeat(900);
    let app = axum::Router::new().route(
        FEED,
        axum::routing::get(move || {
            let rx = feed_tx.subscribe();
            let padding = padding.clone();
            async move {
                let events = futures::stream::unfold(rx, move |mut rx| {
                    let padding = padding.clone();
                    async move {
                        let n = rx.recv().await.ok()?;
                        let data = format!("{{\"description\":\"bench-seq-{n}- {padding}\"}}");
                        Some((
                            Ok::<_, Infallible>(Event::default().event("upsert").data(data)),
                            rx,
                        ))
                    }
                });
                Sse::new(events)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = if nodelay {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await })
    } else {
        tokio::spawn(async move { axum::serve(listener, app).await })
    };
    let mut sse = SseReader::connect(port, FEED).await?;
    let (receipt_tx, mut receipts) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(n) = sse.next_marker().await {
            if receipt_tx.send((0, n, Instant::now())).is_err() {
                break;
            }
        }
    });
    // The handler subscribes once the request arrived; wait for it.
    while tx.receiver_count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let step = paced(&mut receipts, 1, 1, count, rate, move |n| {
        let tx = tx.clone();
        async move {
            tx.send(n)
                .map_err(|_| anyhow::anyhow!("no SSE subscriber"))?;
            Ok(None)
        }
    })
    .await;
    reader.abort();
    server.abort();
    step
}

//! What every scenario shares: latency statistics, benchmark events and stored
//! values, Herald's processes started from the release folder (through the harness's
//! `Herald` builder, with only the flags named here), a light SSE reader, resident
//! memory, and pipelined writes.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, kv};
use chrono::{DateTime, TimeZone as _, Utc};
use futures::StreamExt as _;
use herald_core::names::{DeploymentKey, bucket_name};
use herald_core::projection::{Fold, fold_applied};
use herald_core::record::{Phase, Remote, RemoteTransport};
use herald_core::{ClusterId, DeploymentRecord, Event, EventData, Kind, ObjectRef, RegistryName};
use herald_integration_tests::dir::TestDir;
use herald_integration_tests::events::message;
use herald_integration_tests::herald::{Herald, HeraldProcess};
use herald_integration_tests::kube::KubeApi;
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::timeout::eventually;
use herald_runtime::stream::StreamArgs;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Startup of a Herald process (including loading 100,000 deployments) is well below this.
pub const START: Duration = Duration::from_secs(120);
/// Writes kept in flight by pipelined writers (the baseline figure).
pub const IN_FLIGHT: usize = 64;
/// Marks a change so a reader finds which one it is: `bench-seq-<n>-`.
pub const MARKER: &[u8] = b"bench-seq-";

// ---------------------------------------------------------------- statistics

/// Latencies in milliseconds, summarised.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(samples: &mut [f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self {
            count: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        }
    }

    pub fn json(&self) -> Value {
        json!({"count": self.count, "p50_ms": self.p50, "p99_ms": self.p99, "max_ms": self.max})
    }

    pub fn show(&self) -> String {
        format!(
            "p50 {:.2} / p99 {:.2} / max {:.2} ms",
            self.p50, self.p99, self.max
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- events and values

pub fn at(millis: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
        + chrono::Duration::milliseconds(millis)
}

/// A watcher-like record of MCPServer `obj-<object>` in `cluster-<cluster>`; `seq`
/// orders its versions and is written into the description as the marker.
pub fn record(cluster: usize, object: usize, seq: u64) -> anyhow::Result<DeploymentRecord> {
    let name = format!("obj-{object}");
    Ok(DeploymentRecord {
        v: 1,
        cluster: format!("cluster-{cluster}").parse::<ClusterId>()?,
        registry: "default".parse::<RegistryName>()?,
        object: ObjectRef::new(Kind::MCPServer, "tools", &name).map_err(anyhow::Error::msg)?,
        uid: format!("uid-{cluster}-{object}"),
        resource_version: seq.to_string(),
        generation: Some(1),
        created_at: Some(at(0)),
        observed_at: at(i64::try_from(seq)?),
        changed_at: None,
        epoch: 1,
        server_name: format!("com.example.bench/server-{object}").parse()?,
        version: "1.0.0".to_owned(),
        description: format!("bench-seq-{seq}- an MCP server for benchmarks"),
        title: Some(name.clone()),
        icon: None,
        category: Some("search".to_owned()),
        tools: vec!["search".to_owned(), "fetch".to_owned()],
        remote: Remote {
            transport: RemoteTransport::StreamableHttp,
            url: format!("http://mcp-{name}-proxy.tools.svc.cluster.local:8080/mcp"),
            headers: Vec::new(),
            extra: Default::default(),
        },
        phase: Phase::Ready,
        image: Some("ghcr.io/acme/bench:1.0.0".to_owned()),
        transport: "streamable-http".to_owned(),
        group: None,
        tool_definitions: Vec::new(),
        authz_claims: None,
        package: None,
    })
}

pub fn applied(record: &DeploymentRecord) -> Event {
    Event::new(
        EventData::Applied(Box::new(record.clone())),
        record.observed_at,
    )
}

/// Key and value the projector stores for `record` (fresh, at stream sequence `seq`).
pub fn stored(record: &DeploymentRecord, seq: u64) -> anyhow::Result<(String, bytes::Bytes)> {
    let key = DeploymentKey::new(record.cluster.clone(), record.object.clone()).to_string();
    let Fold::Write(value) = fold_applied(None, record, seq) else {
        bail!("fold_applied refused a fresh record");
    };
    Ok((key, value.to_json().into()))
}

/// HERALD_EVENTS as the binaries create it.
pub async fn ensure_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    StreamArgs {
        stream_max_age: Duration::from_secs(24 * 3600),
        stream_replicas: 1,
        stream_duplicate_window: Duration::from_secs(120),
        stream_max_bytes: None,
        stream_max_messages: None,
    }
    .ensure(js)
    .await?;
    Ok(())
}

/// A nats-server with HERALD_EVENTS, and JetStream on it.
pub async fn nats_with_stream() -> anyhow::Result<(NatsServer, jetstream::Context)> {
    let nats = NatsServer::start().await?;
    let js = nats.jetstream().await;
    ensure_stream(&js).await?;
    Ok((nats, js))
}

/// The registry bucket `herald-default`, as the projector creates it.
pub async fn registry_bucket(js: &jetstream::Context) -> anyhow::Result<kv::Store> {
    Ok(js
        .create_key_value(kv::Config {
            bucket: bucket_name(&"default".parse()?),
            history: 1,
            ..Default::default()
        })
        .await?)
}

/// Publishes `count` applied events (`objects` objects in `clusters` clusters, round
/// robin), `IN_FLIGHT` acknowledgements outstanding; returns the rate.
pub async fn publish_events(
    js: &jetstream::Context,
    count: usize,
    clusters: usize,
    objects: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let js = js.clone();
    let mut acks = futures::stream::iter(0..count)
        .map(|i| {
            let js = js.clone();
            async move {
                let r = record(i % clusters, (i / clusters) % objects, i as u64 + 1)?;
                let (subject, headers, payload) = message(&applied(&r));
                js.publish_with_headers(subject, headers, payload)
                    .await?
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(done) = acks.next().await {
        done?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------- processes

// Quiet logs (`Herald::quiet`): the benchmark measures work, not logging.

/// `herald-projector run` on `nats`, health on a free port; not waited for (a scenario
/// times its start itself).
pub fn spawn_projector(nats: &NatsServer, dir: &TestDir) -> anyhow::Result<HeraldProcess> {
    Herald::projector(&nats.url())
        .quiet()
        .dir(dir.path())
        .log_name("herald-projector.log")
        .spawn()
}

/// `herald-watcher` for `cluster` on `kube`, feeding `nats`; not waited for.
pub fn spawn_watcher(
    nats: &NatsServer,
    kube: &KubeApi,
    dir: &TestDir,
    cluster: &str,
) -> anyhow::Result<HeraldProcess> {
    Herald::watcher(kube, cluster, &nats.url())
        .quiet()
        .flag("--heartbeat-interval", "1h")
        .dir(dir.path())
        .log_name("herald-watcher.log")
        .spawn()
}

/// Starts `herald-api` on `nats` and waits until `/readyz` answers 200; returns it
/// with the time from spawn to ready.
pub async fn start_api(
    nats: &NatsServer,
    dir: &TestDir,
    extra: &[&str],
) -> anyhow::Result<(HeraldProcess, Duration)> {
    let api = Herald::api(&nats.url())
        .quiet()
        // `quiet` drops the harness's defaults: anonymous unless `extra` says otherwise
        // (herald-api's own default is oauth).
        .default_flag("--auth-mode", "anonymous")
        .flag("--discovery-interval", "200ms")
        .args(extra)
        .dir(dir.path())
        .log_name("herald-api.log")
        .ready_within(START);
    let started = Instant::now();
    let api = api.start().await?;
    Ok((api, started.elapsed()))
}

/// Waits until the first page of the default registry satisfies `check`.
pub async fn wait_listing(
    api: &HeraldProcess,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{}/v0.1/servers?limit=100", api.base());
    eventually(START, what, || async {
        let Ok(response) = http.get(&url).send().await else {
            return Ok(None);
        };
        let Ok(body) = response.json::<Value>().await else {
            return Ok(None);
        };
        Ok(check(&body).then_some(()))
    })
    .await
    .map_err(|e| api.explain(e))
}

/// Resident and peak resident memory of a process, in MiB (`/proc/<pid>/status`).
pub fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("a number")?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

// ---------------------------------------------------------------- SSE

/// A bare HTTP/1.1 reader of one SSE feed: cheap enough for 10,000 at once. It does not
/// parse events; it finds markers (`bench-seq-<n>-`) in the bytes as they arrive.
#[derive(Debug)]
pub struct SseReader {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl SseReader {
    /// Connects, sends the request and waits for the status line and headers; fails
    /// unless the answer is 200.
    pub async fn connect(port: u16, path: &str) -> anyhow::Result<Self> {
        Self::connect_with(port, path, None).await
    }

    /// [`SseReader::connect`] with `Authorization: Bearer <token>`.
    pub async fn connect_with(port: u16, path: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let authorization = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n{authorization}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut reader = Self {
            stream,
            buffer: Vec::with_capacity(4096),
        };
        let end = loop {
            if let Some(end) = find(&reader.buffer, b"\r\n\r\n") {
                break end;
            }
            reader.fill().await?;
        };
        let head = String::from_utf8_lossy(&reader.buffer[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 200") {
            bail!("SSE {path}: {}", head.lines().next().unwrap_or_default());
        }
        reader.buffer.drain(..end + 4);
        Ok(reader)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the SSE stream ended");
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads until `needle` has arrived, dropping everything up to it.
    pub async fn wait_for(&mut self, needle: &[u8]) -> anyhow::Result<()> {
        loop {
            if let Some(at) = find(&self.buffer, needle) {
                self.buffer.drain(..at + needle.len());
                return Ok(());
            }
            self.keep_tail(needle.len());
            self.fill().await?;
        }
    }

    /// The next marker number in the feed.
    pub async fn next_marker(&mut self) -> anyhow::Result<u64> {
        loop {
            if let Some(at) = find(&self.buffer, MARKER) {
                let digits = &self.buffer[at + MARKER.len()..];
                if let Some(end) = digits.iter().position(|b| !b.is_ascii_digit()) {
                    let n = std::str::from_utf8(&digits[..end])?.parse()?;
                    self.buffer.drain(..at + MARKER.len() + end);
                    return Ok(n);
                }
                // The number continues in the next read.
                self.buffer.drain(..at);
            } else {
                self.keep_tail(MARKER.len());
            }
            self.fill().await?;
        }
    }

    /// Keeps only what could be the start of a needle split across reads.
    fn keep_tail(&mut self, needle: usize) {
        let keep = needle.saturating_sub(1);
        if self.buffer.len() > keep {
            self.buffer.drain(..self.buffer.len() - keep);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The events feed of the default registry.
pub const FEED: &str = "/v0.1/x/dev.herald/events";

/// A folder for one scenario's logs.
pub fn scenario_dir(name: &str) -> anyhow::Result<TestDir> {
    TestDir::new(&format!("bench-{name}"))
}

/// `fut` bounded by [`START`].
pub async fn within_start<T>(
    what: &str,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    herald_integration_tests::timeout::within(START, what, fut).await?
}

/// CPU time (user + system) a process has used so far, in seconds (`/proc/<pid>/stat`,
/// at the usual 100 ticks per second).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("stat field")?.parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

//! herald-api defends itself: a real `herald-api` on a real nats-server, attacked over raw
//! TCP — slow, silent, unused and stalled connections, oversized heads, connection floods,
//! SSE slot hoarding — while other clients are still served.
//!
//! All of 127.0.0.0/8 is loopback on Linux, so one test is several clients: each socket
//! binds the source address of the client it plays ([`ALICE`], [`BOB`], …); the test
//! itself reads `/metrics` as [`OBSERVER`]. Timeouts are set short by flags, and every wait
//! is bounded.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use async_nats::jetstream::{self, kv};
use chrono::{TimeZone as _, Utc};
use futures::StreamExt as _;
use herald_core::names::{DeploymentKey, bucket_name};
use herald_core::projection::{Fold, fold_applied};
use herald_core::record::{
    DeploymentRecord, Header, Phase, RECORD_VERSION, Remote, RemoteTransport,
};
use herald_core::{Kind, ObjectRef};
use herald_integration_tests::dir::TestDir;
use herald_integration_tests::herald::{Herald, HeraldProcess};
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::process::status_kib;
use herald_integration_tests::timeout::{eventually, within};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

const START: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(15);
/// How late a timeout may fire on a busy test machine.
const MARGIN: Duration = Duration::from_millis(1500);

const ALICE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const BOB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const CAROL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const DAVE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const ERIN: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
/// Reads /metrics (its own connections count like anyone's).
const OBSERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 200);

const FEED: &str = "/v0.1/x/dev.herald/events";

// ---------------------------------------------------------------- the API and its clients

/// A nats-server and a herald-api with the flags of one test.
struct Env {
    api: HeraldProcess,
    addr: SocketAddr,
    _nats: NatsServer,
    _dir: TestDir,
}

impl Env {
    async fn start(name: &str, flags: &[&str]) -> anyhow::Result<Self> {
        let dir = TestDir::new(name)?;
        let nats = within(START, "nats-server", NatsServer::start()).await??;
        Self::start_api(dir, nats, flags).await
    }

    async fn start_api(dir: TestDir, nats: NatsServer, flags: &[&str]) -> anyhow::Result<Self> {
        let api = Herald::api(&nats.url())
            .dir(dir.path())
            .args(flags)
            .start()
            .await?;
        let addr = api.base().trim_start_matches("http://").parse()?;
        Ok(Self {
            api,
            addr,
            _nats: nats,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.api.process().pid()
    }

    async fn connect(&self, from: Ipv4Addr) -> anyhow::Result<TcpStream> {
        connect_from(from, self.addr, None).await
    }

    /// `GET path` from `from` on a connection of its own, closed after the response.
    async fn get(&self, from: Ipv4Addr, path: &str) -> anyhow::Result<Response> {
        let mut stream = self.connect(from).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        within(STEP, &format!("GET {path}"), stream.read_to_end(&mut raw)).await??;
        Response::parse(&raw)
    }

    /// The value of one series of /metrics, e.g. `herald_api_connections_open` or
    /// `herald_api_connections_dropped_total{reason="idle_timeout"}`.
    async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let response = self.get(OBSERVER, "/metrics").await?;
        ensure!(response.status == 200, "/metrics: {}", response.status);
        let text = String::from_utf8(response.body)?;
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .with_context(|| format!("no series {series} in /metrics"))?;
        Ok(line.trim().parse()?)
    }

    /// Waits until `series` satisfies `check` (polling /metrics); its last value.
    async fn until_metric(&self, series: &str, check: impl Fn(f64) -> bool) -> anyhow::Result<f64> {
        eventually(STEP, &format!("{series} as expected"), || async {
            // While the server is full, the observer is refused like anyone: not yet.
            Ok(self.metric(series).await.ok().filter(|v| check(*v)))
        })
        .await
    }

    /// `GET` of the SSE feed from `from`: the open stream when it is served (200, read
    /// up to its first event), else the refusal.
    async fn subscribe(&self, from: Ipv4Addr) -> anyhow::Result<Result<TcpStream, Response>> {
        let mut stream = self.connect(from).await?;
        let request = format!("GET {FEED} HTTP/1.1\r\nHost: herald\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let served = within(STEP, "the feed's answer", async {
            loop {
                let n = stream.read(&mut chunk).await?;
                ensure!(n > 0, "closed before an answer");
                raw.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&raw);
                if text.starts_with("HTTP/1.1 200") {
                    if text.contains("event: snapshot") {
                        return Ok(true);
                    }
                } else if let Ok(response) = Response::parse(&raw)
                    && response.complete()
                {
                    return Ok(false);
                }
            }
        })
        .await??;
        if served {
            Ok(Ok(stream))
        } else {
            Ok(Err(Response::parse(&raw)?))
        }
    }
}

/// A TCP connection from `from` (bound before connecting), with a small receive buffer
/// when `recv_buffer` says so.
async fn connect_from(
    from: Ipv4Addr,
    to: SocketAddr,
    recv_buffer: Option<u32>,
) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(SocketAddr::new(from.into(), 0))?;
    Ok(within(STEP, &format!("connecting from {from}"), socket.connect(to)).await??)
}

/// An HTTP/1.1 response as read off the wire.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn parse(raw: &[u8]) -> anyhow::Result<Self> {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no complete response head")?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .context("no status")?
            .parse()
            .context("status")?;
        Ok(Self {
            status,
            head,
            body: raw[end + 4..].to_vec(),
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn complete(&self) -> bool {
        self.header("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .is_some_and(|l| self.body.len() >= l)
    }
}

/// Reads (and discards) until the server closes the connection; how long that took
/// from `since`. A reset counts as closed.
async fn until_closed(
    stream: &mut TcpStream,
    since: Instant,
    bound: Duration,
) -> anyhow::Result<Duration> {
    let mut sink = vec![0u8; 64 * 1024];
    within(bound, "the server to close the connection", async {
        while stream.read(&mut sink).await.unwrap_or(0) > 0 {}
    })
    .await?;
    Ok(since.elapsed())
}

/// Whether the server has closed `stream` (without waiting: data still to read, or
/// nothing yet, is open).
fn is_closed(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    match stream.try_read(&mut probe) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// A keep-alive `GET /healthz` whose response is read in full; the connection stays open.
async fn one_request(stream: &mut TcpStream) -> anyhow::Result<()> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 1024];
    within(STEP, "the /healthz response", async {
        loop {
            let n = stream.read(&mut chunk).await?;
            ensure!(n > 0, "closed before the response");
            raw.extend_from_slice(&chunk[..n]);
            if let Ok(response) = Response::parse(&raw)
                && response.complete()
            {
                ensure!(response.status == 200, "/healthz: {}", response.status);
                return Ok(());
            }
        }
    })
    .await?
}

/// A slowloris: a request head sent one byte every `every`, never finished. Returns when
/// the server closes the connection: the time from connecting, and the bytes sent.
async fn dribble(mut stream: TcpStream, every: Duration) -> anyhow::Result<(Duration, usize)> {
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: herald\r\nX-Slow: ";
    let mut sent = 0;
    let mut sink = [0u8; 1024];
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            read = stream.read(&mut sink) => {
                if read.unwrap_or(0) == 0 {
                    return Ok((started.elapsed(), sent));
                }
            }
            _ = tick.tick() => {
                let byte = head.get(sent).copied().unwrap_or(b'a');
                if stream.write_all(&[byte]).await.is_err() {
                    return Ok((started.elapsed(), sent));
                }
                sent += 1;
            }
        }
    }
}

fn assert_about(took: Duration, timeout: Duration, what: &str) {
    assert!(
        took + Duration::from_millis(100) >= timeout && took <= timeout + MARGIN,
        "{what}: closed after {took:?}, the timeout is {timeout:?}"
    );
}

// ---------------------------------------------------------------- the process

fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Bytes received on established connections to local `port` and not yet read by the
/// process that owns them (/proc/net/tcp's rx_queue): zero once the API has read
/// everything its clients sent.
fn unread_bytes(port: u16) -> anyhow::Result<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let mut unread = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(queues)) =
            (fields.get(1), fields.get(3), fields.get(4))
        else {
            continue;
        };
        let local_port = local
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        if local_port != Some(port) || *state != "01" {
            continue;
        }
        let rx = queues.split(':').nth(1).context("rx_queue")?;
        unread += u64::from_str_radix(rx, 16)?;
    }
    Ok(unread)
}

/// Raises this process's open-file limit to its hard limit (herald-api inherits it).
fn raise_nofile() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

// ---------------------------------------------------------------- data

/// `count` deployments in the default registry, each with `tools` tools (about 45 bytes
/// each in the served JSON), written as the projector writes them.
async fn fill(js: &jetstream::Context, count: usize, tools: usize) -> anyhow::Result<()> {
    let kv = js
        .create_key_value(kv::Config {
            bucket: bucket_name(&"default".parse()?),
            history: 1,
            ..Default::default()
        })
        .await?;
    let at = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .context("date")?;
    for i in 0..count {
        let object = format!("big-{i:03}");
        let record = DeploymentRecord {
            v: RECORD_VERSION,
            cluster: "eu-1".parse()?,
            registry: "default".parse()?,
            object: ObjectRef::new(Kind::MCPServer, "tools", &object)
                .map_err(anyhow::Error::msg)?,
            uid: format!("uid-{object}"),
            resource_version: "1".into(),
            generation: Some(1),
            created_at: Some(at),
            observed_at: at,
            changed_at: None,
            epoch: 1,
            server_name: format!("io.example/{object}").parse()?,
            version: "1.0.0".into(),
            description: format!("{object}, with many tools"),
            title: None,
            icon: None,
            category: None,
            tools: (0..tools)
                .map(|t| format!("tool-{i:03}-{t:05}-xxxxxxxxxxxxxxxxxxxxxxxxxx"))
                .collect(),
            remote: Remote {
                transport: RemoteTransport::StreamableHttp,
                url: format!("https://{object}.eu-1.example.com/mcp"),
                headers: vec![Header::bearer_token()],
                extra: Default::default(),
            },
            phase: Phase::Ready,
            image: None,
            transport: "streamable-http".into(),
            group: None,
            tool_definitions: Vec::new(),
            authz_claims: None,
            package: None,
        };
        let key = DeploymentKey::new(record.cluster.clone(), record.object.clone()).to_string();
        let Fold::Write(value) = fold_applied(None, &record, i as u64 + 1) else {
            bail!("fold_applied wrote nothing for {object}");
        };
        kv.put(&key, value.to_json().into()).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn slow_silent_and_unused_connections_are_closed_by_the_header_read_timeout()
-> anyhow::Result<()> {
    let header_read = Duration::from_secs(1);
    let env = Env::start(
        "limits-header",
        &[
            "--header-read-timeout",
            "1s",
            "--idle-timeout",
            "5s",
            "--sse-keepalive",
            "1s",
        ],
    )
    .await?;

    // A slowloris (a byte every 100 ms, so never idle), a connection that sends
    // nothing, and one left unused after a request: all at once.
    let slowloris = async {
        let stream = env.connect(ALICE).await?;
        within(
            STEP,
            "the slowloris to be cut",
            dribble(stream, Duration::from_millis(100)),
        )
        .await?
    };
    let silent = async {
        let mut stream = env.connect(BOB).await?;
        until_closed(&mut stream, Instant::now(), STEP).await
    };
    let unused = async {
        let mut stream = env.connect(CAROL).await?;
        one_request(&mut stream).await?;
        until_closed(&mut stream, Instant::now(), STEP).await
    };
    let ((dribbled_for, sent), silent_for, unused_for) =
        futures::try_join!(slowloris, silent, unused)?;
    eprintln!(
        "slowloris closed after {dribbled_for:?} ({sent} bytes dribbled), silent after \
         {silent_for:?}, unused keep-alive after {unused_for:?}"
    );
    assert_about(dribbled_for, header_read, "slowloris");
    assert!(sent >= 5, "only {sent} bytes were dribbled");
    assert_about(silent_for, header_read, "silent connection");
    assert_about(unused_for, header_read, "unused keep-alive connection");

    env.until_metric(
        r#"herald_api_connections_dropped_total{reason="header_read_timeout"}"#,
        |n| n >= 3.0,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_idle_timeout_closes_connections_where_nothing_moves_but_not_live_sse_streams()
-> anyhow::Result<()> {
    let idle = Duration::from_secs(1);
    let env = Env::start(
        "limits-idle",
        &[
            "--header-read-timeout",
            "10s",
            "--idle-timeout",
            "1s",
            "--sse-keepalive",
            "200ms",
        ],
    )
    .await?;

    let unused = async {
        let mut stream = env.connect(ALICE).await?;
        one_request(&mut stream).await?;
        until_closed(&mut stream, Instant::now(), STEP).await
    };
    // A subscriber that reads: keep-alives flow, so it outlives the idle timeout by far.
    let live = async {
        let Ok(mut stream) = env.subscribe(BOB).await? else {
            bail!("BOB's subscription was refused");
        };
        let started = Instant::now();
        let mut keepalives = 0;
        let mut chunk = [0u8; 1024];
        while started.elapsed() < idle * 4 {
            let n = within(STEP, "a keep-alive", stream.read(&mut chunk)).await??;
            ensure!(
                n > 0,
                "the live stream was closed after {:?}",
                started.elapsed()
            );
            keepalives += chunk[..n].windows(2).filter(|w| w == b":\n").count();
        }
        anyhow::Ok(keepalives)
    };
    let (unused_for, keepalives) = futures::try_join!(unused, live)?;
    eprintln!(
        "unused keep-alive closed after {unused_for:?}; the live stream got {keepalives} keep-alives in {:?}",
        idle * 4
    );
    assert_about(unused_for, idle, "unused keep-alive connection");
    assert!(keepalives >= 5, "{keepalives} keep-alives");

    env.until_metric(
        r#"herald_api_connections_dropped_total{reason="idle_timeout"}"#,
        |n| n >= 1.0,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_stalled_sse_reader_is_dropped_and_frees_its_slot() -> anyhow::Result<()> {
    let dir = TestDir::new("limits-stalled")?;
    let nats = within(START, "nats-server", NatsServer::start()).await??;
    // A snapshot of about 7 MB: more than the socket buffers on both sides hold.
    let entries = 160;
    fill(&nats.jetstream().await, entries, 1000).await?;
    let env = Env::start_api(
        dir,
        nats,
        &[
            "--idle-timeout",
            "1s",
            "--sse-keepalive",
            "200ms",
            "--max-sse-subscribers-per-client",
            "1",
        ],
    )
    .await?;
    env.until_metric(r#"herald_api_view_entries{registry="default"}"#, |n| {
        n == entries as f64
    })
    .await?;

    // Subscribes with a 4 KiB receive buffer and never reads.
    let started = Instant::now();
    let mut stalled = connect_from(CAROL, env.addr, Some(4096)).await?;
    stalled
        .write_all(format!("GET {FEED} HTTP/1.1\r\nHost: herald\r\n\r\n").as_bytes())
        .await?;
    env.until_metric("herald_api_sse_subscribers", |n| n == 1.0)
        .await?;
    // Its slot is taken: CAROL's share is one.
    let refused = env
        .subscribe(CAROL)
        .await?
        .err()
        .context("a second stream for CAROL")?;
    assert_eq!(refused.status, 429);

    let rss_stalled = status_kib(env.pid(), "VmRSS:")?;
    env.until_metric("herald_api_sse_subscribers", |n| n == 0.0)
        .await?;
    let freed_after = started.elapsed();
    until_closed(&mut stalled, started, STEP).await?;
    env.until_metric(
        r#"herald_api_connections_dropped_total{reason="idle_timeout"}"#,
        |n| n >= 1.0,
    )
    .await?;
    eprintln!(
        "stalled subscriber dropped {freed_after:?} after subscribing; RSS while stalled {rss_stalled} KiB"
    );
    assert!(freed_after < STEP, "{freed_after:?}");

    // The slot is CAROL's again.
    ensure!(
        env.subscribe(CAROL).await?.is_ok(),
        "CAROL could not subscribe again"
    );
    Ok(())
}

#[tokio::test]
async fn oversized_heads_are_answered_431_without_growing_memory() -> anyhow::Result<()> {
    let env = Env::start("limits-431", &[]).await?;
    let max = 16 * 1024;

    // A head just under the limit is served …
    let mut stream = env.connect(ALICE).await?;
    let pad = "a".repeat(max - 200);
    stream
        .write_all(
            format!(
                "GET /healthz HTTP/1.1\r\nHost: herald\r\nConnection: close\r\nX-Pad: {pad}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    within(STEP, "a response", stream.read_to_end(&mut raw)).await??;
    assert_eq!(Response::parse(&raw)?.status, 200);
    // … one that reaches it is answered 431 (exactly the limit, unfinished: the server
    // has read every byte, so the answer is not lost to a reset).
    let mut stream = env.connect(ALICE).await?;
    let start = b"GET /healthz HTTP/1.1\r\nHost: herald\r\nX-Pad: ";
    let mut head = start.to_vec();
    head.resize(max, b'a');
    stream.write_all(&head).await?;
    let mut raw = Vec::new();
    within(STEP, "the 431", stream.read_to_end(&mut raw)).await??;
    assert_eq!(Response::parse(&raw)?.status, 431);

    // The flood of issue 14: 390 KB heads, 300 at once from three addresses.
    let before = status_kib(env.pid(), "VmRSS:")?;
    let flood = futures::stream::iter((0..300).map(|i| {
        let from = [BOB, CAROL, DAVE][i % 3];
        let env = &env;
        async move {
            let stream = env.connect(from).await?;
            let (mut read, mut write) = stream.into_split();
            let mut head = start.to_vec();
            head.resize(390 * 1024, b'a');
            let send = async {
                // Fails once the server has answered and closed.
                let _ = write.write_all(&head).await;
            };
            let answer = async {
                let mut raw = Vec::new();
                let mut chunk = [0u8; 1024];
                while let Ok(n) = read.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&chunk[..n]);
                }
                raw.starts_with(b"HTTP/1.1 431")
            };
            let ((), got_431) = within(STEP, "a 390 KB head to be refused", async {
                tokio::join!(send, answer)
            })
            .await?;
            anyhow::Ok(got_431)
        }
    }))
    .buffer_unordered(300)
    .collect::<Vec<_>>()
    .await;
    let mut answered = 0;
    for result in flood {
        answered += usize::from(result?);
    }
    let after = status_kib(env.pid(), "VmRSS:")?;
    let peak = status_kib(env.pid(), "VmHWM:")?;
    eprintln!(
        "300 heads of 390 KB: {answered} answered 431, the rest reset; RSS {before} KiB before, \
         {after} KiB after, peak {peak} KiB"
    );
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    assert!(
        peak < before + 64 * 1024,
        "peak RSS {peak} KiB (from {before} KiB)"
    );
    let refused = env
        .until_metric(
            r#"herald_api_connections_dropped_total{reason="header_too_large"}"#,
            |n| n >= 301.0,
        )
        .await?;
    eprintln!("header_too_large drops: {refused}");
    Ok(())
}

#[tokio::test]
async fn a_connection_flood_from_one_address_is_capped_and_other_addresses_are_served()
-> anyhow::Result<()> {
    let env = Env::start(
        "limits-flood",
        &[
            "--max-connections",
            "60",
            "--max-connections-per-client",
            "20",
            "--header-read-timeout",
            "60s",
            "--idle-timeout",
            "60s",
        ],
    )
    .await?;

    // ALICE opens 100 connections, each with an unfinished request.
    let mut flood = Vec::new();
    for _ in 0..100 {
        let mut stream = env.connect(ALICE).await?;
        let _ = stream.write_all(b"GET / HTTP/1.1\r\n").await;
        flood.push(stream);
    }
    // 20 are held, 80 closed as soon as accepted (the observer's connection is open too).
    env.until_metric(
        r#"herald_api_connections_refused_total{reason="max_connections_per_client"}"#,
        |n| n == 80.0,
    )
    .await?;
    assert_eq!(env.metric("herald_api_connections_open").await?, 21.0);
    eventually(STEP, "80 of ALICE's connections closed", || async {
        let closed = flood.iter().filter(|s| is_closed(s)).count();
        Ok((closed == 80).then_some(()))
    })
    .await?;

    // BOB is served meanwhile.
    let response = env.get(BOB, "/v0.1/servers").await?;
    assert_eq!(response.status, 200);

    // CAROL and DAVE take the remaining 40 (a client that saw its connection end has
    // its slot back: BOB's and the observer's are free): the server is full, and ERIN is
    // refused as soon as accepted, after every earlier connection was admitted.
    let mut more = Vec::new();
    for from in [CAROL, DAVE] {
        for _ in 0..20 {
            more.push(env.connect(from).await?);
        }
    }
    let mut erin = env.connect(ERIN).await?;
    until_closed(&mut erin, Instant::now(), STEP).await?;
    assert!(
        more.iter().all(|s| !is_closed(s)),
        "a connection within the caps was refused"
    );

    // Once DAVE leaves there is room again, and ERIN's refusal was the global cap's.
    more.truncate(20);
    env.until_metric(
        r#"herald_api_connections_refused_total{reason="max_connections"}"#,
        |n| n == 1.0,
    )
    .await?;
    assert_eq!(env.get(ERIN, "/v0.1/servers").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn memory_and_fds_stay_bounded_under_1500_hostile_connections() -> anyhow::Result<()> {
    raise_nofile()?;
    let env = Env::start(
        "limits-memory",
        &[
            "--max-connections",
            "1100",
            "--max-connections-per-client",
            "1000",
            "--header-read-timeout",
            "60s",
            "--idle-timeout",
            "60s",
        ],
    )
    .await?;
    let port = env.addr.port();
    for _ in 0..3 {
        env.get(BOB, "/v0.1/servers").await?;
    }
    let rss_before = status_kib(env.pid(), "VmRSS:")?;
    let fds_before = open_fds(env.pid())?;

    // 1,500 connections from ALICE, each holding a head of 15.5 KiB (under the 16 KiB
    // limit, so it is kept waiting for the rest): the most each can make the API hold.
    let started = Instant::now();
    let mut head = b"GET / HTTP/1.1\r\nHost: herald\r\nX-Pad: ".to_vec();
    head.resize(15 * 1024 + 512, b'a');
    let hostile: Vec<anyhow::Result<TcpStream>> = futures::stream::iter(0..1500)
        .map(|_| {
            let (env, head) = (&env, &head);
            async move {
                let mut stream = env.connect(ALICE).await?;
                // A refused connection may already be closed.
                let _ = stream.write_all(head).await;
                anyhow::Ok(stream)
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let hostile = hostile.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    env.until_metric(
        r#"herald_api_connections_refused_total{reason="max_connections_per_client"}"#,
        |n| n == 500.0,
    )
    .await?;
    env.until_metric("herald_api_connections_open", |n| n >= 1000.0)
        .await?;
    eventually(STEP, "herald-api to have read every byte sent", || async {
        Ok((unread_bytes(port)? == 0).then_some(()))
    })
    .await?;
    let rss = status_kib(env.pid(), "VmRSS:")?;
    let peak = status_kib(env.pid(), "VmHWM:")?;
    let fds = open_fds(env.pid())?;
    eprintln!(
        "1500 hostile connections in {:?}: 1000 held, 500 refused; RSS {rss_before} KiB → {rss} KiB \
         (peak {peak} KiB), fds {fds_before} → {fds}",
        started.elapsed()
    );
    assert!(
        rss < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss} KiB"
    );
    assert!(
        peak < rss_before + 64 * 1024,
        "peak RSS {peak} KiB (from {rss_before} KiB)"
    );
    assert!(fds <= fds_before + 1000 + 8, "fds {fds_before} → {fds}");

    // BOB is served during the flood.
    assert_eq!(env.get(BOB, "/v0.1/servers").await?.status, 200);

    // When they leave, their connections and descriptors go with them.
    drop(hostile);
    env.until_metric("herald_api_connections_open", |n| n <= 1.0)
        .await?;
    let fds_after = eventually(STEP, "descriptors given back", || async {
        let fds = open_fds(env.pid())?;
        Ok((fds <= fds_before + 2).then_some(fds))
    })
    .await?;
    eprintln!(
        "after the flood: fds {fds_after}, RSS {} KiB",
        status_kib(env.pid(), "VmRSS:")?
    );
    Ok(())
}

#[tokio::test]
async fn sse_slots_are_shared_per_client_address() -> anyhow::Result<()> {
    let env = Env::start(
        "limits-sse",
        &[
            "--max-sse-subscribers",
            "6",
            "--max-sse-subscribers-per-client",
            "2",
        ],
    )
    .await?;

    // ALICE gets her share, and no more.
    let mut alice = vec![
        env.subscribe(ALICE).await?.ok().context("ALICE's first")?,
        env.subscribe(ALICE).await?.ok().context("ALICE's second")?,
    ];
    let refused = env
        .subscribe(ALICE)
        .await?
        .err()
        .context("ALICE's third was served")?;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    let retry_after: u64 = refused
        .header("retry-after")
        .context("Retry-After")?
        .parse()?;
    assert!(retry_after > 0);
    let problem: serde_json::Value = serde_json::from_slice(&refused.body)?;
    assert_eq!(problem["status"], 429);
    assert_eq!(
        problem["type"],
        "urn:herald:problem:too-many-client-subscribers"
    );

    // BOB still subscribes; CAROL and DAVE fill the server; ERIN finds it full.
    let mut others = Vec::new();
    for from in [BOB, CAROL, CAROL, DAVE] {
        others.push(env.subscribe(from).await?.ok().context("a subscription")?);
    }
    let full = env
        .subscribe(ERIN)
        .await?
        .err()
        .context("ERIN was served on a full server")?;
    assert_eq!(full.status, 503);
    assert!(full.header("retry-after").is_some());

    // ALICE closes one stream: her slot comes back.
    drop(alice.pop());
    env.until_metric("herald_api_sse_subscribers", |n| n == 5.0)
        .await?;
    alice.push(
        env.subscribe(ALICE)
            .await?
            .ok()
            .context("ALICE's slot was not freed")?,
    );
    Ok(())
}

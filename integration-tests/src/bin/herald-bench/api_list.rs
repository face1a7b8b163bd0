//! Scenario 3, API list throughput: `GET /v0.1/servers?limit=100` over 20,000 servers,
//! 64 connections from a load generator in this process, requests/s and latency.
//! Baseline: an axum handler in this process returning the same bytes from memory,
//! under the same load.
//!
//! With authentication: the same scenario against a second herald-api in
//! `--auth-mode oauth` (a real OpenID provider on loopback, `integration-tests/oidc`), every
//! request carrying one bearer token (its keys cached after the first request, so one
//! signature check per request), beside the anonymous run of the same process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::oidc::OidcProvider;
use serde_json::{Value, json};

use crate::common::{self, IN_FLIGHT, Latency};
use crate::report::{Report, Row, per_second, ratio};

const CONNECTIONS: usize = 64;
const PATH: &str = "/v0.1/servers?limit=100";

/// What one load run measured.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub rate: f64,
    pub errors: usize,
    pub latency: Latency,
}

impl Load {
    fn json(&self) -> Value {
        json!({"requests_per_s": self.rate, "errors": self.errors, "latency": self.latency.json()})
    }
}

pub async fn run(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let (servers, seconds) = if quick { (20_000, 3.0) } else { (20_000, 10.0) };
    let dir = common::scenario_dir("api-list")?;
    let nats = NatsServer::start().await?;
    let js = nats.jetstream().await;
    fill(&js, 1, servers).await?;
    let (api, _) = common::start_api(&nats, &dir, &[]).await?;
    common::wait_listing(&api, "a full first page", |page| {
        page["servers"].as_array().map(Vec::len) == Some(100)
    })
    .await?;

    let url = format!("{}{PATH}", api.base());
    let response = reqwest::get(&url).await?;
    let content_type = response
        .headers()
        .get("content-type")
        .context("content-type")?
        .to_str()?
        .to_owned();
    let body = response.bytes().await?;
    let baseline_url = serve_bytes(content_type, body.clone()).await?;

    let cpu_before = common::cpu_seconds(api.pid())?;
    let herald = load(&url, Duration::from_secs_f64(seconds), None).await?;
    let api_cpu = common::cpu_seconds(api.pid())? - cpu_before;
    // The load runs a warm-up and the recorded span; count requests over both roughly.
    let cpu_per_request_us = api_cpu / (herald.rate * (seconds + 0.5)) * 1e6;
    eprintln!("   herald-api: about {cpu_per_request_us:.0} µs of its CPU per request");
    let (rss, peak) = common::memory_mib(api.pid())?;
    let baseline = load(&baseline_url, Duration::from_secs_f64(seconds), None).await?;
    report.row(Row {
        scenario: "api list",
        figure: format!("GET {PATH}, {servers} servers, {CONNECTIONS} connections"),
        herald: format!(
            "{} (p99 {:.2} ms)",
            per_second(herald.rate),
            herald.latency.p99
        ),
        baseline: format!(
            "same bytes from memory {} (p99 {:.2} ms)",
            per_second(baseline.rate),
            baseline.latency.p99
        ),
        ratio: ratio(herald.rate, baseline.rate),
        target: "≥ 0.50×".into(),
        met: Some(herald.errors == 0 && herald.rate >= 0.5 * baseline.rate),
    });
    report.figures(
        "api_list",
        json!({"servers": servers, "body_bytes": body.len(), "herald": herald.json(),
               "baseline": baseline.json(), "api_rss_mib": rss,
               "api_cpu_us_per_request": cpu_per_request_us, "api_peak_rss_mib": peak}),
    );
    drop(api);
    with_auth(report, &nats, servers, seconds).await
}

/// The same listing with `--auth-mode oauth` and one bearer token, beside the same
/// herald-api build anonymous (measured again here, right before, so both see the same
/// machine load).
async fn with_auth(
    report: &mut Report,
    nats: &NatsServer,
    servers: usize,
    seconds: f64,
) -> anyhow::Result<()> {
    const AUDIENCE: &str = "http://herald.bench";
    let idp = OidcProvider::start(&[]).await?;
    let now = chrono::Utc::now().timestamp();
    let token = idp
        .sign(
            json!({}),
            json!({"iss": idp.issuer(), "sub": "bench", "aud": AUDIENCE, "iat": now,
                   "exp": now + 3600, "groups": ["team-a"]}),
        )
        .await?;
    let (open_dir, oauth_dir) = (
        common::scenario_dir("api-list-anonymous")?,
        common::scenario_dir("api-list-oauth")?,
    );
    let (anonymous, _) = common::start_api(nats, &open_dir, &[]).await?;
    let (oauth, _) = common::start_api(
        nats,
        &oauth_dir,
        &[
            "--auth-mode",
            "oauth",
            "--oidc-issuer",
            idp.issuer(),
            "--oidc-audience",
            AUDIENCE,
        ],
    )
    .await?;
    common::wait_listing(&anonymous, "a full first page", |page| {
        page["servers"].as_array().map(Vec::len) == Some(100)
    })
    .await?;
    let oauth_url = format!("{}{PATH}", oauth.base());
    // Ready when the token reads a full page (the first request fetches the keys).
    common::within_start("the first page with a token", async {
        loop {
            let response = reqwest::Client::new()
                .get(&oauth_url)
                .bearer_auth(&token)
                .send()
                .await?;
            if response.status().is_success() {
                let page: Value = response.json().await?;
                if page["servers"].as_array().map(Vec::len) == Some(100) {
                    return anyhow::Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await?;
    let duration = Duration::from_secs_f64(seconds);
    let open = load(&format!("{}{PATH}", anonymous.base()), duration, None).await?;
    let authenticated = load(&oauth_url, duration, Some(&token)).await?;
    report.row(Row {
        scenario: "api list",
        figure: format!("the same with --auth-mode oauth, one bearer token, {servers} servers"),
        herald: format!(
            "{} (p99 {:.2} ms)",
            per_second(authenticated.rate),
            authenticated.latency.p99
        ),
        baseline: format!(
            "anonymous {} (p99 {:.2} ms)",
            per_second(open.rate),
            open.latency.p99
        ),
        ratio: ratio(authenticated.rate, open.rate),
        target: "≥ 0.70×".into(),
        met: Some(authenticated.errors == 0 && authenticated.rate >= 0.7 * open.rate),
    });
    report.figures(
        "api_list_auth",
        json!({"servers": servers, "anonymous": open.json(), "oauth": authenticated.json()}),
    );
    Ok(())
}

/// Writes `clusters × objects` deployments into `herald-default` as the projector
/// stores them, 64 puts in flight; returns the put rate.
pub async fn fill(
    js: &async_nats::jetstream::Context,
    clusters: usize,
    objects: usize,
) -> anyhow::Result<f64> {
    let bucket = common::registry_bucket(js).await?;
    let count = clusters * objects;
    let started = Instant::now();
    let mut puts = futures::stream::iter(0..count)
        .map(|i| {
            let bucket = bucket.clone();
            async move {
                let record = common::record(i % clusters, i / clusters, i as u64 + 1)?;
                let (key, value) = common::stored(&record, i as u64 + 1)?;
                anyhow::Ok(bucket.put(key, value).await?)
            }
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(done) = puts.next().await {
        done?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// An axum server answering every request with `body`; returns the list URL.
async fn serve_bytes(content_type: String, body: bytes::Bytes) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}{PATH}", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/v0.1/servers",
        axum::routing::get(move || {
            let (content_type, body) = (content_type.clone(), body.clone());
            async move { ([(axum::http::header::CONTENT_TYPE, content_type)], body) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// `CONNECTIONS` clients requesting `url` back to back for `duration` (after a short
/// warm-up), with `token` as a bearer token; requests/s and latency of the successful
/// ones.
pub async fn load(url: &str, duration: Duration, token: Option<&str>) -> anyhow::Result<Load> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()?;
    let warm = Duration::from_millis(500);
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (http, url) = (http.clone(), url.to_owned());
        let (recording, stop) = (recording.clone(), stop.clone());
        let token = token.map(str::to_owned);
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let mut request = http.get(&url);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let ok = match request.send().await {
                    Ok(response) => {
                        response.status().is_success() && response.bytes().await.is_ok()
                    }
                    Err(_) => false,
                };
                if recording.load(Ordering::Relaxed) {
                    if ok {
                        samples.push(common::ms(started.elapsed()));
                    } else {
                        errors += 1;
                    }
                }
            }
            (samples, errors)
        }));
    }
    tokio::time::sleep(warm).await;
    recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    recording.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (s, e) = worker.await?;
        samples.extend(s);
        errors += e;
    }
    Ok(Load {
        rate: samples.len() as f64 / elapsed.as_secs_f64(),
        errors,
        latency: Latency::of(&mut samples),
    })
}

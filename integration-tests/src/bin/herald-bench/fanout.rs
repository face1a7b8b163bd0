//! Scenario 4, SSE fan-out: 10,000 concurrent subscribers of `herald-api`'s feed; one
//! change written to the registry bucket, and the time until each subscriber has it;
//! the API's resident memory before and with the subscribers.
//!
//! Then the same with claims filtering: herald-api in `--auth-mode oauth` (a real OpenID
//! provider on loopback), half the subscribers with a team-a token and half with a team-b
//! one, and the change made to a server name whose two deployments carry different claims
//! (`{"team": ["a", "b"]}` and `{"team": "a"}`): team a gets the entry with both remotes,
//! team b the entry merged from the one it may see (one cached merge for all of them).

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use herald_core::claims::parse_annotation;
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::oidc::OidcProvider;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::common::{self, FEED, Latency, SseReader};
use crate::report::{Report, Row};

/// Connections opened at once (the API's accept backlog is finite).
const CONNECTING: usize = 256;
/// The marker of the one change.
const CHANGE: u64 = 1_000_000;
const TARGET_MS: f64 = 1_000.0;
const TARGET_RSS_MIB: f64 = 300.0;

pub async fn run(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    scenario(report, quick, false).await?;
    scenario(report, quick, true).await
}

const AUDIENCE: &str = "http://herald.bench";

/// The claims `{"team": …}` as a record carries them.
fn team(raw: &str) -> anyhow::Result<Option<herald_core::claims::ClaimSet>> {
    parse_annotation(&format!(r#"{{"team": {raw}}}"#)).map_err(anyhow::Error::msg)
}

async fn scenario(report: &mut Report, quick: bool, claims: bool) -> anyhow::Result<()> {
    let subscribers = if quick { 1_000 } else { 10_000 };
    let dir = common::scenario_dir(if claims { "fanout-claims" } else { "fanout" })?;
    let nats = NatsServer::start().await?;
    let js = nats.jetstream().await;
    crate::api_list::fill(&js, 1, 10).await?;
    let scenario = if claims {
        "sse fan-out, claims"
    } else {
        "sse fan-out"
    };
    // With claims: server-0 gets a second deployment, for team a only.
    let mut idp = None;
    let mut tokens = Vec::new();
    let mut auth: Vec<String> = Vec::new();
    if claims {
        let bucket = common::registry_bucket(&js).await?;
        let mut record = common::record(1, 0, 1)?;
        record.authz_claims = team(r#""a""#)?;
        let (key, value) = common::stored(&record, 1)?;
        bucket.put(key, value).await?;
        let provider = OidcProvider::start(&[]).await?;
        let now = chrono::Utc::now().timestamp();
        for t in ["a", "b"] {
            tokens.push(
                provider
                    .sign(
                        json!({}),
                        json!({"iss": provider.issuer(), "sub": format!("team-{t}"),
                               "aud": AUDIENCE, "iat": now, "exp": now + 3600, "team": t}),
                    )
                    .await?,
            );
        }
        auth = vec![
            "--auth-mode".into(),
            "oauth".into(),
            "--oidc-issuer".into(),
            provider.issuer().to_owned(),
            "--oidc-audience".into(),
            AUDIENCE.into(),
        ];
        idp = Some(provider);
    }
    // Every subscriber connects from this one address: lift the per-client shares too.
    let max = (subscribers * 2).to_string();
    let limits = [
        "--max-sse-subscribers",
        &max,
        "--max-sse-subscribers-per-client",
        &max,
        "--max-connections",
        &max,
        "--max-connections-per-client",
        &max,
    ];
    let flags: Vec<&str> = limits
        .iter()
        .copied()
        .chain(auth.iter().map(String::as_str))
        .collect();
    let (api, _) = common::start_api(&nats, &dir, &flags).await?;
    let (idle_rss, _) = common::memory_mib(api.pid())?;

    let (receipt_tx, mut receipts) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let (go_tx, go) = watch::channel(false);
    let connecting = Instant::now();
    let port = api.port();
    let mut connects = futures::stream::iter(0..subscribers)
        .map(|i| {
            let (receipt_tx, ready_tx, mut go) = (receipt_tx.clone(), ready_tx.clone(), go.clone());
            let token = (!tokens.is_empty()).then(|| tokens[i % tokens.len()].clone());
            async move {
                let mut sse = SseReader::connect_with(port, FEED, token.as_deref()).await?;
                sse.wait_for(b"event: snapshot").await?;
                let _ = ready_tx.send(());
                tokio::spawn(async move {
                    let _ = go.wait_for(|go| *go).await;
                    loop {
                        match sse.next_marker().await {
                            Ok(CHANGE) => {
                                let _ = receipt_tx.send(Instant::now());
                                break;
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    // Stay connected until the scenario ends.
                    let _ = sse.wait_for(b"never sent \x00").await;
                });
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONNECTING);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(done) = connects.next().await {
        if let Err(error) = done {
            failed += 1;
            first_error.get_or_insert(format!("{error:#}"));
        }
    }
    drop(connects);
    let mut connected = 0;
    while ready.try_recv().is_ok() {
        connected += 1;
    }
    let connect_time = connecting.elapsed();
    eprintln!(
        "   {connected} subscribers connected in {:.1} s ({failed} failed{})",
        connect_time.as_secs_f64(),
        first_error.map(|e| format!(": {e}")).unwrap_or_default()
    );
    let (subscribed_rss, _) = common::memory_mib(api.pid())?;

    go_tx.send(true)?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bucket = common::registry_bucket(&js).await?;
    let mut change = common::record(0, 0, CHANGE)?;
    if claims {
        change.authz_claims = team(r#"["a", "b"]"#)?;
    }
    let (key, value) = common::stored(&change, CHANGE)?;
    let written = Instant::now();
    bucket.put(key, value).await?;
    let mut samples = Vec::with_capacity(connected);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while samples.len() < connected {
        match tokio::time::timeout_at(deadline, receipts.recv()).await {
            Ok(Some(at)) => samples.push(common::ms(at.saturating_duration_since(written))),
            _ => break,
        }
    }
    let reached = samples.len();
    let latency = Latency::of(&mut samples);
    let (rss, peak) = common::memory_mib(api.pid())?;
    report.row(Row {
        scenario,
        figure: format!("one change to {connected} subscribers ({reached} reached)"),
        herald: latency.show(),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "all within 1 s".into(),
        met: Some(reached == subscribers && latency.max <= TARGET_MS),
    });
    report.row(Row {
        scenario,
        figure: format!("herald-api resident memory, {connected} subscribers"),
        herald: format!("{rss:.0} MiB (idle {idle_rss:.0} MiB, peak {peak:.0} MiB)"),
        baseline: "—".into(),
        ratio: "—".into(),
        target: format!("≤ {TARGET_RSS_MIB:.0} MB"),
        met: Some(peak <= TARGET_RSS_MIB),
    });
    report.figures(
        if claims { "fanout_claims" } else { "fanout" },
        json!({"subscribers": subscribers, "connected": connected, "failed": failed,
               "connect_s": connect_time.as_secs_f64(), "reached": reached,
               "latency": latency.json(), "api_rss_idle_mib": idle_rss,
               "api_rss_subscribed_mib": subscribed_rss, "api_rss_mib": rss, "api_peak_rss_mib": peak}),
    );
    drop(api);
    drop(idp);
    Ok(())
}

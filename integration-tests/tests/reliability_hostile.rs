//! Reliability, hostile input: malformed and random events on the subjects (dead
//! letters with a reason, never a stuck consumer), objects with extreme annotations
//! (rejected or escaped, the watcher never crashes), random paths and query strings
//! against the API (never a 5xx), and per-cluster NATS users (a watcher with cluster A's
//! credentials cannot publish cluster B's events). Each test ends with the oracle.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use herald_core::annotations as ann;
use herald_core::names::{DLQ_STREAM, STREAM};
use herald_integration_tests::herald::Herald;
use herald_integration_tests::large_stack_test;
use herald_integration_tests::nats::NatsServer;
use herald_integration_tests::objects::create_running;
use herald_integration_tests::oracle::served_view;
use herald_integration_tests::stack::Stack;
use herald_integration_tests::storm::{Rng, report, seed};
use herald_integration_tests::timeout::eventually;
use serde_json::{Value, json};

const CONVERGE: Duration = Duration::from_secs(45);
const REGISTRIES: [&str; 2] = ["default", "team-a"];
const PACE: Duration = Duration::from_millis(5);

/// The pipeline on one cluster `east`, projector batches of 10.
async fn stack(name: &str) -> anyhow::Result<Stack> {
    Stack::builder(name)
        .registries(&REGISTRIES)
        .projector_flags(&["--batch", "10"])
        .build()
        .await
}

/// A random payload that is not a usable event on `subject`, derived from a real
/// event `base` (published on `base_subject`); returns (subject, bytes, kind).
fn garbage(rng: &mut Rng, base: &Value, base_subject: &str) -> (String, Vec<u8>, &'static str) {
    let bytes = serde_json::to_vec(base).expect("JSON");
    let with = |key: &str, v: Value| {
        let mut b = base.clone();
        b[key] = v;
        serde_json::to_vec(&b).expect("JSON")
    };
    let subject = base_subject.to_owned();
    match rng.below(10) {
        0 => {
            let n = rng.below(200);
            let random = (0..n).map(|_| rng.next_u64() as u8).collect();
            (subject, random, "random bytes")
        }
        1 => {
            let cut = 1 + rng.below(bytes.len() - 2);
            (subject, bytes[..cut].to_vec(), "truncated event")
        }
        2 => (
            subject,
            with("type", json!("dev.herald.bogus.thing")),
            "unknown type",
        ),
        3 => (
            subject,
            with("specversion", json!("0.3")),
            "wrong specversion",
        ),
        4 => (
            subject,
            with("data", json!(rng.next_u64().to_string())),
            "data not an object",
        ),
        5 => {
            let mut b = base.clone();
            if let Some(o) = b.as_object_mut() {
                o.remove("data");
            }
            (subject, serde_json::to_vec(&b).expect("JSON"), "no data")
        }
        6 => (
            // The body says east; the subject says west.
            base_subject.replacen(".east.", ".west.", 1),
            bytes,
            "other cluster's subject",
        ),
        7 => {
            let depth = 1 + rng.below(300);
            let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            (subject, nested.into_bytes(), "nested arrays")
        }
        8 => (subject, with("time", json!("yesterday")), "bad time"),
        _ => {
            let mut b = base.clone();
            b["data"]["record_version"] = json!(rng.next_u64());
            b["data"]["cluster"] = json!("West_Not_A_Label");
            (
                subject,
                serde_json::to_vec(&b).expect("JSON"),
                "invalid data fields",
            )
        }
    }
}

large_stack_test!(malformed_events_are_dead_lettered_and_the_consumer_keeps_going => malformed_events_steps);

async fn malformed_events_steps() -> anyhow::Result<()> {
    const GARBAGE: usize = 80;
    let started = Instant::now();
    let env = stack("reliability-malformed").await?;
    let mut storm = env.storm(0x5eed_0707, &["team", "payments"], 8);
    storm.run(20, PACE).await?;
    env.converge().await?;
    // A real deployment.applied event from the watcher, as the base of the garbage.
    let js = env.nats.jetstream().await;
    let mut events = js.get_stream(STREAM).await?;
    let last = events.info().await?.state.last_sequence;
    let mut base = None;
    for seq in (1..=last).rev() {
        let m = events.get_raw_message(seq).await?;
        if m.subject.as_str().contains("._cluster") {
            continue;
        }
        let v: Value = serde_json::from_slice(&m.payload)?;
        if v["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("deployment.applied"))
        {
            base = Some((m.subject.to_string(), v));
            break;
        }
    }
    let (base_subject, base) = base.context("no deployment.applied event on the stream")?;
    let mut rng = Rng::new(seed(0x6a4b_a6e0));
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut published = 0;
    storm
        .during(PACE, async {
            for _ in 0..GARBAGE {
                let (subject, bytes, kind) = garbage(&mut rng, &base, &base_subject);
                js.publish(subject, bytes.into()).await?.await?;
                *kinds.entry(kind).or_default() += 1;
                published += 1;
            }
            anyhow::Ok(())
        })
        .await??;
    storm.run(20, PACE).await?;
    // Every bad message is kept in HERALD_DLQ with a reason, and the consumer has
    // nothing pending: later events still applied (the oracle).
    let mut dlq = js.get_stream(DLQ_STREAM).await?;
    eventually(CONVERGE, "every bad event dead-lettered", || {
        let js = js.clone();
        async move {
            let mut dlq = js.get_stream(DLQ_STREAM).await?;
            Ok((dlq.info().await?.state.messages >= published as u64).then_some(()))
        }
    })
    .await?;
    let info = dlq.info().await?.state.clone();
    assert_eq!(
        info.messages, published as u64,
        "one dead letter per bad event"
    );
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for seq in info.first_sequence..=info.last_sequence {
        let m = dlq.get_raw_message(seq).await?;
        let reason = m
            .headers
            .get("Herald-Dlq-Reason")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        assert!(!reason.is_empty(), "dead letter {seq} has a reason");
        *reasons
            .entry(m.subject.trim_start_matches("herald.dlq.").to_owned())
            .or_default() += 1;
    }
    let converged = env.converge().await?;
    // A heartbeat may be in flight at any moment: stuck means it never drains.
    let stream = js.get_stream(STREAM).await?;
    eventually(
        CONVERGE,
        "nothing stuck on the projector's consumer",
        || async {
            let info = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("herald-projector")
                .await
                .map_err(|e| anyhow::anyhow!("the projector's consumer: {e}"))?
                .info()
                .await?
                .clone();
            Ok(((info.num_pending, info.num_ack_pending) == (0, 0)).then_some(()))
        },
    )
    .await?;
    eprintln!("garbage kinds: {kinds:?}; dead-letter subjects: {reasons:?}");
    let figures = format!(
        "changes={} faults={published} dead_letters={} entries_compared={}",
        storm.stats.changes(),
        info.messages,
        converged.entries,
    );
    report("malformed-events", &figures, started);
    Ok(())
}

large_stack_test!(extreme_annotations_are_rejected_or_escaped_and_the_watcher_survives => extreme_annotations_steps);

async fn extreme_annotations_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut env = stack("reliability-annotations").await?;
    let api = env.mcpservers(0, "hostile");
    let script = "<script>alert('herald')</script>";
    let cases: Vec<(&str, Value)> = vec![
        (
            "huge-description",
            json!({ ann::REGISTRY_DESCRIPTION: "x".repeat(100 * 1024) }),
        ),
        (
            "control-chars",
            json!({ ann::REGISTRY_DESCRIPTION: "bell \u{7} nul-ish \u{1} esc \u{1b}[31m" }),
        ),
        (
            "script-description",
            json!({ ann::REGISTRY_DESCRIPTION: script }),
        ),
        (
            "script-title",
            json!({ ann::REGISTRY_DESCRIPTION: "ok", ann::REGISTRY_TITLE: script }),
        ),
        (
            "odd-unicode",
            json!({ ann::REGISTRY_DESCRIPTION: "rtl \u{202e}txet\u{202c} zwj \u{200d} 🧨 e\u{301} \u{fffd} \u{10ffff}" }),
        ),
        (
            "escapes",
            json!({ ann::REGISTRY_DESCRIPTION: "\\xff\\xfe \\u0000 %00 &lt;b&gt;" }),
        ),
        (
            "script-url",
            json!({ ann::REGISTRY_DESCRIPTION: "ok", ann::REGISTRY_URL: "javascript:alert(1)" }),
        ),
        (
            "html-icon",
            json!({ ann::REGISTRY_DESCRIPTION: "ok", ann::REGISTRY_ICON: "data:text/html,<script>alert(1)</script>" }),
        ),
        (
            "huge-title",
            json!({ ann::REGISTRY_DESCRIPTION: "ok", ann::REGISTRY_TITLE: "t".repeat(100 * 1024) }),
        ),
        (
            "weird-server-name",
            json!({ ann::REGISTRY_DESCRIPTION: "ok", ann::REGISTRY_SERVER_NAME: "../../etc/passwd\u{0}<x>" }),
        ),
        (
            "weird-version",
            json!({ ann::REGISTRY_DESCRIPTION: "ok", ann::REGISTRY_VERSION: "1.0.0<script>" }),
        ),
        (
            "tools-not-json",
            json!({ ann::REGISTRY_DESCRIPTION: "ok", ann::TOOLS: "[{\"name\": <script>" }),
        ),
        (
            "plain-control",
            json!({ ann::REGISTRY_DESCRIPTION: "ok", ann::REGISTRY_CATEGORY: "\u{0}\u{8}" }),
        ),
    ];
    let n = cases.len();
    for (name, mut annotations) in cases {
        annotations[ann::REGISTRY_EXPORT] = json!("true");
        if annotations.get(ann::REGISTRY_URL).is_none() {
            annotations[ann::REGISTRY_URL] = json!(format!("https://{name}.example/mcp"));
        }
        create_running(&api, name, annotations).await?;
    }
    let converged = env.converge().await?;
    anyhow::ensure!(
        env.watchers[0].is_running(),
        "the watcher crashed on hostile annotations"
    );
    // What was accepted is served as JSON: the script is a string, not markup.
    let view = served_view(env.api().base(), &env.registries()).await?;
    let served: Vec<_> = view.values().flatten().collect();
    for entry in &served {
        assert!(
            !entry.description.contains('\u{1}'),
            "control characters are not served: {entry:?}"
        );
    }
    let page = reqwest::get(format!("{}/", env.api().base())).await?;
    assert!(page.status().is_success());
    let html = page.text().await?;
    assert!(
        !html.contains(script),
        "the catalog page does not embed annotation markup"
    );
    let figures = format!(
        "objects={n} accepted_entries={} entries_compared={} watcher_alive=true",
        served.len(),
        converged.entries,
    );
    report("extreme-annotations", &figures, started);
    Ok(())
}

fn random_segment(rng: &mut Rng) -> String {
    let pieces = [
        "servers",
        "versions",
        "latest",
        "..",
        "%2e%2e",
        "%00",
        "%ZZ",
        "%2F",
        "%F0%9F%A7%A8",
        "com.toolhive.k8s.team%2Fsrv-1",
        "registry",
        "default",
        "v0.1",
        "v0",
        "x",
        "dev.herald",
        "openapi.json",
        "%3Cscript%3E",
        "",
    ];
    match rng.below(4) {
        0 => {
            let n = rng.below(3000);
            (0..n)
                .map(|_| (b'a' + (rng.next_u64() % 26) as u8) as char)
                .collect()
        }
        1 => format!("{}", rng.next_u64()),
        _ => rng.pick(&pieces).to_string(),
    }
}

fn random_query(rng: &mut Rng) -> String {
    let keys = [
        "limit",
        "cursor",
        "updated_since",
        "search",
        "version",
        "include_deleted",
        "lastEventId",
        "%00",
        "",
    ];
    let values = [
        "-1",
        "0",
        "1",
        "100",
        "101",
        "99999999999999999999999",
        "abc",
        "latest",
        "2025-13-45T99:99:99Z",
        "1970-01-01T00:00:00Z",
        "%FF%FE",
        "%00",
        "eyJrIjoiw",
        "%3Cscript%3E",
        "",
    ];
    (0..rng.below(5))
        .map(|_| format!("{}={}", rng.pick(&keys), rng.pick(&values)))
        .collect::<Vec<_>>()
        .join("&")
}

large_stack_test!(random_paths_and_queries_never_get_a_5xx => random_paths_steps);

async fn random_paths_steps() -> anyhow::Result<()> {
    const REQUESTS: usize = 600;
    let started = Instant::now();
    let env = stack("reliability-random-http").await?;
    let mut storm = env.storm(0x5eed_0808, &["team"], 6);
    storm.run(20, PACE).await?;
    let mut rng = Rng::new(seed(0x0ddb_a115));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let prefixes = [
        "/v0.1/servers",
        "/v0/servers",
        "/registry/default/v0.1/servers",
        "/registry/nope/v0.1/servers",
        "/v0.1/servers/com.toolhive.k8s.team%2Fsrv-1/versions",
        "/",
        "/registry",
        "",
    ];
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut server_errors = Vec::new();
    let base = env.api().base().to_owned();
    storm
        .during(PACE, async {
            for _ in 0..REQUESTS {
                let mut path = rng.pick(&prefixes).to_string();
                for _ in 0..rng.below(4) {
                    path.push('/');
                    path.push_str(&random_segment(&mut rng));
                }
                if path.contains("dev.herald") {
                    continue; // the SSE feed is a stream; its rules are tested elsewhere
                }
                let query = random_query(&mut rng);
                let url = if query.is_empty() {
                    format!("{base}{path}")
                } else {
                    format!("{base}{path}?{query}")
                };
                let status = http.get(&url).send().await?.status().as_u16();
                *statuses.entry(status).or_default() += 1;
                if status >= 500 {
                    server_errors.push((status, url));
                }
            }
            anyhow::Ok(())
        })
        .await??;
    let converged = env.converge().await?;
    assert!(server_errors.is_empty(), "5xx answers: {server_errors:#?}");
    let figures = format!(
        "requests={} statuses={statuses:?} changes={} entries_compared={}",
        statuses.values().sum::<usize>(),
        storm.stats.changes(),
        converged.entries,
    );
    report("random-http", &figures, started);
    Ok(())
}

/// One user per cluster (deploy/nats/permissions.conf), passwords instead of nkeys;
/// `admin` (the default for clients without credentials) runs projector and API.
const PERMISSIONS: &str = r#"
no_auth_user: admin
accounts {
  HERALD {
    jetstream: enabled
    users = [
      { user: admin, password: admin }
      { user: east, password: east-secret, permissions = {
          publish = { allow = ["herald.events.east.>", "$JS.API.STREAM.INFO.HERALD_EVENTS"] }
          subscribe = { allow = ["_INBOX.>"] }
      } }
      { user: west, password: west-secret, permissions = {
          publish = { allow = ["herald.events.west.>", "$JS.API.STREAM.INFO.HERALD_EVENTS"] }
          subscribe = { allow = ["_INBOX.>"] }
      } }
    ]
  }
}
"#;

large_stack_test!(a_watcher_with_another_clusters_credentials_cannot_publish => per_cluster_users_steps);

async fn per_cluster_users_steps() -> anyhow::Result<()> {
    let started = Instant::now();
    // The projector (admin) creates the stream; the cluster users may only look at it.
    let mut env = Stack::builder("reliability-permissions")
        .registries(&REGISTRIES)
        .without_watchers()
        .build_on(NatsServer::start_with_config(PERMISSIONS))
        .await?;
    let objects = env.mcpservers(0, "team");
    for i in 0..5 {
        create_running(
            &objects,
            &format!("srv-{i}"),
            json!({
                ann::REGISTRY_EXPORT: "true",
                ann::REGISTRY_DESCRIPTION: "permissions",
                ann::REGISTRY_URL: format!("https://srv-{i}.example/mcp"),
            }),
        )
        .await?;
    }
    let east_credentials = ["--nats-user", "east", "--nats-password", "east-secret"];
    // Cluster id west, east's credentials: every publish is refused by the server. It is
    // not expected to become ready.
    let mut impostor = Herald::watcher(env.kube(), "west", &env.nats.url())
        .dir(env.dir.path())
        .log_name("watcher-impostor-west.log")
        .args(east_credentials)
        .spawn()?;
    let refused = eventually(
        CONVERGE,
        "the server to refuse the impostor's publishes",
        || {
            let log = impostor.log_contents();
            async move { Ok(log.to_lowercase().contains("permission").then_some(())) }
        },
    )
    .await;
    let js = env.nats.jetstream().await;
    let mut stream = js.get_stream(STREAM).await?;
    let state = stream.info().await?.state.clone();
    let mut west_events = 0;
    for seq in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        if let Ok(m) = stream.get_raw_message(seq).await
            && m.subject.starts_with("herald.events.west.")
        {
            west_events += 1;
        }
    }
    assert_eq!(west_events, 0, "no west event reached the stream");
    let impostor_alive = impostor.is_running();
    drop(impostor);
    refused.context("the impostor watcher's log shows no permission error")?;
    // The same cluster's own credentials work: everything converges.
    let east = env
        .watcher(0, &env.nats.url())
        .args(east_credentials)
        .start()
        .await?;
    env.watchers.push(east);
    let converged = env.converge().await?;
    assert_eq!(converged.entries, 5);
    let figures = format!(
        "impostor_alive={impostor_alive} west_events=0 entries_compared={}",
        converged.entries,
    );
    report("permissions", &figures, started);
    Ok(())
}

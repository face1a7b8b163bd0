//! `MCPServerEntry` through the whole pipeline: objects in a real Kubernetes API
//! server (the vendored CRD), the real watcher, NATS, projector and herald-api.
//! Each transport, both CRD eras, auth and forwarded headers (whose values must
//! appear nowhere: not in events, buckets or responses), every blocked URL class,
//! and the phases an operator reports.

use std::time::Duration;

use anyhow::Context as _;
use herald_core::annotations as ann;
use herald_core::names::{STREAM, bucket_name};
use herald_core::object::Kind;
use herald_integration_tests::large_stack_test;
use herald_integration_tests::objects::{self, create, opted_in, set_status, with};
use herald_integration_tests::stack::Stack;
use herald_integration_tests::timeout::eventually;
use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "remote";
/// Values that are in the objects and must never leave them.
const NEVER_SERVED: [&str; 4] = [
    "tenant-secret-value",
    "entry-credentials",
    "bearer-key",
    "entry-oauth",
];

/// An opted-in entry at `url` with `transport` in group `tools`.
fn entry(name: &str, url: &str, transport: &str) -> Value {
    let body = opted_in(name, &format!("The {name} entry"));
    let body = with(body, &["spec", "remoteUrl"], json!(url));
    let body = with(body, &["spec", "transport"], json!(transport));
    with(body, &["spec", "groupRef"], json!({"name": "tools"}))
}

/// Creates `body` as a `version` entry in phase `phase`.
async fn declare(env: &Stack, version: &str, body: Value, phase: &str) -> anyhow::Result<()> {
    let api: Api<DynamicObject> = objects::api_at(
        env.kube().client(),
        Kind::MCPServerEntry,
        version,
        NAMESPACE,
    );
    let name = body["metadata"]["name"]
        .as_str()
        .context("named")?
        .to_owned();
    create(&api, Kind::MCPServerEntry, version, body).await?;
    set_status(&api, &name, json!({"phase": phase})).await?;
    Ok(())
}

async fn get(env: &Stack, path: &str) -> anyhow::Result<(u16, String)> {
    let response = reqwest::get(format!("{}{path}", env.api().base())).await?;
    Ok((response.status().as_u16(), response.text().await?))
}

fn served_name(name: &str) -> String {
    format!("com.toolhive.k8s.{NAMESPACE}%2F{name}")
}

large_stack_test!(server_entries_reach_the_registry_with_names_never_values => server_entries_steps);

async fn server_entries_steps() -> anyhow::Result<()> {
    let env = Stack::builder("entries").build().await?;

    // Streamable HTTP, v1beta1, with auth and forwarded headers.
    let body = entry(
        "hosted",
        "https://mcp.hosted.example.com/mcp",
        "streamable-http",
    );
    let body = with(
        body,
        &["spec", "externalAuthConfigRef"],
        json!({"name": "entry-oauth"}),
    );
    let body = with(
        body,
        &["spec", "headerForward"],
        json!({
            "addPlaintextHeaders": {"X-Tenant-ID": "tenant-secret-value"},
            "addHeadersFromSecret": [
                {"headerName": "X-Api-Key", "valueSecretRef": {"name": "entry-credentials", "key": "bearer-key"}}
            ]
        }),
    );
    let body = with(
        body,
        &["metadata", "annotations", ann::TOOL_DEFINITIONS],
        json!(
            r#"[{"name":"search_docs","description":"Searches the docs","inputSchema":{"type":"object","properties":{"q":{"type":"string"}}}}]"#
        ),
    );
    let body = with(
        body,
        &["metadata", "annotations", ann::REGISTRY_CATEGORY],
        json!("knowledge"),
    );
    declare(&env, "v1beta1", body, "Valid").await?;
    // SSE, v1alpha1 of the first weeks: `remoteURL` and a bare-string groupRef.
    let body = opted_in("legacy", "An SSE entry of the first CRD era");
    let body = with(
        body,
        &["spec", "remoteURL"],
        json!("https://sse.example.com/sse"),
    );
    let body = with(body, &["spec", "transport"], json!("sse"));
    let body = with(body, &["spec", "groupRef"], json!("tools"));
    // Broken tool definitions: reported, and the server is advertised without them.
    let body = with(
        body,
        &["metadata", "annotations", ann::TOOL_DEFINITIONS],
        json!(r#"[{"name":"no_schema"}]"#),
    );
    declare(&env, "v1alpha1", body, "Valid").await?;
    // A private endpoint the entry allows.
    let body = entry(
        "private-ok",
        "http://10.20.30.40:8080/mcp",
        "streamable-http",
    );
    let body = with(body, &["spec", "allowPrivateEndpoint"], json!(true));
    declare(&env, "v1beta1", body, "Valid").await?;
    // Not validated (yet) or invalid: not advertised.
    for (name, phase) in [("pending", "Pending"), ("failed", "Failed")] {
        let body = entry(name, "https://mcp.example.com/mcp", "sse");
        declare(&env, "v1beta1", body, phase).await?;
    }
    // Every blocked URL class, each with the entry's opt-in for private endpoints
    // except the plain private one.
    let blocked = [
        ("loopback", "http://127.0.0.1:9000/mcp", true),
        ("metadata", "http://169.254.169.254/latest/meta-data", true),
        ("link-local", "http://[fe80::1]/mcp", true),
        ("kube-api", "https://kubernetes.default.svc/api", true),
        ("gce-metadata", "http://metadata.google.internal/", true),
        ("private", "http://10.0.0.5/mcp", false),
        (
            "cluster-local",
            "http://mcp.other.svc.cluster.local/mcp",
            false,
        ),
    ];
    for (name, url, allow) in blocked {
        let body = entry(name, url, "streamable-http");
        let body = with(body, &["spec", "allowPrivateEndpoint"], json!(allow));
        declare(&env, "v1beta1", body, "Valid").await?;
    }

    // The API serves exactly what core's mapping says of these objects.
    let converged = env.converge().await?;
    assert_eq!(converged.entries, 3, "hosted, legacy and private-ok");

    let (status, body) = get(
        &env,
        &format!("/v0.1/servers/{}/versions/latest", served_name("hosted")),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let hosted: Value = serde_json::from_str(&body)?;
    let remote = &hosted["server"]["remotes"][0];
    assert_eq!(remote["type"], "streamable-http");
    assert_eq!(remote["url"], "https://mcp.hosted.example.com/mcp");
    let headers: Vec<(String, bool)> = remote["headers"]
        .as_array()
        .context("headers")?
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap_or("").to_owned(),
                h["isSecret"] == true,
            )
        })
        .collect();
    assert_eq!(
        headers,
        [
            ("Authorization".to_owned(), true),
            ("X-Api-Key".to_owned(), true),
            ("X-Tenant-ID".to_owned(), false)
        ]
    );
    let deployment = &hosted["_meta"]["dev.herald"]["deployments"][0];
    assert_eq!(deployment["kind"], "MCPServerEntry");
    assert_eq!(deployment["group"], "tools");
    assert_eq!(deployment["phase"], "Valid");
    assert_eq!(deployment["cluster"], "east");
    // ToolHive's block, as its clients read it.
    let block = &hosted["server"]["_meta"]["io.modelcontextprotocol.registry/publisher-provided"]["io.github.stacklok"]
        ["https://mcp.hosted.example.com/mcp"];
    assert_eq!(block["status"], "active", "{hosted:#}");
    assert_eq!(block["metadata"]["kubernetes"]["kind"], "MCPServerEntry");
    assert_eq!(block["metadata"]["kubernetes"]["namespace"], NAMESPACE);
    assert_eq!(block["metadata"]["kubernetes"]["name"], "hosted");
    assert_eq!(block["tools"], json!(["search_docs"]));
    assert_eq!(block["tags"], json!(["knowledge"]));
    assert_eq!(block["tool_definitions"][0]["name"], "search_docs");
    assert_eq!(
        block["tool_definitions"][0]["inputSchema"]["properties"]["q"]["type"],
        "string"
    );

    let (status, body) = get(
        &env,
        &format!("/v0.1/servers/{}/versions/latest", served_name("legacy")),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let legacy: Value = serde_json::from_str(&body)?;
    assert_eq!(legacy["server"]["remotes"][0]["type"], "sse");
    assert_eq!(
        legacy["server"]["remotes"][0]["url"],
        "https://sse.example.com/sse"
    );
    assert_eq!(
        legacy["_meta"]["dev.herald"]["deployments"][0]["group"],
        "tools"
    );
    let block = &legacy["server"]["_meta"]["io.modelcontextprotocol.registry/publisher-provided"]["io.github.stacklok"]
        ["https://sse.example.com/sse"];
    assert_eq!(block["status"], "active");
    assert!(block.get("tool_definitions").is_none(), "{block:#}");

    // Each blocked entry is rejected with its reason, where an operator looks.
    let log = env.watchers[0].log_contents();
    for (name, _, _) in blocked {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!(r#""name":"{name}""#))
                    && l.contains(r#""reason":"invalid_url""#)
                    && l.contains("spec.remoteUrl")),
            "no rejection of {name} in the watcher log"
        );
    }
    assert!(
        log.contains("set spec.allowPrivateEndpoint"),
        "the private reason"
    );
    assert!(
        log.lines().any(|l| l.contains(r#""name":"legacy""#)
            && l.contains(r#""reason":"invalid_tool_definitions""#)
            && l.contains("tool no_schema has no inputSchema")),
        "the broken tool definitions are reported"
    );
    let sample = r#"herald_watcher_rejections_total{reason="invalid_tool_definitions"}"#;
    assert_eq!(env.watchers[0].metric(sample).await?, 1.0);
    for (_, url, _) in blocked {
        assert!(!log.contains(url), "a rejection never echoes the URL");
    }

    // No header value, secret name or auth config name anywhere: API, stream, buckets.
    let (_, list) = get(&env, "/v0.1/servers?limit=100").await?;
    let js = env.nats.jetstream().await;
    let stream = js.get_stream(STREAM).await?;
    let mut stream_bytes = Vec::new();
    for seq in 1..=env.last_sequence().await? {
        if let Ok(m) = stream.get_raw_message(seq).await {
            stream_bytes.extend_from_slice(&m.payload);
        }
    }
    let bucket = js.get_key_value(bucket_name(&"default".parse()?)).await?;
    let mut bucket_bytes = Vec::new();
    let keys: Vec<String> = {
        use futures::TryStreamExt as _;
        bucket.keys().await?.try_collect().await?
    };
    assert!(!keys.is_empty());
    for key in keys {
        if let Some(v) = bucket.get(&key).await? {
            bucket_bytes.extend_from_slice(&v);
        }
    }
    let stream_text = String::from_utf8_lossy(&stream_bytes);
    let bucket_text = String::from_utf8_lossy(&bucket_bytes);
    assert!(stream_text.contains("X-Tenant-ID") && bucket_text.contains("X-Api-Key"));
    for value in NEVER_SERVED {
        assert!(!list.contains(value), "{value} in the API");
        assert!(!stream_text.contains(value), "{value} on the stream");
        assert!(!bucket_text.contains(value), "{value} in a bucket");
    }

    // The operator finds the entry invalid: withdrawn. Valid again: back.
    let api = objects::api_at(
        env.kube().client(),
        Kind::MCPServerEntry,
        "v1beta1",
        NAMESPACE,
    );
    set_status(&api, "hosted", json!({"phase": "Failed"})).await?;
    let path = format!("/v0.1/servers/{}/versions/latest", served_name("hosted"));
    eventually(STEP, "the failed entry withdrawn", || async {
        Ok((get(&env, &path).await?.0 == 404).then_some(()))
    })
    .await?;
    set_status(&api, "pending", json!({"phase": "Valid"})).await?;
    let annotate = json!({"metadata": {"annotations": {ann::REGISTRY_TITLE: "Now valid"}}});
    objects::merge(&api, "pending", annotate).await?;
    let converged = env.converge().await?;
    assert_eq!(converged.entries, 3, "legacy, private-ok and pending");
    Ok(())
}

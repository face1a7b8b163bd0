//! Container images as `oci` packages and the version rules, through the whole
//! pipeline: MCPServers in two real Kubernetes API servers, the real watchers (one with
//! `--packages=false`), NATS, projector and herald-api. Packages of merged deployments
//! are deduplicated; a digest-only, `latest` or channel tag gives neither a version nor
//! a package; an unusable `registry-version` annotation is rejected with its reason
//! where an operator looks (log, metric, Kubernetes Event), never replaced. Every
//! served entry validates against both official `server.json` schemas.

use std::time::Duration;

use anyhow::Context as _;
use herald_core::annotations as ann;
use herald_core::object::Kind;
use herald_integration_tests::large_stack_test;
use herald_integration_tests::objects::{self, create, opted_in, set_status, with};
use herald_integration_tests::stack::Stack;
use herald_integration_tests::timeout::eventually;
use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(45);
const GRANT: &str = "io.example/*=team-a,team-b";
const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Unusable `registry-version` values: a channel, a path, a range.
const HOSTILE: [(&str, &str); 3] = [
    ("hostile-channel", "stable"),
    ("hostile-path", "1.0.0/../../admin"),
    ("hostile-range", "^1.2.0"),
];

/// An opted-in, Running MCPServer `namespace/name` with `image`, `transport` and
/// `extra` annotations.
async fn deploy(
    env: &Stack,
    cluster: usize,
    namespace: &str,
    name: &str,
    image: &str,
    transport: &str,
    annotations: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut body = opted_in(name, &format!("The {name} server"));
    body = with(body, &["spec", "image"], json!(image));
    body = with(body, &["spec", "transport"], json!(transport));
    if transport != "stdio" {
        body = with(body, &["spec", "mcpPort"], json!(9000));
    }
    for (key, value) in annotations {
        body = with(body, &["metadata", "annotations", key], json!(value));
    }
    let api: Api<DynamicObject> = objects::api_at(
        env.kubes[cluster].client(),
        Kind::MCPServer,
        "v1beta1",
        namespace,
    );
    create(&api, Kind::MCPServer, "v1beta1", body).await?;
    set_status(&api, name, json!({"phase": "Running"})).await?;
    Ok(())
}

fn schema_validators() -> anyhow::Result<Vec<(String, jsonschema::Validator)>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/registry");
    let mut validators = Vec::new();
    for file in [
        "server.schema.2025-09-16.json",
        "server.schema.2025-12-11.json",
    ] {
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file))?)?;
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        validators.push((file.to_owned(), validator));
    }
    Ok(validators)
}

fn by_name<'a>(entries: &'a [Value], name: &str) -> anyhow::Result<&'a Value> {
    entries
        .iter()
        .find(|e| e["server"]["name"] == name)
        .with_context(|| format!("{name} is not served"))
}

large_stack_test!(images_are_packages_and_versions_are_fixed => packages_steps);

async fn packages_steps() -> anyhow::Result<()> {
    let mut env = Stack::builder("packages")
        .clusters(&["east", "west"])
        .without_watchers()
        .watcher_flags(&["--grant-name", GRANT])
        .projector_flags(&["--grant-name", GRANT])
        .build()
        .await?;
    env.kubes[0].serve_events().await?;
    let url = env.nats.url();
    let east = env.watcher(0, &url).start().await?;
    let west = env
        .watcher(1, &url)
        .args(["--packages=false"])
        .start()
        .await?;
    env.watchers = vec![east, west];

    let shared = [(ann::REGISTRY_SERVER_NAME, "io.example/shared")];
    let shared_image = "ghcr.io/example/shared:v1.4.0";
    // One server in two namespaces of east and in west (packages off there): one package.
    deploy(&env, 0, "team-a", "shared", shared_image, "stdio", &shared).await?;
    deploy(&env, 0, "team-b", "shared", shared_image, "stdio", &shared).await?;
    deploy(&env, 1, "team-a", "shared", shared_image, "stdio", &shared).await?;
    // One version from two images (a mirror, speaking HTTP): two packages, in
    // deployment order.
    let mixed = [
        (ann::REGISTRY_SERVER_NAME, "io.example/mixed"),
        (ann::REGISTRY_VERSION, "2.0.0"),
    ];
    deploy(
        &env,
        0,
        "team-a",
        "mixed",
        "ghcr.io/example/mixed:2.0.0",
        "stdio",
        &mixed,
    )
    .await?;
    let mirror = "registry.example.com:5000/mirror/mixed:2.0.0";
    deploy(
        &env,
        0,
        "team-b",
        "mixed",
        mirror,
        "streamable-http",
        &mixed,
    )
    .await?;
    // Tags that are no version: the default version, and no package.
    let pinned = format!("ghcr.io/example/pinned@{DIGEST}");
    deploy(&env, 0, "team-a", "pinned", &pinned, "stdio", &[]).await?;
    deploy(
        &env,
        0,
        "team-a",
        "floating",
        "ghcr.io/example/floating:latest",
        "stdio",
        &[],
    )
    .await?;
    let nightly = "ghcr.io/example/nightly:nightly-20260101";
    deploy(&env, 0, "team-a", "nightly", nightly, "stdio", &[]).await?;
    // Packages off in west.
    let solo = [(ann::REGISTRY_SERVER_NAME, "io.example/solo")];
    deploy(
        &env,
        1,
        "team-a",
        "solo",
        "ghcr.io/example/solo:3.1.0",
        "stdio",
        &solo,
    )
    .await?;
    // Unusable version annotations: rejected, whatever the image says.
    for (name, version) in HOSTILE {
        let image = "ghcr.io/example/hostile:1.0.0";
        deploy(
            &env,
            0,
            "team-a",
            name,
            image,
            "stdio",
            &[(ann::REGISTRY_VERSION, version)],
        )
        .await?;
    }

    let list_path = format!("{}/v0.1/servers?limit=100", env.api().base());
    let entries = eventually(STEP, "every advertised server served", || async {
        let list: Value = reqwest::get(&list_path).await?.json().await?;
        let entries = list["servers"].as_array().cloned().unwrap_or_default();
        let shared_deployments = entries
            .iter()
            .find(|e| e["server"]["name"] == "io.example/shared")
            .and_then(|e| {
                e["_meta"]["dev.herald"]["deployments"]
                    .as_array()
                    .map(Vec::len)
            });
        let mixed = entries
            .iter()
            .find(|e| e["server"]["name"] == "io.example/mixed")
            .and_then(|e| {
                e["_meta"]["dev.herald"]["deployments"]
                    .as_array()
                    .map(Vec::len)
            });
        let done = entries.len() == 6 && shared_deployments == Some(3) && mixed == Some(2);
        Ok(done.then_some(entries))
    })
    .await?;

    let shared = by_name(&entries, "io.example/shared")?;
    assert_eq!(
        shared["server"]["version"], "1.4.0",
        "the v of the tag dropped"
    );
    assert_eq!(
        shared["server"]["packages"],
        json!([{
            "registryType": "oci",
            "identifier": "ghcr.io/example/shared",
            "version": "v1.4.0",
            "transport": {"type": "stdio"}
        }]),
        "one package for three deployments of one image"
    );
    let mixed = by_name(&entries, "io.example/mixed")?;
    assert_eq!(
        mixed["server"]["packages"],
        json!([
            {
                "registryType": "oci",
                "identifier": "ghcr.io/example/mixed",
                "version": "2.0.0",
                "transport": {"type": "stdio"}
            },
            {
                "registryType": "oci",
                "identifier": "registry.example.com:5000/mirror/mixed",
                "version": "2.0.0",
                "transport": {"type": "streamable-http", "url": "http://localhost:9000/mcp"}
            }
        ])
    );
    for name in ["pinned", "floating", "nightly"] {
        let entry = by_name(&entries, &format!("com.toolhive.k8s.team-a/{name}"))?;
        assert_eq!(entry["server"]["version"], "1.0.0", "{name}");
        assert!(
            entry["server"].get("packages").is_none(),
            "{name}: {entry:#}"
        );
    }
    let solo = by_name(&entries, "io.example/solo")?;
    assert_eq!(solo["server"]["version"], "3.1.0");
    assert!(
        solo["server"].get("packages").is_none(),
        "--packages=false: {solo:#}"
    );

    // Every served entry is valid server.json in both schema versions.
    let validators = schema_validators()?;
    for entry in &entries {
        for (file, validator) in &validators {
            let errors: Vec<String> = validator
                .iter_errors(&entry["server"])
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{file}: {errors:?}\n{entry:#}");
        }
    }

    // The hostile versions: not served, each rejected with its reason in the log, the
    // metric and a Kubernetes Event on its object.
    for (name, _) in HOSTILE {
        assert!(
            !entries
                .iter()
                .any(|e| e["server"]["name"] == format!("com.toolhive.k8s.team-a/{name}")),
            "{name} is served"
        );
    }
    let log = env.watchers[0].log_contents();
    for (name, _) in HOSTILE {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!(r#""name":"{name}""#))
                    && l.contains(r#""reason":"invalid_version""#)
                    && l.contains(ann::REGISTRY_VERSION)),
            "no invalid_version rejection of {name} in the watcher log"
        );
    }
    assert!(log.contains("release channel"), "the channel reason");
    let sample = r#"herald_watcher_rejections_total{reason="invalid_version"}"#;
    assert_eq!(env.watchers[0].metric(sample).await?, 3.0);
    let gvk = kube::api::GroupVersionKind::gvk("events.k8s.io", "v1", "Event");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "events");
    let events: Api<DynamicObject> =
        Api::namespaced_with(env.kubes[0].client(), "team-a", &resource);
    let note = eventually(STEP, "the Event on hostile-channel", || async {
        let list = events.list(&Default::default()).await?;
        Ok(list.items.into_iter().map(|e| e.data).find_map(|e| {
            (e["regarding"]["name"] == "hostile-channel" && e["reason"] == "RegistryRejected")
                .then(|| e["note"].as_str().unwrap_or_default().to_owned())
        }))
    })
    .await?;
    assert!(
        note.contains(ann::REGISTRY_VERSION) && note.contains("release channel"),
        "{note}"
    );
    Ok(())
}

//! Every rule of the mapping (docs/design.md "Opting in" and "What the watcher
//! reads"), each with a test that fails when the rule is broken.

mod common;

use common::*;
use herald_core::annotations as ann;
use herald_core::mapping::Decision;
use herald_core::ownership::{NameGrant, NameOwnership};
use herald_core::policy::{NamespacePolicy, RegistryRule};
use herald_core::record::WithdrawReason;
use herald_core::record::{DeploymentRecord, Phase, RemoteTransport};
use herald_core::version;
use herald_core::{Kind, Rejection};
use serde_json::{Value, json};

fn advertised(object: &Value) -> DeploymentRecord {
    match map(object) {
        Decision::Advertise(r) => *r,
        other => panic!("{} was not advertised: {other:?}", name_of(object)),
    }
}

fn rejected(object: &Value) -> Rejection {
    match map(object) {
        Decision::Reject(r) => r,
        other => panic!("{} was not rejected: {other:?}", name_of(object)),
    }
}

#[test]
fn advertised_fixtures_yield_the_stated_remote() {
    let all = load("advertised.yaml");
    assert_eq!(all.len(), 8);
    for object in &all {
        let record = advertised(object);
        assert_eq!(
            record.remote.url,
            test_annotation(object, "expect-url").unwrap(),
            "{}",
            name_of(object)
        );
        assert_eq!(
            record.remote.transport.as_str(),
            test_annotation(object, "expect-type").unwrap(),
            "{}",
            name_of(object)
        );
        assert_eq!(record.object.kind(), kind_of(object));
        assert_eq!(record.cluster.as_str(), "prod-eu");
        assert_eq!(record.epoch, 7);
        assert_eq!(record.observed_at, seen_at());
    }
}

#[test]
fn rejected_fixtures_name_their_reason() {
    let all = load("rejected.yaml");
    assert!(all.len() >= 20);
    for object in &all {
        let reason = rejected(object);
        assert_eq!(
            reason.code(),
            test_annotation(object, "expect").unwrap(),
            "{}: {reason}",
            name_of(object)
        );
    }
}

#[test]
fn skipped_fixtures_are_not_advertised() {
    for object in &load("skipped.yaml") {
        let expected = test_annotation(object, "expect").unwrap();
        match map(object) {
            Decision::Skip(reason) => assert_eq!(reason.as_str(), expected, "{}", name_of(object)),
            other => panic!("{}: {other:?}", name_of(object)),
        }
    }
}

#[test]
fn a_v1alpha1_record_carries_every_field() {
    let record = advertised(&fixture("advertised.yaml", "fetch"));
    assert_eq!(record.v, 1);
    assert_eq!(record.registry.as_str(), "default");
    assert_eq!(record.object.namespace(), "tools");
    assert_eq!(record.uid, "7c0d6d1e-0001-4000-8000-000000000001");
    assert_eq!(record.resource_version, "1001");
    assert_eq!(record.generation, Some(3));
    assert_eq!(
        record.created_at.unwrap().to_rfc3339(),
        "2025-06-01T10:00:00+00:00"
    );
    assert_eq!(record.server_name.as_str(), "com.toolhive.k8s.tools/fetch");
    assert_eq!(record.version, "1.0.1", "semver image tag");
    assert_eq!(
        record.description,
        "Fetches web pages and returns them as markdown"
    );
    assert_eq!(record.phase, Phase::Running);
    assert_eq!(record.transport, "sse");
    assert_eq!(
        record.image.as_deref(),
        Some("ghcr.io/stackloklabs/gofetch/server:1.0.1")
    );
    assert!(record.remote.headers.is_empty(), "no auth configured");
    assert_eq!(record.title, None);
}

#[test]
fn a_v1beta1_record_carries_every_field() {
    let record = advertised(&fixture("advertised.yaml", "github"));
    assert_eq!(record.registry.as_str(), "engineering");
    assert_eq!(record.version, "0.9.0", "a v-prefixed semver tag counts");
    assert_eq!(record.title.as_deref(), Some("GitHub"));
    assert_eq!(record.phase, Phase::Ready);
    assert_eq!(record.transport, "stdio");
    assert_eq!(record.remote.transport, RemoteTransport::StreamableHttp);
}

// Rule 2: opt-in.
#[test]
fn only_the_exact_value_true_opts_in() {
    let mut object = fixture("advertised.yaml", "search");
    for (value, advertised) in [
        (Some("true"), true),
        (Some("false"), false),
        (Some("TRUE"), false),
        (Some(""), false),
        (None, false),
    ] {
        annotate(&mut object, ann::REGISTRY_EXPORT, value);
        let decision = map(&object);
        assert_eq!(
            matches!(decision, Decision::Advertise(_)),
            advertised,
            "{value:?}"
        );
        if !advertised {
            assert_eq!(decision, Decision::Skip(WithdrawReason::OptedOut));
        }
    }
}

// Rule 3: registry selection.
#[test]
fn the_registry_label_wins_then_the_legacy_alias_then_the_default() {
    let mut object = fixture("advertised.yaml", "search");
    assert_eq!(advertised(&object).registry.as_str(), "default");

    label(&mut object, ann::LEGACY_REGISTRY_NAME, "legacy");
    label(
        &mut object,
        ann::LEGACY_REGISTRY_NAMESPACE,
        "toolhive-system",
    );
    assert_eq!(advertised(&object).registry.as_str(), "legacy");

    label(&mut object, ann::REGISTRY_NAME, "current");
    assert_eq!(advertised(&object).registry.as_str(), "current");

    let mut custom = policy();
    custom.default_registry = "fallback".parse().unwrap();
    let plain = fixture("advertised.yaml", "search");
    match map_with(&plain, &custom) {
        Decision::Advertise(r) => assert_eq!(r.registry.as_str(), "fallback"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_invalid_registry_label_is_rejected_naming_the_label() {
    let mut object = fixture("advertised.yaml", "search");
    label(&mut object, ann::LEGACY_REGISTRY_NAME, "Not A Label");
    let reason = rejected(&object);
    assert_eq!(reason.code(), "invalid_registry");
    assert!(
        reason.to_string().contains(ann::LEGACY_REGISTRY_NAME),
        "{reason}"
    );
}

#[test]
fn the_namespace_policy_restricts_registries() {
    let object = fixture("advertised.yaml", "github"); // namespace dev-tools → engineering
    let mut restricted = policy();
    restricted.namespaces = NamespacePolicy::default()
        .with_rule("engineering=platform".parse::<RegistryRule>().unwrap());
    match map_with(&object, &restricted) {
        Decision::Reject(r) => {
            assert_eq!(r.code(), "registry_not_allowed");
            assert_eq!(
                r.to_string(),
                "namespace dev-tools is not allowed to publish into registry engineering"
            );
        }
        other => panic!("{other:?}"),
    }
    restricted.namespaces =
        NamespacePolicy::default().with_rule("engineering=dev-tools".parse().unwrap());
    assert!(matches!(
        map_with(&object, &restricted),
        Decision::Advertise(_)
    ));
    restricted.namespaces = NamespacePolicy::default().deny_unlisted();
    assert!(matches!(
        map_with(&object, &restricted),
        Decision::Reject(_)
    ));
}

// Rule 4: metadata.
#[test]
fn description_is_required_and_limited_to_100_characters() {
    let mut object = fixture("advertised.yaml", "search");
    annotate(&mut object, ann::REGISTRY_DESCRIPTION, None);
    let reason = rejected(&object);
    assert_eq!(reason, Rejection::MissingDescription);
    assert!(reason.to_string().contains(ann::REGISTRY_DESCRIPTION));

    annotate(&mut object, ann::REGISTRY_DESCRIPTION, Some("   "));
    assert_eq!(rejected(&object), Rejection::MissingDescription);

    annotate(
        &mut object,
        ann::REGISTRY_DESCRIPTION,
        Some(&"é".repeat(100)),
    );
    assert_eq!(
        advertised(&object).description.chars().count(),
        100,
        "characters, not bytes"
    );

    annotate(
        &mut object,
        ann::REGISTRY_DESCRIPTION,
        Some(&"d".repeat(143)),
    );
    assert_eq!(
        rejected(&object).to_string(),
        "description is 143 characters; the registry format allows 100"
    );

    annotate(
        &mut object,
        ann::REGISTRY_DESCRIPTION,
        Some("line one\nline two"),
    );
    assert_eq!(advertised(&object).description, "line one\nline two");
}

#[test]
fn optional_metadata_is_carried_and_checked() {
    let mut object = fixture("advertised.yaml", "search");
    annotate(&mut object, ann::REGISTRY_TITLE, Some("Search"));
    annotate(
        &mut object,
        ann::REGISTRY_ICON,
        Some("https://example.com/search.svg"),
    );
    annotate(&mut object, ann::REGISTRY_CATEGORY, Some("web"));
    annotate(&mut object, ann::TOOLS, Some(r#"["search", "fetch_page"]"#));
    let record = advertised(&object);
    assert_eq!(record.title.as_deref(), Some("Search"));
    assert_eq!(
        record.icon.as_deref(),
        Some("https://example.com/search.svg")
    );
    assert_eq!(record.category.as_deref(), Some("web"));
    assert_eq!(record.tools, ["search", "fetch_page"]);

    annotate(&mut object, ann::REGISTRY_TITLE, Some("new\nline"));
    assert_eq!(
        rejected(&object),
        Rejection::ControlCharacters { field: "title" }
    );
    annotate(&mut object, ann::REGISTRY_TITLE, None);

    annotate(
        &mut object,
        ann::REGISTRY_ICON,
        Some(&format!("https://example.com/{}", "i".repeat(250))),
    );
    assert_eq!(rejected(&object).code(), "invalid_icon");
    annotate(
        &mut object,
        ann::REGISTRY_ICON,
        Some("https://user:pw@example.com/i.png"),
    );
    assert_eq!(rejected(&object).code(), "invalid_icon");
    annotate(&mut object, ann::REGISTRY_ICON, None);

    annotate(&mut object, ann::TOOLS, Some(r#"{"tool": "x"}"#));
    assert_eq!(rejected(&object).code(), "invalid_tools");
    annotate(&mut object, ann::TOOLS, Some(r#"[""]"#));
    assert_eq!(rejected(&object).code(), "invalid_tools");
    annotate(&mut object, ann::TOOLS, Some("[]"));
    assert!(advertised(&object).tools.is_empty());
}

// Rule 5: server name.
#[test]
fn server_name_defaults_and_override() {
    let mut object = fixture("advertised.yaml", "search");
    assert_eq!(
        advertised(&object).server_name.as_str(),
        "com.toolhive.k8s.tools/search"
    );
    annotate(
        &mut object,
        ann::REGISTRY_SERVER_NAME,
        Some("io.example/web-search"),
    );
    // Another name needs a grant (see the ownership tests below).
    assert_eq!(rejected(&object).code(), "name_not_owned");
    let mut granted = policy();
    granted.names = NameOwnership::new(["io.example/*=tools".parse::<NameGrant>().unwrap()]);
    match map_with(&object, &granted) {
        Decision::Advertise(r) => assert_eq!(r.server_name.as_str(), "io.example/web-search"),
        other => panic!("{other:?}"),
    }
    annotate(
        &mut object,
        ann::REGISTRY_SERVER_NAME,
        Some("io.example/a/b"),
    );
    assert_eq!(rejected(&object).code(), "invalid_server_name");

    let short = fixture("rejected.yaml", "x");
    assert!(
        rejected(&short)
            .to_string()
            .contains(ann::REGISTRY_SERVER_NAME),
        "the reason says how to fix it"
    );
}

// Rule 6: version.
#[test]
fn version_comes_from_the_annotation_then_a_publishable_tag_then_the_default() {
    let mut object = fixture("advertised.yaml", "search");
    assert_eq!(advertised(&object).version, "2.3.0");
    annotate(
        &mut object,
        ann::REGISTRY_VERSION,
        Some("2024.06.01-build7"),
    );
    assert_eq!(
        advertised(&object).version,
        "2024.06.01-build7",
        "non-semver exact versions are allowed"
    );
    annotate(&mut object, ann::REGISTRY_VERSION, None);

    object["spec"]["image"] = json!("mcp/search:latest");
    assert_eq!(advertised(&object).version, "1.0.0");
    object["spec"].as_object_mut().unwrap().remove("image");
    assert_eq!(advertised(&object).version, "1.0.0");

    for range in ["^1.0.0", "~1.2", ">=1.0.0", "1.x", "1.*", "1.0 || 2.0"] {
        annotate(&mut object, ann::REGISTRY_VERSION, Some(range));
        assert_eq!(rejected(&object).code(), "invalid_version", "{range}");
    }
}

#[test]
fn image_tags_are_read_like_a_container_runtime_reads_them() {
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let cases = [
        ("ghcr.io/org/server:1.2.3", Some("1.2.3")),
        ("server:v2.0.0-rc.1", Some("2.0.0-rc.1")),
        ("localhost:5000/server:1.2.3", Some("1.2.3")),
        ("localhost:5000/server", None),
        ("server:1.2", Some("1.2")),
        ("server:2026.01.15", Some("2026.01.15")),
        ("server:latest", None),
        ("server:Stable", None),
        ("server:edge", None),
        ("server:main", None),
        ("server:nightly-20260101", None),
        (
            "server:sha256-e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.sig",
            None,
        ),
        ("server", None),
        ("Server:1.0.0", None),
        ("server:1.0.0 ", Some("1.0.0")),
        ("server:1.0.0\n-x", None),
    ];
    for (image, version) in cases {
        assert_eq!(version::from_image(image).as_deref(), version, "{image:?}");
    }
    let pinned = format!("server:1.2.3@{digest}");
    assert_eq!(version::from_image(&pinned).as_deref(), Some("1.2.3"));
    let digest_only = format!("server@{digest}");
    assert_eq!(
        version::from_image(&digest_only),
        None,
        "a digest is not a version"
    );
}

#[test]
fn unusable_version_annotations_are_rejected_with_a_reason_never_replaced() {
    let mut object = fixture("advertised.yaml", "search");
    let long = "9".repeat(256);
    for hostile in [
        "latest",
        "stable",
        "Nightly-2026",
        "main",
        "",
        " ",
        "1.0.0/../../admin",
        "1.0.0?x=1",
        "1.0.0\u{202e}",
        "1.0.0\n-rc",
        "..",
        "-1",
        "1 2",
        long.as_str(),
    ] {
        annotate(&mut object, ann::REGISTRY_VERSION, Some(hostile));
        let rejection = rejected(&object);
        assert_eq!(rejection.code(), "invalid_version", "{hostile:?}");
        let reason = rejection.to_string();
        assert!(reason.contains(ann::REGISTRY_VERSION), "{reason}");
        assert!(reason.len() < 400, "bounded: {reason}");
    }
    annotate(&mut object, ann::REGISTRY_VERSION, Some("stable"));
    assert!(rejected(&object).to_string().contains("release channel"));
}

// Rules 7-8: transport, port and URL.
#[test]
fn transport_and_proxy_mode_pick_the_remote_type() {
    let mut object = fixture("advertised.yaml", "time");
    let spec = object["spec"].as_object_mut().unwrap();
    spec.remove("proxyMode");
    assert_eq!(
        advertised(&object).remote.transport,
        RemoteTransport::StreamableHttp,
        "stdio proxies default to streamable-http"
    );
    object["spec"]["transport"] = json!("streamable-http");
    let record = advertised(&object);
    assert_eq!(record.remote.transport, RemoteTransport::StreamableHttp);
    assert!(record.remote.url.ends_with("/mcp"));
    object["spec"]["transport"] = json!("sse");
    assert_eq!(advertised(&object).remote.transport, RemoteTransport::Sse);
}

#[test]
fn port_comes_from_proxy_port_then_port_then_8080() {
    let mut object = fixture("advertised.yaml", "time");
    object["spec"]["proxyMode"] = json!("streamable-http");
    assert_eq!(
        advertised(&object).remote.url,
        "http://mcp-time-proxy.tools.svc.cluster.local:9090/mcp"
    );
    object["spec"]["port"] = json!(7070);
    assert!(
        advertised(&object).remote.url.contains(":9090/"),
        "proxyPort wins over port"
    );
    object["spec"].as_object_mut().unwrap().remove("proxyPort");
    assert!(advertised(&object).remote.url.contains(":7070/"));
    object["spec"]["port"] = json!("6060");
    assert!(
        advertised(&object).remote.url.contains(":6060/"),
        "numeric strings are read leniently"
    );
    object["spec"].as_object_mut().unwrap().remove("port");
    assert!(advertised(&object).remote.url.contains(":8080/"));
    object["spec"]["port"] = json!(-1);
    assert_eq!(rejected(&object).code(), "unsupported_field");
}

#[test]
fn url_precedence_is_annotation_then_status_then_service() {
    let mut object = fixture("advertised.yaml", "search");
    assert_eq!(
        advertised(&object).remote.url,
        "https://mcp.example.com/search/mcp"
    );
    annotate(&mut object, ann::REGISTRY_URL, None);
    assert_eq!(
        advertised(&object).remote.url,
        "http://mcp-search-proxy.tools.svc.cluster.local:8080/mcp"
    );
    object["status"].as_object_mut().unwrap().remove("url");
    assert_eq!(
        advertised(&object).remote.url,
        "http://mcp-search-proxy.tools.svc.cluster.local:8080/mcp"
    );
    object["status"]["url"] = json!("http://status.example/mcp");
    assert_eq!(advertised(&object).remote.url, "http://status.example/mcp");
}

#[test]
fn a_watcher_can_require_the_url_annotation() {
    let mut strict = policy();
    strict.require_url_annotation = true;
    let annotated = fixture("advertised.yaml", "search");
    assert!(matches!(
        map_with(&annotated, &strict),
        Decision::Advertise(_)
    ));
    let cluster_local = fixture("advertised.yaml", "github");
    match map_with(&cluster_local, &strict) {
        Decision::Reject(r) => assert_eq!(r, Rejection::UrlAnnotationRequired),
        other => panic!("{other:?}"),
    }
}

#[test]
fn urls_must_be_http_without_credentials_and_are_never_echoed() {
    let mut object = fixture("advertised.yaml", "search");
    for bad in [
        "ftp://example.com/mcp",
        "https://admin:hunter2@example.com/mcp",
        "https://token@example.com/mcp",
        "https://example.com/m cp",
        "mailto:ops@example.com",
        "/relative/path",
        "",
    ] {
        annotate(&mut object, ann::REGISTRY_URL, Some(bad));
        let reason = rejected(&object);
        assert_eq!(reason.code(), "invalid_url", "{bad:?}");
        let text = reason.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("token@"),
            "a URL may hold secrets: {text}"
        );
    }
    annotate(
        &mut object,
        ann::REGISTRY_URL,
        Some("http://10.0.0.1:8080/mcp"),
    );
    assert!(matches!(map(&object), Decision::Advertise(_)));
}

#[test]
fn derived_urls_use_each_kinds_service() {
    for (kind, file, name, service) in [
        (
            Kind::MCPServer,
            "advertised.yaml",
            "github",
            "mcp-github-proxy",
        ),
        (
            Kind::MCPRemoteProxy,
            "advertised.yaml",
            "salesforce",
            "mcp-salesforce-remote-proxy",
        ),
        (
            Kind::VirtualMCPServer,
            "advertised.yaml",
            "engineering",
            "vmcp-engineering",
        ),
    ] {
        let mut object = fixture(file, name);
        object["status"].as_object_mut().unwrap().remove("url");
        let record = advertised(&object);
        assert_eq!(record.object.kind(), kind);
        assert!(
            record.remote.url.starts_with(&format!("http://{service}.")),
            "{}",
            record.remote.url
        );
    }
}

// Rule 9: auth.
#[test]
fn every_auth_field_declares_a_required_secret_authorization_header() {
    let base = fixture("advertised.yaml", "search");
    assert!(advertised(&base).remote.headers.is_empty());
    for field in [
        "oidcConfig",
        "oidcConfigRef",
        "externalAuthConfigRef",
        "authServerRef",
    ] {
        let mut object = base.clone();
        object["spec"][field] = json!({"name": "corp-sso"});
        let headers = advertised(&object).remote.headers;
        assert_eq!(headers.len(), 1, "{field}");
        assert_eq!(headers[0].name, "Authorization");
        assert!(headers[0].is_required && headers[0].is_secret, "{field}");
        assert!(headers[0].description.is_some());
    }
    let mut null_auth = base.clone();
    null_auth["spec"]["oidcConfig"] = Value::Null;
    assert!(
        advertised(&null_auth).remote.headers.is_empty(),
        "null is absent"
    );
}

#[test]
fn virtual_servers_read_incoming_auth() {
    let object = fixture("advertised.yaml", "engineering");
    assert_eq!(advertised(&object).remote.headers.len(), 1);
    let mut anonymous = object.clone();
    anonymous["spec"]["incomingAuth"] = json!({"type": "anonymous"});
    assert!(advertised(&anonymous).remote.headers.is_empty());
}

#[test]
fn no_secret_value_reaches_the_record() {
    let mut object = fixture("advertised.yaml", "github");
    object["spec"]["oidcConfig"] =
        json!({"type": "inline", "inline": {"clientSecret": "s3cr3t-value"}});
    object["spec"]["env"] = json!([{"name": "GITHUB_TOKEN", "value": "ghp_secret"}]);
    let json = serde_json::to_string(&advertised(&object)).unwrap();
    assert!(
        !json.contains("s3cr3t-value") && !json.contains("ghp_secret"),
        "{json}"
    );
}

// Rule 10: phase.
#[test]
fn only_running_or_ready_is_advertised_by_default_and_the_policy_can_widen_it() {
    let mut object = fixture("advertised.yaml", "search");
    for (phase, ok) in [
        ("Ready", true),
        ("Running", true),
        ("Pending", false),
        ("Failed", false),
        ("Terminating", false),
        ("Stopped", false),
        ("Degraded", false),
    ] {
        object["status"]["phase"] = json!(phase);
        assert_eq!(
            matches!(map(&object), Decision::Advertise(_)),
            ok,
            "{phase}"
        );
    }
    let mut wide = policy();
    wide.advertised_phases.insert(Phase::from("Degraded"));
    assert!(matches!(map_with(&object, &wide), Decision::Advertise(_)));
}

#[test]
fn validation_comes_before_phase_so_problems_show_early() {
    let mut object = fixture("advertised.yaml", "search");
    object["status"]["phase"] = json!("Pending");
    annotate(&mut object, ann::REGISTRY_DESCRIPTION, None);
    assert_eq!(rejected(&object), Rejection::MissingDescription);
}

// Rule 1: identity.
#[test]
fn objects_without_identity_are_malformed() {
    let base = fixture("advertised.yaml", "search");
    for field in ["name", "namespace", "uid", "resourceVersion"] {
        let mut object = base.clone();
        object["metadata"].as_object_mut().unwrap().remove(field);
        let reason = rejected(&object);
        assert_eq!(reason.code(), "malformed");
        assert!(reason.to_string().contains(field), "{reason}");
    }
    let mut dotted_namespace = base.clone();
    dotted_namespace["metadata"]["namespace"] = json!("a.b");
    assert_eq!(rejected(&dotted_namespace).code(), "malformed");
}

// MCPServerEntry: no infrastructure; the URL, headers and group come from its spec.
#[test]
fn a_server_entry_advertises_its_remote_url_headers_and_group() {
    let record = advertised(&fixture("advertised.yaml", "docs"));
    assert_eq!(record.object.kind(), Kind::MCPServerEntry);
    assert_eq!(record.transport, "streamable-http");
    assert_eq!(record.group.as_deref(), Some("knowledge-tools"));
    assert_eq!(record.phase, Phase::Valid);
    assert_eq!(record.image, None);
    let headers: Vec<(&str, bool)> = record
        .remote
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.is_secret))
        .collect();
    assert_eq!(
        headers,
        [
            ("Authorization", true),
            ("X-Api-Key", true),
            ("X-Tenant-ID", false)
        ]
    );
    let json = serde_json::to_string(&record).unwrap();
    for value in ["tenant-123", "docs-credentials", "api-key", "docs-oauth"] {
        assert!(!json.contains(value), "{value} leaked: {json}");
    }
    let legacy = advertised(&fixture("advertised.yaml", "legacy-entry"));
    assert_eq!(legacy.group.as_deref(), Some("knowledge-tools"));
    assert_eq!(legacy.remote.transport, RemoteTransport::Sse);
}

#[test]
fn a_server_entry_url_follows_the_entry_rule_and_the_annotation_wins() {
    let base = fixture("advertised.yaml", "docs");
    let mut private = base.clone();
    private["spec"]["remoteUrl"] = json!("http://docs.knowledge.svc.cluster.local:8080/mcp");
    assert_eq!(rejected(&private).code(), "invalid_url");
    private["spec"]["allowPrivateEndpoint"] = json!(true);
    assert_eq!(
        advertised(&private).remote.url,
        "http://docs.knowledge.svc.cluster.local:8080/mcp"
    );
    let mut central = policy();
    central.require_url_annotation = true;
    assert!(matches!(map_with(&private, &central), Decision::Reject(_)));
    // A public entry needs no annotation, even on a central watcher.
    assert!(matches!(map_with(&base, &central), Decision::Advertise(_)));
    let mut annotated = base.clone();
    annotate(
        &mut annotated,
        ann::REGISTRY_URL,
        Some("https://gateway.example.com/docs/mcp"),
    );
    assert_eq!(
        advertised(&annotated).remote.url,
        "https://gateway.example.com/docs/mcp"
    );
    annotate(
        &mut annotated,
        ann::REGISTRY_URL,
        Some("https://kubernetes.default.svc/api"),
    );
    let reason = rejected(&annotated).to_string();
    assert!(reason.contains(ann::REGISTRY_URL), "{reason}");
    let mut bad_group = base.clone();
    bad_group["spec"]["groupRef"] = json!({"name": "Not A Name"});
    assert_eq!(rejected(&bad_group).code(), "malformed");
}

// Tool definitions: MCP `Tool` objects; invalid ones are left out, the server stays.
#[test]
fn tool_definitions_are_checked_normalised_and_win_over_tool_names() {
    let mut object = fixture("advertised.yaml", "search");
    annotate(&mut object, ann::TOOLS, Some(r#"["old_name"]"#));
    annotate(
        &mut object,
        ann::TOOL_DEFINITIONS,
        Some(
            r#"[{"name":"search","title":"Search","description":"Searches the web","inputSchema":{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]},"annotations":{"readOnlyHint":true,"vendorHint":1},"icons":[{"src":"http://x"}],"_meta":{"x":1},"extra":true},
               {"name":"fetch","inputSchema":{"type":"object"},"outputSchema":{"type":"object"},"execution":{"taskSupport":"optional"}}]"#,
        ),
    );
    let record = advertised(&object);
    assert_eq!(record.tools, ["search", "fetch"], "the definitions win");
    assert_eq!(record.tool_definitions.len(), 2);
    let search = &record.tool_definitions[0];
    let keys: Vec<&String> = search.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["annotations", "description", "inputSchema", "name", "title"]
    );
    assert_eq!(search["annotations"], json!({"readOnlyHint": true}));
    assert!(herald_core::mapping::tool_definitions_warning(&object).is_none());
    herald_core::validate::record(&record, Default::default()).unwrap();
}

#[test]
fn bad_tool_definitions_leave_the_server_advertised_with_a_reason() {
    let base = fixture("advertised.yaml", "search");
    let oversized = format!(
        r#"[{{"name":"big","description":"d","inputSchema":{{"type":"object","x":"{}"}}}}]"#,
        "y".repeat(herald_core::validate::MAX_TOOL_DEFINITIONS)
    );
    let deep = format!(
        r#"[{{"name":"deep","inputSchema":{{"type":"object","p":{}1{}}}}}]"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    for (value, expected) in [
        ("[{\"name\": <script>", "not JSON"),
        (r#"{"name":"x"}"#, "not a JSON array"),
        (r#"["x"]"#, "not a tool object"),
        (r#"[{"inputSchema":{"type":"object"}}]"#, "has no name"),
        (r#"[{"name":"x"}]"#, "has no inputSchema"),
        (
            r#"[{"name":"x","inputSchema":{"type":"string"}}]"#,
            "\"type\": \"object\"",
        ),
        (
            r#"[{"name":"x","inputSchema":{"type":"object"}},{"name":"x","inputSchema":{"type":"object"}}]"#,
            "defined twice",
        ),
        (
            r#"[{"name":"x","description":"ignore previous\u202e","inputSchema":{"type":"object"}}]"#,
            "invisible",
        ),
        (
            r#"[{"name":"x","inputSchema":{"type":"object","description":"a\u200bb"}}]"#,
            "invisible",
        ),
        (
            r#"[{"name":"x","inputSchema":{"type":"object"},"annotations":{"readOnlyHint":"yes"}}]"#,
            "wrong type",
        ),
        (
            r#"[{"name":"x","inputSchema":{"type":"object"},"execution":{"taskSupport":"always"}}]"#,
            "taskSupport",
        ),
        (&oversized, "bytes; at most 65536"),
        (&deep, "deeper than 32"),
    ] {
        let mut object = base.clone();
        annotate(&mut object, ann::TOOL_DEFINITIONS, Some(value));
        let record = advertised(&object);
        assert!(record.tool_definitions.is_empty(), "{expected}");
        let warning = herald_core::mapping::tool_definitions_warning(&object)
            .unwrap_or_else(|| panic!("no warning for {expected}"));
        assert_eq!(warning.code(), "invalid_tool_definitions");
        let text = warning.to_string();
        assert!(text.contains(expected), "{expected}: {text}");
        assert!(text.contains(ann::TOOL_DEFINITIONS), "{text}");
        assert!(
            text.contains("advertised without tool definitions"),
            "{text}"
        );
    }
}

#[test]
fn a_record_with_forged_tool_definitions_is_refused() {
    let mut record = advertised(&fixture("advertised.yaml", "search"));
    record.tool_definitions =
        vec![json!({"name": "x", "inputSchema": {"type": "object"}, "_meta": {"evil": 1}})];
    assert!(herald_core::validate::record(&record, Default::default()).is_err());
    record.tool_definitions = vec![json!({"name": "x\u{202e}", "inputSchema": {"type": "object"}})];
    assert!(herald_core::validate::record(&record, Default::default()).is_err());
}

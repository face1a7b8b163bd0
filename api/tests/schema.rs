//! The JSON herald-api serves validates against both official `server.json`
//! schemas and the OpenAPI `ServerList`/`ServerResponse` schemas, and the
//! served OpenAPI document keeps the official response schemas unchanged.
//!
//! (The integration tests check the same JSON over HTTP for its shape; this
//! test validates the exact serialization against the schema files.)

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{TimeZone as _, Utc};
use herald_api::query::server_list_json;
use herald_api::routes::OPENAPI;
use herald_api::view::Entry;
use herald_core::merge::merge;
use herald_core::projection::{Fold, fold_applied};
use herald_core::record::{
    DeploymentRecord, Header, Phase, RECORD_VERSION, Remote, RemoteTransport,
};
use herald_core::stored::StoredDeployment;
use herald_core::{Kind, ObjectRef};
use serde_json::{Value, json};

fn spec_dir() -> PathBuf {
    std::env::var_os("HERALD_REGISTRY_SPEC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/registry"))
}

fn read_json(name: &str) -> Value {
    let path = spec_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("schema is JSON")
}

fn official_openapi() -> Value {
    let path = spec_dir().join("openapi.2025-12-01.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).expect("the OpenAPI document is YAML")
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("a valid schema")
}

fn assert_valid(v: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{instance:#}");
}

fn record(cluster: &str, object: &str, server: &str, version: &str) -> DeploymentRecord {
    let at = Utc
        .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .expect("date");
    DeploymentRecord {
        v: RECORD_VERSION,
        cluster: cluster.parse().expect("cluster"),
        registry: "default".parse().expect("registry"),
        object: ObjectRef::new(Kind::MCPServer, "tools", object).expect("object"),
        uid: format!("uid-{cluster}-{object}"),
        resource_version: "7".into(),
        generation: Some(2),
        created_at: Some(at),
        observed_at: at,
        changed_at: None,
        epoch: 1,
        server_name: server.parse().expect("server name"),
        version: version.into(),
        description: format!("Tools for {server}"),
        title: None,
        icon: None,
        category: None,
        tools: Vec::new(),
        remote: Remote {
            transport: RemoteTransport::StreamableHttp,
            url: format!("https://{object}.{cluster}.example.com/mcp"),
            headers: Vec::new(),
            extra: Default::default(),
        },
        phase: Phase::Ready,
        image: None,
        transport: "streamable-http".into(),
        group: None,
        tool_definitions: Vec::new(),
        authz_claims: None,
        package: None,
    }
}

fn stored(records: &[DeploymentRecord]) -> Vec<StoredDeployment> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| match fold_applied(None, r, i as u64 + 1) {
            Fold::Write(s) => s,
            Fold::Stale { .. } => unreachable!("nothing is stored yet"),
            Fold::Refused { reason } => unreachable!("{reason}"),
        })
        .collect()
}

fn sample_entries() -> Vec<Arc<Entry>> {
    let mut rich = record("eu-1", "rich", "io.example/rich", "1.2.3");
    rich.title = Some("Rich <b>server</b>".into());
    rich.icon = Some("https://example.com/icon.png".into());
    rich.category = Some("search".into());
    rich.tools = vec!["find".into(), "fetch".into()];
    rich.remote.headers = vec![
        Header::bearer_token(),
        Header {
            name: "X-Tenant".into(),
            description: None,
            is_required: false,
            is_secret: false,
            extra: Default::default(),
        },
    ];
    let mut sse = record("us-1", "rich", "io.example/rich", "1.2.3");
    sse.remote.transport = RemoteTransport::Sse;
    sse.remote.url = "https://rich.us-1.example.com/sse".into();
    let mut evil = record("eu-1", "evil", "io.example/evil", "snapshot-2026");
    evil.description = "<script>alert(1)</script>".into();
    let records = vec![
        rich,
        sse,
        record("ap-1", "rich-old", "io.example/rich", "1.0.0"),
        evil,
        record(
            "eu-1",
            "plain",
            "com.example.team/plain-server",
            "0.0.1-alpha.1",
        ),
    ];
    merge(stored(&records).iter())
        .into_iter()
        .map(|r| Arc::new(Entry::new(r)))
        .collect()
}

#[test]
fn served_entries_validate_against_both_server_schemas() {
    let entries = sample_entries();
    assert_eq!(entries.len(), 4);
    for schema in [
        "server.schema.2025-09-16.json",
        "server.schema.2025-12-11.json",
    ] {
        let v = validator(&read_json(schema));
        assert!(
            !v.is_valid(&json!({"name": "no-slash", "version": "1"})),
            "{schema} rejects junk"
        );
        for e in &entries {
            let served: Value = serde_json::from_str(&e.json).expect("entry JSON");
            assert_valid(&v, &served["server"], schema);
        }
    }
}

#[test]
fn served_lists_validate_against_the_openapi_response_schemas() {
    let official = official_openapi();
    let components = official["components"].clone();
    let schema_of = |name: &str| {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": components,
            "$ref": format!("#/components/schemas/{name}"),
        })
    };
    let list_v = validator(&schema_of("ServerList"));
    let entry_v = validator(&schema_of("ServerResponse"));
    let entries = sample_entries();
    let page: Value =
        serde_json::from_str(&server_list_json(&entries, Some("6162"))).expect("list JSON");
    assert_valid(&list_v, &page, "ServerList");
    let last: Value =
        serde_json::from_str(&server_list_json(&entries[..1], None)).expect("list JSON");
    assert_valid(&list_v, &last, "ServerList without a next cursor");
    for e in &entries {
        assert_valid(
            &entry_v,
            &serde_json::from_str(&e.json).expect("entry"),
            "ServerResponse",
        );
    }
}

#[test]
fn the_served_openapi_document_keeps_the_official_schemas() {
    let mut ours: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    let official = official_openapi();
    // One addition from the official API after 2025-12-01: `statusChangedAt`, sent only
    // on deleted entries, which only a client asking for deletions (`include_deleted`,
    // `updated_since`) receives.
    let official_meta = &mut ours["components"]["schemas"]["ServerResponse"]["properties"]["_meta"]
        ["properties"]["io.modelcontextprotocol.registry/official"]["properties"];
    assert!(
        official_meta
            .as_object_mut()
            .and_then(|m| m.remove("statusChangedAt"))
            .is_some(),
        "statusChangedAt is documented"
    );
    for name in [
        "ServerList",
        "ServerResponse",
        "ServerDetail",
        "RemoteTransport",
        "Icon",
        "Package",
    ] {
        assert_eq!(
            ours["components"]["schemas"][name], official["components"]["schemas"][name],
            "{name}"
        );
    }
    for (path, op) in ours["paths"].as_object().expect("paths") {
        let ops: Vec<&String> = op.as_object().expect("operations").keys().collect();
        assert_eq!(ops, ["get"], "{path} is read-only");
    }
}

//! The merge into `server.json`: grouping, remote union, deterministic
//! metadata, `isLatest`, and output that validates against both official
//! schemas.

mod common;

use common::*;
use herald_core::DeploymentRecord;
use herald_core::merge::{ServerResponse, merge};
use herald_core::projection::{Fold, fold_applied};
use herald_core::record::Header;
use herald_core::stored::StoredDeployment;
use herald_core::version::compare;
use serde_json::Value;

fn stored(records: &[DeploymentRecord]) -> Vec<StoredDeployment> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| match fold_applied(None, r, i as u64 + 1) {
            Fold::Write(s) => s,
            Fold::Stale { .. } => unreachable!(),
            Fold::Refused { reason } => unreachable!("{reason}"),
        })
        .collect()
}

fn schema_validators() -> Vec<(String, jsonschema::Validator)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/registry");
    [
        "server.schema.2025-09-16.json",
        "server.schema.2025-12-11.json",
    ]
    .into_iter()
    .map(|file| {
        let text =
            std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let schema: Value = serde_json::from_str(&text).unwrap();
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        (file.to_owned(), validator)
    })
    .collect()
}

pub fn assert_valid_server_json(entries: &[ServerResponse]) {
    let validators = schema_validators();
    for entry in entries {
        let server = serde_json::to_value(&entry.server).unwrap();
        for (file, validator) in &validators {
            let errors: Vec<String> = validator
                .iter_errors(&server)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{} against {file}: {errors:?}\n{server:#}",
                entry.server.name
            );
        }
    }
}

#[test]
fn one_server_in_three_clusters_is_one_entry_with_three_remotes() {
    let records: Vec<_> = ["c3", "c1", "c2"]
        .iter()
        .map(|c| record(c, "tools", "search", "io.example/search", "2.0.0"))
        .collect();
    let entries = merge(&stored(&records));
    assert_eq!(entries.len(), 1);
    let urls: Vec<&str> = entries[0]
        .server
        .remotes
        .iter()
        .map(|r| r.url.as_str())
        .collect();
    assert_eq!(
        urls,
        [
            "https://search.tools.c1.example.com/mcp",
            "https://search.tools.c2.example.com/mcp",
            "https://search.tools.c3.example.com/mcp"
        ],
        "stable order: by cluster"
    );
    let deployments = &entries[0].meta.herald.as_ref().unwrap().deployments;
    assert_eq!(
        deployments
            .iter()
            .map(|d| d.cluster.as_str())
            .collect::<Vec<_>>(),
        ["c1", "c2", "c3"]
    );
    assert!(entries[0].meta.official.is_latest);
    assert_valid_server_json(&entries);

    let two = merge(&stored(&records[1..]));
    assert_eq!(two[0].server.remotes.len(), 2, "withdrawing one leaves two");
}

#[test]
fn remotes_are_deduplicated_by_url_and_headers_united() {
    let a = record("c1", "ns-a", "search", "io.example/search", "2.0.0");
    let mut b = record("c1", "ns-b", "search", "io.example/search", "2.0.0");
    b.remote.url = a.remote.url.clone();
    b.remote.headers = vec![Header::bearer_token()];
    let entries = merge(&stored(&[b, a]));
    assert_eq!(entries[0].server.remotes.len(), 1);
    assert_eq!(entries[0].server.remotes[0].headers.len(), 1);
    assert_eq!(
        entries[0].meta.herald.as_ref().unwrap().deployments.len(),
        2
    );
}

#[test]
fn conflicting_metadata_resolves_by_deployment_order_whatever_the_input_order() {
    let mut first = record("a-cluster", "tools", "search", "io.example/search", "2.0.0");
    first.description = "from a-cluster".into();
    let mut second = record("b-cluster", "tools", "search", "io.example/search", "2.0.0");
    second.description = "from b-cluster".into();
    second.title = Some("Title from b".into());
    second.icon = Some("https://example.com/b.png".into());
    for input in [
        vec![first.clone(), second.clone()],
        vec![second.clone(), first.clone()],
    ] {
        let e = &merge(&stored(&input))[0];
        assert_eq!(e.server.description, "from a-cluster");
        assert_eq!(
            e.server.title.as_deref(),
            Some("Title from b"),
            "optional fields from the first that sets them"
        );
        assert_eq!(e.server.icons[0].src, "https://example.com/b.png");
    }
}

#[test]
fn versions_are_separate_entries_and_is_latest_follows_semver() {
    let records = [
        record("c1", "tools", "v1", "io.example/search", "1.10.0"),
        record("c1", "tools", "v2", "io.example/search", "1.9.0"),
        record("c1", "tools", "v3", "io.example/search", "2.0.0-rc.1"),
        record("c1", "tools", "other", "io.example/other", "0.1.0"),
    ];
    let entries = merge(&stored(&records));
    let latest: Vec<(String, String, bool)> = entries
        .iter()
        .map(|e| {
            (
                e.server.name.to_string(),
                e.server.version.clone(),
                e.meta.official.is_latest,
            )
        })
        .collect();
    assert_eq!(
        latest,
        [
            ("io.example/other".into(), "0.1.0".into(), true),
            ("io.example/search".into(), "1.10.0".into(), false),
            ("io.example/search".into(), "1.9.0".into(), false),
            ("io.example/search".into(), "2.0.0-rc.1".into(), true),
        ]
    );
    assert_valid_server_json(&entries);
}

#[test]
fn non_semver_versions_rank_below_semver_then_by_spelling() {
    use std::cmp::Ordering::*;
    assert_eq!(compare("1.0.0", "2024-06"), Greater);
    assert_eq!(compare("0.0.1-alpha", "99"), Greater);
    assert_eq!(compare("build-1", "build-2"), Less);
    assert_eq!(
        compare("build-9", "build-10"),
        Greater,
        "spelling, not numbers"
    );
    assert_eq!(
        compare("1.0.0+b", "1.0.0+a"),
        Greater,
        "build metadata orders too"
    );
    assert_eq!(compare("1.10.0", "1.9.0"), Greater);
}

#[test]
fn official_meta_and_herald_meta_are_filled() {
    let r = record("c1", "tools", "search", "io.example/search", "2.0.0");
    let entries = merge(&stored(std::slice::from_ref(&r)));
    let json = serde_json::to_value(&entries[0]).unwrap();
    let official = &json["_meta"]["io.modelcontextprotocol.registry/official"];
    assert_eq!(official["status"], "active");
    assert_eq!(official["isLatest"], true);
    assert_eq!(
        official["updatedAt"],
        serde_json::to_value(r.observed_at).unwrap()
    );
    let official_keys: Vec<&String> = official.as_object().unwrap().keys().collect();
    assert_eq!(
        official_keys,
        ["isLatest", "publishedAt", "status", "updatedAt"],
        "the official block allows no other keys"
    );
    let d = &json["_meta"]["dev.herald"]["deployments"][0];
    assert_eq!(d["cluster"], "c1");
    assert_eq!(d["namespace"], "tools");
    assert_eq!(d["kind"], "MCPServer");
    assert_eq!(d["name"], "search");
    assert_eq!(d["phase"], "Ready");
    assert!(d["lastSeen"].is_string());
}

#[test]
fn every_advertised_fixture_merges_into_valid_server_json() {
    let records: Vec<DeploymentRecord> = load("advertised.yaml")
        .iter()
        .map(|o| match map(o) {
            herald_core::Decision::Advertise(r) => *r,
            other => panic!("{other:?}"),
        })
        .collect();
    let entries = merge(&stored(&records));
    assert_eq!(entries.len(), records.len());
    assert_valid_server_json(&entries);
}

#[test]
fn the_schema_check_itself_catches_invalid_documents() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../spec/registry/server-json-examples/invalid");
    let validators = schema_validators();
    let (_, newest) = &validators[1];
    for file in std::fs::read_dir(dir).unwrap() {
        let path = file.unwrap().path();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(
            !newest.is_valid(&doc),
            "{} should be invalid",
            path.display()
        );
    }
}

/// ToolHive's block, one per remote URL, in the shape its own types give it.
#[test]
fn the_toolhive_block_is_keyed_by_remote_url_in_toolhives_shape() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_path("toolhive-server-extensions.schema.json")).unwrap(),
    )
    .unwrap();
    let toolhive = jsonschema::validator_for(&schema).unwrap();
    let mut a = record("c1", "tools", "search", "io.example/search", "2.0.0");
    a.category = Some("search".to_owned());
    a.tools = vec!["web_search".to_owned(), "dotted.name".to_owned()];
    a.tool_definitions = herald_core::validate::tool_definitions(
        r#"[{"name":"web_search","description":"Searches","inputSchema":{"type":"object"}}]"#,
    )
    .unwrap();
    let mut b = record("c2", "tools", "search", "io.example/search", "2.0.0");
    b.category = Some("Not A Tag".to_owned());
    let entries = merge(&stored(&[a.clone(), b.clone()]));
    assert_eq!(entries.len(), 1);
    let json = serde_json::to_value(&entries[0]).unwrap();
    let blocks = json["server"]["_meta"]["io.modelcontextprotocol.registry/publisher-provided"]
        ["io.github.stacklok"]
        .as_object()
        .expect("ToolHive's blocks under server._meta");
    assert_eq!(blocks.len(), 2, "one per remote URL");
    for block in blocks.values() {
        let errors: Vec<String> = toolhive.iter_errors(block).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?} in {block:#}");
        assert_eq!(block["status"], "active");
    }
    let first = &blocks[&a.remote.url];
    assert_eq!(first["metadata"]["kubernetes"]["kind"], "MCPServer");
    assert_eq!(first["metadata"]["kubernetes"]["namespace"], "tools");
    assert_eq!(first["metadata"]["kubernetes"]["name"], "search");
    assert_eq!(first["metadata"]["kubernetes"]["uid"], a.uid.as_str());
    assert_eq!(
        first["metadata"]["kubernetes"]["transport"],
        "streamable-http"
    );
    assert_eq!(
        first["tools"],
        serde_json::json!(["web_search"]),
        "ToolHive refuses dots"
    );
    assert_eq!(first["tags"], serde_json::json!(["search"]));
    assert_eq!(first["tool_definitions"][0]["name"], "web_search");
    let second = &blocks[&b.remote.url];
    assert!(second.get("tags").is_none(), "not a ToolHive tag");
    // Still valid server.json, and Herald's own _meta keeps the detail.
    for (name, validator) in schema_validators() {
        assert!(validator.is_valid(&json["server"]), "{name}");
    }
    assert_eq!(
        json["_meta"]["dev.herald"]["deployments"][1]["category"],
        "Not A Tag"
    );
}

#[test]
fn packages_of_merged_deployments_are_deduplicated_in_deployment_order() {
    let mut records: Vec<DeploymentRecord> = ["c1", "c2", "c3"]
        .iter()
        .map(|c| record(c, "tools", "search", "io.example/search", "2.3.0"))
        .collect();
    let first = records[0]
        .package
        .clone()
        .expect("the fixture's image is a package");
    assert_eq!(
        (first.identifier.as_str(), first.version.as_str()),
        ("mcp/search", "2.3.0")
    );
    let entries = merge(&stored(&records));
    let packages = &entries[0].server.extra["packages"];
    assert_eq!(packages.as_array().unwrap().len(), 1, "{packages:#}");
    assert_eq!(packages[0]["registryType"], "oci");
    assert_eq!(
        packages[0]["transport"],
        serde_json::json!({"type": "streamable-http", "url": "http://localhost:8080/mcp"})
    );
    assert_valid_server_json(&entries);

    // A mirror image in the third cluster is a second package, after the first.
    records[2].package = herald_core::package::of("ghcr.io/mirror/search:2.3.0", "stdio", 0);
    let entries = merge(&stored(&records));
    let identifiers: Vec<&str> = entries[0].server.extra["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identifier"].as_str().unwrap())
        .collect();
    assert_eq!(identifiers, ["mcp/search", "ghcr.io/mirror/search"]);
    assert_valid_server_json(&entries);

    // No deployment with a package (watchers with --packages=false, or older ones): no key.
    for r in &mut records {
        r.package = None;
    }
    let entries = merge(&stored(&records));
    assert!(!entries[0].server.extra.contains_key("packages"));
}

#[test]
fn a_record_of_an_older_watcher_reads_without_a_package() {
    let r = record("c1", "tools", "search", "io.example/search", "2.3.0");
    let mut json = serde_json::to_value(&r).unwrap();
    assert!(json.get("package").is_some());
    json.as_object_mut().unwrap().remove("package");
    let old: DeploymentRecord = serde_json::from_value(json).unwrap();
    assert_eq!(old.package, None);
    herald_core::validate::record(&old, Default::default()).unwrap();
    let entries = merge(&stored(&[old, r]));
    assert_eq!(
        entries[0].server.extra["packages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_tampered_package_in_a_record_is_refused() {
    let mut r = record("c1", "tools", "search", "io.example/search", "2.3.0");
    r.package.as_mut().unwrap().transport.url = Some("https://evil.example/mcp".to_owned());
    assert!(herald_core::validate::record(&r, Default::default()).is_err());
}

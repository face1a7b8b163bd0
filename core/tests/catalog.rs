//! Catalog conversion: the official examples import, invalid entries are
//! refused with a reason, and a ToolHive `registry.json` becomes valid
//! `server.json`; catalog entries fold order-safely and merge with the
//! deployments of the same name and version.

mod common;

use std::path::{Path, PathBuf};

use herald_core::catalog_record::{CatalogRecord, CatalogWithdrawal};
use herald_core::import::{
    TOOLHIVE_META_KEY, check_entry, parse_official_page, parse_toolhive_registry,
};
use herald_core::merge::merge_registry;
use herald_core::projection::{
    CatalogFold, Fold, fold_applied, fold_catalog_applied, fold_catalog_withdrawn,
};
use herald_core::stored::StoredCatalog;
use serde_json::{Value, json};

fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/registry/server-json-examples")
}

fn documents(folder: &str) -> Vec<(String, Value)> {
    let mut docs: Vec<_> = std::fs::read_dir(spec_dir().join(folder))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap(),
            )
        })
        .collect();
    docs.sort_by(|a, b| a.0.cmp(&b.0));
    docs
}

fn validators() -> Vec<jsonschema::Validator> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/registry");
    [
        "server.schema.2025-09-16.json",
        "server.schema.2025-12-11.json",
    ]
    .iter()
    .map(|f| {
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap();
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap()
    })
    .collect()
}

#[test]
fn every_valid_official_example_is_a_catalog_entry() {
    let mut count = 0;
    for folder in ["valid", "docs-generic-server-json"] {
        for (file, doc) in documents(folder) {
            let entry = check_entry(&doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(entry.name.as_str(), doc["name"]);
            assert_eq!(entry.server, doc, "kept as the source wrote it");
            count += 1;
        }
    }
    assert_eq!(count, 18);
}

#[test]
fn invalid_entries_that_break_the_merge_are_refused_with_a_reason() {
    for (file, doc) in documents("invalid") {
        let refused = check_entry(&doc);
        match file.as_str() {
            "bad-name-pattern.json" | "missing-name.json" => {
                assert!(refused.unwrap_err().reason.contains("name"), "{file}")
            }
            "description-too-long.json" => assert!(
                refused.unwrap_err().reason.contains("description is"),
                "{file}"
            ),
            // Package details are left to full schema validation by the importer.
            _ => {}
        }
    }
}

#[test]
fn official_pages_carry_entries_meta_and_the_next_cursor() {
    let valid = documents("valid");
    let page = json!({
        "servers": [
            {"server": valid[0].1, "_meta": {"io.modelcontextprotocol.registry/official": {"status": "active"}}},
            {"server": {"name": "bad", "description": "x", "version": "1.0.0"}},
        ],
        "metadata": {"nextCursor": "abc", "count": 2}
    });
    let parsed = parse_official_page(&serde_json::to_vec(&page).unwrap()).unwrap();
    assert_eq!(parsed.next_cursor.as_deref(), Some("abc"));
    assert_eq!(parsed.entries.len(), 2);
    let first = parsed.entries[0].as_ref().unwrap();
    assert_eq!(
        first.meta.as_ref().unwrap()["io.modelcontextprotocol.registry/official"]["status"],
        "active"
    );
    assert!(parsed.entries[1].is_err());
    assert!(parse_official_page(b"{\"items\": []}").is_err());
    assert!(parse_official_page(b"not json").is_err());
    let last = parse_official_page(br#"{"servers": [], "metadata": {"nextCursor": ""}}"#).unwrap();
    assert_eq!(last.next_cursor, None);
}

#[test]
fn deleted_entries_of_a_page_are_named_not_imported() {
    let official = "io.modelcontextprotocol.registry/official";
    let page = json!({
        "servers": [
            {"server": {"name": "io.example/gone", "description": "d", "version": "1.0.0"},
             "_meta": {official: {"status": "deleted", "statusChangedAt": "2026-01-01T00:00:00Z"}}},
            // Unreadable deleted items are dropped, never imported.
            {"server": {"name": "bad", "version": "1.0.0"}, "_meta": {official: {"status": "deleted"}}},
            {"server": {"name": "io.example/gone", "version": "latest"}, "_meta": {official: {"status": "deleted"}}},
        ],
        "metadata": {"count": 3}
    });
    let parsed = parse_official_page(&serde_json::to_vec(&page).unwrap()).unwrap();
    assert!(parsed.entries.is_empty());
    assert_eq!(
        parsed.deleted,
        [("io.example/gone".parse().unwrap(), "1.0.0".to_owned())]
    );
}

#[test]
fn a_toolhive_registry_converts_to_valid_server_json() {
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/toolhive-registry.json"),
    )
    .unwrap();
    let converted = parse_toolhive_registry(&bytes, "io.github.stacklok").unwrap();
    assert_eq!(converted.len(), 5);
    let (ok, bad): (Vec<_>, Vec<_>) = converted.into_iter().partition(Result::is_ok);
    assert_eq!(bad.len(), 1);
    let refused = bad[0].as_ref().unwrap_err();
    assert_eq!(refused.entry, "io.github.stacklok/too-wordy");
    assert!(
        refused.reason.contains("description is 115 characters"),
        "{refused}"
    );
    let entries: Vec<_> = ok.into_iter().map(Result::unwrap).collect();
    for entry in &entries {
        for v in validators() {
            let errors: Vec<String> = v
                .iter_errors(&entry.server)
                .map(|e| e.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{}: {errors:?}\n{:#}",
                entry.name,
                entry.server
            );
        }
    }
    let by_name = |n: &str| {
        entries
            .iter()
            .find(|e| e.name.as_str() == format!("io.github.stacklok/{n}"))
            .unwrap()
    };

    let github = by_name("github");
    assert_eq!(github.version, "0.19.1");
    let package = &github.server["packages"][0];
    assert_eq!(package["registryType"], "oci");
    assert_eq!(
        package["identifier"],
        "ghcr.io/github/github-mcp-server:v0.19.1"
    );
    assert_eq!(package["transport"]["type"], "stdio");
    assert_eq!(package["environmentVariables"][0]["isSecret"], true);
    assert_eq!(package["environmentVariables"][1]["default"], "github.com");
    assert_eq!(github.server["repository"]["source"], "github");
    let provided = &github.server["_meta"]["io.modelcontextprotocol.registry/publisher-provided"]
        [TOOLHIVE_META_KEY];
    assert_eq!(provided["tier"], "Official");
    assert_eq!(provided["tools"][0], "create_issue");

    let fetch = by_name("fetch");
    assert_eq!(
        fetch.server["packages"][0]["transport"]["url"],
        "http://localhost:8080/mcp"
    );

    let stripe = by_name("stripe-remote");
    let remote = &stripe.server["remotes"][0];
    assert_eq!(remote["type"], "sse");
    assert_eq!(remote["url"], "https://mcp.stripe.com/sse");
    assert_eq!(remote["headers"][0]["isRequired"], true);
    assert_eq!(remote["headers"][0]["isSecret"], true);
    assert_eq!(remote["headers"][1]["choices"][1], "acct_2");
    assert_eq!(stripe.version, "1.0.0");
}

#[test]
fn documents_that_are_not_registries_are_refused_whole() {
    assert!(parse_toolhive_registry(b"[]", "x.y").is_err());
    assert!(parse_toolhive_registry(b"{\"version\": \"1\"}", "x.y").is_err());
    assert!(
        parse_toolhive_registry(b"{\"servers\": {\"a\": 3}}", "io.example").unwrap()[0].is_err()
    );
}

fn listed(doc: Value, meta: Option<Value>, seq: u64) -> StoredCatalog {
    let mut entry = check_entry(&doc).unwrap();
    entry.meta = meta;
    let record = CatalogRecord::new(
        "upstream".parse().unwrap(),
        "default".parse().unwrap(),
        entry,
        common::seen_at(),
    );
    match fold_catalog_applied(None, &record, seq) {
        CatalogFold::Write(stored) => stored,
        CatalogFold::Stale { .. } | CatalogFold::Refused { .. } => {
            unreachable!("nothing stored yet")
        }
    }
}

fn weather(version: &str) -> Value {
    json!({
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-09-16/server.schema.json",
        "name": "io.example/search",
        "description": "Search, as the catalog describes it",
        "version": version,
        "repository": {"url": "https://github.com/example/search", "source": "github"},
        "remotes": [{
            "type": "streamable-http",
            "url": "https://{tenant}.search.example.com/mcp",
            "variables": {"tenant": {"description": "Your tenant", "isRequired": true}},
            "headers": [{"name": "X-Key", "isSecret": true, "isRequired": true, "format": "string"}],
        }],
    })
}

#[test]
fn catalog_folds_are_order_safe_and_keep_tombstones() {
    let stored = listed(weather("2.0.0"), None, 5);
    let record = stored.live().unwrap().clone();
    assert!(matches!(
        fold_catalog_applied(Some(&stored), &record, 4),
        CatalogFold::Stale { stored_seq: 5 }
    ));
    let withdrawal = CatalogWithdrawal {
        v: 1,
        source: record.source.clone(),
        registry: record.registry.clone(),
        server_name: record.server_name.clone(),
        version: record.version.clone(),
        observed_at: common::seen_at(),
    };
    let CatalogFold::Write(tombstone) =
        fold_catalog_withdrawn(Some(&stored), &withdrawal, 6, common::seen_at())
    else {
        panic!("a newer withdrawal writes");
    };
    assert!(tombstone.live().is_none());
    // A late, older applied does not resurrect the entry.
    assert!(matches!(
        fold_catalog_applied(Some(&tombstone), &record, 5),
        CatalogFold::Stale { stored_seq: 6 }
    ));
    assert_eq!(tombstone.key(), stored.key());
    assert_eq!(
        StoredCatalog::from_json(&tombstone.to_json()).unwrap(),
        tombstone
    );
}

#[test]
fn a_deployment_merges_into_its_catalog_entry() {
    let official = json!({"io.modelcontextprotocol.registry/official": {
        "status": "active", "publishedAt": "2025-01-01T00:00:00Z", "updatedAt": "2025-02-01T00:00:00Z", "isLatest": true},
        "io.example/extra": {"stars": 5}});
    let catalog = [
        listed(weather("2.0.0"), Some(official), 1),
        listed(weather("1.0.0"), None, 2),
    ];
    let record = common::record("prod-eu", "tools", "search", "io.example/search", "2.0.0");
    let Fold::Write(deployed) = fold_applied(None, &record, 3) else {
        unreachable!()
    };
    let mut other = common::record("prod-eu", "tools", "search-3", "io.example/search", "3.0.0");
    other.uid = "other".into();
    let Fold::Write(deployed_3) = fold_applied(None, &other, 4) else {
        unreachable!()
    };
    let entries = merge_registry(&catalog, [&deployed, &deployed_3]);
    let versions: Vec<&str> = entries.iter().map(|e| e.server.version.as_str()).collect();
    assert_eq!(versions, ["1.0.0", "2.0.0", "3.0.0"]);
    let merged = serde_json::to_value(&entries[1]).unwrap();
    // Catalog metadata, catalog remote first (with its variables and header
    // fields intact), then the deployed remote.
    assert_eq!(
        merged["server"]["description"],
        "Search, as the catalog describes it"
    );
    assert_eq!(merged["server"]["repository"]["source"], "github");
    assert_eq!(
        merged["server"]["remotes"][0],
        weather("2.0.0")["remotes"][0],
        "nothing of the catalog's remote is lost"
    );
    assert_eq!(
        merged["server"]["remotes"][1]["url"],
        record.remote.url.as_str()
    );
    assert_eq!(merged["server"]["remotes"].as_array().unwrap().len(), 2);
    // The deployed remote's ToolHive block joins the catalog document.
    let toolhive = &merged["server"]["_meta"]["io.modelcontextprotocol.registry/publisher-provided"]
        ["io.github.stacklok"];
    assert_eq!(toolhive[record.remote.url.as_str()]["status"], "active");
    assert_eq!(toolhive.as_object().unwrap().len(), 1);
    let herald = &merged["_meta"]["dev.herald"];
    assert_eq!(herald["deployments"][0]["url"], record.remote.url.as_str());
    assert_eq!(herald["catalogs"][0]["source"], "upstream");
    assert_eq!(merged["_meta"]["io.example/extra"]["stars"], 5);
    let official = &merged["_meta"]["io.modelcontextprotocol.registry/official"];
    assert_eq!(official["publishedAt"], "2025-01-01T00:00:00Z");
    assert_eq!(
        official["isLatest"], false,
        "3.0.0 is deployed only, and later"
    );
    assert!(entries[2].meta.official.is_latest);
    assert!(entries[2].meta.herald.as_ref().unwrap().catalogs.is_empty());
    // The catalog-only version has no deployment.
    assert!(
        !entries[0]
            .meta
            .herald
            .as_ref()
            .unwrap()
            .has_live_deployment()
    );
    // Emitted entries still validate.
    for entry in &entries {
        let doc = serde_json::to_value(&entry.server).unwrap();
        for v in validators() {
            assert!(v.is_valid(&doc), "{doc}");
        }
    }
}

#[test]
fn deployed_packages_join_the_catalog_entrys_own_once() {
    let mut doc = weather("2.0.0");
    doc["packages"] = json!([{
        "registryType": "oci",
        "identifier": "mcp/search",
        "version": "2.0.0",
        "transport": {"type": "stdio"},
        "runtimeHint": "docker"
    }]);
    let catalog = [listed(doc.clone(), None, 1)];
    // The fixture's image is mcp/search:2.3.0; give it the catalog's tag, then another.
    let mut record = common::record("prod-eu", "tools", "search", "io.example/search", "2.0.0");
    record.package = herald_core::package::of("mcp/search:2.0.0", "stdio", 0);
    let mut mirror = common::record("prod-us", "tools", "search", "io.example/search", "2.0.0");
    mirror.package = herald_core::package::of("ghcr.io/mirror/search:2.0.0", "stdio", 0);
    let Fold::Write(a) = fold_applied(None, &record, 2) else {
        unreachable!()
    };
    let Fold::Write(b) = fold_applied(None, &mirror, 3) else {
        unreachable!()
    };
    let entries = merge_registry(&catalog, [&a, &b]);
    let packages = &entries[0].server.extra["packages"];
    assert_eq!(
        packages[0], doc["packages"][0],
        "the catalog's package first, intact"
    );
    let identifiers: Vec<&str> = packages
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identifier"].as_str().unwrap())
        .collect();
    assert_eq!(identifiers, ["mcp/search", "ghcr.io/mirror/search"]);
}

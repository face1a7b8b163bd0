//! Catalog conversion: the official examples import, invalid entries are
//! refused with a reason, and a ToolHive `registry.json` becomes valid
//! `server.json`.

use std::path::{Path, PathBuf};

use herald_core::catalog::{
    TOOLHIVE_META_KEY, check_entry, parse_official_page, parse_toolhive_registry,
};
use serde_json::{Value, json};

fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/registry-spec/server-json-examples")
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/registry-spec");
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

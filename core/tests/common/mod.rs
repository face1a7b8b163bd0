//! Fixtures shared by core's test files: real Kubernetes manifests as YAML,
//! and a policy and observation to map them with.

#![allow(dead_code)]

use std::path::PathBuf;

use chrono::{DateTime, TimeZone, Utc};
use herald_core::mapping::{Decision, Observation, decide};
use herald_core::{Kind, WatcherPolicy};
use serde_json::Value;

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every document of a multi-document YAML file, as JSON.
pub fn load(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture_path(name)).expect("fixture exists");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("fixture is valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

pub fn kind_of(object: &Value) -> Kind {
    object["kind"].as_str().unwrap().parse().unwrap()
}

pub fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap()
}

pub fn test_annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["annotations"][format!("herald.test/{key}")].as_str()
}

pub fn policy() -> WatcherPolicy {
    WatcherPolicy::new("prod-eu".parse().unwrap())
}

pub fn seen_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap()
}

pub fn observation() -> Observation {
    Observation {
        observed_at: seen_at(),
        epoch: 7,
    }
}

pub fn map(object: &Value) -> Decision {
    decide(kind_of(object), object, &policy(), observation())
}

pub fn map_with(object: &Value, policy: &WatcherPolicy) -> Decision {
    decide(kind_of(object), object, policy, observation())
}

/// The named document of a fixture file.
pub fn fixture(file: &str, name: &str) -> Value {
    load(file)
        .into_iter()
        .find(|o| name_of(o) == name)
        .unwrap_or_else(|| panic!("no object {name} in {file}"))
}

/// Sets (or with `None` removes) `metadata.annotations[key]`.
pub fn annotate(object: &mut Value, key: &str, value: Option<&str>) {
    let annotations = object["metadata"]
        .as_object_mut()
        .unwrap()
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    match value {
        Some(v) => annotations[key] = Value::from(v),
        None => {
            annotations.as_object_mut().unwrap().remove(key);
        }
    }
}

pub fn label(object: &mut Value, key: &str, value: &str) {
    let labels = object["metadata"]
        .as_object_mut()
        .unwrap()
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    labels[key] = Value::from(value);
}

/// A realistic advertised record: `server` deployed as `name` in `cluster`.
pub fn record(
    cluster: &str,
    namespace: &str,
    name: &str,
    server: &str,
    version: &str,
) -> herald_core::DeploymentRecord {
    let mut object = fixture("advertised.yaml", "search");
    object["metadata"]["name"] = Value::from(name);
    object["metadata"]["namespace"] = Value::from(namespace);
    object["metadata"]["uid"] = Value::from(format!("uid-{cluster}-{namespace}-{name}"));
    annotate(
        &mut object,
        herald_core::annotations::REGISTRY_SERVER_NAME,
        Some(server),
    );
    annotate(
        &mut object,
        herald_core::annotations::REGISTRY_VERSION,
        Some(version),
    );
    annotate(
        &mut object,
        herald_core::annotations::REGISTRY_URL,
        Some(&format!(
            "https://{name}.{namespace}.{cluster}.example.com/mcp"
        )),
    );
    let mut p = policy();
    p.cluster = cluster.parse().unwrap();
    p.names = herald_core::ownership::NameOwnership::new([herald_core::ownership::NameGrant::new(
        None,
        server,
        [namespace.to_owned()],
    )
    .unwrap()]);
    match map_with(&object, &p) {
        Decision::Advertise(r) => *r,
        other => panic!("{other:?}"),
    }
}

//! ToolHive objects in a test cluster: the API of a kind, opted-in objects, their
//! status and patches, as the tests and the storm write them.

use herald_core::Kind;
use herald_core::annotations as ann;
use herald_core::object::TOOLHIVE_GROUP;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// The API resource of a ToolHive kind at `version`.
pub fn resource_at(kind: Kind, version: &str) -> ApiResource {
    let gvk = GroupVersionKind::gvk(TOOLHIVE_GROUP, version, kind.as_str());
    ApiResource::from_gvk_with_plural(&gvk, kind.plural())
}

/// The API resource of a ToolHive kind at its first (storage) version.
pub fn resource(kind: Kind) -> ApiResource {
    resource_at(kind, kind.versions()[0])
}

/// `kind` objects at `version` in `namespace`.
pub fn api_at(
    client: kube::Client,
    kind: Kind,
    version: &str,
    namespace: &str,
) -> Api<DynamicObject> {
    Api::namespaced_with(client, namespace, &resource_at(kind, version))
}

/// MCPServers (at the storage version) in `namespace`.
pub fn mcpservers(client: kube::Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, namespace, &resource(Kind::MCPServer))
}

/// The body of an object `name` that opts in with `description`, and an empty spec.
pub fn opted_in(name: &str, description: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "annotations": {
                ann::REGISTRY_EXPORT: "true",
                ann::REGISTRY_DESCRIPTION: description,
            },
        },
        "spec": {},
    })
}

/// `base` with `value` at `path`, creating objects on the way.
pub fn with(mut base: Value, path: &[&str], value: Value) -> Value {
    let mut at = &mut base;
    for key in &path[..path.len() - 1] {
        if at.get(*key).is_none() {
            at[*key] = json!({});
        }
        at = &mut at[*key];
    }
    at[path[path.len() - 1]] = value;
    base
}

/// `body` labelled into `registry`.
pub fn in_registry(body: Value, registry: &str) -> Value {
    with(
        body,
        &["metadata", "labels"],
        json!({ ann::REGISTRY_NAME: registry }),
    )
}

/// Creates `body` as a `kind` object at `version` (apiVersion and kind filled in).
pub async fn create(
    api: &Api<DynamicObject>,
    kind: Kind,
    version: &str,
    body: Value,
) -> anyhow::Result<DynamicObject> {
    let body = with(
        body,
        &["apiVersion"],
        json!(format!("{TOOLHIVE_GROUP}/{version}")),
    );
    let body = with(body, &["kind"], json!(kind.as_str()));
    let object: DynamicObject = serde_json::from_value(body)?;
    Ok(api.create(&PostParams::default(), &object).await?)
}

/// Merges `status` into the object's status.
pub async fn set_status(
    api: &Api<DynamicObject>,
    name: &str,
    status: Value,
) -> anyhow::Result<DynamicObject> {
    let patch = Patch::Merge(json!({ "status": status }));
    Ok(api
        .patch_status(name, &PatchParams::default(), &patch)
        .await?)
}

/// A merge patch of the object.
pub async fn merge(
    api: &Api<DynamicObject>,
    name: &str,
    patch: Value,
) -> anyhow::Result<DynamicObject> {
    Ok(api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?)
}

/// Creates an MCPServer (storage version) `name` with `annotations` (opted in unless
/// they say otherwise) and an empty spec, and sets its phase to Running.
pub async fn create_running(
    api: &Api<DynamicObject>,
    name: &str,
    annotations: Value,
) -> anyhow::Result<DynamicObject> {
    let mut annotations = annotations;
    if annotations.get(ann::REGISTRY_EXPORT).is_none() {
        annotations[ann::REGISTRY_EXPORT] = json!("true");
    }
    let body = json!({ "metadata": { "name": name, "annotations": annotations }, "spec": {} });
    create(api, Kind::MCPServer, Kind::MCPServer.versions()[0], body).await?;
    set_status(api, name, json!({"phase": "Running"})).await
}

//! Which API version the cluster serves a ToolHive kind in, if any.
//!
//! `MCPServer` may be served as `v1alpha1`, `v1beta1` or both; the watcher
//! reads the most preferred one that `Kind::versions()` lists. The mapping
//! reads fields leniently, so either era's objects work.

use herald_core::object::{Kind, TOOLHIVE_GROUP};
use kube::api::ApiResource;
use kube::discovery;
use kube::error::DiscoveryError;

/// Why discovery did not answer.
#[derive(Debug, thiserror::Error)]
#[error("discovering {group} in the cluster: {source}")]
pub struct DiscoveryFailed {
    group: &'static str,
    #[source]
    source: kube::Error,
}

/// The resource to watch for `kind`, or `None` when the cluster lacks it.
pub async fn find(
    client: &kube::Client,
    kind: Kind,
) -> Result<Option<ApiResource>, DiscoveryFailed> {
    let group = match discovery::oneshot::group(client, TOOLHIVE_GROUP).await {
        Ok(group) => group,
        Err(kube::Error::Discovery(DiscoveryError::MissingApiGroup(_))) => return Ok(None),
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
        Err(source) => {
            return Err(DiscoveryFailed {
                group: TOOLHIVE_GROUP,
                source,
            });
        }
    };
    let served: Vec<&str> = group.versions().collect();
    for version in kind.versions() {
        if !served.contains(version) {
            continue;
        }
        let found = group
            .versioned_resources(version)
            .into_iter()
            .find(|(ar, _)| ar.kind == kind.as_str());
        if let Some((ar, _)) = found {
            return Ok(Some(ar));
        }
    }
    Ok(None)
}

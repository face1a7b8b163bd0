//! What was built: the version and source revision every binary reports as
//! `herald_build_info{version,revision} 1` (the revision comes from the build
//! script: `HERALD_BUILD_REVISION`, else `git rev-parse HEAD`, else "unknown").

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The workspace version (every Herald crate carries the same one).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The source revision the binary was built from.
pub const REVISION: &str = env!("HERALD_BUILD_REVISION");

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

/// Registers `herald_build_info` (an info metric: always 1, the labels
/// carry the information).
pub fn register(registry: &mut Registry) {
    registry.register(
        "herald_build",
        "Version and source revision of this binary",
        Info::new(BuildLabels {
            version: VERSION,
            revision: REVISION,
        }),
    );
}

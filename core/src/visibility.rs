//! What one caller sees of a registry: the merge ([`crate::merge`]) of only
//! the parts it may see.
//!
//! An entry is made of parts — deployments and catalog entries — and each
//! part has its own claims ([`crate::claims`]) or none. A caller sees the
//! entry merged from the parts it may see, as if the others did not exist:
//! only their remotes, their deployments in Herald's `_meta`, their
//! metadata, and `isLatest` among the versions it sees. An entry none of
//! whose parts it may see does not exist for it. The merge itself is the
//! same function; this only chooses its input.

use crate::claims::ClaimSet;
use crate::merge::{ServerResponse, merge_registry};
use crate::stored::{StoredCatalog, StoredDeployment};

/// The claims of a stored part (a tombstone has none: it is never merged).
pub trait Claimed {
    fn claims(&self) -> Option<&ClaimSet>;
}

impl Claimed for StoredDeployment {
    fn claims(&self) -> Option<&ClaimSet> {
        self.live().and_then(|r| r.authz_claims.as_ref())
    }
}

impl Claimed for StoredCatalog {
    fn claims(&self) -> Option<&ClaimSet> {
        self.live().and_then(|r| r.authz_claims.as_ref())
    }
}

/// [`merge_registry`] over the parts for which `sees(claims)` holds. Pass
/// everything of a server name, as to the merge itself.
pub fn merge_visible<'a>(
    catalog: impl IntoIterator<Item = &'a StoredCatalog>,
    stored: impl IntoIterator<Item = &'a StoredDeployment>,
    sees: impl Fn(Option<&ClaimSet>) -> bool,
) -> Vec<ServerResponse> {
    merge_registry(
        catalog.into_iter().filter(|c| sees(c.claims())),
        stored.into_iter().filter(|d| sees(d.claims())),
    )
}

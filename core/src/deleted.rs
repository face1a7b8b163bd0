//! Deleted entries: the tombstones of one server version served as the
//! official API's `deleted` status, so that a client syncing with
//! `updated_since` (which implies `include_deleted`) learns of a withdrawal.
//!
//! A (server name, version) is deleted when tombstones of it are kept and no
//! live deployment or catalog entry serves it any more (while one does, the
//! live entry is what clients see). The entry is minimal — name, version,
//! description and title of the most recent withdrawal; no remotes, packages
//! or icons, since a deleted server must not be installed — with
//! `_meta[official]`: `status: "deleted"`, `statusChangedAt` and `updatedAt`
//! the latest withdrawal, `isLatest: false`. Its required claims are every
//! claim set of its tombstones, as for a merged live entry.
//!
//! Tombstones older than the retention window are not served
//! ([`within_retention`]).

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use serde_json::Map;

use crate::claims::ClaimSet;
use crate::merge::{OfficialMeta, ResponseMeta, SERVER_SCHEMA_URL, ServerDetail, ServerResponse};
use crate::tombstone::LastServed;

/// The status of a deleted entry.
pub const DELETED: &str = "deleted";

/// The deleted entry of one server version from its tombstones (what each
/// kept, and when it was withdrawn), with the claim sets it requires;
/// `None` without tombstones. All tombstones must be of the same name and
/// version.
pub fn deleted_entry(
    tombstones: &[(&LastServed, DateTime<Utc>)],
) -> Option<(ServerResponse, Vec<ClaimSet>)> {
    // The most recent withdrawal speaks for the entry; ties by text, so the
    // result does not depend on the order tombstones arrive in.
    let (last, withdrawn_at) = tombstones
        .iter()
        .max_by(|(a, at), (b, bt)| {
            at.cmp(bt)
                .then_with(|| a.description.cmp(&b.description))
                .then_with(|| a.title.cmp(&b.title))
        })
        .copied()?;
    let published_at = tombstones
        .iter()
        .filter_map(|(t, _)| t.published_at)
        .min()
        .unwrap_or(withdrawn_at)
        .min(withdrawn_at);
    let required: BTreeSet<&ClaimSet> = tombstones
        .iter()
        .filter_map(|(t, _)| t.authz_claims.as_ref())
        .collect();
    let response = ServerResponse {
        server: ServerDetail {
            schema: SERVER_SCHEMA_URL.to_owned(),
            name: last.server_name.clone(),
            description: last.description.clone(),
            version: last.version.clone(),
            title: last.title.clone(),
            icons: Vec::new(),
            remotes: Vec::new(),
            extra: Map::new(),
        },
        meta: ResponseMeta {
            official: OfficialMeta {
                status: DELETED.to_owned(),
                published_at,
                updated_at: withdrawn_at,
                is_latest: false,
                status_changed_at: Some(withdrawn_at),
            },
            herald: None,
            extra: Map::new(),
        },
    };
    Some((response, required.into_iter().cloned().collect()))
}

/// Whether a tombstone withdrawn at `withdrawn_at` is still served at `now`
/// with a retention window of `retention`.
pub fn within_retention(
    withdrawn_at: DateTime<Utc>,
    now: DateTime<Utc>,
    retention: Duration,
) -> bool {
    now.signed_duration_since(withdrawn_at) <= retention
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;
    use crate::claims::parse_annotation;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0).unwrap()
    }

    fn last(description: &str, claims: Option<&str>) -> LastServed {
        LastServed {
            server_name: "io.example/srv".parse().unwrap(),
            version: "1.0.0".into(),
            description: description.into(),
            title: None,
            published_at: Some(at(1)),
            authz_claims: claims.map(|c| parse_annotation(c).unwrap().unwrap()),
            seq: 1,
        }
    }

    #[test]
    fn the_latest_withdrawal_speaks_and_every_claim_set_is_required() {
        let a = last("first", Some(r#"{"team": "a"}"#));
        let b = last("second", Some(r#"{"team": "b"}"#));
        let (entry, required) = deleted_entry(&[(&b, at(9)), (&a, at(5))]).unwrap();
        assert_eq!(entry.server.description, "second");
        assert_eq!(entry.meta.official.status, "deleted");
        assert_eq!(entry.meta.official.status_changed_at, Some(at(9)));
        assert_eq!(entry.meta.official.updated_at, at(9));
        assert_eq!(entry.meta.official.published_at, at(1));
        assert!(!entry.meta.official.is_latest);
        assert!(entry.server.remotes.is_empty());
        assert_eq!(required.len(), 2);
        // The same whatever the order.
        let (again, _) = deleted_entry(&[(&a, at(5)), (&b, at(9))]).unwrap();
        assert_eq!(again, entry);
        assert!(deleted_entry(&[]).is_none());
    }

    #[test]
    fn the_json_has_the_official_field_names() {
        let a = last("gone", None);
        let (entry, required) = deleted_entry(&[(&a, at(3))]).unwrap();
        assert!(required.is_empty());
        let json = serde_json::to_value(&entry).unwrap();
        let official = &json["_meta"]["io.modelcontextprotocol.registry/official"];
        assert_eq!(official["status"], "deleted");
        assert_eq!(official["statusChangedAt"], "2026-01-01T00:03:00Z");
        assert_eq!(official["isLatest"], false);
        assert!(json["server"].get("remotes").is_none());
        assert!(json["_meta"].get("dev.herald").is_none());
    }

    #[test]
    fn retention_is_inclusive_of_its_edge() {
        let window = Duration::minutes(5);
        assert!(within_retention(at(0), at(5), window));
        assert!(!within_retention(at(0), at(6), window));
        // A withdrawal stamped a little in the future (clock skew) is served.
        assert!(within_retention(at(7), at(6), window));
    }
}

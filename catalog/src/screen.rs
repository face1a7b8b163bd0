//! Screening a listing: which entries are imported and which are skipped,
//! and why. An entry is skipped when it lacks what the merge relies on
//! (`invalid`, checked by `herald_core::import`), fails the server.json
//! schema (`schema`), or repeats a name and version already listed
//! (`duplicate`). One bad entry never stops the rest.

use std::collections::BTreeSet;

use herald_core::catalog_record::CatalogEntry;
use herald_core::import::EntryError;

use crate::schema::SchemaCheck;

/// Why an entry was skipped; the `reason` label of
/// `herald_catalog_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Fails what the merge relies on (name, description, version, URLs).
    Invalid,
    /// Fails the server.json schema.
    Schema,
    /// The same name and version appear twice in one listing.
    Duplicate,
}

impl SkipReason {
    pub const ALL: [SkipReason; 3] = [
        SkipReason::Invalid,
        SkipReason::Schema,
        SkipReason::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Invalid => "invalid",
            SkipReason::Schema => "schema",
            SkipReason::Duplicate => "duplicate",
        }
    }
}

/// One skipped entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub reason: SkipReason,
    /// The entry as the source names it.
    pub entry: String,
    pub detail: String,
}

/// The entries to import, in listing order, and the skipped ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Screened {
    pub entries: Vec<CatalogEntry>,
    pub skipped: Vec<Skipped>,
}

/// Keeps the entries that pass the checks and the schema, once each.
pub fn screen(raw: Vec<Result<CatalogEntry, EntryError>>, schema: &SchemaCheck) -> Screened {
    let mut seen = BTreeSet::new();
    let mut screened = Screened::default();
    for item in raw {
        let verdict = item
            .map_err(|e| Skipped {
                reason: SkipReason::Invalid,
                entry: e.entry,
                detail: e.reason,
            })
            .and_then(|entry| match schema.violations(&entry.server) {
                Some(detail) => Err(Skipped {
                    reason: SkipReason::Schema,
                    entry: entry.name.to_string(),
                    detail,
                }),
                None => Ok(entry),
            })
            .and_then(|entry| {
                if seen.insert((entry.name.clone(), entry.version.clone())) {
                    Ok(entry)
                } else {
                    Err(Skipped {
                        reason: SkipReason::Duplicate,
                        entry: entry.name.to_string(),
                        detail: format!("version {} is listed more than once", entry.version),
                    })
                }
            });
        match verdict {
            Ok(entry) => screened.entries.push(entry),
            Err(skipped) => screened.skipped.push(skipped),
        }
    }
    screened
}

#[cfg(test)]
mod tests {
    use herald_core::import::check_entry;
    use serde_json::json;

    use super::*;

    #[test]
    fn invalid_schema_failing_and_repeated_entries_are_skipped() {
        let good = json!({
            "name": "io.github.user/weather",
            "description": "Weather",
            "version": "1.0.0",
        });
        let mut bad_schema = good.clone();
        bad_schema["name"] = json!("io.github.user/other");
        bad_schema["packages"] = json!("not an array");
        let too_long = json!({
            "name": "io.github.user/wordy",
            "description": "x".repeat(101),
            "version": "1.0.0",
        });
        let raw = vec![
            check_entry(&good),
            check_entry(&too_long),
            check_entry(&bad_schema),
            check_entry(&good),
        ];
        let screened = screen(raw, &SchemaCheck::new().unwrap());
        assert_eq!(screened.entries.len(), 1);
        let reasons: Vec<SkipReason> = screened.skipped.iter().map(|s| s.reason).collect();
        assert_eq!(
            reasons,
            [
                SkipReason::Invalid,
                SkipReason::Schema,
                SkipReason::Duplicate
            ]
        );
        assert_eq!(screened.skipped[1].entry, "io.github.user/other");
    }
}

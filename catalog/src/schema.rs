//! The server.json schema every imported entry must satisfy: the newest
//! version the API emits (2025-12-11), compiled into the binary from the
//! copy in `spec/registry/`, so that a sync needs no network to check it.

use serde_json::Value;

/// The JSON Schema *document* of `server.json` (2025-12-11), as published
/// with the official registry. Its URL, which entries name in `$schema`, is
/// `herald_core::merge::SERVER_SCHEMA_URL`.
pub const SERVER_SCHEMA_DOCUMENT: &str =
    include_str!("../../spec/registry/server.schema.2025-12-11.json");

/// Errors shown per entry, at most: the first few say what is wrong.
const ERRORS_SHOWN: usize = 3;

/// The embedded schema does not compile (a broken build, never input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the embedded server.json schema does not compile: {0}")]
pub struct SchemaError(String);

/// The compiled schema, with format checks (`uri`, …) on.
#[derive(Debug)]
pub struct SchemaCheck {
    validator: jsonschema::Validator,
}

impl SchemaCheck {
    pub fn new() -> Result<Self, SchemaError> {
        let schema: Value =
            serde_json::from_str(SERVER_SCHEMA_DOCUMENT).map_err(|e| SchemaError(e.to_string()))?;
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| SchemaError(e.to_string()))?;
        Ok(Self { validator })
    }

    /// `None` when `server` satisfies the schema, else what fails and where.
    pub fn violations(&self, server: &Value) -> Option<String> {
        let errors: Vec<String> = self
            .validator
            .iter_errors(server)
            .take(ERRORS_SHOWN)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        (!errors.is_empty()).then(|| errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_embedded_schema_compiles_and_checks() {
        let check = SchemaCheck::new().unwrap();
        let valid = json!({
            "$schema": herald_core::merge::SERVER_SCHEMA_URL,
            "name": "io.github.user/weather",
            "description": "Weather",
            "version": "1.0.0",
        });
        assert_eq!(check.violations(&valid), None);
        let mut invalid = valid.clone();
        invalid["version"] = json!(7);
        let why = check.violations(&invalid).unwrap();
        assert!(why.contains("/version"), "{why}");
    }
}

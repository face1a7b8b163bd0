//! Who may see something: a set of required claims, in the format of
//! ToolHive's `toolhive.stacklok.dev/authz-claims` annotation, and whether a
//! caller's token claims satisfy it.
//!
//! The format is a JSON object whose values are each a string or an array
//! of strings: `{"team": "platform"}`, `{"groups": ["eng", "data"], "org":
//! "acme"}`, `{"groups": []}`. A caller satisfies a set when, for **every**
//! key of the set, its token has that claim and
//!
//! - a string value: one of the caller's values equals it;
//! - an array value: one of the caller's values is in it (any of);
//! - an empty array: the caller merely has the claim.
//!
//! The caller's claim is read as a set of strings: a string is itself, an
//! array is its string elements, anything else is no string. Only top-level
//! claims are read (no nesting: ToolHive has none either).
//!
//! Parsing ([`parse_annotation`]) refuses anything else with a reason —
//! numbers, booleans, `null`, nested objects, mixed arrays, and sets beyond
//! the bounds below — where ToolHive silently skips the entry. A blank
//! annotation and `{}` mean no claims. Reasons name keys, never values.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::excerpt;

/// Largest annotation value read, in bytes.
pub const MAX_JSON: usize = 4096;
/// Most keys in one set.
pub const MAX_KEYS: usize = 16;
/// Most values of one key.
pub const MAX_VALUES: usize = 64;
/// Longest key, in bytes.
pub const MAX_KEY: usize = 128;
/// Longest value, in bytes.
pub const MAX_VALUE: usize = 256;

/// What one key requires.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClaimValue {
    /// The caller has this value.
    One(String),
    /// The caller has one of these values; empty: the caller has the claim.
    AnyOf(Vec<String>),
}

/// A set of required claims (at least one key; see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClaimSet(BTreeMap<String, ClaimValue>);

/// Why a claims value is refused. Names keys (shortened), never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    #[error("it is {0} bytes; at most {MAX_JSON}")]
    TooLarge(usize),
    #[error("it is not JSON")]
    NotJson,
    #[error("it is not a JSON object of claim names to a string or an array of strings")]
    NotAnObject,
    #[error("it names no claim")]
    Empty,
    #[error("it has {0} claims; at most {MAX_KEYS}")]
    TooManyKeys(usize),
    #[error("a claim name is empty, longer than {MAX_KEY} bytes, or holds control characters")]
    InvalidKey,
    #[error("claim {key:?} is {found}; only a string or an array of strings is allowed")]
    InvalidType { key: String, found: &'static str },
    #[error("claim {key:?} has {count} values; at most {MAX_VALUES}")]
    TooManyValues { key: String, count: usize },
    #[error(
        "a value of claim {key:?} is longer than {MAX_VALUE} bytes or holds control characters"
    )]
    InvalidValue { key: String },
}

/// Reads the annotation: `Ok(None)` when it is blank or `{}` (no claims).
pub fn parse_annotation(raw: &str) -> Result<Option<ClaimSet>, ClaimsError> {
    if raw.len() > MAX_JSON {
        return Err(ClaimsError::TooLarge(raw.len()));
    }
    if raw.trim().is_empty() {
        return Ok(None);
    }
    // Read as a value first and checked by hand: serde's messages would
    // quote the offending value.
    let value: Value = serde_json::from_str(raw).map_err(|_| ClaimsError::NotJson)?;
    let Value::Object(object) = value else {
        return Err(ClaimsError::NotAnObject);
    };
    if object.is_empty() {
        return Ok(None);
    }
    ClaimSet::from_json(&object).map(Some)
}

impl ClaimSet {
    /// A set from a JSON object (a config file's, or the annotation's).
    pub fn from_json(object: &Map<String, Value>) -> Result<Self, ClaimsError> {
        let mut set = BTreeMap::new();
        for (key, value) in object {
            let key_name = || excerpt(key, 40);
            let wanted = match value {
                Value::String(s) => ClaimValue::One(s.clone()),
                Value::Array(items) => ClaimValue::AnyOf(
                    items
                        .iter()
                        .map(|item| match item {
                            Value::String(s) => Ok(s.clone()),
                            other => Err(ClaimsError::InvalidType {
                                key: key_name(),
                                found: match other {
                                    Value::Array(_) | Value::Object(_) => {
                                        "an array of arrays or objects"
                                    }
                                    _ => "an array with values that are not strings",
                                },
                            }),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                other => {
                    return Err(ClaimsError::InvalidType {
                        key: key_name(),
                        found: type_name(other),
                    });
                }
            };
            set.insert(key.clone(), wanted);
        }
        let set = Self(set);
        set.validate()?;
        Ok(set)
    }

    /// Checks the bounds of the module docs; what every reader of a stored
    /// or configured set relies on.
    pub fn validate(&self) -> Result<(), ClaimsError> {
        if self.0.is_empty() {
            return Err(ClaimsError::Empty);
        }
        if self.0.len() > MAX_KEYS {
            return Err(ClaimsError::TooManyKeys(self.0.len()));
        }
        for (key, wanted) in &self.0 {
            if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
                return Err(ClaimsError::InvalidKey);
            }
            let values: &[String] = match wanted {
                ClaimValue::One(v) => std::slice::from_ref(v),
                ClaimValue::AnyOf(vs) => vs,
            };
            if values.len() > MAX_VALUES {
                return Err(ClaimsError::TooManyValues {
                    key: excerpt(key, 40),
                    count: values.len(),
                });
            }
            if values
                .iter()
                .any(|v| v.len() > MAX_VALUE || v.chars().any(char::is_control))
            {
                return Err(ClaimsError::InvalidValue {
                    key: excerpt(key, 40),
                });
            }
        }
        Ok(())
    }

    /// Whether a caller with these token claims satisfies every key.
    pub fn satisfied_by(&self, caller: &Map<String, Value>) -> bool {
        self.0.iter().all(|(key, wanted)| {
            let Some(have) = caller.get(key) else {
                return false;
            };
            match wanted {
                ClaimValue::AnyOf(values) if values.is_empty() => true,
                ClaimValue::One(value) => strings(have).any(|h| h == value),
                ClaimValue::AnyOf(values) => strings(have).any(|h| values.iter().any(|v| v == h)),
            }
        })
    }

    /// The claim names the set requires (for documentation and logs: names
    /// only, never values).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl fmt::Display for ClaimSet {
    /// Claim names only: values stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.keys().collect();
        write!(f, "claims [{}]", keys.join(", "))
    }
}

/// A caller's claim as the strings it holds.
fn strings(value: &Value) -> impl Iterator<Item = &str> {
    let (one, many) = match value {
        Value::String(s) => (Some(s.as_str()), None),
        Value::Array(items) => (None, Some(items.iter().filter_map(Value::as_str))),
        _ => (None, None),
    };
    one.into_iter().chain(many.into_iter().flatten())
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn caller(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn set(raw: &str) -> ClaimSet {
        parse_annotation(raw).unwrap().unwrap()
    }

    #[test]
    fn every_key_must_be_present_and_arrays_mean_any_of() {
        let s = set(r#"{"team": ["eng", "data"], "org": "acme"}"#);
        assert!(s.satisfied_by(&caller(json!({"team": "eng", "org": "acme", "x": 1}))));
        assert!(s.satisfied_by(&caller(json!({"team": ["ops", "data"], "org": ["acme"]}))));
        assert!(!s.satisfied_by(&caller(json!({"team": "eng"}))));
        assert!(!s.satisfied_by(&caller(json!({"team": "ops", "org": "acme"}))));
        assert!(!s.satisfied_by(&caller(json!({"team": 1, "org": "acme"}))));
        assert!(!s.satisfied_by(&caller(json!({"team": {"eng": true}, "org": "acme"}))));
        // A string is equality, not a substring.
        let s = set(r#"{"org": "acme"}"#);
        assert!(!s.satisfied_by(&caller(json!({"org": "acme-evil"}))));
        assert!(!s.satisfied_by(&caller(json!({"org": ["acm"]}))));
    }

    #[test]
    fn an_empty_array_asks_only_for_the_claim() {
        let s = set(r#"{"groups": []}"#);
        assert!(s.satisfied_by(&caller(json!({"groups": []}))));
        assert!(s.satisfied_by(&caller(json!({"groups": 7}))));
        assert!(!s.satisfied_by(&caller(json!({"other": []}))));
    }

    #[test]
    fn blank_and_empty_objects_are_no_claims() {
        assert_eq!(parse_annotation(""), Ok(None));
        assert_eq!(parse_annotation("  \n"), Ok(None));
        assert_eq!(parse_annotation("{}"), Ok(None));
    }

    #[test]
    fn bad_values_are_refused_with_reasons_that_name_keys_not_values() {
        let cases = [
            ("not json", ClaimsError::NotJson),
            ("[\"secret-value\"]", ClaimsError::NotAnObject),
            ("\"secret-value\"", ClaimsError::NotAnObject),
            (
                r#"{"team": 7}"#,
                ClaimsError::InvalidType {
                    key: "team".into(),
                    found: "a number",
                },
            ),
            (
                r#"{"team": null}"#,
                ClaimsError::InvalidType {
                    key: "team".into(),
                    found: "null",
                },
            ),
            (
                r#"{"team": true}"#,
                ClaimsError::InvalidType {
                    key: "team".into(),
                    found: "a boolean",
                },
            ),
            (
                r#"{"team": {"secret-value": "x"}}"#,
                ClaimsError::InvalidType {
                    key: "team".into(),
                    found: "an object",
                },
            ),
            (
                r#"{"team": ["secret-value", 1]}"#,
                ClaimsError::InvalidType {
                    key: "team".into(),
                    found: "an array with values that are not strings",
                },
            ),
            (
                r#"{"team": [["secret-value"]]}"#,
                ClaimsError::InvalidType {
                    key: "team".into(),
                    found: "an array of arrays or objects",
                },
            ),
            (r#"{"": "x"}"#, ClaimsError::InvalidKey),
        ];
        for (raw, expected) in cases {
            let err = parse_annotation(raw).unwrap_err();
            assert_eq!(err, expected, "{raw}");
            assert!(!err.to_string().contains("secret-value"), "{err}");
        }
        let many: Map<String, Value> = (0..=MAX_KEYS)
            .map(|i| (format!("k{i}"), json!("v")))
            .collect();
        assert_eq!(
            parse_annotation(&Value::Object(many).to_string()),
            Err(ClaimsError::TooManyKeys(MAX_KEYS + 1))
        );
        let long = json!({"k": "x".repeat(MAX_VALUE + 1)}).to_string();
        assert_eq!(
            parse_annotation(&long),
            Err(ClaimsError::InvalidValue { key: "k".into() })
        );
        let values = json!({"k": vec!["v"; MAX_VALUES + 1]}).to_string();
        assert!(matches!(
            parse_annotation(&values),
            Err(ClaimsError::TooManyValues { .. })
        ));
        let huge = format!("{{\"k\": \"{}\"}}", "x".repeat(MAX_JSON));
        assert!(matches!(
            parse_annotation(&huge),
            Err(ClaimsError::TooLarge(_))
        ));
    }

    #[test]
    fn sets_round_trip_through_records_and_display_only_keys() {
        let s = set(r#"{"team": ["secret-a"], "org": "secret-b"}"#);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"org":"secret-b","team":["secret-a"]}"#);
        assert_eq!(serde_json::from_str::<ClaimSet>(&json).unwrap(), s);
        assert_eq!(s.to_string(), "claims [org, team]");
    }

    fn claim_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[a-c]{0,2}".prop_map(Value::from),
            prop::collection::vec("[a-c]{0,2}", 0..4).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            Just(Value::Null),
            Just(Value::Bool(true)),
            prop::collection::vec(any::<i8>(), 0..2).prop_map(Value::from),
        ]
    }

    fn object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[k-m]", claim_value(), 0..4)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        /// Any text: a set, no set, or a reason; never a panic; and a set
        /// that parsed always passes its own validation.
        #[test]
        fn parsing_never_panics(raw in ".{0,64}") {
            if let Ok(Some(set)) = parse_annotation(&raw) {
                prop_assert!(set.validate().is_ok());
            }
        }

        /// The reference semantics, written out plainly, agree with
        /// `satisfied_by`; and a caller with more claims than asked still
        /// satisfies a set (extra claims never hurt).
        #[test]
        fn matching_is_and_across_keys_and_any_of_within(wanted in object(), caller in object(), extra in object()) {
            let Ok(set) = ClaimSet::from_json(&wanted) else { return Ok(()); };
            let as_strings = |v: &Value| -> Vec<String> {
                match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
                    _ => vec![],
                }
            };
            let reference = wanted.iter().all(|(k, w)| match caller.get(k) {
                None => false,
                Some(have) => {
                    let have = as_strings(have);
                    match w {
                        Value::Array(a) if a.is_empty() => true,
                        w => as_strings(w).iter().any(|x| have.contains(x)),
                    }
                }
            });
            prop_assert_eq!(set.satisfied_by(&caller), reference);
            if reference {
                let mut more = extra.clone();
                more.extend(caller.clone());
                prop_assert!(set.satisfied_by(&more));
            }
        }
    }
}

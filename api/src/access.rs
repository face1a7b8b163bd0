//! Who sees which entry: the caller a request comes from ([`Viewer`]) and
//! the claims an entry requires (those of the deployments and catalog
//! entries merged into it, ToolHive's `authz-claims`; see
//! `herald_core::claims`).
//!
//! An entry is visible to a caller when the caller satisfies **every** claim
//! set of its parts: a merged entry is shown whole or not at all, so it never
//! reveals a remote of a part the caller may not see. An entry without
//! claims is visible to every caller, unless `--hide-unclaimed-entries`
//! (default deny, as ToolHive with authorization on). An anonymous caller
//! (`--auth-mode anonymous`) sees only entries without claims.
//!
//! Claim values never leave this module in a log line: `Viewer`'s `Debug`
//! says only which kind of caller it is.

use std::fmt;
use std::sync::Arc;

use herald_core::claims::ClaimSet;
use serde_json::{Map, Value};

/// The caller of one request, as far as visibility goes.
#[derive(Clone)]
pub enum Viewer {
    /// No token (`--auth-mode anonymous`).
    Anonymous,
    /// A validated token's claims.
    Token {
        claims: Arc<Map<String, Value>>,
        /// Entries without claims are hidden from it.
        hide_unclaimed: bool,
    },
}

impl fmt::Debug for Viewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Viewer::Anonymous => f.write_str("Viewer::Anonymous"),
            Viewer::Token { .. } => f.write_str("Viewer::Token(..)"),
        }
    }
}

impl Viewer {
    /// Whether the caller may see an entry whose parts require `required`
    /// (one set per claimed part; empty: no part has claims).
    pub fn sees(&self, required: &[ClaimSet]) -> bool {
        match self {
            Viewer::Anonymous => required.is_empty(),
            Viewer::Token {
                claims,
                hide_unclaimed,
            } => {
                if required.is_empty() {
                    !hide_unclaimed
                } else {
                    required.iter().all(|set| set.satisfied_by(claims))
                }
            }
        }
    }

    /// Whether responses depend on who asks (a token's view), so they must
    /// not be stored by shared caches.
    pub fn is_personal(&self) -> bool {
        matches!(self, Viewer::Token { .. })
    }
}

#[cfg(test)]
mod tests {
    use herald_core::claims::parse_annotation;
    use serde_json::json;

    use super::*;

    fn token(v: Value, hide_unclaimed: bool) -> Viewer {
        Viewer::Token {
            claims: Arc::new(v.as_object().unwrap().clone()),
            hide_unclaimed,
        }
    }

    fn set(raw: &str) -> ClaimSet {
        parse_annotation(raw).unwrap().unwrap()
    }

    #[test]
    fn anonymous_callers_see_only_unclaimed_entries() {
        assert!(Viewer::Anonymous.sees(&[]));
        assert!(!Viewer::Anonymous.sees(&[set(r#"{"team": "a"}"#)]));
    }

    #[test]
    fn a_token_must_satisfy_every_part_of_a_merged_entry() {
        let a = token(json!({"team": "a"}), false);
        assert!(a.sees(&[]));
        assert!(a.sees(&[set(r#"{"team": "a"}"#)]));
        assert!(!a.sees(&[set(r#"{"team": "b"}"#)]));
        assert!(!a.sees(&[set(r#"{"team": "a"}"#), set(r#"{"team": "b"}"#)]));
        let hiding = token(json!({"team": "a"}), true);
        assert!(!hiding.sees(&[]));
        assert!(hiding.sees(&[set(r#"{"team": ["a", "b"]}"#)]));
    }

    #[test]
    fn debug_never_shows_claims() {
        let a = token(json!({"team": "secret-team"}), false);
        assert!(!format!("{a:?}").contains("secret"));
    }
}

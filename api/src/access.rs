//! Who sees which part of an entry: the caller a request comes from
//! ([`Viewer`]) and the claims a part requires (a deployment's or catalog
//! entry's ToolHive `authz-claims`; see `herald_core::claims`).
//!
//! A caller sees a part when it satisfies the part's claim set; a merged
//! entry is made, for each caller, of the parts it sees (`crate::parts`),
//! so it never reveals a remote of a part the caller may not see. A part
//! without claims is visible to every caller, unless
//! `--hide-unclaimed-entries` (default deny, as ToolHive with authorization
//! on). An anonymous caller (`--auth-mode anonymous`) sees only parts
//! without claims.
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
    /// Whether the caller may see a part that requires `required` (`None`:
    /// the part has no claims).
    pub fn sees(&self, required: Option<&ClaimSet>) -> bool {
        match (self, required) {
            (Viewer::Anonymous, None) => true,
            (Viewer::Anonymous, Some(_)) => false,
            (Viewer::Token { hide_unclaimed, .. }, None) => !hide_unclaimed,
            (Viewer::Token { claims, .. }, Some(set)) => set.satisfied_by(claims),
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
    fn anonymous_callers_see_only_unclaimed_parts() {
        assert!(Viewer::Anonymous.sees(None));
        assert!(!Viewer::Anonymous.sees(Some(&set(r#"{"team": "a"}"#))));
    }

    #[test]
    fn a_token_sees_the_parts_whose_claims_it_satisfies() {
        let a = token(json!({"team": "a"}), false);
        assert!(a.sees(None));
        assert!(a.sees(Some(&set(r#"{"team": "a"}"#))));
        assert!(!a.sees(Some(&set(r#"{"team": "b"}"#))));
        let hiding = token(json!({"team": "a"}), true);
        assert!(!hiding.sees(None));
        assert!(hiding.sees(Some(&set(r#"{"team": ["a", "b"]}"#))));
    }

    #[test]
    fn debug_never_shows_claims() {
        let a = token(json!({"team": "secret-team"}), false);
        assert!(!format!("{a:?}").contains("secret"));
    }
}

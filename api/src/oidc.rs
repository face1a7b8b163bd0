//! One OpenID Provider whose bearer tokens herald-api accepts: its keys,
//! found through OIDC discovery (`<issuer>/.well-known/openid-configuration`)
//! or a direct JWKS URL, fetched with Herald's HTTP client and cached, and the
//! checks of a token against them (`jsonwebtoken`; no hand-written crypto).
//!
//! - Keys are fetched lazily and kept. A token naming a `kid` not in the
//!   cache triggers one refetch (the provider rotated its keys: no restart
//!   needed), at most once per `min_refresh`, and one at a time: a stream of
//!   tokens with made-up `kid`s costs one fetch per interval, not one each.
//!   A provider that is down keeps its cached keys working.
//! - Only asymmetric algorithms (RS256/384/512, PS256/384/512, ES256/384,
//!   EdDSA). The algorithm comes from the key, never from the token, and the
//!   token's `alg` must equal it: `none` and HS256 signed with a public key
//!   are refused.
//! - `iss` must equal the issuer, `aud` must hold the audience, `exp` is
//!   required and `nbf` checked, both with a small clock skew.
//!
//! Errors ([`TokenError`]) say what was wrong in words safe to send back
//! to the caller: never the token nor a claim value.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_runtime::http::{HttpClient, Url};
use herald_runtime::secret::Secret;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

/// Most keys kept from one JWKS document.
const MAX_KEYS: usize = 32;

/// What herald-api is told about one provider.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// The `iss` of its tokens (and where discovery starts).
    pub issuer: String,
    /// A value the token's `aud` must hold (Herald's resource URL).
    pub audience: String,
    /// Fetch keys here instead of discovering them (a Kubernetes API server,
    /// whose advertised JWKS URL is often unreachable from a pod).
    pub jwks_url: Option<Url>,
    /// A bearer token for the discovery and JWKS requests (a Kubernetes
    /// service-account token file); read again on every fetch, as projected
    /// tokens rotate.
    pub fetch_token_file: Option<PathBuf>,
    /// Allowed clock difference for `exp` and `nbf`.
    pub clock_skew: Duration,
    /// Least time between two key fetches caused by unknown `kid`s.
    pub min_refresh: Duration,
}

/// Why a token is not accepted; the message is sent to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's issuer is not one this server trusts")]
    UnknownIssuer,
    #[error("the token names no key id (kid)")]
    NoKeyId,
    #[error("the token's key is not one its issuer publishes")]
    UnknownKey,
    #[error("the token's algorithm is not allowed for its key")]
    Algorithm,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for this server (audience)")]
    Audience,
    #[error("the token lacks a required claim (exp, iss, aud)")]
    MissingClaim,
    #[error("the token's issuer cannot be reached to check its keys")]
    KeysUnavailable,
}

impl TokenError {
    /// A stable label for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnknownIssuer => "unknown_issuer",
            TokenError::NoKeyId => "no_kid",
            TokenError::UnknownKey => "unknown_kid",
            TokenError::Algorithm => "algorithm",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Audience => "audience",
            TokenError::MissingClaim => "missing_claim",
            TokenError::KeysUnavailable => "keys_unavailable",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<(DecodingKey, Algorithm)>>,
    fetched_at: Option<Instant>,
    /// The last fetch, whether it worked or not (the rate limit).
    tried_at: Option<Instant>,
}

/// One trusted provider; cheap to share.
pub struct Provider {
    settings: ProviderSettings,
    http: HttpClient,
    keys: RwLock<Keys>,
    /// Held while fetching: one fetch at a time.
    fetching: Mutex<Option<Url>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

impl Provider {
    pub fn new(settings: ProviderSettings, http: HttpClient) -> Self {
        Self {
            settings,
            http,
            keys: RwLock::new(Keys::default()),
            fetching: Mutex::new(None),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// Fetches the keys now (at start, so a misconfiguration shows in the
    /// log early); a failure is only logged, tokens retry later.
    pub async fn prefetch(&self) {
        if let Err(err) = self.refresh(true).await {
            tracing::warn!(issuer = %self.settings.issuer, "could not fetch the provider's keys yet: {err:#}");
        }
    }

    /// Checks a token this provider issued; its claims on success.
    pub async fn validate(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.ok_or(TokenError::NoKeyId)?;
        let key = self.key(&kid).await?;
        let (key, alg) = (&key.0, key.1);
        if header.alg != alg {
            return Err(TokenError::Algorithm);
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        // iss and aud are checked only when present unless required.
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.clock_skew.as_secs();
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => TokenError::Signature,
                    K::ExpiredSignature => TokenError::Expired,
                    K::ImmatureSignature => TokenError::NotYetValid,
                    K::InvalidAudience => TokenError::Audience,
                    K::InvalidIssuer => TokenError::UnknownIssuer,
                    K::MissingRequiredClaim(_) => TokenError::MissingClaim,
                    K::InvalidAlgorithm => TokenError::Algorithm,
                    _ => TokenError::Malformed,
                }
            })
    }

    async fn key(&self, kid: &str) -> Result<Arc<(DecodingKey, Algorithm)>, TokenError> {
        if let Some(key) = self.keys.read().await.by_kid.get(kid) {
            return Ok(key.clone());
        }
        // Unknown kid: perhaps the provider rotated. Refetch (rate-limited).
        match self.refresh(false).await {
            Ok(()) => {}
            Err(err) => {
                tracing::debug!(issuer = %self.settings.issuer, "key refresh: {err:#}");
            }
        }
        let keys = self.keys.read().await;
        match keys.by_kid.get(kid) {
            Some(key) => Ok(key.clone()),
            None if keys.fetched_at.is_none() => Err(TokenError::KeysUnavailable),
            None => Err(TokenError::UnknownKey),
        }
    }

    /// Fetches the JWKS (discovering its URL first if needed) unless one
    /// was fetched within `min_refresh` (`force` ignores that). One fetch at
    /// a time: callers waiting meanwhile find the fresh keys.
    async fn refresh(&self, force: bool) -> anyhow::Result<()> {
        let mut jwks_url = self.fetching.lock().await;
        if !force
            && self
                .keys
                .read()
                .await
                .tried_at
                .is_some_and(|t| t.elapsed() < self.settings.min_refresh)
        {
            return Ok(());
        }
        let result = async {
            let bearer = match &self.settings.fetch_token_file {
                Some(path) => Some(Secret::read_file(path).await?),
                None => None,
            };
            let url = match (&*jwks_url, &self.settings.jwks_url) {
                (Some(url), _) | (None, Some(url)) => url.clone(),
                (None, None) => self.discover(bearer.as_ref()).await?,
            };
            *jwks_url = Some(url.clone());
            let mut request = self.http.get(&url);
            if let Some(bearer) = &bearer {
                request = request.bearer_auth(bearer);
            }
            let body = request.success().await?;
            let set: JwkSet = serde_json::from_slice(&body)?;
            anyhow::Ok(keys_of(&set))
        }
        .await;
        let mut keys = self.keys.write().await;
        // A failed fetch counts for the rate limit too, also before the
        // first success: no storm against a provider that is down, and
        // requests do not queue behind one fetch after another.
        keys.tried_at = Some(Instant::now());
        match result {
            Ok(by_kid) => {
                tracing::info!(issuer = %self.settings.issuer, keys = by_kid.len(), "fetched the provider's keys");
                keys.by_kid = by_kid;
                keys.fetched_at = Some(Instant::now());
                Ok(())
            }
            // The old keys stay.
            Err(err) => Err(err),
        }
    }

    async fn discover(&self, bearer: Option<&Secret>) -> anyhow::Result<Url> {
        let url = Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        ))?;
        let mut request = self.http.get(&url);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let discovery: Discovery = serde_json::from_slice(&request.success().await?)?;
        anyhow::ensure!(
            discovery.issuer == self.settings.issuer,
            "the discovery document names issuer {:?}, not {:?}",
            discovery.issuer,
            self.settings.issuer
        );
        // The same rule as for the issuer: https, or http on loopback.
        crate::auth::check_issuer(&discovery.jwks_uri)
            .map_err(|e| anyhow::anyhow!("the discovery document's jwks_uri {e}"))
    }
}

/// The signing keys of a JWKS that have a `kid` and an allowed algorithm.
fn keys_of(set: &JwkSet) -> HashMap<String, Arc<(DecodingKey, Algorithm)>> {
    let mut out = HashMap::new();
    for jwk in &set.keys {
        if out.len() == MAX_KEYS {
            break;
        }
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            continue;
        }
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        let alg = match (jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(a), _) => match Algorithm::try_from(a) {
                Ok(a) => a,
                Err(_) => continue,
            },
            (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (None, AlgorithmParameters::EllipticCurve(_)) => Algorithm::ES256,
            (None, _) => continue,
        };
        if !ALLOWED.contains(&alg) {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            out.insert(kid.clone(), Arc::new((key, alg)));
        }
    }
    out
}

/// Asymmetric algorithms only: a JWKS key is public, so an HMAC "signed"
/// with it proves nothing.
const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_keys_and_keys_without_kid_are_dropped() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256"},
            {"kty": "RSA", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB", "alg": "RS256"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "RSA", "kid": "ok", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"}
        ]}))
        .unwrap();
        let keys = keys_of(&set);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ok"]);
        assert_eq!(keys["ok"].1, Algorithm::RS256);
    }
}

//! Signed events: each watcher (and importer) signs what it publishes with
//! its own ed25519 key, an nkey — the NATS ecosystem's key format — and the
//! hub's projector verifies against the public keys it was given for that
//! cluster or catalog source.
//!
//! The signature covers the subject and the body (prefixed with a
//! domain-separation line, so a signature made for something else never
//! verifies here) and travels in two headers: the signer's public key and
//! the signature (base64url). Headers, not the body: an old event stays
//! readable as it was, and a reader that does not verify ignores them.
//!
//! Rotation: a source may have several keys at once. Start the watcher with
//! the new seed after adding its public key to the hub, then remove the old
//! key once nothing signed with it is left to replay (or use `signedSince`).

use std::collections::BTreeMap;
use std::path::Path;

use async_nats::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use herald_core::ids::{ClusterId, SourceId, excerpt};
use herald_core::names::{SIGNATURE_HEADER, SIGNER_HEADER};
use nkeys::KeyPair;

/// What every signature covers before the subject and the body.
const DOMAIN: &[u8] = b"herald-event-v1\n";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the signing key {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{what} is not a usable nkey: {reason}")]
    Invalid { what: String, reason: String },
}

/// Who signs an event: a cluster's watcher or a catalog source's importer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Issuer {
    Cluster(ClusterId),
    Source(SourceId),
}

impl std::fmt::Display for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Issuer::Cluster(c) => write!(f, "cluster {c}"),
            Issuer::Source(s) => write!(f, "catalog source {s}"),
        }
    }
}

fn signed_bytes(subject: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + subject.len() + 1 + body.len());
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(subject.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// A private key that signs events.
pub struct Signer {
    key: KeyPair,
    public: String,
}

impl std::fmt::Debug for Signer {
    // Never the seed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public", &self.public)
            .finish()
    }
}

impl Signer {
    /// Reads a seed (`S…`) from a file; the file holds nothing else.
    pub fn from_seed_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_seed(text.trim()).map_err(|e| match e {
            KeyError::Invalid { reason, .. } => KeyError::Invalid {
                what: format!("the seed in {}", path.display()),
                reason,
            },
            other => other,
        })
    }

    pub fn from_seed(seed: &str) -> Result<Self, KeyError> {
        let key = KeyPair::from_seed(seed).map_err(|e| KeyError::Invalid {
            what: "the seed".to_owned(),
            // nkeys' messages never contain the seed.
            reason: e.to_string(),
        })?;
        if key.key_pair_type() == nkeys::KeyPairType::Curve {
            return Err(KeyError::Invalid {
                what: "the seed".to_owned(),
                reason: "a curve (encryption) key cannot sign".to_owned(),
            });
        }
        let public = key.public_key();
        Ok(Self { key, public })
    }

    /// A new user key: the seed to keep secret, and the signer.
    pub fn generate() -> (String, Self) {
        let key = KeyPair::new_user();
        let seed = key.seed().expect("a generated key has a seed");
        let public = key.public_key();
        (seed, Self { key, public })
    }

    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// Adds the signature of (`subject`, `body`) to `headers`.
    pub fn sign(&self, subject: &str, body: &[u8], headers: &mut HeaderMap) {
        let signature = self
            .key
            .sign(&signed_bytes(subject, body))
            .expect("a key with a seed signs");
        headers.insert(SIGNER_HEADER, self.public.as_str());
        headers.insert(SIGNATURE_HEADER, URL_SAFE_NO_PAD.encode(signature).as_str());
    }
}

/// Why an event's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("{0} must sign its events, and this one is unsigned")]
    Unsigned(Issuer),
    #[error("{issuer} has no key {key}")]
    UnknownKey { issuer: Issuer, key: String },
    #[error("the signature does not verify for {0}")]
    Mismatch(Issuer),
    #[error("the signature header is not base64url")]
    Malformed,
}

impl SignatureError {
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Unsigned(_) => "unsigned",
            SignatureError::UnknownKey { .. }
            | SignatureError::Mismatch(_)
            | SignatureError::Malformed => "bad_signature",
        }
    }

    pub const CODES: [&'static str; 2] = ["unsigned", "bad_signature"];
}

/// The public keys one issuer signs with.
#[derive(Debug, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, KeyPair>,
    /// Events the stream stored before this time are accepted unsigned
    /// (the history from before the issuer signed).
    signed_since: Option<DateTime<Utc>>,
}

impl TrustedKeys {
    pub fn new(
        public_keys: impl IntoIterator<Item = String>,
        signed_since: Option<DateTime<Utc>>,
    ) -> Result<Self, KeyError> {
        let mut keys = BTreeMap::new();
        for public in public_keys {
            let key = KeyPair::from_public_key(public.trim()).map_err(|e| KeyError::Invalid {
                what: format!("public key {:?}", excerpt(&public, 60)),
                reason: e.to_string(),
            })?;
            keys.insert(public.trim().to_owned(), key);
        }
        Ok(Self { keys, signed_since })
    }
}

/// The keys of every issuer the hub trusts, and whether an issuer without
/// keys must sign anyway.
#[derive(Debug, Default)]
pub struct Verifier {
    issuers: BTreeMap<Issuer, TrustedKeys>,
    require_signatures: bool,
}

impl Verifier {
    pub fn new(require_signatures: bool) -> Self {
        Self {
            issuers: BTreeMap::new(),
            require_signatures,
        }
    }

    pub fn trust(&mut self, issuer: Issuer, keys: TrustedKeys) {
        self.issuers.insert(issuer, keys);
    }

    /// Whether any event is checked at all.
    pub fn is_active(&self) -> bool {
        self.require_signatures || self.issuers.values().any(|k| !k.keys.is_empty())
    }

    /// Checks the signature of an event by `issuer` on `subject`, stored by
    /// the stream at `stored_at`. An issuer with keys must have signed with
    /// one of them; one without keys must sign only when every issuer must.
    pub fn verify(
        &self,
        issuer: &Issuer,
        subject: &str,
        body: &[u8],
        headers: Option<&HeaderMap>,
        stored_at: DateTime<Utc>,
    ) -> Result<(), SignatureError> {
        let trusted = self.issuers.get(issuer);
        let has_keys = trusted.is_some_and(|t| !t.keys.is_empty());
        let header = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let (Some(signer), Some(signature)) = (header(SIGNER_HEADER), header(SIGNATURE_HEADER))
        else {
            let before_signing = trusted
                .and_then(|t| t.signed_since)
                .is_some_and(|since| stored_at < since);
            if (has_keys || self.require_signatures) && !before_signing {
                return Err(SignatureError::Unsigned(issuer.clone()));
            }
            return Ok(());
        };
        if !has_keys && !self.require_signatures {
            // Nothing to check against, and nothing asked for.
            return Ok(());
        }
        let key = trusted.and_then(|t| t.keys.get(&signer)).ok_or_else(|| {
            SignatureError::UnknownKey {
                issuer: issuer.clone(),
                key: excerpt(&signer, 60),
            }
        })?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature.as_bytes())
            .map_err(|_| SignatureError::Malformed)?;
        key.verify(&signed_bytes(subject, body), &signature)
            .map_err(|_| SignatureError::Mismatch(issuer.clone()))
    }
}

/// Reads a signing key file when one is configured.
pub fn signer_from(path: Option<&Path>) -> Result<Option<Signer>, KeyError> {
    path.map(Signer::from_seed_file).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(s: &str) -> Issuer {
        Issuer::Cluster(s.parse().unwrap())
    }

    fn signed(signer: &Signer, subject: &str, body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        signer.sign(subject, body, &mut h);
        h
    }

    #[test]
    fn valid_unsigned_wrong_key_tampered_and_rotated() {
        let now = Utc::now();
        let (_, old) = Signer::generate();
        let (_, new) = Signer::generate();
        let (_, stranger) = Signer::generate();
        let mut v = Verifier::new(false);
        v.trust(
            cluster("east"),
            TrustedKeys::new(
                [old.public_key().to_owned(), new.public_key().to_owned()],
                None,
            )
            .unwrap(),
        );
        let subject = "herald.events.east.default";
        let body = br#"{"x":1}"#;
        // Both keys of a rotation verify.
        for s in [&old, &new] {
            let h = signed(s, subject, body);
            assert_eq!(
                v.verify(&cluster("east"), subject, body, Some(&h), now),
                Ok(())
            );
        }
        assert_eq!(
            v.verify(&cluster("east"), subject, body, None, now)
                .unwrap_err()
                .code(),
            "unsigned"
        );
        let h = signed(&stranger, subject, body);
        assert!(matches!(
            v.verify(&cluster("east"), subject, body, Some(&h), now),
            Err(SignatureError::UnknownKey { .. })
        ));
        let h = signed(&old, subject, body);
        assert_eq!(
            v.verify(&cluster("east"), subject, br#"{"x":2}"#, Some(&h), now),
            Err(SignatureError::Mismatch(cluster("east")))
        );
        // Moved to another subject: the signature no longer verifies.
        assert!(
            v.verify(
                &cluster("east"),
                "herald.events.east.other",
                body,
                Some(&h),
                now
            )
            .is_err()
        );
        // A cluster without keys is not checked unless every one must sign.
        assert_eq!(v.verify(&cluster("west"), subject, body, None, now), Ok(()));
        let strict = Verifier::new(true);
        assert!(
            strict
                .verify(&cluster("west"), subject, body, None, now)
                .is_err()
        );
    }

    #[test]
    fn history_from_before_signing_is_accepted_unsigned() {
        let since = Utc::now();
        let (_, key) = Signer::generate();
        let mut v = Verifier::new(true);
        v.trust(
            cluster("east"),
            TrustedKeys::new([key.public_key().to_owned()], Some(since)).unwrap(),
        );
        let earlier = since - chrono::Duration::hours(1);
        assert_eq!(v.verify(&cluster("east"), "s", b"b", None, earlier), Ok(()));
        assert!(v.verify(&cluster("east"), "s", b"b", None, since).is_err());
    }

    #[test]
    fn seeds_round_trip_and_are_never_printed() {
        let (seed, signer) = Signer::generate();
        let again = Signer::from_seed(&seed).unwrap();
        assert_eq!(again.public_key(), signer.public_key());
        assert!(!format!("{again:?}").contains(&seed));
        assert!(Signer::from_seed("not a seed").is_err());
        assert!(TrustedKeys::new(["nonsense".to_owned()], None).is_err());
    }
}

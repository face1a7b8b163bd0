//! The TLS crypto provider: ring, installed once as rustls' process default.
//!
//! Every TLS stack in Herald is rustls: kube's client, async-nats, and the
//! HTTP client of [`crate::http`] (reqwest, built without a provider of its
//! own). rustls needs one process-wide provider. kube picks it from rustls'
//! compiled-in features, which works only while exactly one provider is
//! compiled in; reqwest (feature `rustls-no-provider`) takes only an
//! *installed* default and panics when there is none. So each binary calls
//! [`install_crypto_provider`] first thing, and so does every test process
//! that builds an HTTP client. ring is what kube and async-nats already use,
//! so nothing else (aws-lc-rs, a C build) enters the workspace.

/// Installs ring as rustls' process-wide crypto provider. Idempotent and
/// cheap: a second call, or a provider installed before, changes nothing.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one first: that is fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_twice_keeps_one_provider() {
        install_crypto_provider();
        let first = rustls::crypto::CryptoProvider::get_default().map(std::sync::Arc::as_ptr);
        install_crypto_provider();
        let second = rustls::crypto::CryptoProvider::get_default().map(std::sync::Arc::as_ptr);
        assert!(first.is_some());
        assert_eq!(first, second);
    }
}

//! The shared state of the HTTP handlers and the settings they follow.

use std::sync::Arc;
use std::time::Duration;

use herald_core::RegistryName;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::client::{ClientKey, TrustedProxies};
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::policy::ReadPolicies;
use crate::problem::Problem;
use crate::registries::{Registries, SharedView};

/// How the SSE feed behaves.
#[derive(Debug, Clone, Copy)]
pub struct SseSettings {
    pub keepalive: Duration,
    pub max_subscribers: usize,
    pub max_subscribers_per_client: usize,
    /// `Retry-After` of a refused subscription: the idle timeout, within
    /// which a slot held by a stalled subscriber is freed.
    pub retry_after: Duration,
}

#[derive(Debug)]
pub struct App {
    pub registries: Registries,
    pub metrics: Arc<Metrics>,
    pub sse: SseSettings,
    /// SSE subscribers, in total and per client.
    pub sse_slots: Limiter<ClientKey>,
    /// Whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// Who callers are (`--auth-mode`).
    pub auth: Arc<Authenticator>,
    /// Who may read which registry (`--auth-config`).
    pub read_policies: Arc<ReadPolicies>,
    /// Cancelled at shutdown: SSE streams end so the server can drain.
    pub shutdown: CancellationToken,
}

pub type AppState = Arc<App>;

impl App {
    /// The view a request addresses: `registry` from the path, or the default.
    pub fn view(&self, registry: Option<&str>) -> Result<SharedView, Problem> {
        let name: RegistryName = match registry {
            None => self.registries.default_registry().clone(),
            Some(raw) => raw.parse().map_err(|_| unknown_registry(raw))?,
        };
        self.registries
            .get(&name)
            .ok_or_else(|| unknown_registry(name.as_ref()))
    }
}

/// The 404 of a registry not served here, which is also the answer for a
/// registry the caller may not read (names do not leak).
pub fn unknown_registry(raw: &str) -> Problem {
    Problem::not_found(
        "registry",
        format!("no registry {:?} is served here", excerpt(raw)),
    )
}

fn excerpt(s: &str) -> String {
    s.chars().take(100).collect()
}

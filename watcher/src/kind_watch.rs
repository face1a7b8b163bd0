//! The watch loop of one kind: find the served version, watch it (in all
//! namespaces or each configured one), feed the tracker, queue its events.
//!
//! A kind the cluster does not serve is logged once and looked up again when
//! its CRD changes ([`crate::crd_watch`] wakes it; a few quick retries follow
//! while the API server starts serving a new CRD), and every recheck interval
//! as the fallback, so installing the operator later needs no restart; one
//! that disappears (its CRD deleted) has its objects withdrawn.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::{BoxStream, select_all};
use herald_core::WatcherPolicy;
use herald_core::object::Kind;
use herald_runtime::health::Readiness;
use kube::Resource as _;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event as WatchEvent};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::epoch::EpochClock;
use crate::event_limit::EventLimit;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::rejections::Rejections;
use crate::served;
use crate::tracker::{Effect, Tracker};

/// The readiness condition of a kind: its first list is done (or the
/// cluster does not serve it).
pub fn condition(kind: Kind) -> &'static str {
    match kind {
        Kind::MCPServer => "watch mcpservers",
        Kind::MCPRemoteProxy => "watch mcpremoteproxies",
        Kind::VirtualMCPServer => "watch virtualmcpservers",
        Kind::MCPServerEntry => "watch mcpserverentries",
    }
}

/// One kind's watch and everything it reports to.
pub struct KindWatch {
    pub kind: Kind,
    pub client: kube::Client,
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    pub policy: Arc<WatcherPolicy>,
    pub clock: Arc<EpochClock>,
    pub limit: EventLimit,
    pub outbox: Arc<Outbox>,
    pub rejections: Rejections,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub recheck: Duration,
    /// Woken when the kind's CRD appears, changes or goes.
    pub wake: Arc<Notify>,
}

impl std::fmt::Debug for KindWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kube::Client is not Debug.
        f.debug_struct("KindWatch")
            .field("kind", &self.kind)
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

type Tagged = (
    Option<String>,
    Result<WatchEvent<DynamicObject>, watcher::Error>,
);

/// After a wake-up that finds nothing, how often and how many more times to
/// look (a new CRD is served a moment after it is created).
const FOLLOW_UP: Duration = Duration::from_millis(500);
const FOLLOW_UPS: u32 = 20;

/// Whether a watch error means the resource is gone from the cluster.
fn not_served(err: &watcher::Error) -> bool {
    let status = match err {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s,
        watcher::Error::WatchError(s) => s,
        _ => return false,
    };
    status.code == 404
}

impl KindWatch {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let cond = condition(self.kind);
        let mut tracker = Tracker::new(
            self.kind,
            self.policy.clone(),
            self.clock.clone(),
            self.limit.clone(),
        );
        let mut absent_logged = false;
        let mut follow_ups = 0;
        loop {
            let found = tokio::select! {
                () = shutdown.cancelled() => return,
                found = served::find(&self.client, self.kind) => found,
            };
            match found {
                Ok(Some(ar)) => {
                    absent_logged = false;
                    tracing::info!(kind = %self.kind, version = %ar.version, "watching");
                    self.watch(&ar, &mut tracker, &shutdown).await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    continue;
                }
                Ok(None) => {
                    if !absent_logged {
                        absent_logged = true;
                        tracing::info!(
                            kind = %self.kind,
                            "the cluster does not serve this kind; watching for its CRD (and checking again every {})",
                            humantime::format_duration(self.recheck)
                        );
                    }
                    if !tracker.is_empty() {
                        // Its CRD was deleted, and its objects with it (also
                        // when a list was under way: its bracket is dropped).
                        let effects = tracker.kind_gone(chrono::Utc::now());
                        self.apply(effects, None);
                    }
                    self.readiness.set_ready(cond);
                }
                Err(err) => {
                    tracing::warn!(kind = %self.kind, "{err}");
                    self.readiness.set_not_ready(cond, err.to_string());
                }
            }
            let pause = if follow_ups > 0 {
                follow_ups -= 1;
                FOLLOW_UP
            } else {
                self.recheck
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
                () = self.wake.notified() => follow_ups = FOLLOW_UPS,
            }
        }
    }

    fn streams(&self, ar: &ApiResource) -> Vec<BoxStream<'static, Tagged>> {
        let scopes: Vec<Option<String>> = if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        };
        scopes
            .into_iter()
            .map(|ns| {
                let api: Api<DynamicObject> = match &ns {
                    Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
                    None => Api::all_with(self.client.clone(), ar),
                };
                watcher::watcher(api, watcher::Config::default())
                    .default_backoff()
                    .map(move |event| (ns.clone(), event))
                    .boxed()
            })
            .collect()
    }

    /// Watches until shutdown or until the resource is no longer served.
    async fn watch(&self, ar: &ApiResource, tracker: &mut Tracker, shutdown: &CancellationToken) {
        let cond = condition(self.kind);
        let streams = self.streams(ar);
        let mut never_listed: HashSet<Option<String>> = if self.namespaces.is_empty() {
            [None].into_iter().collect()
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        };
        let mut merged = select_all(streams);
        loop {
            let (ns, event) = tokio::select! {
                () = shutdown.cancelled() => return,
                next = merged.next() => match next {
                    Some(item) => item,
                    None => return,
                },
            };
            let now = chrono::Utc::now();
            match event {
                Ok(WatchEvent::Init) => {
                    let effects = tracker.begin_list(ns.as_deref(), now);
                    self.apply(effects, None);
                }
                Ok(WatchEvent::InitApply(obj)) => {
                    let json = serde_json::to_value(&obj).unwrap_or_default();
                    let effects = tracker.observe(&json, Some(ns.as_deref()), now);
                    self.apply(effects, Some((&obj, ar)));
                }
                Ok(WatchEvent::Apply(obj)) => {
                    let json = serde_json::to_value(&obj).unwrap_or_default();
                    let effects = tracker.observe(&json, None, now);
                    self.apply(effects, Some((&obj, ar)));
                }
                Ok(WatchEvent::Delete(obj)) => {
                    let json = serde_json::to_value(&obj).unwrap_or_default();
                    let effects = tracker.delete(&json, now);
                    self.apply(effects, None);
                }
                Ok(WatchEvent::InitDone) => {
                    let (effects, closed) = tracker.end_list(ns.as_deref(), now);
                    self.apply(effects, None);
                    if closed {
                        self.metrics.resynced(self.kind, now);
                    }
                    never_listed.remove(&ns);
                    if never_listed.is_empty() {
                        self.readiness.set_ready(cond);
                    }
                }
                Err(err) if not_served(&err) => {
                    tracing::info!(kind = %self.kind, "the cluster stopped serving this kind: {err}");
                    return;
                }
                Err(err) => {
                    tracing::warn!(kind = %self.kind, namespace = ?ns, "watch failed, retrying: {err}");
                }
            }
        }
    }

    fn apply(&self, effects: Vec<Effect>, object: Option<(&DynamicObject, &ApiResource)>) {
        for effect in effects {
            match effect {
                Effect::Publish(event) => self.outbox.push(event),
                Effect::Report(object_ref, rejection) => {
                    let reference = object
                        .map(|(obj, ar)| obj.object_ref(ar))
                        .unwrap_or_default();
                    self.rejections.report(&object_ref, &rejection, reference);
                }
            }
        }
    }
}

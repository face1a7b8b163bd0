//! Making rejections visible to an operator: a log line, a counter by reason
//! and a Kubernetes Event on the object (where the cluster serves Events).
//!
//! The tracker reports a rejection only when it is new or its reason changed,
//! so none of these repeat on every relist.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use herald_core::Rejection;
use herald_core::object::ObjectRef;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::metrics::Metrics;

/// The Kubernetes Event reason on rejected objects.
pub const EVENT_REASON: &str = "RegistryRejected";

/// Reports rejections; cheap to clone.
#[derive(Clone)]
pub struct Rejections {
    client: kube::Client,
    reporter: Reporter,
    /// One recorder per rejection code. A recorder folds a repeat of the same
    /// (object, reason, action) into its first Event's series and keeps that
    /// Event's note, so with one recorder a changed reason would only count
    /// up the old, now wrong, note; per code it is a new Event.
    recorders: Arc<Mutex<HashMap<&'static str, Arc<Recorder>>>>,
    metrics: Metrics,
    events_unavailable: Arc<AtomicBool>,
}

impl std::fmt::Debug for Rejections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejections")
            .field("events_unavailable", &self.events_unavailable)
            .finish_non_exhaustive()
    }
}

impl Rejections {
    pub fn new(client: kube::Client, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: "herald-watcher".to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            client,
            reporter,
            recorders: Arc::default(),
            metrics,
            events_unavailable: Arc::default(),
        }
    }

    /// Logs and counts at once; records the Kubernetes Event in the background.
    pub fn report(&self, object: &ObjectRef, rejection: &Rejection, reference: ObjectReference) {
        tracing::warn!(
            kind = %object.kind(),
            namespace = object.namespace(),
            name = object.name(),
            reason = rejection.code(),
            "not advertised: {rejection}"
        );
        self.metrics.rejected(rejection.code());
        if self.events_unavailable.load(Ordering::Relaxed) {
            return;
        }
        let recorder = self.recorder(rejection.code());
        let this = self.clone();
        let event = Event {
            type_: EventType::Warning,
            reason: EVENT_REASON.to_owned(),
            note: Some(rejection.to_string()),
            action: "Advertise".to_owned(),
            secondary: None,
        };
        tokio::spawn(async move {
            match recorder.publish(&event, &reference).await {
                Ok(()) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    if !this.events_unavailable.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            "this cluster serves no events.k8s.io Events; rejections are only logged and counted"
                        );
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "could not record a Kubernetes Event for a rejection")
                }
            }
        });
    }

    fn recorder(&self, code: &'static str) -> Arc<Recorder> {
        let mut recorders = self.recorders.lock().unwrap_or_else(|e| e.into_inner());
        recorders
            .entry(code)
            .or_insert_with(|| Arc::new(Recorder::new(self.client.clone(), self.reporter.clone())))
            .clone()
    }
}

//! The SSE feed of one registry: `event: upsert|delete|snapshot`, `id:` the
//! position (bucket revision) of the change, `data:` the entry JSON as the
//! API serves it to this subscriber (`{"name","version"}` for a delete, a
//! `ServerList` for a snapshot): each subscriber gets the entries as its
//! claims let it see them (`crate::parts`).
//!
//! A subscriber without `Last-Event-ID` starts with a snapshot; with one it
//! gets exactly the changes after it when the ring still holds them, else
//! a snapshot. Live changes reach subscribers through a bounded broadcast
//! channel: one that falls behind by more than its capacity loses its
//! backlog and gets a fresh snapshot, so it never grows memory.
//!
//! Subscribers hold slots: at most `--max-sse-subscribers` in all (more get
//! 503) and `--max-sse-subscribers-per-client` per client (more get 429). A
//! subscriber that stops reading is dropped by the connection's idle timeout
//! once its keep-alives cannot be written, which frees its slot.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::access::Viewer;
use crate::app::AppState;
use crate::client::ClientKey;
use crate::connection::Peer;
use crate::limits::{Permit, Refusal};
use crate::parts::diff;
use crate::problem::Problem;
use crate::query::server_list_json;
use crate::registries::SharedView;
use crate::view::{Batch, Entry, Snapshot, Start};

/// `GET …/v0.1/x/dev.herald/events`.
pub async fn events(
    State(app): State<AppState>,
    Path(params): Path<std::collections::HashMap<String, String>>,
    Query(query): Query<Vec<(String, String)>>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let view = app.view(params.get("registry").map(String::as_str))?;
    let raw = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .or_else(|| {
            query
                .iter()
                .find(|(k, _)| k == "lastEventId")
                .map(|(_, v)| v.clone())
        })
        .filter(|s| !s.trim().is_empty());
    let last_seen = match raw {
        None => None,
        Some(raw) => Some(raw.trim().parse::<u64>().map_err(|_| {
            Problem::bad_parameter(
                "Last-Event-ID",
                "Last-Event-ID must be an event id this feed sent (a non-negative integer)",
            )
        })?),
    };
    let client = app.trusted_proxies.client(peer.ip(), &headers);
    let permit = app.sse_slots.try_acquire(client).map_err(|refusal| {
        tracing::debug!(%client, %refusal, "SSE subscription refused");
        let retry_after = app.sse.retry_after.as_secs().max(1);
        match refusal {
            Refusal::Full(max) => Problem::too_many_subscribers(max, retry_after),
            Refusal::ClientFull(max) => Problem::too_many_client_subscribers(max, retry_after),
        }
    })?;
    app.metrics.sse_subscribers.inc();
    let guard = Guard {
        app: app.clone(),
        permit: Some(permit),
    };
    let (rx, start, closed) = {
        let v = view.read();
        let (rx, start) = v.subscribe(last_seen);
        (rx, start, v.closed())
    };
    let mut feed = Feed {
        app: app.clone(),
        view,
        closed,
        rx,
        pending: VecDeque::new(),
        last: last_seen.unwrap_or(0),
        viewer,
        _guard: guard,
    };
    match start {
        Start::Resume(batches) => batches.iter().for_each(|b| feed.push_batch(b)),
        Start::Snapshot(s) => feed.push_snapshot(s),
    }
    let keepalive = KeepAlive::new().interval(app.sse.keepalive);
    Ok(Sse::new(stream(feed)).keep_alive(keepalive).into_response())
}

/// Holds a subscriber's slot and counts it for as long as its stream lives.
#[derive(Debug)]
struct Guard {
    app: AppState,
    permit: Option<Permit<ClientKey>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // The slot first: once the gauge says a subscriber left, its slot is free.
        drop(self.permit.take());
        self.app.metrics.sse_subscribers.dec();
    }
}

struct Feed {
    app: AppState,
    view: SharedView,
    closed: CancellationToken,
    rx: broadcast::Receiver<Arc<Batch>>,
    pending: VecDeque<Event>,
    /// The position the subscriber has everything up to.
    last: u64,
    /// Whose view the feed is: only its entries are sent.
    viewer: Viewer,
    _guard: Guard,
}

impl Feed {
    fn push_batch(&mut self, batch: &Batch) {
        if batch.position <= self.last {
            return;
        }
        // What this subscriber is told: the difference between what it saw
        // of each changed name and what it sees now (`crate::parts`). An
        // entry it no longer sees (gone, or its claims changed) is deleted;
        // a change to parts it cannot see tells it nothing.
        let mut events = Vec::new();
        for change in &batch.changes {
            let before = change.before.as_ref().and_then(|p| p.seen_by(&self.viewer));
            let after = change.after.as_ref().and_then(|p| p.seen_by(&self.viewer));
            let (removed, changed) = diff(before.as_deref(), after.as_deref());
            for version in removed {
                events.push(Event::default().event("delete").data(
                    serde_json::json!({ "name": change.name, "version": version }).to_string(),
                ));
            }
            for entry in changed {
                events.push(Event::default().event("upsert").data(&entry.json));
            }
        }
        // One bucket change can change several entries. Only the last event
        // of a batch carries its position: a client cut off in the middle
        // keeps the previous id and, resuming, gets the whole group again.
        // A batch with nothing for this subscriber sends nothing; its next
        // event's id covers it.
        let count = events.len();
        for (i, event) in events.into_iter().enumerate() {
            let event = if i + 1 == count {
                event.id(batch.position.to_string())
            } else {
                event
            };
            self.pending.push_back(event);
        }
        self.last = batch.position;
    }

    fn push_snapshot(&mut self, snapshot: Snapshot) {
        self.pending.clear();
        let mut entries: Vec<Arc<Entry>> = Vec::new();
        for parts in &snapshot.names {
            if let Some(seen) = parts.seen_by(&self.viewer) {
                entries.extend(seen.live.values().cloned());
            }
        }
        let event = Event::default()
            .event("snapshot")
            .id(snapshot.position.to_string())
            .data(server_list_json(&entries, None));
        self.pending.push_back(event);
        self.last = snapshot.position;
    }
}

fn stream(feed: Feed) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(event) = feed.pending.pop_front() {
                return Some((Ok(event), feed));
            }
            let shutdown = feed.app.shutdown.clone();
            let closed = feed.closed.clone();
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = closed.cancelled() => return None,
                received = feed.rx.recv() => match received {
                    Ok(batch) => feed.push_batch(&batch),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "slow SSE subscriber reset with a snapshot");
                        let snapshot = feed.view.read().snapshot();
                        feed.push_snapshot(snapshot);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    })
}

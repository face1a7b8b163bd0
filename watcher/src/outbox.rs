//! The outbox: events waiting for the publisher, in order, with bounded size.
//!
//! While NATS is unreachable the watcher keeps observing. A new state of an
//! object replaces its pending event *in place* (same queue position), so the
//! queue holds at most one event per (object, registry) however long the
//! outage lasts, and an event queued after it (a `resync.completed`) still
//! comes after it. Keying by registry keeps both halves of a move: the
//! withdrawal from the old registry and the apply to the new one.
//!
//! A `resync.*` event replacing a pending one of the same kind moves to the
//! back instead: `completed` must follow every apply of its list.
//!
//! Coalescing stops at an object's incarnation (its uid): the hub refuses a
//! withdrawal that names another uid than the one it holds, so the
//! withdrawal of the incarnation the hub last received is never replaced by
//! a later incarnation's events (an object deleted and created again during
//! an outage). An incarnation the hub never received is dropped when a newer
//! one appears. So an object has at most two pending events: the last
//! published incarnation's and the newest one's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use herald_core::event::{Event, EventData};
use herald_core::ids::RegistryName;
use herald_core::object::{Kind, ObjectRef};
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// An object in one registry.
type Slot = (ObjectRef, RegistryName);

/// What a pending event is about; one pending event per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// One incarnation (uid) of an object in one registry.
    Deployment(ObjectRef, RegistryName, String),
    ResyncStarted(Kind),
    ResyncCompleted(Kind),
    Heartbeat,
}

impl Key {
    fn of(event: &Event) -> Key {
        match &event.data {
            EventData::Applied(r) => {
                Key::Deployment(r.object.clone(), r.registry.clone(), r.uid.clone())
            }
            EventData::Withdrawn(w) => {
                Key::Deployment(w.object.clone(), w.registry.clone(), w.uid.clone())
            }
            EventData::ResyncStarted(r) => Key::ResyncStarted(r.kind),
            EventData::ResyncCompleted(r) => Key::ResyncCompleted(r.kind),
            EventData::Heartbeat(_) => Key::Heartbeat,
            // Catalog events come from `herald-catalog sync`; the
            // watcher never builds one.
            EventData::CatalogApplied(_) | EventData::CatalogWithdrawn(_) => {
                unreachable!("the watcher does not publish catalog events")
            }
        }
    }

    fn keeps_position(&self) -> bool {
        matches!(self, Key::Deployment(..) | Key::Heartbeat)
    }

    fn slot(&self) -> Option<(Slot, &str)> {
        match self {
            Key::Deployment(object, registry, uid) => {
                Some(((object.clone(), registry.clone()), uid.as_str()))
            }
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    next_seq: u64,
    entries: BTreeMap<u64, (Key, Event)>,
    index: HashMap<Key, u64>,
    /// The uid of each object's incarnation whose apply was published last
    /// (what the hub holds live); removed once its withdrawal is published.
    published: HashMap<Slot, String>,
    closed: bool,
}

impl Queue {
    /// Drops pending events of `slot`'s incarnations other than `uid` that
    /// the hub never received.
    fn drop_unpublished(&mut self, slot: &Slot, uid: &str) {
        let published = self.published.get(slot).map(String::as_str);
        let stale: Vec<Key> = self
            .index
            .keys()
            .filter(|k| {
                k.slot()
                    .is_some_and(|(s, u)| s == *slot && u != uid && Some(u) != published)
            })
            .cloned()
            .collect();
        for key in stale {
            if let Some(seq) = self.index.remove(&key) {
                self.entries.remove(&seq);
            }
        }
    }
}

/// A FIFO of events that coalesces per key; one consumer (the publisher).
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    notify: Notify,
    metrics: Metrics,
}

impl Outbox {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            queue: Mutex::default(),
            notify: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event, replacing the pending one with the same key.
    pub fn push(&self, event: Event) {
        let key = Key::of(&event);
        let len = {
            let mut q = self.lock();
            if let Some((slot, uid)) = key.slot() {
                q.drop_unpublished(&slot, uid);
            }
            match q.index.get(&key).copied() {
                Some(seq) if key.keeps_position() => {
                    q.entries.insert(seq, (key, event));
                }
                existing => {
                    if let Some(seq) = existing {
                        q.entries.remove(&seq);
                    }
                    let seq = q.next_seq;
                    q.next_seq += 1;
                    q.index.insert(key.clone(), seq);
                    q.entries.insert(seq, (key, event));
                }
            }
            q.entries.len()
        };
        self.metrics.set_pending(len);
        self.notify.notify_one();
    }

    /// The oldest pending event; waits for one. `None` once closed and empty.
    pub async fn pop(&self) -> Option<Event> {
        loop {
            let notified = self.notify.notified();
            {
                let mut q = self.lock();
                if let Some((_, (key, event))) = q.entries.pop_first() {
                    q.index.remove(&key);
                    if let Some((slot, uid)) = key.slot() {
                        match &event.data {
                            EventData::Applied(_) => {
                                q.published.insert(slot, uid.to_owned());
                            }
                            _ => {
                                q.published.remove(&slot);
                            }
                        }
                    }
                    self.metrics.set_pending(q.entries.len());
                    return Some(event);
                }
                if q.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// No more events will be pushed; `pop` drains what is left, then ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::ClusterId;
    use herald_core::WithdrawReason;
    use herald_core::event::Resync;
    use herald_core::record::Withdrawal;

    fn withdrawal(name: &str, registry: &str, rv: &str) -> Event {
        withdrawal_of(name, &format!("uid-{name}"), registry, rv)
    }

    fn withdrawal_of(name: &str, uid: &str, registry: &str, rv: &str) -> Event {
        let data = EventData::Withdrawn(Withdrawal {
            v: 1,
            cluster: "c1".parse::<ClusterId>().unwrap(),
            registry: registry.parse().unwrap(),
            object: ObjectRef::new(Kind::MCPServer, "ns", name).unwrap(),
            uid: uid.to_owned(),
            resource_version: rv.to_owned(),
            epoch: 1,
            reason: WithdrawReason::Deleted,
            message: None,
        });
        Event::new(data, chrono::Utc::now())
    }

    fn completed(epoch: u64) -> Event {
        let data = EventData::ResyncCompleted(Resync {
            v: 1,
            cluster: "c1".parse().unwrap(),
            kind: Kind::MCPServer,
            epoch,
            advertised: Some(0),
        });
        Event::new(data, chrono::Utc::now())
    }

    fn drain(outbox: &Outbox) -> Vec<String> {
        outbox.close();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut ids = Vec::new();
            while let Some(e) = outbox.pop().await {
                ids.push(e.id);
            }
            ids
        })
    }

    #[test]
    fn a_new_state_replaces_the_pending_one_in_place() {
        let outbox = Outbox::new(Metrics::default());
        outbox.push(withdrawal("a", "default", "1"));
        outbox.push(completed(5));
        outbox.push(withdrawal("a", "default", "2"));
        outbox.push(withdrawal("a", "other", "2"));
        assert_eq!(outbox.len(), 3);
        let ids = drain(&outbox);
        assert_eq!(
            ids,
            vec![
                withdrawal("a", "default", "2").id,
                completed(5).id,
                withdrawal("a", "other", "2").id,
            ]
        );
    }

    #[test]
    fn a_new_resync_completed_moves_to_the_back() {
        let outbox = Outbox::new(Metrics::default());
        outbox.push(completed(5));
        outbox.push(withdrawal("a", "default", "1"));
        outbox.push(completed(6));
        let ids = drain(&outbox);
        assert_eq!(
            ids,
            vec![withdrawal("a", "default", "1").id, completed(6).id]
        );
    }

    #[test]
    fn the_withdrawal_of_what_the_hub_holds_survives_a_new_incarnation() {
        let outbox = Outbox::new(Metrics::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // The hub received incarnation 1 (its apply was published).
        let mut applied = withdrawal_of("a", "uid-1", "default", "1");
        let EventData::Withdrawn(w) = &applied.data else {
            unreachable!()
        };
        let record = herald_core::DeploymentRecord {
            v: 1,
            cluster: w.cluster.clone(),
            registry: w.registry.clone(),
            object: w.object.clone(),
            uid: "uid-1".into(),
            resource_version: "1".into(),
            generation: None,
            created_at: None,
            observed_at: chrono::Utc::now(),
            changed_at: None,
            epoch: 1,
            server_name: "com.toolhive.k8s.ns/aa".parse().unwrap(),
            version: "1.0.0".into(),
            description: "a".into(),
            title: None,
            icon: None,
            category: None,
            tools: vec![],
            remote: herald_core::record::Remote {
                transport: herald_core::record::RemoteTransport::StreamableHttp,
                url: "https://a.example.com/mcp".into(),
                headers: vec![],
                extra: Default::default(),
            },
            phase: herald_core::record::Phase::Ready,
            image: None,
            transport: "streamable-http".into(),
            group: None,
            tool_definitions: Vec::new(),
            authz_claims: None,
            package: None,
        };
        applied = Event::new(EventData::Applied(Box::new(record)), chrono::Utc::now());
        outbox.push(applied);
        rt.block_on(outbox.pop()).unwrap();
        // Deleted, created again (uid-2), deleted again, created again (uid-3).
        outbox.push(withdrawal_of("a", "uid-1", "default", "2"));
        outbox.push(withdrawal_of("a", "uid-2", "default", "3"));
        outbox.push(withdrawal_of("a", "uid-3", "default", "4"));
        let ids = drain(&outbox);
        assert_eq!(
            ids,
            vec![
                withdrawal_of("a", "uid-1", "default", "2").id,
                withdrawal_of("a", "uid-3", "default", "4").id,
            ],
            "uid-1's withdrawal stays; uid-2, never received, is dropped"
        );
    }

    #[test]
    fn memory_stays_bounded_however_many_changes() {
        let outbox = Outbox::new(Metrics::default());
        for rv in 0..10_000 {
            outbox.push(withdrawal(
                &format!("o{}", rv % 10),
                "default",
                &rv.to_string(),
            ));
        }
        assert_eq!(outbox.len(), 10);
        // New incarnations too: at most the newest per object, none published.
        for rv in 0..10_000 {
            outbox.push(withdrawal_of(
                &format!("o{}", rv % 10),
                &format!("uid-{rv}"),
                "default",
                &rv.to_string(),
            ));
        }
        assert_eq!(outbox.len(), 10);
    }
}

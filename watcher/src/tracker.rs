//! What the watcher remembers about the objects of one kind, and the events
//! each observation leads to.
//!
//! Pure and synchronous: the kind's watch loop feeds it kube-runtime's
//! watch events and queues what comes out. Per object it keeps the record
//! last advertised (to withdraw it, or to notice a move to another registry)
//! and the last rejection (to report a rejection once, not on every relist).
//!
//! A (re)list is a resync bracket: `resync.started` with a new epoch, every
//! advertised object re-applied with that epoch, objects of the listed
//! namespace that the list did not return withdrawn as deleted, then
//! `resync.completed`. With several namespaces the lists of one kind share
//! one bracket, and objects of namespaces not being listed are re-applied
//! too: the projector sweeps every record of the kind with an older epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use herald_core::event::{Event, EventData, Resync};
use herald_core::mapping::{self, Decision, Identity, Observation};
use herald_core::object::{Kind, ObjectRef};
use herald_core::record::Withdrawal;
use herald_core::record::{DeploymentRecord, RECORD_VERSION};
use herald_core::{Rejection, WatcherPolicy, WithdrawReason};
use serde_json::Value;

use crate::epoch::EpochClock;
use crate::event_limit::EventLimit;

/// What to do after an observation, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Publish(Event),
    /// The object's rejection is new or its reason changed: tell an operator.
    Report(ObjectRef, Rejection),
}

#[derive(Debug, Default)]
struct Tracked {
    advertised: Option<Box<DeploymentRecord>>,
    rejection: Option<Rejection>,
}

#[derive(Debug)]
/// An open resync; its epoch is the tracker's.
struct Bracket {
    /// Namespaces (`None`: all) still listing, with the objects known in them
    /// before the list and not returned by it yet.
    listing: BTreeMap<Option<String>, BTreeSet<ObjectRef>>,
}

/// The state of one kind.
#[derive(Debug)]
pub struct Tracker {
    kind: Kind,
    policy: Arc<WatcherPolicy>,
    clock: Arc<EpochClock>,
    /// The largest event the stream takes, once known.
    limit: EventLimit,
    objects: HashMap<ObjectRef, Tracked>,
    epoch: u64,
    bracket: Option<Bracket>,
}

/// A `withdrawn` event for `prev`, the record last advertised for an
/// object, at the version `seen` of it (`None`: the object went unobserved,
/// `prev`'s version is the last one known).
fn withdrawn(
    prev: &DeploymentRecord,
    seen: Option<&Identity>,
    epoch: u64,
    reason: WithdrawReason,
    message: Option<String>,
    now: DateTime<Utc>,
) -> Effect {
    let mut withdrawal = Withdrawal::of(prev, epoch, reason, message);
    // The object as last seen, when it is still there to be seen.
    if let Some(id) = seen {
        withdrawal.uid.clone_from(&id.uid);
        withdrawal.resource_version.clone_from(&id.resource_version);
    }
    Effect::Publish(Event::new(EventData::Withdrawn(withdrawal), now))
}

fn in_namespace(object: &ObjectRef, ns: &Option<String>) -> bool {
    ns.as_deref().is_none_or(|ns| object.namespace() == ns)
}

impl Tracker {
    pub fn new(
        kind: Kind,
        policy: Arc<WatcherPolicy>,
        clock: Arc<EpochClock>,
        limit: EventLimit,
    ) -> Self {
        Self {
            kind,
            policy,
            clock,
            limit,
            objects: HashMap::new(),
            epoch: 0,
            bracket: None,
        }
    }

    fn resync(&self, epoch: u64, advertised: Option<u64>) -> Resync {
        Resync {
            v: RECORD_VERSION,
            cluster: self.policy.cluster.clone(),
            kind: self.kind,
            epoch,
            advertised,
        }
    }

    /// A list of `namespace` (`None`: all namespaces) begins.
    pub fn begin_list(&mut self, namespace: Option<&str>, now: DateTime<Utc>) -> Vec<Effect> {
        let ns = namespace.map(str::to_owned);
        let mut effects = Vec::new();
        if self.bracket.is_none() {
            let epoch = self.clock.next();
            self.epoch = epoch;
            self.bracket = Some(Bracket {
                listing: BTreeMap::new(),
            });
            let started = EventData::ResyncStarted(self.resync(epoch, None));
            effects.push(Effect::Publish(Event::new(started, now)));
            // Objects outside the listed namespace are confirmed by re-applying
            // what we know; their own lists, if any, re-apply them anyway.
            let mut others: Vec<_> = self
                .objects
                .iter_mut()
                .filter(|(o, _)| !in_namespace(o, &ns))
                .filter_map(|(_, t)| t.advertised.as_mut())
                .collect();
            others.sort_by(|a, b| a.object.cmp(&b.object));
            for record in others {
                record.epoch = epoch;
                record.observed_at = now;
                let applied = EventData::Applied(record.clone());
                effects.push(Effect::Publish(Event::new(applied, now)));
            }
        }
        let known: BTreeSet<ObjectRef> = self
            .objects
            .keys()
            .filter(|o| in_namespace(o, &ns))
            .cloned()
            .collect();
        if let Some(bracket) = &mut self.bracket {
            bracket.listing.insert(ns, known);
        }
        effects
    }

    /// An object as listed (`listing`: during the list of that namespace) or
    /// as changed.
    pub fn observe(
        &mut self,
        object: &Value,
        listing: Option<Option<&str>>,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let Ok(id) = Identity::read(self.kind, object) else {
            return Vec::new();
        };
        if let (Some(ns), Some(bracket)) = (listing, &mut self.bracket)
            && let Some(pending) = bracket.listing.get_mut(&ns.map(str::to_owned))
        {
            pending.remove(&id.object);
        }
        let seen = Observation {
            observed_at: now,
            epoch: self.epoch,
        };
        let decision = within_size(
            mapping::decide(self.kind, object, &self.policy, seen),
            self.limit.get(),
            now,
        );
        let tracked = self.objects.entry(id.object.clone()).or_default();
        let mut effects = Vec::new();
        let withdraw = |prev: &DeploymentRecord, reason, message| {
            withdrawn(prev, Some(&id), seen.epoch, reason, message, now)
        };
        match decision {
            Decision::Advertise(mut record) => {
                // Unchanged to clients since it was first advertised as it is:
                // that time travels with every record (the stored `changedAt`).
                if let Some(prev) = tracked
                    .advertised
                    .as_ref()
                    .filter(|p| p.same_advertisement(&record))
                {
                    record.changed_at = prev.changed_at.or(record.changed_at);
                }
                // Advertised without its tool definitions: still an operator's to fix.
                let warning = mapping::tool_definitions_warning(object);
                if warning.is_some() && tracked.rejection != warning {
                    effects.extend(
                        warning
                            .clone()
                            .map(|w| Effect::Report(id.object.clone(), w)),
                    );
                }
                tracked.rejection = warning;
                if let Some(prev) = &tracked.advertised {
                    let unchanged = prev.registry == record.registry
                        && prev.uid == record.uid
                        && prev.resource_version == record.resource_version
                        && prev.epoch == record.epoch;
                    if unchanged {
                        return effects;
                    }
                    if prev.registry != record.registry {
                        effects.push(withdraw(prev, WithdrawReason::Moved, None));
                    }
                }
                effects.push(Effect::Publish(Event::new(
                    EventData::Applied(record.clone()),
                    now,
                )));
                tracked.advertised = Some(record);
            }
            Decision::Skip(reason) => {
                tracked.rejection = None;
                if let Some(prev) = tracked.advertised.take() {
                    effects.push(withdraw(&prev, reason, None));
                }
            }
            Decision::Reject(rejection) => {
                if let Some(prev) = tracked.advertised.take() {
                    let message = Some(rejection.to_string());
                    effects.push(withdraw(&prev, WithdrawReason::Rejected, message));
                }
                if tracked.rejection.as_ref() != Some(&rejection) {
                    tracked.rejection = Some(rejection.clone());
                    effects.push(Effect::Report(id.object.clone(), rejection));
                }
            }
        }
        effects
    }

    /// The object was deleted.
    pub fn delete(&mut self, object: &Value, now: DateTime<Utc>) -> Vec<Effect> {
        let Ok(id) = Identity::read(self.kind, object) else {
            return Vec::new();
        };
        if let Some(bracket) = &mut self.bracket {
            for pending in bracket.listing.values_mut() {
                pending.remove(&id.object);
            }
        }
        let Some(tracked) = self.objects.remove(&id.object) else {
            return Vec::new();
        };
        tracked
            .advertised
            .map(|prev| {
                let reason = WithdrawReason::Deleted;
                withdrawn(&prev, Some(&id), self.epoch, reason, None, now)
            })
            .into_iter()
            .collect()
    }

    /// The list of `namespace` is complete. Returns the effects and whether
    /// the bracket closed (every namespace of this kind listed).
    pub fn end_list(&mut self, namespace: Option<&str>, now: DateTime<Utc>) -> (Vec<Effect>, bool) {
        let epoch = self.epoch;
        let Some(bracket) = &mut self.bracket else {
            return (Vec::new(), false);
        };
        let missing = bracket
            .listing
            .remove(&namespace.map(str::to_owned))
            .unwrap_or_default();
        let closed = bracket.listing.is_empty();
        let mut effects = Vec::new();
        for object in missing {
            let Some(tracked) = self.objects.remove(&object) else {
                continue;
            };
            if let Some(prev) = tracked.advertised {
                let reason = WithdrawReason::Deleted;
                effects.push(withdrawn(&prev, None, epoch, reason, None, now));
            }
        }
        if closed {
            self.bracket = None;
            let advertised = self
                .objects
                .values()
                .filter(|t| t.advertised.is_some())
                .count();
            let resync = self.resync(epoch, Some(advertised as u64));
            let completed = EventData::ResyncCompleted(resync);
            effects.push(Effect::Publish(Event::new(completed, now)));
        }
        (effects, closed)
    }

    /// Whether nothing of this kind is known: no object, no list under way.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.bracket.is_none()
    }

    /// The kind's CRD is gone, and every object of the kind with it: a
    /// complete bracket of its own (new epoch, every advertised object
    /// withdrawn, `resync.completed` with none advertised), so that the
    /// projector also sweeps what this process never saw. A list that was
    /// under way is dropped: its bracket must not be reused by the next
    /// list, whose epoch would then be older than what it confirms.
    pub fn kind_gone(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let epoch = self.clock.next();
        self.epoch = epoch;
        self.bracket = None;
        let started = EventData::ResyncStarted(self.resync(epoch, None));
        let mut effects = vec![Effect::Publish(Event::new(started, now))];
        let mut gone: Vec<Box<DeploymentRecord>> = self
            .objects
            .drain()
            .filter_map(|(_, t)| t.advertised)
            .collect();
        gone.sort_by(|a, b| a.object.cmp(&b.object));
        let message = Some("its CustomResourceDefinition was deleted".to_owned());
        for prev in &gone {
            let reason = WithdrawReason::Deleted;
            effects.push(withdrawn(prev, None, epoch, reason, message.clone(), now));
        }
        let completed = EventData::ResyncCompleted(self.resync(epoch, Some(0)));
        effects.push(Effect::Publish(Event::new(completed, now)));
        effects
    }
}

/// A record whose event the stream would not take is a rejection like any
/// other (reported, and a withdrawal of what was advertised), not an event
/// the publisher would retry forever.
fn within_size(decision: Decision, max: Option<usize>, now: DateTime<Utc>) -> Decision {
    match (decision, max) {
        (Decision::Advertise(record), Some(max)) => {
            let size = Event::new(EventData::Applied(record.clone()), now)
                .to_json()
                .len();
            if size > max {
                Decision::Reject(Rejection::TooLarge { size, max })
            } else {
                Decision::Advertise(record)
            }
        }
        (other, _) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::EventType;
    use serde_json::json;

    fn tracker() -> Tracker {
        let policy = WatcherPolicy::new("c1".parse().unwrap());
        Tracker::new(
            Kind::MCPServer,
            Arc::new(policy),
            Arc::default(),
            EventLimit::default(),
        )
    }

    fn object(ns: &str, name: &str, rv: u32, registry: Option<&str>) -> Value {
        let mut labels = serde_json::Map::new();
        if let Some(r) = registry {
            labels.insert(herald_core::annotations::REGISTRY_NAME.to_owned(), json!(r));
        }
        json!({
            "metadata": {
                "name": name, "namespace": ns, "uid": format!("uid-{name}"),
                "resourceVersion": rv.to_string(), "labels": labels,
                "annotations": {
                    herald_core::annotations::REGISTRY_EXPORT: "true",
                    herald_core::annotations::REGISTRY_DESCRIPTION: "A server",
                },
            },
            "spec": {},
            "status": {"phase": "Ready"},
        })
    }

    /// `type registry reason` of each published event, and reports as `report code`.
    fn summary(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Publish(ev) => match &ev.data {
                    EventData::Applied(r) => format!("applied {} {}", r.object.name(), r.registry),
                    EventData::Withdrawn(w) => format!(
                        "withdrawn {} {} {}",
                        w.object.name(),
                        w.registry,
                        w.reason.as_str()
                    ),
                    EventData::ResyncCompleted(r) => {
                        format!("completed {}", r.advertised.unwrap_or_default())
                    }
                    other => other.event_type().short().to_owned(),
                },
                Effect::Report(o, r) => format!("report {} {}", o.name(), r.code()),
            })
            .collect()
    }

    #[test]
    fn bad_tool_definitions_are_reported_once_and_the_server_stays_advertised() {
        let mut t = tracker();
        let now = Utc::now();
        t.begin_list(None, now);
        t.end_list(None, now);
        let key = herald_core::annotations::TOOL_DEFINITIONS;
        let with_definitions = |rv, value: &str| {
            let mut o = object("ns", "srv", rv, None);
            o["metadata"]["annotations"][key] = json!(value);
            o
        };
        assert_eq!(
            summary(&t.observe(&with_definitions(1, "not json"), None, now)),
            ["report srv invalid_tool_definitions", "applied srv default"]
        );
        assert_eq!(
            summary(&t.observe(&with_definitions(2, "not json"), None, now)),
            ["applied srv default"],
            "the same reason is not reported again"
        );
        let valid = r#"[{"name":"t","inputSchema":{"type":"object"}}]"#;
        assert_eq!(
            summary(&t.observe(&with_definitions(3, valid), None, now)),
            ["applied srv default"]
        );
        assert_eq!(
            summary(&t.observe(&with_definitions(4, "[1]"), None, now)),
            ["report srv invalid_tool_definitions", "applied srv default"],
            "broken again: reported again"
        );
    }

    #[test]
    fn records_carry_when_their_advertisement_last_changed() {
        let mut t = tracker();
        let t0 = Utc::now();
        t.begin_list(None, t0);
        t.end_list(None, t0);
        let changed_at = |effects: Vec<Effect>| match effects.as_slice() {
            [Effect::Publish(ev)] => match &ev.data {
                EventData::Applied(r) => r.changed_at,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let t1 = t0 + chrono::Duration::minutes(1);
        let t2 = t0 + chrono::Duration::minutes(2);
        let a = object("ns", "srv", 1, None);
        assert_eq!(changed_at(t.observe(&a, None, t0)), Some(t0));
        // Re-read with another resource version, and re-listed: same advertisement.
        assert_eq!(
            changed_at(t.observe(&object("ns", "srv", 2, None), None, t1)),
            Some(t0)
        );
        t.begin_list(None, t2);
        assert_eq!(
            changed_at(t.observe(&object("ns", "srv", 2, None), Some(None), t2)),
            Some(t0)
        );
        t.end_list(None, t2);
        let mut edited = object("ns", "srv", 3, None);
        edited["metadata"]["annotations"][herald_core::annotations::REGISTRY_DESCRIPTION] =
            json!("Another server");
        assert_eq!(changed_at(t.observe(&edited, None, t2)), Some(t2));
    }

    #[test]
    fn a_kind_gone_during_a_list_withdraws_all_and_the_next_list_starts_afresh() {
        let mut t = tracker();
        let t0 = Utc::now();
        t.begin_list(None, t0);
        t.end_list(None, t0);
        t.observe(&object("ns", "srv-a", 1, None), None, t0);
        t.observe(&object("ns", "srv-b", 1, None), None, t0);
        // A relist begins, sees one object, and the CRD goes before it ends.
        let relist = t.begin_list(None, t0);
        let EventData::ResyncStarted(first) = (match &relist[0] {
            Effect::Publish(ev) => &ev.data,
            other => panic!("{other:?}"),
        }) else {
            panic!("{relist:?}")
        };
        let first_epoch = first.epoch;
        t.observe(&object("ns", "srv-a", 1, None), Some(None), t0);
        let gone = t.kind_gone(t0);
        assert_eq!(
            summary(&gone),
            [
                "resync.started",
                "withdrawn srv-a default deleted",
                "withdrawn srv-b default deleted",
                "completed 0"
            ]
        );
        assert!(t.is_empty());
        // The CRD is back: a new bracket with a newer epoch, not the stale one.
        let again = t.begin_list(None, t0);
        let Some(Effect::Publish(started)) = again.first() else {
            panic!("{again:?}")
        };
        let EventData::ResyncStarted(second) = &started.data else {
            panic!("{started:?}")
        };
        assert!(second.epoch > first_epoch);
        let applied = t.observe(&object("ns", "srv-a", 1, None), Some(None), t0);
        assert_eq!(summary(&applied), ["applied srv-a default"]);
        assert_eq!(summary(&t.end_list(None, t0).0), ["completed 1"]);
    }

    #[test]
    fn changes_of_one_object_become_events() {
        let mut t = tracker();
        let now = Utc::now();
        t.begin_list(None, now);
        t.end_list(None, now);
        let a = |rv, reg| object("ns", "srv-a", rv, reg);
        assert_eq!(
            summary(&t.observe(&a(1, None), None, now)),
            ["applied srv-a default"]
        );
        assert!(t.observe(&a(1, None), None, now).is_empty(), "unchanged");
        assert_eq!(
            summary(&t.observe(&a(2, Some("other")), None, now)),
            ["withdrawn srv-a default moved", "applied srv-a other"]
        );
        assert_eq!(
            summary(&t.observe(&a(3, Some("Bad")), None, now)),
            [
                "withdrawn srv-a other rejected",
                "report srv-a invalid_registry"
            ]
        );
        assert!(
            t.observe(&a(4, Some("Bad")), None, now).is_empty(),
            "reported once"
        );
        let mut opted_out = a(5, None);
        opted_out["metadata"]["annotations"] = json!({});
        assert!(
            t.observe(&opted_out, None, now).is_empty(),
            "was not advertised"
        );
        assert_eq!(
            summary(&t.observe(&a(6, None), None, now)),
            ["applied srv-a default"]
        );
        assert_eq!(
            summary(&t.observe(&opted_out, None, now)),
            ["withdrawn srv-a default opted_out"]
        );
        t.observe(&a(7, None), None, now);
        assert_eq!(
            summary(&t.delete(&a(7, None), now)),
            ["withdrawn srv-a default deleted"]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn a_relist_reapplies_and_withdraws_what_it_did_not_return() {
        let mut t = tracker();
        let now = Utc::now();
        t.begin_list(None, now);
        t.observe(&object("ns", "srv-kept", 1, None), Some(None), now);
        t.observe(&object("ns", "srv-gone", 1, None), Some(None), now);
        let (effects, closed) = t.end_list(None, now);
        assert!(closed);
        assert_eq!(summary(&effects), ["completed 2"]);

        let started = t.begin_list(None, now);
        assert_eq!(started.len(), 1);
        let Effect::Publish(ev) = &started[0] else {
            panic!()
        };
        assert_eq!(ev.event_type(), EventType::ResyncStarted);
        let effects = t.observe(&object("ns", "srv-kept", 1, None), Some(None), now);
        assert_eq!(summary(&effects), ["applied srv-kept default"], "new epoch");
        let (effects, _) = t.end_list(None, now);
        assert_eq!(
            summary(&effects),
            ["withdrawn srv-gone default deleted", "completed 1"]
        );
    }

    #[test]
    fn namespaces_share_one_bracket_per_kind() {
        let mut t = tracker();
        let now = Utc::now();
        t.begin_list(Some("team-a"), now);
        t.begin_list(Some("team-b"), now);
        t.observe(
            &object("team-a", "srv-x", 1, None),
            Some(Some("team-a")),
            now,
        );
        let (effects, closed) = t.end_list(Some("team-a"), now);
        assert!(!closed && effects.is_empty(), "b still lists");
        t.observe(
            &object("team-b", "srv-y", 1, None),
            Some(Some("team-b")),
            now,
        );
        let (effects, closed) = t.end_list(Some("team-b"), now);
        assert!(closed);
        assert_eq!(summary(&effects), ["completed 2"]);

        // A relist of namespace a alone re-applies b's object under the new epoch.
        let effects = t.begin_list(Some("team-a"), now);
        assert_eq!(
            summary(&effects),
            ["resync.started", "applied srv-y default"]
        );
        t.observe(
            &object("team-a", "srv-x", 1, None),
            Some(Some("team-a")),
            now,
        );
        let (effects, closed) = t.end_list(Some("team-a"), now);
        assert!(closed);
        assert_eq!(summary(&effects), ["completed 2"]);
    }
}

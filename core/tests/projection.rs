//! Folding events into stored state: idempotent, order-safe, and sweeping
//! exactly the records a re-list did not confirm.

mod common;

use chrono::Duration;
use common::*;
use herald_core::cluster_state::ClusterState;
use herald_core::event::{Heartbeat, Resync};
use herald_core::projection::{Fold, fold_applied, fold_withdrawn, sweep};
use herald_core::record::Withdrawal;
use herald_core::stored::StoredDeployment;
use herald_core::{DeploymentRecord, Event, EventData, Kind, WithdrawReason};

fn write(fold: Fold) -> StoredDeployment {
    match fold {
        Fold::Write(s) => s,
        Fold::Stale { stored_seq } => panic!("unexpectedly stale (stored {stored_seq})"),
        Fold::Refused { reason } => panic!("refused: {reason}"),
    }
}

fn withdrawal(r: &DeploymentRecord) -> Withdrawal {
    Withdrawal {
        v: 1,
        cluster: r.cluster.clone(),
        registry: r.registry.clone(),
        object: r.object.clone(),
        uid: r.uid.clone(),
        resource_version: "2".into(),
        epoch: r.epoch,
        reason: WithdrawReason::OptedOut,
        message: None,
    }
}

#[test]
fn newer_events_apply_and_older_or_duplicate_ones_are_stale() {
    let r = record("c1", "ns", "a", "io.example/alpha", "1.0.0");
    let s5 = write(fold_applied(None, &r, 5));
    assert_eq!(s5.seq, 5);
    assert_eq!(
        fold_applied(Some(&s5), &r, 5),
        Fold::Stale { stored_seq: 5 },
        "duplicate"
    );
    assert_eq!(
        fold_applied(Some(&s5), &r, 3),
        Fold::Stale { stored_seq: 5 },
        "redelivered older"
    );
    let w = write(fold_withdrawn(Some(&s5), &withdrawal(&r), 8, seen_at()));
    assert!(w.live().is_none());
    // A late applied does not resurrect; the tombstone learns it withdrew it.
    let late = write(fold_applied(Some(&w), &r, 6));
    assert!(late.live().is_none(), "a late applied does not resurrect");
    assert_eq!(late.seq, 8);
    assert_eq!(late.last.as_ref().map(|l| l.seq), Some(6));
    assert_eq!(
        fold_applied(Some(&late), &r, 5),
        Fold::Stale { stored_seq: 8 },
        "an older one teaches it nothing"
    );
    assert!(write(fold_applied(Some(&w), &r, 9)).live().is_some());
}

#[test]
fn changed_at_is_the_watchers_stamp_and_for_older_watchers_moves_only_when_the_advertisement_changes()
 {
    let stamped = record("c1", "ns", "a", "io.example/alpha", "1.0.0");
    let mut later = stamped.clone();
    later.observed_at = stamped.observed_at + Duration::hours(3);
    assert_eq!(
        write(fold_applied(None, &later, 1)).changed_at,
        stamped.observed_at,
        "the stamp, not the observation"
    );
    // Records of watchers that do not stamp: the rule before stamps.
    let mut r = stamped;
    r.changed_at = None;
    let first = write(fold_applied(None, &r, 1));
    let mut resynced = r.clone();
    resynced.epoch += 1;
    resynced.resource_version = "77".into();
    resynced.observed_at = r.observed_at + Duration::hours(1);
    resynced.generation = Some(9);
    let again = write(fold_applied(Some(&first), &resynced, 2));
    assert_eq!(again.changed_at, first.changed_at);
    let mut edited = resynced.clone();
    edited.description = "new words".into();
    assert_eq!(
        write(fold_applied(Some(&again), &edited, 3)).changed_at,
        edited.observed_at
    );
    let mut moved = resynced.clone();
    moved.remote.url = "https://elsewhere.example/mcp".into();
    moved.observed_at = r.observed_at + Duration::hours(2);
    assert_eq!(
        write(fold_applied(Some(&again), &moved, 3)).changed_at,
        moved.observed_at
    );
}

#[test]
fn stored_values_round_trip() {
    let r = record("c1", "ns", "a.b", "io.example/alpha", "1.0.0");
    for s in [
        write(fold_applied(None, &r, 1)),
        write(fold_withdrawn(None, &withdrawal(&r), 2, seen_at())),
    ] {
        assert_eq!(StoredDeployment::from_json(&s.to_json()).unwrap(), s);
        assert_eq!(s.key().to_string(), "deployment.c1.mcpserver.ns.a.b");
    }
}

#[test]
fn a_sweep_removes_only_unconfirmed_records_of_that_cluster_and_kind() {
    let completed = Resync {
        v: 1,
        cluster: "c1".parse().unwrap(),
        kind: Kind::MCPServer,
        epoch: 10,
        advertised: Some(1),
    };
    let mut old = record("c1", "ns", "old", "io.example/alpha", "1.0.0");
    old.epoch = 9;
    let mut confirmed = old.clone();
    confirmed.epoch = 10;
    let mut other_cluster = record("c2", "ns", "old", "io.example/alpha", "1.0.0");
    other_cluster.epoch = 1;
    let mut other_kind = old.clone();
    other_kind.object = herald_core::ObjectRef::new(Kind::MCPRemoteProxy, "ns", "old").unwrap();

    let swept = sweep(
        &write(fold_applied(None, &old, 5)),
        &completed,
        20,
        seen_at(),
    )
    .expect("unconfirmed");
    assert_eq!(swept.seq, 20);
    let herald_core::stored::DeploymentState::Withdrawn(w) = &swept.state else {
        panic!()
    };
    assert_eq!(w.reason, WithdrawReason::Unconfirmed);
    for keep in [confirmed, other_cluster, other_kind] {
        assert_eq!(
            sweep(
                &write(fold_applied(None, &keep, 5)),
                &completed,
                20,
                seen_at()
            ),
            None,
            "{:?}",
            keep.object
        );
    }
    assert_eq!(
        sweep(
            &write(fold_applied(None, &old, 25)),
            &completed,
            20,
            seen_at()
        ),
        None,
        "newer than the sweep"
    );
}

#[test]
fn cluster_state_tracks_heartbeats_and_epochs() {
    let cluster: herald_core::ClusterId = "c1".parse().unwrap();
    let hb = Event::new(
        EventData::Heartbeat(Heartbeat {
            v: 1,
            cluster: cluster.clone(),
            started_at: seen_at(),
            interval_seconds: 10,
            watcher_version: "0.1.0".into(),
        }),
        seen_at(),
    );
    let s1 = ClusterState::fold(None, &hb, 1, hb.time).unwrap();
    assert_eq!(s1.heartbeat_interval_seconds, Some(10));
    assert!(
        ClusterState::fold(Some(&s1), &hb, 1, hb.time).is_none(),
        "a duplicate changes nothing"
    );
    let started = Event::new(
        EventData::ResyncStarted(Resync {
            v: 1,
            cluster: cluster.clone(),
            kind: Kind::MCPServer,
            epoch: 4,
            advertised: None,
        }),
        seen_at(),
    );
    let s2 = ClusterState::fold(Some(&s1), &started, 2, started.time).unwrap();
    assert!(!s2.epochs[&Kind::MCPServer].completed);
    let done = Event::new(
        EventData::ResyncCompleted(Resync {
            v: 1,
            cluster,
            kind: Kind::MCPServer,
            epoch: 4,
            advertised: Some(0),
        }),
        seen_at(),
    );
    let s3 = ClusterState::fold(Some(&s2), &done, 3, done.time).unwrap();
    assert!(s3.epochs[&Kind::MCPServer].completed);
    assert!(!s3.is_stale(seen_at() + Duration::seconds(30)));
    assert!(s3.is_stale(seen_at() + Duration::seconds(31)));
}

#[test]
fn liveness_follows_the_streams_clock_not_the_events_claim() {
    let cluster: herald_core::ClusterId = "c1".parse().unwrap();
    let forged = Event::new(
        EventData::Heartbeat(Heartbeat {
            v: 1,
            cluster,
            started_at: seen_at(),
            interval_seconds: 10,
            watcher_version: "0.1.0".into(),
        }),
        "2099-01-01T00:00:00Z".parse().unwrap(),
    );
    let state = ClusterState::fold(None, &forged, 1, seen_at()).unwrap();
    assert_eq!(state.last_seen, seen_at());
    assert_eq!(state.last_heartbeat, Some(seen_at()));
    assert!(state.is_stale(seen_at() + Duration::minutes(5)));
}

#[test]
fn cluster_state_is_the_same_whatever_the_order_of_folding() {
    let cluster: herald_core::ClusterId = "c1".parse().unwrap();
    let resync = |epoch, done: bool| {
        let r = Resync {
            v: 1,
            cluster: cluster.clone(),
            kind: Kind::MCPServer,
            epoch,
            advertised: None,
        };
        Event::new(
            if done {
                EventData::ResyncCompleted(r)
            } else {
                EventData::ResyncStarted(r)
            },
            seen_at(),
        )
    };
    let hb = |minutes| {
        Event::new(
            EventData::Heartbeat(Heartbeat {
                v: 1,
                cluster: cluster.clone(),
                started_at: seen_at(),
                interval_seconds: minutes,
                watcher_version: "0.1.0".into(),
            }),
            seen_at() + Duration::minutes(minutes as i64),
        )
    };
    let events = [
        (1, resync(5, false)),
        (2, resync(5, true)),
        (3, hb(1)),
        (4, resync(6, false)),
        (5, hb(2)),
    ];
    let fold_all = |order: &[usize]| {
        let mut state: Option<ClusterState> = None;
        for &i in order {
            let (seq, event) = &events[i];
            if let Some(next) = ClusterState::fold(state.as_ref(), event, *seq, event.time) {
                state = Some(next);
            }
        }
        state.unwrap()
    };
    let in_order = fold_all(&[0, 1, 2, 3, 4]);
    assert_eq!(
        in_order.epochs[&Kind::MCPServer],
        herald_core::cluster_state::EpochState {
            epoch: 6,
            completed: false
        }
    );
    assert_eq!(in_order.heartbeat_interval_seconds, Some(2));
    for order in [[4, 3, 2, 1, 0], [1, 0, 4, 2, 3], [3, 1, 4, 0, 2]] {
        assert_eq!(fold_all(&order), in_order, "{order:?}");
    }
}

#[test]
fn a_tombstone_keeps_what_it_withdrew_and_old_tombstones_still_read() {
    let r = record("c1", "ns", "a", "io.example/alpha", "1.0.0");
    let live = write(fold_applied(None, &r, 1));
    assert_eq!(live.last, None);
    let gone = write(fold_withdrawn(Some(&live), &withdrawal(&r), 2, seen_at()));
    let last = gone.tombstone().expect("served as deleted");
    assert_eq!(last.server_name, r.server_name);
    assert_eq!(last.version, "1.0.0");
    assert_eq!(last.description, r.description);
    assert_eq!(last.authz_claims, r.authz_claims);
    assert_eq!(gone.changed_at, seen_at());
    // A second withdrawal keeps what was withdrawn; the tombstone's time is
    // that of the withdrawal stored (a function of that event alone).
    let later = seen_at() + Duration::minutes(5);
    let again = write(fold_withdrawn(Some(&gone), &withdrawal(&r), 3, later));
    assert_eq!(again.tombstone(), Some(last));
    assert_eq!(again.changed_at, later);
    // A withdrawal of nothing stored has nothing to serve.
    let blind = write(fold_withdrawn(None, &withdrawal(&r), 4, seen_at()));
    assert_eq!(blind.tombstone(), None);
    // A tombstone of the format before `last` reads, and is not served.
    let mut old = serde_json::to_value(&gone).unwrap();
    old.as_object_mut().unwrap().remove("last");
    let old: StoredDeployment = serde_json::from_value(old).unwrap();
    assert!(old.live().is_none());
    assert_eq!(old.tombstone(), None);
    // Going live again forgets the tombstone.
    assert_eq!(write(fold_applied(Some(&gone), &r, 5)).last, None);
}

#[test]
fn a_swept_record_leaves_a_servable_tombstone() {
    let r = record("c1", "ns", "a", "io.example/alpha", "1.0.0");
    let live = write(fold_applied(None, &r, 1));
    let resync = Resync {
        v: 1,
        cluster: r.cluster.clone(),
        kind: r.object.kind(),
        epoch: r.epoch + 1,
        advertised: Some(0),
    };
    let swept = sweep(&live, &resync, 2, seen_at()).expect("unconfirmed");
    assert_eq!(
        swept.tombstone().map(|t| &t.server_name),
        Some(&r.server_name)
    );
}

#[test]
fn a_tombstone_folded_before_the_older_applied_ends_as_in_order() {
    let r1 = record("c1", "ns", "a", "io.example/alpha", "1.0.0");
    let r2 = record("c1", "ns", "a", "io.example/alpha", "2.0.0");
    let w = withdrawal(&r2);
    let in_order = {
        let a = write(fold_applied(None, &r1, 1));
        let b = write(fold_applied(Some(&a), &r2, 2));
        write(fold_withdrawn(Some(&b), &w, 3, seen_at()))
    };
    // Two projectors: the withdrawal lands first, then the applieds in any order.
    for order in [[1, 2], [2, 1]] {
        let mut stored = write(fold_withdrawn(None, &w, 3, seen_at()));
        for seq in order {
            let r = if seq == 1 { &r1 } else { &r2 };
            if let Fold::Write(next) = fold_applied(Some(&stored), r, seq) {
                stored = next;
            }
        }
        assert_eq!(stored, in_order, "{order:?}");
    }
    // A redelivery of what it already knows changes nothing.
    assert!(matches!(
        fold_applied(Some(&in_order), &r2, 2),
        Fold::Stale { .. }
    ));
}

/// One step of a watcher's history of one object.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Re-read or re-listed: the same advertisement.
    Reread,
    /// Edited: another description.
    Edit,
    /// Withdrawn (and advertised again by a later step).
    Withdraw,
}

/// The events a watcher publishes for `steps`, stamped as its tracker
/// stamps them, with their stream sequences 1, 2, ….
fn history(steps: &[Step]) -> Vec<(u64, Event)> {
    let base = record("c1", "ns", "a", "io.example/alpha", "1.0.0");
    let mut advertised: Option<DeploymentRecord> = None;
    let mut edits = 0;
    let mut events = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let now = seen_at() + Duration::minutes(i as i64);
        let data = match (step, &advertised) {
            (Step::Withdraw, Some(prev)) => {
                let w = withdrawal(prev);
                advertised = None;
                EventData::Withdrawn(w)
            }
            _ => {
                if matches!(step, Step::Edit) {
                    edits += 1;
                }
                let mut r = base.clone();
                r.description = format!("edit {edits}");
                r.resource_version = i.to_string();
                r.observed_at = now;
                r.changed_at = match &advertised {
                    Some(prev) if prev.same_advertisement(&r) => prev.changed_at,
                    _ => Some(now),
                };
                advertised = Some(r.clone());
                EventData::Applied(Box::new(r))
            }
        };
        events.push((i as u64 + 1, Event::new(data, now)));
    }
    events
}

/// Folds `deliveries` (indices into `events`) one at a time, as projectors
/// racing under compare-and-set would.
fn fold_deliveries(events: &[(u64, Event)], deliveries: &[usize]) -> Option<StoredDeployment> {
    let mut stored: Option<StoredDeployment> = None;
    for &i in deliveries {
        let (seq, event) = &events[i];
        let fold = match &event.data {
            EventData::Applied(r) => fold_applied(stored.as_ref(), r, *seq),
            EventData::Withdrawn(w) => fold_withdrawn(stored.as_ref(), w, *seq, event.time),
            other => panic!("not a key's event: {other:?}"),
        };
        match fold {
            Fold::Write(next) => stored = Some(next),
            Fold::Stale { .. } => {}
            Fold::Refused { reason } => panic!("refused: {reason}"),
        }
    }
    stored
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    proptest::prop_oneof![
        3 => proptest::strategy::Just(Step::Reread),
        2 => proptest::strategy::Just(Step::Edit),
        1 => proptest::strategy::Just(Step::Withdraw),
    ]
}

proptest::proptest! {
    /// Whatever the fold accepts — redeliveries, duplicates, any order, as
    /// long as the newest event arrives — ends with the `changedAt` (and
    /// state) of folding the history in order.
    #[test]
    fn changed_at_is_a_function_of_the_history_not_of_the_order_of_folding(
        steps in proptest::collection::vec(step(), 1..12),
        order in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..40),
        shuffle_seed in proptest::prelude::any::<u64>(),
    ) {
        let events = history(&steps);
        let in_order: Vec<usize> = (0..events.len()).collect();
        let expected = fold_deliveries(&events, &in_order).expect("something stored");
        // Every event once in a shuffled order, plus redeliveries anywhere.
        let mut deliveries = in_order.clone();
        let mut state = shuffle_seed | 1;
        for i in (1..deliveries.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            deliveries.swap(i, (state % (i as u64 + 1)) as usize);
        }
        for (n, again) in order.iter().enumerate() {
            let at = (n * 7) % (deliveries.len() + 1);
            deliveries.insert(at, again.index(events.len()));
        }
        let got = fold_deliveries(&events, &deliveries).expect("something stored");
        proptest::prop_assert_eq!(got.changed_at, expected.changed_at, "deliveries {:?}", deliveries);
        proptest::prop_assert_eq!(&got.state, &expected.state);
        proptest::prop_assert_eq!(got.seq, expected.seq);
    }
}

#[test]
fn a_redelivered_older_applied_no_longer_moves_changed_at() {
    // seq 1 advertised at t, seq 2 a re-read of the same at t+1h; seq 1's
    // first delivery was lost and it is redelivered after seq 2.
    let events = history(&[Step::Reread, Step::Reread]);
    let in_order = fold_deliveries(&events, &[0, 1]).unwrap();
    let redelivered = fold_deliveries(&events, &[1, 0]).unwrap();
    assert_eq!(in_order.changed_at, seen_at());
    assert_eq!(redelivered.changed_at, in_order.changed_at);
}

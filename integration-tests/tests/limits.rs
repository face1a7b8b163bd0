//! Limits that fill up: the event stream at its message limit, a registry bucket at its
//! byte limit, the dead-letter stream full. Real NATS, real binaries, a real API server.
//! Each time NATS refuses for want of room, the event waits where it is (the watcher's
//! outbox, the projector's unacknowledged message) and nothing is dropped: once the
//! operator makes room, the registries converge (the oracle) and nothing was
//! dead-lettered for it.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use herald_core::RegistryName;
use herald_core::names::{DLQ_STREAM, STREAM, bucket_name};
use herald_integration_tests::herald::{Herald, HeraldProcess};
use herald_integration_tests::large_stack_test;
use herald_integration_tests::stack::Stack;
use herald_integration_tests::timeout::eventually;

/// Long enough for a few retries of a held-back write under a loaded machine.
const HELD: Duration = Duration::from_secs(60);
const PACE: Duration = Duration::from_millis(5);
const NAMESPACES: [&str; 2] = ["team", "payments"];

/// Waits until `sample` on `process` reaches `at_least`.
async fn metric_reaches(
    process: &HeraldProcess,
    sample: &str,
    at_least: f64,
) -> anyhow::Result<()> {
    eventually(HELD, &format!("{sample} >= {at_least}"), || async {
        Ok((process.metric(sample).await.unwrap_or(0.0) >= at_least).then_some(()))
    })
    .await
}

async fn dead_letters(js: &jetstream::Context) -> anyhow::Result<u64> {
    Ok(js
        .get_stream(DLQ_STREAM)
        .await?
        .info()
        .await?
        .state
        .messages)
}

large_stack_test!(a_full_event_stream_holds_the_watcher_back_and_loses_nothing => full_stream_steps);

/// HERALD_EVENTS created by the projector with room for 40 events, then more changes
/// than that: the stream refuses the rest instead of dropping old events, the watcher
/// keeps them and retries, and after the operator lifts the limit the registry
/// converges.
async fn full_stream_steps() -> anyhow::Result<()> {
    let mut env = Stack::builder("limits-stream")
        .without_watchers()
        .projector_flags(&["--stream-max-messages", "40"])
        .build()
        .await?;
    let js = env.nats.jetstream().await;
    let watcher = env.watcher(0, &env.nats.url()).start().await?;
    let mut storm = env.storm(0x11_5717, &NAMESPACES, 8);
    storm.run(120, PACE).await?;

    metric_reaches(&watcher, "herald_watcher_publish_failures_total", 1.0).await?;
    let mut events = js.get_stream(STREAM).await?;
    let info = events.info().await?.clone();
    assert_eq!(info.config.discard, stream::DiscardPolicy::New);
    assert_eq!(info.state.messages, 40, "the stream holds what it may");
    assert_eq!(
        info.state.first_sequence, 1,
        "no event was dropped to make room"
    );

    // The operator raises the limit (`nats stream edit HERALD_EVENTS --max-msgs -1`).
    js.update_stream(stream::Config {
        max_messages: -1,
        ..info.config
    })
    .await?;
    env.watchers.push(watcher);
    env.converge().await?;
    assert_eq!(dead_letters(&js).await?, 0);
    Ok(())
}

large_stack_test!(a_full_registry_bucket_holds_events_back_without_dead_lettering => full_bucket_steps);

/// The `default` bucket made by the operator with a byte limit the storm's records
/// exceed, and a projector that would dead-letter a failing write at its first delivery
/// (`--max-deliver 1`): writes refused for want of room are retried instead, however
/// often; after the operator lifts the limit everything is served.
async fn full_bucket_steps() -> anyhow::Result<()> {
    let mut env = Stack::builder("limits-bucket")
        .servers_only()
        .build()
        .await?;
    let url = env.nats.url();
    let js = env.nats.jetstream().await;
    let bucket = bucket_name(&"default".parse::<RegistryName>()?);
    js.create_key_value(kv::Config {
        bucket: bucket.clone(),
        max_bytes: 4096,
        ..Default::default()
    })
    .await?;
    let (projector, api) = tokio::try_join!(
        Herald::projector(&url)
            .dir(env.dir.path())
            .flag("--max-deliver", "1")
            .flag("--ack-wait", "2s")
            .start(),
        Herald::api(&url).dir(env.dir.path()).start(),
    )?;
    env.projector = Some(projector);
    env.api = Some(api);
    let watcher = env.watcher(0, &url).start().await?;
    env.watchers.push(watcher);
    env.storm(0xb0_c4e7, &NAMESPACES, 8).run(60, PACE).await?;

    let projector = env.projector.as_ref().expect("started above");
    let held = "herald_projector_events_held_back_total{reason=\"bucket_full\"}";
    // A second refusal of some write: it came back instead of being given up.
    metric_reaches(projector, held, 2.0).await?;
    assert_eq!(
        dead_letters(&js).await?,
        0,
        "nothing was dead-lettered for a full bucket"
    );

    // The operator makes room (`nats stream edit KV_herald-default --max-bytes -1`).
    let mut kv_stream = js.get_stream(format!("KV_{bucket}")).await?;
    let config = kv_stream.info().await?.config.clone();
    js.update_stream(stream::Config {
        max_bytes: -1,
        ..config
    })
    .await?;
    env.converge().await?;
    assert_eq!(dead_letters(&js).await?, 0);
    let dead = "herald_projector_dead_lettered_total{reason=\"apply_failed\"}";
    assert_eq!(projector.metric(dead).await?, 0.0, "{dead}");
    Ok(())
}

large_stack_test!(a_full_dead_letter_stream_keeps_the_event_until_there_is_room => full_dead_letters_steps);

/// HERALD_DLQ made by the operator with room for one message; two events the projector
/// must dead-letter: the second waits, unacknowledged and redelivered, until the
/// operator makes room, and is then dead-lettered like the first.
async fn full_dead_letters_steps() -> anyhow::Result<()> {
    let env = Stack::builder("limits-dlq").servers_only().build().await?;
    let url = env.nats.url();
    let js = env.nats.jetstream().await;
    js.create_stream(stream::Config {
        name: DLQ_STREAM.to_owned(),
        subjects: vec!["herald.dlq.>".to_owned()],
        max_messages: 1,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await?;
    // `--max-deliver 1`: a server that stopped redelivering after that would leave the
    // second event stranded.
    let projector = Herald::projector(&url)
        .dir(env.dir.path())
        .flag("--max-deliver", "1")
        .flag("--ack-wait", "2s")
        .start()
        .await?;
    let mut last = 0;
    for garbage in [&b"not json"[..], &b"{\"neither\": 1}"[..]] {
        last = js
            .publish("herald.events.east.x", garbage.into())
            .await?
            .await?
            .sequence;
    }
    let held = "herald_projector_events_held_back_total{reason=\"dead_letters_full\"}";
    metric_reaches(&projector, held, 2.0).await?;
    assert_eq!(dead_letters(&js).await?, 1);

    let mut dlq = js.get_stream(DLQ_STREAM).await?;
    let config = dlq.info().await?.config.clone();
    js.update_stream(stream::Config {
        max_messages: -1,
        ..config
    })
    .await?;
    eventually(
        HELD,
        "both events dead-lettered and acknowledged",
        || async {
            let floor = js
                .get_stream(STREAM)
                .await?
                .consumer_info("herald-projector")
                .await?
                .ack_floor
                .stream_sequence;
            Ok((dead_letters(&js).await? == 2 && floor >= last).then_some(()))
        },
    )
    .await?;
    Ok(())
}

//! `run`: the durable pull consumer on `HERALD_EVENTS` that folds every
//! event into the buckets, dead-letters what cannot be applied, and stops
//! on shutdown after finishing (and acknowledging) the batch in hand.
//!
//! Writes of distinct keys are kept in flight together (up to
//! `max_in_flight`): one key's events are folded in the order they came, a
//! control event waits until everything before it is applied, and each
//! message is acknowledged once its key's write is.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use herald_core::Event;
use herald_core::names::{EVENTS_WILDCARD, STREAM};
use herald_runtime::clock::from_nats_time;
use herald_runtime::health::Readiness;
use herald_runtime::retry::{Backoff, RetryPolicy};
use herald_runtime::stream::StreamArgs;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, KeyWritten, Slot, Target};
use crate::dead_letter::{self, APPLY_FAILED, UID_MISMATCH};
use crate::fold::{self, Effect};
use crate::gate::Gate;
use crate::metrics::{HELD_BUCKET_FULL, HELD_DEAD_LETTERS_FULL, Metrics};
use crate::writes::{BucketError, BucketSettings};
use herald_core::names::KeyKind;
use herald_core::stored::StoredValue;

/// How long one pull request waits for messages before the next one.
const PULL_EXPIRY: Duration = Duration::from_secs(1);
/// After shutdown: how long to wait for messages of the current pull that
/// are already on their way.
const DRAIN_WAIT: Duration = Duration::from_millis(100);
/// Longest wait for the events before a control event to be acknowledged.
const BARRIER_WAIT: Duration = Duration::from_secs(5);
/// Pause before retrying when the server does not answer pulls.
const RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(250), Duration::from_secs(5));

pub const READY_NATS: &str = "nats";
pub const READY_CONSUMER: &str = "consumer";

/// Everything `run` needs besides the connection.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Durable consumer name; projectors sharing it share the work.
    pub consumer: String,
    /// Messages fetched per pull request.
    pub batch: usize,
    /// Messages delivered but not yet acknowledged, at most.
    pub max_ack_pending: i64,
    /// Deliveries of one message before it is dead-lettered.
    pub max_deliver: i64,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Writes of distinct keys in flight at once.
    pub max_in_flight: NonZeroUsize,
    /// Keys whose last written value is remembered, sparing a read.
    pub cache_keys: NonZeroUsize,
    pub buckets: BucketSettings,
    pub stream: StreamArgs,
    /// What every event must pass before it is folded.
    pub gate: Arc<Gate>,
    /// How often cluster liveness is read into the metrics.
    pub liveness_interval: Duration,
}

/// Creates or binds the durable consumer.
pub async fn bind_consumer(
    js: &jetstream::Context,
    config: &RunConfig,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = js
        .get_stream(STREAM)
        .await
        .with_context(|| format!("looking up stream {STREAM}"))?;
    let wanted = consumer::pull::Config {
        durable_name: Some(config.consumer.clone()),
        description: Some("herald-projector: folds events into registry buckets".to_owned()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: SERVER_MAX_DELIVER,
        max_ack_pending: config.max_ack_pending,
        filter_subject: EVENTS_WILDCARD.to_owned(),
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    let mut consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(&config.consumer, wanted)
        .await
        .with_context(|| format!("binding consumer {}", config.consumer))?;
    let have = consumer.info().await?.config.clone();
    if have.max_deliver != SERVER_MAX_DELIVER {
        // Made by an older projector, which left the count to the server.
        stream
            .update_consumer(consumer::Config {
                max_deliver: SERVER_MAX_DELIVER,
                ..have.clone()
            })
            .await
            .with_context(|| {
                format!(
                    "letting the server redeliver the events of consumer {} without limit",
                    config.consumer
                )
            })?;
        tracing::info!(consumer = %config.consumer, "the server now redelivers without limit; --max-deliver is counted by the projector");
        consumer = stream
            .get_consumer(&config.consumer)
            .await
            .map_err(|e| anyhow::anyhow!("binding consumer {}: {e}", config.consumer))?;
    }
    if have.max_ack_pending != config.max_ack_pending {
        tracing::warn!(
            consumer = %config.consumer,
            have_max_ack_pending = have.max_ack_pending,
            "consumer exists with other settings; leaving it as it is"
        );
    }
    Ok(consumer)
}

/// Runs the projector until `shutdown`: ensures the stream, binds the
/// consumer and applies every message.
pub async fn run(
    client: async_nats::Client,
    config: RunConfig,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    readiness.register(READY_NATS, "not connected yet");
    readiness.register(READY_CONSUMER, "consumer not bound yet");
    tokio::spawn(herald_runtime::nats::watch_connection(
        client.clone(),
        readiness.clone(),
        READY_NATS,
        shutdown.clone(),
    ));
    let js = jetstream::new(client.clone());
    tokio::spawn(crate::liveness::run(
        js.clone(),
        metrics.clone(),
        config.liveness_interval,
        shutdown.clone(),
    ));
    let mut backoff = Backoff::new(RETRY);
    let mut consumer = loop {
        match ensure_and_bind(&js, &config).await {
            Ok(consumer) => break consumer,
            Err(err) => {
                readiness.set_not_ready(READY_CONSUMER, format!("{err:#}"));
                tracing::warn!(
                    err = format!("{err:#}"),
                    "cannot bind the consumer yet; retrying"
                );
                if !backoff.pause(&shutdown).await {
                    return Ok(());
                }
            }
        }
    };
    readiness.set_ready(READY_CONSUMER);
    tracing::info!(consumer = %config.consumer, "consuming {STREAM}");
    let mut projector = Projector {
        client: client.clone(),
        target: Target::new(js, config.buckets, config.cache_keys),
        metrics,
        max_deliver: config.max_deliver,
        consumer: consumer.clone(),
        gate: Arc::clone(&config.gate),
        barrier_wait: config.ack_wait.min(BARRIER_WAIT),
        max_in_flight: config.max_in_flight.get(),
        in_flight: FuturesUnordered::new(),
        busy: HashMap::new(),
    };
    while !shutdown.is_cancelled() {
        let batch = consumer
            .batch()
            .max_messages(config.batch)
            .expires(PULL_EXPIRY)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => {
                backoff.reset();
                batch
            }
            Err(err) => {
                tracing::warn!(%err, "pull request failed; binding the consumer again");
                readiness.set_not_ready(READY_CONSUMER, format!("pull failed: {err}"));
                if !backoff.pause(&shutdown).await {
                    break;
                }
                // The consumer (or the stream) may have been deleted.
                match ensure_and_bind(&jetstream::new(client.clone()), &config).await {
                    Ok(rebound) => {
                        consumer = rebound;
                        projector.consumer = consumer.clone();
                        readiness.set_ready(READY_CONSUMER);
                    }
                    Err(err) => {
                        tracing::warn!(err = format!("{err:#}"), "binding the consumer failed")
                    }
                }
                continue;
            }
        };
        let received = projector.consume(&mut batch, &shutdown).await;
        if received == 0 {
            // Idle: refresh the lag from the server, messages are not telling it.
            if let Ok(info) = consumer.get_info().await {
                projector.metrics.pending(info.num_pending);
            }
        }
    }
    projector.drain().await;
    // Acks are fire-and-forget publishes: make sure they left before exiting.
    client.flush().await.context("flushing acks")?;
    tracing::info!("projector stopped");
    Ok(())
}

/// The consumer's `max_deliver` on the server: unlimited. The projector
/// counts deliveries itself (`--max-deliver`) and gives up on an event only
/// when the event is at fault; one that waits for room in a full bucket or
/// dead-letter stream must come back however often that takes.
const SERVER_MAX_DELIVER: i64 = -1;

/// The stream and the consumer, created or checked.
async fn ensure_and_bind(
    js: &jetstream::Context,
    config: &RunConfig,
) -> anyhow::Result<consumer::PullConsumer> {
    config.stream.ensure(js).await?;
    config.stream.ensure_dead_letters(js).await?;
    bind_consumer(js, config).await
}

/// A deployment or catalog event waiting for, or in, a write of its key.
struct Pending {
    message: jetstream::Message,
    event: Event,
    seq: u64,
    delivered: i64,
    /// When the stream stored it (the server's clock).
    stored_at: DateTime<Utc>,
}

/// A finished write of one key's events.
struct KeyJob {
    slot: Slot,
    kind: KeyKind,
    pending: Vec<Pending>,
    result: Result<KeyWritten, BucketError>,
}

struct Projector {
    client: async_nats::Client,
    target: Target,
    metrics: Metrics,
    max_deliver: i64,
    consumer: consumer::PullConsumer,
    gate: Arc<Gate>,
    barrier_wait: Duration,
    /// Writes of distinct keys in flight at once, at most.
    max_in_flight: usize,
    in_flight: FuturesUnordered<BoxFuture<'static, KeyJob>>,
    /// Keys with a write in flight, and the events that arrived for them
    /// since: they are folded together once it is done, so that one key's
    /// events are applied in the order they came.
    busy: HashMap<Slot, Vec<Pending>>,
}

impl Projector {
    /// Handles the messages of one pull; after `shutdown`, only those already
    /// on their way. Returns how many there were. Writes may still be in
    /// flight when it returns (see [`Projector::drain`]).
    async fn consume(
        &mut self,
        batch: &mut consumer::pull::Batch,
        shutdown: &CancellationToken,
    ) -> usize {
        let mut received = 0;
        let mut draining = false;
        loop {
            let next = if draining {
                match tokio::time::timeout(DRAIN_WAIT, batch.next()).await {
                    Ok(next) => next,
                    Err(_) => return received,
                }
            } else {
                tokio::select! {
                    () = shutdown.cancelled() => { draining = true; continue; }
                    Some(job) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                        self.finish(job).await;
                        continue;
                    }
                    next = batch.next() => next,
                }
            };
            match next {
                None => return received,
                Some(Ok(message)) => {
                    received += 1;
                    self.handle(message).await;
                }
                Some(Err(err)) => {
                    tracing::warn!(%err, "pull ended with an error");
                    return received;
                }
            }
        }
    }

    /// Decodes one message and hands it on: a key's event to the write of
    /// its key, a control event (resync, heartbeat) applied once everything
    /// before it is, a message that is not a usable event to the dead
    /// letters.
    async fn handle(&mut self, message: jetstream::Message) {
        let (seq, delivered, stored_at) = match message.info() {
            Ok(info) => {
                self.metrics.pending(info.pending);
                (
                    info.stream_sequence,
                    info.delivered,
                    from_nats_time(info.published),
                )
            }
            Err(err) => {
                tracing::warn!(%err, subject = %message.subject, "message without JetStream metadata; ignoring it");
                return;
            }
        };
        if delivered > 1 {
            self.metrics.redelivered();
        }
        let event = match Event::decode_on(&message.subject, &message.payload) {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(seq, subject = %message.subject, reason = %err, code = err.code(), "dead-lettering an event that cannot be used");
                self.dead_letter(&message, seq, err.code(), &err.to_string())
                    .await;
                return;
            }
        };
        if let Err(refusal) = self.gate.check(
            &event,
            &message.subject,
            &message.payload,
            message.headers.as_ref(),
            stored_at,
        ) {
            tracing::warn!(seq, subject = %message.subject, reason = %refusal, code = refusal.code(), "dead-lettering an event the hub does not accept");
            self.dead_letter(&message, seq, refusal.code(), &refusal.to_string())
                .await;
            return;
        }
        let slot = fold::slot(&event).map(|(registry, key, kind)| ((registry.clone(), key), kind));
        let pending = Pending {
            message,
            event,
            seq,
            delivered,
            stored_at,
        };
        match slot {
            Some((slot, kind)) => self.enqueue(slot, kind, pending).await,
            None => {
                self.drain().await;
                self.barrier(seq).await;
                self.apply_control(pending).await;
            }
        }
    }

    /// Starts the write of `pending`'s key, or queues it behind the write
    /// of that key in flight.
    async fn enqueue(&mut self, slot: Slot, kind: KeyKind, pending: Pending) {
        if let Some(waiting) = self.busy.get_mut(&slot) {
            waiting.push(pending);
            return;
        }
        while self.in_flight.len() >= self.max_in_flight {
            let Some(job) = self.in_flight.next().await else {
                break;
            };
            self.finish(job).await;
        }
        let known = self.target.take_known(&slot);
        self.start(slot, kind, vec![pending], known).await;
    }

    /// Starts one compare-and-set of `slot` folding all of `pending`, from
    /// `known` (the key's value and revision) when there is one.
    async fn start(
        &mut self,
        slot: Slot,
        kind: KeyKind,
        pending: Vec<Pending>,
        known: Option<(StoredValue, u64)>,
    ) {
        let store = match self.target.store(&slot.0).await {
            Ok(store) => store,
            Err(err) => {
                self.target.reset();
                self.failed(pending, &err).await;
                return;
            }
        };
        self.busy.insert(slot.clone(), Vec::new());
        self.in_flight.push(Box::pin(async move {
            let events: Vec<_> = pending.iter().map(|p| (&p.event, p.seq)).collect();
            let result = apply::write_key(&store, &slot.1, kind, known, &events).await;
            KeyJob {
                slot,
                kind,
                pending,
                result,
            }
        }));
    }

    /// Acknowledges (or retries) the events of a finished write, then
    /// starts the next write of its key when events came for it meanwhile.
    async fn finish(&mut self, job: KeyJob) {
        let KeyJob {
            slot,
            kind,
            pending,
            result,
        } = job;
        let waiting = self.busy.remove(&slot).unwrap_or_default();
        let after = match result {
            Ok(written) => {
                for (p, effect) in pending.iter().zip(written.effects) {
                    let ty = p.event.event_type();
                    match effect {
                        Effect::Changed => self.metrics.applied(ty, p.seq),
                        Effect::Stale => {
                            self.metrics.stale(ty);
                            tracing::debug!(seq = p.seq, %ty, "stale event skipped");
                        }
                        Effect::Refused(reason) => {
                            tracing::warn!(seq = p.seq, %ty, %reason, "dead-lettering an event that contradicts the stored record");
                            self.dead_letter(&p.message, p.seq, UID_MISMATCH, &reason)
                                .await;
                            continue;
                        }
                    }
                    ack(&p.message, AckKind::Ack).await;
                }
                written.after
            }
            Err(err) => {
                self.target.reset();
                self.failed(pending, &err).await;
                None
            }
        };
        // The next write of the key starts from this one's result.
        if waiting.is_empty() {
            self.target.remember(slot, after);
        } else {
            self.start(slot, kind, waiting, after).await;
        }
    }

    /// Finishes every write in flight.
    async fn drain(&mut self) {
        while let Some(job) = self.in_flight.next().await {
            self.finish(job).await;
        }
    }

    /// Applies a control event; every event before it is applied.
    async fn apply_control(&mut self, pending: Pending) {
        let ty = pending.event.event_type();
        match self
            .target
            .apply_control(&pending.event, pending.seq, pending.stored_at)
            .await
        {
            Ok(outcome) => {
                if outcome.stale {
                    self.metrics.stale(ty);
                    tracing::debug!(seq = pending.seq, %ty, "stale event skipped");
                } else {
                    self.metrics.applied(ty, pending.seq);
                    self.metrics.swept(outcome.swept);
                }
                ack(&pending.message, AckKind::Ack).await;
            }
            Err(err) => self.failed(vec![pending], &err).await,
        }
    }

    /// Events whose write failed: asked to be redelivered later, when the
    /// reason (a server or bucket in trouble) may have passed; dead-lettered
    /// after every allowed delivery unless the bucket was full, which is
    /// never the event's fault.
    async fn failed(&mut self, pending: Vec<Pending>, err: &BucketError) {
        for p in pending {
            let ty = p.event.event_type();
            let (seq, delivered) = (p.seq, p.delivered);
            let delay = redelivery_delay(delivered);
            if err.is_full() {
                self.metrics.held_back(HELD_BUCKET_FULL);
                tracing::warn!(seq, %ty, %err, delivered, ?delay, "no room to write; the event waits");
                ack(&p.message, AckKind::Nak(Some(delay))).await;
            } else if delivered >= self.max_deliver {
                tracing::error!(seq, %ty, %err, delivered, "giving up on an event after every allowed delivery");
                let reason = format!("not applied after {delivered} deliveries: {err}");
                self.dead_letter(&p.message, seq, APPLY_FAILED, &reason)
                    .await;
            } else {
                tracing::warn!(seq, %ty, %err, delivered, ?delay, "applying failed; asking for a redelivery");
                ack(&p.message, AckKind::Nak(Some(delay))).await;
            }
        }
    }

    /// Waits until every event before `seq` is acknowledged, by any
    /// projector on the consumer. Control events (a sweep above all) must
    /// see the state of every deployment event before them; deployment
    /// events need no such order, their folds compare sequences. Bounded: a
    /// projector that died with events in hand delays a sweep by at most
    /// `barrier_wait`.
    async fn barrier(&mut self, seq: u64) {
        let deadline = tokio::time::Instant::now() + self.barrier_wait;
        // Our own acks are fire-and-forget: send them before asking.
        let _ = self.client.flush().await;
        loop {
            match self.consumer.get_info().await {
                Ok(info) if info.ack_floor.stream_sequence + 1 >= seq => return,
                Ok(_) => {}
                Err(err) => tracing::debug!(%err, "reading the consumer's ack floor"),
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(seq, wait = ?self.barrier_wait, "earlier events are still unacknowledged; applying a control event anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Publishes a dead letter and acks the original; leaves the original
    /// unacknowledged (so it comes back) when the dead letter is not stored.
    async fn dead_letter(
        &mut self,
        message: &jetstream::Message,
        seq: u64,
        code: &'static str,
        reason: &str,
    ) {
        let (subject, headers) = dead_letter::dead_letter(
            code,
            reason,
            &message.subject,
            seq,
            message.headers.as_ref(),
        );
        // Through JetStream, and acked before the original is: a dead letter
        // is kept in HERALD_DLQ, never lost between the two.
        let js = jetstream::new(self.client.clone());
        let published = async {
            js.publish_with_headers(subject, headers, message.payload.clone())
                .await?
                .await
        }
        .await;
        match published {
            Ok(_) => {
                self.metrics.dead_lettered(code);
                ack(message, AckKind::Ack).await;
            }
            Err(err) => {
                // The original comes back (the server redelivers without limit).
                let delivered = message.info().map_or(1, |info| info.delivered);
                let delay = redelivery_delay(delivered);
                if herald_runtime::capacity::is_full(&err) {
                    self.metrics.held_back(HELD_DEAD_LETTERS_FULL);
                }
                tracing::error!(seq, %err, ?delay, "storing a dead letter failed; the event waits");
                ack(message, AckKind::Nak(Some(delay))).await;
            }
        }
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(err) = message.ack_with(kind).await {
        tracing::warn!(%err, "acknowledging failed; the message will be redelivered");
    }
}

/// Grows with each delivery, capped so a recovered server is used soon.
pub fn redelivery_delay(delivered: i64) -> Duration {
    let exp = u32::try_from(delivered.clamp(1, 8)).unwrap_or(8);
    (Duration::from_millis(100) * 2u32.pow(exp)).min(Duration::from_secs(10))
}

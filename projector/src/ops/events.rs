//! `events`: prints events from the stream for people (an aligned table) or
//! tools (JSON lines), with filters and a start point, optionally following
//! new events. Reads with an ephemeral ordered consumer: the durable
//! consumer of `run` is never touched.

use std::collections::VecDeque;
use std::io::Write;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use chrono::SecondsFormat;
use futures::StreamExt;
use herald_core::names::STREAM;
use herald_core::{Event, EventData};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::ops::filter::EventFilter;
use crate::ops::starting_point::StartingPoint;
use crate::ops::table;
use herald_runtime::clock::from_nats_time;

/// Column widths when following, so that new rows line up with the header.
const FOLLOW_MIN_WIDTHS: [usize; 6] = [6, 24, 20, 8, 8, 32];
/// Rows held back to size the table's columns before printing starts.
const ALIGN_ROWS: usize = 1000;

#[derive(Debug, Clone, Default)]
pub struct EventsOptions {
    pub filter: EventFilter,
    pub start: StartingPoint,
    pub json: bool,
    pub follow: bool,
}

/// One printed event. Serialized (by `explain --json`) without its NATS
/// subject and payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub seq: u64,
    pub time: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub cluster: String,
    pub registry: String,
    pub subject: String,
    pub summary: String,
    /// The NATS subject it was found on.
    #[serde(skip)]
    pub nats_subject: String,
    /// The CloudEvent as JSON (or `null` when it is not JSON).
    #[serde(skip)]
    pub event: Value,
}

pub const HEADER: [&str; 7] = [
    "SEQ", "TIME", "TYPE", "CLUSTER", "REGISTRY", "SUBJECT", "SUMMARY",
];

impl Row {
    /// A decoded event.
    pub fn of_event(seq: u64, nats_subject: &str, event: &Event, payload: &[u8]) -> Row {
        Row {
            seq,
            time: event.time.to_rfc3339_opts(SecondsFormat::Millis, true),
            ty: event.event_type().short().to_owned(),
            cluster: match (event.cluster(), event.data.catalog_source()) {
                (Some(cluster), _) => cluster.to_string(),
                (None, Some(source)) => format!("catalog:{source}"),
                (None, None) => "-".to_owned(),
            },
            registry: event
                .data
                .registry()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            subject: event.ce_subject().unwrap_or_else(|| "-".to_owned()),
            summary: summary(&event.data),
            nats_subject: nats_subject.to_owned(),
            event: serde_json::from_slice(payload).unwrap_or(Value::Null),
        }
    }

    /// A message that is not a usable event; shown so nothing is hidden.
    pub fn undecodable(
        seq: u64,
        stored_at: chrono::DateTime<chrono::Utc>,
        nats_subject: &str,
        reason: &str,
        payload: &[u8],
    ) -> Row {
        let mut tokens = nats_subject.split('.').skip(2);
        let cluster = tokens.next().unwrap_or("-").to_owned();
        let registry = tokens.next().unwrap_or("-").to_owned();
        Row {
            seq,
            time: stored_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            ty: "invalid".to_owned(),
            cluster,
            registry,
            subject: "-".to_owned(),
            summary: format!("cannot be used: {reason}"),
            nats_subject: nats_subject.to_owned(),
            event: serde_json::from_slice(payload).unwrap_or(Value::Null),
        }
    }

    pub fn cells(&self) -> Vec<String> {
        vec![
            self.seq.to_string(),
            self.time.clone(),
            self.ty.clone(),
            self.cluster.clone(),
            self.registry.clone(),
            self.subject.clone(),
            self.summary.clone(),
        ]
    }

    pub fn to_json_line(&self) -> String {
        json!({
            "seq": self.seq,
            "time": self.time,
            "type": self.ty,
            "cluster": self.cluster,
            "registry": self.registry,
            "subject": self.subject,
            "summary": self.summary,
            "natsSubject": self.nats_subject,
            "event": self.event,
        })
        .to_string()
    }
}

/// One line that says what an event means.
pub fn summary(data: &EventData) -> String {
    match data {
        EventData::Applied(r) => format!(
            "{} {} {} {} {} epoch {}",
            r.server_name, r.version, r.remote.transport, r.remote.url, r.phase, r.epoch
        ),
        EventData::Withdrawn(w) => match &w.message {
            Some(message) => format!("{}: {message} epoch {}", w.reason.as_str(), w.epoch),
            None => format!("{} epoch {}", w.reason.as_str(), w.epoch),
        },
        EventData::ResyncStarted(r) => format!("{} epoch {}", r.kind, r.epoch),
        EventData::ResyncCompleted(r) => match r.advertised {
            Some(n) => format!("{} epoch {}, {n} advertised", r.kind, r.epoch),
            None => format!("{} epoch {}", r.kind, r.epoch),
        },
        EventData::Heartbeat(h) => format!(
            "watcher {} every {}s, up since {}",
            h.watcher_version,
            h.interval_seconds,
            h.started_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
        EventData::CatalogApplied(r) => format!(
            "{} {} from catalog {} ({})",
            r.server_name, r.version, r.source, r.digest
        ),
        EventData::CatalogWithdrawn(w) => {
            format!("{} {} left catalog {}", w.server_name, w.version, w.source)
        }
    }
}

/// Prints rows as a table or JSON lines; holds rows back until it knows
/// the column widths (the catch-up point, or `ALIGN_ROWS` rows).
struct Printer<'a, W: Write> {
    out: &'a mut W,
    json: bool,
    follow: bool,
    held: Vec<Vec<String>>,
    widths: Option<Vec<usize>>,
    printed: usize,
}

impl<W: Write> Printer<'_, W> {
    fn push(&mut self, row: &Row) -> std::io::Result<()> {
        self.printed += 1;
        if self.json {
            writeln!(self.out, "{}", row.to_json_line())?;
            return self.out.flush();
        }
        match &self.widths {
            Some(widths) => {
                writeln!(self.out, "{}", table::line(&row.cells(), widths))?;
                self.out.flush()
            }
            None => {
                self.held.push(row.cells());
                if self.held.len() >= ALIGN_ROWS {
                    self.release()?;
                }
                Ok(())
            }
        }
    }

    /// Prints what is held back; later rows use the same widths.
    fn release(&mut self) -> std::io::Result<()> {
        if self.json || self.widths.is_some() {
            return Ok(());
        }
        let mut rows = vec![HEADER.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
        rows.append(&mut self.held);
        let mut widths = table::widths(&rows);
        if self.follow {
            // Rows still to come are unknown: leave room for typical ones.
            for (w, min) in widths.iter_mut().zip(FOLLOW_MIN_WIDTHS) {
                *w = (*w).max(min);
            }
        }
        for row in &rows {
            writeln!(self.out, "{}", table::line(row, &widths))?;
        }
        self.widths = Some(widths);
        self.out.flush()
    }
}

/// Prints the events `options` select to `out`; returns how many. With
/// `follow`, keeps printing new events until `shutdown`.
pub async fn events<W: Write>(
    js: &jetstream::Context,
    options: &EventsOptions,
    out: &mut W,
    shutdown: CancellationToken,
) -> anyhow::Result<usize> {
    let stream = js
        .get_stream(STREAM)
        .await
        .with_context(|| format!("looking up stream {STREAM}"))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: options.filter.subject(),
            deliver_policy: options.start.deliver_policy(),
            description: Some("herald-projector events".to_owned()),
            ..Default::default()
        })
        .await
        .context("creating an ordered consumer")?;
    let mut caught_up = consumer.cached_info().num_pending == 0;
    let mut printer = Printer {
        out,
        json: options.json,
        follow: options.follow,
        held: Vec::new(),
        widths: None,
        printed: 0,
    };
    let keep_last = match options.start {
        StartingPoint::Last(n) => Some(n),
        _ => None,
    };
    let mut tail: VecDeque<Row> = VecDeque::new();
    let flush_tail = |tail: &mut VecDeque<Row>, printer: &mut Printer<'_, W>| {
        tail.drain(..).try_for_each(|row| printer.push(&row))
    };
    if caught_up && !options.follow {
        printer.release()?;
        return Ok(0);
    }
    let mut messages = consumer.messages().await.context("reading the stream")?;
    if caught_up {
        printer.release()?;
    }
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => break,
            next = messages.next() => next,
        };
        let Some(message) = next else { break };
        let message = message.context("reading the stream")?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, pending, stored_at) = (
            info.stream_sequence,
            info.pending,
            from_nats_time(info.published),
        );
        let row = match Event::decode_on(&message.subject, &message.payload) {
            Ok(event) => options
                .filter
                .matches(&event)
                .then(|| Row::of_event(seq, &message.subject, &event, &message.payload)),
            Err(err) => options.filter.shows_undecodable().then(|| {
                Row::undecodable(
                    seq,
                    stored_at,
                    &message.subject,
                    &err.to_string(),
                    &message.payload,
                )
            }),
        };
        if let Some(row) = row {
            match keep_last {
                Some(n) if !caught_up => {
                    tail.push_back(row);
                    if tail.len() > n {
                        tail.pop_front();
                    }
                }
                _ => printer.push(&row)?,
            }
        }
        if !caught_up && pending == 0 {
            caught_up = true;
            flush_tail(&mut tail, &mut printer)?;
            printer.release()?;
            if !options.follow {
                break;
            }
        }
    }
    flush_tail(&mut tail, &mut printer)?;
    printer.release()?;
    Ok(printer.printed)
}

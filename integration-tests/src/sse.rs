//! Server-sent events as `herald-api` sends them: the frames of a `text/event-stream`
//! body, parsed as bytes arrive (events with their id and JSON data; comments counted).

use serde_json::Value;

/// One event of the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<u64>,
    pub data: Value,
}

/// Frames of a stream, from its chunks.
#[derive(Debug, Default)]
pub struct Frames {
    buffer: String,
    /// Comment lines seen so far (keep-alives).
    pub comments: usize,
}

impl Frames {
    /// Adds a chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        self.buffer.push_str(std::str::from_utf8(chunk)?);
        Ok(())
    }

    /// The next complete event, if one has arrived (frames without an event name, such
    /// as keep-alive comments, are passed over).
    pub fn next_event(&mut self) -> anyhow::Result<Option<SseEvent>> {
        while let Some(end) = self.buffer.find("\n\n") {
            let frame: String = self.buffer.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (None, None, String::new());
            for line in frame.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse()?);
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if let Some(event) = event {
                return Ok(Some(SseEvent {
                    event,
                    id,
                    data: serde_json::from_str(&data)?,
                }));
            }
        }
        Ok(None)
    }
}

//! Whether JetStream refused a write because a stream, a bucket or the
//! account is out of room. Such a refusal says nothing about the message:
//! the writer keeps it and tries again later, it is never given up as bad
//! (dead-lettered, rejected). The server's error code sits a few `source()`
//! levels down the error async-nats returns; this walks down to it.

use async_nats::jetstream::{self, ErrorCode};

/// The JetStream error code somewhere in `err`'s chain of sources.
pub fn jetstream_code(err: &(dyn std::error::Error + 'static)) -> Option<ErrorCode> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            return Some(js.error_code());
        }
        next = e.source();
    }
    None
}

/// A stream or bucket at its `max_bytes`/`max_msgs` limit with the "discard
/// new" policy (the server says "maximum bytes exceeded"), or an account or
/// server out of storage.
pub fn is_full(err: &(dyn std::error::Error + 'static)) -> bool {
    jetstream_code(err).is_some_and(|code| {
        [
            ErrorCode::STREAM_STORE_FAILED,
            ErrorCode::INSUFFICIENT_RESOURCES,
            ErrorCode::STORAGE_RESOURCES_EXCEEDED,
            ErrorCode::MEMORY_RESOURCES_EXCEEDED,
            ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
        ]
        .contains(&code)
    })
}

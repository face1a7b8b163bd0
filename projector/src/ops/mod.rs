//! The ops commands: what an operator runs by hand against the stream and
//! the buckets, apart from the consumer that keeps them up to date.
//!
//! - [`events`]: prints events from the stream (with [`filter`] and a
//!   [`starting_point`]), optionally following new ones;
//! - [`replay`]: rebuilds registries from the history in memory
//!   ([`rebuild`]) and compares them with the live buckets ([`diff`]);
//! - [`explain`]: why one server or object is served, or not;
//! - [`status`]: the stream, the consumer, the buckets and the clusters;
//! - [`table`]: aligned plain-text output for people.

pub mod diff;
pub mod events;
pub mod explain;
pub mod filter;
pub mod rebuild;
pub mod replay;
pub mod starting_point;
pub mod status;
pub mod table;

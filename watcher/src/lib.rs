//! herald-watcher (being written).

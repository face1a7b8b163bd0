//! herald-api (being written).

//! herald-projector (being written).

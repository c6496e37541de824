//! Protocol detection (being written).

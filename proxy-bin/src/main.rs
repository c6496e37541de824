//! The `needle` binary (provisional until the sidecar work lands).
fn main() {}

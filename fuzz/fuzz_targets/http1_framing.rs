//! The HTTP/1 request framing validator, fed the same stream whole, in
//! chunk sizes the input chooses, and byte by byte: the verdict (violation,
//! offset, requests seen, releasable offset, tunnel) must be the same every
//! time, the releasable offset must never move backwards nor pass what was
//! fed, and nothing may panic. The first 3 bytes of an input are control
//! bytes: whether upgrades are accepted, and chunk sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use needle_core::http1::{Config, Feed, Validator, Violation};

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    violation: Option<Violation>,
    heads: u64,
    releasable: u64,
    tunnel: bool,
}

fn run(bytes: &[u8], sizes: &[usize], upgrade: bool) -> Outcome {
    let config = Config { max_head_bytes: 2048, max_chunk_line_bytes: 64 };
    let mut v = Validator::new(config);
    let mut rest = bytes;
    let mut i = 0;
    let mut released = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        let mut chunk = &rest[..n];
        loop {
            let fed_before = v.offset();
            let feed = v.feed(chunk);
            assert!(v.releasable() >= released, "releasable moved backwards");
            released = v.releasable();
            assert!(released <= v.offset(), "released more than was fed");
            match feed {
                Feed::Accepted => {
                    assert_eq!(v.offset() - fed_before, chunk.len() as u64);
                    break;
                }
                Feed::Rejected { taken, .. } => {
                    assert!(taken <= chunk.len());
                    break;
                }
                Feed::AwaitingUpgrade { taken } => {
                    v.resolve_upgrade(upgrade);
                    chunk = &chunk[taken..];
                    if chunk.is_empty() {
                        break;
                    }
                }
            }
        }
        rest = &rest[n..];
        i += 1;
    }
    Outcome {
        violation: v.violation().copied(),
        heads: v.heads(),
        releasable: v.releasable(),
        tunnel: v.is_tunnel(),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (control, bytes) = data.split_at(3);
    let upgrade = control[0] & 1 == 1;
    let sizes: Vec<usize> = control[1..].iter().map(|&b| usize::from(b % 64) + 1).collect();
    let whole = run(bytes, &[usize::MAX], upgrade);
    assert_eq!(whole, run(bytes, &sizes, upgrade), "chunking changed the verdict");
    assert_eq!(whole, run(bytes, &[1], upgrade), "byte-by-byte changed the verdict");
});

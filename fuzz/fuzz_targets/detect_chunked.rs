//! The whole detector, fed the same bytes in three chunkings: at once, in
//! chunks whose sizes the input chooses, and byte by byte. All three must
//! agree on the answer, never pass the bound, and take only a prefix of the
//! input. (How many bytes are taken may differ: a chunk that arrives before
//! the decision is taken whole, so bigger reads buffer past the deciding
//! byte; the io layer replays whatever was taken.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use needle_core::detect::{Config, Detector, Protocol};
use needle_core::time::Instant;

/// Feeds `bytes` in chunks of the given sizes (cycled), then closes.
fn detect(config: Config, bytes: &[u8], sizes: &[usize]) -> Protocol {
    let mut d = Detector::new(config, Instant::ZERO);
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        let taken = d.handle_bytes(Instant::ZERO, &rest[..n]);
        assert!(taken <= n);
        rest = &rest[n..];
        i += 1;
    }
    d.handle_eof(Instant::ZERO);
    assert!(d.buffered().len() <= config.peek_limit, "peek bound broken");
    assert!(bytes.starts_with(d.buffered()), "buffered bytes are not the input's prefix");
    d.protocol().cloned().expect("decided after eof")
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (control, bytes) = data.split_at(4);
    let limit = 24 + usize::from(u16::from_le_bytes([control[0], control[1]]) % 4096);
    let config = Config { peek_limit: limit, ..Config::default() };
    let sizes: Vec<usize> = control[2..].iter().map(|&b| usize::from(b % 64) + 1).collect();

    let whole = detect(config, bytes, &[usize::MAX]);
    assert_eq!(whole, detect(config, bytes, &sizes), "chunking changed the answer");
    assert_eq!(whole, detect(config, bytes, &[1]), "byte-by-byte changed the answer");
});

//! The meshed transport header: never panics, a decoded header re-encodes
//! to the bytes it came from, and every prefix of the input is either
//! undecided or decided the same way as the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use needle_core::transport_header::{LEN, TransportHeader};

fuzz_target!(|data: &[u8]| {
    let whole = TransportHeader::decode(data);
    if let Ok(Some(header)) = whole {
        assert_eq!(&header.encode()[..], &data[..LEN]);
    }
    for end in 0..data.len().min(LEN + 1) {
        match TransportHeader::decode(&data[..end]) {
            Ok(None) => {}
            decided => assert_eq!(decided, whole, "prefix of {end} bytes"),
        }
    }
});

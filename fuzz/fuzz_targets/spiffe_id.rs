//! SPIFFE ID and SNI-name parsing: never panics, and whatever parses
//! round-trips: an ID prints back to the same text, and its SNI encoding (if
//! it has one) parses back to the same ID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use needle_core::identity::{SpiffeId, sni};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SpiffeId::parse(text) {
        assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id), "{text:?}");
        if let Ok(name) = sni::server_name(&id) {
            assert_eq!(sni::parse(&name), Some(Ok(id.clone())), "{name:?}");
            assert!(sni::is_local(&name, &id));
        }
    }
    // Any string may arrive as a ClientHello's server name.
    if let Some(Ok(id)) = sni::parse(text) {
        let name = sni::server_name(&id).expect("an ID parsed from an SNI name has one");
        assert!(name.eq_ignore_ascii_case(text.trim_end_matches('.')), "{text:?} -> {name:?}");
    }
});

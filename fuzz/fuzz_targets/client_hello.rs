//! The ClientHello body parser alone: never panics, and what it reports
//! keeps the promises its types make.
#![no_main]

use libfuzzer_sys::fuzz_target;
use needle_core::detect::ServerName;
use needle_core::detect::tls::parse_client_hello;

fuzz_target!(|data: &[u8]| {
    let Ok(hello) = parse_client_hello(data) else { return };
    assert!(hello.alpn.iter().all(|name| !name.is_empty()), "empty ALPN name accepted");
    assert!(!hello.versions.is_empty(), "no version reported");
    if let Some(ServerName::Dns(name)) = &hello.server_name {
        assert!(!name.is_empty() && !name.ends_with('.'), "unnormalised name {name:?}");
        assert!(name.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()), "{name:?}");
    }
});

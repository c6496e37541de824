//! The HTTP/1 request-line parser alone: never panics, a parsed line is a
//! prefix of the input that parses the same way on its own, and one byte
//! less of it is still undecided.
#![no_main]

use libfuzzer_sys::fuzz_target;
use needle_core::detect::http1::parse_request_line;

fuzz_target!(|data: &[u8]| {
    let Ok(Some(line)) = parse_request_line(data) else { return };
    assert!(line.len <= data.len());
    assert!(!line.method.is_empty() && !line.target.is_empty());
    assert!(data[..line.len].ends_with(b"\r\n"));
    assert_eq!(parse_request_line(&data[..line.len]), Ok(Some(line.clone())));
    assert_eq!(parse_request_line(&data[..line.len - 1]), Ok(None));
});

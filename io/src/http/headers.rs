//! What a request's head must satisfy before it is forwarded, and the
//! headers that belong to one hop and must not cross the proxy.
//!
//! Ambiguous HTTP/1 framing never gets this far: the framing guard
//! ([`framing`](super::framing), over `needle_core::http1`) refuses it before
//! hyper parses anything, and h2 refuses connection-specific fields. Since
//! Needle also re-frames every request it forwards, the endpoint cannot read
//! a message boundary differently from Needle. What is left here is Needle's
//! own request-target limit and header count/size limits, which also apply
//! to HTTP/2 requests.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request};
use needle_core::route::RequestHead;

use super::config::HttpConfig;
use super::errors::ProxyError;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Checks a request against the limits and framing rules.
pub(crate) fn check_request<B>(req: &Request<B>, config: &HttpConfig) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT && !config.allow_connect {
        return Err(ProxyError::ConnectNotAllowed);
    }
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > config.max_uri_len {
        return Err(ProxyError::UriTooLong);
    }
    let headers = req.headers();
    if headers.len() > config.max_headers {
        return Err(ProxyError::HeadersTooLarge);
    }
    // name: value\r\n, as HTTP/1 would carry it.
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if bytes > config.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

/// Whether the request asks to switch protocols on this connection
/// (WebSocket and friends), which only HTTP/1 can do.
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() <= http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, and those the `Connection` header names.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay: they are
/// the request to switch protocols the next hop must see.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these: one pass over their few names is
    // cheaper than hashing all eight names to remove them (a tenth of an
    // HTTP/1.1 request's instructions before this, bench/instructions.py).
    // Headers `Connection` names only count when it is there, and it is one
    // of the eight.
    if !keep_upgrade
        && !headers
            .keys()
            .any(|name| name == header::TE || HOP_BY_HOP.contains(name))
    {
        return;
    }
    strip_all(headers, keep_upgrade);
}

/// The whole pass, whatever the headers: [`strip_hop_by_hop`] without its
/// shortcut (and its reference in the tests).
fn strip_all(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        if keep_upgrade && (name == header::UPGRADE || name == header::CONNECTION) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
    }
    // `TE` is hop-by-hop, but `TE: trailers` is how gRPC says it understands
    // trailers, and it means the same on the next hop.
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
}

/// Whether the request is a gRPC call (it then gets gRPC-shaped errors).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The gRPC status of a trailers-only response, if this is one.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A request as route matching sees it.
#[derive(Debug)]
pub(crate) struct Head<'a, B>(pub(crate) &'a Request<B>);

impl<B> RequestHead for Head<'_, B> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }

    fn path(&self) -> &str {
        self.0.uri().path_and_query().map_or("/", |pq| pq.as_str())
    }

    fn has_header(&self, name: &str, value: &str) -> bool {
        self.0
            .headers()
            .get_all(name)
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes())
    }
}

/// The header that carries an HTTP/1 request's original version across the
/// HTTP/2 connection between two meshed proxies. The client proxy sets it;
/// the server proxy removes it (always, so no client can smuggle it
/// through) and, when it came over mTLS, sends the request to the
/// application in HTTP/1.1 again.
pub(crate) const ORIG_PROTO: &str = "needle-orig-proto";

/// Marks `req` as an HTTP/1 request travelling as HTTP/2, and gives it the
/// absolute URI HTTP/2 needs (`:scheme` and `:authority`, from `Host`, or
/// `fallback` for an HTTP/1.0 request without one).
pub(crate) fn upgrade_to_h2<B>(req: &mut Request<B>, fallback: SocketAddr) {
    req.headers_mut()
        .insert(ORIG_PROTO, header::HeaderValue::from_static("HTTP/1.1"));
    if req.uri().authority().is_some() {
        return;
    }
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| {
            http::uri::Authority::try_from(fallback.to_string().as_str())
                .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"))
        });
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// The header that tells the application which meshed workload called it
/// (the peer's verified SPIFFE ID), set by the inbound proxy on requests
/// that arrived over mTLS and removed from every other request, so no
/// client can claim an identity it did not prove.
pub(crate) const CLIENT_ID: &str = "needle-client-id";

/// Removes [`ORIG_PROTO`]; true if the request said it was HTTP/1.
pub(crate) fn take_orig_proto(headers: &mut HeaderMap) -> bool {
    headers.remove(ORIG_PROTO).is_some()
}

/// Prepares a request for an HTTP/1 connection: the origin-form target
/// (`/path?query`) servers expect, and a `Host` header from the URI's
/// authority if it had none (a request that arrived as HTTP/2 carries its
/// authority in the URI only).
pub(crate) fn to_h1_target<B>(req: &mut Request<B>) {
    let Some(authority) = req.uri().authority().cloned() else {
        return;
    };
    if !req.headers().contains_key(header::HOST) {
        if let Ok(host) = header::HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    if req.method() == http::Method::CONNECT {
        return;
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = http::Uri::from(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use quickcheck::quickcheck;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_go() {
        let mut m = map(&[
            ("connection", "x-trace, keep-alive"),
            ("x-trace", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("host", "a"),
            ("x-kept", "2"),
        ]);
        strip_hop_by_hop(&mut m, false);
        let left: Vec<_> = m.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn te_trailers_stays_and_upgrades_keep_their_headers() {
        let mut m = map(&[("te", "trailers"), ("host", "a")]);
        strip_hop_by_hop(&mut m, false);
        assert_eq!(m.get("te").unwrap(), "trailers");
        let mut m = map(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut m, true);
        assert_eq!(m.get("upgrade").unwrap(), "websocket");
        assert_eq!(m.get("connection").unwrap(), "upgrade");
    }

    const NAMES: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "x-a",
        "x-b",
        "host",
        "content-length",
    ];
    const VALUES: [&str; 5] = ["x-a", "trailers", "x-b, keep-alive", "1", "upgrade"];

    quickcheck! {
        /// The shortcut never changes the answer.
        fn the_shortcut_agrees_with_the_whole_pass(
            picks: Vec<(u8, u8)>,
            keep_upgrade: bool
        ) -> bool {
            let pairs: Vec<(&str, &str)> = picks
                .iter()
                .map(|&(n, v)| {
                    (
                        NAMES[n as usize % NAMES.len()],
                        VALUES[v as usize % VALUES.len()],
                    )
                })
                .collect();
            let (mut fast, mut whole) = (map(&pairs), map(&pairs));
            strip_hop_by_hop(&mut fast, keep_upgrade);
            strip_all(&mut whole, keep_upgrade);
            fast == whole
        }
    }
}

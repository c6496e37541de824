//! Protocol upgrades (`Upgrade: websocket`, and `CONNECT` when allowed):
//! forward the request once, and if the endpoint agrees to switch, splice
//! the two connections together and copy bytes both ways.
//!
//! An upgrade is never retried (the request is a handshake whose effect is
//! the connection itself) and its upstream connection never returns to the
//! pool: it becomes the tunnel. The request deadline bounds the handshake
//! only; the tunnel lasts as long as both sides keep it.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use needle_core::balance::Completion;
use needle_core::retry::Timeouts;
use tracing::debug;

use super::body::{ProxyBody, boxed};
use super::destination::Destination;
use super::errors::ProxyError;
use super::headers;
use super::{HttpVersion, ProxyShared};
use crate::metrics::Observed;
use crate::net::Network;

/// Forwards an upgrade request and, on `101` (or a `2xx` to `CONNECT`),
/// starts the byte copy between client and endpoint.
pub(crate) async fn forward<N: Network>(
    proxy: &ProxyShared,
    destination: &Arc<Destination<N>>,
    backend: &str,
    timeouts: Timeouts,
    mut req: Request<Incoming>,
    observed: &mut Observed,
) -> Response<ProxyBody> {
    let grpc = headers::is_grpc(req.headers());
    let connect = req.method() == Method::CONNECT;
    let client_side = hyper::upgrade::on(&mut req);
    let inflight = match destination.pick(backend, proxy.now()) {
        Ok(f) => f,
        Err(e) => return e.response(grpc),
    };
    let client = inflight.client.clone();
    observed.endpoint = Some(client.peer().clone());
    let send = client.send(HttpVersion::Http1, req.map(boxed), false);
    let sent = match timeouts.request {
        Some(d) => match tokio::time::timeout(d, send).await {
            Ok(r) => r,
            Err(_) => {
                inflight.complete(proxy.now(), Completion::Cancelled);
                return ProxyError::Timeout.response(grpc);
            }
        },
        None => send.await,
    };
    let mut res = match sent {
        Ok(res) => res,
        Err(e) => {
            inflight.complete(proxy.now(), Completion::Failure);
            debug!(error = %e, "upgrade request failed");
            return if e.unprocessed() {
                ProxyError::ConnectFailed.response(grpc)
            } else {
                ProxyError::Upstream.response(grpc)
            };
        }
    };
    let completion = if res.status().is_server_error() {
        Completion::Failure
    } else {
        Completion::Success
    };
    inflight.complete(proxy.now(), completion);
    let switched =
        res.status() == StatusCode::SWITCHING_PROTOCOLS || (connect && res.status().is_success());
    if !switched {
        headers::strip_hop_by_hop(res.headers_mut(), false);
        return res;
    }
    let endpoint_side = hyper::upgrade::on(&mut res);
    tokio::spawn(async move {
        let (client_io, endpoint_io) = match (client_side.await, endpoint_side.await) {
            (Ok(c), Ok(e)) => (c, e),
            (c, e) => {
                debug!(client = ?c.err(), endpoint = ?e.err(), "upgrade did not complete");
                return;
            }
        };
        let mut client_io = TokioIo::new(client_io);
        let mut endpoint_io = TokioIo::new(endpoint_io);
        match tokio::io::copy_bidirectional(&mut client_io, &mut endpoint_io).await {
            Ok((up, down)) => debug!(up, down, "upgraded connection closed"),
            Err(e) => debug!(error = %e, "upgraded connection failed"),
        }
    });
    res
}

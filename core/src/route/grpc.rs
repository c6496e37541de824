//! GRPCRoute matches: service, method and headers.

use super::http::HeaderMatch;
use super::{Precedence, RequestHead, RouteMatch};

/// One `GRPCRouteMatch` with an exact method match: the request path
/// `/<service>/<method>` must name this service and/or method, and carry
/// these headers. With neither service nor method, every call matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcMatch {
    service: Option<String>,
    method: Option<String>,
    headers: Vec<HeaderMatch>,
}

impl GrpcMatch {
    /// Matches calls to `service` (fully qualified, e.g. `pkg.Greeter`) and,
    /// if given, `method`.
    pub fn new(service: Option<&str>, method: Option<&str>) -> Self {
        GrpcMatch {
            service: service.map(str::to_owned),
            method: method.map(str::to_owned),
            headers: Vec::new(),
        }
    }

    /// Also requires this header (first entry per name counts).
    pub fn with_header(mut self, header: HeaderMatch) -> Self {
        if !self.headers.iter().any(|h| h.name == header.name) {
            self.headers.push(header);
        }
        self
    }
}

/// Splits a gRPC path `/<service>/<method>`.
fn service_and_method(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.rsplit_once('/')?;
    (!service.is_empty() && !method.is_empty()).then_some((service, method))
}

impl RouteMatch for GrpcMatch {
    fn matches<R: RequestHead + ?Sized>(&self, request: &R) -> bool {
        let method_ok = match (&self.service, &self.method) {
            (None, None) => true,
            (s, m) => service_and_method(request.path()).is_some_and(|(rs, rm)| {
                s.as_deref().is_none_or(|s| s == rs) && m.as_deref().is_none_or(|m| m == rm)
            }),
        };
        method_ok
            && self
                .headers
                .iter()
                .all(|h| request.has_header(&h.name, &h.value))
    }

    /// Most characters of service, then of method, then most headers.
    fn precedence(&self) -> Precedence {
        Precedence([
            self.service.as_ref().map_or(0, String::len),
            self.method.as_ref().map_or(0, String::len),
            self.headers.len(),
            0,
        ])
    }
}

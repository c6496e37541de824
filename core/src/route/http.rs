//! HTTPRoute matches: path, method and headers, with Gateway API semantics.

use super::{Precedence, RequestHead, RouteMatch};

/// How a match constrains the request path (query string excluded).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathMatch {
    /// The path equals this, case-sensitively.
    Exact(String),
    /// The path starts with these segments: `/abc` matches `/abc`, `/abc/`
    /// and `/abc/def` but not `/abcd`. A trailing `/` in the prefix is
    /// ignored, as the Gateway API specifies.
    Prefix(String),
}

impl PathMatch {
    /// A prefix match, normalised (trailing `/` dropped, except for `/`).
    pub fn prefix(prefix: &str) -> Self {
        let trimmed = prefix.trim_end_matches('/');
        PathMatch::Prefix(if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        })
    }

    /// An exact match.
    pub fn exact(path: &str) -> Self {
        PathMatch::Exact(path.to_owned())
    }

    /// Whether `path` (without its query) satisfies this match.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                match path.strip_prefix(p) {
                    // `p` is now empty only for the root prefix.
                    Some(rest) => p.is_empty() || rest.is_empty() || rest.starts_with('/'),
                    None => false,
                }
            }
        }
    }
}

/// A header that must be present with exactly this value. Names compare
/// case-insensitively (they are HTTP field names), values case-sensitively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Field name, stored lowercase.
    pub name: String,
    /// Exact value.
    pub value: String,
}

impl HeaderMatch {
    /// A header match; the name is lowercased.
    pub fn exact(name: &str, value: &str) -> Self {
        HeaderMatch {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        }
    }
}

/// One `HTTPRouteMatch`: every condition given must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpMatch {
    path: PathMatch,
    method: Option<String>,
    headers: Vec<HeaderMatch>,
}

impl Default for HttpMatch {
    /// Gateway API's default match: path prefix `/`, i.e. everything.
    fn default() -> Self {
        HttpMatch {
            path: PathMatch::prefix("/"),
            method: None,
            headers: Vec::new(),
        }
    }
}

impl HttpMatch {
    /// A match on the path only.
    pub fn path(path: PathMatch) -> Self {
        HttpMatch {
            path,
            ..HttpMatch::default()
        }
    }

    /// Also requires this method (case-sensitive).
    pub fn with_method(mut self, method: &str) -> Self {
        self.method = Some(method.to_owned());
        self
    }

    /// Also requires this header. As the Gateway API specifies, when two
    /// header matches name the same header only the first counts.
    pub fn with_header(mut self, header: HeaderMatch) -> Self {
        if !self.headers.iter().any(|h| h.name == header.name) {
            self.headers.push(header);
        }
        self
    }
}

impl RouteMatch for HttpMatch {
    fn matches<R: RequestHead + ?Sized>(&self, request: &R) -> bool {
        let path = request.path();
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        self.path.matches(path)
            && self.method.as_deref().is_none_or(|m| m == request.method())
            && self
                .headers
                .iter()
                .all(|h| request.has_header(&h.name, &h.value))
    }

    /// Exact path, then longest prefix, then method, then most headers.
    fn precedence(&self) -> Precedence {
        let (exact, path_len) = match &self.path {
            PathMatch::Exact(p) => (1, p.len()),
            PathMatch::Prefix(p) => (0, p.len()),
        };
        Precedence([
            exact,
            path_len,
            usize::from(self.method.is_some()),
            self.headers.len(),
        ])
    }
}

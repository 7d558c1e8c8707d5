//! HTTP requests as the evaluator sees them, and Calico's `HTTPMatch`.

pub mod target;

pub use target::{normalize_path, parse_target, RequestTarget, TargetError};

use crate::policy::{HttpMatch, PathMatch};

/// One HTTP request: its method and its request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The canonical path ([`parse_target`]); a query or fragment left in is ignored.
    pub path: &'a str,
}

impl HttpRequest<'_> {
    /// Methods OR'ed, paths OR'ed, the two AND'ed; an absent list matches all
    /// (Calico HTTPMatch; app-policy/checker/match.go).
    pub fn matches(&self, m: &HttpMatch) -> bool {
        // "Methods are case-sensitive"; `*` matches any method.
        let method_ok =
            m.methods.is_empty() || m.methods.iter().any(|x| x == "*" || x == self.method);
        let path = match_path(self.path);
        // Exact: "not including the query string or fragments"; prefix: "any path that
        // begins with the given prefix". Both case-sensitive.
        let path_ok = m.paths.is_empty()
            || m.paths.iter().any(|p| match p {
                PathMatch::Exact(e) => path == e,
                PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            });
        method_ok && path_ok
    }
}

/// The part of a request target that paths are matched against: no query, no fragment.
pub fn match_path(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    target.get(..end).unwrap_or(target)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

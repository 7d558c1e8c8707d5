//! SPIFFE IDs of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing follows the SPIFFE ID specification (spiffe/standards SPIFFE-ID.md):
//! scheme `spiffe`, a trust domain of lowercase letters, digits, `.`, `-` and `_` with
//! no port or userinfo, a path of segments of letters, digits, `.`, `-`, `_` that are
//! never empty, `.` or `..`, no trailing slash, no percent-encoding, no query or
//! fragment, and at most 2048 bytes in all. Palisade's workload IDs then have exactly
//! the path `/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

const MAX_LENGTH: usize = 2048;

/// Why a string is not a workload SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is longer than 2048 bytes")]
    TooLong,
    #[error("SPIFFE ID must start with spiffe://")]
    WrongScheme,
    #[error("SPIFFE ID has an empty trust domain")]
    EmptyTrustDomain,
    #[error("trust domain {0:?} may only hold lowercase letters, digits, '.', '-' and '_' (no port, no userinfo)")]
    BadTrustDomain(String),
    #[error("SPIFFE ID path segment {0:?} is empty, '.' or '..', or holds a character other than letters, digits, '.', '-', '_'")]
    BadSegment(String),
    #[error("SPIFFE ID must not end with '/'")]
    TrailingSlash,
    #[error("SPIFFE ID must not carry a query or fragment")]
    QueryOrFragment,
    #[error(
        "workload SPIFFE ID must have the path /ns/<namespace>/sa/<service-account>, not {0:?}"
    )]
    NotAWorkload(String),
}

/// A workload identity: trust domain, namespace and service account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds and validates an ID from its parts.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The URI, as it stands in a certificate's URI SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

fn valid_trust_domain(td: &str) -> bool {
    td.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
}

fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        if s.len() > MAX_LENGTH {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or(SpiffeIdError::WrongScheme)?;
        if rest.contains(['?', '#']) {
            return Err(SpiffeIdError::QueryOrFragment);
        }
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                rest.get(i..).unwrap_or_default(),
            ),
            None => (rest, ""),
        };
        if trust_domain.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if !valid_trust_domain(trust_domain) {
            return Err(SpiffeIdError::BadTrustDomain(trust_domain.to_owned()));
        }
        if path.ends_with('/') {
            return Err(SpiffeIdError::TrailingSlash);
        }
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        if let Some(bad) = segments.iter().find(|s| !valid_segment(s)) {
            return Err(SpiffeIdError::BadSegment((*bad).to_owned()));
        }
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => Ok(SpiffeId {
                trust_domain: trust_domain.to_owned(),
                namespace: (*namespace).to_owned(),
                service_account: (*service_account).to_owned(),
            }),
            _ => Err(SpiffeIdError::NotAWorkload(path.to_owned())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_workload_id() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        assert_eq!(
            (id.trust_domain(), id.namespace(), id.service_account()),
            ("cluster.local", "shop", "web")
        );
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(
            SpiffeId::new("example.org", "a", "b").unwrap().uri(),
            "spiffe://example.org/ns/a/sa/b"
        );
    }

    #[test]
    fn rejects_what_the_spec_forbids() {
        use SpiffeIdError::*;
        let long = format!("spiffe://td/ns/{}/sa/x", "a".repeat(2048));
        for (text, want) in [
            ("http://cluster.local/ns/a/sa/b", WrongScheme),
            ("SPIFFE://cluster.local/ns/a/sa/b", WrongScheme),
            ("spiffe:///ns/a/sa/b", EmptyTrustDomain),
            (
                "spiffe://Cluster.local/ns/a/sa/b",
                BadTrustDomain("Cluster.local".into()),
            ),
            (
                "spiffe://cluster.local:8443/ns/a/sa/b",
                BadTrustDomain("cluster.local:8443".into()),
            ),
            (
                "spiffe://user@cluster.local/ns/a/sa/b",
                BadTrustDomain("user@cluster.local".into()),
            ),
            (
                "spiffe://cluster%2elocal/ns/a/sa/b",
                BadTrustDomain("cluster%2elocal".into()),
            ),
            ("spiffe://cluster.local/ns/a/sa/b/", TrailingSlash),
            ("spiffe://cluster.local/ns//sa/b", BadSegment(String::new())),
            ("spiffe://cluster.local/ns/./sa/b", BadSegment(".".into())),
            ("spiffe://cluster.local/ns/../sa/b", BadSegment("..".into())),
            (
                "spiffe://cluster.local/ns/a%20b/sa/b",
                BadSegment("a%20b".into()),
            ),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", QueryOrFragment),
            ("spiffe://cluster.local/ns/a/sa/b#f", QueryOrFragment),
            ("spiffe://cluster.local", NotAWorkload(String::new())),
            ("spiffe://cluster.local/ns/a", NotAWorkload("/ns/a".into())),
            (
                "spiffe://cluster.local/ns/a/sa/b/extra",
                NotAWorkload("/ns/a/sa/b/extra".into()),
            ),
            (
                "spiffe://cluster.local/namespace/a/sa/b",
                NotAWorkload("/namespace/a/sa/b".into()),
            ),
            (long.as_str(), TooLong),
        ] {
            assert_eq!(text.parse::<SpiffeId>(), Err(want), "{text}");
        }
    }
}

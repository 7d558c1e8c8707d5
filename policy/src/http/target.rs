//! Request targets as Palisade authorizes them: one canonical path per resource, so
//! that no spelling of a path reaches the app unless that spelling's canonical form
//! was allowed, and the app receives exactly the canonical form.
//!
//! Canonical form (RFC 3986 section 6.2.2, plus what path-based bypasses taught Envoy
//! and Istio):
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!   (`%41` is `A`, `%2e` is `.`), other escapes get upper-case hex (`%c3` is `%C3`),
//!   raw non-ASCII bytes are percent-encoded;
//! - `.` and `..` segments are removed (RFC 3986 section 5.2.4), after decoding, so
//!   `/%2e%2e/admin` is `/admin`; `..` never climbs above `/`;
//! - runs of `/` become one `/`;
//! - the fragment is dropped; the query is kept for the app but never matched.
//!
//! Refused (the proxy answers 400): `%2F` and `%5C` (an encoded separator the app
//! may or may not decode), a raw `\`, NUL and other control characters raw or
//! encoded, invalid escapes, bytes that do not decode to UTF-8, and targets that are
//! not a path (authority-form, relative paths).

use std::fmt;

/// A request target split for authorization and forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTarget {
    /// The canonical path: what policy matches and what the app receives.
    pub path: String,
    /// The query as sent, without its `?`; forwarded, never matched.
    pub query: Option<String>,
}

impl RequestTarget {
    /// Path and query as the app receives them.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Why a request target is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetError {
    EncodedSlash,
    EncodedBackslash,
    Backslash,
    ControlCharacter,
    InvalidEscape,
    InvalidUtf8,
    /// Not origin-form (`/path`), absolute-form (`http://host/path`) or `*`.
    NotAPath,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::EncodedSlash => "encoded slash (%2F) in the path",
            TargetError::EncodedBackslash => "encoded backslash (%5C) in the path",
            TargetError::Backslash => "backslash in the path",
            TargetError::ControlCharacter => "control character in the path",
            TargetError::InvalidEscape => "invalid percent-escape in the path",
            TargetError::InvalidUtf8 => "the path does not decode to UTF-8",
            TargetError::NotAPath => "the request target is not a path",
        })
    }
}

impl std::error::Error for TargetError {}

/// Parses a request target (origin-form, absolute-form or `*`) into its canonical
/// path and its query.
pub fn parse_target(target: &str) -> Result<RequestTarget, TargetError> {
    if target == "*" {
        // OPTIONS * (RFC 9112 section 3.2.4): matched as the path "*".
        return Ok(RequestTarget {
            path: "*".into(),
            query: None,
        });
    }
    let without_fragment = target.split_once('#').map_or(target, |(t, _)| t);
    let (path, query) = match without_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (without_fragment, None),
    };
    let path = if path.starts_with('/') {
        path
    } else if let Some(rest) = strip_scheme(path) {
        // absolute-form: the path starts at the first `/` after the authority.
        rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("/")
    } else {
        return Err(TargetError::NotAPath);
    };
    Ok(RequestTarget {
        path: normalize_path(path)?,
        query,
    })
}

fn strip_scheme(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    let is_http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    is_http.then_some(rest)
}

/// The canonical form of an absolute path (no query, no fragment). Idempotent:
/// `normalize_path(normalize_path(p)) == normalize_path(p)`.
pub fn normalize_path(path: &str) -> Result<String, TargetError> {
    let decoded = decode_unreserved(path.as_bytes())?;
    let merged = merge_slashes(&decoded);
    Ok(remove_dot_segments(&merged))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut String, b: u8) {
    use std::fmt::Write;
    let _ = write!(out, "%{b:02X}");
}

/// Decodes escapes of unreserved characters, upper-cases the others, encodes raw
/// non-ASCII; checks that the fully decoded bytes are UTF-8 without controls.
fn decode_unreserved(input: &[u8]) -> Result<String, TargetError> {
    let mut out = String::with_capacity(input.len());
    let mut fully_decoded = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        let byte = if b == b'%' {
            let (Some(hi), Some(lo)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(TargetError::InvalidEscape);
            };
            i += 3;
            let d = hi << 4 | lo;
            match d {
                b'/' => return Err(TargetError::EncodedSlash),
                b'\\' => return Err(TargetError::EncodedBackslash),
                _ if is_unreserved(d) => out.push(char::from(d)),
                _ => push_escaped(&mut out, d),
            }
            d
        } else {
            i += 1;
            match b {
                b'\\' => return Err(TargetError::Backslash),
                0x80..=0xff => push_escaped(&mut out, b),
                _ => out.push(char::from(b)),
            }
            b
        };
        if byte.is_ascii_control() {
            return Err(TargetError::ControlCharacter);
        }
        fully_decoded.push(byte);
    }
    if std::str::from_utf8(&fully_decoded).is_err() {
        return Err(TargetError::InvalidUtf8);
    }
    Ok(out)
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// RFC 3986 section 5.2.4 on an absolute path with single slashes, by segments: a
/// `.` segment is dropped, `..` drops the segment before it (never the root), and a
/// path that ends in `.` or `..` keeps its trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    // `path` starts with `/`: the first item of the split is the empty root.
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

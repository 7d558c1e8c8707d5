//! The Calico selector language: `app == 'web' && !has(legacy) || tier in {"a", "b"}`.
//!
//! Grammar, precedence and the meaning of every operator on a missing label follow
//! Calico's `libcalico-go/lib/selector` (tokenizer, parser, ast). Kubernetes label
//! selectors (`matchLabels`, `matchExpressions`) are converted into the same AST, so one
//! evaluator serves both policy languages.

mod parse;
#[cfg(test)]
mod tests;

use std::fmt;

pub use parse::SelectorError;

/// Something that answers "what is the value of label `key`?".
///
/// Pods answer for their own labels and Calico's pseudo labels; see
/// [`crate::model::EndpointLabels`].
pub trait LabelLookup {
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for std::collections::BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A parsed selector expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    /// `all()`: every endpoint (and the empty selector).
    All,
    /// `global()`: non-namespaced endpoints only. Pods are namespaced, so it matches no pod.
    Global,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Selector>),
    And(Vec<Selector>),
    Or(Vec<Selector>),
}

impl Selector {
    /// Parses a selector. The empty (or all-blank) string is `all()`, as in Calico.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        parse::parse(text)
    }

    /// Does this selector match an endpoint with these labels?
    ///
    /// A missing label makes `==`, `in`, `contains`, `starts with`, `ends with` and
    /// `has` false, and `!=`, `not in` true (Calico ast.go).
    pub fn matches(&self, labels: &impl LabelLookup) -> bool {
        match self {
            Selector::All => true,
            Selector::Global => false,
            Selector::Has(k) => labels.label(k).is_some(),
            Selector::Eq(k, v) => labels.label(k) == Some(v.as_str()),
            Selector::Ne(k, v) => labels.label(k) != Some(v.as_str()),
            Selector::In(k, vs) => labels.label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Selector::NotIn(k, vs) => !labels.label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Selector::Contains(k, v) => labels.label(k).is_some_and(|l| l.contains(v.as_str())),
            Selector::StartsWith(k, v) => {
                labels.label(k).is_some_and(|l| l.starts_with(v.as_str()))
            }
            Selector::EndsWith(k, v) => labels.label(k).is_some_and(|l| l.ends_with(v.as_str())),
            Selector::Not(s) => !s.matches(labels),
            Selector::And(ss) => ss.iter().all(|s| s.matches(labels)),
            Selector::Or(ss) => ss.iter().any(|s| s.matches(labels)),
        }
    }

    /// The same selector with every label key prefixed, e.g. `pcns.` to evaluate a
    /// `namespaceSelector` against the namespace labels a pod inherits.
    pub fn prefixed(&self, prefix: &str) -> Selector {
        let p = |k: &String| format!("{prefix}{k}");
        match self {
            Selector::All => Selector::All,
            Selector::Global => Selector::Global,
            Selector::Has(k) => Selector::Has(p(k)),
            Selector::Eq(k, v) => Selector::Eq(p(k), v.clone()),
            Selector::Ne(k, v) => Selector::Ne(p(k), v.clone()),
            Selector::In(k, vs) => Selector::In(p(k), vs.clone()),
            Selector::NotIn(k, vs) => Selector::NotIn(p(k), vs.clone()),
            Selector::Contains(k, v) => Selector::Contains(p(k), v.clone()),
            Selector::StartsWith(k, v) => Selector::StartsWith(p(k), v.clone()),
            Selector::EndsWith(k, v) => Selector::EndsWith(p(k), v.clone()),
            Selector::Not(s) => Selector::Not(Box::new(s.prefixed(prefix))),
            Selector::And(ss) => Selector::And(ss.iter().map(|s| s.prefixed(prefix)).collect()),
            Selector::Or(ss) => Selector::Or(ss.iter().map(|s| s.prefixed(prefix)).collect()),
        }
    }

    /// `a && b`, flattening nested conjunctions and dropping `all()`.
    pub fn and(parts: impl IntoIterator<Item = Selector>) -> Selector {
        let mut out = Vec::new();
        for part in parts {
            match part {
                Selector::All => {}
                Selector::And(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        match out.len() {
            0 => Selector::All,
            1 => out.pop().unwrap_or(Selector::All),
            _ => Selector::And(out),
        }
    }

    /// The value this selector requires for `key` through a top-level `key == v`
    /// conjunct, if any. Used to index peer groups by namespace.
    pub fn required_value(&self, key: &str) -> Option<&str> {
        match self {
            Selector::Eq(k, v) if k == key => Some(v),
            Selector::And(ss) => ss.iter().find_map(|s| s.required_value(key)),
            _ => None,
        }
    }
}

fn write_str(f: &mut fmt::Formatter<'_>, v: &str) -> fmt::Result {
    // No escapes exist in the language: pick the quote the value does not contain.
    if v.contains('\'') {
        write!(f, "\"{v}\"")
    } else {
        write!(f, "'{v}'")
    }
}

fn write_set(f: &mut fmt::Formatter<'_>, vs: &[String]) -> fmt::Result {
    f.write_str("{")?;
    for (i, v) in vs.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write_str(f, v)?;
    }
    f.write_str("}")
}

/// Renders the canonical text, which parses back to an equal selector.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("all()"),
            Selector::Global => f.write_str("global()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => {
                write!(f, "{k} == ")?;
                write_str(f, v)
            }
            Selector::Ne(k, v) => {
                write!(f, "{k} != ")?;
                write_str(f, v)
            }
            Selector::In(k, vs) => {
                write!(f, "{k} in ")?;
                write_set(f, vs)
            }
            Selector::NotIn(k, vs) => {
                write!(f, "{k} not in ")?;
                write_set(f, vs)
            }
            Selector::Contains(k, v) => {
                write!(f, "{k} contains ")?;
                write_str(f, v)
            }
            Selector::StartsWith(k, v) => {
                write!(f, "{k} starts with ")?;
                write_str(f, v)
            }
            Selector::EndsWith(k, v) => {
                write!(f, "{k} ends with ")?;
                write_str(f, v)
            }
            Selector::Not(s) => match **s {
                Selector::And(_) | Selector::Or(_) => write!(f, "!({s})"),
                _ => write!(f, "!{s}"),
            },
            Selector::And(ss) => write_joined(f, ss, " && ", |s| matches!(s, Selector::Or(_))),
            Selector::Or(ss) => write_joined(f, ss, " || ", |_| false),
        }
    }
}

fn write_joined(
    f: &mut fmt::Formatter<'_>,
    parts: &[Selector],
    sep: &str,
    needs_parens: impl Fn(&Selector) -> bool,
) -> fmt::Result {
    for (i, s) in parts.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        if needs_parens(s) {
            write!(f, "({s})")?;
        } else {
            write!(f, "{s}")?;
        }
    }
    Ok(())
}

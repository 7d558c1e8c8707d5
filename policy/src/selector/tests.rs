//! Every operator and corner of the selector language (Calico parser_test.go cases).

use std::collections::BTreeMap;

use super::Selector;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn eval(selector: &str, pairs: &[(&str, &str)]) -> bool {
    match Selector::parse(selector) {
        Ok(s) => s.matches(&labels(pairs)),
        Err(e) => panic!("{selector:?} should parse: {e}"),
    }
}

#[test]
fn empty_and_all_match_everything() {
    assert!(eval("", &[]));
    assert!(eval("   ", &[("a", "b")]));
    assert!(eval("all()", &[]));
    assert!(eval("all( )", &[]));
}

#[test]
fn global_matches_no_pod() {
    assert!(!eval("global()", &[]));
    assert!(!eval("global()", &[("a", "b")]));
}

#[test]
fn equality_and_inequality() {
    assert!(eval("a == 'x'", &[("a", "x")]));
    assert!(eval("a == \"x\"", &[("a", "x")]));
    assert!(
        !eval("a == 'x'", &[("a", "X")]),
        "comparisons are case-sensitive"
    );
    assert!(!eval("a == 'x'", &[]), "== on a missing label is false");
    assert!(eval("a != 'x'", &[]), "!= on a missing label is true");
    assert!(eval("a != 'x'", &[("a", "y")]));
    assert!(!eval("a != 'x'", &[("a", "x")]));
    assert!(eval("a == ''", &[("a", "")]));
    assert!(!eval("a == ''", &[]));
}

#[test]
fn set_membership() {
    assert!(eval("a in {'x', 'y'}", &[("a", "y")]));
    assert!(!eval("a in {'x', 'y'}", &[("a", "z")]));
    assert!(!eval("a in {'x'}", &[]), "in on a missing label is false");
    assert!(!eval("a in {}", &[("a", "x")]));
    assert!(
        eval("a not in {'x'}", &[]),
        "not in on a missing label is true"
    );
    assert!(eval("a not in {'x'}", &[("a", "y")]));
    assert!(!eval("a not in {'x', 'y'}", &[("a", "y")]));
    assert!(eval("a notin {'x'}", &[("a", "y")]));
    assert!(eval("a not in {}", &[("a", "y")]));
    assert!(eval("a in {\"it's\"}", &[("a", "it's")]));
}

#[test]
fn string_operators() {
    assert!(eval("a contains 'ell'", &[("a", "hello")]));
    assert!(!eval("a contains 'ELL'", &[("a", "hello")]));
    assert!(
        !eval("a contains ''", &[]),
        "contains on a missing label is false"
    );
    assert!(eval("a contains ''", &[("a", "x")]));
    assert!(eval("a starts with 'he'", &[("a", "hello")]));
    assert!(eval("a startswith 'he'", &[("a", "hello")]));
    assert!(!eval("a starts with 'lo'", &[("a", "hello")]));
    assert!(!eval("a starts with 'h'", &[]));
    assert!(eval("a ends with 'lo'", &[("a", "hello")]));
    assert!(eval("a endswith 'lo'", &[("a", "hello")]));
    assert!(!eval("a ends with 'he'", &[("a", "hello")]));
    assert!(!eval("a ends with 'o'", &[]));
}

#[test]
fn has_and_negated_has() {
    assert!(eval("has(a)", &[("a", "")]));
    assert!(!eval("has(a)", &[("b", "x")]));
    assert!(eval("!has(a)", &[]));
    assert!(!eval("!has(a)", &[("a", "x")]));
    assert!(eval("has( a )", &[("a", "x")]));
    assert!(eval(
        "has(projectcalico.org/name)",
        &[("projectcalico.org/name", "x")]
    ));
}

#[test]
fn not_binds_to_one_term() {
    // `!a == 'x' && has(b)` is `(!(a == 'x')) && has(b)` (Calico docs, precedence).
    assert!(eval("!a == 'x' && has(b)", &[("a", "y"), ("b", "1")]));
    assert!(!eval("!a == 'x' && has(b)", &[("a", "x"), ("b", "1")]));
    assert!(!eval("!a == 'x' && has(b)", &[("a", "y")]));
    assert!(eval("!!has(a)", &[("a", "x")]));
    assert!(eval("!(a == 'x' || b == 'y')", &[("a", "z")]));
    assert!(!eval("!(a == 'x' || b == 'y')", &[("b", "y")]));
}

#[test]
fn and_binds_tighter_than_or() {
    // a || b && c  ==  a || (b && c)
    assert!(eval("a == '1' || b == '1' && c == '1'", &[("a", "1")]));
    assert!(!eval("a == '1' || b == '1' && c == '1'", &[("b", "1")]));
    assert!(eval(
        "(a == '1' || b == '1') && c == '1'",
        &[("b", "1"), ("c", "1")]
    ));
    assert!(!eval("(a == '1' || b == '1') && c == '1'", &[("a", "1")]));
}

#[test]
fn keywords_are_usable_as_label_names() {
    assert!(eval("in == 'x'", &[("in", "x")]));
    assert!(eval("has == 'x'", &[("has", "x")]));
    assert!(eval("all == 'x' && has(not)", &[("all", "x"), ("not", "")]));
    assert!(eval("internal in {'a'}", &[("internal", "a")]));
}

#[test]
fn label_names_with_prefixes_and_punctuation() {
    assert!(eval(
        "projectcalico.org/namespace == 'x'",
        &[("projectcalico.org/namespace", "x")]
    ));
    assert!(eval("a_b-c.d/e == 'v'", &[("a_b-c.d/e", "v")]));
}

#[test]
fn whitespace_is_free() {
    assert!(eval("a=='x'&&b!='y'", &[("a", "x")]));
    assert!(eval("\ta\n==\n'x'  ", &[("a", "x")]));
}

#[test]
fn invalid_selectors_are_errors_with_offsets() {
    for (text, offset) in [
        ("a ==", 4),
        ("a == x", 5),
        ("a = 'x'", 2),
        ("a == 'x' &&", 11),
        ("(a == 'x'", 9),
        ("a == 'x')", 8),
        ("a in {'x'", 9),
        ("a in {'x' 'y'}", 10),
        ("a in 'x'", 5),
        ("has()", 4),
        ("has(a", 5),
        ("foo()", 0),
        ("a == 'unterminated", 5),
        ("a == 'x' b == 'y'", 9),
        ("a & b", 2),
        ("a | b", 2),
        ("a starts 'x'", 2),
        ("a not 'x'", 2),
        ("!", 1),
        ("&& a == 'x'", 0),
        ("a == 'x' ||| b == 'y'", 11),
        ("a == \u{e9}", 5),
    ] {
        match Selector::parse(text) {
            Ok(s) => panic!("{text:?} should not parse, got {s:?}"),
            Err(e) => assert_eq!(e.offset, offset, "{text:?}: {e}"),
        }
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = format!("{}a == 'x'{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(Selector::parse(&deep).is_err());
    let nots = format!("{}has(a)", "!".repeat(10_000));
    assert!(Selector::parse(&nots).is_err());
}

#[test]
fn display_round_trips() {
    for text in [
        "all()",
        "global()",
        "has(a)",
        "!has(a)",
        "a == 'x'",
        "a != \"it's\"",
        "a in {'x', 'y'}",
        "a not in {}",
        "a contains 'c' && b starts with 's' || c ends with 'e'",
        "!(a == 'x' || b == 'y') && (c == '1' || d == '2')",
    ] {
        let parsed = Selector::parse(text).unwrap_or(Selector::Global);
        let again = Selector::parse(&parsed.to_string()).unwrap_or(Selector::All);
        assert_eq!(parsed, again, "{text:?} -> {parsed}");
    }
}

#[test]
fn prefixed_rewrites_every_key() {
    let s = Selector::parse("a == 'x' && !has(b) || c in {'1'}").unwrap_or(Selector::All);
    let p = s.prefixed("pcns.");
    assert!(p.matches(&labels(&[("pcns.a", "x")])));
    assert!(!p.matches(&labels(&[("a", "x")])));
    assert_eq!(Selector::All.prefixed("pcns."), Selector::All);
}

#[test]
fn required_value_finds_top_level_conjunct() {
    let s =
        Selector::parse("x == '1' && projectcalico.org/namespace == 'ns'").unwrap_or(Selector::All);
    assert_eq!(s.required_value("projectcalico.org/namespace"), Some("ns"));
    let s =
        Selector::parse("x == '1' || projectcalico.org/namespace == 'ns'").unwrap_or(Selector::All);
    assert_eq!(s.required_value("projectcalico.org/namespace"), None);
}

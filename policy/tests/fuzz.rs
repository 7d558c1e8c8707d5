//! Property tests: the selector parser and the manifest loader never panic on any
//! input, and what parses means what it prints.

use std::collections::BTreeMap;

use palisade_policy::compile::CompiledCluster;
use palisade_policy::{Flow, Manifests, Protocol, Selector};
use proptest::prelude::*;

/// Strings built from selector tokens and noise, so the parser's deep paths are hit.
fn selector_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("app".to_string()),
        Just("==".to_string()),
        Just("!=".to_string()),
        Just("!".to_string()),
        Just("&&".to_string()),
        Just("||".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(",".to_string()),
        Just("in".to_string()),
        Just("not".to_string()),
        Just("contains".to_string()),
        Just("starts".to_string()),
        Just("with".to_string()),
        Just("has(".to_string()),
        Just("all()".to_string()),
        Just("global()".to_string()),
        Just("'x'".to_string()),
        Just("\"y\"".to_string()),
        Just("'".to_string()),
        Just(" ".to_string()),
        "[ -~]{0,3}",
        "\\PC{0,2}",
    ];
    prop::collection::vec(token, 0..24).prop_map(|t| t.join(" "))
}

/// Random selector ASTs over a small label vocabulary.
fn selector_ast() -> impl Strategy<Value = Selector> {
    let key = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string())
    ];
    let value = prop_oneof![
        Just("x".to_string()),
        Just("y".to_string()),
        Just("it's".to_string()),
        Just(String::new())
    ];
    let leaf = prop_oneof![
        Just(Selector::All),
        Just(Selector::Global),
        key.clone().prop_map(Selector::Has),
        (key.clone(), value.clone()).prop_map(|(k, v)| Selector::Eq(k, v)),
        (key.clone(), value.clone()).prop_map(|(k, v)| Selector::Ne(k, v)),
        (key.clone(), prop::collection::vec(value.clone(), 0..3))
            .prop_map(|(k, v)| Selector::In(k, v)),
        (key.clone(), prop::collection::vec(value.clone(), 0..3))
            .prop_map(|(k, v)| Selector::NotIn(k, v)),
        (key.clone(), value.clone()).prop_map(|(k, v)| Selector::Contains(k, v)),
        (key.clone(), value.clone()).prop_map(|(k, v)| Selector::StartsWith(k, v)),
        (key, value).prop_map(|(k, v)| Selector::EndsWith(k, v)),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|s| Selector::Not(Box::new(s))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Selector::And),
            prop::collection::vec(inner, 2..4).prop_map(Selector::Or),
        ]
    })
}

fn label_set() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string())
        ],
        prop_oneof![
            Just("x".to_string()),
            Just("y".to_string()),
            Just("xy".to_string()),
            Just(String::new())
        ],
        0..3,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn selector_parser_never_panics_and_round_trips(text in selector_soup()) {
        if let Ok(s) = Selector::parse(&text) {
            let printed = s.to_string();
            let again = Selector::parse(&printed);
            prop_assert!(again.is_ok(), "{printed:?} from {text:?} does not parse back");
            prop_assert_eq!(again.ok().map(|a| a.to_string()), Some(printed));
        }
    }

    #[test]
    fn arbitrary_text_never_panics_the_parser(text in "\\PC{0,64}") {
        let _ = Selector::parse(&text);
    }

    #[test]
    fn printed_selectors_mean_the_same(s in selector_ast(), labels in label_set()) {
        let printed = s.to_string();
        let parsed = Selector::parse(&printed);
        prop_assert!(parsed.is_ok(), "{printed:?} does not parse");
        if let Ok(parsed) = parsed {
            prop_assert_eq!(parsed.matches(&labels), s.matches(&labels), "{}", printed);
        }
    }
}

fn corpus_policies() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance/calico");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let Ok(doc) = serde_norway::from_str::<serde_norway::Value>(&text) else {
            continue;
        };
        if let Some(p) = doc.get("policies").and_then(|p| p.as_str()) {
            out.push(p.to_owned());
        }
    }
    out.sort();
    out
}

/// A mutation of a real manifest: bytes replaced, cut or inserted.
fn mutated_manifest() -> impl Strategy<Value = String> {
    let corpus = corpus_policies();
    let n = corpus.len().max(1);
    (
        0..n,
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, "[ -~\n]{0,4}"), 1..6),
    )
        .prop_map(move |(i, edits)| {
            let mut text = corpus.get(i).cloned().unwrap_or_default().into_bytes();
            for (at, kind, insert) in edits {
                if text.is_empty() {
                    break;
                }
                let pos = at.index(text.len());
                match kind {
                    0 => text.truncate(pos),
                    1 => {
                        text.remove(pos);
                    }
                    2 => {
                        for (k, b) in insert.bytes().enumerate() {
                            text.insert((pos + k).min(text.len()), b);
                        }
                    }
                    _ => {
                        if let Some(b) = text.get_mut(pos) {
                            *b = insert.bytes().next().unwrap_or(b'-');
                        }
                    }
                }
            }
            String::from_utf8_lossy(&text).into_owned()
        })
}

fn load_compile_evaluate(text: &str, file: &str) {
    let mut m = Manifests::default();
    let _ = m.load_str(file, text);
    let (c, _) = CompiledCluster::new(&m);
    // Evaluate something against whatever loaded.
    let a = c.endpoint(
        "10.0.0.1"
            .parse()
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
    );
    let _ = c.evaluate(&Flow {
        source: a,
        destination: a,
        protocol: Protocol::TCP,
        port: Some(80),
        icmp: None,
        http: None,
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn mutated_manifests_never_panic(text in mutated_manifest()) {
        load_compile_evaluate(&text, "m.yaml");
    }

    #[test]
    fn random_bytes_never_panic_the_loader(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        load_compile_evaluate(&text, "r.yaml");
        load_compile_evaluate(&text, "r.json");
    }
}

#[test]
fn the_mutation_corpus_is_not_empty() {
    assert!(
        corpus_policies().len() >= 30,
        "mutations need real manifests to start from"
    );
}

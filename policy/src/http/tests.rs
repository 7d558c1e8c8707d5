use super::target::*;

fn path(target: &str) -> Result<String, TargetError> {
    parse_target(target).map(|t| t.path)
}

#[test]
fn canonical_forms() {
    for (sent, canonical) in [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("//a///b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../b", "/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/.", "/a/"),
        ("/..", "/"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E%2e/b", "/b"),
        ("/a/.%2e/b", "/b"),
        ("/%61dmin", "/admin"),
        ("/%7euser", "/~user"),
        ("/a%20b", "/a%20b"),
        ("/a%c3%a9", "/a%C3%A9"),
        ("/caf\u{e9}", "/caf%C3%A9"),
        ("/a..b/c", "/a..b/c"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a;b=c/d", "/a;b=c/d"),
        ("http://host/a/../b", "/b"),
        ("HTTP://host:8080", "/"),
        ("*", "*"),
    ] {
        assert_eq!(path(sent).as_deref(), Ok(canonical), "{sent}");
    }
}

#[test]
fn query_is_kept_fragment_dropped() {
    let t = parse_target("/a//b?x=1&y=/../#frag").unwrap();
    assert_eq!(t.path, "/a/b");
    assert_eq!(t.query.as_deref(), Some("x=1&y=/../"));
    assert_eq!(t.path_and_query(), "/a/b?x=1&y=/../");
    assert_eq!(parse_target("/a#x?y").unwrap().path_and_query(), "/a");
}

#[test]
fn refused_targets() {
    use TargetError::*;
    for (sent, why) in [
        ("/a%2fb", EncodedSlash),
        ("/a%2Fb", EncodedSlash),
        ("/a%5cb", EncodedBackslash),
        ("/a\\b", Backslash),
        ("/a%00b", ControlCharacter),
        ("/a%0ab", ControlCharacter),
        ("/a%7f", ControlCharacter),
        ("/a\u{1}b", ControlCharacter),
        ("/a%zz", InvalidEscape),
        ("/a%4", InvalidEscape),
        ("/a%", InvalidEscape),
        ("/a%ff", InvalidUtf8),
        ("/a%c3", InvalidUtf8),
        ("host:443", NotAPath),
        ("a/b", NotAPath),
        ("", NotAPath),
        ("ftp://host/a", NotAPath),
    ] {
        assert_eq!(path(sent), Err(why), "{sent:?}");
    }
}

proptest::proptest! {
    #[test]
    fn normalizing_is_idempotent_and_never_panics(s in "[/a.%2eEfF5cC\\\\?#~ -]{0,24}") {
        if let Ok(once) = normalize_path(&s) {
            proptest::prop_assert_eq!(normalize_path(&once), Ok(once.clone()));
            proptest::prop_assert!(once.starts_with('/') || s.is_empty() || !s.starts_with('/'));
            proptest::prop_assert!(!once.contains("//"));
            proptest::prop_assert!(!once.split('/').any(|seg| seg == "." || seg == ".."));
        }
        let _ = parse_target(&s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
        let s = String::from_utf8_lossy(&bytes);
        if let Ok(t) = parse_target(&s) {
            proptest::prop_assert_eq!(normalize_path(&t.path), Ok(t.path.clone()));
        }
    }
}

mod depends_on_http {
    use crate::{CompiledCluster, Direction, Flow, Manifests, Protocol};

    const CLUSTER: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: web, labels: {app: a}}
status: {podIP: 10.9.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: web, labels: {app: b}}
status: {podIP: 10.9.0.2}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: b-in, namespace: web}
spec:
  selector: app == 'b'
  order: 10
  ingress:
    - action: Allow
      protocol: TCP
      destination: {ports: [22]}
    - action: Allow
      protocol: TCP
      source: {selector: app == 'a'}
      destination: {ports: [80]}
      http: {methods: [GET]}
    - action: Allow
      protocol: TCP
      destination: {ports: [80, 8080]}
";

    fn depends(port: u16, direction: Direction) -> bool {
        let mut m = Manifests::default();
        assert!(m.load_str("c.yaml", CLUSTER).is_empty());
        let (c, errors) = CompiledCluster::new(&m);
        assert!(errors.is_empty(), "{errors:?}");
        let flow = Flow {
            source: c.endpoint("10.9.0.1".parse().unwrap()),
            destination: c.endpoint("10.9.0.2".parse().unwrap()),
            protocol: Protocol::TCP,
            port: Some(port),
            icmp: None,
            http: None,
        };
        c.depends_on_http(&flow, direction)
    }

    #[test]
    fn only_where_an_http_rule_is_reached() {
        // Port 80: the http rule matches on L4 before anything decides.
        assert!(depends(80, Direction::Ingress));
        // Port 22: decided by rule 0 before the http rule; 8080: the http rule's
        // port does not match; egress at a: no policy there at all.
        assert!(!depends(22, Direction::Ingress));
        assert!(!depends(8080, Direction::Ingress));
        assert!(!depends(80, Direction::Egress));
    }
}

//! Pod annotations the injector reads, with the Istio and Linkerd spellings
//! understood as aliases so a pod moved from either mesh keeps its exclusions.
//! Values from every spelling present are combined.

use std::collections::BTreeMap;

use ipnet::IpNet;
use palisade_policy::notation::{parse_net, PortRange};

/// `palisade.io/inject`: `enabled` / `disabled` on a pod (or, as a label, on a namespace).
pub const INJECT: &str = "palisade.io/inject";
/// Set on a pod the injector changed, with the injector's version.
pub const INJECTED: &str = "palisade.io/injected";

/// Opt-out spellings of other meshes, honoured so a pod kept out of Istio or
/// Linkerd on purpose (a Job, a DaemonSet on the host) stays out of Palisade.
const OPT_OUT_ALIASES: [(&str, &str); 2] = [
    ("sidecar.istio.io/inject", "false"),
    ("linkerd.io/inject", "disabled"),
];

const INBOUND_PORTS: [&str; 3] = [
    "palisade.io/exclude-inbound-ports",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "config.linkerd.io/skip-inbound-ports",
];
const OUTBOUND_PORTS: [&str; 3] = [
    "palisade.io/exclude-outbound-ports",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
    "config.linkerd.io/skip-outbound-ports",
];
const OUTBOUND_CIDRS: [&str; 3] = [
    "palisade.io/exclude-outbound-cidrs",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "config.linkerd.io/skip-subnets",
];
const INBOUND_CIDRS: [&str; 1] = ["palisade.io/exclude-inbound-cidrs"];

/// What a pod asks of the injector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodOptions {
    /// `Some(true)`: opted in; `Some(false)`: opted out (by any spelling).
    pub inject: Option<bool>,
    pub exclude_inbound_ports: Vec<PortRange>,
    pub exclude_outbound_ports: Vec<PortRange>,
    pub exclude_inbound_cidrs: Vec<IpNet>,
    pub exclude_outbound_cidrs: Vec<IpNet>,
}

/// Reads the annotations; a value that does not parse is an error naming the
/// annotation, so the pod is refused with a reason rather than injected wrong.
pub fn read(annotations: &BTreeMap<String, String>) -> Result<PodOptions, String> {
    let inject = match annotations.get(INJECT).map(String::as_str) {
        Some("enabled" | "true") => Some(true),
        Some("disabled" | "false") => Some(false),
        Some(other) => {
            return Err(format!(
                "annotation {INJECT}: {other:?} is neither enabled nor disabled"
            ))
        }
        None => OPT_OUT_ALIASES
            .iter()
            .any(|(key, off)| annotations.get(*key).map(String::as_str) == Some(*off))
            .then_some(false),
    };
    Ok(PodOptions {
        inject,
        exclude_inbound_ports: list(annotations, &INBOUND_PORTS, |t| t.parse())?,
        exclude_outbound_ports: list(annotations, &OUTBOUND_PORTS, |t| t.parse())?,
        exclude_inbound_cidrs: list(annotations, &INBOUND_CIDRS, parse_net)?,
        exclude_outbound_cidrs: list(annotations, &OUTBOUND_CIDRS, parse_net)?,
    })
}

/// Comma-separated values of every spelling in `keys`, in order, without repeats.
fn list<T: PartialEq>(
    annotations: &BTreeMap<String, String>,
    keys: &[&str],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    for key in keys {
        let Some(value) = annotations.get(*key) else {
            continue;
        };
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let parsed = parse(item).map_err(|e| format!("annotation {key}: {e}"))?;
            if !out.contains(&parsed) {
                out.push(parsed);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn istio_and_linkerd_spellings_are_aliases() {
        let o = read(&annotations(&[
            ("palisade.io/exclude-outbound-ports", "5432"),
            (
                "traffic.sidecar.istio.io/excludeOutboundPorts",
                "5432, 6379",
            ),
            ("config.linkerd.io/skip-outbound-ports", "4000-5000"),
            ("config.linkerd.io/skip-inbound-ports", "9090"),
            (
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "169.254.169.254/32",
            ),
            ("config.linkerd.io/skip-subnets", "10.10.0.0/16"),
        ]))
        .unwrap();
        let ports: Vec<String> = o
            .exclude_outbound_ports
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(ports, ["5432", "6379", "4000:5000"]);
        assert_eq!(o.exclude_inbound_ports.len(), 1);
        assert_eq!(o.exclude_outbound_cidrs.len(), 2);
        assert_eq!(o.inject, None);
        assert_eq!(
            read(&annotations(&[("sidecar.istio.io/inject", "false")]))
                .unwrap()
                .inject,
            Some(false)
        );
        assert_eq!(
            read(&annotations(&[("linkerd.io/inject", "disabled")]))
                .unwrap()
                .inject,
            Some(false)
        );
        // Another mesh's opt-in is not ours.
        assert_eq!(
            read(&annotations(&[("linkerd.io/inject", "enabled")]))
                .unwrap()
                .inject,
            None
        );
        // Ours wins over an alias.
        let both = annotations(&[
            ("palisade.io/inject", "enabled"),
            ("sidecar.istio.io/inject", "false"),
        ]);
        assert_eq!(read(&both).unwrap().inject, Some(true));
    }

    #[test]
    fn a_bad_value_names_its_annotation() {
        let e = read(&annotations(&[(
            "config.linkerd.io/skip-outbound-ports",
            "25,smtp",
        )]))
        .unwrap_err();
        assert!(
            e.contains("config.linkerd.io/skip-outbound-ports") && e.contains("smtp"),
            "{e}"
        );
        let e = read(&annotations(&[("palisade.io/inject", "yes please")])).unwrap_err();
        assert!(e.contains("palisade.io/inject"), "{e}");
    }
}

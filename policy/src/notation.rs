//! Port-range and address notation shared by the injector (which reads it from
//! pod annotations) and `palisade-proxy init` (which turns it into iptables
//! rules), so what the injector accepts is exactly what init can apply.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// An inclusive port range: `8080`, `4000-5000` (Istio, Linkerd) or `4000:5000`
/// (iptables, Calico).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("invalid port {t:?} (1-65535)"))
        };
        let (first, last) = match text.split_once(['-', ':']) {
            Some((lo, hi)) => (number(lo)?, number(hi)?),
            None => (number(text)?, number(text)?),
        };
        if last < first {
            return Err(format!(
                "invalid port range {text:?} (the end is below the start)"
            ));
        }
        Ok(PortRange { first, last })
    }
}

/// iptables' `--dport` form.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// A CIDR, or a bare address as a /32 or /128; host bits are cleared.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    IpNet::from_str(text)
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("invalid CIDR {text:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ranges_in_every_notation_users_bring() {
        assert_eq!(
            "80".parse(),
            Ok(PortRange {
                first: 80,
                last: 80
            })
        );
        assert_eq!(
            "4000-5000".parse(),
            Ok(PortRange {
                first: 4000,
                last: 5000
            })
        );
        assert_eq!(
            "4000:5000".parse::<PortRange>().unwrap().to_string(),
            "4000:5000"
        );
        assert!("0".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
        assert!("90-80".parse::<PortRange>().is_err());
        assert!("http".parse::<PortRange>().is_err());
        assert_eq!(parse_net("10.0.0.7").unwrap().to_string(), "10.0.0.7/32");
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert!(parse_net("10.0.0.0/33").is_err());
    }
}

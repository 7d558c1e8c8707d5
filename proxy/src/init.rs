//! `palisade-proxy init` / `cleanup`: the iptables rules that send a pod's TCP
//! through its proxy, for IPv4 and IPv6, written with iptables-restore.
//!
//! ```text
//! nat PREROUTING -p tcp -> PALISADE_INBOUND:  excluded ports/CIDRs RETURN, else REDIRECT :15006
//! nat OUTPUT     -p tcp -> PALISADE_OUTPUT:   the proxy's own UID RETURN (its connections
//!                                             go out as they are), loopback RETURN (the
//!                                             app's localhost and own-pod traffic stays
//!                                             local), excluded ports/CIDRs RETURN,
//!                                             else REDIRECT :15001
//! ```
//! Idempotent: `init` first removes what an earlier `init` wrote, then writes one set.
//! `cleanup` removes exactly the two jump rules and the two chains, nothing else.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;
pub use palisade_policy::notation::PortRange;

/// What the rules redirect and what they leave alone.
#[derive(Clone, Debug)]
pub struct InitConfig {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Inbound destination ports that reach the app directly (health checks, ...).
    pub exclude_inbound_ports: Vec<PortRange>,
    /// Outbound destination ports that go out directly.
    pub exclude_outbound_ports: Vec<PortRange>,
    /// Outbound destinations that go out directly.
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// Inbound sources that reach the app directly.
    pub exclude_inbound_cidrs: Vec<IpNet>,
}

const INBOUND_CHAIN: &str = "PALISADE_INBOUND";
const OUTPUT_CHAIN: &str = "PALISADE_OUTPUT";
const JUMPS: [(&str, &str); 2] = [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{command}: {message}")]
    Command { command: String, message: String },
}

fn family_of(net: &IpNet) -> Family {
    match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    }
}

/// The iptables-restore input for one family (applied with `--noflush`).
pub fn render(config: &InitConfig, family: Family) -> String {
    let mut r = String::from("*nat\n");
    r += &format!(":{INBOUND_CHAIN} - [0:0]\n:{OUTPUT_CHAIN} - [0:0]\n");
    for (from, to) in JUMPS {
        r += &format!("-A {from} -p tcp -j {to}\n");
    }
    // Inbound: the proxy's own ports are never redirected to themselves.
    let own = [config.inbound_port, config.outbound_port].map(|p| PortRange { first: p, last: p });
    for port in own.iter().chain(&config.exclude_inbound_ports) {
        r += &format!("-A {INBOUND_CHAIN} -p tcp --dport {port} -j RETURN\n");
    }
    for cidr in config
        .exclude_inbound_cidrs
        .iter()
        .filter(|c| family_of(c) == family)
    {
        r += &format!("-A {INBOUND_CHAIN} -p tcp -s {cidr} -j RETURN\n");
    }
    r += &format!(
        "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}\n",
        config.inbound_port
    );
    // Outbound.
    r += &format!(
        "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN\n",
        config.proxy_uid
    );
    r += &format!("-A {OUTPUT_CHAIN} -o lo -j RETURN\n");
    for port in &config.exclude_outbound_ports {
        r += &format!("-A {OUTPUT_CHAIN} -p tcp --dport {port} -j RETURN\n");
    }
    for cidr in config
        .exclude_outbound_cidrs
        .iter()
        .filter(|c| family_of(c) == family)
    {
        r += &format!("-A {OUTPUT_CHAIN} -d {cidr} -j RETURN\n");
    }
    r += &format!(
        "-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}\n",
        config.outbound_port
    );
    r += "COMMIT\n";
    r
}

/// Writes the rules for both families, replacing any earlier set.
pub fn init(config: &InitConfig, families: &[Family]) -> Result<(), InitError> {
    for &family in families {
        cleanup_family(family);
        let rules = render(config, family);
        let mut child = Command::new(family.restore())
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| InitError::Command {
                command: family.restore().into(),
                message: e.to_string(),
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(rules.as_bytes())
                .map_err(|e| InitError::Command {
                    command: family.restore().into(),
                    message: e.to_string(),
                })?;
        }
        let out = child.wait_with_output().map_err(|e| InitError::Command {
            command: family.restore().into(),
            message: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(InitError::Command {
                command: family.restore().into(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    Ok(())
}

/// Removes what `init` wrote, for both families. Missing rules are not an error.
pub fn cleanup(families: &[Family]) {
    for &family in families {
        cleanup_family(family);
    }
}

fn cleanup_family(family: Family) {
    let run = |args: &[&str]| {
        Command::new(family.iptables())
            .args(["-w", "-t", "nat"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for (from, to) in JUMPS {
        // Delete every copy of the jump, in case an older init left more than one.
        while run(&["-D", from, "-p", "tcp", "-j", to]) {}
    }
    for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        run(&["-F", chain]);
        run(&["-X", chain]);
    }
}

//! `palisade explain`: why is this connection allowed or denied?

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::Args;
use palisade_policy::explain::{DirectionExplanation, Explanation};
use palisade_policy::http::parse_target;
use palisade_policy::scenario::resolve_pair;
use palisade_policy::{CompiledCluster, Endpoint, Flow, HttpRequest, Protocol};
use serde::Serialize;

use super::{load, Output};

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Manifest files or folders (Namespaces, Pods, ServiceAccounts, policies, tiers);
    /// without -f, the cluster of the kubeconfig.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Source: NAMESPACE/POD or an IP address.
    #[arg(long)]
    from: String,
    /// Destination: NAMESPACE/POD or an IP address.
    #[arg(long)]
    to: String,
    /// Destination port (not for ICMP).
    #[arg(long)]
    port: Option<u16>,
    /// TCP, UDP, SCTP, ICMP, ICMPv6 or a protocol number.
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// ICMP type and code, for protocol ICMP (default echo request 8/0).
    #[arg(long)]
    icmp_type: Option<u8>,
    #[arg(long, default_value_t = 0)]
    icmp_code: u8,
    /// Decide one HTTP request instead of the connection.
    #[arg(long, requires = "path")]
    method: Option<String>,
    #[arg(long, requires = "method")]
    path: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    from: &'a str,
    to: &'a str,
    protocol: String,
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<serde_json::Value>,
    #[serde(flatten)]
    explanation: &'a Explanation,
}

pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let (compiled, _) = load::compile(&args.files)?;
    let protocol: Protocol = args.protocol.parse().map_err(|e: String| anyhow!(e))?;
    let (source, destination) =
        resolve_pair(&compiled, &args.from, &args.to).map_err(|e| anyhow!(e))?;
    let icmp = protocol
        .is_icmp()
        .then(|| (args.icmp_type.unwrap_or(8), args.icmp_code));
    // The proxy matches the canonical path; so does explain. A target the proxy
    // refuses with 400 never reaches policy, and that is the answer.
    let canonical = match args.path.as_deref().map(parse_target).transpose() {
        Ok(target) => target.map(|t| t.path),
        Err(why) => {
            let path = args.path.as_deref().unwrap_or_default();
            match args.output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"from": args.from, "to": args.to, "port": args.port,
                        "http": {"method": args.method, "path": path,
                                 "refused": {"status": 400, "reason": why.to_string()}}})
                ),
                Output::Text => println!(
                    "{} {path:?}: refused before policy, 400 Bad Request: {why}",
                    args.method.as_deref().unwrap_or_default()
                ),
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let http = match (&args.method, &canonical) {
        (Some(method), Some(path)) => Some(HttpRequest { method, path }),
        _ => None,
    };
    let flow = Flow {
        source,
        destination,
        protocol,
        port: args.port,
        icmp,
        http,
    };
    let (_, explanation) = compiled.explain(&flow);
    match args.output {
        Output::Json => {
            let out = JsonOutput {
                from: &args.from,
                to: &args.to,
                protocol: protocol.to_string(),
                port: args.port,
                http: http.map(|h| serde_json::json!({"method": h.method, "path": h.path})),
                explanation: &explanation,
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&out).context("serializing")?
            );
        }
        Output::Text => print!("{}", render(&compiled, &flow, &explanation, &args)),
    }
    Ok(ExitCode::SUCCESS)
}

fn endpoint_name(compiled: &CompiledCluster, e: &Endpoint) -> String {
    match e.workload.and_then(|w| compiled.workload(w)) {
        Some(w) => format!("{} ({})", w.pod.key(), e.ip),
        None => format!("{} (outside the cluster)", e.ip),
    }
}

fn render(
    compiled: &CompiledCluster,
    flow: &Flow<'_>,
    x: &Explanation,
    args: &ExplainArgs,
) -> String {
    let mut out = String::new();
    let what = match (flow.port, flow.icmp) {
        (Some(p), _) => format!("{}/{p}", flow.protocol),
        (None, Some((t, c))) => format!("{} type {t} code {c}", flow.protocol),
        (None, None) => flow.protocol.to_string(),
    };
    let request = match (&args.method, &args.path) {
        (Some(m), Some(p)) => format!(" {m} {p}"),
        _ => String::new(),
    };
    out += &format!(
        "{} -> {} {what}{request}: {}\n",
        endpoint_name(compiled, &flow.source),
        endpoint_name(compiled, &flow.destination),
        if x.allowed { "ALLOWED" } else { "DENIED" }
    );
    match &x.egress {
        Some(d) => render_direction(&mut out, d),
        None => out += "  egress: the source is outside the cluster (no policy of its own)\n",
    }
    match &x.ingress {
        Some(d) => render_direction(&mut out, d),
        None => out += "  ingress: the destination is outside the cluster (no policy of its own)\n",
    }
    let enforced = (
        x.egress.as_ref().map(|d| &d.decided_by),
        x.ingress.as_ref().map(|d| &d.decided_by),
    );
    if (x.pending.egress.as_ref(), x.pending.ingress.as_ref()) != enforced
        || x.pending.allowed != x.allowed
    {
        out += &format!(
            "  pending (staged policies as if enforced): {} (egress {}, ingress {})\n",
            if x.pending.allowed {
                "allowed"
            } else {
                "denied"
            },
            x.pending.egress.as_deref().unwrap_or("-"),
            x.pending.ingress.as_deref().unwrap_or("-"),
        );
    }
    out
}

fn render_direction(out: &mut String, d: &DirectionExplanation) {
    *out += &format!(
        "  {} at {}: {} by {}\n    {}\n",
        d.direction,
        d.endpoint,
        if d.allowed { "allowed" } else { "denied" },
        d.decided_by,
        d.reason
    );
    for t in &d.tiers {
        *out += &format!("    tier {}\n", t.tier);
        for p in &t.policies {
            let order = p
                .order
                .map_or_else(|| "no order".into(), |o| format!("order {o}"));
            *out += &format!("      {} ({order})\n", p.policy);
            if p.rules.is_empty() {
                *out += "        (no rules in this direction)\n";
            }
            for r in &p.rules {
                let mark = if r.matched { "MATCH" } else { "-    " };
                let ext = if r.http_extension {
                    " [Palisade extension: http here]"
                } else {
                    ""
                };
                *out += &format!("        {mark} rule {}: {}{ext}\n", r.index, r.rule);
            }
        }
        let end = match t.outcome.as_str() {
            "pass" => "passed to the next tier",
            "default-pass" => "nothing matched; defaultAction Pass: next tier",
            "end-of-tier-deny" => "nothing matched: end-of-tier deny",
            _ => "decided here",
        };
        *out += &format!("      => {end}\n");
    }
    if !d.logged.is_empty() {
        *out += &format!("    logged by {}\n", d.logged.join(", "));
    }
}

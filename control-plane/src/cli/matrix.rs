//! `palisade matrix`: who can reach whom, pod x pod, at one port.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::Args;
use palisade_policy::{CompiledCluster, Direction, Endpoint, Flow, Protocol, WorkloadId};
use serde::Serialize;

use super::{load, Output};

#[derive(Args, Debug)]
pub struct MatrixArgs {
    /// Manifest files or folders; without -f, the cluster of the kubeconfig.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Destination port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    #[arg(long, default_value = "TCP")]
    protocol: String,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

#[derive(Serialize)]
struct Cell {
    from: String,
    to: String,
    allowed: bool,
    egress: String,
    ingress: String,
}

#[derive(Serialize)]
struct Matrix {
    protocol: String,
    port: Option<u16>,
    pods: Vec<String>,
    /// `allowed[i][j]`: may pods[i] open a connection to pods[j]?
    allowed: Vec<Vec<bool>>,
    cells: Vec<Cell>,
}

pub fn run(args: MatrixArgs) -> anyhow::Result<ExitCode> {
    let (compiled, _) = load::compile(&args.files)?;
    let protocol: Protocol = args.protocol.parse().map_err(|e: String| anyhow!(e))?;
    let port = protocol.has_ports().then_some(args.port);
    let matrix = build(&compiled, protocol, port);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&matrix)?),
        Output::Text => print!("{}", render(&matrix)),
    }
    Ok(ExitCode::SUCCESS)
}

fn build(compiled: &CompiledCluster, protocol: Protocol, port: Option<u16>) -> Matrix {
    let mut pods: Vec<(String, WorkloadId, Endpoint)> = compiled
        .workloads()
        .filter_map(|(id, w)| {
            let ip = *w.pod.ips.first()?;
            Some((
                w.pod.key().to_string(),
                id,
                Endpoint {
                    ip,
                    workload: Some(id),
                },
            ))
        })
        .collect();
    pods.sort_by(|a, b| a.0.cmp(&b.0));
    let icmp = protocol.is_icmp().then_some((8, 0));
    let mut allowed = Vec::new();
    let mut cells = Vec::new();
    for (from, src_id, source) in &pods {
        let mut row = Vec::new();
        for (to, dst_id, destination) in &pods {
            let flow = Flow {
                source: *source,
                destination: *destination,
                protocol,
                port,
                icmp,
                http: None,
            };
            let v = compiled.evaluate(&flow);
            let reference = |w: WorkloadId, d: Direction| {
                v.decision(d)
                    .map(|dec| compiled.reference(w, d, dec, false).to_string())
                    .unwrap_or_default()
            };
            row.push(v.allowed);
            cells.push(Cell {
                from: from.clone(),
                to: to.clone(),
                allowed: v.allowed,
                egress: reference(*src_id, Direction::Egress),
                ingress: reference(*dst_id, Direction::Ingress),
            });
        }
        allowed.push(row);
    }
    Matrix {
        protocol: protocol.to_string(),
        port,
        pods: pods.into_iter().map(|p| p.0).collect(),
        allowed,
        cells,
    }
}

fn render(m: &Matrix) -> String {
    let width = m.pods.iter().map(String::len).max().unwrap_or(0);
    let what = m
        .port
        .map_or_else(|| m.protocol.clone(), |p| format!("{}/{p}", m.protocol));
    let mut out = format!("{what}: row = from, column = to; \u{2713} allowed, \u{2717} denied\n\n");
    out += &format!("{:>4} {:width$} ", "", "");
    for j in 1..=m.pods.len() {
        out += &format!("{j:>3}");
    }
    out.push('\n');
    let mut open = 0;
    for (i, (pod, row)) in m.pods.iter().zip(&m.allowed).enumerate() {
        out += &format!("{:>4} {pod:width$} ", i + 1);
        for &ok in row {
            open += usize::from(ok);
            out += if ok { "  \u{2713}" } else { "  \u{2717}" };
        }
        out.push('\n');
    }
    let total = m.pods.len() * m.pods.len();
    out += &format!("\n{open} of {total} pairs allowed. Why? palisade explain -f DIR --from A --to B --port P\n");
    out
}

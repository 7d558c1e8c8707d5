#!/usr/bin/env bash
# Direct vs through two Palisade proxies, same namespaces, one run.
# Needs root. Installs nginx-light (the app) and oha (the load generator, fixed-rate
# with latency correction) if missing, builds in release, prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
command -v nginx >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx-light; }
command -v oha >/dev/null 2>&1 || cargo install oha --locked
command -v iptables-restore >/dev/null 2>&1 || apt-get install -y -qq iptables iproute2
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p palisade-proxy --bin palisade-proxy --example mesh_bench
exec cargo run --release -q -p palisade-proxy --example mesh_bench

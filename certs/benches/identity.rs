//! Issuance and a full mTLS handshake.
//!
//! `cargo bench -p palisade-certs --bench identity`. The handshake is pumped in
//! memory between a rustls client and server built from Palisade's configs, so it
//! measures the CPU cost of TLS 1.3 + ECDSA P-256 + SPIFFE checks without socket noise.

#![allow(clippy::unwrap_used)] // a benchmark: a failure should stop it loudly

use std::hint::black_box;
use std::io::{Read, Write};

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_certs::identity::{request, Credentials};
use palisade_certs::tls::{client_config, server_config, server_name};
use palisade_certs::{CaConfig, CertificateAuthority, IdentityStore, SpiffeId, TrustBundle};
use rustls::{ClientConnection, ServerConnection};

fn identity(ca: &CertificateAuthority, sa: &str) -> std::sync::Arc<IdentityStore> {
    let id = SpiffeId::new("cluster.local", "bench", sa).unwrap();
    let (pending, csr) = request(&id).unwrap();
    let issued = ca.issue(&csr, &id, None).unwrap();
    IdentityStore::new(Credentials::new(pending, vec![issued.der], "cluster.local").unwrap())
}

/// Moves TLS records from one side to the other until neither has anything to say.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let mut moved = false;
        while client.wants_write() {
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            moved = true;
        }
        while server.wants_write() {
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn bench(c: &mut Criterion) {
    let ca = CertificateAuthority::generate(CaConfig::default()).unwrap();
    let id = SpiffeId::new("cluster.local", "bench", "web").unwrap();
    let (_, csr) = request(&id).unwrap();
    c.bench_function("issue from a CSR (verify CSR, sign leaf)", |b| {
        b.iter(|| black_box(ca.issue(black_box(&csr), &id, None).unwrap()))
    });
    c.bench_function("new key + CSR (proxy side)", |b| {
        b.iter(|| black_box(request(&id).unwrap()))
    });

    let bundle = TrustBundle::new([ca.root().clone()]);
    let server = server_config(identity(&ca, "db"), &bundle).unwrap();
    let client = client_config(
        identity(&ca, "web"),
        &bundle,
        SpiffeId::new("cluster.local", "bench", "db").unwrap(),
    )
    .unwrap();
    c.bench_function(
        "full mTLS handshake (TLS 1.3, P-256, SPIFFE checks both sides)",
        |b| {
            b.iter(|| {
                let mut cl = ClientConnection::new(client.clone(), server_name()).unwrap();
                let mut sv = ServerConnection::new(server.clone()).unwrap();
                pump(&mut cl, &mut sv);
                cl.writer().write_all(b"ping").unwrap();
                pump(&mut cl, &mut sv);
                let mut got = [0u8; 4];
                sv.reader().read_exact(&mut got).unwrap();
                assert!(!cl.is_handshaking() && !sv.is_handshaking());
                black_box(got)
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);

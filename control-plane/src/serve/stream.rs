//! The distribution stream of one proxy: who it is (its certificate, and the pod it
//! names in Hello must be of that identity), a snapshot, then a delta per change;
//! its acks and nacks go to the status board, its renewals to the CA.

use std::sync::Arc;

use palisade_api::v1::distribution_server::Distribution;
use palisade_api::v1::proxy_message::Message;
use palisade_api::v1::{Hello, ProxyMessage, Resource, Update};
use palisade_certs::SpiffeId;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::listener::Peer;
use super::world::{now_ms, Catchup};
use super::Shared;

#[derive(Debug)]
pub struct DistributionService(pub Arc<Shared>);

#[tonic::async_trait]
impl Distribution for DistributionService {
    type StreamStream = ReceiverStream<Result<Update, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        let (identity, addr) = peer
            .and_then(|p| Some((p.identity?, p.addr)))
            .ok_or_else(|| {
                Status::unauthenticated("a client certificate (the proxy's identity) is required")
            })?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))?;
        let hello = match first? {
            Some(ProxyMessage {
                message: Some(Message::Hello(hello)),
            }) => hello,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        check_pod(&self.0, &hello, &identity)?;
        eprintln!("stream {}: connected from {addr} as {identity}", hello.pod);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(serve_proxy(
            self.0.clone(),
            hello.pod,
            identity,
            inbound,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A proxy speaks for one pod, and only for a pod of its own identity.
fn check_pod(shared: &Shared, hello: &Hello, identity: &SpiffeId) -> Result<(), Status> {
    let world = shared.world.borrow().clone();
    match world.identity_of(&hello.pod) {
        Some(owner) if owner == identity => Ok(()),
        Some(owner) => Err(Status::permission_denied(format!(
            "pod {} is {owner}, not {identity}",
            hello.pod
        ))),
        None => Err(Status::not_found(format!(
            "pod {} is not in the cluster state",
            hello.pod
        ))),
    }
}

async fn serve_proxy(
    shared: Arc<Shared>,
    pod: String,
    identity: SpiffeId,
    mut inbound: Streaming<ProxyMessage>,
    tx: mpsc::Sender<Result<Update, Status>>,
) {
    let mut world_rx = shared.world.clone();
    shared.status.proxy(&pod, |p| {
        p.identity = identity.to_string();
        p.streams += 1;
        p.connected = true;
    });
    // 0: nothing sent yet, so the first update is a snapshot.
    let mut sent = 0;
    loop {
        let world = world_rx.borrow_and_update().clone();
        if world.version != sent {
            let update = to_update(world.since(sent), world.version, sent, &shared);
            if tx.send(Ok(update)).await.is_err() {
                break;
            }
            sent = world.version;
        }
        tokio::select! {
            changed = world_rx.changed() => if changed.is_err() { break },
            message = inbound.message() => match message {
                Ok(Some(ProxyMessage { message: Some(m) })) => {
                    if let Some(reply) = handle(&shared, &pod, &identity, sent, m) {
                        if tx.send(reply).await.is_err() {
                            break;
                        }
                    }
                }
                Ok(Some(ProxyMessage { message: None })) => {}
                Ok(None) | Err(_) => break,
            },
        }
    }
    shared.status.proxy(&pod, |p| {
        p.streams = p.streams.saturating_sub(1);
        p.connected = p.streams > 0;
    });
    eprintln!("stream {pod}: disconnected");
}

fn to_update(catchup: Catchup, version: u64, base: u64, shared: &Shared) -> Update {
    Update {
        version,
        snapshot: catchup.snapshot,
        base_version: base,
        upserts: catchup
            .upserts
            .iter()
            .map(|o| Resource {
                key: o.key.clone(),
                json: o.json.clone(),
                origin: o.origin.clone(),
            })
            .collect(),
        removals: catchup.removals,
        roots_der: if catchup.snapshot {
            vec![shared.ca.root().to_vec()]
        } else {
            Vec::new()
        },
        certificate_chain_der: Vec::new(),
    }
}

fn handle(
    shared: &Shared,
    pod: &str,
    identity: &SpiffeId,
    sent: u64,
    message: Message,
) -> Option<Result<Update, Status>> {
    match message {
        Message::Ack(ack) => {
            let now = now_ms();
            let made = shared.world.borrow().made_at_ms;
            shared.status.proxy(pod, |p| {
                p.acked_version = ack.version;
                p.acked_at_ms = now;
                p.nack = None;
            });
            if ack.version == sent {
                eprintln!(
                    "stream {pod}: ack version {} ({} ms after the change)",
                    ack.version,
                    now.saturating_sub(made)
                );
            }
            None
        }
        Message::Nack(nack) => {
            eprintln!(
                "stream {pod}: NACK version {}: {} (it keeps its last good state)",
                nack.version, nack.reason
            );
            shared.status.proxy(pod, |p| {
                p.nack = Some(format!("version {}: {}", nack.version, nack.reason))
            });
            None
        }
        // The identity renewed is the one the proxy authenticated with.
        Message::Renew(renew) => Some(
            match shared
                .ca
                .issue(&renew.csr_der, identity, Some(shared.lifetime))
            {
                Ok(issued) => {
                    shared.status.proxy(pod, |p| {
                        p.certificates_issued += 1;
                        p.certificate_not_after = Some(issued.not_after.to_string());
                    });
                    eprintln!("stream {pod}: renewed {identity}");
                    Ok(Update {
                        version: sent,
                        base_version: sent,
                        certificate_chain_der: vec![issued.der.to_vec()],
                        roots_der: vec![shared.ca.root().to_vec()],
                        ..Update::default()
                    })
                }
                Err(e) => Err(Status::invalid_argument(format!("renewal refused: {e}"))),
            },
        ),
        Message::Hello(_) => Some(Err(Status::invalid_argument("Hello twice"))),
    }
}

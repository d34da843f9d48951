//! The node-to-node side: each node's router actor, reachable from the other nodes over
//! `ractor_cluster`, which takes forwarded entity messages and heartbeats; the node server with
//! cookie authentication; seed discovery (static addresses or DNS); and the heartbeat loop that
//! keeps the member list current.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, pg};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};

use crate::Cluster;
use crate::protocol::{Heartbeat, PeerMessage, reply};

/// The process group every node's router actor joins, under its own name.
const GROUP_PREFIX: &str = "convene.node.";

struct PeerActor;

impl Actor for PeerActor {
    type Msg = PeerMessage;
    type State = Cluster;
    type Arguments = Cluster;

    async fn pre_start(
        &self,
        myself: ActorRef<PeerMessage>,
        cluster: Cluster,
    ) -> Result<Cluster, ActorProcessingErr> {
        pg::join(
            format!("{GROUP_PREFIX}{}", cluster.local()),
            vec![myself.get_cell()],
        );
        Ok(cluster)
    }

    async fn handle(
        &self,
        _myself: ActorRef<PeerMessage>,
        message: PeerMessage,
        cluster: &mut Cluster,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PeerMessage::Forward(kind, key, body, trace, port) => {
                let span =
                    tracing::info_span!("forwarded", %kind, %key, trace_id = tracing::field::Empty);
                if crate::trace::trace_id(&trace).is_some() {
                    crate::trace::enter(&span, Some(&trace));
                    span.in_scope(|| tracing::debug!(%key, "forwarded message for this node"));
                }
                forwarded(cluster, &kind, &key, &body, port, span)
            }
            PeerMessage::Heartbeat(bytes) => match serde_json::from_slice::<Heartbeat>(&bytes) {
                Ok(hb) => {
                    let peer = peer_of(&hb.name);
                    cluster.on_heartbeat(hb, peer);
                }
                Err(e) => tracing::warn!(error = %e, "undecodable heartbeat"),
            },
            PeerMessage::Cast(topic, payload) => match cluster.service(&topic) {
                Some(service) => service.cast(&payload),
                None => tracing::warn!(%topic, "message for an unknown node service"),
            },
            PeerMessage::Call(topic, payload, port) => match cluster.service(&topic) {
                Some(service) => {
                    let answer = service.call(&payload);
                    tokio::spawn(async move {
                        let _ = port.send(answer.await);
                    });
                }
                None => tracing::warn!(%topic, "request for an unknown node service"),
            },
        }
        Ok(())
    }
}

/// Delivers a forwarded message to the local shard of its kind and answers when the entity
/// does, without holding up the router actor.
fn forwarded(
    cluster: &Cluster,
    kind: &str,
    key: &str,
    body: &[u8],
    port: RpcReplyPort<Vec<u8>>,
    span: tracing::Span,
) {
    let Ok(key) = cluster.parse_key(key) else {
        let _ = port.send(vec![reply::BAD_REQUEST]);
        return;
    };
    if !cluster.is_local(&key) {
        let _ = port.send(vec![reply::MOVED]);
        return;
    }
    let Some(local) = cluster.kind(kind) else {
        let _ = port.send(vec![reply::UNAVAILABLE]);
        return;
    };
    match local.deliver(key, body) {
        Ok(answer) => {
            let answered = async move {
                let out = match answer.await {
                    Some(bytes) => {
                        let mut out = Vec::with_capacity(bytes.len() + 1);
                        out.push(reply::ANSWER);
                        out.extend_from_slice(&bytes);
                        out
                    }
                    None => vec![reply::UNAVAILABLE],
                };
                let _ = port.send(out);
            };
            tokio::spawn(tracing::Instrument::instrument(answered, span));
        }
        Err(e) => {
            tracing::warn!(error = %e, "undecodable forwarded message");
            let _ = port.send(vec![reply::BAD_REQUEST]);
        }
    }
}

/// The router actor of the member `name`, if a session to it is open.
fn peer_of(name: &str) -> Option<ActorRef<PeerMessage>> {
    pg::get_members(&format!("{GROUP_PREFIX}{name}"))
        .into_iter()
        .find(|cell| !cell.get_id().is_local())
        .map(ActorRef::from)
}

/// Every other member's router actor reachable now, by member name.
fn reachable(local: &str) -> HashMap<String, ActorRef<PeerMessage>> {
    pg::which_groups()
        .into_iter()
        .filter_map(|g| g.strip_prefix(GROUP_PREFIX).map(str::to_owned))
        .filter(|name| name != local)
        .filter_map(|name| peer_of(&name).map(|p| (name, p)))
        .collect()
}

/// Where to find the other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seed {
    /// A `host:port` node-to-node address.
    Address(String),
    /// Every A record of a DNS name (the headless Service of a StatefulSet), at `port`.
    Dns {
        /// The name to resolve.
        name: String,
        /// The node-to-node port.
        port: u16,
    },
}

impl std::str::FromStr for Seed {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("dns:") {
            let (name, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("seed `{s}` must be dns:NAME:PORT"))?;
            let port = port
                .parse()
                .map_err(|_| format!("seed `{s}` has an invalid port"))?;
            if name.is_empty() {
                return Err(format!("seed `{s}` has no name"));
            }
            return Ok(Self::Dns {
                name: name.to_owned(),
                port,
            });
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Address(s.to_owned()))
            }
            _ => Err(format!("seed `{s}` must be host:port or dns:NAME:PORT")),
        }
    }
}

/// How this node reaches the others.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    /// The node-to-node listener.
    pub listen: SocketAddr,
    /// The host other nodes reach this one at.
    pub advertise_host: String,
    /// The shared secret; a node with another cookie is refused.
    pub cookie: String,
    /// Where to find the others.
    pub seeds: Vec<Seed>,
}

/// This node's place in the network; dropping it does not leave the cluster, [`Network::stop`]
/// does.
pub struct Network {
    server: ActorRef<NodeServerMessage>,
    peer: ActorRef<PeerMessage>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Network {
    /// Opens the node-to-node listener, joins the seeds and starts the heartbeats.
    pub async fn start(cluster: Cluster, settings: NetworkSettings) -> anyhow::Result<Self> {
        let server = NodeServer::new(
            settings.listen.port(),
            settings.cookie.clone(),
            cluster.local().to_owned(),
            settings.advertise_host.clone(),
            None,
            Some(NodeConnectionMode::Transitive),
        )
        .with_listen_addr(settings.listen.ip());
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| anyhow::anyhow!("starting the node server: {e}"))?;
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "convene.sessions".into(),
                subscription: Box::new(SessionLog::default()),
            })
            .map_err(|e| anyhow::anyhow!("subscribing to node events: {e}"))?;
        let (peer, _) = Actor::spawn(None, PeerActor, cluster.clone())
            .await
            .map_err(|e| anyhow::anyhow!("starting the router actor: {e}"))?;
        let own: SocketAddr = settings.listen;
        let tasks = vec![
            tokio::spawn(connect_seeds(
                server.clone(),
                settings.seeds.clone(),
                own,
                settings.advertise_host.clone(),
            )),
            tokio::spawn(heartbeats(cluster, !settings.seeds.is_empty())),
        ];
        Ok(Self {
            server,
            peer,
            tasks,
        })
    }

    /// Leaves: stops the heartbeats, the router actor and the node server (the other members
    /// see the sessions close and mark this node down).
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self
            .peer
            .stop_and_wait(None, Some(Duration::from_secs(2)))
            .await;
        let _ = self
            .server
            .stop_and_wait(None, Some(Duration::from_secs(2)))
            .await;
    }
}

/// Logs sessions, and refusals: a session that closes before it authenticated was refused
/// (wrong cookie) by this node or by its peer.
#[derive(Default)]
struct SessionLog {
    authenticated: Arc<Mutex<HashSet<u64>>>,
}

impl NodeEventSubscription for SessionLog {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        tracing::debug!(peer = %ses.peer_addr, "cluster session opened");
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let was_authenticated = self
            .authenticated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ses.node_id);
        if was_authenticated {
            tracing::warn!(peer = %ses.peer_addr, name = ?ses.peer_name.map(|n| n.name), "cluster session closed");
        } else {
            tracing::warn!(
                peer = %ses.peer_addr,
                "cluster peer refused: the handshake failed (the cookies differ)"
            );
        }
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.authenticated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ses.node_id);
        tracing::info!(peer = %ses.peer_addr, name = ?ses.peer_name.map(|n| n.name), "cluster session authenticated");
    }
}

/// Resolves the seeds to addresses.
async fn resolve(seeds: &[Seed]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for seed in seeds {
        let target = match seed {
            Seed::Address(a) => a.clone(),
            Seed::Dns { name, port } => format!("{name}:{port}"),
        };
        let found = tokio::net::lookup_host(target.as_str()).await;
        match found {
            Ok(addrs) => out.extend(addrs.filter(SocketAddr::is_ipv4)),
            Err(e) => tracing::debug!(?seed, error = %e, "seed does not resolve (yet)"),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Connects to every seed address without a session, again every second, so nodes that start
/// in any order find each other and a lost session is opened again.
async fn connect_seeds(
    server: ActorRef<NodeServerMessage>,
    seeds: Vec<Seed>,
    own: SocketAddr,
    advertise_host: String,
) {
    if seeds.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Ok(sessions) = ractor::call_t!(server, NodeServerMessage::GetSessions, 2000) else {
            continue;
        };
        let mut connected: HashSet<SocketAddr> = HashSet::new();
        for s in sessions.values() {
            if let Some(name) = &s.peer_name {
                if let Ok(mut addrs) =
                    tokio::net::lookup_host(name.connection_string.as_str()).await
                {
                    connected.extend(&mut addrs);
                }
            }
            if let Ok(a) = s.peer_addr.parse() {
                connected.insert(a);
            }
        }
        for addr in resolve(&seeds).await {
            let is_self = addr.port() == own.port()
                && (addr.ip() == own.ip() || addr.ip().to_string() == advertise_host);
            if is_self || connected.contains(&addr) {
                continue;
            }
            if let Err(e) = ractor_cluster::client_connect(&server, addr).await {
                tracing::debug!(%addr, error = %e, "seed not reachable yet");
            }
        }
    }
}

/// Sends this node's heartbeat to every reachable member, marks silent ones down, and moves
/// this node from joining to up once it has met a peer (or waited long enough to be alone).
async fn heartbeats(cluster: Cluster, has_seeds: bool) {
    let every = cluster.settings().heartbeat;
    let alone_after = cluster.settings().down_after.max(Duration::from_secs(2));
    let started = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let peers = reachable(cluster.local());
        cluster.sweep(&peers);
        if !has_seeds || cluster.has_peers() || started.elapsed() > alone_after {
            cluster.set_up();
        }
        let hb = match serde_json::to_vec(&cluster.heartbeat().await) {
            Ok(b) => b,
            Err(_) => continue,
        };
        for peer in peers.values() {
            let _ = peer.cast(PeerMessage::Heartbeat(hb.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_addresses_or_dns_names() {
        assert_eq!(
            "10.0.0.5:7000".parse::<Seed>(),
            Ok(Seed::Address("10.0.0.5:7000".into()))
        );
        assert_eq!(
            " dns:convene-peers.ns.svc:7000 ".parse::<Seed>(),
            Ok(Seed::Dns {
                name: "convene-peers.ns.svc".into(),
                port: 7000
            })
        );
        for bad in [
            "10.0.0.5",
            "dns:name",
            "dns::7000",
            ":7000",
            "host:port",
            "dns:x:99999",
        ] {
            assert!(bad.parse::<Seed>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn dns_seeds_resolve_to_ipv4_addresses() {
        let found = resolve(&[Seed::Dns {
            name: "localhost".into(),
            port: 7000,
        }])
        .await;
        assert_eq!(found, vec!["127.0.0.1:7000".parse::<SocketAddr>().unwrap()]);
    }
}

//! The per-node fan-out: a room, wherever it lives, sends each frame once per node, and this
//! actor delivers it to the node's connections in that room. Delivery never waits: a connection
//! whose bounded queue is full is a slow consumer and is closed (4008) without slowing the room
//! or anyone else. Other nodes reach it as the node service [`TOPIC`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::protocol::Meta;
use convene_cluster::wire::{decode, encode};
use convene_cluster::{Cluster, NodeService};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Close code for a connection that stopped reading.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// The outbound side of one WebSocket connection, shared by the edge, rooms and the fan-out.
#[derive(Debug)]
pub struct Conn {
    /// Node-unique connection id.
    pub id: u64,
    /// The signed-in user.
    pub user_id: i64,
    tx: mpsc::Sender<Arc<str>>,
    closed: CancellationToken,
    close: Mutex<Option<(u16, String)>>,
}

impl Conn {
    /// A connection whose frames go to `tx` (bounded: its capacity is the outbound queue).
    pub fn new(id: u64, user_id: i64, tx: mpsc::Sender<Arc<str>>) -> Self {
        Self {
            id,
            user_id,
            tx,
            closed: CancellationToken::new(),
            close: Mutex::new(None),
        }
    }

    /// Queues a frame without waiting; a full queue closes the connection as a slow consumer.
    /// Returns whether the frame was queued.
    pub fn push(&self, frame: Arc<str>) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close_with(CLOSE_SLOW_CONSUMER, "slow_consumer");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the edge to close the connection with `code` (the first reason given wins).
    pub fn close_with(&self, code: u16, reason: &str) {
        if let Ok(mut close) = self.close.lock() {
            close.get_or_insert_with(|| (code, reason.to_owned()));
        }
        self.closed.cancel();
    }

    /// Whether the connection is closing.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves when the connection is asked to close.
    pub async fn closing(&self) {
        self.closed.cancelled().await;
    }

    /// The close code and reason asked for, if any.
    pub fn close_reason(&self) -> Option<(u16, String)> {
        self.close.lock().ok().and_then(|c| c.clone())
    }
}

/// Messages of the fan-out actor.
pub enum FanOutMessage {
    /// A connection is joining the room: it receives nothing from the room until the room's
    /// answer to its join ([`FanOutMessage::Direct`]) arrives, then everything after it.
    Subscribe {
        /// The room.
        room: String,
        /// The connection.
        conn: Arc<Conn>,
        /// Its presence meta, kept so a restarted room can take the connection back.
        meta: Meta,
    },
    /// Frames for one connection: the room's answer to its join (reply, presence, missed
    /// messages). Live frames follow.
    Direct {
        /// The room.
        room: String,
        /// The connection id.
        conn_id: u64,
        /// The frames, in order.
        frames: Vec<Arc<str>>,
    },
    /// Stop delivering the room's frames to this connection.
    Unsubscribe {
        /// The room.
        room: String,
        /// The connection id.
        conn_id: u64,
    },
    /// One frame of a room for every local subscriber.
    Deliver {
        /// The room.
        room: String,
        /// The serialised frame, shared by every delivery.
        frame: Arc<str>,
    },
    /// The local connections of a room that have joined it: a room that restarts (after a
    /// crash, or on another node) takes its members back from every node.
    Members {
        /// The room.
        room: String,
        /// Connection ids, users and metas.
        reply: ractor::RpcReplyPort<Vec<RoomMember>>,
    },
    /// The rooms with connections on this node.
    Rooms(ractor::RpcReplyPort<Vec<String>>),
    /// Connections being delivered to, for metrics.
    Count(ractor::RpcReplyPort<usize>),
}

impl ractor::Message for FanOutMessage {}

/// The fan-out actor of a node.
pub struct FanOut;

/// A connection in a room, as a room takes it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomMember {
    /// The connection id.
    pub conn_id: u64,
    /// The signed-in user.
    pub user_id: i64,
    /// Its presence meta.
    pub meta: Meta,
}

struct Subscriber {
    conn: Arc<Conn>,
    meta: Meta,
    /// The room answered its join: it receives the room's frames.
    joined: bool,
}

/// Local subscribers by room.
#[derive(Default)]
pub struct FanOutState {
    rooms: HashMap<String, HashMap<u64, Subscriber>>,
}

impl Actor for FanOut {
    type Msg = FanOutMessage;
    type State = FanOutState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ActorRef<FanOutMessage>,
        _: (),
    ) -> Result<FanOutState, ActorProcessingErr> {
        Ok(FanOutState::default())
    }

    async fn handle(
        &self,
        _: ActorRef<FanOutMessage>,
        message: FanOutMessage,
        state: &mut FanOutState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            FanOutMessage::Subscribe { room, conn, meta } => {
                let subscriber = Subscriber {
                    conn,
                    meta,
                    joined: false,
                };
                state
                    .rooms
                    .entry(room)
                    .or_default()
                    .insert(subscriber.conn.id, subscriber);
            }
            FanOutMessage::Direct {
                room,
                conn_id,
                frames,
            } => {
                if let Some(s) = state.rooms.get_mut(&room).and_then(|c| c.get_mut(&conn_id)) {
                    s.joined = true;
                    for f in frames {
                        s.conn.push(f);
                    }
                }
            }
            FanOutMessage::Unsubscribe { room, conn_id } => {
                if let Some(conns) = state.rooms.get_mut(&room) {
                    conns.remove(&conn_id);
                    if conns.is_empty() {
                        state.rooms.remove(&room);
                    }
                }
            }
            FanOutMessage::Deliver { room, frame } => {
                if let Some(conns) = state.rooms.get_mut(&room) {
                    // A slow or closed connection is dropped here; the edge tells its rooms.
                    conns.retain(|_, s| {
                        !s.joined || (s.conn.push(frame.clone()) && !s.conn.is_closed())
                    });
                }
            }
            FanOutMessage::Members { room, reply } => {
                let members = state
                    .rooms
                    .get(&room)
                    .map(|conns| {
                        conns
                            .values()
                            .filter(|s| s.joined && !s.conn.is_closed())
                            .map(|s| RoomMember {
                                conn_id: s.conn.id,
                                user_id: s.conn.user_id,
                                meta: s.meta.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let _ = reply.send(members);
            }
            FanOutMessage::Rooms(reply) => {
                let _ = reply.send(state.rooms.keys().cloned().collect());
            }
            FanOutMessage::Count(reply) => {
                let _ = reply.send(state.rooms.values().map(HashMap::len).sum());
            }
        }
        Ok(())
    }
}

/// The name other nodes reach a node's fan-out by.
pub const TOPIC: &str = "fanout";

/// Frames a room sends to one node: for every joined connection in the room, or for one.
#[derive(Serialize, Deserialize)]
struct NodeFrames {
    room: String,
    conn: Option<u64>,
    frames: Vec<String>,
}

/// Sends a room's frames to the fan-out of `node`, this one included: to every connection of
/// the room there, or (`conn`) to one that joined.
pub fn send_frames(
    cluster: &Cluster,
    local: &ActorRef<FanOutMessage>,
    node: &str,
    room: &str,
    conn: Option<u64>,
    frames: Vec<Arc<str>>,
) {
    if node == cluster.local() {
        let room = room.to_owned();
        let _ = match conn {
            Some(conn_id) => local.cast(FanOutMessage::Direct {
                room,
                conn_id,
                frames,
            }),
            None => frames.into_iter().try_for_each(|frame| {
                local.cast(FanOutMessage::Deliver {
                    room: room.clone(),
                    frame,
                })
            }),
        };
        return;
    }
    let payload = NodeFrames {
        room: room.to_owned(),
        conn,
        frames: frames.iter().map(|f| f.to_string()).collect(),
    };
    cluster.cast_node(node, TOPIC, encode(&payload));
}

/// The fan-out as a node service: frames from rooms on other nodes, and their requests for
/// this node's members of a room.
pub struct FanOutService(pub ActorRef<FanOutMessage>);

impl NodeService for FanOutService {
    fn cast(&self, payload: &[u8]) {
        let Ok(NodeFrames { room, conn, frames }) = decode::<NodeFrames>(payload) else {
            tracing::warn!("undecodable room frames from another node");
            return;
        };
        let frames: Vec<Arc<str>> = frames.into_iter().map(Arc::from).collect();
        let _ = match conn {
            Some(conn_id) => self.0.cast(FanOutMessage::Direct {
                room,
                conn_id,
                frames,
            }),
            None => frames.into_iter().try_for_each(|frame| {
                self.0.cast(FanOutMessage::Deliver {
                    room: room.clone(),
                    frame,
                })
            }),
        };
    }

    fn call(&self, payload: &[u8]) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>> {
        let fanout = self.0.clone();
        let room = decode::<String>(payload).unwrap_or_default();
        Box::pin(async move {
            let members =
                ractor::call_t!(fanout, |reply| FanOutMessage::Members { room, reply }, 2000)
                    .unwrap_or_default();
            encode(&members)
        })
    }
}

/// The members of `room` on `node` (this one included); `None` when the node does not answer.
pub async fn members_on(
    cluster: &Cluster,
    local: &ActorRef<FanOutMessage>,
    node: &str,
    room: &str,
) -> Option<Vec<RoomMember>> {
    if node == cluster.local() {
        let room = room.to_owned();
        return ractor::call_t!(local, |reply| FanOutMessage::Members { room, reply }, 2000).ok();
    }
    let answer = cluster
        .call_node(node, TOPIC, encode(&room), Duration::from_secs(2))
        .await?;
    decode(&answer).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_closes_the_connection_as_slow() {
        let (tx, mut rx) = mpsc::channel(2);
        let conn = Conn::new(1, 7, tx);
        assert!(conn.push("a".into()));
        assert!(conn.push("b".into()));
        assert!(!conn.push("c".into()));
        assert!(conn.is_closed());
        assert_eq!(
            conn.close_reason(),
            Some((CLOSE_SLOW_CONSUMER, "slow_consumer".into()))
        );
        assert_eq!(rx.try_recv().as_deref().ok(), Some("a"));
    }
}

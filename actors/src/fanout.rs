//! The per-node fan-out: a room sends each frame once per node, and this actor delivers it to
//! the node's connections in that room. Delivery never waits: a connection whose bounded queue
//! is full is a slow consumer and is closed (4008) without slowing the room or anyone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;
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
    /// Deliver the room's frames to this connection from now on.
    Subscribe {
        /// The room.
        room: String,
        /// The connection.
        conn: Arc<Conn>,
        /// Its presence meta, kept so a restarted room can take the connection back.
        meta: Value,
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
    /// The local connections of a room and their metas: a room that restarts after a crash
    /// takes its members back from here.
    Members {
        /// The room.
        room: String,
        /// Connections and metas.
        reply: ractor::RpcReplyPort<Vec<(Arc<Conn>, Value)>>,
    },
    /// Connections being delivered to, for metrics.
    Count(ractor::RpcReplyPort<usize>),
}

impl ractor::Message for FanOutMessage {}

/// The fan-out actor of a node.
pub struct FanOut;

/// Local subscribers by room.
#[derive(Default)]
pub struct FanOutState {
    rooms: HashMap<String, HashMap<u64, (Arc<Conn>, Value)>>,
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
                state
                    .rooms
                    .entry(room)
                    .or_default()
                    .insert(conn.id, (conn, meta));
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
                    conns.retain(|_, (c, _)| c.push(frame.clone()) && !c.is_closed());
                }
            }
            FanOutMessage::Members { room, reply } => {
                let members = state
                    .rooms
                    .get(&room)
                    .map(|conns| {
                        conns
                            .values()
                            .filter(|(c, _)| !c.is_closed())
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                let _ = reply.send(members);
            }
            FanOutMessage::Count(reply) => {
                let _ = reply.send(state.rooms.values().map(HashMap::len).sum());
            }
        }
        Ok(())
    }
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

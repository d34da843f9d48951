//! The room actor: owns one live room (`event:{id}` or `room:{name}`): its members and their
//! presence (one meta per connection, Phoenix style, or counts only in rooms above the presence
//! limit), its sequence numbers and the last messages, persisted so history survives a restart. A room is an entity like any other, placed on one
//! node of the cluster; its members' sockets are on any node. Each broadcast goes once to every
//! node with members, whose fan-out delivers it to the sockets there.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use convene_cluster::{
    Activation, Cluster, EntityFactory, EntityKey, Inspect, Router, ShardMessage, Spawning,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::EventMessage;
use crate::fanout::FanOutMessage;
use crate::idle::Idle;
use crate::protocol::{Meta, Presences};
use crate::store::{RoomMessage, Store};

mod history;
mod presence;

pub use history::message_frame;

/// Messages kept per room.
pub const HISTORY: usize = 200;

/// What kind of room a name designates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomKind {
    /// `event:{id}`: exists while the event does; attendees and the creator publish.
    Event(i64),
    /// `room:{name}`: open to everyone signed in.
    Open,
}

/// Why a room refused a request; `reason` is the code clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RoomError {
    /// Not a room name.
    #[error("rooms are named event:{{id}} or room:{{name}} (letters, digits, - _ . up to 64)")]
    InvalidRoom,
    /// The event of an event room does not exist.
    #[error("no such room")]
    NotFound,
    /// The user may not publish here.
    #[error("only registered attendees and the creator may publish in an event room")]
    Forbidden,
    /// The connection has not joined the room.
    #[error("join the room first")]
    NotJoined,
    /// `since` is older than the kept history.
    #[error("messages before seq {oldest} are no longer kept")]
    HistoryGap {
        /// The oldest seq still available.
        oldest: i64,
    },
    /// Storage or the event could not be reached; nothing was changed.
    #[error("the room is unavailable; retry")]
    Unavailable,
}

impl RoomError {
    /// The reason code clients see.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidRoom => "invalid_room",
            Self::NotFound => "not_found",
            Self::Forbidden => "forbidden",
            Self::NotJoined => "not_joined",
            Self::HistoryGap { .. } => "history_gap",
            Self::Unavailable => "unavailable",
        }
    }
}

/// The kind of a room name, or why it is not one.
pub fn parse_room(name: &str) -> Result<RoomKind, RoomError> {
    if let Some(id) = name.strip_prefix("event:") {
        return id
            .parse::<i64>()
            .ok()
            .filter(|i| *i > 0 && i.to_string() == id)
            .map(RoomKind::Event)
            .ok_or(RoomError::InvalidRoom);
    }
    let ok = name.strip_prefix("room:").is_some_and(|n| {
        (1..=64).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if ok {
        Ok(RoomKind::Open)
    } else {
        Err(RoomError::InvalidRoom)
    }
}

convene_cluster::entity_messages! {
    /// Messages a room actor takes.
    pub enum RoomCommand via RoomRequest {
        ask {
            /// A connection joins. The room sends its reply, the presence state and the missed
            /// messages to the connection through the fan-out of its node, ahead of any live
            /// traffic (the connection subscribed there first, and receives nothing before them).
            Join {
                /// Who joins.
                joiner: Joiner,
                /// Resume after this seq.
                since: Option<i64>,
                /// The client's `ref`, echoed in the reply.
                join_ref: Value,
            } -> Result<(), RoomError>,
            /// A member publishes; answers with the message's seq once it is stored.
            Publish {
                /// The connection.
                conn_id: u64,
                /// The message body.
                body: Value,
            } -> Result<i64, RoomError>,
            /// An operator's notice to everyone in the room: stored and broadcast as a message
            /// whose body is `{"type": "notice", "text": …}`; answers its seq.
            Notice {
                /// The operator's user id.
                from: i64,
                /// What the notice says.
                text: String,
            } -> Result<i64, RoomError>,
            /// Who is present: the connections after `after` (by id), at most `limit`.
            Presence {
                /// Connections after this id (`None`: from the first).
                after: Option<u64>,
                /// At most this many.
                limit: usize,
            } -> Result<PresencePage, RoomError>,
            /// Messages after `since` (at most `limit`), and the room's last seq.
            History {
                /// Messages after this seq.
                since: i64,
                /// At most this many.
                limit: usize,
            } -> Result<(Vec<RoomMessage>, i64), RoomError>,
        }
        tell {
            /// A connection leaves (or closed).
            Leave {
                /// The connection.
                conn_id: u64,
            },
            /// Activates the room on its owner, which takes its members back from every node
            /// (sent by the nodes with members when the owner may have changed).
            Touch,
            /// Panics inside the handler, for supervision tests and fault drills.
            InjectFault,
        }
        local {
            /// Broadcast the presence changes gathered since the last flush (sent by the room
            /// itself).
            FlushPresence,
            /// Store the messages admitted since the last commit (sent by the room itself).
            CommitMessages,
            /// Idle check (sent by a timer).
            Tick,
            /// Members whose node is down leave (sent by a timer).
            CheckNodes,
        }
    }
}

/// How often a room looks for members on nodes that went down.
const CHECK_NODES_EVERY: Duration = Duration::from_secs(1);

/// The kind name of rooms in entity keys.
pub const KIND: &str = "room";

/// The key of the room `name` (`room:…` or `event:…`).
pub fn key(name: &str) -> EntityKey {
    EntityKey::new(KIND, name)
}

/// The answer to a publish: the message's seq once it is stored.
type PublishReply = RpcReplyPort<Result<i64, RoomError>>;

/// The most connections one presence page holds.
pub const MAX_PRESENCE_PAGE: usize = 1000;

/// A page of a room's presence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresencePage {
    /// The page's connections, by user.
    pub presences: Presences,
    /// Connections in the room.
    pub connections: usize,
    /// Distinct users in the room.
    pub users: usize,
    /// The `after` of the next page, when there is one.
    pub next: Option<u64>,
}

/// How rooms keep their members informed of who is present.
#[derive(Debug, Clone, Copy)]
pub struct PresenceSettings {
    /// A joiner's presence, and a burst of presence changes, take at most this many frames
    /// (frames grow past [`STATE_CHUNK`] metas in rooms large enough to need it), so they fit in
    /// a connection's outbound queue.
    pub frames: usize,
    /// Above this many connections a room sends counts instead of presence lists, and goes
    /// back to lists when it falls to half as many.
    pub limit: usize,
}

/// Metas per presence frame, at least. Small frames keep every connection's write buffer small
/// (it keeps the capacity of the largest frame written).
const STATE_CHUNK: usize = 12;

/// How long presence changes are gathered into one `presence_diff`.
const PRESENCE_WINDOW: Duration = Duration::from_millis(20);

/// How long presence changes are gathered into one `presence_count` (counts mode).
const COUNT_WINDOW: Duration = Duration::from_secs(1);

/// Starts room actors for the shard.
pub struct RoomFactory {
    store: Arc<dyn Store>,
    events: Router<EventMessage>,
    fanout: ActorRef<FanOutMessage>,
    presence: PresenceSettings,
}

impl RoomFactory {
    /// Rooms that check events through `events`, broadcast through `fanout` and send presence
    /// as `presence` says.
    pub fn new(
        store: Arc<dyn Store>,
        events: Router<EventMessage>,
        fanout: ActorRef<FanOutMessage>,
        presence: PresenceSettings,
    ) -> Self {
        let presence = PresenceSettings {
            frames: presence.frames.max(1),
            limit: presence.limit.max(1),
        };
        Self {
            store,
            events,
            fanout,
            presence,
        }
    }
}

impl EntityFactory for RoomFactory {
    type Msg = RoomCommand;

    fn kind(&self) -> &'static str {
        KIND
    }

    fn spawn(&self, key: EntityKey, activation: Activation<RoomCommand>) -> Spawning<RoomCommand> {
        let args = RoomArgs {
            key,
            store: self.store.clone(),
            events: self.events.clone(),
            fanout: self.fanout.clone(),
            cluster: self.events.cluster().clone(),
            shard: activation.shard.clone(),
            idle_after: activation.passivate_after,
            presence: self.presence,
        };
        activation.start(RoomActor, args)
    }
}

/// Start-up arguments of a room actor.
pub struct RoomArgs {
    key: EntityKey,
    store: Arc<dyn Store>,
    events: Router<EventMessage>,
    fanout: ActorRef<FanOutMessage>,
    cluster: Cluster,
    shard: ActorRef<ShardMessage<RoomCommand>>,
    idle_after: Duration,
    presence: PresenceSettings,
}

/// The room actor.
pub struct RoomActor;

struct Member {
    /// Shared with the room's other members on the same node.
    node: Arc<str>,
    user_id: i64,
    /// Shared with the node's fan-out and the published presence.
    meta: Meta,
    may_publish: bool,
}

/// A connection asking to join a room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joiner {
    /// The connection id (unique across the cluster).
    pub conn_id: u64,
    /// Its user.
    pub user_id: i64,
    /// The node its socket is on.
    pub node: String,
    /// Its presence meta (with `conn` and `online_at`), shared with the node's fan-out.
    pub meta: Meta,
}

/// Everything a room actor holds.
pub struct RoomState {
    key: EntityKey,
    kind: RoomKind,
    store: Arc<dyn Store>,
    events: Router<EventMessage>,
    fanout: ActorRef<FanOutMessage>,
    cluster: Cluster,
    shard: ActorRef<ShardMessage<RoomCommand>>,
    idle: Idle,
    seq: i64,
    history: VecDeque<RoomMessage>,
    /// By connection id, so presence pages in a stable order.
    members: BTreeMap<u64, Member>,
    /// Members per node: where broadcasts go.
    nodes: HashMap<Arc<str>, usize>,
    /// Connections per user among the members.
    users: HashMap<i64, usize>,
    presence: PresenceSettings,
    /// Above the presence limit: members receive counts, not lists.
    counts_mode: bool,
    /// The (connections, users) last sent in counts mode.
    counted: (usize, usize),
    /// Presence as last broadcast in full mode; a joiner gets it as `presence_state`, then the
    /// next diff. Empty in counts mode.
    published: BTreeMap<u64, (i64, Meta)>,
    /// Messages admitted and waiting for the next commit, with their publishers' replies.
    pending: Vec<(i64, Value, PublishReply)>,
    publish_scheduled: bool,
    /// The `presence_state` frame of `published`, built once per change.
    state_frames: Option<Vec<Arc<str>>>,
    pending_joins: Vec<(u64, i64, Meta)>,
    pending_leaves: Vec<(u64, i64, Meta)>,
    flush_scheduled: bool,
}

impl Inspect for RoomState {
    fn summary(&self) -> Value {
        serde_json::json!({
            "room": self.key.id(),
            "connections": self.members.len(),
            "users": self.users.len(),
            "nodes": self.nodes.len(),
            "seq": self.seq,
            "counts_only": self.counts_mode,
        })
    }
}

impl Actor for RoomActor {
    type Msg = RoomCommand;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RoomCommand>,
        args: RoomArgs,
    ) -> Result<RoomState, ActorProcessingErr> {
        let kind = parse_room(args.key.id()).map_err(|e| format!("{}: {e}", args.key))?;
        let mut state = RoomState {
            key: args.key,
            kind,
            store: args.store,
            events: args.events,
            fanout: args.fanout,
            cluster: args.cluster,
            shard: args.shard,
            idle: Idle::new(args.idle_after),
            seq: 0,
            history: VecDeque::new(),
            members: BTreeMap::new(),
            nodes: HashMap::new(),
            users: HashMap::new(),
            presence: args.presence,
            counts_mode: false,
            counted: (0, 0),
            published: BTreeMap::new(),
            pending: Vec::new(),
            publish_scheduled: false,
            state_frames: None,
            pending_joins: Vec::new(),
            pending_leaves: Vec::new(),
            flush_scheduled: false,
        };
        state.load().await?;
        state.retrack().await;
        myself.send_interval(state.idle.tick_every(), || RoomCommand::Tick);
        myself.send_interval(CHECK_NODES_EVERY, || RoomCommand::CheckNodes);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomCommand>,
        message: RoomCommand,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, RoomCommand::Tick | RoomCommand::CheckNodes) {
            state.idle.touch();
        }
        match message {
            RoomCommand::Join {
                joiner,
                since,
                join_ref,
                reply,
            } => {
                let _ = reply.send(state.join(&myself, joiner, since, join_ref).await);
            }
            RoomCommand::CheckNodes => state.check_nodes(&myself),
            RoomCommand::Touch => {}
            RoomCommand::Leave { conn_id } => state.leave(&myself, conn_id),
            RoomCommand::FlushPresence => state.flush_presence(),
            RoomCommand::Publish {
                conn_id,
                body,
                reply,
            } => match state.admit(conn_id).await {
                Ok(user_id) => state.queue(&myself, user_id, body, reply).await,
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            RoomCommand::Notice { from, text, reply } => {
                let body = serde_json::json!({ "type": "notice", "text": text });
                state.queue(&myself, from, body, reply).await;
            }
            RoomCommand::CommitMessages => state.commit_pending().await,
            RoomCommand::InjectFault => panic!("fault injected into {}", state.key),
            RoomCommand::Presence {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(Ok(state.presence_page(after, limit)));
            }
            RoomCommand::History {
                since,
                limit,
                reply,
            } => {
                let answer = state
                    .after(since)
                    .map(|it| it.take(limit).cloned().collect());
                let _ = reply.send(answer.map(|msgs| (msgs, state.seq)));
            }
            RoomCommand::Tick => {
                if state.members.is_empty() && !state.flush_scheduled {
                    state.idle.check(&state.shard, &state.key);
                } else {
                    state.idle.touch();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert_eq!(parse_room("event:42"), Ok(RoomKind::Event(42)));
        assert_eq!(parse_room("room:lobby-1.a_b"), Ok(RoomKind::Open));
        for bad in [
            "event:0",
            "event:-1",
            "event:042",
            "event:x",
            "room:",
            "room:a b",
            "lobby",
            "room:é",
        ] {
            assert_eq!(parse_room(bad), Err(RoomError::InvalidRoom), "{bad}");
        }
        assert_eq!(
            parse_room(&format!("room:{}", "a".repeat(65))),
            Err(RoomError::InvalidRoom)
        );
    }
}

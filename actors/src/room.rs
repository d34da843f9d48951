//! The room actor: owns one live room (`event:{id}` or `room:{name}`): its members and their
//! presence (one meta per connection, Phoenix style), its sequence numbers and the last messages,
//! persisted so history survives a restart. A room is an entity like any other, placed on one
//! node of the cluster; its members' sockets are on any node. Each broadcast goes once to every
//! node with members, whose fan-out delivers it to the sockets there.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, SubsecRound, Utc};
use convene_cluster::wire::{self, Forwardable, Responder, WireError, decode, encode, respond};
use convene_cluster::{Cluster, EntityFactory, EntityKey, Router, ShardMessage, Spawning};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::EntityError;
use crate::event::EventMessage;
use crate::fanout::{FanOutMessage, members_on, send_frames};
use crate::idle::Idle;
use crate::store::{RoomMessage, Store, StoreError};

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

/// Messages a room actor takes.
pub enum RoomCommand {
    /// A connection joins. The room sends its reply, the presence state and the missed
    /// messages to the connection through the fan-out of its node, ahead of any live traffic
    /// (the connection subscribed there first, and receives nothing before them).
    Join {
        /// The connection id (unique across the cluster).
        conn_id: u64,
        /// Its user.
        user_id: i64,
        /// The node its socket is on.
        node: String,
        /// Its presence meta (with `conn` and `online_at`).
        meta: Value,
        /// Resume after this seq.
        since: Option<i64>,
        /// The client's `ref`, echoed in the reply.
        join_ref: Value,
        /// Done, or why not.
        reply: RpcReplyPort<Result<(), RoomError>>,
    },
    /// A connection leaves (or closed).
    Leave {
        /// The connection.
        conn_id: u64,
    },
    /// A member publishes; answers with the message's seq once it is stored.
    Publish {
        /// The connection.
        conn_id: u64,
        /// The message body.
        body: Value,
        /// The seq given.
        reply: RpcReplyPort<Result<i64, RoomError>>,
    },
    /// Who is present, in the `presence_state` shape.
    Presence(RpcReplyPort<Result<Value, RoomError>>),
    /// Messages after `since` (at most `limit`), and the room's last seq.
    History {
        /// Messages after this seq.
        since: i64,
        /// At most this many.
        limit: usize,
        /// The messages and the last seq.
        reply: RpcReplyPort<Result<(Vec<RoomMessage>, i64), RoomError>>,
    },
    /// Broadcast the presence changes gathered since the last flush (sent by the room itself).
    FlushPresence,
    /// Store the messages admitted since the last commit (sent by the room itself).
    CommitMessages,
    /// Idle check (sent by a timer).
    Tick,
    /// Members whose node is down leave (sent by a timer).
    CheckNodes,
    /// Activates the room on its owner, which takes its members back from every node (sent
    /// by the nodes with members when the owner may have changed).
    Touch,
    /// Panics inside the handler, for supervision tests and fault drills.
    InjectFault,
}

/// How often a room looks for members on nodes that went down.
const CHECK_NODES_EVERY: Duration = Duration::from_secs(1);

impl ractor::Message for RoomCommand {}

/// The requests of [`RoomCommand`] that may be forwarded to the room's owner on another node.
#[derive(Serialize, Deserialize)]
enum RoomRequest {
    Join {
        conn_id: u64,
        user_id: i64,
        node: String,
        meta: Value,
        since: Option<i64>,
        join_ref: Value,
    },
    Leave {
        conn_id: u64,
    },
    Publish {
        conn_id: u64,
        body: Value,
    },
    Presence,
    History {
        since: i64,
        limit: usize,
    },
    Touch,
    InjectFault,
}

fn no_answer() -> Responder {
    Box::new(|_: &[u8]| {})
}

fn answered() -> wire::Answer {
    Box::pin(async { Some(Vec::new()) })
}

impl Forwardable for RoomCommand {
    fn into_wire(self) -> Result<(Vec<u8>, Responder), Self> {
        let (request, responder) = match self {
            Self::Join {
                conn_id,
                user_id,
                node,
                meta,
                since,
                join_ref,
                reply,
            } => (
                RoomRequest::Join {
                    conn_id,
                    user_id,
                    node,
                    meta,
                    since,
                    join_ref,
                },
                respond(reply),
            ),
            Self::Leave { conn_id } => (RoomRequest::Leave { conn_id }, no_answer()),
            Self::Publish {
                conn_id,
                body,
                reply,
            } => (RoomRequest::Publish { conn_id, body }, respond(reply)),
            Self::Presence(reply) => (RoomRequest::Presence, respond(reply)),
            Self::History {
                since,
                limit,
                reply,
            } => (RoomRequest::History { since, limit }, respond(reply)),
            Self::Touch => (RoomRequest::Touch, no_answer()),
            Self::InjectFault => (RoomRequest::InjectFault, no_answer()),
            // Timer and self messages belong to the actor that sent them.
            local
            @ (Self::FlushPresence | Self::CommitMessages | Self::Tick | Self::CheckNodes) => {
                return Err(local);
            }
        };
        Ok((encode(&request), responder))
    }

    fn from_wire(body: &[u8]) -> Result<(Self, wire::Answer), WireError> {
        Ok(match decode::<RoomRequest>(body)? {
            RoomRequest::Join {
                conn_id,
                user_id,
                node,
                meta,
                since,
                join_ref,
            } => {
                let (reply, answer) = wire::answer();
                let msg = Self::Join {
                    conn_id,
                    user_id,
                    node,
                    meta,
                    since,
                    join_ref,
                    reply,
                };
                (msg, answer)
            }
            RoomRequest::Leave { conn_id } => (Self::Leave { conn_id }, answered()),
            RoomRequest::Publish { conn_id, body } => {
                let (reply, answer) = wire::answer();
                let msg = Self::Publish {
                    conn_id,
                    body,
                    reply,
                };
                (msg, answer)
            }
            RoomRequest::Presence => {
                let (reply, answer) = wire::answer();
                (Self::Presence(reply), answer)
            }
            RoomRequest::History { since, limit } => {
                let (reply, answer) = wire::answer();
                let msg = Self::History {
                    since,
                    limit,
                    reply,
                };
                (msg, answer)
            }
            RoomRequest::Touch => (Self::Touch, answered()),
            RoomRequest::InjectFault => (Self::InjectFault, answered()),
        })
    }
}

/// The answer to a publish: the message's seq once it is stored.
type PublishReply = RpcReplyPort<Result<i64, RoomError>>;

/// Metas per presence frame, at least. Small frames keep every connection's write buffer small
/// (it keeps the capacity of the largest frame written).
const STATE_CHUNK: usize = 12;

/// How long presence changes are gathered into one `presence_diff`.
const PRESENCE_WINDOW: Duration = Duration::from_millis(20);

/// Starts room actors for the shard.
pub struct RoomFactory {
    store: Arc<dyn Store>,
    events: Router<EventMessage>,
    fanout: ActorRef<FanOutMessage>,
    idle_after: Duration,
    presence_frames: usize,
}

impl RoomFactory {
    /// Rooms that check events through `events` and broadcast through `fanout`. A joiner's
    /// presence, and a burst of presence changes, take at most `presence_frames` frames (frames
    /// grow past [`STATE_CHUNK`] metas in rooms large enough to need it), so they fit in a
    /// connection's outbound queue.
    pub fn new(
        store: Arc<dyn Store>,
        events: Router<EventMessage>,
        fanout: ActorRef<FanOutMessage>,
        idle_after: Duration,
        presence_frames: usize,
    ) -> Self {
        Self {
            store,
            events,
            fanout,
            idle_after,
            presence_frames: presence_frames.max(1),
        }
    }
}

impl EntityFactory for RoomFactory {
    type Msg = RoomCommand;

    fn kind(&self) -> &'static str {
        "room"
    }

    fn spawn(
        &self,
        key: EntityKey,
        shard: ActorRef<ShardMessage<RoomCommand>>,
        supervisor: ActorCell,
    ) -> Spawning<RoomCommand> {
        let args = RoomArgs {
            key,
            store: self.store.clone(),
            events: self.events.clone(),
            fanout: self.fanout.clone(),
            cluster: self.events.cluster().clone(),
            shard,
            idle_after: self.idle_after,
            presence_frames: self.presence_frames,
        };
        Box::pin(async move {
            let (actor, _) = Actor::spawn_linked(None, RoomActor, args, supervisor).await?;
            Ok(actor)
        })
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
    presence_frames: usize,
}

/// The room actor.
pub struct RoomActor;

struct Member {
    /// Shared with the room's other members on the same node.
    node: Arc<str>,
    user_id: i64,
    meta: Value,
    may_publish: bool,
}

/// A connection asking to join.
struct Joiner {
    conn_id: u64,
    user_id: i64,
    node: String,
    meta: Value,
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
    members: HashMap<u64, Member>,
    /// Members per node: where broadcasts go.
    nodes: HashMap<Arc<str>, usize>,
    /// At most this many frames for a joiner's presence or a burst of changes.
    presence_frames: usize,
    /// Presence as last broadcast; a joiner gets it as `presence_state`, then the next diff.
    published: BTreeMap<u64, (i64, Value)>,
    /// Messages admitted and waiting for the next commit, with their publishers' replies.
    pending: Vec<(i64, Value, PublishReply)>,
    publish_scheduled: bool,
    /// The `presence_state` frame of `published`, built once per change.
    state_frames: Option<Vec<Arc<str>>>,
    pending_joins: Vec<(u64, i64, Value)>,
    pending_leaves: Vec<(u64, i64, Value)>,
    flush_scheduled: bool,
}

fn frame(v: &Value) -> Arc<str> {
    Arc::from(v.to_string())
}

/// The `message` frame of a stored message.
pub fn message_frame(room: &str, m: &RoomMessage) -> Value {
    json!({
        "op": "message", "room": room, "seq": m.seq, "from": m.from, "body": m.body,
        "ts": m.ts.to_rfc3339_opts(SecondsFormat::Micros, true),
    })
}

impl RoomState {
    fn name(&self) -> &str {
        self.key.id()
    }

    /// `{user_id: {"metas": [...]}}` over (user, meta) pairs.
    fn presences<'a>(entries: impl Iterator<Item = (i64, &'a Value)>) -> Value {
        let mut by_user: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (user, meta) in entries {
            by_user
                .entry(user.to_string())
                .or_default()
                .push(meta.clone());
        }
        Value::Object(
            by_user
                .into_iter()
                .map(|(u, metas)| (u, json!({ "metas": metas })))
                .collect(),
        )
    }

    fn broadcast(&self, v: &Value) {
        self.broadcast_frames(vec![frame(v)]);
    }

    /// Sends `frames` once to every node with members.
    fn broadcast_frames(&self, frames: Vec<Arc<str>>) {
        for node in self.nodes.keys() {
            send_frames(
                &self.cluster,
                &self.fanout,
                node,
                self.name(),
                None,
                frames.clone(),
            );
        }
    }

    /// The shared name of `node`.
    fn node_name(&self, node: &str) -> Arc<str> {
        self.nodes
            .get_key_value(node)
            .map_or_else(|| Arc::from(node), |(k, _)| k.clone())
    }

    fn add_member(&mut self, conn_id: u64, member: Member) {
        *self.nodes.entry(member.node.clone()).or_default() += 1;
        if let Some(old) = self.members.insert(conn_id, member) {
            self.forget_node(&old.node);
        }
    }

    fn forget_node(&mut self, node: &str) {
        if let Some(n) = self.nodes.get_mut(node) {
            *n -= 1;
            if *n == 0 {
                self.nodes.remove(node);
            }
        }
    }

    fn oldest(&self) -> i64 {
        self.history.front().map_or(self.seq + 1, |m| m.seq)
    }

    /// Messages after `since`, or a gap if some of them are no longer kept.
    fn after(&self, since: i64) -> Result<impl Iterator<Item = &RoomMessage>, RoomError> {
        if since + 1 < self.oldest() && since < self.seq {
            return Err(RoomError::HistoryGap {
                oldest: self.oldest(),
            });
        }
        Ok(self.history.iter().filter(move |m| m.seq > since))
    }

    async fn access(&self, user_id: i64) -> Result<bool, RoomError> {
        match self.kind {
            RoomKind::Open => Ok(true),
            RoomKind::Event(id) => {
                let answer = self
                    .events
                    .ask(EntityKey::new("event", id), |reply| EventMessage::Access {
                        user_id,
                        reply,
                    })
                    .await
                    .map_err(|_| RoomError::Unavailable)?;
                match answer {
                    Ok(a) => Ok(a.creator || a.attendee),
                    Err(EntityError::NotFound) => Err(RoomError::NotFound),
                    Err(_) => Err(RoomError::Unavailable),
                }
            }
        }
    }

    async fn join(
        &mut self,
        myself: &ActorRef<RoomCommand>,
        joiner: Joiner,
        since: Option<i64>,
        join_ref: Value,
    ) -> Result<(), RoomError> {
        let Joiner {
            conn_id,
            user_id,
            node,
            meta,
        } = joiner;
        let may_publish = self.access(user_id).await?;
        let missed: Vec<Value> = match since {
            Some(since) => self
                .after(since)?
                .map(|m| message_frame(self.name(), m))
                .collect(),
            None => Vec::new(),
        };
        if self.members.contains_key(&conn_id) {
            self.leave(myself, conn_id);
        }
        self.pending_joins.push((conn_id, user_id, meta.clone()));
        let mut frames = vec![frame(&json!({
            "op": "reply", "ref": join_ref, "status": "ok",
            "body": {"room": self.name(), "seq": self.seq},
        }))];
        frames.extend(self.state_frames());
        frames.extend(missed.iter().map(frame));
        send_frames(
            &self.cluster,
            &self.fanout,
            &node,
            self.name(),
            Some(conn_id),
            frames,
        );
        let member = Member {
            node: self.node_name(&node),
            user_id,
            meta,
            may_publish,
        };
        self.add_member(conn_id, member);
        self.schedule_flush(myself);
        Ok(())
    }

    fn leave(&mut self, myself: &ActorRef<RoomCommand>, conn_id: u64) {
        let Some(member) = self.members.remove(&conn_id) else {
            return;
        };
        self.forget_node(&member.node);
        self.pending_leaves
            .push((conn_id, member.user_id, member.meta));
        self.schedule_flush(myself);
    }

    /// Metas per frame for `n` metas: [`STATE_CHUNK`], or more when that would take more than
    /// the room's frame budget.
    fn chunk(&self, n: usize) -> usize {
        STATE_CHUNK.max(n.div_ceil(self.presence_frames))
    }

    /// The presence last broadcast, as a joiner receives it: a `presence_state` with the first
    /// metas, then `presence_diff` joins with the rest, a chunk of metas a frame, so frames
    /// (and the connections' write buffers) stay small.
    fn state_frames(&mut self) -> Vec<Arc<str>> {
        if let Some(f) = &self.state_frames {
            return f.clone();
        }
        let chunk = self.chunk(self.published.len());
        let entries: Vec<(i64, &Value)> = self.published.values().map(|(u, m)| (*u, m)).collect();
        let mut chunks = entries.chunks(chunk);
        let first = Self::presences(chunks.next().unwrap_or_default().iter().copied());
        let mut frames = vec![frame(
            &json!({"op": "presence_state", "room": self.name(), "presences": first}),
        )];
        for chunk in chunks {
            let joins = Self::presences(chunk.iter().copied());
            frames.push(frame(
                &json!({"op": "presence_diff", "room": self.name(), "joins": joins, "leaves": {}}),
            ));
        }
        self.state_frames = Some(frames.clone());
        frames
    }

    fn schedule_flush(&mut self, myself: &ActorRef<RoomCommand>) {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            myself.send_after(PRESENCE_WINDOW, || RoomCommand::FlushPresence);
        }
    }

    /// One `presence_diff` for every join and leave since the last one (joins apply first, so a
    /// connection that came and went within the window nets out).
    fn flush_presence(&mut self) {
        self.flush_scheduled = false;
        let joins = std::mem::take(&mut self.pending_joins);
        let leaves = std::mem::take(&mut self.pending_leaves);
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        for (conn, user, meta) in &joins {
            self.published.insert(*conn, (*user, meta.clone()));
        }
        for (conn, _, _) in &leaves {
            self.published.remove(conn);
        }
        self.state_frames = None;
        // Joins go out before leaves, a chunk of metas a frame, so a burst of arrivals neither
        // makes one large frame nor more frames than a connection's queue holds.
        let empty = || Self::presences(std::iter::empty());
        let size = self.chunk(joins.len() + leaves.len());
        for chunk in joins.chunks(size) {
            let joins = Self::presences(chunk.iter().map(|(_, u, m)| (*u, m)));
            self.broadcast(&json!({"op": "presence_diff", "room": self.name(), "joins": joins, "leaves": empty()}));
        }
        for chunk in leaves.chunks(size) {
            let leaves = Self::presences(chunk.iter().map(|(_, u, m)| (*u, m)));
            self.broadcast(&json!({"op": "presence_diff", "room": self.name(), "joins": empty(), "leaves": leaves}));
        }
    }

    /// Checks that the connection may publish; the message then waits for the next commit.
    async fn admit(&mut self, conn_id: u64) -> Result<i64, RoomError> {
        let member = self.members.get(&conn_id).ok_or(RoomError::NotJoined)?;
        let (user_id, may_publish) = (member.user_id, member.may_publish);
        if !may_publish {
            // The user may have registered since joining.
            if !self.access(user_id).await? {
                return Err(RoomError::Forbidden);
            }
            if let Some(m) = self.members.get_mut(&conn_id) {
                m.may_publish = true;
            }
        }
        Ok(user_id)
    }

    /// Stores every waiting message in one transaction, then broadcasts and acknowledges each:
    /// a publisher's `ok` means its message is stored.
    async fn commit_pending(&mut self) {
        self.publish_scheduled = false;
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return;
        }
        let ts = Utc::now().trunc_subsecs(6);
        let messages: Vec<RoomMessage> = pending
            .iter()
            .zip(self.seq + 1..)
            .map(|((from, body, _), seq)| RoomMessage {
                seq,
                from: *from,
                body: body.clone(),
                ts,
            })
            .collect();
        match self
            .store
            .append_room(self.name(), &messages, HISTORY as i64)
            .await
        {
            Ok(()) => {}
            Err(e) => {
                if e == StoreError::Conflict {
                    // Another activation wrote these seqs: take up its history; clients retry.
                    let _ = self.load().await;
                }
                for (_, _, reply) in pending {
                    let _ = reply.send(Err(RoomError::Unavailable));
                }
                return;
            }
        }
        for (message, (_, _, reply)) in messages.into_iter().zip(pending) {
            self.seq = message.seq;
            self.broadcast(&message_frame(self.name(), &message));
            let _ = reply.send(Ok(message.seq));
            self.history.push_back(message);
        }
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    /// Takes back the connections the node's fan-out still delivers to (after a crash the
    /// clients are still there; only the actor's memory of them was lost). Presence is as it
    /// was for them, so no diff goes out; publish rights are checked again on the next publish.
    async fn retrack(&mut self) {
        for node in self.cluster.live_nodes() {
            let members = members_on(&self.cluster, &self.fanout, &node, self.name())
                .await
                .unwrap_or_default();
            for m in members {
                self.published
                    .insert(m.conn_id, (m.user_id, m.meta.clone()));
                let member = Member {
                    node: self.node_name(&node),
                    user_id: m.user_id,
                    meta: m.meta,
                    may_publish: false,
                };
                self.add_member(m.conn_id, member);
            }
        }
        if !self.members.is_empty() {
            tracing::info!(room = %self.key, members = self.members.len(), "room took back its connections");
            // The members may have missed presence changes while the room was away: they get
            // the whole presence again.
            let frames = self.state_frames();
            self.broadcast_frames(frames);
        }
    }

    /// Members whose node went down leave.
    fn check_nodes(&mut self, myself: &ActorRef<RoomCommand>) {
        let gone: Vec<Arc<str>> = self
            .nodes
            .keys()
            .filter(|n| !self.cluster.is_live(n))
            .cloned()
            .collect();
        for node in gone {
            let conns: Vec<u64> = self
                .members
                .iter()
                .filter(|(_, m)| m.node == node)
                .map(|(id, _)| *id)
                .collect();
            tracing::info!(room = %self.key, %node, members = conns.len(), "members of a node that went down leave");
            for id in conns {
                self.leave(myself, id);
            }
        }
    }

    async fn load(&mut self) -> Result<(), StoreError> {
        self.history = self
            .store
            .load_room(self.key.id(), HISTORY as i64)
            .await?
            .into();
        self.seq = self.history.back().map_or(0, |m| m.seq);
        Ok(())
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
            members: HashMap::new(),
            nodes: HashMap::new(),
            presence_frames: args.presence_frames,
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
                conn_id,
                user_id,
                node,
                meta,
                since,
                join_ref,
                reply,
            } => {
                let joiner = Joiner {
                    conn_id,
                    user_id,
                    node,
                    meta,
                };
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
                Ok(user_id) => {
                    state.pending.push((user_id, body, reply));
                    if !state.publish_scheduled {
                        // Queued behind the publishes already in the mailbox: one commit for all.
                        // A draining room (being handed off) takes no new messages: it commits
                        // at once instead.
                        state.publish_scheduled = true;
                        if myself.cast(RoomCommand::CommitMessages).is_err() {
                            state.commit_pending().await;
                        }
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            RoomCommand::CommitMessages => state.commit_pending().await,
            RoomCommand::InjectFault => panic!("fault injected into {}", state.key),
            RoomCommand::Presence(reply) => {
                let members = state.members.values().map(|m| (m.user_id, &m.meta));
                let _ = reply.send(Ok(RoomState::presences(members)));
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

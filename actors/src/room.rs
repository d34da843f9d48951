//! The room actor: owns one live room (`event:{id}` or `room:{name}`): its members and their
//! presence (one meta per connection, Phoenix style), its sequence numbers and the last messages,
//! persisted so history survives a restart. Broadcasts go once to the node's fan-out.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, SubsecRound, Utc};
use convene_cluster::wire::{Answer, Forwardable, Responder, WireError};
use convene_cluster::{EntityFactory, EntityKey, Router, ShardMessage, Spawning};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Map, Value, json};

use crate::EntityError;
use crate::event::EventMessage;
use crate::fanout::{Conn, FanOutMessage};
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// A connection joins; the room queues its reply, the presence state and the missed
    /// messages on the connection itself, so they come before any live traffic.
    Join {
        /// The connection.
        conn: Arc<Conn>,
        /// Client metadata for its presence.
        meta: Map<String, Value>,
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
    /// Panics inside the handler, for supervision tests and fault drills.
    InjectFault,
}

impl ractor::Message for RoomCommand {}

impl Forwardable for RoomCommand {
    /// A room lives on the node its members' connections reach it from.
    fn placed() -> bool {
        false
    }

    fn into_wire(self) -> Result<(Vec<u8>, Responder), Self> {
        Err(self)
    }

    fn from_wire(_: &[u8]) -> Result<(Self, Answer), WireError> {
        Err(WireError::new("rooms take no forwarded messages"))
    }
}

/// The answer to a publish: the message's seq once it is stored.
type PublishReply = RpcReplyPort<Result<i64, RoomError>>;

/// Metas per frame when a joiner is sent the room's presence.
const STATE_CHUNK: usize = 16;

/// How long presence changes are gathered into one `presence_diff`.
const PRESENCE_WINDOW: Duration = Duration::from_millis(20);

/// Starts room actors for the shard.
pub struct RoomFactory {
    store: Arc<dyn Store>,
    events: Router<EventMessage>,
    fanout: ActorRef<FanOutMessage>,
    idle_after: Duration,
}

impl RoomFactory {
    /// Rooms that check events through `events` and broadcast through `fanout`.
    pub fn new(
        store: Arc<dyn Store>,
        events: Router<EventMessage>,
        fanout: ActorRef<FanOutMessage>,
        idle_after: Duration,
    ) -> Self {
        Self {
            store,
            events,
            fanout,
            idle_after,
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
            shard,
            idle_after: self.idle_after,
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
    shard: ActorRef<ShardMessage<RoomCommand>>,
    idle_after: Duration,
}

/// The room actor.
pub struct RoomActor;

struct Member {
    conn: Arc<Conn>,
    meta: Value,
    may_publish: bool,
}

/// Everything a room actor holds.
pub struct RoomState {
    key: EntityKey,
    kind: RoomKind,
    store: Arc<dyn Store>,
    events: Router<EventMessage>,
    fanout: ActorRef<FanOutMessage>,
    shard: ActorRef<ShardMessage<RoomCommand>>,
    idle: Idle,
    seq: i64,
    history: VecDeque<RoomMessage>,
    members: HashMap<u64, Member>,
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
        let _ = self.fanout.cast(FanOutMessage::Deliver {
            room: self.name().to_owned(),
            frame: frame(v),
        });
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
        conn: Arc<Conn>,
        meta: Map<String, Value>,
        since: Option<i64>,
        join_ref: Value,
    ) -> Result<(), RoomError> {
        let may_publish = self.access(conn.user_id).await?;
        let missed: Vec<Value> = match since {
            Some(since) => self
                .after(since)?
                .map(|m| message_frame(self.name(), m))
                .collect(),
            None => Vec::new(),
        };
        if self.members.contains_key(&conn.id) {
            self.leave(myself, conn.id);
        }
        let mut meta = meta;
        meta.insert("conn".into(), json!(conn.id.to_string()));
        meta.insert(
            "online_at".into(),
            json!(
                Utc::now()
                    .trunc_subsecs(6)
                    .to_rfc3339_opts(SecondsFormat::Micros, true)
            ),
        );
        let member = Member {
            conn: conn.clone(),
            meta: Value::Object(meta),
            may_publish,
        };
        self.pending_joins
            .push((conn.id, conn.user_id, member.meta.clone()));
        self.members.insert(conn.id, member);
        let room = self.name().to_owned();
        conn.push(frame(&json!({
            "op": "reply", "ref": join_ref, "status": "ok",
            "body": {"room": room, "seq": self.seq},
        })));
        for f in self.state_frames() {
            conn.push(f);
        }
        for m in missed {
            conn.push(frame(&m));
        }
        let meta = self
            .members
            .get(&conn.id)
            .map(|m| m.meta.clone())
            .unwrap_or_default();
        let _ = self
            .fanout
            .cast(FanOutMessage::Subscribe { room, conn, meta });
        self.schedule_flush(myself);
        Ok(())
    }

    fn leave(&mut self, myself: &ActorRef<RoomCommand>, conn_id: u64) {
        let Some(member) = self.members.remove(&conn_id) else {
            return;
        };
        let room = self.name().to_owned();
        let _ = self
            .fanout
            .cast(FanOutMessage::Unsubscribe { room, conn_id });
        self.pending_leaves
            .push((conn_id, member.conn.user_id, member.meta));
        self.schedule_flush(myself);
    }

    /// The `presence_state` frame of the presence last broadcast.
    /// The presence last broadcast, as a joiner receives it: a `presence_state` with the first
    /// metas, then `presence_diff` joins with the rest, [`STATE_CHUNK`] metas a frame, so no
    /// frame (and no connection's write buffer) grows with the size of the room.
    fn state_frames(&mut self) -> Vec<Arc<str>> {
        if let Some(f) = &self.state_frames {
            return f.clone();
        }
        let entries: Vec<(i64, &Value)> = self.published.values().map(|(u, m)| (*u, m)).collect();
        let mut chunks = entries.chunks(STATE_CHUNK);
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
        // Joins go out before leaves, STATE_CHUNK metas a frame, so a burst of arrivals never
        // makes one large frame.
        let empty = || Self::presences(std::iter::empty());
        for chunk in joins.chunks(STATE_CHUNK) {
            let joins = Self::presences(chunk.iter().map(|(_, u, m)| (*u, m)));
            self.broadcast(&json!({"op": "presence_diff", "room": self.name(), "joins": joins, "leaves": empty()}));
        }
        for chunk in leaves.chunks(STATE_CHUNK) {
            let leaves = Self::presences(chunk.iter().map(|(_, u, m)| (*u, m)));
            self.broadcast(&json!({"op": "presence_diff", "room": self.name(), "joins": empty(), "leaves": leaves}));
        }
    }

    /// Checks that the connection may publish; the message then waits for the next commit.
    async fn admit(&mut self, conn_id: u64) -> Result<i64, RoomError> {
        let member = self.members.get(&conn_id).ok_or(RoomError::NotJoined)?;
        let (user_id, may_publish) = (member.conn.user_id, member.may_publish);
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
        let room = self.name().to_owned();
        let members = ractor::call_t!(
            self.fanout,
            |reply| FanOutMessage::Members { room, reply },
            1000
        )
        .unwrap_or_default();
        for (conn, meta) in members {
            let user = conn.user_id;
            self.published.insert(conn.id, (user, meta.clone()));
            self.members.insert(
                conn.id,
                Member {
                    conn,
                    meta,
                    may_publish: false,
                },
            );
        }
        if !self.members.is_empty() {
            tracing::info!(room = %self.key, members = self.members.len(), "room took back its connections");
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
            shard: args.shard,
            idle: Idle::new(args.idle_after),
            seq: 0,
            history: VecDeque::new(),
            members: HashMap::new(),
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
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomCommand>,
        message: RoomCommand,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, RoomCommand::Tick) {
            state.idle.touch();
        }
        match message {
            RoomCommand::Join {
                conn,
                meta,
                since,
                join_ref,
                reply,
            } => {
                let _ = reply.send(state.join(&myself, conn, meta, since, join_ref).await);
            }
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
                        state.publish_scheduled = true;
                        myself.cast(RoomCommand::CommitMessages)?;
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            RoomCommand::CommitMessages => state.commit_pending().await,
            RoomCommand::InjectFault => panic!("fault injected into {}", state.key),
            RoomCommand::Presence(reply) => {
                let members = state.members.values().map(|m| (m.conn.user_id, &m.meta));
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
                // Connections that closed without a word leave now.
                let gone: Vec<u64> = state
                    .members
                    .iter()
                    .filter(|(_, m)| m.conn.is_closed())
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    state.leave(&myself, id);
                }
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

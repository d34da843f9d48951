//! What a signed-in connection asks, one client frame at a time: join, leave, publish and ping,
//! each sent to the room's owner through the router and answered with a reply carrying its `ref`.

use std::num::NonZeroU32;
use std::sync::Arc;

use convene_actors::fanout::{Conn, FanOutMessage};
use convene_actors::protocol::{self, ClientFrame, ClientOp, ReplyBody, ServerFrame};
use convene_actors::room::{self, Joiner, MAX_PRESENCE_PAGE, RoomCommand, RoomError, parse_room};
use futures::stream::FuturesOrdered;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value, json};

use crate::app::App;

/// Connections per presence page, unless the client asks for another size.
const PRESENCE_PAGE: usize = 100;

/// A reply that is ready once the room has answered.
pub(super) type PendingReply =
    std::pin::Pin<Box<dyn std::future::Future<Output = Arc<str>> + Send>>;

/// A connection's state while it handles one frame.
pub(super) struct Session<'a> {
    pub app: &'a App,
    pub conn: &'a Arc<Conn>,
    pub joined: &'a mut Vec<String>,
    pub per_sec: NonZeroU32,
    pub publishing: &'a mut Option<Publishing>,
}

/// What a connection that publishes keeps: its rate limit, and the replies of its publishes,
/// which go out in the order the publishes came, each once its room answered.
pub(super) struct Publishing {
    limiter: DefaultDirectRateLimiter,
    pub replies: FuturesOrdered<PendingReply>,
}

/// The connection leaves `room`: this node stops delivering its frames, and the room (wherever
/// it lives) removes its presence.
pub(super) fn leave(app: &App, room: &str, conn_id: u64) {
    let _ = app.fanout.cast(FanOutMessage::Unsubscribe {
        room: room.to_owned(),
        conn_id,
    });
    let _ = app
        .rooms
        .tell(room::key(room), RoomCommand::Leave { conn_id });
}

fn unavailable(reference: Value) -> Arc<str> {
    ServerFrame::error(reference, "unavailable", "the room is unavailable; retry").encode()
}

fn room_reply(reference: Value, room: String, seq: Option<i64>) -> Arc<str> {
    let body = ReplyBody {
        room: Some(room),
        seq,
        ..ReplyBody::default()
    };
    ServerFrame::ok(reference, body).encode()
}

/// The reply to a request the room refused.
fn refused(reference: Value, e: &RoomError) -> Arc<str> {
    let mut frame = ServerFrame::error(reference, e.reason(), e);
    if let (RoomError::HistoryGap { oldest }, ServerFrame::Reply { body, .. }) = (e, &mut frame) {
        body.oldest = Some(*oldest);
    }
    frame.encode()
}

impl Session<'_> {
    fn push(&self, frame: Arc<str>) {
        self.conn.push(frame);
    }

    pub(super) async fn handle(&mut self, frame: ClientFrame) {
        let r = frame.reference;
        match frame.op {
            ClientOp::Ping => self.push(ServerFrame::ok(r, ReplyBody::default()).encode()),
            ClientOp::Auth { .. } => self.push(
                ServerFrame::error(r, "already_authenticated", "this connection is signed in")
                    .encode(),
            ),
            ClientOp::Join { room, since, meta } => {
                if valid_room(&room) {
                    self.join(r, room, since, meta).await;
                } else {
                    self.push(refused(r, &RoomError::InvalidRoom));
                }
            }
            ClientOp::Leave { room } => {
                if !valid_room(&room) {
                    self.push(refused(r, &RoomError::InvalidRoom));
                } else if let Some(i) = self.joined.iter().position(|j| *j == room) {
                    self.joined.swap_remove(i);
                    leave(self.app, &room, self.conn.id);
                    self.push(room_reply(r, room, None));
                } else {
                    self.push(refused(r, &RoomError::NotJoined));
                }
            }
            ClientOp::Presence { room, after, limit } => {
                if valid_room(&room) {
                    self.presence(r, room, after, limit).await;
                } else {
                    self.push(refused(r, &RoomError::InvalidRoom));
                }
            }
            ClientOp::Publish { room, body } => {
                if valid_room(&room) {
                    self.publish(r, room, body);
                } else {
                    self.push(refused(r, &RoomError::InvalidRoom));
                }
            }
        }
    }

    async fn join(
        &mut self,
        r: Value,
        room: String,
        since: Option<i64>,
        meta: Option<Map<String, Value>>,
    ) {
        let (app, conn) = (self.app, self.conn);
        let mut meta = meta.unwrap_or_default();
        meta.insert("conn".into(), json!(conn.id.to_string()));
        // Unix milliseconds: presence frames carry one per connection, and a connection's
        // write buffer keeps the size of the largest frame it wrote.
        meta.insert(
            "online_at".into(),
            json!(chrono::Utc::now().timestamp_millis()),
        );
        let meta = protocol::meta(&meta);
        // Subscribed first: the room's answer reaches the connection through this node's
        // fan-out, followed by live traffic, wherever the room lives.
        let _ = app.fanout.cast(FanOutMessage::Subscribe {
            room: room.clone(),
            conn: conn.clone(),
            meta: meta.clone(),
        });
        let conn_id = conn.id;
        let joiner = Joiner {
            conn_id,
            user_id: conn.user_id,
            node: app.cluster.local().to_owned(),
            meta,
        };
        let join_ref = r.clone();
        let answer = app
            .rooms
            .ask(room::key(&room), |reply| RoomCommand::Join {
                joiner,
                since,
                join_ref,
                reply,
            })
            .await;
        if !matches!(answer, Ok(Ok(()))) && !self.joined.contains(&room) {
            let _ = app.fanout.cast(FanOutMessage::Unsubscribe {
                room: room.clone(),
                conn_id,
            });
        }
        match answer {
            Ok(Ok(())) => {
                if !self.joined.contains(&room) {
                    self.joined.push(room);
                }
            }
            Ok(Err(e)) => self.push(refused(r, &e)),
            Err(_) => self.push(unavailable(r)),
        }
    }

    async fn presence(
        &mut self,
        r: Value,
        room: String,
        after: Option<String>,
        limit: Option<usize>,
    ) {
        let after = match after.map(|a| a.parse::<u64>()) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => {
                let message = "after must be the next of a previous page";
                self.push(ServerFrame::error(r, "invalid_frame", message).encode());
                return;
            }
        };
        let limit = limit.unwrap_or(PRESENCE_PAGE);
        if !(1..=MAX_PRESENCE_PAGE).contains(&limit) {
            let message = format!("limit must be 1 to {MAX_PRESENCE_PAGE}");
            self.push(ServerFrame::error(r, "invalid_frame", message).encode());
            return;
        }
        let answer = self
            .app
            .rooms
            .ask(room::key(&room), |reply| RoomCommand::Presence {
                after,
                limit,
                reply,
            })
            .await;
        let frame = match answer {
            Ok(Ok(page)) => {
                let body = ReplyBody {
                    room: Some(room),
                    presences: Some(page.presences),
                    connections: Some(page.connections),
                    users: Some(page.users),
                    next: page.next.map(|n| n.to_string()),
                    ..ReplyBody::default()
                };
                ServerFrame::ok(r, body).encode()
            }
            Ok(Err(e)) => refused(r, &e),
            Err(_) => unavailable(r),
        };
        self.push(frame);
    }

    fn publish(&mut self, r: Value, room: String, body: Value) {
        let per_sec = self.per_sec;
        let publishing = self.publishing.get_or_insert_with(|| Publishing {
            limiter: RateLimiter::direct(Quota::per_second(per_sec)),
            replies: FuturesOrdered::new(),
        });
        if publishing.limiter.check().is_err() {
            self.push(
                ServerFrame::error(r, "rate_limited", "too many publishes; slow down").encode(),
            );
            return;
        }
        if !body.is_object() {
            self.push(ServerFrame::error(r, "invalid_body", "body must be a JSON object").encode());
            return;
        }
        if !self.joined.contains(&room) {
            self.push(refused(r, &RoomError::NotJoined));
            return;
        }
        let conn_id = self.conn.id;
        // Sent now, answered when stored: the next frame is read meanwhile, so one
        // connection's publishes share the room's commits, and stay in order.
        let sent = self
            .app
            .rooms
            .send(room::key(&room), |reply| RoomCommand::Publish {
                conn_id,
                body,
                reply,
            });
        publishing.replies.push_back(Box::pin(async move {
            let answer = match sent {
                Ok(waiting) => waiting.await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(Ok(seq)) => room_reply(r, room, Some(seq)),
                Ok(Err(e)) => refused(r, &e),
                Err(_) => unavailable(r),
            }
        }));
    }
}

fn valid_room(room: &str) -> bool {
    parse_room(room).is_ok()
}

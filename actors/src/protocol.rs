//! The WebSocket protocol, typed once: the frames a client sends ([`ClientFrame`]) and the frames
//! it receives ([`ServerFrame`]). The edge parses with the first, the edge and the room actor
//! write with the second, and the node's AsyncAPI document is generated from both.

use std::collections::BTreeMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A frame from a client. Every frame may carry a `ref` (any JSON value), echoed in its reply.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ClientFrame {
    /// Echoed in the reply to this frame.
    #[serde(rename = "ref", default)]
    pub reference: Value,
    /// What the client asks.
    #[serde(flatten)]
    pub op: ClientOp,
}

/// What a client frame asks, by its `op`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientOp {
    /// Signs the connection in, as the first frame within 5 s, when the URL carried no
    /// `?token=`. A bad token closes the connection with 4001.
    Auth {
        /// An access token from `POST /api/v1/auth/login`.
        token: String,
    },
    /// Joins a room: the reply, then a `presence_state` (a `presence_count` in a room in
    /// counts mode), then the messages missed since `since`, then live traffic.
    Join {
        /// `room:{name}` (open to anyone signed in) or `event:{id}`.
        room: String,
        /// Resume after this seq: the messages after it are sent (`history_gap` when older
        /// than the last 200).
        #[serde(default)]
        since: Option<i64>,
        /// Added to this connection's presence meta.
        #[serde(default)]
        meta: Option<Map<String, Value>>,
    },
    /// Leaves a room.
    Leave {
        /// The room.
        room: String,
    },
    /// Publishes a message to a joined room (at most `ws_publish_per_sec` a second); the reply
    /// carries its seq once it is stored.
    Publish {
        /// The room.
        room: String,
        /// The message: a JSON object (anything else is answered `invalid_body`).
        #[serde(default)]
        body: Value,
    },
    /// Asks who is in a room, a page at a time, by connection: the reply carries `presences`,
    /// the room's `connections` and `users`, and `next` when more follow. Any signed-in user may
    /// ask, joined or not.
    Presence {
        /// The room.
        room: String,
        /// The `next` of the previous page (absent: the first page).
        #[serde(default)]
        after: Option<String>,
        /// Connections per page, 1 to 1000 (default 100).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Answered with an `ok` reply.
    Ping,
}

/// Why a text frame is not a client frame: the reply's reason and message.
#[derive(Debug, PartialEq)]
pub struct FrameError {
    /// The frame's `ref`, when it had one.
    pub reference: Value,
    /// `invalid_json`, `unknown_op`, `invalid_room` or `invalid_frame`.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// The ops of [`ClientOp`] that name a room.
const ROOM_OPS: [&str; 4] = ["join", "leave", "publish", "presence"];
/// Every op of [`ClientOp`].
const OPS: [&str; 6] = ["auth", "join", "leave", "publish", "presence", "ping"];

impl ClientFrame {
    /// Parses a text frame, telling malformed JSON, unknown ops, missing rooms and other
    /// missing or mistyped fields apart.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        serde_json::from_str(text).map_err(|typed| {
            let value: Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    return FrameError {
                        reference: Value::Null,
                        reason: "invalid_json",
                        message: e.to_string(),
                    };
                }
            };
            let reference = value.get("ref").cloned().unwrap_or(Value::Null);
            let op = value.get("op").and_then(Value::as_str).unwrap_or_default();
            let (reason, message) = if !OPS.contains(&op) {
                ("unknown_op", format!("unknown op `{op}`"))
            } else if ROOM_OPS.contains(&op) && !value.get("room").is_some_and(Value::is_string) {
                (
                    "invalid_room",
                    "room must be room:{name} or event:{id}".to_owned(),
                )
            } else {
                ("invalid_frame", typed.to_string())
            };
            FrameError {
                reference,
                reason,
                message,
            }
        })
    }
}

/// The presences of a room by user id: `{"7": {"metas": [...]}}`, one meta per connection.
pub type Presences = BTreeMap<String, UserPresence>;

/// A connection's presence meta: a JSON object kept as its text, shared by the room, the fan-out
/// and every presence frame it appears in (a few dozen bytes per connection).
pub type Meta = Arc<RawValue>;

/// The meta of a connection: the client's fields, as JSON text.
pub fn meta(fields: &Map<String, Value>) -> Meta {
    // Serialising a map of JSON values cannot fail, and gives valid JSON.
    let text = serde_json::to_string(fields).unwrap_or_else(|_| "{}".to_owned());
    RawValue::from_string(text)
        .map(Arc::from)
        .unwrap_or_else(|_| Arc::from(RawValue::NULL.to_owned()))
}

/// One user's connections in a room.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct UserPresence {
    /// One per connection: the client's `meta`, with `conn` (the connection id) and
    /// `online_at` (Unix milliseconds).
    #[schemars(with = "Vec<Map<String, Value>>")]
    pub metas: Vec<Meta>,
}

/// How a room tells its members who is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresenceMode {
    /// A `presence_state`, then `presence_diff`s: every member knows every connection.
    Full,
    /// Above the room's presence limit: `presence_count`s only, at most one a second; the list
    /// is asked for with the `presence` op.
    Counts,
}

/// Whether a request succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Done; the body says what it gave.
    Ok,
    /// Refused; the body says why.
    Error,
}

/// The body of a reply: what an `ok` gave, or why an `error`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct ReplyBody {
    /// The room joined, left or published to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// After a join, the room's last seq; after a publish, the message's seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// Why not: `invalid_json`, `invalid_frame`, `unknown_op`, `invalid_room`, `not_joined`,
    /// `forbidden`, `room_not_found`, `history_gap`, `invalid_body`, `rate_limited`,
    /// `already_authenticated`, `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// With `history_gap`: the oldest seq the room still keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<i64>,
    /// After a join: how the room sends presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceMode>,
    /// After a `presence` request: a page of the room's connections, by user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presences: Option<Presences>,
    /// After a `presence` request: the room's connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    /// After a `presence` request: the room's distinct users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<usize>,
    /// After a `presence` request: the `after` of the next page, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A frame to a client, by its `op`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The answer to a client frame, carrying its `ref`.
    Reply {
        /// The client frame's `ref`.
        #[serde(rename = "ref")]
        reference: Value,
        /// Done or refused.
        status: Status,
        /// What it gave, or why not.
        body: ReplyBody,
    },
    /// A message published to a room the connection joined; seqs are gap-free per room.
    Message {
        /// The room.
        room: String,
        /// Its place in the room.
        seq: i64,
        /// The user who published it.
        from: i64,
        /// What they published.
        body: Value,
        /// When it was stored (RFC 3339, microseconds).
        ts: String,
    },
    /// Who is in a room, sent on join (and again when the room moved to another node, or fell
    /// back to half its presence limit); the `presence_diff`s after it compose with it.
    PresenceState {
        /// The room.
        room: String,
        /// Users and their connections.
        presences: Presences,
    },
    /// Connections that joined and left a room, gathered over 20 ms; joins apply first.
    PresenceDiff {
        /// The room.
        room: String,
        /// Connections that joined.
        joins: Presences,
        /// Connections that left.
        leaves: Presences,
    },
    /// How many are in a room in counts mode: sent on join, then at most once a second while
    /// the counts change. It replaces any presence list the client holds: no `presence_diff`
    /// follows until the next `presence_state`.
    PresenceCount {
        /// The room.
        room: String,
        /// Connections joined.
        connections: usize,
        /// Distinct users among them.
        users: usize,
    },
}

impl ServerFrame {
    /// An `ok` reply to the frame `reference`.
    pub fn ok(reference: Value, body: ReplyBody) -> Self {
        Self::Reply {
            reference,
            status: Status::Ok,
            body,
        }
    }

    /// An `error` reply to the frame `reference`.
    pub fn error(reference: Value, reason: &str, message: impl ToString) -> Self {
        Self::Reply {
            reference,
            status: Status::Error,
            body: ReplyBody {
                reason: Some(reason.to_owned()),
                message: Some(message.to_string()),
                ..ReplyBody::default()
            },
        }
    }

    /// The frame's text, shared by every connection it goes to.
    pub fn encode(&self) -> Arc<str> {
        // Serialising these types cannot fail: every map key is a string.
        Arc::from(serde_json::to_string(self).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn client_frames_parse_by_op() {
        let f = ClientFrame::parse(r#"{"op":"join","room":"room:a","ref":3,"since":4}"#).unwrap();
        assert_eq!(f.reference, json!(3));
        assert!(
            matches!(f.op, ClientOp::Join { ref room, since: Some(4), meta: None } if room == "room:a")
        );
        let f = ClientFrame::parse(r#"{"op":"ping"}"#).unwrap();
        assert_eq!(f.reference, Value::Null);
        assert!(matches!(f.op, ClientOp::Ping));
    }

    #[test]
    fn bad_frames_say_why() {
        let reason = |text: &str| ClientFrame::parse(text).unwrap_err().reason;
        assert_eq!(reason("{not json"), "invalid_json");
        assert_eq!(reason(r#"{"op":"dance","ref":2}"#), "unknown_op");
        assert_eq!(reason(r#"{"ref":2}"#), "unknown_op");
        assert_eq!(reason(r#"{"op":"join","ref":3}"#), "invalid_room");
        assert_eq!(
            reason(r#"{"op":"join","room":"room:a","since":"x"}"#),
            "invalid_frame"
        );
        let e = ClientFrame::parse(r#"{"op":"dance","ref":"x"}"#).unwrap_err();
        assert_eq!(e.reference, json!("x"));
    }

    #[test]
    fn server_frames_lead_with_their_op() {
        let f = ServerFrame::ok(
            json!(1),
            ReplyBody {
                room: Some("room:a".into()),
                seq: Some(2),
                ..ReplyBody::default()
            },
        );
        assert_eq!(
            &*f.encode(),
            r#"{"op":"reply","ref":1,"status":"ok","body":{"room":"room:a","seq":2}}"#
        );
        let e = ServerFrame::error(json!(null), "not_joined", "join the room first");
        let v: Value = serde_json::from_str(&e.encode()).unwrap();
        assert_eq!(
            v["body"],
            json!({"reason": "not_joined", "message": "join the room first"})
        );
    }
}

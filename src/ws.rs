//! The WebSocket edge: `GET /ws?token=…` (or a first `{"op":"auth"}` frame within 5 s), then
//! JSON frames to join, leave and publish in rooms. Each connection has a bounded outbound queue
//! fed by the rooms and the node's fan-out; its reader applies limits (64 KiB frames, a publish
//! rate, a heartbeat) and answers every client frame with a reply carrying its `ref`.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use convene_actors::fanout::{Conn, FanOutMessage};
use convene_actors::room::{RoomCommand, RoomError, parse_room};
use convene_cluster::EntityKey;
use futures::{SinkExt, StreamExt};
use governor::{Quota, RateLimiter};
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use warp::Reply;
use warp::reply::Response;

use crate::app::App;

/// Largest client frame; a larger one closes the connection with 1009.
pub const MAX_FRAME: usize = 64 * 1024;
/// Close code for a missing, invalid, expired or revoked token.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// Close code for a frame over [`MAX_FRAME`].
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a connection that stopped answering the heartbeat.
pub const CLOSE_TIMEOUT: u16 = 4000;
/// How long a closing connection's last frames and close frame may take to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Connection ids: a random start per process among 2^40, so the ids of the cluster's nodes do
/// not meet, while staying short in presence frames.
static NEXT_CONN: LazyLock<AtomicU64> =
    LazyLock::new(|| AtomicU64::new(rand::random::<u64>() >> 24));

/// A reply that is ready once the room has answered.
type PendingReply = std::pin::Pin<Box<dyn std::future::Future<Output = Arc<str>> + Send>>;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Whether a request asks to open the WebSocket at `/ws`.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.uri().path() == "/ws" && req.headers().contains_key(SEC_WEBSOCKET_KEY)
}

/// Answers a `/ws` upgrade request with 101 and serves the connection once upgraded. The socket
/// is configured here, not by the HTTP framework, so an idle connection keeps small buffers.
pub fn upgrade(app: App, mut req: Request<Incoming>) -> Response {
    let headers = req.headers();
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let wants_upgrade = header(CONNECTION).is_some_and(|v| {
        v.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("upgrade"))
    }) && header(UPGRADE).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && header(SEC_WEBSOCKET_VERSION) == Some("13");
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY).filter(|_| wants_upgrade) else {
        let body = json!({
            "error": "bad_request", "message": "this endpoint takes WebSocket upgrades", "details": {}
        });
        return warp::reply::with_status(warp::reply::json(&body), StatusCode::BAD_REQUEST)
            .into_response();
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let token = req.uri().query().and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()
            .and_then(|pairs| {
                pairs
                    .into_iter()
                    .find(|(k, _)| k == "token")
                    .map(|(_, v)| v)
            })
    });
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        // Small buffers that grow for large frames: idle connections stay cheap.
        let config = WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_FRAME * 4))
            .max_frame_size(Some(MAX_FRAME * 4));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        serve(app, socket, token).await;
    });
    let mut res = warp::reply().into_response();
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    }))
}

/// A frame shared by every connection it goes to, without a copy per connection.
struct Shared(Arc<str>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

fn text(frame: Arc<str>) -> Message {
    match Utf8Bytes::try_from(Bytes::from_owner(Shared(frame))) {
        Ok(t) => Message::Text(t),
        Err(_) => Message::Text(Utf8Bytes::from_static("")),
    }
}

#[derive(Deserialize)]
struct ClientFrame {
    op: String,
    #[serde(default, rename = "ref")]
    reference: Value,
    room: Option<String>,
    since: Option<i64>,
    meta: Option<Map<String, Value>>,
    body: Option<Value>,
    token: Option<String>,
}

fn reply(reference: &Value, status: &str, body: Value) -> Arc<str> {
    Arc::from(json!({"op": "reply", "ref": reference, "status": status, "body": body}).to_string())
}

fn error(
    reference: &Value,
    reason: &str,
    message: impl std::fmt::Display,
    extra: Value,
) -> Arc<str> {
    let mut body = json!({"reason": reason, "message": message.to_string()});
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    reply(reference, "error", body)
}

async fn authenticate(app: &App, socket: &mut Socket, token: Option<String>) -> Option<i64> {
    let token = match token {
        Some(t) => t,
        None => {
            let first = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
            let Ok(Some(Ok(msg))) = first else {
                return None;
            };
            let frame: ClientFrame = serde_json::from_str(msg.to_text().ok()?).ok()?;
            if frame.op != "auth" {
                return None;
            }
            frame.token?
        }
    };
    let caller = app
        .authenticate(Some(&format!("Bearer {token}")))
        .await
        .ok()?;
    Some(caller.principal.user_id)
}

async fn serve(app: App, mut socket: Socket, token: Option<String>) {
    let Some(user_id) = authenticate(&app, &mut socket, token).await else {
        let _ = socket.send(close(CLOSE_UNAUTHORIZED, "unauthorized")).await;
        return;
    };
    let (tx, rx) = mpsc::channel(app.config.ws_outbound_queue.max(1));
    let conn = Arc::new(Conn::new(
        NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        user_id,
        tx,
    ));
    let (sink, stream) = socket.split();
    let heartbeat = Duration::from_secs(app.config.ws_heartbeat_secs.max(1));
    let writer = tokio::spawn(write(sink, rx, conn.clone(), heartbeat));
    let mut joined = HashSet::new();
    let mut stream = stream;
    read(&app, &mut stream, &conn, &mut joined, heartbeat).await;
    for room in joined {
        leave(&app, &room, conn.id);
    }
    if !conn.is_closed() {
        conn.close_with(1000, "bye");
    }
    let _ = writer.await;
    // Let the client answer the close frame before the socket goes.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(msg)) = stream.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
}

/// The connection leaves `room`: this node stops delivering its frames, and the room (wherever
/// it lives) removes its presence.
fn leave(app: &App, room: &str, conn_id: u64) {
    let _ = app.fanout.cast(FanOutMessage::Unsubscribe {
        room: room.to_owned(),
        conn_id,
    });
    let _ = app
        .rooms
        .tell(EntityKey::new("room", room), RoomCommand::Leave { conn_id });
}

/// Sends queued frames and heartbeat pings until the connection is asked to close, then sends
/// the close frame (best effort: a client that stopped reading may never see it).
async fn write(
    mut sink: futures::stream::SplitSink<Socket, Message>,
    mut rx: mpsc::Receiver<Arc<str>>,
    conn: Arc<Conn>,
    heartbeat: Duration,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    let mut batch = Vec::with_capacity(64);
    // Writing stops as soon as the connection is asked to close: a client that stopped reading
    // blocks the socket, and its queue filling up is what asks.
    loop {
        tokio::select! {
            biased;
            () = conn.closing() => break,
            n = rx.recv_many(&mut batch, 64) => {
                if n == 0 {
                    break;
                }
                // Frames waiting together go out with one flush.
                let frames = batch.drain(..).map(|f| Ok(text(f)));
                let mut frames = futures::stream::iter(frames);
                tokio::select! {
                    biased;
                    () = conn.closing() => break,
                    sent = sink.send_all(&mut frames) => if sent.is_err() { break },
                }
            }
            _ = ping.tick() => {
                tokio::select! {
                    biased;
                    () = conn.closing() => break,
                    sent = sink.send(Message::Ping(Bytes::new())) => if sent.is_err() { break },
                }
            }
        }
    }
    // A frame cut off above is still whole in the socket's buffer (frames enter it whole), so
    // the close frame goes out after it: a slow consumer that reads again within the grace
    // period sees the rest of that frame, then 4008. One that never reads is dropped.
    let (code, reason) = conn.close_reason().unwrap_or((1000, "bye".into()));
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(close(code, &reason))).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

async fn read(
    app: &App,
    stream: &mut futures::stream::SplitStream<Socket>,
    conn: &Arc<Conn>,
    joined: &mut HashSet<String>,
    heartbeat: Duration,
) {
    let per_sec = NonZeroU32::new(app.config.ws_publish_per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
    // Publish replies go out in the order the publishes came, each once its room answered.
    let (replies, mut pending) = mpsc::unbounded_channel::<PendingReply>();
    let answering = conn.clone();
    tokio::spawn(async move {
        while let Some(reply) = pending.recv().await {
            answering.push(reply.await);
        }
    });
    let limiter = RateLimiter::direct(Quota::per_second(per_sec));
    let silence = heartbeat * 2;
    let mut deadline = Instant::now() + silence;
    loop {
        let msg = tokio::select! {
            () = conn.closing() => return,
            () = tokio::time::sleep_until(deadline) => {
                conn.close_with(CLOSE_TIMEOUT, "heartbeat_timeout");
                return;
            }
            msg = stream.next() => msg,
        };
        let Some(Ok(msg)) = msg else { return };
        deadline = Instant::now() + silence;
        if msg.is_close() {
            return;
        }
        if msg.is_ping() || msg.is_pong() {
            continue;
        }
        if msg.len() > MAX_FRAME {
            conn.close_with(CLOSE_TOO_BIG, "frame_too_large");
            return;
        }
        let Message::Text(text) = msg else {
            conn.push(error(
                &Value::Null,
                "invalid_frame",
                "frames are JSON text",
                json!({}),
            ));
            continue;
        };
        let frame: ClientFrame = match serde_json::from_str(text.as_str()) {
            Ok(f) => f,
            Err(e) => {
                conn.push(error(&Value::Null, "invalid_json", e, json!({})));
                continue;
            }
        };
        handle(app, conn, joined, &limiter, &replies, frame).await;
    }
}

async fn handle(
    app: &App,
    conn: &Arc<Conn>,
    joined: &mut HashSet<String>,
    limiter: &governor::DefaultDirectRateLimiter,
    replies: &mpsc::UnboundedSender<PendingReply>,
    frame: ClientFrame,
) {
    let r = &frame.reference;
    let room = match frame.op.as_str() {
        "join" | "leave" | "publish" => match frame.room.as_deref().map(parse_room) {
            Some(Ok(_)) => frame.room.clone().unwrap_or_default(),
            _ => {
                conn.push(error(
                    r,
                    RoomError::InvalidRoom.reason(),
                    RoomError::InvalidRoom,
                    json!({}),
                ));
                return;
            }
        },
        _ => String::new(),
    };
    let key = EntityKey::new("room", &room);
    match frame.op.as_str() {
        "ping" => {
            conn.push(reply(r, "ok", json!({})));
        }
        "auth" => {
            conn.push(error(
                r,
                "already_authenticated",
                "this connection is signed in",
                json!({}),
            ));
        }
        "join" => {
            let mut meta = frame.meta.unwrap_or_default();
            meta.insert("conn".into(), json!(conn.id.to_string()));
            // Unix milliseconds: presence frames carry one per connection, and a connection's
            // write buffer keeps the size of the largest frame it wrote.
            meta.insert(
                "online_at".into(),
                json!(chrono::Utc::now().timestamp_millis()),
            );
            let meta = Value::Object(meta);
            // Subscribed first: the room's answer reaches the connection through this node's
            // fan-out, followed by live traffic, wherever the room lives.
            let _ = app.fanout.cast(FanOutMessage::Subscribe {
                room: room.clone(),
                conn: conn.clone(),
                meta: meta.clone(),
            });
            let (conn_id, user_id, since, join_ref) =
                (conn.id, conn.user_id, frame.since, r.clone());
            let node = app.cluster.local().to_owned();
            let answer = app
                .rooms
                .ask(key, |reply| RoomCommand::Join {
                    conn_id,
                    user_id,
                    node,
                    meta,
                    since,
                    join_ref,
                    reply,
                })
                .await;
            if !matches!(answer, Ok(Ok(()))) && !joined.contains(&room) {
                let _ = app.fanout.cast(FanOutMessage::Unsubscribe {
                    room: room.clone(),
                    conn_id,
                });
            }
            match answer {
                Ok(Ok(())) => {
                    joined.insert(room);
                }
                Ok(Err(e)) => {
                    let extra = match e {
                        RoomError::HistoryGap { oldest } => json!({"oldest": oldest}),
                        _ => json!({}),
                    };
                    conn.push(error(r, e.reason(), &e, extra));
                }
                Err(_) => {
                    conn.push(error(
                        r,
                        "unavailable",
                        "the room is unavailable; retry",
                        json!({}),
                    ));
                }
            }
        }
        "leave" => {
            if joined.remove(&room) {
                leave(app, &room, conn.id);
                conn.push(reply(r, "ok", json!({"room": room})));
            } else {
                conn.push(error(r, "not_joined", RoomError::NotJoined, json!({})));
            }
        }
        "publish" => {
            if limiter.check().is_err() {
                conn.push(error(
                    r,
                    "rate_limited",
                    "too many publishes; slow down",
                    json!({}),
                ));
                return;
            }
            let Some(body) = frame.body.filter(Value::is_object) else {
                conn.push(error(
                    r,
                    "invalid_body",
                    "body must be a JSON object",
                    json!({}),
                ));
                return;
            };
            if !joined.contains(&room) {
                conn.push(error(r, "not_joined", RoomError::NotJoined, json!({})));
                return;
            }
            let conn_id = conn.id;
            // Sent now, answered when stored: the next frame is read meanwhile, so one
            // connection's publishes share the room's commits, and stay in order.
            let sent = app.rooms.send(key, |reply| RoomCommand::Publish {
                conn_id,
                body,
                reply,
            });
            let r = r.clone();
            let _ = replies.send(Box::pin(async move {
                let answer = match sent {
                    Ok(waiting) => waiting.await,
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(Ok(seq)) => reply(&r, "ok", json!({"room": room, "seq": seq})),
                    Ok(Err(e)) => error(&r, e.reason(), &e, json!({})),
                    Err(_) => error(
                        &r,
                        "unavailable",
                        "the room is unavailable; retry",
                        json!({}),
                    ),
                }
            }));
        }
        other => {
            conn.push(error(
                r,
                "unknown_op",
                format!("unknown op `{other}`"),
                json!({}),
            ));
        }
    }
}

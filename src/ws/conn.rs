//! One WebSocket connection: signs it in, then runs its writer (a bounded queue of shared frames
//! and heartbeat pings) and its reader (limits, then each client frame to `session`), and
//! leaves its rooms when it ends.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use convene_actors::fanout::{CLOSE_SLOW_CONSUMER, Conn};
use convene_actors::protocol::{ClientFrame, ClientOp, ServerFrame};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::session::{Publishing, Session, leave};
use super::{
    CLOSE_GRACE, CLOSE_TIMEOUT, CLOSE_TOO_BIG, CLOSE_UNAUTHORIZED, MAX_FRAME, NEXT_CONN, Socket,
};
use crate::app::App;

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

async fn authenticate(app: &App, socket: &mut Socket, token: Option<String>) -> Option<i64> {
    let token = match token {
        Some(t) => t,
        None => {
            let first = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
            let Ok(Some(Ok(msg))) = first else {
                return None;
            };
            match ClientFrame::parse(msg.to_text().ok()?).ok()?.op {
                ClientOp::Auth { token } => token,
                _ => return None,
            }
        }
    };
    let caller = app
        .authenticate(Some(&format!("Bearer {token}")))
        .await
        .ok()?;
    Some(caller.principal.user_id)
}

pub(super) async fn serve(
    app: App,
    mut socket: Socket,
    token: Option<String>,
    trace: Option<Arc<str>>,
) {
    // Futures awaited once or now and then are boxed: inline, their state would be part of
    // the connection's task for as long as it lives, idle or not.
    let Some(user_id) = Box::pin(authenticate(&app, &mut socket, token)).await else {
        let _ = socket.send(close(CLOSE_UNAUTHORIZED, "unauthorized")).await;
        return;
    };
    app.metrics.ws_connections.inc();
    let (tx, rx) = mpsc::channel(app.config.ws_outbound_queue.max(1));
    let conn = Arc::new(Conn::new(
        NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        user_id,
        tx,
    ));
    let (sink, stream) = socket.split();
    let heartbeat = Duration::from_secs(app.config.ws_heartbeat_secs.max(1));
    let writer = tokio::spawn(write(sink, rx, conn.clone(), heartbeat));
    let mut joined = Vec::new();
    let mut stream = stream;
    read(
        &app,
        &mut stream,
        &conn,
        &mut joined,
        heartbeat,
        trace.as_deref(),
    )
    .await;
    for room in joined {
        leave(&app, &room, conn.id);
    }
    if !conn.is_closed() {
        conn.close_with(1000, "bye");
    }
    let _ = writer.await;
    app.metrics.ws_connections.dec();
    if conn
        .close_reason()
        .is_some_and(|(code, _)| code == CLOSE_SLOW_CONSUMER)
    {
        app.metrics.ws_slow_consumers.inc();
    }
    // Let the client answer the close frame before the socket goes.
    let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(msg)) = stream.next().await {
            if msg.is_close() {
                break;
            }
        }
    }))
    .await;
}

/// Frames written together at most.
const BATCH: usize = 64;

/// Sends queued frames and heartbeat pings until the connection is asked to close, then sends
/// the close frame (best effort: a client that stopped reading may never see it).
async fn write(
    mut sink: futures::stream::SplitSink<Socket, Message>,
    mut rx: mpsc::Receiver<Arc<str>>,
    conn: Arc<Conn>,
    heartbeat: Duration,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    // One wait for the close request, registered once: not once per frame.
    let closing = conn.closing();
    tokio::pin!(closing);
    // Writing stops as soon as the connection is asked to close: a client that stopped reading
    // blocks the socket, and its queue filling up is what asks.
    loop {
        tokio::select! {
            biased;
            () = &mut closing => break,
            frame = rx.recv() => {
                let Some(frame) = frame else { break };
                // Frames waiting together go out in one write: they gather in the socket's
                // write buffer (4 KiB, see `upgrade`), then one flush.
                let sent = async {
                    sink.feed(text(frame)).await?;
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok(frame) => sink.feed(text(frame)).await?,
                            Err(_) => break,
                        }
                    }
                    sink.flush().await
                };
                tokio::select! {
                    biased;
                    () = &mut closing => break,
                    sent = sent => if sent.is_err() { break },
                }
            }
            _ = ping.tick() => {
                tokio::select! {
                    biased;
                    () = &mut closing => break,
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

/// The next publish reply that is ready, in order; never, while none is waiting.
async fn next_reply(publishing: &mut Option<Publishing>) -> Option<Arc<str>> {
    match publishing {
        Some(p) if !p.replies.is_empty() => p.replies.next().await,
        _ => std::future::pending().await,
    }
}

async fn read(
    app: &App,
    stream: &mut futures::stream::SplitStream<Socket>,
    conn: &Arc<Conn>,
    joined: &mut Vec<String>,
    heartbeat: Duration,
    trace: Option<&str>,
) {
    let per_sec = NonZeroU32::new(app.config.ws_publish_per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
    // Made at the first publish: a connection that only listens does without.
    let mut publishing: Option<Publishing> = None;
    let silence = heartbeat * 2;
    let mut deadline = Instant::now() + silence;
    loop {
        let msg = tokio::select! {
            () = conn.closing() => return,
            Some(reply) = next_reply(&mut publishing) => {
                conn.push(reply);
                continue;
            }
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
            conn.push(
                ServerFrame::error(Value::Null, "invalid_frame", "frames are JSON text").encode(),
            );
            continue;
        };
        match ClientFrame::parse(text.as_str()) {
            Ok(frame) => {
                let mut session = Session {
                    app,
                    conn,
                    joined,
                    per_sec,
                    publishing: &mut publishing,
                };
                // Each frame is a span of the connection's trace, carried to the room's owner.
                let span =
                    tracing::info_span!("frame", conn = conn.id, trace_id = tracing::field::Empty);
                let own = convene_cluster::trace::enter(&span, trace);
                let handled = convene_cluster::trace::scope(own, session.handle(frame));
                Box::pin(tracing::Instrument::instrument(handled, span)).await;
            }
            Err(e) => {
                conn.push(ServerFrame::error(e.reference, e.reason, e.message).encode());
            }
        }
    }
}

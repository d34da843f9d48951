//! The WebSocket edge: `GET /ws?token=…` (or a first `{"op":"auth"}` frame within 5 s), then
//! JSON frames to join, leave and publish in rooms, typed in `convene_actors::protocol`. Each
//! connection has a bounded outbound queue fed by the rooms and the node's fan-out; its reader
//! applies limits (64 KiB frames, a publish rate, a heartbeat) and answers every client frame
//! with a reply carrying its `ref`.

mod conn;
mod session;
mod upgrade;

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;

pub use upgrade::{is_upgrade, upgrade};

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

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

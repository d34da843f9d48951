//! The WebSocket handshake at `/ws`: answers the upgrade with 101 and configures the socket
//! itself (small buffers), then hands the connection to `conn`.

use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::Reply;
use warp::reply::Response;

use super::MAX_FRAME;
use super::conn::serve;
use crate::app::App;

/// Bytes of queued frames gathered into one write to the socket.
const WRITE_BUFFER: usize = 4096;

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
    // The upgrade request's trace: each frame of the connection is a span in it.
    let trace = convene_cluster::trace::current();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        // Small buffers that grow for large frames: idle connections stay cheap. Frames written
        // together gather up to WRITE_BUFFER bytes before a write.
        let config = WebSocketConfig::default()
            .read_buffer_size(512)
            .write_buffer_size(WRITE_BUFFER)
            .max_message_size(Some(MAX_FRAME * 4))
            .max_frame_size(Some(MAX_FRAME * 4));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        serve(app, socket, token, trace).await;
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

//! The HTTP edge (warp): routes under `/api/v1`, `/health`, `/metrics`, `/openapi.json` and
//! `/asyncapi.json`. Each handler validates its input, asks the owning actor through the router
//! (reads that span many entities go to the store), and maps the answer; errors become JSON in
//! [`error`].

pub mod admin;
pub mod analytics;
pub mod asyncapi;
pub mod auth;
pub mod cluster;
pub mod curation;
pub mod error;
pub mod events;
pub mod ops;
pub mod recommendations;
pub mod registrations;
pub mod rooms;
pub mod search;
pub mod users;

use std::convert::Infallible;
use std::sync::LazyLock;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use warp::http::StatusCode;
use warp::http::header::{self, HeaderName};
use warp::reply::Response;
use warp::{Buf, Filter, Rejection, Reply};

use crate::app::App;
use error::ApiError;

/// Every route of a node, with error recovery, and CORS for the configured origins. What every
/// answer gets besides (metrics, security headers) is added by [`finish`], outside the filters.
pub fn routes(app: App) -> warp::filters::BoxedFilter<(Response,)> {
    let cors = cors(&app.config);
    let routes = api_routes(app).recover(error::recover).unify();
    match cors {
        None => routes.boxed(),
        Some(cors) => routes
            .with(cors)
            .map(Reply::into_response)
            .recover(error::recover)
            .unify()
            .boxed(),
    }
}

/// The CORS policy of `config`, when it names origins: they may send the API's methods with the
/// headers it reads, and read the headers it answers with.
fn cors(config: &crate::config::Config) -> Option<warp::filters::cors::Builder> {
    if config.cors_origins.is_empty() {
        return None;
    }
    Some(
        warp::cors()
            .allow_origins(config.cors_origins.iter().map(String::as_str))
            .allow_methods(["GET", "POST", "PATCH", "DELETE", "OPTIONS"])
            .allow_headers([
                "authorization",
                "content-type",
                "if-match",
                "idempotency-key",
                "x-request-id",
            ])
            .expose_headers([
                "etag",
                "location",
                "retry-after",
                "x-request-id",
                "ratelimit",
                "ratelimit-policy",
            ])
            .max_age(std::time::Duration::from_secs(config.cors_max_age_secs)),
    )
}

/// Headers every answer carries unless its handler set its own.
const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
];

/// Headers the edge adds to every answer besides the security headers.
const EDGE_HEADERS: usize = 2;

fn api_routes(app: App) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    // The busiest routes first: an `or` tries its filters in order.
    events::routes(app.clone())
        .or(registrations::routes(app.clone()))
        .unify()
        .or(search::routes(app.clone()))
        .unify()
        .or(recommendations::routes(app.clone()))
        .unify()
        .or(curation::routes(app.clone()))
        .unify()
        .or(analytics::routes(app.clone()))
        .unify()
        .or(auth::routes(app.clone()))
        .unify()
        .or(users::routes(app.clone()))
        .unify()
        .or(rooms::routes(app.clone()))
        .unify()
        .or(ops::routes(app.clone()))
        .unify()
        .or(cluster::routes(app.clone()))
        .unify()
        .or(admin::routes(app))
        .unify()
        .or(asyncapi::routes())
        .unify()
}

/// What every answer gets on its way out, whoever made it (a route, the rate limiter, a
/// WebSocket upgrade): the security headers its handler did not set, `Allow` on a 405,
/// `Connection: close` after a body too large to read, and the request's metrics, counted
/// under its route template (`endpoint`, from [`route_template`]).
pub fn finish(
    app: &App,
    started: Instant,
    method: &warp::http::Method,
    endpoint: &'static str,
    res: &mut Response,
) {
    let status = res.status();
    let headers = res.headers_mut();
    // Room at once for these and the request id and trace the edge adds.
    headers.reserve(SECURITY_HEADERS.len() + EDGE_HEADERS);
    for (name, value) in SECURITY_HEADERS {
        headers
            .entry(name)
            .or_insert(warp::http::HeaderValue::from_static(value));
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body was never read: this connection cannot carry another request,
        // so tell the client not to reuse it.
        headers.insert(
            header::CONNECTION,
            warp::http::HeaderValue::from_static("close"),
        );
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        if let Some(allow) = allowed_methods(endpoint) {
            headers.insert(header::ALLOW, warp::http::HeaderValue::from_static(allow));
        }
    }
    app.metrics
        .http_requests
        .with_label_values(&[method.as_str(), endpoint, status.as_str()])
        .inc();
    app.metrics
        .http_duration
        .with_label_values(&[method.as_str(), endpoint])
        .observe(started.elapsed().as_secs_f64());
    app.tracker.request(status.as_u16());
    if status.is_server_error() {
        tracing::warn!(%method, route = endpoint, status = status.as_u16(), "server error");
        app.admin.record_error(
            app.cluster.local(),
            method.as_str(),
            endpoint,
            status.as_u16(),
        );
    }
}

/// A request's id, asked for and echoed.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A request's W3C trace context, continued and echoed.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The template of an event's route, which the hot paths answer ahead of the tree.
pub const EVENT_ROUTE: &str = "/api/v1/events/{id}";
/// The template of an event's registrations.
pub const REGISTRATIONS_ROUTE: &str = "/api/v1/events/{id}/registrations";

/// Every route template and the methods it takes.
const ROUTES: &[(&str, &str)] = &[
    ("/api/v1/auth/register", "POST"),
    ("/api/v1/auth/login", "POST"),
    ("/api/v1/auth/logout", "POST"),
    ("/api/v1/users/me", "GET, PATCH"),
    ("/api/v1/users/me/registrations", "GET"),
    ("/api/v1/users/me/recommendations", "GET"),
    ("/api/v1/events/{id}/similar", "GET"),
    ("/api/v1/interactions", "POST"),
    ("/api/v1/admin/recommendations", "GET"),
    ("/api/v1/admin/recommendations/train", "POST"),
    ("/api/v1/admin/curation", "GET"),
    ("/api/v1/analytics/trending", "GET"),
    ("/api/v1/analytics/events/{id}", "GET"),
    ("/api/v1/analytics/summary", "GET"),
    ("/api/v1/events", "GET, POST"),
    (EVENT_ROUTE, "GET, PATCH, DELETE"),
    (REGISTRATIONS_ROUTE, "GET, POST"),
    ("/api/v1/events/{id}/registrations/me", "DELETE"),
    ("/api/v1/search/events", "GET"),
    ("/api/v1/rooms/{room}/presence", "GET"),
    ("/api/v1/rooms/{room}/messages", "GET"),
    ("/api/v1/cluster", "GET"),
    ("/api/v1/admin/members", "GET"),
    ("/api/v1/admin/actors", "GET"),
    ("/api/v1/admin/entities", "GET"),
    ("/api/v1/admin/entities/passivate", "POST"),
    ("/api/v1/admin/rooms", "GET"),
    ("/api/v1/admin/rooms/{room}/notice", "POST"),
    ("/api/v1/admin/buses", "GET"),
    ("/api/v1/admin/requests", "GET"),
    ("/api/v1/admin/stream", "GET"),
    ("/api/v1/admin/placements", "GET, POST, DELETE"),
    ("/api/v1/admin/nodes/{node}/drain", "POST"),
    ("/api/v1/admin/nodes/{node}/undrain", "POST"),
    ("/console", "GET"),
    ("/ws", "GET"),
    ("/health", "GET"),
    ("/health/live", "GET"),
    ("/metrics", "GET"),
    ("/openapi.json", "GET"),
    ("/asyncapi.json", "GET"),
];

/// A path split at its slashes.
type Segments = Vec<&'static [u8]>;

/// The route template of a path, so metric labels stay bounded: `{id}` stands for a number,
/// `{room}` and `{node}` for any one segment, and paths of no known route become `unmatched`.
pub fn route_template(path: &str) -> &'static str {
    // This runs for every request: the templates are split once, the path once, on bytes.
    static TEMPLATES: LazyLock<Vec<(&'static str, Segments)>> = LazyLock::new(|| {
        ROUTES
            .iter()
            .map(|(r, _)| (*r, r.as_bytes().split(|b| *b == b'/').collect()))
            .collect()
    });
    let mut segments = [&b""[..]; 8];
    let mut n = 0;
    for s in path.trim_end_matches('/').as_bytes().split(|b| *b == b'/') {
        let Some(slot) = segments.get_mut(n) else {
            return "unmatched";
        };
        *slot = s;
        n += 1;
    }
    let segments = &segments[..n];
    let fits = |parts: &[&[u8]]| {
        parts.len() == segments.len()
            && parts.iter().zip(segments).all(|(t, s)| match *t {
                b"{id}" => {
                    let digits = s.strip_prefix(b"-").unwrap_or(s);
                    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
                }
                b"{room}" | b"{node}" => !s.is_empty(),
                _ => t == s,
            })
    };
    TEMPLATES
        .iter()
        .find(|(_, parts)| fits(parts))
        .map_or("unmatched", |(r, _)| r)
}

/// The `Allow` header of a route template.
fn allowed_methods(template: &str) -> Option<&'static str> {
    ROUTES.iter().find(|(r, _)| *r == template).map(|(_, m)| *m)
}

/// The id of a request: its `X-Request-Id` when that is 1 to 128 characters of letters, digits
/// and `-_.:`, else 16 new hex digits.
pub fn request_id(headers: &warp::http::HeaderMap) -> warp::http::HeaderValue {
    let given = headers.get(X_REQUEST_ID).filter(|v| {
        (1..=128).contains(&v.len())
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    });
    match given {
        // Shares the request's bytes.
        Some(id) => id.clone(),
        None => {
            let mut id = [0u8; 16];
            // Cannot fail: the buffer holds two digits per byte.
            let _ = hex::encode_to_slice(convene_cluster::trace::id_bytes::<8>(), &mut id);
            warp::http::HeaderValue::from_bytes(&id)
                .unwrap_or(warp::http::HeaderValue::from_static("0"))
        }
    }
}

/// The app, for handlers.
pub(crate) fn with_app(app: App) -> impl Filter<Extract = (App,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// The raw `Authorization` header, checked by the handler (reads need none).
fn bearer() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
}

/// The request body, refused with 413 past `max` bytes whether or not a length was announced.
fn body(max: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(move |len: Option<u64>| async move {
            match len {
                Some(len) if len > max => Err(warp::reject::custom(ApiError::PayloadTooLarge(max))),
                _ => Ok(()),
            }
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(move |stream| async move {
            collect_limited(stream, max)
                .await
                .map_err(warp::reject::custom)
        })
}

/// The body of a request taken ahead of the route tree, as [`body`] takes it once its announced
/// length passed.
async fn read_body(body: hyper::body::Incoming, max: u64) -> Result<Bytes, ApiError> {
    let data = futures::stream::unfold(body, |mut body| async move {
        loop {
            let frame = std::future::poll_fn(|cx| {
                hyper::body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)
            })
            .await?;
            match frame.map(hyper::body::Frame::into_data) {
                Ok(Ok(data)) => return Some((Ok(data), body)),
                // Trailers carry no body.
                Ok(Err(_)) => {}
                Err(e) => return Some((Err(e), body)),
            }
        }
    });
    collect_limited(data, max).await
}

async fn collect_limited<S, B, E>(stream: S, max: u64) -> Result<Bytes, ApiError>
where
    S: futures::Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::fmt::Display,
{
    let mut stream = std::pin::pin!(stream);
    let mut buf = BytesMut::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        let mut chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("reading the body failed: {e}")))?;
        if buf.len() as u64 + chunk.remaining() as u64 > max {
            return Err(ApiError::PayloadTooLarge(max));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// Parses a JSON object body; an empty or `null` body is `default` when one is given.
fn parse_json<T: DeserializeOwned>(body: &[u8], default: Option<T>) -> Result<T, ApiError> {
    let value: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?
    };
    match value {
        serde_json::Value::Null => {
            default.ok_or_else(|| ApiError::BadRequest("a JSON object body is required".into()))
        }
        serde_json::Value::Object(_) => serde_json::from_value(value)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}"))),
        _ => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
    }
}

/// The raw query string, empty when there is none; handlers parse it so that a bad query is
/// their 400 or 422, not a rejection that another route's answer could hide.
pub(crate) fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// A JSON response with a status.
fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// A 200 response whose body is JSON already serialised (a cached answer, an actor's kept
/// bytes).
fn json_bytes(body: bytes::Bytes) -> Response {
    let mut res = Response::new(body.into());
    // Room for its own headers (the type, a handler's one or two) and the edge's, at once.
    *res.headers_mut() =
        warp::http::HeaderMap::with_capacity(4 + SECURITY_HEADERS.len() + EDGE_HEADERS);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    res
}

/// A handler's answer as a response.
fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(Reply::into_response)
}

/// A numeric id from a path segment; anything else names nothing.
fn parse_id(segment: &str) -> Result<i64, ApiError> {
    segment
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or(ApiError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_placeholders_and_unknown_paths_one_label() {
        assert_eq!(
            route_template("/api/v1/events/42/registrations"),
            "/api/v1/events/{id}/registrations"
        );
        assert_eq!(route_template("/api/v1/events/"), "/api/v1/events");
        assert_eq!(route_template("/api/v1/events/abc"), "unmatched");
        assert_eq!(route_template("/wp-admin/x.php"), "unmatched");
        assert_eq!(route_template("/a/b/c/d/e/f/g/h/i/j"), "unmatched");
        assert_eq!(route_template("/"), "unmatched");
        assert_eq!(route_template("/health"), "/health");
        assert_eq!(route_template("/api/v1/events/-9"), "/api/v1/events/{id}");
        assert_eq!(
            route_template("/api/v1/rooms/room:lobby/presence"),
            "/api/v1/rooms/{room}/presence"
        );
        assert_eq!(
            allowed_methods("/api/v1/events/{id}"),
            Some("GET, PATCH, DELETE")
        );
    }

    #[test]
    fn bodies_must_be_objects() {
        #[derive(serde::Deserialize, Default, Debug)]
        struct B {
            #[allow(dead_code)]
            a: Option<i64>,
        }
        assert!(parse_json::<B>(b"[null]", None).is_err());
        assert!(parse_json::<B>(b"null", Some(B::default())).is_ok());
        assert!(parse_json::<B>(b"  ", None).is_err());
        assert!(parse_json::<B>(br#"{"a": 1}"#, None).is_ok());
    }
}

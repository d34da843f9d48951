//! The HTTP edge (warp): routes under `/api/v1`, `/health`, `/metrics` and `/openapi.json`. Each
//! handler validates its input, asks the owning actor through the router (reads that span many
//! entities go to the store), and maps the answer; errors become JSON in [`error`].

pub mod auth;
pub mod error;
pub mod events;
pub mod ops;
pub mod users;

use std::convert::Infallible;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Buf, Filter, Rejection, Reply};

use crate::app::App;
use crate::metrics::route_template;
use error::ApiError;

/// Every route of a node, with error recovery and request metrics.
pub fn routes(app: App) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let api = auth::routes(app.clone())
        .or(users::routes(app.clone()))
        .unify()
        .or(events::routes(app.clone()))
        .unify()
        .or(ops::routes(app.clone()))
        .unify();
    let metrics = app.metrics.clone();
    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(api.recover(error::recover).unify())
        .map(
            move |start: Instant,
                  method: warp::http::Method,
                  path: warp::path::FullPath,
                  res: Response| {
                let endpoint = route_template(path.as_str());
                let status = res.status();
                metrics
                    .http_requests
                    .with_label_values(&[method.as_str(), endpoint, status.as_str()])
                    .inc();
                metrics
                    .http_duration
                    .with_label_values(&[method.as_str(), endpoint])
                    .observe(start.elapsed().as_secs_f64());
                res
            },
        )
}

/// The app, for handlers.
fn with_app(app: App) -> impl Filter<Extract = (App,), Error = Infallible> + Clone {
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
        .and_then(move |stream| collect_limited(stream, max))
}

async fn collect_limited<S, B>(stream: S, max: u64) -> Result<Bytes, Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut stream = std::pin::pin!(stream);
    let mut buf = BytesMut::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        let mut chunk = chunk.map_err(|e| {
            warp::reject::custom(ApiError::BadRequest(format!(
                "reading the body failed: {e}"
            )))
        })?;
        if buf.len() as u64 + chunk.remaining() as u64 > max {
            return Err(warp::reject::custom(ApiError::PayloadTooLarge(max)));
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

/// Parses a JSON body; an empty body is `default` when one is given.
fn parse_json<T: DeserializeOwned>(body: &[u8], default: Option<T>) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return default.ok_or_else(|| ApiError::BadRequest("a JSON body is required".into()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))
}

/// A JSON response with a status.
fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
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

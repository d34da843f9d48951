//! Recommendations over REST: a signed-in user's (`/users/me/recommendations`), the events
//! like one event (`/events/{id}/similar`), interactions recorded by clients
//! (`POST /interactions`), and the model's status and a retraining request for admins.

use convene_actors::event::EventMessage;
use convene_actors::recommend::Kind;
use convene_actors::rules::permissions;
use convene_actors::user::{self, UserMessage};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, ErrorBody};
use super::events::event_key;
use super::{bearer, body, json, parse_json, raw_query, respond, with_app};
use crate::app::App;
use crate::recommend::serving::Recommendations;

/// The most a list may hold.
const MAX_LIMIT: usize = 50;

/// The routes of this module.
pub fn routes(app: App) -> warp::filters::BoxedFilter<(Response,)> {
    let max = app.config.max_body_bytes;
    let a = || with_app(app.clone());
    let mine = warp::path!("api" / "v1" / "users" / "me" / "recommendations")
        .and(warp::get())
        .and(a())
        .and(bearer())
        .and(raw_query())
        .then(for_me)
        .map(respond);
    let similar = warp::path!("api" / "v1" / "events" / String / "similar")
        .and(warp::get())
        .and(a())
        .and(raw_query())
        .then(similar)
        .map(respond);
    let interactions = warp::path!("api" / "v1" / "interactions")
        .and(warp::post())
        .and(a())
        .and(bearer())
        .and(body(max))
        .then(record)
        .map(respond);
    let status = warp::path!("api" / "v1" / "admin" / "recommendations")
        .and(warp::get())
        .and(a())
        .and(bearer())
        .then(model_status)
        .map(respond);
    let train = warp::path!("api" / "v1" / "admin" / "recommendations" / "train")
        .and(warp::post())
        .and(a())
        .and(bearer())
        .then(train)
        .map(respond);
    mine.or(similar)
        .unify()
        .or(interactions)
        .unify()
        .or(status)
        .unify()
        .or(train)
        .unify()
        .boxed()
}

/// `?limit=` (1 to 50, default 10).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// How many events, 1 to 50 (default 10).
    pub limit: Option<String>,
}

fn limit(query: &str) -> Result<usize, ApiError> {
    let q: LimitQuery = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::BadRequest(format!("malformed query: {e}")))?;
    match q.limit {
        None => Ok(10),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", format!("must be 1 to {MAX_LIMIT}"))),
    }
}

/// Events for the signed-in user: the hybrid engine's, or what is popular near them when they
/// have no history yet (`cold_start`).
#[utoipa::path(get, path = "/api/v1/users/me/recommendations", tag = "recommendations",
    security(("bearer" = [])),
    params(LimitQuery),
    responses(
        (status = 200, description = "Events, best first", body = Recommendations),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 422, description = "Invalid limit", body = ErrorBody),
        (status = 503, description = "Overloaded or storage unavailable", body = ErrorBody),
    ))]
pub async fn for_me(app: App, auth: Option<String>, query: String) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    let limit = limit(&query)?;
    let user_id = caller.principal.user_id;
    let account = app
        .users
        .ask(user::key(user_id), |reply| UserMessage::Get { reply })
        .await??;
    let home = crate::recommend::home(&account.profile);
    let model = app.models.current().map_or(0, |l| l.version);
    let variant = format!(
        "limit:{limit}:model:{model}:profile:{}",
        account.updated_at.timestamp_micros()
    );
    let cached = app.caches.recommendations(user_id, &variant).await;
    if let Some(body) = cached.as_ref().and_then(|c| c.hit.clone()) {
        return Ok(super::json_bytes(body));
    }
    let answer = app
        .recommender
        .for_user(user_id, home, account.updated_at, limit)
        .await?;
    let body = bytes::Bytes::from(
        serde_json::to_vec(&answer).map_err(|e| ApiError::Unavailable(e.to_string()))?,
    );
    if let Some(lookup) = &cached {
        app.caches.put(lookup, &body).await;
    }
    Ok(super::json_bytes(body))
}

/// Events like this one (by who went, by content, by the learnt factors); no token needed.
#[utoipa::path(get, path = "/api/v1/events/{id}/similar", tag = "recommendations",
    params(("id" = i64, Path, description = "Event id"), LimitQuery),
    responses(
        (status = 200, description = "Events, most similar first", body = Recommendations),
        (status = 404, description = "No such event", body = ErrorBody),
        (status = 422, description = "Invalid limit", body = ErrorBody),
    ))]
pub async fn similar(id: String, app: App, query: String) -> Result<Response, ApiError> {
    let event_id = super::parse_id(&id)?;
    let limit = limit(&query)?;
    let answer = app
        .recommender
        .similar(event_id, limit)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(json(StatusCode::OK, &answer))
}

/// Something a user did with an event.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InteractionRequest {
    /// The event.
    pub event_id: i64,
    /// `view`, `click`, `share` or `like`.
    pub kind: String,
}

/// Records what the signed-in user did with an event (registrations are recorded by the
/// server itself).
#[utoipa::path(post, path = "/api/v1/interactions", tag = "recommendations",
    security(("bearer" = [])),
    request_body = InteractionRequest,
    responses(
        (status = 204, description = "Recorded"),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
        (status = 422, description = "Invalid kind", body = ErrorBody),
    ))]
pub async fn record(
    app: App,
    auth: Option<String>,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    let req: InteractionRequest = parse_json(&body, None)?;
    let kind = Kind::parse(&req.kind)
        .filter(|k| matches!(k, Kind::View | Kind::Click | Kind::Share | Kind::Like))
        .ok_or_else(|| ApiError::invalid("kind", "must be view, click, share or like"))?;
    // The event must exist (its actor answers from memory when active).
    app.events
        .ask(event_key(&req.event_id.to_string())?, |reply| {
            EventMessage::Get { reply }
        })
        .await??;
    app.tracker
        .record(caller.principal.user_id, req.event_id, kind)
        .await?;
    Ok(warp::Reply::into_response(warp::reply::with_status(
        warp::reply::reply(),
        StatusCode::NO_CONTENT,
    )))
}

/// The model served by this node.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelStatus {
    /// The node that answered.
    pub node: String,
    /// The version it serves (absent before the first model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// When that model was trained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trained_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The last interaction it learnt from (interactions are numbered in order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_interaction: Option<i64>,
    /// The newest interaction recorded.
    pub newest_interaction: i64,
    /// Events it knows.
    pub events: usize,
    /// Users in its interaction matrix.
    pub users: usize,
    /// The newest version stored (a node loads it within a few seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<i64>,
    /// NDCG@10 per engine from the newest model's offline evaluation.
    #[schema(value_type = Object)]
    pub metrics: Value,
}

fn admin(caller: &crate::app::Caller) -> Result<(), ApiError> {
    if caller.principal.has(permissions::ADMIN_ACCESS) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("this is for admins".into()))
    }
}

/// The recommendation model: the one this node serves and the newest stored.
#[utoipa::path(get, path = "/api/v1/admin/recommendations", tag = "recommendations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The model", body = ModelStatus),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
pub async fn model_status(app: App, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    admin(&caller)?;
    let latest = app.store.latest_model().await?;
    let current = app.models.current();
    Ok(json(
        StatusCode::OK,
        &ModelStatus {
            node: app.cluster.local().to_owned(),
            version: current.as_ref().map(|l| l.version),
            trained_at: current.as_ref().map(|l| l.trained_at),
            last_interaction: current.as_ref().map(|l| l.last_interaction),
            newest_interaction: app.store.last_interaction().await?,
            events: current.as_ref().map_or(0, |l| l.model.items.len()),
            users: current.as_ref().map_or(0, |l| l.model.users()),
            latest_version: latest.as_ref().map(|m| m.version),
            metrics: latest.map_or(Value::Null, |m| m.metrics),
        },
    ))
}

/// Asks the cluster's trainer to train a new model now; it is loaded by every node when done.
#[utoipa::path(post, path = "/api/v1/admin/recommendations/train", tag = "recommendations",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Training requested"),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
pub async fn train(app: App, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    admin(&caller)?;
    app.store.request_training().await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"requested": true}),
    ))
}

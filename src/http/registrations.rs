//! Registrations: taking a seat (or a place on the waitlist), cancelling it, and the list an
//! event's creator sees. Each is decided by the event's actor.

use convene_actors::event::EventMessage;
use convene_actors::model::Registration;
use convene_actors::rules::RegistrationOutcome;
use convene_cluster::EntityKey;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::error::{ApiError, ErrorBody};
use super::events::event_key;
use super::users::RegistrationList;
use super::{bearer, body, json, parse_json, respond, with_app};
use crate::app::App;

/// The routes of this module.
pub fn routes(app: App) -> warp::filters::BoxedFilter<(Response,)> {
    let max = app.config.max_body_bytes;
    let a = || with_app(app.clone());
    let regs = || warp::path!("api" / "v1" / "events" / String / "registrations");
    let register = regs()
        .and(warp::post())
        .and(a())
        .and(bearer())
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(body(max))
        .then(register)
        .map(respond);
    let registrations = regs()
        .and(warp::get())
        .and(a())
        .and(bearer())
        .then(registrations)
        .map(respond);
    let cancel = warp::path!("api" / "v1" / "events" / String / "registrations" / "me")
        .and(warp::delete())
        .and(a())
        .and(bearer())
        .then(cancel)
        .map(respond);
    register
        .or(registrations)
        .unify()
        .or(cancel)
        .unify()
        .boxed()
}

/// The body of a seat request (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SeatRequest {
    /// Join the waitlist when the event is full.
    #[serde(default)]
    pub waitlist: bool,
}

/// A registration as answered.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RegistrationResponse {
    /// The registration.
    pub registration: Registration,
}

/// Registers the signed-in user. A repeat with the same `Idempotency-Key` answers as the first.
#[utoipa::path(post, path = "/api/v1/events/{id}/registrations", tag = "registrations", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Event id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry answer as the first request")),
    request_body(content = Option<SeatRequest>, description = "Optional; `{\"waitlist\": true}` joins the waitlist when full"),
    responses(
        (status = 201, description = "Seat taken", body = RegistrationResponse),
        (status = 200, description = "Already registered", body = RegistrationResponse),
        (status = 202, description = "Waitlisted", body = RegistrationResponse),
        (status = 400, description = "Malformed JSON or header", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
        (status = 409, description = "Full (`event_full`) or past (`event_past`)", body = ErrorBody),
    ))]
pub async fn register(
    id: String,
    app: App,
    auth: Option<String>,
    idempotency_key: Option<String>,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    let key = event_key(&id)?;
    let req: SeatRequest = parse_json(&body, Some(SeatRequest::default()))?;
    let (status, answer) = take_seat(
        &app,
        key,
        caller.principal.user_id,
        req.waitlist,
        idempotency_key,
    )
    .await?;
    Ok(json(status, &answer))
}

/// A seat request recognised ahead of the route tree: the event's id and the headers the route
/// reads.
pub struct HotSeat {
    id: String,
    auth: Option<String>,
    idempotency_key: Option<String>,
}

/// `POST /api/v1/events/{id}/registrations` recognised ahead of the route tree, as the hottest
/// read is ([`super::events::hot_read`]): only a plain decimal id, readable headers, a length
/// that is absent or within the limit, and no CORS. Anything else goes through the tree, which
/// answers the same.
pub fn hot_register(
    app: &App,
    req: &warp::http::Request<hyper::body::Incoming>,
) -> Option<HotSeat> {
    if req.method() != warp::http::Method::POST || !app.config.cors_origins.is_empty() {
        return None;
    }
    let id = req
        .uri()
        .path()
        .strip_prefix("/api/v1/events/")?
        .strip_suffix("/registrations")?;
    if !super::events::plain_id(id) {
        return None;
    }
    let headers = req.headers();
    if let Some(len) = headers.get(warp::http::header::CONTENT_LENGTH) {
        let len: u64 = len.to_str().ok()?.parse().ok()?;
        if len > app.config.max_body_bytes {
            return None;
        }
    }
    Some(HotSeat {
        id: id.to_owned(),
        auth: super::events::readable(headers, warp::http::header::AUTHORIZATION)?,
        idempotency_key: super::events::readable(headers, "idempotency-key")?,
    })
}

/// Answers a seat request [`hot_register`] recognised, as the route tree would.
pub async fn register_now(app: App, seat: HotSeat, body: hyper::body::Incoming) -> Response {
    let answer = match super::read_body(body, app.config.max_body_bytes).await {
        Ok(body) => register(seat.id, app, seat.auth, seat.idempotency_key, body).await,
        Err(e) => Err(e),
    };
    respond(answer)
}

/// Asks the event's actor for a seat for `user_id`, as the HTTP API and the bus commands do:
/// 201 taken, 200 already had one, 202 waitlisted; `event_full` and `event_past` conflicts.
pub async fn take_seat(
    app: &App,
    key: EntityKey,
    user_id: i64,
    waitlist: bool,
    idempotency_key: Option<String>,
) -> Result<(StatusCode, RegistrationResponse), ApiError> {
    if let Some(k) = &idempotency_key {
        if k.is_empty() || k.len() > 255 || k.chars().any(|c| c.is_control()) {
            return Err(ApiError::BadRequest(
                "Idempotency-Key must be 1 to 255 printable characters".into(),
            ));
        }
    }
    let event_id = key.numeric_id();
    let outcome = app
        .events
        .ask(key, |reply| EventMessage::Register {
            user_id,
            waitlist,
            idempotency_key,
            trace: convene_cluster::trace::carried(),
            reply,
        })
        .await?;
    let label = match &outcome {
        Ok(RegistrationOutcome::Created(_)) => "created",
        Ok(RegistrationOutcome::Existing(_)) => "existing",
        Ok(RegistrationOutcome::Waitlisted(_)) => "waitlisted",
        Ok(RegistrationOutcome::Full) => "full",
        Ok(RegistrationOutcome::Past) => "past",
        Err(_) => "error",
    };
    app.metrics.registrations.with_label_values(&[label]).inc();
    if matches!(label, "created" | "waitlisted") {
        changed(app, event_id, user_id).await;
    }
    let (status, registration) = match outcome? {
        RegistrationOutcome::Created(r) => (StatusCode::CREATED, r),
        RegistrationOutcome::Existing(r) => (StatusCode::OK, r),
        RegistrationOutcome::Waitlisted(r) => (StatusCode::ACCEPTED, r),
        RegistrationOutcome::Full => {
            return Err(ApiError::Conflict {
                code: "event_full".into(),
                message: "the event is full".into(),
            });
        }
        RegistrationOutcome::Past => {
            return Err(ApiError::Conflict {
                code: "event_past".into(),
                message: "the event has already taken place".into(),
            });
        }
    };
    Ok((status, RegistrationResponse { registration }))
}

/// Cancels `user_id`'s registration through the event's actor (404 when there is none).
pub async fn give_up_seat(app: &App, key: EntityKey, user_id: i64) -> Result<(), ApiError> {
    let event_id = key.numeric_id();
    app.events
        .ask(key, |reply| EventMessage::Cancel {
            user_id,
            trace: convene_cluster::trace::carried(),
            reply,
        })
        .await??;
    changed(app, event_id, user_id).await;
    Ok(())
}

/// A seat was taken or given up: what the caches hold of the event and of the user's
/// recommendations is stale from now on, on every node (the indexers confirm it when they reach
/// the change, a few milliseconds later).
async fn changed(app: &App, event_id: Option<i64>, user_id: i64) {
    if let Some(id) = event_id {
        app.caches.event_changed(id).await;
    }
    app.caches.user_changed(user_id).await;
}

/// Cancels the signed-in user's registration; the oldest waitlisted user takes the seat.
#[utoipa::path(delete, path = "/api/v1/events/{id}/registrations/me", tag = "registrations", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Event id")),
    responses(
        (status = 204, description = "Cancelled"),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such event or registration", body = ErrorBody),
    ))]
pub async fn cancel(id: String, app: App, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    let key = event_key(&id)?;
    give_up_seat(&app, key, caller.principal.user_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The event's registrations, first come first (its creator or an admin).
#[utoipa::path(get, path = "/api/v1/events/{id}/registrations", tag = "registrations", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Event id")),
    responses(
        (status = 200, description = "Registrations", body = RegistrationList),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not the creator", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
    ))]
pub async fn registrations(
    id: String,
    app: App,
    auth: Option<String>,
) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    let key = event_key(&id)?;
    let principal = caller.principal;
    let registrations = app
        .events
        .ask(key, |reply| EventMessage::ListRegistrations {
            principal,
            reply,
        })
        .await??;
    Ok(json(StatusCode::OK, &RegistrationList { registrations }))
}

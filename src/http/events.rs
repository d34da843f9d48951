//! Events: creating, reading, changing and deleting them; listing them is in `listing`.

pub mod listing;

use chrono::{DateTime, SubsecRound, Utc};
use convene_actors::event::{self, EventMessage};
pub use convene_actors::model::EventView;
use convene_actors::model::{Category, EventJson, EventPatch, NewEvent};
use convene_actors::rules::permissions;
use convene_cluster::EntityKey;
use serde::Deserialize;
use utoipa::ToSchema;
use validator::{Validate, ValidationError};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::error::{ApiError, ErrorBody};
use super::{bearer, body, json, parse_id, parse_json, raw_query, respond, with_app};
use crate::app::App;
use crate::validation::no_control_chars;

/// The routes of this module. Not boxed: the edge boxes the whole tree once, and this, the
/// busiest module, is not boxed twice on every read.
pub fn routes(app: App) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let max = app.config.max_body_bytes;
    let a = || with_app(app.clone());
    let list = warp::path!("api" / "v1" / "events")
        .and(warp::get())
        .and(a())
        .and(raw_query())
        .then(|app, query| Box::pin(listing::list(app, query)))
        .map(respond);
    let create = warp::path!("api" / "v1" / "events")
        .and(warp::post())
        .and(a())
        .and(bearer())
        .and(body(max))
        .then(|app, auth, body| Box::pin(create(app, auth, body)))
        .map(respond);
    let one = || warp::path!("api" / "v1" / "events" / String);
    let get = one()
        .and(warp::get())
        .and(a())
        .and(bearer())
        .then(get)
        .map(respond);
    let patch = one()
        .and(warp::patch())
        .and(a())
        .and(bearer())
        .and(warp::header::optional::<String>("if-match"))
        .and(body(max))
        .then(|id, app, auth, if_match, body| Box::pin(update(id, app, auth, if_match, body)))
        .map(respond);
    let delete = one()
        .and(warp::delete())
        .and(a())
        .and(bearer())
        .then(|id, app, auth| Box::pin(delete(id, app, auth)))
        .map(respond);
    // The hottest route first: an `or` tries its filters in order. The others' handlers run
    // boxed, so the future every read builds and moves is no larger than its own.
    get.or(list)
        .unify()
        .or(create)
        .unify()
        .or(patch)
        .unify()
        .or(delete)
        .unify()
}

fn in_future(date: &str) -> Result<(), ValidationError> {
    let date = parse_date(date).ok_or_else(|| {
        ValidationError::new("date").with_message("must be an RFC 3339 date-time".into())
    })?;
    if date <= Utc::now() {
        return Err(ValidationError::new("future").with_message("must be in the future".into()));
    }
    Ok(())
}

fn known_category(c: &str) -> Result<(), ValidationError> {
    Category::parse(c).map(|_| ()).ok_or_else(|| {
        ValidationError::new("category")
            .with_message("must be one of tech, business, arts, sports".into())
    })
}

fn valid_tags(tags: &[String]) -> Result<(), ValidationError> {
    if tags
        .iter()
        .any(|t| t.trim().is_empty() || t.chars().count() > 50 || no_control_chars(t).is_err())
    {
        return Err(ValidationError::new("tags")
            .with_message("each tag must be 1 to 50 printable characters".into()));
    }
    Ok(())
}

/// An RFC 3339 date-time, kept to the microsecond (what PostgreSQL keeps, and what cursors
/// carry, so every store compares dates the same way).
fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc).trunc_subsecs(6))
}

fn price_cents(price: Option<f64>) -> Option<i64> {
    price.map(|p| (p * 100.0).round() as i64)
}

/// A new event. Rules: title 3–255, description ≤ 5000, date in the future, location ≤ 500,
/// capacity 1–100000, category one of tech/business/arts/sports.
#[derive(Debug, Deserialize, Validate, ToSchema)]
pub struct CreateEventRequest {
    /// Title.
    #[schema(value_type = String, required = true, min_length = 3, max_length = 255, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    #[validate(
        required,
        length(min = 3, max = 255),
        custom(function = "no_control_chars")
    )]
    pub title: Option<String>,
    /// Description.
    #[schema(value_type = String, required = true, max_length = 5000, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    #[validate(required, length(max = 5000), custom(function = "no_control_chars"))]
    pub description: Option<String>,
    /// RFC 3339 date-time in the future.
    #[schema(value_type = String, required = true, format = DateTime)]
    #[validate(required, custom(function = "in_future"))]
    pub date: Option<String>,
    /// Venue.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 500, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    #[validate(
        required,
        length(min = 1, max = 500),
        custom(function = "no_control_chars")
    )]
    pub location: Option<String>,
    /// Latitude, -90 to 90.
    #[schema(minimum = -90, maximum = 90)]
    #[validate(range(min = -90.0, max = 90.0))]
    pub latitude: Option<f64>,
    /// Longitude, -180 to 180.
    #[schema(minimum = -180, maximum = 180)]
    #[validate(range(min = -180.0, max = 180.0))]
    pub longitude: Option<f64>,
    /// Seats, 1 to 100000.
    #[schema(value_type = i64, required = true, minimum = 1, maximum = 100000)]
    #[validate(required, range(min = 1, max = 100000))]
    pub capacity: Option<i64>,
    /// tech, business, arts or sports.
    #[schema(value_type = Category, required = true)]
    #[validate(required, custom(function = "known_category"))]
    pub category: Option<String>,
    /// Up to 20 tags.
    #[schema(max_items = 20)]
    #[validate(length(max = 20), custom(function = "valid_tags"))]
    pub tags: Option<Vec<String>>,
    /// Price, 0 to 1000000.
    #[schema(minimum = 0, maximum = 1000000)]
    #[validate(range(min = 0.0, max = 1000000.0))]
    pub price: Option<f64>,
}

/// Changes to an event; absent fields stay. The same rules as creation apply.
#[derive(Debug, Deserialize, Validate, ToSchema)]
pub struct UpdateEventRequest {
    /// Title.
    #[schema(
        min_length = 3,
        max_length = 255,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    #[validate(length(min = 3, max = 255), custom(function = "no_control_chars"))]
    pub title: Option<String>,
    /// Description.
    #[schema(
        max_length = 5000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    #[validate(length(max = 5000), custom(function = "no_control_chars"))]
    pub description: Option<String>,
    /// RFC 3339 date-time in the future.
    #[schema(format = DateTime)]
    #[validate(custom(function = "in_future"))]
    pub date: Option<String>,
    /// Venue.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    #[validate(length(min = 1, max = 500), custom(function = "no_control_chars"))]
    pub location: Option<String>,
    /// Latitude.
    #[schema(minimum = -90, maximum = 90)]
    #[validate(range(min = -90.0, max = 90.0))]
    pub latitude: Option<f64>,
    /// Longitude.
    #[schema(minimum = -180, maximum = 180)]
    #[validate(range(min = -180.0, max = 180.0))]
    pub longitude: Option<f64>,
    /// Seats; not below the seats taken.
    #[schema(minimum = 1, maximum = 100000)]
    #[validate(range(min = 1, max = 100000))]
    pub capacity: Option<i64>,
    /// Category.
    #[schema(value_type = Option<Category>)]
    #[validate(custom(function = "known_category"))]
    pub category: Option<String>,
    /// Tags.
    #[schema(max_items = 20)]
    #[validate(length(max = 20), custom(function = "valid_tags"))]
    pub tags: Option<Vec<String>>,
    /// Price.
    #[schema(minimum = 0, maximum = 1000000)]
    #[validate(range(min = 0.0, max = 1000000.0))]
    pub price: Option<f64>,
}

/// The key of the event whose id is the path segment `id`.
pub fn event_key(id: &str) -> Result<EntityKey, ApiError> {
    Ok(event::key(parse_id(id)?))
}

/// Publishes an event.
#[utoipa::path(post, path = "/api/v1/events", tag = "events", security(("bearer" = [])),
    request_body = CreateEventRequest,
    responses(
        (status = 201, description = "Created", body = EventView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "No events:create permission", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
    ))]
pub async fn create(
    app: App,
    auth: Option<String>,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    if !caller.principal.has(permissions::EVENTS_CREATE) {
        return Err(ApiError::Forbidden(
            "creating events needs the events:create permission".into(),
        ));
    }
    let req: CreateEventRequest = parse_json(&body, None)?;
    req.validate()?;
    let new = NewEvent {
        title: req.title.unwrap_or_default(),
        description: req.description.unwrap_or_default(),
        date: req.date.as_deref().and_then(parse_date).unwrap_or_default(),
        location: req.location.unwrap_or_default(),
        latitude: req.latitude,
        longitude: req.longitude,
        capacity: req.capacity.unwrap_or_default(),
        category: req
            .category
            .as_deref()
            .and_then(Category::parse)
            .unwrap_or(Category::Tech),
        tags: req.tags.unwrap_or_default(),
        price_cents: price_cents(req.price),
        created_by: caller.principal.user_id,
    };
    let event = event::create(&app.store, new).await?;
    let location = format!("/api/v1/events/{}", event.id);
    let mut res = json(StatusCode::CREATED, &EventView::from(event));
    if let Ok(v) = warp::http::HeaderValue::from_str(&location) {
        res.headers_mut().insert("location", v);
    }
    Ok(res)
}

/// One event; no token needed. With a valid token, the view is recorded for the reader's
/// recommendations (an invalid one is ignored here: the event is public).
#[utoipa::path(get, path = "/api/v1/events/{id}", tag = "events",
    params(("id" = i64, Path, description = "Event id")),
    responses(
        (status = 200, description = "The event", body = EventView),
        (status = 404, description = "No such event", body = ErrorBody),
    ))]
pub async fn get(id: String, app: App, auth: Option<String>) -> Result<Response, ApiError> {
    let event_id = parse_id(&id)?;
    let key = event::key(event_id);
    let (version, body) = match app.events.view::<EventJson>(&key) {
        // The owner runs on this node and published its answer: no wait behind its mailbox.
        Some(event) => (event.version, event.body.clone()),
        // On the heap: it may wait on Redis, and the common read above builds none of it.
        None => Box::pin(ask(&app, event_id, key)).await?,
    };
    if auth.is_some() {
        if let Ok(caller) = app.authenticate(auth.as_deref()).await {
            app.tracker.view(caller.principal.user_id, event_id);
        }
    }
    Ok(answer(version, body))
}

/// An event's answer: its JSON, tagged with its version.
fn answer(version: i64, body: bytes::Bytes) -> Response {
    let mut res = super::json_bytes(body);
    if let Ok(v) = warp::http::HeaderValue::try_from(format!("\"{version}\"")) {
        res.headers_mut().insert(warp::http::header::ETAG, v);
    }
    res
}

/// `GET /api/v1/events/{id}` as recognised ahead of the route tree.
pub enum HotRead {
    /// Answered at once: anonymous, and the event's owner runs here and has published its
    /// answer. No task, no boxed future, no copy of the id.
    Answered(Response),
    /// To be answered by [`read_now`]: the id and the `Authorization` value.
    Ask(String, Option<String>),
}

/// `GET /api/v1/events/{id}` recognised ahead of the route tree, so the hottest read skips its
/// filters. Only a plain decimal id and a readable `Authorization` header, and only without
/// CORS; anything else goes through the tree, which answers the same.
pub fn hot_read(app: &App, req: &warp::http::Request<hyper::body::Incoming>) -> Option<HotRead> {
    if req.method() != warp::http::Method::GET || !app.config.cors_origins.is_empty() {
        return None;
    }
    let id = req.uri().path().strip_prefix("/api/v1/events/")?;
    if !plain_id(id) {
        return None;
    }
    let auth = readable(req.headers(), warp::http::header::AUTHORIZATION)?;
    if auth.is_none()
        && let Ok(event_id) = parse_id(id)
        && let Some(event) = app.events.view::<EventJson>(&event::key(event_id))
    {
        return Some(HotRead::Answered(answer(event.version, event.body.clone())));
    }
    Some(HotRead::Ask(id.to_owned(), auth))
}

/// Whether a path segment is an id the hot paths take: 1 to 19 decimal digits.
pub(super) fn plain_id(segment: &str) -> bool {
    !segment.is_empty() && segment.len() <= 19 && segment.bytes().all(|b| b.is_ascii_digit())
}

/// A header as the route tree's `header::optional` reads it: `Some(None)` when absent, `None`
/// when present but not text (the tree answers that).
pub(super) fn readable(
    headers: &warp::http::HeaderMap,
    name: impl warp::http::header::AsHeaderName,
) -> Option<Option<String>> {
    match headers.get(name) {
        Some(v) => Some(Some(v.to_str().ok()?.to_owned())),
        None => Some(None),
    }
}

/// Answers a read [`hot_read`] left to ask, as the route tree would.
pub async fn read_now(app: App, id: String, auth: Option<String>) -> Response {
    respond(get(id, app, auth).await)
}

/// An event's version and JSON from its owner, or from the shared cache when another node owns
/// it.
async fn ask(app: &App, event_id: i64, key: EntityKey) -> Result<(i64, bytes::Bytes), ApiError> {
    // The owner's actor keeps the answer's bytes: the shared cache only saves a hop to another
    // node, and spreads the reads of a hot event over the cluster.
    let cached = if app.cluster.is_local(&key) {
        None
    } else {
        app.caches.event(event_id).await
    };
    let answer = match cached
        .as_ref()
        .and_then(|c| Some((c.version, c.hit.clone()?)))
    {
        Some(hit) => hit,
        None => {
            let event = app
                .events
                .ask(key, |reply| EventMessage::Get { reply })
                .await??;
            if let Some(lookup) = &cached {
                app.caches
                    .put_event(lookup, event.version, &event.body)
                    .await;
            }
            (event.version, event.body)
        }
    };
    Ok(answer)
}

/// The version named by `If-Match`; one that names no version can match none (412).
fn parse_if_match(v: &str) -> Option<i64> {
    let v = v.trim();
    if v.is_empty() || v == "*" {
        return None;
    }
    Some(
        v.trim_start_matches("W/")
            .trim_matches('"')
            .parse()
            .unwrap_or(-1),
    )
}

/// Changes an event (its creator, or holders of events:update).
#[utoipa::path(patch, path = "/api/v1/events/{id}", tag = "events", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Event id"),
           ("If-Match" = Option<String>, Header, description = "The version the change is based on")),
    request_body = UpdateEventRequest,
    responses(
        (status = 200, description = "The event as changed", body = EventView),
        (status = 400, description = "Malformed JSON or If-Match", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not the creator", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
        (status = 409, description = "Capacity below the seats taken", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
    ))]
pub async fn update(
    id: String,
    app: App,
    auth: Option<String>,
    if_match: Option<String>,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    let key = event_key(&id)?;
    let if_match = if_match.as_deref().and_then(parse_if_match);
    let req: UpdateEventRequest = parse_json(&body, None)?;
    req.validate()?;
    let patch = EventPatch {
        title: req.title,
        description: req.description,
        date: req.date.as_deref().and_then(parse_date),
        location: req.location,
        latitude: req.latitude,
        longitude: req.longitude,
        capacity: req.capacity,
        category: req.category.as_deref().and_then(Category::parse),
        tags: req.tags,
        price_cents: price_cents(req.price),
    };
    let principal = caller.principal;
    let event = app
        .events
        .ask(key, |reply| EventMessage::Update {
            principal,
            patch,
            if_match,
            trace: convene_cluster::trace::carried(),
            reply,
        })
        .await??;
    app.caches.event_changed(event.id).await;
    Ok(json(StatusCode::OK, &EventView::from(event)))
}

/// Deletes an event (its creator, or holders of events:delete).
#[utoipa::path(delete, path = "/api/v1/events/{id}", tag = "events", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Event id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not the creator", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
    ))]
pub async fn delete(id: String, app: App, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    let key = event_key(&id)?;
    let principal = caller.principal;
    let event_id = key.numeric_id();
    app.events
        .ask(key, |reply| EventMessage::Delete {
            principal,
            trace: convene_cluster::trace::carried(),
            reply,
        })
        .await??;
    if let Some(id) = event_id {
        app.caches.event_changed(id).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_validation_rules_report_every_failing_field() {
        let req: CreateEventRequest = serde_json::from_value(serde_json::json!({
            "title": "ab", "description": "x".repeat(5001), "date": "2001-01-01T00:00:00Z",
            "location": "", "capacity": 0, "category": "music"
        }))
        .unwrap();
        let ApiError::Validation(fields) = ApiError::from(req.validate().unwrap_err()) else {
            panic!("expected a validation error");
        };
        let names: Vec<_> = fields.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "capacity",
                "category",
                "date",
                "description",
                "location",
                "title"
            ]
        );
    }
}

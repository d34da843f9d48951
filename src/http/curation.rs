//! Curation for admins: the events curation flagged, the lowest quality first.

use convene_actors::curation::Curation;
use convene_actors::model::EventView;
use convene_actors::rules::permissions;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, ErrorBody};
use super::{bearer, json, raw_query, respond, with_app};
use crate::app::App;

/// The routes of this module.
pub fn routes(app: App) -> warp::filters::BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "admin" / "curation")
        .and(warp::get())
        .and(with_app(app))
        .and(bearer())
        .and(raw_query())
        .then(flagged)
        .map(respond)
        .boxed()
}

/// `?limit=` (1 to 100, default 20) and `?offset=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FlaggedQuery {
    /// How many, 1 to 100 (default 20).
    pub limit: Option<i64>,
    /// How many to skip (default 0).
    pub offset: Option<i64>,
}

/// A flagged event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Flagged {
    /// The event.
    pub event: EventView,
    /// Why it was flagged.
    pub curation: Curation,
}

/// A page of flagged events.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlaggedList {
    /// The events, the lowest quality first.
    pub items: Vec<Flagged>,
}

/// Events curation flagged (near-duplicates, spam signals, a category that does not fit the
/// text, missing details), the lowest quality first.
#[utoipa::path(get, path = "/api/v1/admin/curation", tag = "recommendations",
    security(("bearer" = [])),
    params(FlaggedQuery),
    responses(
        (status = 200, description = "Flagged events", body = FlaggedList),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 422, description = "Invalid limit or offset", body = ErrorBody),
    ))]
pub async fn flagged(app: App, auth: Option<String>, query: String) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    if !caller.principal.has(permissions::ADMIN_ACCESS) {
        return Err(ApiError::Forbidden("curation is for admins".into()));
    }
    let q: FlaggedQuery = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::BadRequest(format!("malformed query: {e}")))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 100"));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::invalid("offset", "must be 0 or more"));
    }
    let items = app
        .store
        .flagged_events(limit, offset)
        .await?
        .into_iter()
        .map(|(event, curation)| Flagged {
            event: EventView::from(event),
            curation,
        })
        .collect();
    Ok(json(StatusCode::OK, &FlaggedList { items }))
}

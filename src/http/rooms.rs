//! Live rooms over REST: who is present, and the recent messages.

use convene_actors::protocol::Presences;
use convene_actors::room::{self, MAX_PRESENCE_PAGE, RoomCommand, RoomError, parse_room};
use convene_actors::store::RoomMessage;
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
    let presence = warp::path!("api" / "v1" / "rooms" / String / "presence")
        .and(warp::get())
        .and(with_app(app.clone()))
        .and(bearer())
        .and(raw_query())
        .then(presence)
        .map(respond);
    let messages = warp::path!("api" / "v1" / "rooms" / String / "messages")
        .and(warp::get())
        .and(with_app(app))
        .and(bearer())
        .and(raw_query())
        .then(messages)
        .map(respond);
    presence.or(messages).unify().boxed()
}

/// Who is in a room.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PresenceResponse {
    /// The room.
    pub room: String,
    /// `{user_id: {"metas": [{"conn": …, "online_at": …, …}]}}`, one meta per connection:
    /// every connection, or a page of them when `limit` was given.
    #[schema(value_type = Object)]
    pub presences: Presences,
    /// Connections in the room.
    pub connections: usize,
    /// Distinct users in the room.
    pub users: usize,
    /// The `after` of the next page, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Paging of a room's presence, by connection.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PresenceQuery {
    /// The `next` of the previous page.
    #[param(value_type = Option<String>)]
    pub after: Option<String>,
    /// Connections per page, 1 to 1000 (default: every connection).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

/// Recent messages of a room.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessagesResponse {
    /// The room.
    pub room: String,
    /// Messages after `since`, by seq.
    pub messages: Vec<RoomMessage>,
    /// The room's last seq.
    pub last_seq: i64,
}

/// Paging of room messages.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// Messages after this seq (default 0: all kept).
    #[param(value_type = Option<i64>, minimum = 0)]
    pub since: Option<String>,
    /// At most this many, 1 to 200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
}

pub(crate) fn room_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.replace("%3A", ":").replace("%3a", ":");
    parse_room(&name).map_err(|_| ApiError::NotFound)?;
    Ok(name)
}

pub(crate) fn room_error(e: RoomError) -> ApiError {
    match e {
        RoomError::HistoryGap { oldest } => ApiError::Conflict {
            code: "history_gap".into(),
            message: format!("messages before seq {oldest} are no longer kept"),
        },
        RoomError::NotFound | RoomError::InvalidRoom => ApiError::NotFound,
        RoomError::Forbidden | RoomError::NotJoined => ApiError::Forbidden(e.to_string()),
        RoomError::Unavailable => ApiError::Unavailable(e.to_string()),
    }
}

/// Who is present in a room.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/presence", tag = "rooms", security(("bearer" = [])),
    params(("room" = String, Path, description = "event:{id} or room:{name}"), PresenceQuery),
    responses(
        (status = 200, description = "Presences", body = PresenceResponse),
        (status = 400, description = "Malformed query string", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "Not a room", body = ErrorBody),
        (status = 422, description = "Invalid after or limit", body = ErrorBody),
    ))]
pub async fn presence(
    room: String,
    app: App,
    auth: Option<String>,
    query: String,
) -> Result<Response, ApiError> {
    app.authenticate(auth.as_deref()).await?;
    let room = room_name(&room)?;
    let q: PresenceQuery = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::BadRequest(format!("malformed query: {e}")))?;
    let after = match q.after.as_deref().filter(|s| !s.is_empty()).map(str::parse) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            return Err(ApiError::invalid(
                "after",
                "must be the next of a previous page",
            ));
        }
    };
    let limit = match q
        .limit
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::parse::<usize>)
    {
        None => usize::MAX,
        Some(Ok(n)) if (1..=MAX_PRESENCE_PAGE).contains(&n) => n,
        Some(_) => {
            let message = format!("must be between 1 and {MAX_PRESENCE_PAGE}");
            return Err(ApiError::invalid("limit", message));
        }
    };
    let page = app
        .rooms
        .ask(room::key(&room), |reply| RoomCommand::Presence {
            after,
            limit,
            reply,
        })
        .await?
        .map_err(room_error)?;
    let body = PresenceResponse {
        room,
        presences: page.presences,
        connections: page.connections,
        users: page.users,
        next: page.next.map(|n| n.to_string()),
    };
    Ok(json(StatusCode::OK, &body))
}

/// The room's recent messages after `since`.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/messages", tag = "rooms", security(("bearer" = [])),
    params(("room" = String, Path, description = "event:{id} or room:{name}"), MessagesQuery),
    responses(
        (status = 200, description = "Messages", body = MessagesResponse),
        (status = 400, description = "Malformed query string", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "Not a room", body = ErrorBody),
        (status = 409, description = "`history_gap`: since is older than the kept history", body = ErrorBody),
        (status = 422, description = "Invalid since or limit", body = ErrorBody),
    ))]
pub async fn messages(
    room: String,
    app: App,
    auth: Option<String>,
    query: String,
) -> Result<Response, ApiError> {
    app.authenticate(auth.as_deref()).await?;
    let room = room_name(&room)?;
    let q: MessagesQuery = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::BadRequest(format!("malformed query: {e}")))?;
    let since = match q
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::parse::<i64>)
    {
        None => 0,
        Some(Ok(n)) if n >= 0 => n,
        Some(_) => return Err(ApiError::invalid("since", "must be a seq, 0 or more")),
    };
    let limit = match q
        .limit
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::parse::<usize>)
    {
        None => 50,
        Some(Ok(n)) if (1..=200).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid("limit", "must be between 1 and 200")),
    };
    let (messages, last_seq) = app
        .rooms
        .ask(room::key(&room), |reply| RoomCommand::History {
            since,
            limit,
            reply,
        })
        .await?
        .map_err(room_error)?;
    Ok(json(
        StatusCode::OK,
        &MessagesResponse {
            room,
            messages,
            last_seq,
        },
    ))
}

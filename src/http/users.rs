//! The signed-in user's account and registrations.

use convene_actors::model::{Registration, User};
use convene_actors::user::{self, UserMessage};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use validator::Validate;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, ErrorBody};
use super::{bearer, body, json, parse_json, respond, with_app};
use crate::app::App;
use crate::validation::{json_has_nul, no_control_chars};

/// The routes of this module.
pub fn routes(app: App) -> warp::filters::BoxedFilter<(Response,)> {
    let max = app.config.max_body_bytes;
    let me = warp::path!("api" / "v1" / "users" / "me");
    let get = me
        .and(warp::get())
        .and(with_app(app.clone()))
        .and(bearer())
        .then(get_me)
        .map(respond);
    let patch = me
        .and(warp::patch())
        .and(with_app(app.clone()))
        .and(bearer())
        .and(body(max))
        .then(update_me)
        .map(respond);
    let registrations = warp::path!("api" / "v1" / "users" / "me" / "registrations")
        .and(warp::get())
        .and(with_app(app))
        .and(bearer())
        .then(my_registrations)
        .map(respond);
    get.or(patch).unify().or(registrations).unify().boxed()
}

/// Changes to the signed-in account.
#[derive(Debug, Deserialize, Validate, ToSchema)]
pub struct UpdateMeRequest {
    /// New display name, 1 to 255 characters, not blank.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*\S[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    #[validate(length(min = 1, max = 255), custom(function = "no_control_chars"))]
    pub name: Option<String>,
    /// New profile (a JSON object; replaces the old one). Its `home`, `{"lat", "lon"}`, places
    /// the user for recommendations.
    #[schema(value_type = Option<Object>)]
    pub profile: Option<Value>,
}

/// A list of registrations.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RegistrationList {
    /// The registrations.
    pub registrations: Vec<Registration>,
}

/// The signed-in account.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "The account", body = User),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
    ))]
pub async fn get_me(app: App, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    let user = app
        .users
        .ask(user::key(caller.principal.user_id), |reply| {
            UserMessage::Get { reply }
        })
        .await??;
    Ok(json(StatusCode::OK, &user))
}

/// Changes the signed-in account's name or profile.
#[utoipa::path(patch, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    request_body = UpdateMeRequest,
    responses(
        (status = 200, description = "The account as changed", body = User),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
    ))]
pub async fn update_me(
    app: App,
    auth: Option<String>,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    let req: UpdateMeRequest = parse_json(&body, None)?;
    req.validate()?;
    if let Some(profile) = &req.profile {
        if !profile.is_object() {
            return Err(ApiError::invalid("profile", "must be a JSON object"));
        }
        if let Some(home) = profile.get("home").filter(|h| !h.is_null()) {
            if crate::recommend::home(profile).is_none() || !home.is_object() {
                return Err(ApiError::invalid(
                    "profile.home",
                    "must be {\"lat\": -90..90, \"lon\": -180..180} or null",
                ));
            }
        }
        if json_has_nul(profile) {
            return Err(ApiError::invalid(
                "profile",
                "must not contain NUL characters",
            ));
        }
    }
    let name = req.name.map(|n| n.trim().to_owned());
    if name.as_deref() == Some("") {
        return Err(ApiError::invalid("name", "must not be blank"));
    }
    let profile = req.profile;
    let user = app
        .users
        .ask(user::key(caller.principal.user_id), |reply| {
            UserMessage::Update {
                name,
                profile,
                trace: convene_cluster::trace::carried(),
                reply,
            }
        })
        .await??;
    Ok(json(StatusCode::OK, &user))
}

/// The signed-in user's registrations that are not cancelled, newest first.
#[utoipa::path(get, path = "/api/v1/users/me/registrations", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "Registrations", body = RegistrationList),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
    ))]
pub async fn my_registrations(app: App, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    let registrations = app
        .store
        .user_registrations(caller.principal.user_id)
        .await?;
    Ok(json(StatusCode::OK, &RegistrationList { registrations }))
}

//! Sign-up, login and logout.

use convene_actors::model::{NewUser, Role, User};
use convene_actors::user::{self, UserMessage, sign_up};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::Validate;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::error::{ApiError, ErrorBody};
use super::{bearer, body, json, parse_json, respond, with_app};
use crate::app::App;
use crate::revocations;
use crate::validation::no_control_chars;

/// The routes of this module.
pub fn routes(app: App) -> warp::filters::BoxedFilter<(Response,)> {
    let max = app.config.max_body_bytes;
    let register = warp::path!("api" / "v1" / "auth" / "register")
        .and(warp::post())
        .and(with_app(app.clone()))
        .and(body(max))
        .then(register)
        .map(respond);
    let login = warp::path!("api" / "v1" / "auth" / "login")
        .and(warp::post())
        .and(with_app(app.clone()))
        .and(body(max))
        .then(login)
        .map(respond);
    let logout = warp::path!("api" / "v1" / "auth" / "logout")
        .and(warp::post())
        .and(with_app(app))
        .and(bearer())
        .then(logout)
        .map(respond);
    register.or(login).unify().or(logout).unify().boxed()
}

/// Sign-up request.
#[derive(Debug, Deserialize, Validate, ToSchema)]
pub struct RegisterRequest {
    /// E-mail address (compared without case).
    #[schema(value_type = String, required = true, format = Email, max_length = 255)]
    #[validate(required, email, length(max = 255))]
    pub email: Option<String>,
    /// 8 to 128 characters.
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    #[validate(
        required,
        length(min = 8, max = 128),
        custom(function = "no_control_chars")
    )]
    pub password: Option<String>,
    /// Display name, 1 to 255 characters, not blank.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 255, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*\S[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    #[validate(
        required,
        length(min = 1, max = 255),
        custom(function = "no_control_chars")
    )]
    pub name: Option<String>,
}

/// Login request.
#[derive(Debug, Deserialize, Validate, ToSchema)]
pub struct LoginRequest {
    /// E-mail address.
    #[schema(value_type = String, required = true, max_length = 255)]
    #[validate(required, length(max = 255))]
    pub email: Option<String>,
    /// Password.
    #[schema(value_type = String, required = true, max_length = 128)]
    #[validate(required, length(max = 128))]
    pub password: Option<String>,
}

/// A signed-in user and their access token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The account.
    pub user: User,
    /// JWT (HS256) to send as `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: i64,
}

fn token_response(app: &App, user: User) -> Result<TokenResponse, ApiError> {
    let (access_token, _) = app
        .auth
        .issue(&user)
        .map_err(|e| ApiError::Unavailable(format!("token signing failed: {e}")))?;
    Ok(TokenResponse {
        user,
        access_token,
        token_type: "Bearer".into(),
        expires_in: app.auth.ttl_secs(),
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::Unavailable("password hashing failed".into()))
}

/// Creates an account and signs it in.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created", body = TokenResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "E-mail address taken", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
    ))]
pub async fn register(app: App, body: bytes::Bytes) -> Result<Response, ApiError> {
    let req: RegisterRequest = parse_json(&body, None)?;
    req.validate()?;
    let (email, password, name) = (
        req.email.unwrap_or_default().trim().to_lowercase(),
        req.password.unwrap_or_default(),
        req.name.unwrap_or_default().trim().to_owned(),
    );
    if name.is_empty() {
        return Err(ApiError::invalid("name", "must not be blank"));
    }
    let auth = app.auth.clone();
    let password_hash = blocking(move || auth.hash_password(&password))
        .await?
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let user = sign_up(
        &app.store,
        NewUser {
            email,
            password_hash,
            name,
            role: Role::User,
        },
    )
    .await?;
    Ok(json(StatusCode::CREATED, &token_response(&app, user)?))
}

/// Signs in with e-mail and password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Wrong e-mail or password", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
    ))]
pub async fn login(app: App, body: bytes::Bytes) -> Result<Response, ApiError> {
    let req: LoginRequest = parse_json(&body, None)?;
    req.validate()?;
    let email = req.email.unwrap_or_default().trim().to_lowercase();
    let password = req.password.unwrap_or_default();
    let found = app.store.credentials(&email).await?;
    let hash = found
        .as_ref()
        .map_or_else(|| app.dummy_hash.clone(), |(_, h)| h.clone());
    let auth = app.auth.clone();
    let ok = blocking(move || auth.verify_password(&password, &hash)).await?;
    match found {
        Some((user, _)) if ok => Ok(json(StatusCode::OK, &token_response(&app, user)?)),
        _ => Err(ApiError::Unauthorized("invalid e-mail or password".into())),
    }
}

/// Revokes the token the request carries.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 204, description = "Token revoked"),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
    ))]
pub async fn logout(app: App, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    let key = user::key(caller.principal.user_id);
    let (jti, expires_at) = (caller.claims.jti.clone(), caller.claims.expires_at());
    app.users
        .ask(key, |reply| UserMessage::RevokeToken {
            jti,
            expires_at,
            reply,
        })
        .await??;
    // Stored: every node refuses the token from now on, and the others hear of it at once.
    revocations::announce(&app.cluster, &caller.claims.jti, expires_at);
    Ok(StatusCode::NO_CONTENT.into_response())
}

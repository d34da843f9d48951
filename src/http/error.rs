//! The API's errors: one enum, mapped to a status code and the JSON body
//! `{"error": code, "message": text, "details": {...}}` in one place, for our own errors and
//! for warp's rejections alike.

use std::collections::BTreeMap;
use std::convert::Infallible;

use convene_actors::EntityError;
use convene_cluster::AskError;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

/// Every error the API answers with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (bad JSON, bad header).
    #[error("{0}")]
    BadRequest(String),
    /// Missing, invalid, expired or revoked token; or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// No such resource.
    #[error("not found")]
    NotFound,
    /// The route exists for other methods.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Conflicts with the current state.
    #[error("{message}")]
    Conflict {
        /// Stable code such as `event_full`.
        code: String,
        /// Text for people.
        message: String,
    },
    /// `If-Match` did not match.
    #[error("the resource is at version {current}, not {expected}")]
    PreconditionFailed {
        /// What the caller sent.
        expected: i64,
        /// What the resource has.
        current: i64,
    },
    /// Body larger than allowed.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(u64),
    /// Wrong content type.
    #[error("request bodies are JSON (application/json)")]
    UnsupportedMediaType,
    /// Fields failed validation.
    #[error("the request has invalid fields")]
    Validation(BTreeMap<String, Vec<String>>),
    /// A dependency needed for this call is down, or the owner did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    /// A rate limit refused the request.
    #[error(
        "too many requests: the {level} limit is {per_sec} per second; retry in {retry_after_secs} s"
    )]
    TooManyRequests {
        /// `global`, `user` or `ip`.
        level: &'static str,
        /// The limit's rate.
        per_sec: u32,
        /// When the request would pass.
        retry_after_secs: u64,
    },
}

impl warp::reject::Reject for ApiError {}

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub error: String,
    /// Text for people.
    pub message: String,
    /// Per-field problems, or other details.
    #[schema(value_type = Object)]
    pub details: Value,
}

impl ApiError {
    /// A 422 for one field.
    pub fn invalid(field: &str, problem: impl Into<String>) -> Self {
        Self::Validation(BTreeMap::from([(field.to_owned(), vec![problem.into()])]))
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn code(&self) -> &str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict { code, .. } => code,
            Self::PreconditionFailed { .. } => "precondition_failed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Validation(_) => "validation_failed",
            Self::Unavailable(_) => "unavailable",
            Self::TooManyRequests { .. } => "rate_limited",
        }
    }

    fn details(&self) -> Value {
        match self {
            Self::Validation(fields) => json!(fields),
            Self::PreconditionFailed { current, .. } => json!({ "current_version": current }),
            _ => json!({}),
        }
    }
}

impl ApiError {
    /// The JSON body, as every edge answers it.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code().to_owned(),
            message: self.to_string(),
            details: self.details(),
        }
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut res =
            warp::reply::with_status(warp::reply::json(&body), self.status()).into_response();
        if matches!(self, Self::Unavailable(_)) {
            res.headers_mut().insert(
                "retry-after",
                warp::http::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if let Self::TooManyRequests {
            level,
            per_sec,
            retry_after_secs,
        } = self
        {
            // The IETF RateLimit header fields: the policy that refused, none left, and when.
            let headers = [
                ("retry-after", retry_after_secs.to_string()),
                ("ratelimit", format!("\"{level}\";r=0;t={retry_after_secs}")),
                ("ratelimit-policy", format!("\"{level}\";q={per_sec};w=1")),
            ];
            for (name, value) in headers {
                if let Ok(v) = warp::http::HeaderValue::from_str(&value) {
                    res.headers_mut().insert(name, v);
                }
            }
        }
        res
    }
}

impl From<EntityError> for ApiError {
    fn from(e: EntityError) -> Self {
        match e {
            EntityError::NotFound => Self::NotFound,
            EntityError::Forbidden(m) => Self::Forbidden(m),
            EntityError::PreconditionFailed { expected, current } => {
                Self::PreconditionFailed { expected, current }
            }
            EntityError::Conflict { code, message } => Self::Conflict { code, message },
            EntityError::Unavailable(m) => {
                tracing::warn!(error = %m, "storage unavailable");
                Self::Unavailable("storage is unavailable; retry shortly".into())
            }
        }
    }
}

impl From<AskError> for ApiError {
    fn from(e: AskError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<convene_actors::StoreError> for ApiError {
    fn from(e: convene_actors::StoreError) -> Self {
        EntityError::from(e).into()
    }
}

impl From<validator::ValidationErrors> for ApiError {
    fn from(errors: validator::ValidationErrors) -> Self {
        let fields = errors
            .field_errors()
            .into_iter()
            .map(|(field, errs)| {
                let problems = errs
                    .iter()
                    .map(|e| {
                        e.message
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_else(|| describe(e))
                    })
                    .collect();
                (field.to_string(), problems)
            })
            .collect();
        Self::Validation(fields)
    }
}

/// A sentence for a validator error that carries no message of its own.
fn describe(e: &validator::ValidationError) -> String {
    let p = |k: &str| e.params.get(k).map(|v| v.to_string());
    match e.code.as_ref() {
        "required" => "is required".into(),
        "length" => match (p("min"), p("max")) {
            (Some(min), Some(max)) => format!("must be {min} to {max} characters long"),
            (None, Some(max)) => format!("must be at most {max} long"),
            (Some(min), None) => format!("must be at least {min} long"),
            _ => "has the wrong length".into(),
        },
        "range" => match (p("min"), p("max")) {
            (Some(min), Some(max)) => format!("must be between {min} and {max}"),
            _ => "is out of range".into(),
        },
        "email" => "must be an e-mail address".into(),
        other => other.replace('_', " "),
    }
}

/// Turns every rejection into the JSON error body with the right status. A route whose path and
/// method matched says most about the request, so what it found wrong with the request (a
/// header, the query, the body) comes before the other routes' "not this method".
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.is_not_found() {
        ApiError::NotFound
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge(0)
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::UnsupportedMediaType
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::BadRequest(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::BadRequest(e.to_string())
    } else if let Some(e) = rejection.find::<warp::filters::cors::CorsForbidden>() {
        ApiError::Forbidden(e.to_string())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        ApiError::BadRequest("the request could not be understood".into())
    };
    Ok(error.into_response())
}

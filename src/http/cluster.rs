//! The cluster console over REST (admins only): the members as this node sees them, and which
//! member owns a given entity key.

use convene_actors::rules::permissions;
use convene_cluster::{MemberReport, Owner};
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
    warp::path!("api" / "v1" / "cluster")
        .and(warp::get())
        .and(with_app(app))
        .and(bearer())
        .and(raw_query())
        .then(status)
        .map(respond)
        .boxed()
}

/// Which member owns a key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyOwner {
    /// The key, `kind/id`.
    pub key: String,
    /// The owning member's name (this node when no member is up).
    pub owner: String,
}

/// The cluster as one node sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: String,
    /// Whether it runs as a member of a cluster (or alone).
    pub clustered: bool,
    /// Every member, this node first.
    #[schema(value_type = Vec<Object>)]
    pub members: Vec<MemberReport>,
    /// The owner of the key asked for with `?key=`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyOwner>,
}

/// `?key=kind/id`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// An entity key such as `event/42`.
    pub key: Option<String>,
}

/// Members with status, address, uptime and entity counts; the owner of `?key=`.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "operations", security(("bearer" = [])),
    params(StatusQuery),
    responses(
        (status = 200, description = "The members", body = ClusterStatus),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 422, description = "Invalid key", body = ErrorBody),
    ))]
pub async fn status(app: App, auth: Option<String>, query: String) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    if !caller.principal.has(permissions::ADMIN_ACCESS) {
        return Err(ApiError::Forbidden(
            "the cluster console is for admins".into(),
        ));
    }
    let q: StatusQuery = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::BadRequest(format!("malformed query: {e}")))?;
    let key = match q.key.filter(|k| !k.is_empty()) {
        None => None,
        Some(raw) => {
            let key = app.cluster.parse_key(&raw).map_err(|e| {
                ApiError::invalid("key", format!("{e} (expected kind/id, as event/42)"))
            })?;
            let owner = match app.cluster.owner(&key) {
                Owner::Local => app.cluster.local().to_owned(),
                Owner::Remote(name) => name,
            };
            Some(KeyOwner {
                key: key.to_string(),
                owner,
            })
        }
    };
    Ok(json(
        StatusCode::OK,
        &ClusterStatus {
            node: app.cluster.local().to_owned(),
            clustered: app.cluster.is_clustered(),
            members: app.cluster.report().await,
            key,
        },
    ))
}

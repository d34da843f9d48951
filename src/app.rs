//! The dependencies every edge shares: the store, the token authority, the routers to the
//! entity shards, the metrics and the configuration.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use convene_actors::analytics::AnalyticsMessage;
use convene_actors::event::EventMessage;
use convene_actors::fanout::FanOutMessage;
use convene_actors::room::RoomCommand;
use convene_actors::rules::Principal;
use convene_actors::user::UserMessage;
use convene_cluster::{Cluster, Router};
use ractor::ActorRef;

use crate::analytics::Tracker;
use crate::auth::{Auth, Claims, TokenError};
use crate::bus::Buses;
use crate::config::Config;
use crate::http::error::ApiError;
use crate::metrics::Metrics;
use crate::recommend::serving::{Models, Recommender};
use crate::revocations::Revocations;
use crate::search::SearchIndex;
use crate::store::SqlStore;

/// Cheap to clone; everything inside is shared.
#[derive(Clone)]
pub struct App(Arc<Inner>);

/// See [`App`].
pub struct Inner {
    /// The database.
    pub store: SqlStore,
    /// Tokens and passwords.
    pub auth: Auth,
    /// The tokens revoked, held in memory.
    pub revocations: Arc<Revocations>,
    /// Reaches user actors.
    pub users: Router<UserMessage>,
    /// Reaches event actors.
    pub events: Router<EventMessage>,
    /// Reaches room actors.
    pub rooms: Router<RoomCommand>,
    /// Reaches the analytics windows.
    pub windows: Router<AnalyticsMessage>,
    /// This node's analytics intake.
    pub tracker: Tracker,
    /// Delivers room frames to this node's sockets.
    pub fanout: ActorRef<FanOutMessage>,
    /// NATS and Kafka, those configured, and the in-process feed of domain events.
    pub buses: Buses,
    /// This node's search index.
    pub search: Arc<SearchIndex>,
    /// The recommendation model this node serves.
    pub models: Arc<Models>,
    /// The workers that answer recommendation requests on this node.
    pub recommender: Recommender,
    /// The members of the cluster and the owner of each key.
    pub cluster: Cluster,
    /// Set when the node is leaving: health answers 503 so load balancers stop sending work.
    pub draining: AtomicBool,
    /// Metric families.
    pub metrics: Metrics,
    /// What the operator console's reports keep between calls.
    pub admin: crate::admin::Admin,
    /// The request rate limits.
    pub limiter: std::sync::Arc<crate::limits::Limiter>,
    /// The link to Redis, when one is configured.
    pub redis: Option<Arc<crate::redis_link::RedisLink>>,
    /// The read caches.
    pub caches: Arc<crate::cache::Caches>,
    /// The configuration the node started with.
    pub config: Config,
    /// When the node started.
    pub started: Instant,
    /// A hash checked when a login names an unknown e-mail, so both cases take as long.
    pub dummy_hash: String,
}

impl std::ops::Deref for App {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// Their token's claims.
    pub claims: Claims,
}

impl App {
    /// Wraps the dependencies.
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    /// The claims of a service token given as `Bearer <token>`: valid, unexpired, not revoked,
    /// and of the `service` role (a user's token is refused).
    pub fn authenticate_service(&self, header: Option<&str>) -> Result<Claims, ApiError> {
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "a service token (`Authorization: Bearer …`) is required".into(),
                )
            })?;
        let claims = self.auth.verify(token).map_err(|e| match e {
            TokenError::Expired => ApiError::Unauthorized("the token has expired".into()),
            TokenError::Invalid => ApiError::Unauthorized("the token is invalid".into()),
        })?;
        if self.revocations.is_revoked(&claims.jti) {
            return Err(ApiError::Unauthorized("the token has been revoked".into()));
        }
        if !claims.is_service() {
            return Err(ApiError::Forbidden("commands need a service token".into()));
        }
        Ok(claims)
    }

    /// The caller behind an `Authorization: Bearer …` header: a valid, unexpired token of
    /// ours that has not been revoked.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let header =
            header.ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".into())
            })?;
        let claims = self.auth.verify(token).map_err(|e| match e {
            TokenError::Expired => ApiError::Unauthorized("the token has expired".into()),
            TokenError::Invalid => ApiError::Unauthorized("the token is invalid".into()),
        })?;
        if self.revocations.is_revoked(&claims.jti) {
            return Err(ApiError::Unauthorized("the token has been revoked".into()));
        }
        let principal = claims
            .principal()
            .ok_or_else(|| ApiError::Unauthorized("the token is invalid".into()))?;
        Ok(Caller { principal, claims })
    }
}

//! Operations endpoints: `/health` in the seed's format, `/metrics` for Prometheus and
//! `/openapi.json` generated from the handlers.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{
    admin, analytics, auth, cluster, curation, events, json, recommendations, registrations, rooms,
    search, users, with_app,
};
use crate::app::App;

/// The routes of this module.
pub fn routes(app: App) -> warp::filters::BoxedFilter<(Response,)> {
    let health = warp::path!("health")
        .and(warp::get())
        .and(with_app(app.clone()))
        .then(health);
    // Liveness: the process answers. Readiness (/health) also needs the database, and a
    // database outage must not make the orchestrator restart every node.
    let live = warp::path!("health" / "live").and(warp::get()).map(|| {
        json(
            StatusCode::OK,
            &serde_json::json!({"service": "convene", "status": "alive"}),
        )
    });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_app(app))
        .then(metrics);
    let openapi = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| warp::reply::json(&ApiDoc::openapi()).into_response());
    health
        .or(live)
        .unify()
        .or(metrics)
        .unify()
        .or(openapi)
        .unify()
        .boxed()
}

/// One dependency's health.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckResult {
    /// `healthy` or `unhealthy`.
    pub status: String,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The node's health, in the seed's format.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthStatus {
    /// Always `convene`.
    pub service: String,
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: String,
    /// When the check ran.
    pub timestamp: DateTime<Utc>,
    /// Per dependency.
    pub checks: BTreeMap<String, CheckResult>,
}

fn check(result: Result<(), String>) -> CheckResult {
    match result {
        Ok(()) => CheckResult {
            status: "healthy".into(),
            error: None,
        },
        Err(e) => CheckResult {
            status: "unhealthy".into(),
            error: Some(e),
        },
    }
}

/// Health of the node and its dependencies: 503 when a critical one (the database, the actors)
/// fails or the node is leaving; 200 `degraded` when only a bus is down.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Healthy", body = HealthStatus),
        (status = 503, description = "Unhealthy", body = HealthStatus),
    ))]
pub async fn health(app: App) -> Response {
    let mut checks = BTreeMap::new();
    checks.insert(
        "database".to_owned(),
        check(app.store.ping().await.map_err(|e| e.to_string())),
    );
    checks.insert(
        "actors".to_owned(),
        check(match (app.users.stats().await, app.events.stats().await) {
            (Ok(_), Ok(_)) => Ok(()),
            _ => Err("an entity shard is not answering".into()),
        }),
    );
    checks.insert(
        "cluster".to_owned(),
        check(if app.draining.load(Ordering::SeqCst) {
            Err("draining: this node is leaving".into())
        } else {
            Ok(())
        }),
    );
    let healthy = checks.values().all(|c| c.status == "healthy");
    // The buses are not critical: while one is down the outbox keeps what it would carry.
    let mut degraded = false;
    for bus in &app.buses.publishers() {
        let up = bus.up(false).await;
        degraded |= !up;
        checks.insert(
            bus.name().to_owned(),
            check(if up {
                Ok(())
            } else {
                Err("unreachable; domain events wait in the outbox".into())
            }),
        );
    }
    // Nor is Redis: without it the rate limits count per node and the caches are per node.
    if let Some(redis) = &app.redis {
        let up = redis.ping().await;
        degraded |= !up;
        checks.insert(
            "redis".to_owned(),
            check(if up {
                Ok(())
            } else {
                Err("unreachable; rate limits and caches are per node".into())
            }),
        );
    }
    let status = match (healthy, degraded) {
        (false, _) => "unhealthy",
        (true, true) => "degraded",
        (true, false) => "healthy",
    };
    let body = HealthStatus {
        service: "convene".into(),
        status: status.into(),
        timestamp: Utc::now(),
        checks,
    };
    json(
        if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(app: App) -> Response {
    for (kind, active) in app.cluster.local_entities().await {
        app.metrics
            .actors_active
            .with_label_values(&[kind.as_str()])
            .set(active as i64);
    }
    warp::reply::with_header(
        app.metrics.render(),
        "content-type",
        "text/plain; version=0.0.4",
    )
    .into_response()
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI 3 document of every route.
#[derive(OpenApi)]
#[openapi(
    info(title = "Convene", description = "Events platform API: accounts, events, registrations."),
    paths(
        auth::register, auth::login, auth::logout,
        users::get_me, users::update_me, users::my_registrations,
        events::listing::list, events::create, events::get, events::update, events::delete,
        search::search,
        recommendations::for_me, recommendations::similar, recommendations::record,
        recommendations::model_status, recommendations::train, curation::flagged,
        analytics::trending, analytics::event, analytics::summary,
        registrations::register, registrations::cancel, registrations::registrations,
        rooms::presence, rooms::messages,
        health, metrics, cluster::status,
        admin::members, admin::actors, admin::entity, admin::rooms, admin::buses,
        admin::requests, admin::stream, admin::placements, admin::passivate, admin::drain,
        admin::undrain, admin::pin, admin::unpin, admin::notice,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Sign-up, login, logout"),
        (name = "users", description = "The signed-in account"),
        (name = "events", description = "Events"),
        (name = "registrations", description = "Seats and waitlists"),
        (name = "rooms", description = "Live rooms (WebSocket at /ws)"),
        (name = "recommendations", description = "Recommendations, similar events, interactions"),
        (name = "analytics", description = "Trending events, an event's numbers, the system's windows and anomalies"),
        (name = "operations", description = "Health, metrics and the cluster console"),
        (name = "console", description = "The operator console: members, actors, entities, rooms, buses, requests, and actions"),
    )
)]
pub struct ApiDoc;

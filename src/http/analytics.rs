//! Real-time analytics over HTTP: what is trending (public), one event's numbers (its
//! organiser and admins), and the summary of every window with the recent anomalies (admins).
//! The answers come from the analytics entities, wherever in the cluster they live.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use convene_actors::analytics::anomaly::Anomaly;
use convene_actors::analytics::window::{EventWindow, conversion};
use convene_actors::analytics::{self, AnalyticsMessage, Role, Trend, WindowSummary};
use convene_actors::model::Category;
use convene_actors::rules::permissions;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, ErrorBody};
use super::{bearer, json, parse_id, raw_query, respond, with_app};
use crate::app::App;

/// The longest trending window: the popularity window's length.
const LONGEST: i64 = analytics::window::Popularity::MINUTES;
/// Anomalies shown in the summary: those of the last day, at most this many.
const ANOMALIES: i64 = 20;

/// The routes of this module.
pub fn routes(app: App) -> warp::filters::BoxedFilter<(Response,)> {
    let trending = warp::path!("api" / "v1" / "analytics" / "trending")
        .and(warp::get())
        .and(with_app(app.clone()))
        .and(raw_query())
        .then(trending)
        .map(respond);
    let event = warp::path!("api" / "v1" / "analytics" / "events" / String)
        .and(warp::get())
        .and(with_app(app.clone()))
        .and(bearer())
        .then(event)
        .map(respond);
    let summary = warp::path!("api" / "v1" / "analytics" / "summary")
        .and(warp::get())
        .and(with_app(app))
        .and(bearer())
        .then(summary)
        .map(respond);
    trending.or(event).unify().or(summary).unify().boxed()
}

/// `?window=` (`5m`, `30m`, `1h`…: 1 to 30 minutes, default `30m`) and `?limit=` (1 to 100,
/// default 10).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TrendingQuery {
    /// Minutes (`15m`) or hours (`1h`) looked back, up to 30 minutes (default `30m`).
    pub window: Option<String>,
    /// How many, 1 to 100 (default 10).
    pub limit: Option<usize>,
}

/// Minutes in a window such as `30m` or `1h`, if it is one.
fn minutes_of(window: &str) -> Option<i64> {
    let (n, unit) = window.split_at(window.len().checked_sub(1)?);
    let n: i64 = n.parse().ok()?;
    match unit {
        "m" => Some(n),
        "h" => n.checked_mul(60),
        _ => None,
    }
}

/// An event trending.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrendingEvent {
    /// The event.
    pub event_id: i64,
    /// Its title.
    pub title: String,
    /// Its category.
    pub category: Category,
    /// When it takes place.
    pub date: DateTime<Utc>,
    /// Interest shown in the window (a registration 5, a waitlisting 4, a like or share 3, a
    /// click 2, a view 1, a cancellation −5).
    pub score: f64,
    /// Counts by signal, those above zero.
    pub counts: BTreeMap<String, u64>,
}

/// What is trending.
#[derive(Debug, Serialize, ToSchema)]
pub struct Trending {
    /// The window, as asked.
    pub window: String,
    /// Its minutes.
    pub minutes: i64,
    /// The events, the highest score first (deleted ones left out).
    pub items: Vec<TrendingEvent>,
}

/// The events with the most interest shown over the last minutes (views, clicks, likes,
/// shares, registrations), from the event-popularity window.
#[utoipa::path(get, path = "/api/v1/analytics/trending", tag = "analytics",
    params(TrendingQuery),
    responses(
        (status = 200, description = "Trending events", body = Trending),
        (status = 422, description = "Invalid window or limit", body = ErrorBody),
    ))]
pub async fn trending(app: App, query: String) -> Result<Response, ApiError> {
    let q: TrendingQuery = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::BadRequest(format!("malformed query: {e}")))?;
    let window = q.window.unwrap_or_else(|| format!("{LONGEST}m"));
    let minutes = minutes_of(&window)
        .filter(|m| (1..=LONGEST).contains(m))
        .ok_or_else(|| {
            ApiError::invalid(
                "window",
                format!("must be minutes or hours (such as 15m), from 1m to {LONGEST}m"),
            )
        })?;
    let limit = q.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 100"));
    }
    // A few more than asked, for the deleted events left out.
    let trends: Vec<Trend> = app
        .windows
        .ask(analytics::key(Role::Popularity), |reply| {
            AnalyticsMessage::Trending {
                minutes,
                limit: limit + 10,
                reply,
            }
        })
        .await??;
    let ids: Vec<i64> = trends.iter().map(|t| t.event_id).collect();
    let events: HashMap<i64, _> = app
        .store
        .events_by_ids(&ids)
        .await?
        .into_iter()
        .filter(|e| e.deleted_at.is_none())
        .map(|e| (e.id, e))
        .collect();
    let items = trends
        .into_iter()
        .filter_map(|t| {
            let e = events.get(&t.event_id)?;
            Some(TrendingEvent {
                event_id: t.event_id,
                title: e.title.clone(),
                category: e.category,
                date: e.date,
                score: t.score,
                counts: t.counts,
            })
        })
        .take(limit)
        .collect();
    Ok(json(
        StatusCode::OK,
        &Trending {
            window,
            minutes,
            items,
        },
    ))
}

/// An event's numbers over every stored minute.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventTotals {
    /// Views.
    pub views: u64,
    /// Registrations (promotions from the waitlist included).
    pub registrations: u64,
    /// Registrations per view, when there were views.
    pub conversion: Option<f64>,
    /// Every count by signal.
    pub counts: BTreeMap<String, u64>,
}

/// One event's analytics.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventAnalytics {
    /// The event.
    pub event_id: i64,
    /// The last half hour, live.
    pub window: EventWindow,
    /// Every minute stored (up to the summaries' retention), live minutes not yet closed
    /// left out.
    pub total: EventTotals,
}

/// Views, registrations and conversion of one event: live over the popularity window, and in
/// total from the per-minute aggregates. For the event's organiser and admins.
#[utoipa::path(get, path = "/api/v1/analytics/events/{id}", tag = "analytics",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Event id")),
    responses(
        (status = 200, description = "The event's numbers", body = EventAnalytics),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither its organiser nor an admin", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
    ))]
pub async fn event(id: String, app: App, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    let event_id = parse_id(&id)?;
    let event = app
        .store
        .events_by_ids(&[event_id])
        .await?
        .into_iter()
        .find(|e| e.deleted_at.is_none())
        .ok_or(ApiError::NotFound)?;
    if !caller
        .principal
        .may_manage(&event, permissions::ADMIN_ACCESS)
    {
        return Err(ApiError::Forbidden(
            "an event's analytics are for its organiser and admins".into(),
        ));
    }
    let window = app
        .windows
        .ask(analytics::key(Role::Popularity), |reply| {
            AnalyticsMessage::EventStats { event_id, reply }
        })
        .await??;
    let counts: BTreeMap<String, u64> = app
        .store
        .event_totals(event_id)
        .await?
        .into_iter()
        .map(|(k, v)| (k, v.max(0.0) as u64))
        .collect();
    let views = counts.get("view").copied().unwrap_or(0);
    let registrations = counts.get("register").copied().unwrap_or(0);
    let total = EventTotals {
        views,
        registrations,
        conversion: conversion(views, registrations),
        counts,
    };
    Ok(json(
        StatusCode::OK,
        &EventAnalytics {
            event_id,
            window,
            total,
        },
    ))
}

/// Every window as it is now, and the anomalies of the last day.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnalyticsSummary {
    /// When this was put together.
    pub generated_at: DateTime<Utc>,
    /// The last half hour of events: the five most popular.
    pub event_popularity: WindowSummary,
    /// The last hour of users: how many were active.
    pub user_activity: WindowSummary,
    /// The last five minutes of the system: requests, errors, interactions per minute.
    pub system_health: WindowSummary,
    /// Minutes of the last day whose registrations, views or server errors were far from the
    /// usual, newest first.
    pub anomalies: Vec<Anomaly>,
}

/// The three windows and the recent anomalies. For admins.
#[utoipa::path(get, path = "/api/v1/analytics/summary", tag = "analytics",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The windows and recent anomalies", body = AnalyticsSummary),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
pub async fn summary(app: App, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = app.authenticate(auth.as_deref()).await?;
    if !caller.principal.has(permissions::ADMIN_ACCESS) {
        return Err(ApiError::Forbidden(
            "the analytics summary is for admins".into(),
        ));
    }
    let ask = |role| {
        app.windows
            .ask(analytics::key(role), |reply| AnalyticsMessage::Summary {
                reply,
            })
    };
    let (popularity, activity, health) = tokio::join!(
        ask(Role::Popularity),
        ask(Role::Activity),
        ask(Role::Health)
    );
    let now = Utc::now();
    let anomalies = app
        .store
        .recent_anomalies(now - chrono::Duration::days(1), ANOMALIES)
        .await?;
    Ok(json(
        StatusCode::OK,
        &AnalyticsSummary {
            generated_at: now,
            event_popularity: popularity??,
            user_activity: activity??,
            system_health: health??,
            anomalies,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_minutes_or_hours() {
        assert_eq!(minutes_of("30m"), Some(30));
        assert_eq!(minutes_of("1h"), Some(60));
        assert_eq!(minutes_of("5"), None);
        assert_eq!(minutes_of("m"), None);
        assert_eq!(minutes_of(""), None);
        assert_eq!(minutes_of("1d"), None);
        assert_eq!(minutes_of("-5m"), Some(-5));
    }
}

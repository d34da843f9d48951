//! The event list: filters, cursor paging, and the page a client gets.

use chrono::{DateTime, Utc};
use convene_actors::model::{Category, Event};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warp::http::StatusCode;
use warp::reply::Response;

use super::{EventView, parse_date};
use crate::app::App;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::json;
use crate::store::EventFilter;

/// Filters and paging of the event list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this category.
    #[param(value_type = Option<Category>)]
    pub category: Option<String>,
    /// Only events on or after this RFC 3339 date-time.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Only events on or before this RFC 3339 date-time.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Only events created by this user id.
    #[param(value_type = Option<i64>)]
    pub created_by: Option<String>,
    /// 1 to 100 events per page (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// Events by date, then id.
    pub events: Vec<EventView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn encode_cursor(e: &Event) -> String {
    format!("{}_{}", e.date.timestamp_micros(), e.id)
}

fn decode_cursor(c: &str) -> Option<(DateTime<Utc>, i64)> {
    let (micros, id) = c.split_once('_')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

impl ListQuery {
    fn filter(mut self) -> Result<EventFilter, ApiError> {
        // `?category=` asks for no filter, as its absence does.
        for v in [
            &mut self.category,
            &mut self.from,
            &mut self.to,
            &mut self.created_by,
            &mut self.limit,
            &mut self.cursor,
        ] {
            if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
                *v = None;
            }
        }
        let mut problems = std::collections::BTreeMap::<String, Vec<String>>::new();
        let mut bad = |field: &str, problem: &str| {
            problems
                .entry(field.into())
                .or_default()
                .push(problem.into())
        };
        let category = self.category.as_deref().and_then(|c| {
            let parsed = Category::parse(c);
            if parsed.is_none() {
                bad("category", "must be one of tech, business, arts, sports");
            }
            parsed
        });
        let mut date = |field: &str, v: &Option<String>| {
            v.as_deref().and_then(|s| {
                let d = parse_date(s);
                if d.is_none() {
                    bad(field, "must be an RFC 3339 date-time");
                }
                d
            })
        };
        let from = date("from", &self.from);
        let to = date("to", &self.to);
        let created_by = self.created_by.as_deref().and_then(|s| {
            let id = s.parse::<i64>().ok();
            if id.is_none() {
                bad("created_by", "must be a user id");
            }
            id
        });
        let limit = match self.limit.as_deref().map(str::parse::<i64>) {
            None => 20,
            Some(Ok(n)) if (1..=100).contains(&n) => n,
            Some(_) => {
                bad("limit", "must be between 1 and 100");
                20
            }
        };
        let after = self.cursor.as_deref().and_then(|c| {
            let d = decode_cursor(c);
            if d.is_none() {
                bad("cursor", "is not a cursor this API gave");
            }
            d
        });
        if !problems.is_empty() {
            return Err(ApiError::Validation(problems));
        }
        Ok(EventFilter {
            category,
            from,
            to,
            created_by,
            after,
            limit,
        })
    }
}

/// Lists live events; no token needed.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(ListQuery),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "Malformed query string", body = ErrorBody),
        (status = 422, description = "Invalid filters", body = ErrorBody),
    ))]
pub async fn list(app: App, query: String) -> Result<Response, ApiError> {
    let query: ListQuery = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::BadRequest(format!("malformed query: {e}")))?;
    let filter = query.filter()?;
    let events = app.store.list_events(&filter).await?;
    let next_cursor = (events.len() as i64 == filter.limit)
        .then(|| events.last().map(encode_cursor))
        .flatten();
    let events = events.into_iter().map(EventView::from).collect();
    Ok(json(
        StatusCode::OK,
        &EventPage {
            events,
            next_cursor,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let q = ListQuery {
            category: None,
            from: None,
            to: None,
            created_by: None,
            limit: Some("500".into()),
            cursor: Some("nope".into()),
        };
        let ApiError::Validation(fields) = q.filter().unwrap_err() else {
            panic!()
        };
        assert!(fields.contains_key("limit") && fields.contains_key("cursor"));
        let at = DateTime::from_timestamp_micros(1_900_000_000_123_456).unwrap();
        assert_eq!(
            decode_cursor(&format!("{}_{}", at.timestamp_micros(), 7)),
            Some((at, 7))
        );
    }
}

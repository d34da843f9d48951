//! `GET /api/v1/search/events`: the query string read and checked into a search request, the
//! search run off the async threads, and its page of hits with facets.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use convene_actors::model::Category;
use utoipa::IntoParams;
use warp::Filter;
use warp::reply::Response;

use super::{json_bytes, raw_query, respond, with_app};
use crate::app::App;
use crate::http::error::{ApiError, ErrorBody};
use crate::search::query::{SearchRequest, SearchResults, Sort, SortKey};

/// Deepest page reachable with `offset` (cursors go further).
pub const MAX_OFFSET: usize = 10_000;
/// Longest `q`.
const MAX_Q: usize = 500;
/// The parameters given at most once.
const SINGLE: [&str; 13] = [
    "q",
    "lat",
    "lon",
    "radius_km",
    "from",
    "to",
    "price_min",
    "price_max",
    "sort",
    "limit",
    "offset",
    "cursor",
    "include_past",
];
/// Most values of `category` or `tags`.
const MAX_VALUES: usize = 20;

/// The search route.
pub fn routes(app: App) -> warp::filters::BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "search" / "events")
        .and(warp::get())
        .and(with_app(app))
        .and(raw_query())
        .then(search)
        .map(respond)
        .boxed()
}

/// The parameters of a search (documentation; the handler reads the query string itself, so
/// `category` and `tags` may repeat).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Free text over title (counting double), description and tags; English stemming; a word
    /// of five letters or more matches with one typo, exact matches first. Empty matches all.
    pub q: Option<String>,
    /// Latitude of the point distances are measured from (with `lon`).
    pub lat: Option<f64>,
    /// Longitude of that point.
    pub lon: Option<f64>,
    /// Only events within this many kilometres of (`lat`, `lon`); up to 20,000.
    pub radius_km: Option<f64>,
    /// Only these categories: repeat it or give a comma list (tech, business, arts, sports).
    pub category: Option<String>,
    /// Only events with any of these tags: repeat it or give a comma list.
    pub tags: Option<String>,
    /// Only events on or after this date (`YYYY-MM-DD`) or RFC 3339 date-time.
    pub from: Option<String>,
    /// Only events on or before this date (the whole day) or date-time.
    pub to: Option<String>,
    /// Only events costing at least this much (free events cost 0).
    pub price_min: Option<f64>,
    /// Only events costing at most this much.
    pub price_max: Option<f64>,
    /// `relevance` (default: score, then date), `date`, or `distance` (needs `lat`/`lon`).
    pub sort: Option<String>,
    /// 1 to 100 hits (default 20).
    pub limit: Option<u32>,
    /// Hits to skip, up to 10,000; not with `cursor`.
    pub offset: Option<u32>,
    /// `next_cursor` of the previous page, for the same query.
    pub cursor: Option<String>,
    /// Past events too (default false).
    pub include_past: Option<bool>,
}

/// Problems found in a query string, by parameter.
#[derive(Default)]
struct Problems(BTreeMap<String, Vec<String>>);

impl Problems {
    fn add(&mut self, field: &str, problem: impl Into<String>) {
        self.0
            .entry(field.to_owned())
            .or_default()
            .push(problem.into());
    }
}

fn number(problems: &mut Problems, field: &str, v: &str) -> Option<f64> {
    match v.trim().parse::<f64>() {
        Ok(n) if n.is_finite() => Some(n),
        _ => {
            problems.add(field, "must be a number");
            None
        }
    }
}

fn date(problems: &mut Problems, field: &str, v: &str, end_of_day: bool) -> Option<DateTime<Utc>> {
    let v = v.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(v) {
        return Some(d.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        let time = if end_of_day {
            day.and_hms_micro_opt(23, 59, 59, 999_999)
        } else {
            day.and_hms_opt(0, 0, 0)
        };
        return time.map(|t| t.and_utc());
    }
    problems.add(
        field,
        "must be a date (YYYY-MM-DD) or an RFC 3339 date-time",
    );
    None
}

fn cents(problems: &mut Problems, field: &str, v: &str) -> Option<i64> {
    let n = number(problems, field, v)?;
    if !(0.0..=1e9).contains(&n) {
        problems.add(field, "must be between 0 and 1000000000");
        return None;
    }
    Some((n * 100.0).round() as i64)
}

/// Reads a query string into a search; every problem is reported at once.
pub fn parse(query: &str, now: DateTime<Utc>) -> Result<SearchRequest, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::BadRequest(format!("malformed query: {e}")))?;
    let mut p = Problems::default();
    let mut single: BTreeMap<&str, String> = BTreeMap::new();
    let mut categories = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    for (key, value) in &pairs {
        match key.as_str() {
            "category" => {
                for c in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    match Category::parse(c) {
                        Some(c) if !categories.contains(&c) => categories.push(c),
                        Some(_) => {}
                        None => p.add(
                            "category",
                            format!("`{c}` is not one of tech, business, arts, sports"),
                        ),
                    }
                }
            }
            "tags" | "tag" => {
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if t.chars().count() > 50 {
                        p.add("tags", "a tag has at most 50 characters");
                    } else if !tags.iter().any(|x| x == t) {
                        tags.push(t.to_owned());
                    }
                }
            }
            other => match SINGLE.iter().copied().find(|k| *k == other) {
                Some(k) => {
                    if single.insert(k, value.clone()).is_some() {
                        p.add(k, "is given more than once");
                    }
                }
                None => p.add(other, "is not a search parameter"),
            },
        }
    }
    if categories.len() > MAX_VALUES {
        p.add("category", "at most 20 values");
    }
    if tags.len() > MAX_VALUES {
        p.add("tags", "at most 20 values");
    }
    // An empty value is no value, as in the event list.
    single.retain(|_, v| !v.trim().is_empty());
    let get = |k: &str| single.get(k).map(String::as_str);
    let q = get("q").unwrap_or("").to_owned();
    if q.chars().count() > MAX_Q {
        p.add("q", "at most 500 characters");
    }
    let lat = get("lat").and_then(|v| number(&mut p, "lat", v));
    let lon = get("lon").and_then(|v| number(&mut p, "lon", v));
    if lat.is_some_and(|l| !(-90.0..=90.0).contains(&l)) {
        p.add("lat", "must be between -90 and 90");
    }
    if lon.is_some_and(|l| !(-180.0..=180.0).contains(&l)) {
        p.add("lon", "must be between -180 and 180");
    }
    if get("lat").is_some() != get("lon").is_some() {
        p.add("lat", "lat and lon go together");
    }
    let radius_km = get("radius_km").and_then(|v| number(&mut p, "radius_km", v));
    if radius_km.is_some_and(|r| !(r > 0.0 && r <= 20_000.0)) {
        p.add("radius_km", "must be above 0 and at most 20000");
    }
    if radius_km.is_some() && (get("lat").is_none() || get("lon").is_none()) {
        p.add("radius_km", "needs lat and lon");
    }
    let from = get("from").and_then(|v| date(&mut p, "from", v, false));
    let to = get("to").and_then(|v| date(&mut p, "to", v, true));
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        p.add("to", "is before from");
    }
    let price_min = get("price_min").and_then(|v| cents(&mut p, "price_min", v));
    let price_max = get("price_max").and_then(|v| cents(&mut p, "price_max", v));
    if let (Some(a), Some(b)) = (price_min, price_max)
        && a > b
    {
        p.add("price_max", "is below price_min");
    }
    let sort = match get("sort") {
        None | Some("relevance") => Sort::Relevance,
        Some("date") => Sort::Date,
        Some("distance") => {
            if get("lat").is_none() || get("lon").is_none() {
                p.add("sort", "distance needs lat and lon");
            }
            Sort::Distance
        }
        Some(_) => {
            p.add("sort", "must be relevance, date or distance");
            Sort::Relevance
        }
    };
    let limit = match get("limit").map(str::parse::<usize>) {
        None => 20,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => {
            p.add("limit", "must be between 1 and 100");
            20
        }
    };
    let offset = match get("offset").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) if n <= MAX_OFFSET => n,
        Some(_) => {
            p.add(
                "offset",
                "must be between 0 and 10000 (use cursor to go further)",
            );
            0
        }
    };
    let after = get("cursor").and_then(|c| {
        let key = SortKey::decode(c, sort);
        if key.is_none() {
            p.add("cursor", "is not a cursor this search gave for this sort");
        }
        key
    });
    if after.is_some() && offset > 0 {
        p.add("offset", "not with cursor");
    }
    let include_past = match get("include_past") {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => {
            p.add("include_past", "must be true or false");
            false
        }
    };
    if !p.0.is_empty() {
        return Err(ApiError::Validation(p.0));
    }
    Ok(SearchRequest {
        q,
        point: lat.zip(lon),
        radius_km,
        categories,
        tags,
        from,
        to,
        price_min,
        price_max,
        sort,
        limit,
        offset,
        after,
        include_past,
        now,
    })
}

/// Searches events: free text, geo radius, filters, facets; no token needed.
#[utoipa::path(get, path = "/api/v1/search/events", tag = "events", params(SearchParams),
    responses(
        (status = 200, description = "Hits, total and facets", body = SearchResults),
        (status = 400, description = "Malformed query string", body = ErrorBody),
        (status = 422, description = "Invalid parameters, each named", body = ErrorBody),
        (status = 503, description = "The index is being built", body = ErrorBody),
    ))]
pub async fn search(app: App, query: String) -> Result<Response, ApiError> {
    let request = parse(&query, Utc::now())?;
    let index = app.search.clone();
    if !index.is_ready() {
        return Err(ApiError::Unavailable(format!(
            "the search index is being built ({} events so far); GET /api/v1/events lists events meanwhile",
            index.rebuilt()
        )));
    }
    // Results depend on the index's position and, through `now`, on time: the position keys
    // the cache, the TTL bounds the rest.
    let position = index.searched();
    let hash = crate::cache::search_hash(&query);
    let cached = match position {
        Some(at) => app.caches.search(&hash, at).await,
        None => None,
    };
    if let Some(body) = cached.as_ref().and_then(|c| c.hit.clone()) {
        return Ok(json_bytes(body));
    }
    let results = tokio::task::spawn_blocking(move || index.search(&request))
        .await
        .map_err(|e| ApiError::Unavailable(format!("search failed: {e}")))?
        .map_err(|e| {
            tracing::error!(error = %e, "search failed");
            ApiError::Unavailable("search failed".into())
        })?;
    let body = bytes::Bytes::from(
        serde_json::to_vec(&results)
            .map_err(|e| ApiError::Unavailable(format!("search failed: {e}")))?,
    );
    if let (Some(lookup), Some(at)) = (&cached, position) {
        app.caches.put_search(lookup, at, &body).await;
    }
    Ok(json_bytes(body))
}

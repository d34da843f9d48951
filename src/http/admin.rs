//! The operator console over REST (`admin:access` only): the members with their processes and
//! the pinned placements, the entity actors of every node with the hottest and most backed-up
//! entities, one entity wherever it is active, rooms and sockets, the buses, requests per route
//! with recent errors and anomalies; the same panels live as server-sent events; and the
//! actions (passivate, drain, undrain, move, notice), each audited in the outbox. The page at
//! `/console` and `convene inspect` read these endpoints.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use chrono::{DateTime, Utc};
use convene_actors::room::{self, RoomCommand};
use convene_actors::rules::permissions;
use convene_cluster::{ActorsReport, EntityReport, MemberStatus, Owner};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::error::{ApiError, ErrorBody};
use super::{bearer, body, json, parse_json, raw_query, respond, with_app};
use crate::admin::{
    self, AskFailure, Call, NodeReport, RecentError, RoomView, RouteStats, Sockets,
};
use crate::app::{App, Caller};
use crate::store::Pin;

/// Bodies of the actions are small.
const MAX_BODY: u64 = 4 * 1024;
/// The longest notice.
const MAX_NOTICE: usize = 500;
/// Entities in each top list, unless asked otherwise.
const TOP: usize = 10;

/// The routes of this module.
pub fn routes(app: App) -> warp::filters::BoxedFilter<(Response,)> {
    let get = |name: &'static str| {
        warp::path("api")
            .and(warp::path("v1"))
            .and(warp::path("admin"))
            .and(warp::path(name))
            .and(warp::path::end())
            .and(warp::get())
    };
    let members = get("members")
        .and(with_app(app.clone()))
        .and(bearer())
        .then(members)
        .map(respond);
    let actors = get("actors")
        .and(with_app(app.clone()))
        .and(bearer())
        .and(raw_query())
        .then(actors)
        .map(respond);
    let entity = get("entities")
        .and(with_app(app.clone()))
        .and(bearer())
        .and(raw_query())
        .then(entity)
        .map(respond);
    let rooms = get("rooms")
        .and(with_app(app.clone()))
        .and(bearer())
        .then(rooms)
        .map(respond);
    let buses = get("buses")
        .and(with_app(app.clone()))
        .and(bearer())
        .then(buses)
        .map(respond);
    let requests = get("requests")
        .and(with_app(app.clone()))
        .and(bearer())
        .then(requests)
        .map(respond);
    let stream = get("stream")
        .and(with_app(app.clone()))
        .and(bearer())
        .then(stream)
        .map(respond);
    let placements = get("placements")
        .and(with_app(app.clone()))
        .and(bearer())
        .then(placements)
        .map(respond);
    let passivate = warp::path!("api" / "v1" / "admin" / "entities" / "passivate")
        .and(warp::post())
        .and(with_app(app.clone()))
        .and(bearer())
        .and(body(MAX_BODY))
        .then(passivate)
        .map(respond);
    let drain = warp::path!("api" / "v1" / "admin" / "nodes" / String / "drain")
        .and(warp::post())
        .and(with_app(app.clone()))
        .and(bearer())
        .then(drain)
        .map(respond);
    let undrain = warp::path!("api" / "v1" / "admin" / "nodes" / String / "undrain")
        .and(warp::post())
        .and(with_app(app.clone()))
        .and(bearer())
        .then(undrain)
        .map(respond);
    let pin = warp::path!("api" / "v1" / "admin" / "placements")
        .and(warp::post())
        .and(with_app(app.clone()))
        .and(bearer())
        .and(body(MAX_BODY))
        .then(pin)
        .map(respond);
    let unpin = warp::path!("api" / "v1" / "admin" / "placements")
        .and(warp::delete())
        .and(with_app(app.clone()))
        .and(bearer())
        .and(raw_query())
        .then(unpin)
        .map(respond);
    let notice = warp::path!("api" / "v1" / "admin" / "rooms" / String / "notice")
        .and(warp::post())
        .and(with_app(app))
        .and(bearer())
        .and(body(MAX_BODY))
        .then(notice)
        .map(respond);
    let page = warp::path!("console").and(warp::get()).map(console_page);
    members
        .or(actors)
        .unify()
        .or(entity)
        .unify()
        .or(rooms)
        .unify()
        .or(buses)
        .unify()
        .or(requests)
        .unify()
        .or(stream)
        .unify()
        .or(placements)
        .unify()
        .or(passivate)
        .unify()
        .or(drain)
        .unify()
        .or(undrain)
        .unify()
        .or(pin)
        .unify()
        .or(unpin)
        .unify()
        .or(notice)
        .unify()
        .or(page)
        .unify()
        .boxed()
}

/// The console page: one document, its script and styles inline, nothing fetched elsewhere.
fn console_page() -> Response {
    let mut res = warp::reply::html(include_str!("console.html")).into_response();
    let headers = res.headers_mut();
    headers.insert(
        "content-security-policy",
        warp::http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    headers.insert(
        "cache-control",
        warp::http::HeaderValue::from_static("no-store"),
    );
    res
}

/// The caller, if they hold `admin:access`.
async fn admin_caller(app: &App, auth: Option<&str>) -> Result<Caller, ApiError> {
    let caller = app.authenticate(auth).await?;
    if !caller.principal.has(permissions::ADMIN_ACCESS) {
        return Err(ApiError::Forbidden("the console is for admins".into()));
    }
    Ok(caller)
}

/// A member as the console shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    /// Its name.
    pub name: String,
    /// `joining`, `up`, `leaving` or `down`.
    #[schema(value_type = String)]
    pub status: MemberStatus,
    /// Its node-to-node address.
    pub address: Option<String>,
    /// Its HTTP address.
    pub http: Option<String>,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Entity actors active on it, by kind.
    pub entities: BTreeMap<String, u64>,
    /// Whether it is the node that answered.
    pub this_node: bool,
    /// Whether it answered the console within the timeout.
    pub reachable: bool,
    /// Whether it was drained from the console.
    pub draining: bool,
    /// CPU used, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Resident memory, bytes.
    pub rss_bytes: Option<u64>,
}

/// The members and the placement.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MembersView {
    /// The node that answered.
    pub node: String,
    /// Every member, this node first.
    pub members: Vec<MemberView>,
    /// The members that own keys, in placement order.
    pub up: Vec<String>,
    /// Entities pinned to a member.
    pub pins: Vec<Pin>,
}

/// An entity in a top list, with its node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HotEntity {
    /// The node it is active on.
    pub node: String,
    /// Its key.
    pub key: String,
    /// Messages waiting in its mailbox.
    pub mailbox: u64,
    /// Messages handled in the last second.
    pub messages_per_sec: u64,
    /// Messages handled since it was activated.
    pub handled: u64,
}

/// The entity actors of every node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActorsView {
    /// Per node: each kind's counters (`kinds`) and its own top lists.
    #[schema(value_type = Vec<Object>)]
    pub nodes: Vec<ActorsReport>,
    /// The hottest entities across nodes, by messages per second.
    pub hottest: Vec<HotEntity>,
    /// The entities with the longest mailboxes across nodes.
    pub longest: Vec<HotEntity>,
}

/// Rooms and sockets.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomsView {
    /// Active rooms, most connections first (the busiest 50 of each node).
    pub rooms: Vec<RoomView>,
    /// Each node's WebSocket edge.
    pub sockets: Vec<Sockets>,
}

/// One bus.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BusView {
    /// `nats` or `kafka`.
    pub name: String,
    /// Whether it answered its last use or probe.
    pub up: bool,
}

/// A counter summed over the nodes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Counted {
    /// What is counted, such as `nats events.created` or `kafka registrations.requests`.
    pub name: String,
    /// Since the nodes started.
    pub total: u64,
}

/// How far a consumer group is behind.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsumerLag {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// Messages past its committed offsets; `null` when the broker did not answer.
    pub lag: Option<i64>,
}

/// The buses.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BusesView {
    /// The buses configured.
    pub buses: Vec<BusView>,
    /// Outbox rows the relay has not published yet.
    pub outbox_pending: i64,
    /// Age of the oldest of them, seconds.
    pub relay_lag_secs: f64,
    /// Envelopes published, by bus and subject or topic.
    pub published: Vec<Counted>,
    /// Dead letters written, by bus and source.
    pub dead_letters: Vec<Counted>,
    /// The Kafka consumer groups of the cluster.
    pub consumers: Vec<ConsumerLag>,
}

/// Requests, errors and anomalies.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequestsView {
    /// Rate and latency per route and node, busiest first.
    pub routes: Vec<RouteStats>,
    /// The latest server errors of every node, newest first.
    pub errors: Vec<RecentError>,
    /// Anomalies found in the last hour, newest first.
    #[schema(value_type = Vec<Object>)]
    pub anomalies: Vec<serde_json::Value>,
}

/// One entity, wherever it is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EntityView {
    /// Its key.
    pub key: String,
    /// The member that owns it now.
    pub owner: String,
    /// The member it is pinned to, if any.
    pub pinned: Option<String>,
    /// Its activations (normally one, on its owner; none when it is passivated).
    #[schema(value_type = Vec<Object>)]
    pub active: Vec<EntityReport>,
}

/// Every report of the live nodes; `None` for a node that did not answer.
async fn reports(app: &App, top: usize) -> Vec<(String, Option<NodeReport>)> {
    let nodes = app.cluster.live_nodes();
    let asks = nodes.iter().map(|node| async move {
        let call = Call::Report { top };
        let report = admin::ask::<NodeReport>(&app.cluster, node, &call, admin::CALL_TIMEOUT).await;
        (node.clone(), report.ok())
    });
    join_all(asks).await
}

async fn members_view(app: &App, reports: &[(String, Option<NodeReport>)]) -> MembersView {
    let by_node: BTreeMap<&str, &NodeReport> = reports
        .iter()
        .filter_map(|(n, r)| Some((n.as_str(), r.as_ref()?)))
        .collect();
    let members = app
        .cluster
        .report()
        .await
        .into_iter()
        .map(|m| {
            let r = by_node.get(m.name.as_str());
            MemberView {
                reachable: r.is_some(),
                draining: r.is_some_and(|r| r.draining),
                cpu_percent: r.map(|r| r.process.cpu_percent),
                rss_bytes: r.map(|r| r.process.rss_bytes),
                name: m.name,
                status: m.status,
                address: m.address,
                http: m.http,
                uptime_secs: m.uptime_secs,
                entities: m.entities,
                this_node: m.this_node,
            }
        })
        .collect();
    MembersView {
        node: app.cluster.local().to_owned(),
        members,
        up: app
            .cluster
            .placement()
            .up_names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        pins: app.store.pins().await.unwrap_or_default(),
    }
}

fn hot(node: &str, b: &convene_cluster::EntityBrief) -> HotEntity {
    HotEntity {
        node: node.to_owned(),
        key: b.key.clone(),
        mailbox: b.mailbox,
        messages_per_sec: b.messages_per_sec,
        handled: b.handled,
    }
}

fn actors_view(reports: &[(String, Option<NodeReport>)], top: usize) -> ActorsView {
    let nodes: Vec<ActorsReport> = reports
        .iter()
        .filter_map(|(_, r)| Some(r.as_ref()?.actors.clone()))
        .collect();
    let mut hottest: Vec<HotEntity> = nodes
        .iter()
        .flat_map(|a| a.hottest.iter().map(|b| hot(&a.node, b)))
        .collect();
    hottest.sort_by(|a, b| {
        b.messages_per_sec
            .cmp(&a.messages_per_sec)
            .then(a.key.cmp(&b.key))
    });
    hottest.truncate(top);
    let mut longest: Vec<HotEntity> = nodes
        .iter()
        .flat_map(|a| a.longest.iter().map(|b| hot(&a.node, b)))
        .collect();
    longest.sort_by(|a, b| b.mailbox.cmp(&a.mailbox).then(a.key.cmp(&b.key)));
    longest.truncate(top);
    ActorsView {
        nodes,
        hottest,
        longest,
    }
}

fn rooms_view(reports: &[(String, Option<NodeReport>)]) -> RoomsView {
    let mut rooms: Vec<RoomView> = reports
        .iter()
        .filter_map(|(_, r)| r.as_ref())
        .flat_map(|r| r.rooms.iter().cloned())
        .collect();
    rooms.sort_by(|a, b| b.connections.cmp(&a.connections).then(a.room.cmp(&b.room)));
    RoomsView {
        rooms,
        sockets: reports
            .iter()
            .filter_map(|(_, r)| Some(r.as_ref()?.sockets.clone()))
            .collect(),
    }
}

fn sum(counts: impl Iterator<Item = (String, u64)>) -> Vec<Counted> {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for (name, n) in counts {
        *by.entry(name).or_default() += n;
    }
    by.into_iter()
        .map(|(name, total)| Counted { name, total })
        .collect()
}

async fn buses_view(app: &App, reports: &[(String, Option<NodeReport>)]) -> BusesView {
    let mut buses = Vec::new();
    for bus in app.buses.publishers() {
        buses.push(BusView {
            name: bus.name().to_owned(),
            up: bus.up(false).await,
        });
    }
    let (outbox_pending, relay_lag_secs) = app
        .store
        .outbox_lag(crate::bus::relay::LEASE)
        .await
        .unwrap_or((0, 0.0));
    let node_reports = || reports.iter().filter_map(|(_, r)| r.as_ref());
    let published = sum(node_reports().flat_map(|r| r.bus.published.clone()));
    let dead_letters = sum(node_reports().flat_map(|r| r.bus.dead_letters.clone()));
    let mut consumers = Vec::new();
    if let Some(kafka) = &app.buses.kafka {
        let group = format!("{}{}", app.config.bus_prefix, app.config.kafka_group);
        let groups = [
            (
                group.clone(),
                kafka.topic(crate::bus::kafka::COMMANDS_TOPIC),
            ),
            (
                format!("{group}-interactions"),
                kafka.topic(crate::bus::kafka::INTERACTIONS_TOPIC),
            ),
        ];
        for (group, topic) in groups {
            let lag = kafka.consumer_lag(&group, &topic).await;
            consumers.push(ConsumerLag { group, topic, lag });
        }
    }
    BusesView {
        buses,
        outbox_pending,
        relay_lag_secs,
        published,
        dead_letters,
        consumers,
    }
}

async fn requests_view(app: &App, reports: &[(String, Option<NodeReport>)]) -> RequestsView {
    let mut routes: Vec<RouteStats> = reports
        .iter()
        .filter_map(|(_, r)| r.as_ref())
        .flat_map(|r| r.routes.iter().cloned())
        .collect();
    routes.sort_by(|a, b| b.per_sec.total_cmp(&a.per_sec).then(b.total.cmp(&a.total)));
    routes.truncate(50);
    let mut errors: Vec<RecentError> = reports
        .iter()
        .filter_map(|(_, r)| r.as_ref())
        .flat_map(|r| r.errors.iter().cloned())
        .collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.at));
    errors.truncate(50);
    let since = Utc::now() - chrono::Duration::hours(1);
    let anomalies = app
        .store
        .recent_anomalies(since, 20)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| serde_json::to_value(a).ok())
        .collect();
    RequestsView {
        routes,
        errors,
        anomalies,
    }
}

/// Members with status, address, uptime, CPU and memory, entities by kind; the placement.
#[utoipa::path(get, path = "/api/v1/admin/members", tag = "console", security(("bearer" = [])),
    responses(
        (status = 200, description = "The members", body = MembersView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
pub async fn members(app: App, auth: Option<String>) -> Result<Response, ApiError> {
    admin_caller(&app, auth.as_deref()).await?;
    let reports = reports(&app, 0).await;
    Ok(json(StatusCode::OK, &members_view(&app, &reports).await))
}

/// `?top=N`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopQuery {
    /// Entities in each top list, 1 to 100 (default 10).
    pub top: Option<usize>,
}

/// Actors per node and kind: count, mailboxes, messages/s, handling time, restarts,
/// passivations; the hottest entities and the longest mailboxes.
#[utoipa::path(get, path = "/api/v1/admin/actors", tag = "console", security(("bearer" = [])),
    params(TopQuery),
    responses(
        (status = 200, description = "The actors", body = ActorsView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 422, description = "top out of range", body = ErrorBody),
    ))]
pub async fn actors(app: App, auth: Option<String>, query: String) -> Result<Response, ApiError> {
    admin_caller(&app, auth.as_deref()).await?;
    let q: TopQuery = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::BadRequest(format!("malformed query: {e}")))?;
    let top = match q.top {
        None => TOP,
        Some(n) if (1..=100).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid("top", "must be between 1 and 100")),
    };
    let reports = reports(&app, top).await;
    Ok(json(StatusCode::OK, &actors_view(&reports, top)))
}

/// `?key=kind/id`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyQuery {
    /// An entity key such as `event/42`.
    pub key: Option<String>,
}

fn parse_key(app: &App, raw: Option<String>) -> Result<convene_cluster::EntityKey, ApiError> {
    let raw = raw
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::invalid("key", "required (kind/id, as event/42)"))?;
    app.cluster
        .parse_key(&raw)
        .map_err(|e| ApiError::invalid("key", format!("{e} (expected kind/id, as event/42)")))
}

fn owner_of(app: &App, key: &convene_cluster::EntityKey) -> String {
    match app.cluster.owner(key) {
        Owner::Local => app.cluster.local().to_owned(),
        Owner::Remote(name) => name,
    }
}

/// An entity by key: its owner, its pin, and where it is active with a summary of its state
/// and the last messages it handled.
#[utoipa::path(get, path = "/api/v1/admin/entities", tag = "console", security(("bearer" = [])),
    params(KeyQuery),
    responses(
        (status = 200, description = "The entity", body = EntityView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 422, description = "Invalid key", body = ErrorBody),
    ))]
pub async fn entity(app: App, auth: Option<String>, query: String) -> Result<Response, ApiError> {
    admin_caller(&app, auth.as_deref()).await?;
    let q: KeyQuery = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::BadRequest(format!("malformed query: {e}")))?;
    let key = parse_key(&app, q.key)?;
    let call = Call::Entity {
        key: key.to_string(),
    };
    let nodes = app.cluster.live_nodes();
    let asks = nodes.iter().map(|node| {
        admin::ask::<Option<EntityReport>>(&app.cluster, node, &call, admin::CALL_TIMEOUT)
    });
    let active = join_all(asks)
        .await
        .into_iter()
        .filter_map(|r| r.ok().flatten())
        .collect();
    let view = EntityView {
        key: key.to_string(),
        owner: owner_of(&app, &key),
        pinned: app.cluster.overrides().get(&key).cloned(),
        active,
    };
    Ok(json(StatusCode::OK, &view))
}

/// Active rooms with their connections and users, and each node's sockets and slow-consumer
/// cut-offs.
#[utoipa::path(get, path = "/api/v1/admin/rooms", tag = "console", security(("bearer" = [])),
    responses(
        (status = 200, description = "Rooms and sockets", body = RoomsView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
pub async fn rooms(app: App, auth: Option<String>) -> Result<Response, ApiError> {
    admin_caller(&app, auth.as_deref()).await?;
    let reports = reports(&app, 0).await;
    Ok(json(StatusCode::OK, &rooms_view(&reports)))
}

/// The buses: outbox pending and relay lag, published envelopes, dead letters, consumer lag.
#[utoipa::path(get, path = "/api/v1/admin/buses", tag = "console", security(("bearer" = [])),
    responses(
        (status = 200, description = "The buses", body = BusesView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
pub async fn buses(app: App, auth: Option<String>) -> Result<Response, ApiError> {
    admin_caller(&app, auth.as_deref()).await?;
    let reports = reports(&app, 0).await;
    Ok(json(StatusCode::OK, &buses_view(&app, &reports).await))
}

/// Request rate and latency per route and node, recent server errors and anomalies.
#[utoipa::path(get, path = "/api/v1/admin/requests", tag = "console", security(("bearer" = [])),
    responses(
        (status = 200, description = "Requests", body = RequestsView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
pub async fn requests(app: App, auth: Option<String>) -> Result<Response, ApiError> {
    admin_caller(&app, auth.as_deref()).await?;
    let reports = reports(&app, 0).await;
    Ok(json(StatusCode::OK, &requests_view(&app, &reports).await))
}

/// The pinned placements.
#[utoipa::path(get, path = "/api/v1/admin/placements", tag = "console", security(("bearer" = [])),
    responses(
        (status = 200, description = "The pins", body = Vec<Pin>),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
pub async fn placements(app: App, auth: Option<String>) -> Result<Response, ApiError> {
    admin_caller(&app, auth.as_deref()).await?;
    let pins = app
        .store
        .pins()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(json(StatusCode::OK, &pins))
}

/// Every panel, as the live stream sends them each second.
async fn panels(app: &App) -> Vec<(&'static str, serde_json::Value)> {
    let reports = reports(app, TOP).await;
    let value = |v: serde_json::Result<serde_json::Value>| v.unwrap_or_default();
    vec![
        (
            "members",
            value(serde_json::to_value(members_view(app, &reports).await)),
        ),
        (
            "actors",
            value(serde_json::to_value(actors_view(&reports, TOP))),
        ),
        ("rooms", value(serde_json::to_value(rooms_view(&reports)))),
        (
            "buses",
            value(serde_json::to_value(buses_view(app, &reports).await)),
        ),
        (
            "requests",
            value(serde_json::to_value(requests_view(app, &reports).await)),
        ),
    ]
}

/// The panels live: server-sent events `members`, `actors`, `rooms`, `buses` and `requests`,
/// each once a second with the same JSON as its endpoint. The stream ends when the token
/// expires or is revoked.
#[utoipa::path(get, path = "/api/v1/admin/stream", tag = "console", security(("bearer" = [])),
    responses(
        (status = 200, description = "text/event-stream of the panels"),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ))]
pub async fn stream(app: App, auth: Option<String>) -> Result<Response, ApiError> {
    admin_caller(&app, auth.as_deref()).await?;
    // The panels are gathered by a task of their own: it stops when the client goes (its
    // next send fails) or the token stops being valid.
    let (mut tx, events) =
        futures::channel::mpsc::channel::<Result<warp::sse::Event, Infallible>>(8);
    tokio::spawn(async move {
        use futures::SinkExt;
        loop {
            if admin_caller(&app, auth.as_deref()).await.is_err() {
                return;
            }
            for (name, data) in panels(&app).await {
                let event = warp::sse::Event::default()
                    .event(name)
                    .data(data.to_string());
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let reply = warp::sse::reply(warp::sse::keep_alive().stream(events));
    Ok(reply.into_response())
}

/// What an action did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActionResult {
    /// The action.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// What came of it: the nodes an entity was passivated on, a node's new status, the node
    /// an entity moved to, a notice's seq.
    #[schema(value_type = Object)]
    pub result: serde_json::Value,
    /// When.
    pub at: DateTime<Utc>,
}

async fn audited(
    app: &App,
    caller: &Caller,
    action: &str,
    target: &str,
    detail: serde_json::Value,
    result: serde_json::Value,
) -> Result<Response, ApiError> {
    let event = app.audit_event(caller.principal.user_id, action, target, detail);
    app.store
        .audit(&event)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    tracing::info!(
        action,
        target,
        by = caller.principal.user_id,
        "console action"
    );
    Ok(json(
        StatusCode::OK,
        &ActionResult {
            action: action.to_owned(),
            target: target.to_owned(),
            result,
            at: event.occurred_at,
        },
    ))
}

/// `{"key": "kind/id"}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct KeyBody {
    /// An entity key such as `event/42`.
    pub key: Option<String>,
}

/// Passivates an entity wherever it is active: it stores nothing more than it already has,
/// and its next message activates it again (on its owner).
#[utoipa::path(post, path = "/api/v1/admin/entities/passivate", tag = "console", security(("bearer" = [])),
    request_body = KeyBody,
    responses(
        (status = 200, description = "Passivated; `result` lists the nodes", body = ActionResult),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "Not active anywhere", body = ErrorBody),
        (status = 422, description = "Invalid key", body = ErrorBody),
    ))]
pub async fn passivate(
    app: App,
    auth: Option<String>,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let caller = admin_caller(&app, auth.as_deref()).await?;
    let req: KeyBody = parse_json(&body, None)?;
    let key = parse_key(&app, req.key)?;
    let call = Call::Passivate {
        key: key.to_string(),
    };
    let nodes = app.cluster.live_nodes();
    let asks = nodes.iter().map(|node| async {
        let done = admin::ask::<bool>(&app.cluster, node, &call, admin::CALL_TIMEOUT).await;
        (node.clone(), matches!(done, Ok(true)))
    });
    let on: Vec<String> = join_all(asks)
        .await
        .into_iter()
        .filter_map(|(node, done)| done.then_some(node))
        .collect();
    if on.is_empty() {
        return Err(ApiError::NotFound);
    }
    let target = key.to_string();
    audited(
        &app,
        &caller,
        "passivate",
        &target,
        serde_json::json!({}),
        serde_json::json!({ "nodes": on }),
    )
    .await
}

/// Drains a node (hands its entities off, stops owning keys, fails its health check) without
/// stopping it; or takes it back.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{node}/drain", tag = "console", security(("bearer" = [])),
    params(("node" = String, Path, description = "The member's name")),
    responses(
        (status = 200, description = "Drained; `result.status` is its new status", body = ActionResult),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such member", body = ErrorBody),
        (status = 409, description = "It cannot be drained now", body = ErrorBody),
        (status = 503, description = "It did not answer", body = ErrorBody),
    ))]
pub async fn drain(node: String, app: App, auth: Option<String>) -> Result<Response, ApiError> {
    node_action(app, auth, node, true).await
}

/// Takes a drained node back: it owns its share of the keys again and passes its health check.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{node}/undrain", tag = "console", security(("bearer" = [])),
    params(("node" = String, Path, description = "The member's name")),
    responses(
        (status = 200, description = "Up again; `result.status` is its new status", body = ActionResult),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such member", body = ErrorBody),
        (status = 409, description = "It is not drained", body = ErrorBody),
        (status = 503, description = "It did not answer", body = ErrorBody),
    ))]
pub async fn undrain(node: String, app: App, auth: Option<String>) -> Result<Response, ApiError> {
    node_action(app, auth, node, false).await
}

async fn node_action(
    app: App,
    auth: Option<String>,
    node: String,
    drain: bool,
) -> Result<Response, ApiError> {
    let caller = admin_caller(&app, auth.as_deref()).await?;
    if !app.cluster.report().await.iter().any(|m| m.name == node) {
        return Err(ApiError::NotFound);
    }
    let (call, action) = if drain {
        (Call::Drain, "drain")
    } else {
        (Call::Undrain, "undrain")
    };
    let timeout = Duration::from_secs(app.config.drain_grace_secs) + admin::CALL_TIMEOUT;
    let status = match admin::ask::<MemberStatus>(&app.cluster, &node, &call, timeout).await {
        Ok(status) => status,
        Err(AskFailure::Refused(reason)) => {
            return Err(ApiError::Conflict {
                code: format!("{action}_refused"),
                message: reason,
            });
        }
        Err(AskFailure::Unreachable) => {
            return Err(ApiError::Unavailable(format!("{node} did not answer")));
        }
    };
    audited(
        &app,
        &caller,
        action,
        &node,
        serde_json::json!({}),
        serde_json::json!({ "status": status }),
    )
    .await
}

/// `{"key": "kind/id", "node": "name"}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MoveBody {
    /// An entity key such as `event/42`.
    pub key: Option<String>,
    /// The member to move it to.
    pub node: Option<String>,
}

/// Moves an entity to a chosen member: every node places it there until the pin is lifted or
/// that member leaves. Its actor is handed off like on any placement change.
#[utoipa::path(post, path = "/api/v1/admin/placements", tag = "console", security(("bearer" = [])),
    request_body = MoveBody,
    responses(
        (status = 200, description = "Pinned", body = ActionResult),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 422, description = "Invalid key, or the node is not an up member", body = ErrorBody),
    ))]
pub async fn pin(app: App, auth: Option<String>, body: bytes::Bytes) -> Result<Response, ApiError> {
    let caller = admin_caller(&app, auth.as_deref()).await?;
    let req: MoveBody = parse_json(&body, None)?;
    let key = parse_key(&app, req.key)?;
    let node = req
        .node
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::invalid("node", "required"))?;
    if !app.cluster.placement().up_names().contains(&node.as_str()) {
        return Err(ApiError::invalid(
            "node",
            format!("{node} is not an up member"),
        ));
    }
    let pin = Pin {
        key: key.to_string(),
        node: node.clone(),
        pinned_by: caller.principal.user_id,
        pinned_at: Utc::now(),
    };
    let detail = serde_json::json!({ "to": node, "from": owner_of(&app, &key) });
    let event = app.audit_event(caller.principal.user_id, "move", &pin.key, detail);
    app.store
        .pin(&pin, &event)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    app.reload_pins().await;
    admin::broadcast_reload(&app.cluster);
    tracing::info!(key = %pin.key, node = %node, by = caller.principal.user_id, "console action: move");
    Ok(json(
        StatusCode::OK,
        &ActionResult {
            action: "move".into(),
            target: pin.key,
            result: serde_json::json!({ "node": node }),
            at: event.occurred_at,
        },
    ))
}

/// Lifts the pin of an entity: it goes back to the member hashing places it on.
#[utoipa::path(delete, path = "/api/v1/admin/placements", tag = "console", security(("bearer" = [])),
    params(KeyQuery),
    responses(
        (status = 200, description = "Lifted", body = ActionResult),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "Not pinned", body = ErrorBody),
        (status = 422, description = "Invalid key", body = ErrorBody),
    ))]
pub async fn unpin(app: App, auth: Option<String>, query: String) -> Result<Response, ApiError> {
    let caller = admin_caller(&app, auth.as_deref()).await?;
    let q: KeyQuery = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::BadRequest(format!("malformed query: {e}")))?;
    let key = parse_key(&app, q.key)?.to_string();
    let event = app.audit_event(
        caller.principal.user_id,
        "unmove",
        &key,
        serde_json::json!({}),
    );
    let lifted = app
        .store
        .unpin(&key, None, Some(&event))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if !lifted {
        return Err(ApiError::NotFound);
    }
    app.reload_pins().await;
    admin::broadcast_reload(&app.cluster);
    let owner = app
        .cluster
        .parse_key(&key)
        .map(|k| owner_of(&app, &k))
        .unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &ActionResult {
            action: "unmove".into(),
            target: key,
            result: serde_json::json!({ "node": owner }),
            at: event.occurred_at,
        },
    ))
}

/// `{"text": "…"}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NoticeBody {
    /// What the notice says, 1 to 500 characters.
    pub text: Option<String>,
}

/// Broadcasts a notice to a room: stored in its history and sent to every member as a
/// `message` frame whose body is `{"type": "notice", "text": …}`.
#[utoipa::path(post, path = "/api/v1/admin/rooms/{room}/notice", tag = "console", security(("bearer" = [])),
    params(("room" = String, Path, description = "event:{id} or room:{name}")),
    request_body = NoticeBody,
    responses(
        (status = 200, description = "Sent; `result.seq` is its seq", body = ActionResult),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 422, description = "Empty or too long", body = ErrorBody),
    ))]
pub async fn notice(
    room: String,
    app: App,
    auth: Option<String>,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let caller = admin_caller(&app, auth.as_deref()).await?;
    let room = super::rooms::room_name(&room)?;
    let req: NoticeBody = parse_json(&body, None)?;
    let text = req.text.map(|t| t.trim().to_owned()).unwrap_or_default();
    if text.is_empty() || text.chars().count() > MAX_NOTICE {
        return Err(ApiError::invalid(
            "text",
            format!("must be 1 to {MAX_NOTICE} characters"),
        ));
    }
    let from = caller.principal.user_id;
    let seq = app
        .rooms
        .ask(room::key(&room), |reply| RoomCommand::Notice {
            from,
            text: text.clone(),
            reply,
        })
        .await?
        .map_err(super::rooms::room_error)?;
    audited(
        &app,
        &caller,
        "notice",
        &room,
        serde_json::json!({ "text": text }),
        serde_json::json!({ "seq": seq }),
    )
    .await
}

//! The operator console's node side. Every node serves the cluster service `admin`: it reports
//! itself (process, entity actors, rooms and sockets, request rate and latency per route, recent
//! errors), an active entity, and carries out the actions that must happen on a given node
//! (passivate an entity, drain, undrain, reload the pinned placements). The pins live in the
//! database; every node reloads them each second and at once when told of a change.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin as Boxed;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use convene_actors::model::{DomainEvent, topics};
use convene_cluster::{ActorsReport, Cluster, EntityReport, MemberStatus, NodeService};
use prometheus::core::Collector;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::App;
use crate::metrics::Metrics;

/// The cluster service's topic.
pub const TOPIC: &str = "admin";
/// How long a node waits for another's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Errors a node remembers.
const RECENT_ERRORS: usize = 50;
/// Rooms a node lists, busiest first.
const ROOMS: usize = 50;

/// What one node is asked.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    /// Its report, with the `top` hottest and most backed-up entities.
    Report {
        /// How many entities in each top list.
        top: usize,
    },
    /// The report of an entity active on it.
    Entity {
        /// `kind/id`.
        key: String,
    },
    /// Passivate an entity active on it.
    Passivate {
        /// `kind/id`.
        key: String,
    },
    /// Hand its entities off and stop owning keys, as on SIGTERM, without stopping.
    Drain,
    /// Own keys again after a drain.
    Undrain,
    /// Read the pinned placements again.
    Reload,
}

/// The process of a node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Process {
    /// CPU used since the previous report, in percent of one core.
    pub cpu_percent: f64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Seconds since the node started.
    pub uptime_secs: u64,
}

/// A room active on a node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomView {
    /// The room's name.
    pub room: String,
    /// The node it is active on.
    pub node: String,
    /// Connections in it.
    pub connections: u64,
    /// Distinct users among them.
    pub users: u64,
    /// Its last message's seq.
    pub seq: i64,
    /// Whether it is large enough that members get counts instead of presence lists.
    pub counts_only: bool,
    /// Messages its actor handled in the last second (joins, leaves, publishes).
    pub messages_per_sec: u64,
}

/// The WebSocket edge of a node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Sockets {
    /// The node.
    pub node: String,
    /// Open connections.
    pub connections: i64,
    /// Connections closed with 4008 for not reading their frames, since the node started.
    pub slow_consumer_cutoffs: u64,
}

/// Requests to one route on one node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RouteStats {
    /// The node.
    pub node: String,
    /// The method.
    pub method: String,
    /// The route template.
    pub route: String,
    /// Requests per second over the last sample (about a second).
    pub per_sec: f64,
    /// Answers with a 5xx status per second over the same sample.
    pub errors_per_sec: f64,
    /// Requests since the node started.
    pub total: u64,
    /// Median latency over the last sample, ms (upper bound of its histogram bucket).
    pub p50_ms: f64,
    /// 99th percentile latency over the last sample, ms (upper bound of its bucket).
    pub p99_ms: f64,
}

/// A request answered with a server error.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecentError {
    /// The node that answered.
    pub node: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The method.
    pub method: String,
    /// The route template.
    pub route: String,
    /// The status.
    pub status: u16,
}

/// One node's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node.
    pub node: String,
    /// Its status as it sees itself.
    pub status: MemberStatus,
    /// Whether it is drained (its health check answers 503).
    pub draining: bool,
    /// Its process.
    pub process: Process,
    /// Its entity actors.
    pub actors: ActorsReport,
    /// Its busiest active rooms.
    pub rooms: Vec<RoomView>,
    /// Its WebSocket edge.
    pub sockets: Sockets,
    /// Its routes that saw requests.
    pub routes: Vec<RouteStats>,
    /// Its latest server errors, newest first.
    pub errors: Vec<RecentError>,
    /// What its bus adapters counted.
    pub bus: NodeBus,
}

/// What a node's bus adapters counted since it started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeBus {
    /// Envelopes published, by `bus topic`.
    pub published: Vec<(String, u64)>,
    /// Dead letters written, by `bus source`.
    pub dead_letters: Vec<(String, u64)>,
}

/// The answer to a call: its value, or why not.
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer<T> {
    /// Done.
    Ok(T),
    /// Refused or failed, with the reason.
    Err(String),
}

/// Cumulative request counts of one route at one instant.
#[derive(Clone, Default)]
struct RouteCount {
    total: u64,
    errors: u64,
    /// Cumulative bucket counts and their upper bounds (seconds).
    buckets: Vec<(f64, u64)>,
}

struct RouteWindow {
    at: Instant,
    counts: HashMap<(String, String), RouteCount>,
    last: Vec<RouteStats>,
}

/// The state a node keeps for its reports.
pub struct Admin {
    cpu: Mutex<Option<(Instant, u64)>>,
    last_cpu: Mutex<f64>,
    routes: Mutex<RouteWindow>,
    errors: Mutex<VecDeque<RecentError>>,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            cpu: Mutex::new(None),
            last_cpu: Mutex::new(0.0),
            routes: Mutex::new(RouteWindow {
                at: Instant::now(),
                counts: HashMap::new(),
                last: Vec::new(),
            }),
            errors: Mutex::new(VecDeque::with_capacity(RECENT_ERRORS)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// CPU ticks (user + system) this process used, from `/proc/self/stat`.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of this process, from `/proc/self/statm` (4 KiB pages).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The upper bound, in ms, of the bucket holding the quantile `q` of `counts` (per-bucket
/// counts, with their upper bounds in seconds).
fn quantile_ms(counts: &[(f64, u64)], q: f64) -> f64 {
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return 0.0;
    }
    let want = (q * total as f64).ceil() as u64;
    let mut seen = 0;
    for (bound, n) in counts {
        seen += n;
        if seen >= want {
            return bound * 1000.0;
        }
    }
    counts.last().map_or(0.0, |(b, _)| b * 1000.0)
}

impl Admin {
    /// Remembers a request answered with a server error.
    pub fn record_error(&self, node: &str, method: &str, route: &str, status: u16) {
        let mut errors = lock(&self.errors);
        if errors.len() == RECENT_ERRORS {
            errors.pop_back();
        }
        errors.push_front(RecentError {
            node: node.to_owned(),
            at: Utc::now(),
            method: method.to_owned(),
            route: route.to_owned(),
            status,
        });
    }

    fn process(&self, started: Instant) -> Process {
        let now = Instant::now();
        if let Some(ticks) = cpu_ticks() {
            let mut slot = lock(&self.cpu);
            match *slot {
                // Reports closer than half a second apart keep the last figure.
                Some((at, _)) if now.duration_since(at) < Duration::from_millis(500) => {}
                Some((at, before)) => {
                    // Linux counts CPU time in ticks of 1/100 s: ticks per second are percent.
                    let secs = now.duration_since(at).as_secs_f64();
                    *lock(&self.last_cpu) = ticks.saturating_sub(before) as f64 / secs;
                    *slot = Some((now, ticks));
                }
                None => *slot = Some((now, ticks)),
            }
        }
        Process {
            cpu_percent: (*lock(&self.last_cpu) * 10.0).round() / 10.0,
            rss_bytes: rss_bytes(),
            uptime_secs: started.elapsed().as_secs(),
        }
    }

    fn routes(&self, node: &str, metrics: &Metrics) -> Vec<RouteStats> {
        let mut window = lock(&self.routes);
        let elapsed = window.at.elapsed();
        if elapsed < Duration::from_millis(900) && !window.last.is_empty() {
            return window.last.clone();
        }
        let now = route_counts(metrics);
        let secs = elapsed.as_secs_f64().max(0.001);
        let mut stats: Vec<RouteStats> = now
            .iter()
            .map(|((method, route), c)| {
                let before = window.counts.get(&(method.clone(), route.clone()));
                let prev = |i: usize| before.and_then(|b| b.buckets.get(i)).map_or(0, |b| b.1);
                let mut delta = Vec::with_capacity(c.buckets.len());
                let mut below = 0;
                for (i, (bound, cumulative)) in c.buckets.iter().enumerate() {
                    let d = cumulative.saturating_sub(prev(i));
                    delta.push((*bound, d.saturating_sub(below)));
                    below = d;
                }
                let (total0, errors0) = before.map_or((0, 0), |b| (b.total, b.errors));
                RouteStats {
                    node: node.to_owned(),
                    method: method.clone(),
                    route: route.clone(),
                    per_sec: c.total.saturating_sub(total0) as f64 / secs,
                    errors_per_sec: c.errors.saturating_sub(errors0) as f64 / secs,
                    total: c.total,
                    p50_ms: quantile_ms(&delta, 0.5),
                    p99_ms: quantile_ms(&delta, 0.99),
                }
            })
            .collect();
        stats.sort_by(|a, b| {
            b.per_sec
                .total_cmp(&a.per_sec)
                .then_with(|| b.total.cmp(&a.total))
                .then_with(|| a.route.cmp(&b.route))
        });
        window.at = Instant::now();
        window.counts = now;
        window.last = stats.clone();
        stats
    }

    fn errors(&self) -> Vec<RecentError> {
        lock(&self.errors).iter().cloned().collect()
    }
}

/// The samples of a counter family, each with its labels.
fn samples(family: &impl Collector) -> Vec<(HashMap<String, String>, u64)> {
    family
        .collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
                .collect();
            (labels, m.get_counter().value() as u64)
        })
        .collect()
}

fn node_bus(metrics: &Metrics) -> NodeBus {
    let get = |labels: &HashMap<String, String>, name: &str| {
        labels.get(name).cloned().unwrap_or_default()
    };
    let published = samples(&metrics.bus_published)
        .into_iter()
        .map(|(l, n)| (format!("{} {}", get(&l, "bus"), get(&l, "topic")), n))
        .collect();
    let mut dead_letters: Vec<(String, u64)> = samples(&metrics.bus_commands)
        .into_iter()
        .filter(|(l, _)| get(l, "status") == "dead_letter")
        .map(|(l, n)| (format!("{} commands", get(&l, "bus")), n))
        .collect();
    dead_letters.extend(
        samples(&metrics.bus_interactions)
            .into_iter()
            .filter(|(l, _)| get(l, "status") == "dead_letter")
            .map(|(_, n)| ("kafka interactions".to_owned(), n)),
    );
    NodeBus {
        published,
        dead_letters,
    }
}

/// The cumulative counts of every (method, route) from the request metrics.
fn route_counts(metrics: &Metrics) -> HashMap<(String, String), RouteCount> {
    let mut out: HashMap<(String, String), RouteCount> = HashMap::new();
    let label = |m: &prometheus::proto::Metric, name: &str| {
        m.get_label()
            .iter()
            .find(|l| l.name() == name)
            .map(|l| l.value().to_owned())
            .unwrap_or_default()
    };
    for family in metrics.http_requests.collect() {
        for m in family.get_metric() {
            let entry = out
                .entry((label(m, "method"), label(m, "endpoint")))
                .or_default();
            let n = m.get_counter().value() as u64;
            entry.total += n;
            if label(m, "status").starts_with('5') {
                entry.errors += n;
            }
        }
    }
    for family in metrics.http_duration.collect() {
        for m in family.get_metric() {
            let entry = out
                .entry((label(m, "method"), label(m, "endpoint")))
                .or_default();
            entry.buckets = m
                .get_histogram()
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect();
        }
    }
    out
}

impl App {
    /// This node's report.
    pub async fn node_report(&self, top: usize) -> NodeReport {
        let node = self.cluster.local().to_owned();
        let rooms = self
            .cluster
            .entity_summaries(convene_actors::room::KIND, ROOMS)
            .into_iter()
            .map(|r| room_view(&node, r))
            .collect();
        NodeReport {
            status: self.cluster.status(),
            draining: self.draining.load(Ordering::SeqCst),
            process: self.admin.process(self.started),
            actors: self.cluster.actors_report(top).await,
            rooms,
            sockets: Sockets {
                node: node.clone(),
                connections: self.metrics.ws_connections.get(),
                slow_consumer_cutoffs: self.metrics.ws_slow_consumers.get(),
            },
            routes: self.admin.routes(&node, &self.metrics),
            errors: self.admin.errors(),
            bus: node_bus(&self.metrics),
            node,
        }
    }

    /// Drains this node without stopping it: health answers 503, its entities are handed off
    /// to the other members, then it tells them it is leaving. Its pins are lifted.
    pub async fn drain(&self) -> Result<MemberStatus, String> {
        if !self.cluster.is_clustered() {
            return Err("a node on its own has nowhere to hand its entities off to".into());
        }
        self.draining.store(true, Ordering::SeqCst);
        self.cluster.start_leaving();
        let grace = Duration::from_secs(self.config.drain_grace_secs);
        let handoff_by = Instant::now() + grace / 2;
        while !self.cluster.handed_off().await && Instant::now() < handoff_by {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.cluster.announce_leaving();
        self.lift_pins_of(self.cluster.local()).await;
        Ok(self.cluster.status())
    }

    /// Takes this node back after a drain.
    pub fn undrain(&self) -> Result<MemberStatus, String> {
        if self.cluster.status() != MemberStatus::Leaving {
            return Err(format!(
                "the node is {}, not drained",
                self.cluster.status().as_str()
            ));
        }
        self.cluster.rejoin();
        self.draining.store(false, Ordering::SeqCst);
        Ok(self.cluster.status())
    }

    /// Lifts the pins to `node` (it left), and tells every node.
    async fn lift_pins_of(&self, node: &str) {
        let Ok(pins) = self.store.pins().await else {
            return;
        };
        let mut lifted = false;
        for pin in pins.iter().filter(|p| p.node == node) {
            if let Ok(true) = self.store.unpin(&pin.key, Some(node), None).await {
                tracing::info!(key = %pin.key, node, "pin lifted: its member left");
                lifted = true;
            }
        }
        if lifted {
            broadcast_reload(&self.cluster);
        }
    }

    /// Reads the pins again and places their entities accordingly. Pins to members that are
    /// down or leaving are lifted.
    pub async fn reload_pins(&self) {
        let Ok(pins) = self.store.pins().await else {
            return;
        };
        let placement = self.cluster.placement();
        let gone: Vec<&str> = placement
            .members()
            .iter()
            .filter(|m| matches!(m.status, MemberStatus::Down | MemberStatus::Leaving))
            .map(|m| m.name.as_str())
            .collect();
        let mut overrides = BTreeMap::new();
        for pin in &pins {
            if gone.contains(&pin.node.as_str()) {
                if let Ok(true) = self.store.unpin(&pin.key, Some(&pin.node), None).await {
                    tracing::info!(key = %pin.key, node = %pin.node, "pin lifted: its member left");
                }
                continue;
            }
            if let Ok(key) = self.cluster.parse_key(&pin.key) {
                overrides.insert(key, pin.node.clone());
            }
        }
        self.cluster.set_overrides(overrides);
    }

    /// Records an operator's action in the outbox.
    pub fn audit_event(
        &self,
        by: i64,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> DomainEvent {
        DomainEvent::new(
            topics::ADMIN_ACTION,
            format!("admin/{target}"),
            serde_json::json!({
                "action": action,
                "target": target,
                "by": by,
                "node": self.cluster.local(),
                "detail": detail,
            }),
            Utc::now(),
        )
    }
}

fn room_view(node: &str, r: EntityReport) -> RoomView {
    let field = |name: &str| {
        r.summary
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    RoomView {
        room: r
            .key
            .split_once('/')
            .map_or(r.key.clone(), |(_, id)| id.to_owned()),
        node: node.to_owned(),
        connections: field("connections"),
        users: field("users"),
        seq: r
            .summary
            .get("seq")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0),
        counts_only: r
            .summary
            .get("counts_only")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        messages_per_sec: r.messages_per_sec,
    }
}

/// Tells every live node to read the pins again.
pub fn broadcast_reload(cluster: &Cluster) {
    let payload = serde_json::to_vec(&Call::Reload).unwrap_or_default();
    for node in cluster.live_nodes() {
        cluster.cast_node(&node, TOPIC, payload.clone());
    }
}

/// Keeps this node's pinned placements in step with the database, until `stop` turns true.
pub fn watch_pins(
    app: App,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => app.reload_pins().await,
                changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                    return;
                },
            }
        }
    })
}

/// The `admin` cluster service of a node.
pub struct Service(pub App);

impl Service {
    async fn answer(app: App, call: Call) -> Vec<u8> {
        fn encode<T: Serialize>(answer: Answer<T>) -> Vec<u8> {
            serde_json::to_vec(&answer).unwrap_or_default()
        }
        match call {
            Call::Report { top } => encode(Answer::Ok(app.node_report(top.min(100)).await)),
            Call::Entity { key } => encode(match app.cluster.parse_key(&key) {
                Ok(key) => Answer::Ok(app.cluster.entity_report(&key)),
                Err(e) => Answer::Err(e.to_string()),
            }),
            Call::Passivate { key } => encode(match app.cluster.parse_key(&key) {
                Ok(key) => Answer::Ok(app.cluster.passivate(&key)),
                Err(e) => Answer::Err(e.to_string()),
            }),
            Call::Drain => encode(match app.drain().await {
                Ok(s) => Answer::Ok(s),
                Err(e) => Answer::Err(e),
            }),
            Call::Undrain => encode(match app.undrain() {
                Ok(s) => Answer::Ok(s),
                Err(e) => Answer::Err(e),
            }),
            Call::Reload => {
                app.reload_pins().await;
                encode(Answer::Ok(()))
            }
        }
    }
}

impl NodeService for Service {
    fn cast(&self, payload: &[u8]) {
        if let Ok(call) = serde_json::from_slice::<Call>(payload) {
            let app = self.0.clone();
            tokio::spawn(async move {
                Self::answer(app, call).await;
            });
        }
    }

    fn call(&self, payload: &[u8]) -> Boxed<Box<dyn Future<Output = Vec<u8>> + Send>> {
        let app = self.0.clone();
        let call = serde_json::from_slice::<Call>(payload);
        Box::pin(async move {
            match call {
                Ok(call) => Self::answer(app, call).await,
                Err(e) => serde_json::to_vec(&Answer::<()>::Err(format!("undecodable call: {e}")))
                    .unwrap_or_default(),
            }
        })
    }
}

/// Asks `node` (this one included) and decodes its answer; `Err` when it cannot be reached or
/// refused.
pub async fn ask<T: serde::de::DeserializeOwned>(
    cluster: &Cluster,
    node: &str,
    call: &Call,
    timeout: Duration,
) -> Result<T, AskFailure> {
    let payload = serde_json::to_vec(call).unwrap_or_default();
    let bytes = cluster
        .call_node(node, TOPIC, payload, timeout)
        .await
        .ok_or(AskFailure::Unreachable)?;
    match serde_json::from_slice::<Answer<T>>(&bytes) {
        Ok(Answer::Ok(v)) => Ok(v),
        Ok(Answer::Err(e)) => Err(AskFailure::Refused(e)),
        Err(e) => Err(AskFailure::Refused(format!("undecodable answer: {e}"))),
    }
}

/// Why a node's answer did not come.
#[derive(Debug)]
pub enum AskFailure {
    /// It did not answer in time, or no session to it is open.
    Unreachable,
    /// It answered with a refusal.
    Refused(String),
}

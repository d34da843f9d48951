//! The operator's console on the command line: `convene cluster status`, `convene inspect`
//! (members, actors, one entity, rooms, buses, requests; a table or `--json`) and `convene admin`
//! (passivate, drain, undrain, move, unmove, notice). They read and call the same
//! `/api/v1/admin/…` endpoints as the web console.

use anyhow::Context;
use serde::de::DeserializeOwned;
use warp::http::Method;

use crate::http::admin::{
    ActionResult, ActorsView, BusesView, EntityView, MembersView, RequestsView, RoomsView,
};
use crate::http::cluster::ClusterStatus;

/// What `convene inspect` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspect {
    /// The members, their processes and the placement.
    Members,
    /// Actors per node and kind, the hottest and the most backed-up entities.
    Actors,
    /// One entity by key.
    Entity(String),
    /// Rooms and sockets.
    Rooms,
    /// The buses.
    Buses,
    /// Requests per route, recent errors and anomalies.
    Requests,
}

/// What `convene admin` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Passivate an entity wherever it is active.
    Passivate(String),
    /// Drain a node without stopping it.
    Drain(String),
    /// Take a drained node back.
    Undrain(String),
    /// Pin an entity to a node.
    Move(String, String),
    /// Lift an entity's pin.
    Unmove(String),
    /// Send a notice to a room.
    Notice(String, String),
}

/// A node's base URL and an admin's token.
pub struct Client {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the node at `url`.
    pub fn new(url: &str, token: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(T, String)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("reaching {}", self.url))?;
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
                .unwrap_or(text);
            anyhow::bail!("{} answered {status}: {message}", self.url);
        }
        let value = serde_json::from_str(&text)
            .with_context(|| format!("the answer to {path} is not what was expected"))?;
        Ok((value, text))
    }
}

/// Fetches `/api/v1/cluster` from the node at `url` and prints it.
pub async fn cluster_status(url: &str, token: &str, key: Option<&str>) -> anyhow::Result<()> {
    let client = Client::new(url, token);
    let query: Vec<(&str, &str)> = key.map(|k| ("key", k)).into_iter().collect();
    let (report, _): (ClusterStatus, _) = client
        .call(Method::GET, "/api/v1/cluster", &query, None)
        .await?;
    print!("{}", render(&report));
    Ok(())
}

/// Prints what `what` asks for, as tables or as the endpoint's JSON.
pub async fn inspect(url: &str, token: &str, what: Inspect, json: bool) -> anyhow::Result<()> {
    let client = Client::new(url, token);
    let out = match &what {
        Inspect::Members => {
            let (v, raw) = client
                .call(Method::GET, "/api/v1/admin/members", &[], None)
                .await?;
            if json { raw } else { render_members(&v) }
        }
        Inspect::Actors => {
            let (v, raw) = client
                .call(Method::GET, "/api/v1/admin/actors", &[], None)
                .await?;
            if json { raw } else { render_actors(&v) }
        }
        Inspect::Entity(key) => {
            let query = [("key", key.as_str())];
            let (v, raw) = client
                .call(Method::GET, "/api/v1/admin/entities", &query, None)
                .await?;
            if json { raw } else { render_entity(&v) }
        }
        Inspect::Rooms => {
            let (v, raw) = client
                .call(Method::GET, "/api/v1/admin/rooms", &[], None)
                .await?;
            if json { raw } else { render_rooms(&v) }
        }
        Inspect::Buses => {
            let (v, raw) = client
                .call(Method::GET, "/api/v1/admin/buses", &[], None)
                .await?;
            if json { raw } else { render_buses(&v) }
        }
        Inspect::Requests => {
            let (v, raw) = client
                .call(Method::GET, "/api/v1/admin/requests", &[], None)
                .await?;
            if json { raw } else { render_requests(&v) }
        }
    };
    println!("{}", out.trim_end());
    Ok(())
}

/// Carries out `action` and prints what came of it.
pub async fn act(url: &str, token: &str, action: Action, json: bool) -> anyhow::Result<()> {
    let client = Client::new(url, token);
    let (method, path, query, body) = match &action {
        Action::Passivate(key) => (
            Method::POST,
            "/api/v1/admin/entities/passivate".to_owned(),
            vec![],
            Some(serde_json::json!({ "key": key })),
        ),
        Action::Drain(node) => (
            Method::POST,
            format!("/api/v1/admin/nodes/{node}/drain"),
            vec![],
            None,
        ),
        Action::Undrain(node) => (
            Method::POST,
            format!("/api/v1/admin/nodes/{node}/undrain"),
            vec![],
            None,
        ),
        Action::Move(key, node) => (
            Method::POST,
            "/api/v1/admin/placements".to_owned(),
            vec![],
            Some(serde_json::json!({ "key": key, "node": node })),
        ),
        Action::Unmove(key) => (
            Method::DELETE,
            "/api/v1/admin/placements".to_owned(),
            vec![("key", key.as_str())],
            None,
        ),
        Action::Notice(room, text) => (
            Method::POST,
            format!("/api/v1/admin/rooms/{room}/notice"),
            vec![],
            Some(serde_json::json!({ "text": text })),
        ),
    };
    let (result, raw): (ActionResult, _) = client.call(method, &path, &query, body).await?;
    if json {
        println!("{raw}");
    } else {
        println!("{} {}: {}", result.action, result.target, result.result);
    }
    Ok(())
}

/// Left-aligned columns, two spaces apart, with a header line.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

fn entities(counts: &std::collections::BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(kind, n)| format!("{kind}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn name(name: &str, this_node: bool) -> String {
    if this_node {
        format!("{name} *")
    } else {
        name.to_owned()
    }
}

/// The status as a table, one member per line.
pub fn render(report: &ClusterStatus) -> String {
    let rows: Vec<Vec<String>> = report
        .members
        .iter()
        .map(|m| {
            vec![
                name(&m.name, m.this_node),
                m.status.as_str().to_owned(),
                m.address.clone().unwrap_or_else(|| "-".into()),
                m.http.clone().unwrap_or_else(|| "-".into()),
                uptime(m.uptime_secs),
                entities(&m.entities),
            ]
        })
        .collect();
    let mut out = table(
        &["NAME", "STATUS", "ADDRESS", "HTTP", "UPTIME", "ENTITIES"],
        &rows,
    );
    if let Some(k) = &report.key {
        out.push_str(&format!("\n{} is owned by {}\n", k.key, k.owner));
    }
    out
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1_048_576.0))
}

/// The members, their processes and the placement.
pub fn render_members(v: &MembersView) -> String {
    let rows: Vec<Vec<String>> = v
        .members
        .iter()
        .map(|m| {
            vec![
                name(&m.name, m.this_node),
                m.status.as_str().to_owned(),
                m.http.clone().unwrap_or_else(|| "-".into()),
                uptime(m.uptime_secs),
                m.cpu_percent.map_or("-".into(), |c| format!("{c:.1}")),
                mib(m.rss_bytes),
                entities(&m.entities),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "NAME", "STATUS", "HTTP", "UPTIME", "CPU%", "RSS MiB", "ENTITIES",
        ],
        &rows,
    );
    out.push_str(&format!("\nup: {}\n", v.up.join(", ")));
    if !v.pins.is_empty() {
        let pins: Vec<Vec<String>> = v
            .pins
            .iter()
            .map(|p| vec![p.key.clone(), p.node.clone(), p.pinned_at.to_rfc3339()])
            .collect();
        out.push('\n');
        out.push_str(&table(&["PINNED", "NODE", "SINCE"], &pins));
    }
    out
}

/// Actors per node and kind, and the top lists.
pub fn render_actors(v: &ActorsView) -> String {
    let rows: Vec<Vec<String>> = v
        .nodes
        .iter()
        .flat_map(|n| {
            n.kinds.iter().map(move |k| {
                vec![
                    n.node.clone(),
                    k.kind.clone(),
                    k.active.to_string(),
                    k.mailbox.to_string(),
                    k.messages_per_sec.to_string(),
                    format!("{:.3}", k.p99_ms),
                    k.restarts.to_string(),
                    k.passivations.to_string(),
                ]
            })
        })
        .collect();
    let mut out = table(
        &[
            "NODE",
            "KIND",
            "ACTIVE",
            "MAILBOX",
            "MSG/S",
            "P99 MS",
            "RESTARTS",
            "PASSIVATIONS",
        ],
        &rows,
    );
    let hot = |list: &[crate::http::admin::HotEntity]| -> Vec<Vec<String>> {
        list.iter()
            .map(|e| {
                vec![
                    e.key.clone(),
                    e.node.clone(),
                    e.messages_per_sec.to_string(),
                    e.mailbox.to_string(),
                ]
            })
            .collect()
    };
    out.push_str("\nhottest\n");
    out.push_str(&table(
        &["ENTITY", "NODE", "MSG/S", "MAILBOX"],
        &hot(&v.hottest),
    ));
    out.push_str("\nlongest mailboxes\n");
    out.push_str(&table(
        &["ENTITY", "NODE", "MSG/S", "MAILBOX"],
        &hot(&v.longest),
    ));
    out
}

/// One entity.
pub fn render_entity(v: &EntityView) -> String {
    let mut out = format!("{} is owned by {}", v.key, v.owner);
    if let Some(p) = &v.pinned {
        out.push_str(&format!(" (pinned to {p})"));
    }
    out.push('\n');
    if v.active.is_empty() {
        out.push_str("not active\n");
    }
    for a in &v.active {
        out.push_str(&format!(
            "active on {}: mailbox {}, {} msg/s, {} handled\nsummary: {}\n",
            a.node, a.mailbox, a.messages_per_sec, a.handled, a.summary
        ));
        let last: Vec<Vec<String>> = a
            .last
            .iter()
            .map(|h| vec![h.message.clone(), h.at_ms.to_string(), h.micros.to_string()])
            .collect();
        out.push_str(&table(&["MESSAGE", "AT MS", "MICROS"], &last));
    }
    out
}

/// Rooms and sockets.
pub fn render_rooms(v: &RoomsView) -> String {
    let rows: Vec<Vec<String>> = v
        .rooms
        .iter()
        .map(|r| {
            vec![
                r.room.clone(),
                r.node.clone(),
                r.connections.to_string(),
                r.users.to_string(),
                r.seq.to_string(),
                r.messages_per_sec.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &["ROOM", "NODE", "CONNECTIONS", "USERS", "SEQ", "MSG/S"],
        &rows,
    );
    let sockets: Vec<Vec<String>> = v
        .sockets
        .iter()
        .map(|s| {
            vec![
                s.node.clone(),
                s.connections.to_string(),
                s.slow_consumer_cutoffs.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["NODE", "SOCKETS", "SLOW CUT-OFFS"], &sockets));
    out
}

/// The buses.
pub fn render_buses(v: &BusesView) -> String {
    let mut out = String::new();
    for b in &v.buses {
        out.push_str(&format!(
            "{}: {}\n",
            b.name,
            if b.up { "up" } else { "down" }
        ));
    }
    if v.buses.is_empty() {
        out.push_str("no bus configured\n");
    }
    out.push_str(&format!(
        "outbox pending {}, relay lag {:.1} s\n\n",
        v.outbox_pending, v.relay_lag_secs
    ));
    let counted = |list: &[crate::http::admin::Counted]| -> Vec<Vec<String>> {
        list.iter()
            .map(|c| vec![c.name.clone(), c.total.to_string()])
            .collect()
    };
    out.push_str(&table(&["PUBLISHED", "TOTAL"], &counted(&v.published)));
    out.push('\n');
    out.push_str(&table(
        &["DEAD LETTERS", "TOTAL"],
        &counted(&v.dead_letters),
    ));
    let lag: Vec<Vec<String>> = v
        .consumers
        .iter()
        .map(|c| {
            vec![
                c.group.clone(),
                c.topic.clone(),
                c.lag.map_or("-".into(), |l| l.to_string()),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["GROUP", "TOPIC", "LAG"], &lag));
    out
}

/// Requests per route, recent errors and anomalies.
pub fn render_requests(v: &RequestsView) -> String {
    let rows: Vec<Vec<String>> = v
        .routes
        .iter()
        .map(|r| {
            vec![
                r.node.clone(),
                format!("{} {}", r.method, r.route),
                format!("{:.1}", r.per_sec),
                format!("{:.1}", r.errors_per_sec),
                format!("{}", r.p99_ms),
                r.total.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &["NODE", "ROUTE", "REQ/S", "5XX/S", "P99 MS", "TOTAL"],
        &rows,
    );
    let errors: Vec<Vec<String>> = v
        .errors
        .iter()
        .map(|e| {
            vec![
                e.at.to_rfc3339(),
                e.node.clone(),
                format!("{} {}", e.method, e.route),
                e.status.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["ERROR AT", "NODE", "ROUTE", "STATUS"], &errors));
    out.push_str(&format!(
        "\nanomalies in the last hour: {}\n",
        v.anomalies.len()
    ));
    out
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

//! The operator console's endpoints: refused without a token (401) and to a plain user (403),
//! changing nothing; what they show of a node's actors, entities and rooms; the audited actions
//! (passivate, notice); on a three-node cluster, moving an entity and draining and undraining a
//! node; and `convene inspect` and `convene admin` against a running cluster.

use std::time::Duration;

use convene::store::Position;
use serde_json::{Value, json};

use crate::cluster::TestCluster;
use crate::helpers::{TestApp, eventually};
use crate::rooms::Client;

/// Every read of the console.
const READS: [&str; 8] = [
    "/api/v1/admin/members",
    "/api/v1/admin/actors",
    "/api/v1/admin/entities?key=event/1",
    "/api/v1/admin/rooms",
    "/api/v1/admin/buses",
    "/api/v1/admin/requests",
    "/api/v1/admin/placements",
    "/api/v1/admin/stream",
];

/// Every action of the console, with a body that would be accepted from an admin.
fn actions(node: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        (
            "POST",
            "/api/v1/admin/entities/passivate".into(),
            Some(json!({"key": "event/1"})),
        ),
        ("POST", format!("/api/v1/admin/nodes/{node}/drain"), None),
        ("POST", format!("/api/v1/admin/nodes/{node}/undrain"), None),
        (
            "POST",
            "/api/v1/admin/placements".into(),
            Some(json!({"key": "event/1", "node": node})),
        ),
        (
            "DELETE",
            "/api/v1/admin/placements?key=event/1".into(),
            None,
        ),
        (
            "POST",
            "/api/v1/admin/rooms/room:lobby/notice".into(),
            Some(json!({"text": "hello"})),
        ),
    ]
}

/// The `admin.action` domain events in the outbox: (action, target, by).
/// The audit once it holds `n` entries (a row is read once every older transaction has ended),
/// or as it is after a few seconds.
async fn audit_of(app: &TestApp, n: usize) -> Vec<(String, String, i64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = audit(app).await;
        if seen.len() >= n || std::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn audit(app: &TestApp) -> Vec<(String, String, i64)> {
    let read = app
        .node
        .app
        .store
        .outbox(Position::default(), 10_000)
        .await
        .unwrap();
    read.rows
        .iter()
        .filter(|r| r.topic == "admin.action")
        .map(|r| {
            let p: Value = serde_json::from_str(r.payload.get()).unwrap();
            (
                p["action"].as_str().unwrap().to_owned(),
                p["target"].as_str().unwrap().to_owned(),
                p["by"].as_i64().unwrap(),
            )
        })
        .collect()
}

crate::both_stores! {
    async fn only_admins_reach_the_console_and_a_refusal_changes_nothing(app) {
        let user = app.sign_up("plain@example.com").await;
        let node = app.node.app.cluster.local().to_owned();
        for path in READS {
            let a = app.send("GET", path, None, None).await;
            assert_eq!(a.status, 401, "{path} without a token: {}", a.body);
            let a = app.send("GET", path, Some(&user.token), None).await;
            assert_eq!(a.status, 403, "{path} for a plain user: {}", a.body);
            assert_eq!(a.body["error"], "forbidden");
        }
        for (method, path, body) in actions(&node) {
            let a = app.send(method, &path, None, body.clone()).await;
            assert_eq!(a.status, 401, "{method} {path} without a token: {}", a.body);
            let a = app.send(method, &path, Some(&user.token), body).await;
            assert_eq!(a.status, 403, "{method} {path} for a plain user: {}", a.body);
        }
        assert!(audit(&app).await.is_empty(), "a refused action is not audited");
        assert!(app.node.app.store.pins().await.unwrap().is_empty());
        assert_eq!(app.node.app.cluster.status().as_str(), "up");
        // The page itself is public: the data behind it needs an admin's token.
        let page = app.client.get(app.url("/console")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        let html = page.text().await.unwrap();
        assert!(html.contains("Convene console") && !html.contains("http://") && !html.contains("https://"),
            "the page loads nothing from elsewhere");
    }

    async fn the_console_finds_an_entity_shows_its_messages_and_passivates_it(app) {
        let admin = app.admin("root@example.com").await;
        let owner = app.sign_up("owner@example.com").await;
        let event = app.create_event(&owner, 5).await;
        for _ in 0..3 {
            assert_eq!(app.send("GET", &format!("/api/v1/events/{event}"), None, None).await.status, 200);
        }
        let node = app.node.app.cluster.local().to_owned();
        let key = format!("event/{event}");
        let path = format!("/api/v1/admin/entities?key={key}");
        let a = app.send("GET", &path, Some(&admin.token), None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["owner"], node.as_str());
        let active = &a.body["active"][0];
        assert_eq!(active["node"], node.as_str(), "{}", a.body);
        assert_eq!(active["summary"]["capacity"], 5, "{}", a.body);
        assert_eq!(active["summary"]["registered"], 0);
        // The first read activates it through a message; it then publishes its answer, and the
        // reads after that are answered from it, counted apart.
        let gets = active["last"].as_array().unwrap().iter().filter(|m| m["message"] == "Get").count();
        assert!(gets >= 1, "the last messages it handled: {}", active["last"]);
        assert!(active["handled"].as_u64().unwrap() >= 1);
        assert!(active["reads"].as_u64().unwrap() >= 1, "{active}");
        assert_eq!(gets as u64 + active["reads"].as_u64().unwrap(), 3, "{active}");

        let a = app.send("GET", "/api/v1/admin/actors?top=5", Some(&admin.token), None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let kinds = a.body["nodes"][0]["kinds"].as_array().unwrap();
        let events = kinds.iter().find(|k| k["kind"] == "event").unwrap();
        assert!(events["active"].as_u64().unwrap() >= 1 && events["handled"].as_u64().unwrap() >= 1, "{events}");
        assert!(events["handled"].as_u64().unwrap() + events["reads"].as_u64().unwrap() >= 3, "{events}");
        assert_eq!(app.send("GET", "/api/v1/admin/actors?top=0", Some(&admin.token), None).await.status, 422);
        let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let label = format!("convene_actor_messages_total{{kind=\"event\",node=\"{node}\"}}");
        assert!(metrics.contains(&label), "{label} is exported");
        assert!(metrics.contains("convene_actor_handling_seconds_bucket"));
        assert!(metrics.contains("convene_actor_mailbox_messages"));

        let passivate = |key: String| {
            let token = admin.token.clone();
            let app = &app;
            async move {
                app.send("POST", "/api/v1/admin/entities/passivate", Some(&token), Some(json!({"key": key}))).await
            }
        };
        let a = passivate(key.clone()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["result"]["nodes"], json!([node]));
        let gone = eventually(Duration::from_secs(5), || async {
            app.send("GET", &path, Some(&admin.token), None).await.body["active"] == json!([])
        }).await;
        assert!(gone, "the event is no longer active");
        assert_eq!(passivate(key.clone()).await.status, 404, "nothing to passivate any more");
        assert_eq!(passivate("nothing/1".into()).await.status, 422);
        let bad = app.send("POST", "/api/v1/admin/entities/passivate", Some(&admin.token), Some(json!([1]))).await;
        assert_eq!(bad.status, 400);
        // Its next message activates it again, with its state.
        let a = app.send("GET", &format!("/api/v1/events/{event}"), None, None).await;
        assert_eq!((a.status, a.body["capacity"].as_i64()), (200, Some(5)));
        assert_eq!(audit_of(&app, 1).await, vec![("passivate".to_owned(), key, admin.id)]);
    }

    async fn the_stream_sends_every_panel_at_most_once_a_second(app) {
        let admin = app.admin("root@example.com").await;
        let mut res = app
            .client
            .get(app.url("/api/v1/admin/stream"))
            .bearer_auth(&admin.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let mut text = String::new();
        let started = std::time::Instant::now();
        let window = Duration::from_millis(2500);
        while started.elapsed() < window {
            match tokio::time::timeout(window - started.elapsed(), res.chunk()).await {
                Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
                _ => break,
            }
        }
        for panel in ["members", "actors", "rooms", "buses", "requests"] {
            let events: Vec<&str> = text
                .split("\n\n")
                .filter(|block| block.lines().any(|l| l == format!("event:{panel}")))
                .collect();
            assert!(
                (1..=3).contains(&events.len()),
                "{panel}: {} updates in 2.5 s",
                events.len()
            );
            let data = events[0].lines().find_map(|l| l.strip_prefix("data:")).unwrap();
            let value: Value = serde_json::from_str(data).unwrap();
            assert!(value.is_object(), "{panel}: {data}");
        }
    }

    async fn a_notice_reaches_everyone_in_the_room_and_is_audited(app) {
        let admin = app.admin("root@example.com").await;
        let user = app.sign_up("member@example.com").await;
        let mut member = Client::connect_to(&app.node.url(), &user.token).await;
        member.join("room:lobby", None).await;
        let shown = eventually(Duration::from_secs(5), || async {
            let a = app.send("GET", "/api/v1/admin/rooms", Some(&admin.token), None).await;
            a.body["rooms"].as_array().unwrap().iter().any(|r| r["room"] == "room:lobby" && r["connections"] == 1)
        }).await;
        assert!(shown, "the room and its one connection are listed");
        let a = app.send("GET", "/api/v1/admin/rooms", Some(&admin.token), None).await;
        assert_eq!(a.body["sockets"][0]["connections"], 1, "{}", a.body);

        let mut feed = app.node.app.buses.subscribe();
        let path = "/api/v1/admin/rooms/room:lobby/notice";
        for bad in [json!({"text": ""}), json!({"text": "x".repeat(501)}), json!({})] {
            let a = app.send("POST", path, Some(&admin.token), Some(bad)).await;
            assert_eq!(a.status, 422, "{}", a.body);
        }
        let a = app.send("POST", "/api/v1/admin/rooms/lobby/notice", Some(&admin.token), Some(json!({"text": "hi"}))).await;
        assert_eq!(a.status, 404, "not a room name");
        let a = app.send("POST", path, Some(&admin.token), Some(json!({"text": "Doors close at six"}))).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let seq = a.body["result"]["seq"].as_i64().unwrap();
        let m = loop {
            let frame = member.next().await.expect("the notice arrives");
            if frame["op"] == "message" {
                break frame;
            }
        };
        assert_eq!(m["seq"], seq);
        assert_eq!(m["from"], admin.id);
        assert_eq!(m["body"], json!({"type": "notice", "text": "Doors close at six"}));
        assert_eq!(audit_of(&app, 1).await, vec![("notice".to_owned(), "room:lobby".to_owned(), admin.id)]);
        // The audit travels like every domain event, in its versioned envelope.
        let envelope = loop {
            let e = tokio::time::timeout(Duration::from_secs(10), feed.recv())
                .await
                .expect("the audit reaches the bus")
                .unwrap();
            if e.kind == "admin.action" {
                break serde_json::to_value(&*e).unwrap();
            }
        };
        crate::bus::check_schema(&envelope);
        assert_eq!(envelope["data"]["detail"], json!({"text": "Doors close at six"}));
        // A single node cannot be drained: nowhere to hand its entities off to.
        let node = app.node.app.cluster.local().to_owned();
        let a = app.send("POST", &format!("/api/v1/admin/nodes/{node}/drain"), Some(&admin.token), None).await;
        assert_eq!(a.status, 409, "{}", a.body);
        let a = app.send("POST", "/api/v1/admin/nodes/nobody/drain", Some(&admin.token), None).await;
        assert_eq!(a.status, 404);
    }
}

/// Runs `convene` with `args` against the cluster; its stdout.
async fn cli(cluster: &TestCluster, args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_convene"))
        .args(args)
        .args(["--url", &cluster.nodes[0].http])
        .env("CONVENE_TOKEN", &cluster.admin)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "convene {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn post(cluster: &TestCluster, node: usize, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = cluster
        .client
        .post(format!("{}{path}", cluster.nodes[node].http))
        .bearer_auth(&cluster.admin);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

/// Whether every node sees `key` owned by node `owner`.
async fn all_see_owner(cluster: &TestCluster, key: &str, owner: usize) -> bool {
    for i in 0..cluster.nodes.len() {
        if cluster.status(i, Some(key)).await["key"]["owner"] != cluster.nodes[owner].name.as_str()
        {
            return false;
        }
    }
    true
}

/// The status of member `name` as node `i` sees it.
async fn status_of(cluster: &TestCluster, i: usize, name: &str) -> String {
    let s = cluster.status(i, None).await;
    s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| m["status"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_moves_an_entity_and_drains_and_undrains_a_node() {
    let Some(cluster) = TestCluster::start(3).await else {
        return;
    };
    let event = cluster.create_event(5).await;
    let key = format!("event/{event}");
    let hashed = cluster.owner_of(&key).await;
    let target = (hashed + 1) % 3;
    let target_name = cluster.nodes[target].name.clone();

    // Move: every node places the event on the chosen member, and it is active there.
    let (status, body) = post(
        &cluster,
        0,
        "/api/v1/admin/placements",
        Some(json!({"key": key, "node": target_name})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(Duration::from_secs(5), || all_see_owner(
            &cluster, &key, target
        ))
        .await,
        "every node places {key} on {target_name}"
    );
    let read = cluster
        .client
        .get(format!(
            "{}/api/v1/events/{event}",
            cluster.nodes[hashed].http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let entity = cli(&cluster, &["inspect", "--json", "entity", &key]).await;
    let entity: Value = serde_json::from_str(&entity).unwrap();
    assert_eq!(entity["owner"], target_name.as_str());
    assert_eq!(entity["pinned"], target_name.as_str());
    assert_eq!(
        entity["active"][0]["node"],
        target_name.as_str(),
        "{entity}"
    );
    let members = cli(&cluster, &["inspect", "members"]).await;
    assert!(
        members.contains("PINNED") && members.contains(&key),
        "{members}"
    );

    // Unmove: it goes back where hashing places it.
    let out = cli(&cluster, &["admin", "unmove", &key]).await;
    assert!(out.starts_with("unmove "), "{out}");
    assert!(
        eventually(Duration::from_secs(5), || all_see_owner(
            &cluster, &key, hashed
        ))
        .await
    );

    // Drain: the node hands its entities off and every member sees it leaving; its health
    // check fails while the process keeps running and answering.
    let drained = cluster.nodes[2].name.clone();
    let (status, body) = post(
        &cluster,
        0,
        &format!("/api/v1/admin/nodes/{drained}/drain"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["status"], "leaving");
    for i in 0..3 {
        let seen = eventually(Duration::from_secs(5), || async {
            status_of(&cluster, i, &drained).await == "leaving"
        })
        .await;
        assert!(seen, "node {i} sees {drained} leaving");
    }
    let health = cluster
        .client
        .get(format!("{}/health", cluster.nodes[2].http))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let (status, body) = post(
        &cluster,
        1,
        "/api/v1/admin/placements",
        Some(json!({"key": key, "node": drained})),
    )
    .await;
    assert_eq!(status, 422, "nothing is moved to a drained node: {body}");
    let members: Value = cluster
        .client
        .get(format!("{}/api/v1/admin/members", cluster.nodes[1].http))
        .bearer_auth(&cluster.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == drained.as_str())
        .unwrap();
    assert_eq!(
        (m["draining"].as_bool(), m["reachable"].as_bool()),
        (Some(true), Some(true)),
        "{m}"
    );

    // Undrain from the command line: up again everywhere.
    let out = cli(&cluster, &["admin", "undrain", &drained]).await;
    assert!(out.contains("\"status\":\"up\""), "{out}");
    cluster.wait_members(3).await;
    let health = cluster
        .client
        .get(format!("{}/health", cluster.nodes[2].http))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let (status, _) = post(
        &cluster,
        0,
        &format!("/api/v1/admin/nodes/{drained}/undrain"),
        None,
    )
    .await;
    assert_eq!(status, 409, "a node that is up cannot be undrained");

    let actors: Value =
        serde_json::from_str(&cli(&cluster, &["inspect", "--json", "actors"]).await).unwrap();
    assert_eq!(actors["nodes"].as_array().unwrap().len(), 3, "{actors}");
    let tables = cli(&cluster, &["inspect", "actors"]).await;
    assert!(
        tables.contains("KIND") && tables.contains("event"),
        "{tables}"
    );
    for what in ["rooms", "buses", "requests"] {
        let out = cli(&cluster, &["inspect", what]).await;
        assert!(!out.is_empty(), "inspect {what}");
    }
}

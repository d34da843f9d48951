//! Recommendations end to end: interactions recorded (by clients, by reads, by registrations),
//! a trained model that puts tech events near Berlin first for a user who went to such events,
//! popular-near-you for a user without history, similar events, the admin endpoints, a model
//! swap under load that loses no request, an interaction on one node seen by another within a
//! second, a restarted node that serves the stored model
//! without training, and a trainer that is restarted after a crash.

use std::collections::HashSet;
use std::time::Duration;

use convene::recommend::trainer::TrainerMessage;
use convene_actors::geo::haversine_km;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestUser, eventually, spawn_app};

const BERLIN: (f64, f64) = (52.52, 13.405);
const MADRID: (f64, f64) = (40.4168, -3.7038);
const PARIS: (f64, f64) = (48.8566, 2.3522);

async fn event(
    app: &TestApp,
    owner: &TestUser,
    title: &str,
    category: &str,
    at: (f64, f64),
    days: i64,
) -> i64 {
    let a = app
        .send(
            "POST",
            "/api/v1/events",
            Some(&owner.token),
            Some(json!({
                "title": title,
                "description": format!("{title}: talks, workshops and people who care"),
                "date": (chrono::Utc::now() + chrono::Duration::days(days)).to_rfc3339(),
                "location": "somewhere",
                "latitude": at.0,
                "longitude": at.1,
                "capacity": 50,
                "category": category,
                "tags": [category],
            })),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["id"].as_i64().unwrap()
}

async fn register(app: &TestApp, user: &TestUser, event: i64) {
    let a = app
        .send(
            "POST",
            &format!("/api/v1/events/{event}/registrations"),
            Some(&user.token),
            None,
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
}

async fn recommendations(app: &TestApp, user: &TestUser, query: &str) -> Value {
    let a = app
        .send(
            "GET",
            &format!("/api/v1/users/me/recommendations{query}"),
            Some(&user.token),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

/// Asks for a model and waits until this node serves one that learnt from every interaction
/// recorded so far.
async fn trained(app: &TestApp, admin: &TestUser) -> i64 {
    let a = app
        .send(
            "POST",
            "/api/v1/admin/recommendations/train",
            Some(&admin.token),
            None,
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let newest = app.node.app.store.last_interaction().await.unwrap();
    let ok = eventually(Duration::from_secs(60), || async {
        let s = app
            .send(
                "GET",
                "/api/v1/admin/recommendations",
                Some(&admin.token),
                None,
            )
            .await;
        assert_eq!(s.status, 200, "{}", s.body);
        s.body["last_interaction"].as_i64().unwrap_or(-1) >= newest
    })
    .await;
    assert!(
        ok,
        "no model with every interaction was served within a minute"
    );
    app.node.app.models.version()
}

fn near(item: &Value, at: (f64, f64), km: f64) -> bool {
    let e = &item["event"];
    match (e["latitude"].as_f64(), e["longitude"].as_f64()) {
        (Some(lat), Some(lon)) => haversine_km(at, (lat, lon)) <= km,
        _ => false,
    }
}

/// The world of the end-to-end test: tech, arts and sports events in Berlin, Madrid and Paris,
/// and people who go to them.
struct World {
    admin: TestUser,
    peers: Vec<TestUser>,
    user: TestUser,
    organiser: TestUser,
    attended: Vec<i64>,
}

async fn world(app: &TestApp) -> World {
    let admin = app.admin("admin@example.com").await;
    let organiser = app.sign_up("organiser@example.com").await;
    let tech_berlin = [
        "Rust systems programming meetup",
        "Kubernetes cluster operations night",
        "Machine learning inference workshop",
        "Rust compiler internals talk",
        "Cloud observability hands-on",
        "Security engineering evening",
    ];
    let mut berlin = Vec::new();
    for (n, t) in tech_berlin.iter().enumerate() {
        berlin.push(
            event(
                app,
                &organiser,
                t,
                "tech",
                (BERLIN.0 + n as f64 * 0.01, BERLIN.1),
                10 + n as i64,
            )
            .await,
        );
    }
    let mut others = Vec::new();
    for (n, t) in [
        "Rust systems meetup Madrid",
        "Kubernetes night Madrid",
        "Machine learning Madrid",
    ]
    .iter()
    .enumerate()
    {
        others.push(event(app, &organiser, t, "tech", MADRID, 12 + n as i64).await);
    }
    for (n, t) in [
        "Watercolour painting class",
        "Jazz quartet evening",
        "Theatre rehearsal open day",
    ]
    .iter()
    .enumerate()
    {
        others.push(event(app, &organiser, t, "arts", BERLIN, 11 + n as i64).await);
    }
    for (n, t) in ["Marathon training run", "Climbing bouldering session"]
        .iter()
        .enumerate()
    {
        others.push(event(app, &organiser, t, "sports", PARIS, 13 + n as i64).await);
    }
    // People who went to Berlin's tech events also went to the others there.
    let peers = app.sign_up_many("peer", 6).await;
    for (n, p) in peers.iter().enumerate() {
        for e in berlin.iter().skip(n % 2).take(5) {
            register(app, p, *e).await;
        }
        register(app, p, others[n % others.len()]).await;
    }
    let user = app.sign_up("berliner@example.com").await;
    let attended = berlin[..3].to_vec();
    for e in &attended {
        register(app, &user, *e).await;
    }
    World {
        admin,
        peers,
        user,
        organiser,
        attended,
    }
}

crate::both_stores! {
    async fn a_user_who_went_to_tech_events_near_berlin_gets_tech_events_near_berlin_first(app) {
        let w = world(&app).await;
        trained(&app, &w.admin).await;
        let body = recommendations(&app, &w.user, "?limit=10").await;
        assert_eq!(body["strategy"], "hybrid", "{body}");
        assert_eq!(body["cold_start"], false);
        let items = body["items"].as_array().unwrap();
        assert!(items.len() >= 3, "{body}");
        for item in &items[..3] {
            assert_eq!(item["event"]["category"], "tech", "{body}");
            assert!(near(item, BERLIN, 50.0), "not near Berlin: {item}");
            assert!(!item["reasons"].as_array().unwrap().is_empty(), "{item}");
        }
        let ids: Vec<i64> = items.iter().map(|i| i["event"]["id"].as_i64().unwrap()).collect();
        for e in &w.attended {
            assert!(!ids.contains(e), "an event the user registered for came back: {e}");
        }
        let tech = items.iter().take(10).filter(|i| i["event"]["category"] == "tech").count();
        assert!(tech <= 3, "more than 3 of one category in a top 10: {body}");
        let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().unwrap()).collect();
        assert!(scores[..3].windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        // The organiser's own events are never offered to them.
        let own = recommendations(&app, &w.organiser, "").await;
        assert!(own["items"].as_array().unwrap().is_empty(), "{own}");
    }

    async fn picks_worked_out_at_training_serve_a_user_until_they_act_or_move(app) {
        let w = world(&app).await;
        trained(&app, &w.admin).await;
        let served = |algorithm: &'static str| {
            let app = &app;
            async move {
                let text = app.send("GET", "/metrics", None, None).await.body;
                let line = format!("recommendation_latency_seconds_count{{algorithm=\"{algorithm}\"}}");
                crate::commands::metric(text.as_str().unwrap(), &line)
            }
        };
        let first = recommendations(&app, &w.user, "?limit=5").await;
        assert_eq!(first["strategy"], "hybrid", "{first}");
        assert_eq!(first["items"].as_array().unwrap().len(), 5, "{first}");
        assert_eq!((served("precomputed").await, served("hybrid").await), (1, 0));
        // The same again: the same answer.
        assert_eq!(recommendations(&app, &w.user, "?limit=5").await["items"], first["items"]);
        // Registering is something done since the model: scored as asked, without that event.
        let taken = first["items"][0]["event"]["id"].as_i64().unwrap();
        register(&app, &w.user, taken).await;
        let after = recommendations(&app, &w.user, "?limit=5").await;
        assert_eq!(served("hybrid").await, 1, "{after}");
        let ids: Vec<i64> = after["items"].as_array().unwrap().iter()
            .map(|i| i["event"]["id"].as_i64().unwrap()).collect();
        assert!(!ids.contains(&taken), "{after}");
        // Another user, who moves: their new home counts at once.
        let peer = &w.peers[0];
        let (picked, scored) = (served("precomputed").await, served("hybrid").await);
        recommendations(&app, peer, "?limit=3").await;
        assert_eq!(served("precomputed").await, picked + 1);
        let a = app
            .send(
                "PATCH",
                "/api/v1/users/me",
                Some(&peer.token),
                Some(json!({"profile": {"home": {"lat": MADRID.0, "lon": MADRID.1}}})),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        recommendations(&app, peer, "?limit=3").await;
        assert_eq!(served("hybrid").await, scored + 1);
    }

    async fn a_user_without_history_gets_popular_events_near_home_and_is_told_so(app) {
        let w = world(&app).await;
        trained(&app, &w.admin).await;
        let newcomer = app.sign_up("newcomer@example.com").await;
        let a = app
            .send(
                "PATCH",
                "/api/v1/users/me",
                Some(&newcomer.token),
                Some(json!({"profile": {"home": {"lat": PARIS.0, "lon": PARIS.1}}})),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let body = recommendations(&app, &newcomer, "?limit=5").await;
        assert_eq!(body["cold_start"], true, "{body}");
        assert_eq!(body["strategy"], "popular_near_you");
        let items = body["items"].as_array().unwrap();
        assert_eq!(items.len(), 5, "{body}");
        let distances: Vec<f64> = items
            .iter()
            .map(|i| {
                haversine_km(
                    PARIS,
                    (i["event"]["latitude"].as_f64().unwrap(), i["event"]["longitude"].as_f64().unwrap()),
                )
            })
            .collect();
        assert!(distances.windows(2).all(|d| d[0] <= d[1]), "nearest first: {distances:?}");
        assert!(near(&items[0], PARIS, 10.0), "{body}");
        // A bad home is refused and changes nothing.
        let bad = app
            .send(
                "PATCH",
                "/api/v1/users/me",
                Some(&newcomer.token),
                Some(json!({"profile": {"home": {"lat": 123, "lon": 0}}})),
            )
            .await;
        assert_eq!(bad.status, 422, "{}", bad.body);
        let me = app.send("GET", "/api/v1/users/me", Some(&newcomer.token), None).await;
        assert_eq!(me.body["profile"]["home"]["lat"], PARIS.0);
    }

    async fn interactions_are_validated_and_recorded(app) {
        let owner = app.sign_up("owner@example.com").await;
        let user = app.sign_up("reader@example.com").await;
        let e = event(&app, &owner, "Rust meetup", "tech", BERLIN, 5).await;
        let post = |token: Option<String>, body: Value| {
            let app = &app;
            async move { app.send("POST", "/api/v1/interactions", token.as_deref(), Some(body)).await }
        };
        let t = Some(user.token.clone());
        assert_eq!(post(None, json!({"event_id": e, "kind": "like"})).await.status, 401);
        assert_eq!(post(t.clone(), json!({"event_id": e, "kind": "stare"})).await.status, 422);
        assert_eq!(post(t.clone(), json!({"event_id": e, "kind": "register"})).await.status, 422);
        assert_eq!(post(t.clone(), json!({"event_id": 999_999, "kind": "like"})).await.status, 404);
        assert_eq!(post(t.clone(), json!({"event_id": "x", "kind": "like"})).await.status, 400);
        assert_eq!(post(t.clone(), json!({"event_id": e, "kind": "like"})).await.status, 204);
        // A signed-in read is a view; an anonymous one or one with a bad token is not.
        assert_eq!(app.send("GET", &format!("/api/v1/events/{e}"), Some(&user.token), None).await.status, 200);
        assert_eq!(app.send("GET", &format!("/api/v1/events/{e}"), None, None).await.status, 200);
        assert_eq!(app.send("GET", &format!("/api/v1/events/{e}"), Some("junk"), None).await.status, 200);
        register(&app, &user, e).await;
        let a = app.send("DELETE", &format!("/api/v1/events/{e}/registrations/me"), Some(&user.token), None).await;
        assert!(a.status == 200 || a.status == 204, "{}", a.body);
        let store = app.node.app.store.clone();
        let ok = eventually(Duration::from_secs(5), || async {
            let kinds: HashSet<&str> = store
                .user_interactions(user.id, 100)
                .await
                .unwrap()
                .iter()
                .map(|i| i.kind.as_str())
                .collect();
            kinds == HashSet::from(["like", "view", "register", "cancel"])
        })
        .await;
        assert!(ok, "{:?}", store.user_interactions(user.id, 100).await.unwrap());
        let views = store
            .user_interactions(user.id, 100)
            .await
            .unwrap()
            .iter()
            .filter(|i| i.kind.as_str() == "view")
            .count();
        assert_eq!(views, 1);
    }

    async fn similar_events_share_subject_and_place(app) {
        let w = world(&app).await;
        trained(&app, &w.admin).await;
        let first = w.attended[0];
        let a = app.send("GET", &format!("/api/v1/events/{first}/similar?limit=3"), None, None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let items = a.body["items"].as_array().unwrap();
        assert_eq!(items.len(), 3, "{}", a.body);
        for item in items {
            assert_ne!(item["event"]["id"].as_i64().unwrap(), first);
            assert_eq!(item["event"]["category"], "tech", "{}", a.body);
        }
        assert!(near(&items[0], BERLIN, 50.0), "{}", a.body);
        assert_eq!(app.send("GET", "/api/v1/events/999999/similar", None, None).await.status, 404);
        assert_eq!(app.send("GET", &format!("/api/v1/events/{first}/similar?limit=0"), None, None).await.status, 422);
        assert_eq!(app.send("GET", &format!("/api/v1/events/{first}/similar?limit=51"), None, None).await.status, 422);
        assert_eq!(recommendations_status(&app, &w.user, "?limit=abc").await, 422);
    }

    async fn only_admins_see_and_train_the_model(app) {
        let user = app.sign_up("plain@example.com").await;
        for (method, path) in [
            ("GET", "/api/v1/admin/recommendations"),
            ("POST", "/api/v1/admin/recommendations/train"),
        ] {
            assert_eq!(app.send(method, path, None, None).await.status, 401);
            assert_eq!(app.send(method, path, Some(&user.token), None).await.status, 403);
        }
        assert_eq!(app.send("GET", "/api/v1/users/me/recommendations", None, None).await.status, 401);
        let admin = app.admin("root@example.com").await;
        let a = app.send("GET", "/api/v1/admin/recommendations", Some(&admin.token), None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.get("version").is_none(), "no model before any interaction: {}", a.body);
    }

    async fn a_model_swap_under_load_loses_no_request(app) {
        let w = world(&app).await;
        let first = trained(&app, &w.admin).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut clients = Vec::new();
        for _ in 0..8 {
            let (client, url, token, stop) = (
                app.client.clone(),
                app.url("/api/v1/users/me/recommendations?limit=5"),
                w.user.token.clone(),
                stop.clone(),
            );
            clients.push(tokio::spawn(async move {
                let mut versions = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let res = client.get(&url).bearer_auth(&token).send().await.unwrap();
                    assert_eq!(res.status(), 200);
                    let body: Value = res.json().await.unwrap();
                    assert_eq!(body["strategy"], "hybrid", "{body}");
                    assert!(!body["items"].as_array().unwrap().is_empty(), "{body}");
                    versions.push(body["model_version"].as_i64().unwrap());
                }
                versions
            }));
        }
        // Two new models while the clients ask.
        let extra = app.sign_up("late@example.com").await;
        register(&app, &extra, w.attended[1]).await;
        let second = trained(&app, &w.admin).await;
        register(&app, &extra, w.attended[2]).await;
        let third = trained(&app, &w.admin).await;
        assert!(first < second && second < third, "{first} {second} {third}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut seen = HashSet::new();
        let mut total = 0;
        for c in clients {
            let versions = c.await.unwrap();
            total += versions.len();
            assert!(versions.windows(2).all(|v| v[0] <= v[1]), "a client went back to an older model");
            seen.extend(versions);
        }
        assert!(total > 50, "only {total} requests");
        assert!(seen.contains(&third), "{seen:?}");
        let metrics = app.send("GET", "/metrics", None, None).await;
        let text = metrics.body.as_str().unwrap_or_default().to_owned();
        assert!(text.contains("ml_predictions_total{model=\"hybrid\",status=\"success\"}"), "{text}");
        assert!(text.contains("recommendation_latency_seconds_bucket{algorithm=\"precomputed\""));
        assert!(text.contains("ml_model_accuracy{model=\"hybrid\"}"));
    }
}

async fn recommendations_status(app: &TestApp, user: &TestUser, query: &str) -> u16 {
    app.send(
        "GET",
        &format!("/api/v1/users/me/recommendations{query}"),
        Some(&user.token),
        None,
    )
    .await
    .status
}

/// A second node on `app`'s database (its own data directory, the same signing secret, so
/// tokens hold on both), once it serves model `version`.
async fn second_node(app: &TestApp, version: i64) -> convene::node::Node {
    let mut config = app.node.app.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.node_name = "second".into();
    config.data_dir = app.dir.0.join("second");
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let secret = app.node.app.config.data_dir.join("jwt_secret");
    std::fs::copy(&secret, config.data_dir.join("jwt_secret")).unwrap();
    let second = convene::node::Node::start(config).await.unwrap();
    let ok = eventually(Duration::from_secs(10), || async {
        second.app.models.version() == version
    })
    .await;
    assert!(ok, "the second node did not load model {version}");
    second
}

/// A node started on the database of another serves the stored model at once, without
/// training one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_serves_the_stored_model_without_training() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let w = world(&app).await;
    let version = trained(&app, &w.admin).await;
    let second = second_node(&app, version).await;
    let latest = app.node.app.store.latest_model().await.unwrap().unwrap();
    assert_eq!(latest.version, version, "a model was trained again");
    second.shutdown().await;
}

/// Two nodes on one database: an interaction recorded on one ends that user's picks on the
/// other within a second (the other node follows the interactions; it does not ask the store
/// on every request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interaction_on_one_node_ends_the_picks_on_another_within_a_second() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let w = world(&app).await;
    let version = trained(&app, &w.admin).await;
    let second = second_node(&app, version).await;
    // Once its follower has read past the model, the second node knows who acted since.
    let learnt = second.app.models.current().unwrap().last_interaction;
    let ok = eventually(Duration::from_secs(5), || async {
        second.app.store.touched().after(w.user.id, learnt) == Some(false)
    })
    .await;
    assert!(ok, "the second node did not follow the interactions");
    let base = second.url();
    // Each ask with its own limit, so no cached answer stands in for the recommender.
    let limit = std::sync::atomic::AtomicU32::new(4);
    let ask = || async {
        let n = limit.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let r = app
            .client
            .get(format!("{base}/api/v1/users/me/recommendations?limit={n}"))
            .bearer_auth(&w.user.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let served = |algorithm: &'static str| {
        let (client, base) = (&app.client, &base);
        async move {
            let text = crate::helpers::metrics_text(client, base).await;
            let line = format!("recommendation_latency_seconds_count{{algorithm=\"{algorithm}\"}}");
            crate::commands::metric(&text, &line)
        }
    };
    let first = ask().await;
    assert_eq!(first["strategy"], "hybrid", "{first}");
    assert_eq!(
        (served("precomputed").await, served("hybrid").await),
        (1, 0)
    );
    let liked = first["items"][0]["event"]["id"].as_i64().unwrap();
    let a = app
        .send(
            "POST",
            "/api/v1/interactions",
            Some(&w.user.token),
            Some(json!({"event_id": liked, "kind": "like"})),
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.body);
    let started = std::time::Instant::now();
    let ok = eventually(Duration::from_secs(1), || async {
        ask().await;
        served("hybrid").await > 0
    })
    .await;
    assert!(
        ok,
        "the second node still served the picks a second after the user acted on the first"
    );
    println!(
        "the second node scored the user live {} ms after the interaction",
        started.elapsed().as_millis()
    );
    second.shutdown().await;
}

/// The trainer crashes; its keeper starts it again and it goes on serving and training.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_trainer_is_restarted_and_trains_again() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let w = world(&app).await;
    let first = trained(&app, &w.admin).await;
    let before = app.node.trainer().unwrap();
    before.cast(TrainerMessage::InjectFault).unwrap();
    let ok = eventually(Duration::from_secs(5), || async {
        app.node
            .trainer()
            .is_some_and(|t| t.get_id() != before.get_id())
    })
    .await;
    assert!(ok, "the trainer was not restarted");
    let extra = app.sign_up("after-crash@example.com").await;
    register(&app, &extra, w.attended[0]).await;
    let second = trained(&app, &w.admin).await;
    assert!(second > first);
    assert_eq!(app.node.app.models.version(), second);
}

/// The version of the newest stored model, 0 for none.
async fn newest_model(app: &TestApp) -> i64 {
    app.node
        .app
        .store
        .latest_model()
        .await
        .unwrap()
        .map_or(0, |m| m.version)
}

/// Records `n` views of `event` by `user`.
async fn views(app: &TestApp, user: &TestUser, event: i64, n: usize) {
    for _ in 0..n {
        let a = app
            .send(
                "POST",
                "/api/v1/interactions",
                Some(&user.token),
                Some(json!({"event_id": event, "kind": "view"})),
            )
            .await;
        assert_eq!(a.status, 204, "{}", a.body);
    }
}

/// A node's first model once its first interaction arrived; then a burst past
/// `recommend_retrain_after`. Returns that first model's version.
async fn first_model_then_a_burst(app: &TestApp) -> i64 {
    let owner = app.sign_up("host@example.com").await;
    let user = app.sign_up("fan@example.com").await;
    let e = event(app, &owner, "Rust meetup", "tech", BERLIN, 7).await;
    views(app, &user, e, 1).await;
    let ok = eventually(Duration::from_secs(60), || async {
        newest_model(app).await > 0
    })
    .await;
    assert!(ok, "no first model within a minute");
    // Nothing arrives since, so nothing trains again before the burst.
    let first = newest_model(app).await;
    views(app, &user, e, 5).await;
    first
}

/// Interactions past `recommend_retrain_after` retrain the model only once
/// `recommend_retrain_gap_secs` passed since the last training: a node with no gap retrains
/// after the burst, one with an hour's gap keeps its model all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_interactions_retrains_only_past_the_gap() {
    use crate::helpers::{Settings, spawn_app_with};
    let settings = |gap: &str| Settings {
        env: vec![
            ("CONVENE_RECOMMEND_RETRAIN_AFTER".into(), "3".into()),
            ("CONVENE_RECOMMEND_RETRAIN_GAP_SECS".into(), gap.into()),
        ],
        ..Settings::default()
    };
    let spaced = spawn_app_with(Backend::Sqlite, settings("3600"))
        .await
        .unwrap();
    let unspaced = spawn_app_with(Backend::Sqlite, settings("0"))
        .await
        .unwrap();
    let (kept, first) = futures::join!(
        first_model_then_a_burst(&spaced),
        first_model_then_a_burst(&unspaced)
    );
    let ok = eventually(Duration::from_secs(60), || async {
        newest_model(&unspaced).await > first
    })
    .await;
    assert!(ok, "the node without a gap did not retrain after the burst");
    // A few of the trainer's ticks more than the other node needed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        newest_model(&spaced).await,
        kept,
        "the node with an hour's gap retrained within it"
    );
}

//! Real-time analytics end to end: views, likes and registrations counted in the popularity
//! window and trending in order; one event's numbers for its organiser; the admins' summary of
//! the three windows; a window that crashes comes back with its counts; an anomaly found in
//! the minutes stored goes to the summary, the metrics and the bus; the per-minute rows
//! replace each other and add up per event.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use convene_actors::analytics::window::MinuteSummary;
use convene_actors::analytics::{self, AnalyticsMessage, Role};
use convene_actors::recommend::Kind;
use convene_actors::store::AnalyticsStore;
use serde_json::{Value, json};

use convene::store::Interacted;

use crate::helpers::{TestApp, eventually};

async fn view(app: &TestApp, token: &str, event: i64) {
    let a = app
        .send("GET", &format!("/api/v1/events/{event}"), Some(token), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

async fn register(app: &TestApp, token: &str, event: i64) {
    let a = app
        .send(
            "POST",
            &format!("/api/v1/events/{event}/registrations"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
}

async fn trending(app: &TestApp, query: &str) -> Value {
    let a = app
        .send(
            "GET",
            &format!("/api/v1/analytics/trending{query}"),
            None,
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

fn ids(body: &Value) -> Vec<i64> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["event_id"].as_i64().unwrap())
        .collect()
}

/// Three events: `liked` one like (3), `viewed` four views (4), `booked` three registrations
/// and two views (17).
async fn traffic(app: &TestApp) -> (i64, i64, i64, crate::helpers::TestUser) {
    let owner = app.sign_up("organiser@example.com").await;
    let users = app.sign_up_many("fan", 3).await;
    let liked = app.create_event(&owner, 10).await;
    let viewed = app.create_event(&owner, 10).await;
    let booked = app.create_event(&owner, 10).await;
    for u in &users {
        register(app, &u.token, booked).await;
    }
    for _ in 0..2 {
        view(app, &users[0].token, viewed).await;
        view(app, &users[1].token, viewed).await;
    }
    view(app, &users[2].token, booked).await;
    view(app, &users[2].token, booked).await;
    // A read without a token counts nothing.
    let a = app
        .send("GET", &format!("/api/v1/events/{liked}"), None, None)
        .await;
    assert_eq!(a.status, 200);
    let a = app
        .send(
            "POST",
            "/api/v1/interactions",
            Some(&users[0].token),
            Some(json!({"event_id": liked, "kind": "like"})),
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.body);
    (liked, viewed, booked, owner)
}

async fn counted(app: &TestApp, want: &[i64]) -> Value {
    // A window restarting after a crash answers 503 until it is back.
    let ok = eventually(Duration::from_secs(15), || async {
        let a = app
            .send("GET", "/api/v1/analytics/trending", None, None)
            .await;
        a.status == 200 && ids(&a.body) == want
    })
    .await;
    let body = trending(app, "").await;
    assert!(ok, "trending {} is not {want:?}", body);
    body
}

async fn refused(app: &TestApp, query: &str, field: &str) {
    let a = app
        .send(
            "GET",
            &format!("/api/v1/analytics/trending{query}"),
            None,
            None,
        )
        .await;
    assert_eq!(a.status, 422, "{query}: {}", a.body);
    assert!(
        a.body["details"].get(field).is_some(),
        "{query}: {}",
        a.body
    );
}

/// The start of a minute, as the windows count them.
fn minute_start(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(m * 60, 0).unwrap()
}

crate::both_stores! {
    async fn interest_shown_makes_events_trend_in_order_and_the_organiser_sees_the_numbers(app) {
        let (liked, viewed, booked, owner) = traffic(&app).await;
        let body = counted(&app, &[booked, viewed, liked]).await;
        assert_eq!(body["window"], "30m");
        let top = &body["items"][0];
        assert_eq!(top["score"], 17.0, "{top}");
        assert_eq!(top["counts"]["register"], 3);
        assert_eq!(top["counts"]["view"], 2);
        assert!(top["title"].is_string());
        assert_eq!(body["items"][2]["counts"]["like"], 1);
        assert_eq!(ids(&trending(&app, "?window=5m&limit=1").await), vec![booked]);
        for bad in ["?window=0h", "?window=31m", "?window=1h", "?window=soon", "?window="] {
            refused(&app, bad, "window").await;
        }
        for bad in ["?limit=0", "?limit=101"] {
            refused(&app, bad, "limit").await;
        }
        // A deleted event no longer trends.
        let a = app
            .send("DELETE", &format!("/api/v1/events/{liked}"), Some(&owner.token), None)
            .await;
        assert!(a.status < 300, "{}", a.body);
        assert_eq!(ids(&trending(&app, "").await), vec![booked, viewed]);

        let path = format!("/api/v1/analytics/events/{booked}");
        let a = app.send("GET", &path, Some(&owner.token), None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["event_id"], booked);
        let w = &a.body["window"];
        assert_eq!((w["views"].as_i64(), w["registrations"].as_i64()), (Some(2), Some(3)), "{w}");
        assert_eq!(w["conversion"], 1.5);
        assert_eq!(w["minutes"], 30);
        // Minutes still open are not in the totals yet.
        assert!(a.body["total"]["views"].as_i64().unwrap() <= 2);
        let stranger = app.sign_up("stranger@example.com").await;
        assert_eq!(app.send("GET", &path, Some(&stranger.token), None).await.status, 403);
        assert_eq!(app.send("GET", &path, None, None).await.status, 401);
        let admin = app.admin("analyst@example.com").await;
        assert_eq!(app.send("GET", &path, Some(&admin.token), None).await.status, 200);
        let a = app
            .send("GET", "/api/v1/analytics/events/999999", Some(&admin.token), None)
            .await;
        assert_eq!(a.status, 404);
        let a = app
            .send("GET", &format!("/api/v1/analytics/events/{liked}"), Some(&owner.token), None)
            .await;
        assert_eq!(a.status, 404, "a deleted event has no analytics: {}", a.body);
    }

    async fn the_summary_shows_the_three_windows_to_admins_only(app) {
        let (_, _, booked, _) = traffic(&app).await;
        let admin = app.admin("summary-admin@example.com").await;
        let summary = || async {
            let a = app.send("GET", "/api/v1/analytics/summary", Some(&admin.token), None).await;
            assert_eq!(a.status, 200, "{}", a.body);
            a.body
        };
        let ok = eventually(Duration::from_secs(15), || async {
            let s = summary().await;
            s["user_activity"]["active_users"] == 3
                && s["system_health"]["requests"].as_i64().unwrap_or(0) > 10
                && s["event_popularity"]["top"][0]["event_id"] == booked
        })
        .await;
        let s = summary().await;
        assert!(ok, "{s}");
        assert_eq!(s["event_popularity"]["window"], "event_popularity");
        assert_eq!(s["user_activity"]["minutes"], 60);
        assert_eq!(s["user_activity"]["interactions"]["register"], 3);
        assert_eq!(s["system_health"]["minutes"], 5);
        assert_eq!(s["system_health"]["counts"]["register"], 3);
        assert_eq!(s["system_health"]["counts"]["view"], 6);
        assert!(s["system_health"]["per_minute"].as_array().unwrap().len() <= 5);
        assert_eq!(s["anomalies"], json!([]));
        let user = app.sign_up("curious@example.com").await;
        let a = app.send("GET", "/api/v1/analytics/summary", Some(&user.token), None).await;
        assert_eq!(a.status, 403);
        assert_eq!(app.send("GET", "/api/v1/analytics/summary", None, None).await.status, 401);
    }

    async fn a_window_that_crashes_comes_back_with_its_counts(app) {
        let (liked, viewed, booked, _) = traffic(&app).await;
        let before = counted(&app, &[booked, viewed, liked]).await;
        let windows = &app.node.app.windows;
        windows
            .tell(analytics::key(Role::Popularity), AnalyticsMessage::InjectFault)
            .unwrap();
        windows
            .tell(analytics::key(Role::Activity), AnalyticsMessage::InjectFault)
            .unwrap();
        // Its supervisor starts it again, and it takes its window back from the stored events.
        let after = counted(&app, &[booked, viewed, liked]).await;
        assert_eq!(before["items"], after["items"]);
        let admin = app.admin("after-crash@example.com").await;
        let back = eventually(Duration::from_secs(15), || async {
            let a = app.send("GET", "/api/v1/analytics/summary", Some(&admin.token), None).await;
            a.status == 200 && a.body["user_activity"]["active_users"] == 3
        })
        .await;
        let a = app.send("GET", "/api/v1/analytics/summary", Some(&admin.token), None).await;
        assert!(back, "{}", a.body);
    }

    async fn an_unusual_minute_is_an_anomaly_in_the_summary_the_metrics_and_on_the_bus(app) {
        // Far enough from the end of a minute that the set-up stays within it.
        let second = Utc::now().second();
        if second > 45 {
            tokio::time::sleep(Duration::from_secs(u64::from(61 - second))).await;
        }
        let now = Utc::now().timestamp().div_euclid(60);
        let store = &app.node.app.store;
        // Forty quiet minutes of 4 to 6 registrations each...
        let baseline: Vec<MinuteSummary> = (now - 40..now - 1)
            .map(|m| MinuteSummary {
                metric: "register".into(),
                dimensions: json!({}),
                value: (4 + m.rem_euclid(3)) as f64,
                minute: minute_start(m),
            })
            .collect();
        store.save_minutes(&baseline).await.unwrap();
        // ...then 300 in the last minute.
        let at = minute_start(now - 1) + chrono::Duration::seconds(30);
        let burst: Vec<Interacted> = (1..=300)
            .map(|user| Interacted {
                id: uuid::Uuid::new_v4(),
                user,
                event: 1,
                kind: Kind::Register,
                at,
            })
            .collect();
        store.record_interactions(&burst).await.unwrap();
        let mut feed = app.node.app.buses.subscribe();
        // The health window starts again and takes the stored minutes and raw events back.
        app.node
            .app
            .windows
            .tell(analytics::key(Role::Health), AnalyticsMessage::InjectFault)
            .unwrap();
        let admin = app.admin("watch@example.com").await;
        let ok = eventually(Duration::from_secs(30), || async {
            let a = app.send("GET", "/api/v1/analytics/summary", Some(&admin.token), None).await;
            a.body["anomalies"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
        let a = app.send("GET", "/api/v1/analytics/summary", Some(&admin.token), None).await;
        assert!(ok, "no anomaly: {}", a.body);
        let anomalies = a.body["anomalies"].as_array().unwrap();
        assert_eq!(anomalies.len(), 1, "{anomalies:?}");
        let found = &anomalies[0];
        assert_eq!(found["metric"], "registrations");
        assert_eq!(found["direction"], "spike");
        assert_eq!(found["value"], 300.0);
        assert_eq!(found["baseline"], 5.0);
        assert!(found["z"].as_f64().unwrap() > 3.5);
        let metrics = app.send("GET", "/metrics", None, None).await;
        let text = metrics.body.as_str().unwrap_or_default();
        assert!(
            text.contains("convene_anomalies_total{metric=\"registrations\"} 1"),
            "{text}"
        );
        let envelope = loop {
            let e = tokio::time::timeout(Duration::from_secs(10), feed.recv())
                .await
                .expect("the anomaly reaches the bus")
                .unwrap();
            if e.kind == "analytics.anomaly" {
                break serde_json::to_value(&*e).unwrap();
            }
        };
        crate::bus::check_schema(&envelope);
        assert_eq!(envelope["data"]["metric"], "registrations");
    }

    async fn minutes_stored_replace_each_other_and_add_up_per_event(app) {
        let store = &app.node.app.store;
        let m = minute_start(Utc::now().timestamp().div_euclid(60) - 3);
        let row = |metric: &str, dims: Value, value: f64, minute| MinuteSummary {
            metric: metric.into(),
            dimensions: dims,
            value,
            minute,
        };
        let next = m + chrono::Duration::minutes(1);
        store
            .save_minutes(&[
                row("event.view", json!({"event_id": 7}), 4.0, m),
                row("event.view", json!({"event_id": 7}), 6.0, next),
                row("event.register", json!({"event_id": 7}), 2.0, m),
                row("event.view", json!({"event_id": 8}), 50.0, m),
                row("view", json!({}), 60.0, m),
            ])
            .await
            .unwrap();
        // The same minute again replaces its value.
        store
            .save_minutes(&[row("event.register", json!({"event_id": 7}), 3.0, m)])
            .await
            .unwrap();
        let totals = store.event_totals(7).await.unwrap();
        assert_eq!(totals.get("view"), Some(&10.0));
        assert_eq!(totals.get("register"), Some(&3.0));
        assert_eq!(totals.len(), 2);
        let minutes = store.load_minutes(m).await.unwrap();
        assert!(minutes.iter().any(|r| r.metric == "view" && r.value == 60.0 && r.minute == m));
        assert!(minutes.iter().all(|r| r.dimensions == json!({})));
        // On PostgreSQL both tables are partitioned by time, with partitions made ahead.
        if app.database.starts_with("postgres") {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&app.database).await.unwrap();
            let partitions = |table: &'static str| {
                sqlx::query_as::<_, (String,)>(
                    "SELECT c.relname::TEXT FROM pg_inherits i \
                     JOIN pg_class c ON c.oid = i.inhrelid \
                     JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1",
                )
                .bind(table)
            };
            let raw = partitions("analytics_events").fetch_all(&mut c).await.unwrap();
            let today = format!("analytics_events_p{}", Utc::now().format("%Y%m%d"));
            assert!(raw.iter().any(|(n,)| *n == today), "{raw:?}");
            assert!(raw.len() >= 9, "yesterday, today, a week ahead and the default: {raw:?}");
            let minutes = partitions("metric_summaries").fetch_all(&mut c).await.unwrap();
            let month = format!("metric_summaries_p{}", Utc::now().format("%Y%m"));
            assert!(minutes.iter().any(|(n,)| *n == month), "{minutes:?}");
        }
        // Retention: everything before a cutoff goes.
        let pruned = store.prune_analytics(Utc::now(), next).await.unwrap();
        assert!(pruned.rows + pruned.partitions > 0);
        let totals = store.event_totals(7).await.unwrap();
        assert_eq!(totals.get("view"), Some(&6.0));
        assert_eq!(totals.get("register"), None);
    }
}

/// Reads the dead letters of `topic` until `n` arrived; their reasons.
async fn dead_letters(brokers: &str, topic: &str, n: usize) -> Vec<String> {
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a dead letter arrives")
            .unwrap();
        let headers = m.headers().expect("dead letters carry headers");
        let reason = headers
            .iter()
            .find(|h| h.key == "reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("a reason header");
        reasons.push(reason);
    }
    reasons
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactions_from_kafka_are_counted_and_poison_goes_to_the_dead_letters() {
    use crate::commands::{kafka_producer, metric, produce, topic_ready};
    use crate::helpers::{Backend, Settings, service_url, spawn_app_with};
    let brokers = service_url("KAFKA_BROKERS", "127.0.0.1:9092");
    let Some(producer) = kafka_producer(&brokers).await else {
        return;
    };
    let (prefix, _) = crate::bus::names();
    let app = spawn_app_with(
        Backend::Sqlite,
        Settings {
            env: vec![
                ("CONVENE_KAFKA_BROKERS".into(), brokers.clone()),
                ("CONVENE_BUS_PREFIX".into(), prefix.clone()),
            ],
            ..Settings::default()
        },
    )
    .await
    .unwrap();
    let owner = app.sign_up("kafka-organiser@example.com").await;
    let popular = app.create_event(&owner, 10).await;
    let quiet = app.create_event(&owner, 10).await;
    let topic = format!("{prefix}interactions");
    topic_ready(&producer, &topic).await;
    let send = |event: i64, kind: &str, user: i64| {
        json!({"user_id": user, "event_id": event, "kind": kind})
            .to_string()
            .into_bytes()
    };
    for user in 1..=20 {
        produce(
            &producer,
            &topic,
            &popular.to_string(),
            &send(popular, "view", user),
        )
        .await;
    }
    produce(
        &producer,
        &topic,
        &popular.to_string(),
        &send(popular, "share", 7),
    )
    .await;
    for user in 1..=3 {
        produce(
            &producer,
            &topic,
            &quiet.to_string(),
            &send(quiet, "click", user),
        )
        .await;
    }
    let an_hour_ago = (Utc::now() - chrono::Duration::hours(1)).timestamp();
    let earlier = json!({"user_id": 99, "event_id": quiet, "kind": "like", "ts": an_hour_ago});
    produce(&producer, &topic, "q", earlier.to_string().as_bytes()).await;
    // Poison: not JSON, a kind not taken from outside, an unknown event, a time far off.
    produce(&producer, &topic, "x", b"{not json").await;
    produce(&producer, &topic, "x", &send(popular, "register", 1)).await;
    produce(&producer, &topic, "x", &send(999_999, "view", 1)).await;
    let long_ago = json!({"user_id": 1, "event_id": quiet, "kind": "view", "ts": 1_000});
    produce(&producer, &topic, "x", long_ago.to_string().as_bytes()).await;

    counted(&app, &[popular, quiet]).await;
    // The records arrive in batches: both events trend before the last of them is counted.
    // The like of an hour ago is recorded but out of the 30-minute window.
    let all_counted = eventually(Duration::from_secs(15), || async {
        let body = trending(&app, "").await;
        body["items"][0]["score"] == 23.0 && body["items"][1]["counts"] == json!({"click": 3})
    })
    .await;
    assert!(all_counted, "{}", trending(&app, "").await);
    let reasons = dead_letters(&brokers, &format!("{topic}.dlq"), 4).await;
    assert!(reasons[0].starts_with("malformed JSON"), "{reasons:?}");
    assert!(reasons[1].contains("register"), "{reasons:?}");
    assert_eq!(reasons[2], "no such event");
    assert!(reasons[3].contains("ts 1000"), "{reasons:?}");
    let metrics = app.send("GET", "/metrics", None, None).await;
    let text = metrics.body.as_str().unwrap();
    assert_eq!(
        metric(text, "convene_bus_interactions_total{status=\"recorded\"}"),
        25
    );
    assert_eq!(
        metric(
            text,
            "convene_bus_interactions_total{status=\"dead_letter\"}"
        ),
        4
    );
    // What the recommendations learn from has them too, the earlier like at its own time.
    let history = app.node.app.store.user_interactions(99, 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].ts, an_hour_ago);
}

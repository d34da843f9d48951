//! The read caches, on a Redis of each test's own: search results and recommendations are
//! served from the cache until a change makes them stale, and a change is never hidden by one;
//! event details are shared between nodes, and a write on one node is read on the other at
//! once; the popular-events leaderboard is kept in a sorted set; with Redis gone, the caches
//! are per node and no request fails.

use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::TestCluster;
use crate::helpers::{Backend, Settings, TestApp, eventually, spawn_app_with};
use crate::limits::PrivateRedis;

/// `convene_cache_lookups_total` of one cache, backend and outcome, in a `/metrics` text.
fn lookups(metrics: &str, cache: &str, backend: &str, outcome: &str) -> u64 {
    let prefix = format!(
        "convene_cache_lookups_total{{backend=\"{backend}\",cache=\"{cache}\",outcome=\"{outcome}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

async fn count(app: &TestApp, cache: &str, backend: &str, outcome: &str) -> u64 {
    let metrics = app.send("GET", "/metrics", None, None).await;
    lookups(metrics.body.as_str().unwrap(), cache, backend, outcome)
}

/// The titles a search finds; none while the node's index is still being built (503), so a
/// check waiting for an event to be indexed keeps waiting.
async fn titles(app: &TestApp, query: &str) -> Vec<String> {
    let r = app
        .send("GET", &format!("/api/v1/search/events?{query}"), None, None)
        .await;
    if r.status == 503 {
        return Vec::new();
    }
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"]["title"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_never_hide_a_change_and_outlive_redis() {
    let Some(mut redis) = PrivateRedis::start(None).await else {
        return;
    };
    let settings = Settings {
        env: vec![("CONVENE_REDIS_URL".to_owned(), redis.url())],
        ..Settings::default()
    };
    let app = spawn_app_with(Backend::Sqlite, settings).await.unwrap();
    let owner = app.sign_up("owner@example.com").await;
    let guest = app.sign_up("guest@example.com").await;
    let event = app.create_event(&owner, 10).await;

    // Search: the second identical search is a hit, whatever the order of its parameters.
    let indexed = eventually(Duration::from_secs(10), || async {
        titles(&app, "q=lyon&limit=5").await == ["Rust in Lyon"]
    })
    .await;
    assert!(indexed, "the event is indexed");
    let hits = count(&app, "search", "redis", "hit").await;
    assert_eq!(titles(&app, "limit=5&q=lyon").await, ["Rust in Lyon"]);
    assert_eq!(count(&app, "search", "redis", "hit").await, hits + 1);
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("convene:search:query:*:results")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "one entry for both spellings: {keys:?}");

    // A change reaches the answers as soon as the index has it, well before the entry's TTL.
    let renamed = app
        .send(
            "PATCH",
            &format!("/api/v1/events/{event}"),
            Some(&owner.token),
            Some(json!({"title": "Rust in Lyon, second edition"})),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    let seen = eventually(Duration::from_secs(10), || async {
        titles(&app, "q=lyon&limit=5").await == ["Rust in Lyon, second edition"]
    })
    .await;
    assert!(seen, "the cached results did not hide the change");

    // Recommendations: cached per user, stale as soon as the user does something.
    let recommend = || async {
        let r = app
            .send(
                "GET",
                "/api/v1/users/me/recommendations?limit=5",
                Some(&guest.token),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    };
    recommend().await;
    let hits = count(&app, "recommendations", "redis", "hit").await;
    recommend().await;
    assert_eq!(
        count(&app, "recommendations", "redis", "hit").await,
        hits + 1
    );
    let took = app
        .send(
            "POST",
            &format!("/api/v1/events/{event}/registrations"),
            Some(&guest.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(took.status, 201, "{}", took.body);
    let after = recommend().await;
    assert_eq!(
        count(&app, "recommendations", "redis", "hit").await,
        hits + 1,
        "a registration makes them stale at once"
    );
    let items: Vec<i64> = after["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["event"]["id"].as_i64())
        .collect();
    assert!(!items.contains(&event), "no event the user registered for");
    recommend().await;
    let recorded = app
        .send(
            "POST",
            "/api/v1/interactions",
            Some(&guest.token),
            Some(json!({"event_id": event, "kind": "like"})),
        )
        .await;
    assert_eq!(recorded.status, 204, "{}", recorded.body);
    let hits = count(&app, "recommendations", "redis", "hit").await;
    recommend().await;
    assert_eq!(
        count(&app, "recommendations", "redis", "hit").await,
        hits,
        "so does an interaction, once recorded"
    );

    // The leaderboard: the popularity window's events by interest, in a sorted set.
    let ranked = eventually(Duration::from_secs(20), || {
        let mut c = c.clone();
        async move {
            let board: Vec<(i64, f64)> = redis::cmd("ZREVRANGE")
                .arg("convene:leaderboard:events:popular")
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            board
                .first()
                .is_some_and(|(id, score)| *id == event && *score > 0.0)
        }
    })
    .await;
    assert!(ranked, "the event leads the leaderboard");

    // Every lookup so far was answered by Redis: its breaker never opened.
    let metrics = app.send("GET", "/metrics", None, None).await;
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains("convene_breaker_trips_total{dependency=\"redis\"} 0"),
        "{text}"
    );
    assert_eq!(lookups(text, "recommendations", "local", "miss"), 0);

    // Redis gone: the same answers, from this process's caches.
    redis.kill().await;
    for _ in 0..3 {
        assert_eq!(
            titles(&app, "q=lyon&limit=5").await,
            ["Rust in Lyon, second edition"]
        );
        recommend().await;
    }
    assert!(count(&app, "search", "local", "hit").await >= 1);
    assert!(count(&app, "recommendations", "local", "hit").await >= 1);
    let health = app.send("GET", "/health", None, None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["status"], "degraded");
    let metrics = app.send("GET", "/metrics", None, None).await;
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains("convene_breaker_open{dependency=\"redis\"} 1"),
        "{text}"
    );
}

async fn get(cluster: &TestCluster, node: usize, event: i64) -> (Value, String) {
    let r = cluster
        .client
        .get(format!(
            "{}/api/v1/events/{event}",
            cluster.nodes[node].http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    (r.json().await.unwrap(), etag)
}

async fn node_lookups(cluster: &TestCluster, node: usize, outcome: &str) -> u64 {
    let text = crate::helpers::metrics_text(&cluster.client, &cluster.nodes[node].http).await;
    lookups(&text, "event", "redis", outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_details_are_shared_and_a_write_on_one_node_is_read_on_another_at_once() {
    let Some(redis) = PrivateRedis::start(None).await else {
        return;
    };
    let env = vec![("CONVENE_REDIS_URL".to_owned(), redis.url())];
    let Some(cluster) = TestCluster::start_with(2, env).await else {
        return;
    };
    let event = cluster.create_event(5).await;
    let owner = cluster.owner_of(&format!("event/{event}")).await;
    let other = 1 - owner;

    // The node that does not own it reads through the cache (once the indexers have seen the
    // creation, which bumps the key again); the owner asks its actor.
    let (first, etag) = get(&cluster, other, event).await;
    let cached = eventually(Duration::from_secs(5), || async {
        let hits = node_lookups(&cluster, other, "hit").await;
        let (again, same) = get(&cluster, other, event).await;
        assert_eq!((&again, &same), (&first, &etag));
        node_lookups(&cluster, other, "hit").await > hits
    })
    .await;
    assert!(cached, "a read on the other node is served from the cache");
    assert_eq!(node_lookups(&cluster, owner, "hit").await, 0);

    // A change made through either node is read on the other at once.
    for (writer, title) in [
        (owner, "Rust in Lyon, moved"),
        (other, "Rust in Lyon, again"),
    ] {
        let r = cluster
            .client
            .patch(format!(
                "{}/api/v1/events/{event}",
                cluster.nodes[writer].http
            ))
            .bearer_auth(&cluster.admin)
            .json(&json!({"title": title}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let (now, tag) = get(&cluster, other, event).await;
        assert_eq!(now["title"], title);
        assert_ne!(tag, etag);
    }
    let users = cluster.sign_up_many(2).await;
    for (i, (_, token)) in users.iter().enumerate() {
        let r = cluster
            .client
            .post(format!(
                "{}/api/v1/events/{event}/registrations",
                cluster.nodes[i % 2].http
            ))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let (now, _) = get(&cluster, other, event).await;
        assert_eq!(now["registered_count"], i + 1, "seats as taken");
    }
    // Once the indexers have seen those changes too, the cache fills again and serves the
    // newest state.
    let refilled = eventually(Duration::from_secs(5), || async {
        let hits = node_lookups(&cluster, other, "hit").await;
        let (now, _) = get(&cluster, other, event).await;
        assert_eq!(now["registered_count"], 2);
        node_lookups(&cluster, other, "hit").await > hits
    })
    .await;
    assert!(refilled, "the cache serves again after the changes");
}

//! Event search: ranking (title over description), English stemming, typo tolerance with exact
//! matches first, highlights, the geo radius against a haversine reference, facet counts against
//! a brute-force count, paging without duplicates or gaps, deleted and past events, seat
//! counts, bad parameters, a rebuild of a missing index, and concurrent writers on PostgreSQL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::{Backend, Settings, TestApp, TestUser, eventually, spawn_app, spawn_app_with};

fn event(title: &str, description: &str) -> Value {
    json!({
        "title": title,
        "description": description,
        "date": (chrono::Utc::now() + chrono::Duration::days(10)).to_rfc3339(),
        "location": "Lyon",
        "capacity": 10,
        "category": "tech",
        "tags": [],
    })
}

async fn create(app: &TestApp, owner: &TestUser, body: Value) -> i64 {
    let a = app
        .send("POST", "/api/v1/events", Some(&owner.token), Some(body))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["id"].as_i64().unwrap()
}

async fn search(app: &TestApp, query: &str) -> Value {
    let a = app
        .send("GET", &format!("/api/v1/search/events?{query}"), None, None)
        .await;
    assert_eq!(a.status, 200, "{query}: {}", a.body);
    a.body
}

fn ids(body: &Value) -> Vec<i64> {
    body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"]["id"].as_i64().unwrap())
        .collect()
}

/// Waits until the index holds `n` events (the indexer follows the outbox).
async fn indexed(app: &TestApp, n: u64) {
    let ok = eventually(Duration::from_secs(10), || async {
        let a = app
            .send(
                "GET",
                "/api/v1/search/events?include_past=true&limit=1",
                None,
                None,
            )
            .await;
        a.status == 200 && a.body["total"].as_u64() == Some(n)
    })
    .await;
    assert!(ok, "the index does not hold {n} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titles_outrank_descriptions_words_are_stemmed_and_typos_forgiven() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.sign_up("owner@example.com").await;
    let in_desc = create(
        &app,
        &owner,
        event("Systems evening", "A talk about Rust and memory"),
    )
    .await;
    let in_title = create(&app, &owner, event("Rust workshop", "Bring a laptop")).await;
    let runs = create(
        &app,
        &owner,
        event("Morning club", "We run along the river"),
    )
    .await;
    let exact = create(&app, &owner, event("Pottery classes", "Clay and wheels")).await;
    let typo = create(&app, &owner, event("Glass glasses", "Blowing glasses")).await;
    indexed(&app, 5).await;

    let rust = search(&app, "q=rust").await;
    assert_eq!(ids(&rust), vec![in_title, in_desc], "{rust}");
    let title = rust["hits"][0]["highlights"]["title"].as_str().unwrap();
    assert_eq!(title, "<em>Rust</em> workshop");
    assert!(
        rust["hits"][0]["score"].as_f64().unwrap() > rust["hits"][1]["score"].as_f64().unwrap()
    );

    let running = search(&app, "q=running").await;
    assert_eq!(ids(&running), vec![runs], "stemming: {running}");

    let classes = search(&app, "q=classes").await;
    assert_eq!(
        ids(&classes),
        vec![exact, typo],
        "exact first, one typo next: {classes}"
    );
    let worksop = search(&app, "q=worksop").await;
    assert_eq!(ids(&worksop), vec![in_title], "a missing letter: {worksop}");
    let short = search(&app, "q=rast").await;
    assert!(
        ids(&short).is_empty(),
        "four letters forgive no typo: {short}"
    );
    let none = search(&app, "q=zebra").await;
    assert_eq!(none["total"], 0);
}

fn haversine(a: (f64, f64), b: (f64, f64)) -> f64 {
    let r = 6371.0088_f64;
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let dp = p2 - p1;
    let dl = (b.1 - a.1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * r * h.sqrt().asin()
}

/// What the test created, to count by brute force.
struct Made {
    id: i64,
    category: &'static str,
    tags: Vec<String>,
    price: i64,
    at: (f64, f64),
}

fn bucket(cents: i64) -> &'static str {
    match cents {
        0 => "free",
        1..2000 => "0-20",
        2000..5000 => "20-50",
        5000..10000 => "50-100",
        _ => "100+",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_radius_and_facets_match_brute_force() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.sign_up("owner@example.com").await;
    let mut rng = StdRng::seed_from_u64(7);
    let categories = ["tech", "business", "arts", "sports"];
    let tag_pool = [
        "rust",
        "go",
        "music",
        "food",
        "outdoor",
        "kids",
        "night",
        "free-drinks",
    ];
    let centre = (48.8566, 2.3522);
    let mut made = Vec::new();
    // A grid of points around Paris, 0 to ~150 km away.
    for i in 0..8 {
        for j in 0..8 {
            let at = (
                centre.0 - 0.7 + 0.2 * i as f64,
                centre.1 - 1.0 + 0.28 * j as f64,
            );
            let category = categories[rng.random_range(0..4)];
            let tags: Vec<String> = tag_pool
                .iter()
                .filter(|_| rng.random_bool(0.3))
                .map(|t| t.to_string())
                .collect();
            let price = [0, 500, 1999, 2000, 4500, 7500, 12000][rng.random_range(0..7)];
            let mut body = event("Gathering", "Something to do");
            body["category"] = json!(category);
            body["tags"] = json!(tags);
            body["latitude"] = json!(at.0);
            body["longitude"] = json!(at.1);
            if price > 0 {
                body["price"] = json!(price as f64 / 100.0);
            }
            let id = create(&app, &owner, body).await;
            made.push(Made {
                id,
                category,
                tags,
                price,
                at,
            });
        }
    }
    indexed(&app, made.len() as u64).await;

    for radius in [5.0, 30.0, 60.0, 100.0] {
        let body = search(
            &app,
            &format!(
                "lat={}&lon={}&radius_km={radius}&sort=distance&limit=100",
                centre.0, centre.1
            ),
        )
        .await;
        let mut want: Vec<(f64, i64)> = made
            .iter()
            .map(|m| (haversine(centre, m.at), m.id))
            .filter(|(d, _)| *d <= radius)
            .collect();
        want.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(
            ids(&body),
            want.iter().map(|w| w.1).collect::<Vec<_>>(),
            "radius {radius}"
        );
        for (hit, (d, _)) in body["hits"].as_array().unwrap().iter().zip(&want) {
            assert!((hit["distance_km"].as_f64().unwrap() - d).abs() < 1e-6);
        }
    }

    let filters = [
        (vec![], vec![], None),
        (vec!["tech", "arts"], vec![], None),
        (vec![], vec!["rust", "music"], None),
        (vec!["sports"], vec!["food"], Some((20.0, 100.0))),
        (vec![], vec![], Some((0.0, 0.0))),
    ];
    for (cats, tags, price) in filters {
        let mut q = format!("lat={}&lon={}&radius_km=100&limit=5", centre.0, centre.1);
        for c in &cats {
            q.push_str(&format!("&category={c}"));
        }
        if !tags.is_empty() {
            q.push_str(&format!("&tags={}", tags.join(",")));
        }
        if let Some((lo, hi)) = price {
            q.push_str(&format!("&price_min={lo}&price_max={hi}"));
        }
        let body = search(&app, &q).await;
        let near: Vec<&Made> = made
            .iter()
            .filter(|m| haversine(centre, m.at) <= 100.0)
            .collect();
        let cat_ok = |m: &Made| cats.is_empty() || cats.contains(&m.category);
        let tag_ok =
            |m: &Made| tags.is_empty() || m.tags.iter().any(|t| tags.contains(&t.as_str()));
        let price_ok = |m: &Made| {
            price.is_none_or(|(lo, hi)| {
                m.price >= (lo * 100.0) as i64 && m.price <= (hi * 100.0) as i64
            })
        };
        let total = near
            .iter()
            .filter(|m| cat_ok(m) && tag_ok(m) && price_ok(m))
            .count();
        assert_eq!(body["total"].as_u64().unwrap() as usize, total, "{q}");
        let mut by_cat: BTreeMap<String, u64> =
            categories.iter().map(|c| (c.to_string(), 0)).collect();
        let mut by_tag: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_price: HashMap<&str, u64> = HashMap::new();
        for m in &near {
            if tag_ok(m) && price_ok(m) {
                *by_cat.entry(m.category.to_owned()).or_default() += 1;
            }
            if cat_ok(m) && price_ok(m) {
                for t in &m.tags {
                    *by_tag.entry(t.clone()).or_default() += 1;
                }
            }
            if cat_ok(m) && tag_ok(m) {
                *by_price.entry(bucket(m.price)).or_default() += 1;
            }
        }
        assert_eq!(body["facets"]["category"], json!(by_cat), "{q}");
        assert_eq!(body["facets"]["tags"], json!(by_tag), "{q}");
        for b in ["free", "0-20", "20-50", "50-100", "100+"] {
            assert_eq!(
                body["facets"]["price"][b].as_u64().unwrap(),
                by_price.get(b).copied().unwrap_or(0),
                "{q}: bucket {b}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_by_offset_and_by_cursor_have_no_duplicates_or_gaps() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.sign_up("owner@example.com").await;
    let mut all = HashSet::new();
    for i in 0..37 {
        let mut body = event(&format!("Meetup number {i}"), "Talks about meetups");
        // Some share a date: the id breaks the tie.
        body["date"] = json!((chrono::Utc::now() + chrono::Duration::days(1 + i % 5)).to_rfc3339());
        body["latitude"] = json!(45.0 + f64::from(i as i32) * 0.01);
        body["longitude"] = json!(4.8);
        all.insert(create(&app, &owner, body).await);
    }
    indexed(&app, 37).await;
    for base in ["q=meetup", "sort=date", "sort=distance&lat=45&lon=4.8", ""] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("{base}&limit=10&cursor={c}"),
                None => format!("{base}&limit=10"),
            };
            let body = search(&app, &q).await;
            assert_eq!(body["total"], 37);
            seen.extend(ids(&body));
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let mut by_offset = Vec::new();
        for offset in (0..40).step_by(10) {
            by_offset.extend(ids(&search(
                &app,
                &format!("{base}&limit=10&offset={offset}"),
            )
            .await));
        }
        assert_eq!(seen.len(), 37, "{base}: {seen:?}");
        assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), all, "{base}");
        assert_eq!(seen, by_offset, "{base}: cursor and offset agree");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_events_disappear_past_ones_are_hidden_and_seats_follow() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.sign_up("owner@example.com").await;
    let guest = app.sign_up("guest@example.com").await;
    let kept = create(&app, &owner, event("Chess night", "Bring a board")).await;
    let gone = create(&app, &owner, event("Chess morning", "Bring a clock")).await;
    let mut soon = event("Chess lunch", "Very soon");
    soon["date"] = json!((chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339());
    let soon = create(&app, &owner, soon).await;
    indexed(&app, 3).await;
    let a = app
        .send(
            "DELETE",
            &format!("/api/v1/events/{gone}"),
            Some(&owner.token),
            None,
        )
        .await;
    assert!(a.status < 300, "{}", a.body);
    let a = app
        .send(
            "POST",
            &format!("/api/v1/events/{kept}/registrations"),
            Some(&guest.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let ok = eventually(Duration::from_secs(10), || async {
        let body = search(&app, "q=chess&include_past=true").await;
        let hits = ids(&body);
        let seats = body["hits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["event"]["id"] == kept)
            .map(|h| h["event"]["seats_left"].clone());
        hits.contains(&kept) && !hits.contains(&gone) && seats == Some(json!(9))
    })
    .await;
    assert!(ok, "{}", search(&app, "q=chess&include_past=true").await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        ids(&search(&app, "q=chess").await),
        vec![kept],
        "past events are hidden"
    );
    let all = ids(&search(&app, "q=chess&include_past=true&sort=date").await);
    assert_eq!(all, vec![soon, kept]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_named_in_a_422() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    for (query, field) in [
        ("lat=91&lon=0", "lat"),
        ("lat=10", "lat"),
        ("radius_km=5", "radius_km"),
        ("lat=1&lon=1&radius_km=-3", "radius_km"),
        ("category=music", "category"),
        ("from=yesterday", "from"),
        ("from=2030-01-02&to=2030-01-01", "to"),
        ("price_min=30&price_max=10", "price_max"),
        ("price_min=abc", "price_min"),
        ("sort=distance", "sort"),
        ("sort=popular", "sort"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("offset=20000", "offset"),
        ("cursor=nope", "cursor"),
        ("include_past=maybe", "include_past"),
        ("colour=red", "colour"),
        ("q=a&q=b", "q"),
    ] {
        let a = app
            .send("GET", &format!("/api/v1/search/events?{query}"), None, None)
            .await;
        assert_eq!(a.status, 422, "{query}: {}", a.body);
        assert!(
            a.body["details"].get(field).is_some(),
            "{query}: {}",
            a.body
        );
    }
    let doc = app.send("GET", "/openapi.json", None, None).await;
    assert!(doc.body["paths"].get("/api/v1/search/events").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_index_is_rebuilt_at_start_and_by_reindex() {
    let app = spawn_app_with(Backend::Sqlite, Settings::default())
        .await
        .unwrap();
    let owner = app.sign_up("owner@example.com").await;
    for i in 0..5 {
        create(&app, &owner, event(&format!("Film club {i}"), "Cinema")).await;
    }
    indexed(&app, 5).await;
    let data = app.dir.0.clone();
    let database = app.database.clone();
    app.node.shutdown().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convene"))
        .args(["reindex", "--data-dir"])
        .arg(&data)
        .env("CONVENE_DATABASE_URL", &database)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("5 events indexed"), "{printed}");
    // An index of an older schema version is rebuilt when the node starts.
    std::fs::write(
        data.join("index/convene-index.json"),
        r#"{"schema_version":0}"#,
    )
    .unwrap();
    let config = convene::config::Config::load(
        None,
        [
            ("CONVENE_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("CONVENE_DATABASE_URL".to_owned(), database),
        ],
        &convene::config::Overrides {
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let node = convene::node::Node::start(config).await.unwrap();
    let url = format!("{}/api/v1/search/events?q=film", node.url());
    let ok = eventually(Duration::from_secs(10), || async {
        let r = reqwest::get(&url).await.unwrap();
        r.status() == 200 && r.json::<Value>().await.unwrap()["total"] == 5
    })
    .await;
    assert!(ok, "the node rebuilt its index");
    node.shutdown().await;
}

/// Writers on PostgreSQL commit out of id order; none of their events is left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_leave_an_event_unindexed() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let owner = app.sign_up("owner@example.com").await;
    let app = std::sync::Arc::new(app);
    // A transaction holding an outbox row open while the writers commit theirs.
    let mut db = sqlx::PgConnection::connect(&app.database).await.unwrap();
    let mut open = db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (message_id, topic, entity_key, payload, occurred_at) \
         VALUES ($1, 'users.updated', 'user/0', '{\"user_id\":0,\"role\":\"user\"}', NOW())",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(&mut *open)
    .await
    .unwrap();
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let (app, owner) = (app.clone(), owner.clone());
            tokio::spawn(async move {
                let mut made = Vec::new();
                for i in 0..15 {
                    made.push(
                        create(
                            &app,
                            &owner,
                            event(&format!("Writer {w} event {i}"), "Concurrent"),
                        )
                        .await,
                    );
                }
                made
            })
        })
        .collect();
    let mut made = HashSet::new();
    for w in writers {
        made.extend(w.await.unwrap());
    }
    open.commit().await.unwrap();
    indexed(&app, 90).await;
    let mut found = HashSet::new();
    for offset in [0, 100] {
        found.extend(ids(&search(
            &app,
            &format!("q=concurrent&limit=100&offset={offset}"),
        )
        .await));
    }
    assert_eq!(found, made);
}

//! Publishing, reading, listing, changing and deleting events, and the answers to bad input.

use serde_json::json;

use crate::both_stores;
use crate::helpers::event_body;

both_stores! {
    async fn create_read_update_delete(app) {
        let owner = app.sign_up("owner@example.com").await;
        let stranger = app.sign_up("stranger@example.com").await;

        let created = app.send("POST", "/api/v1/events", Some(&owner.token), Some(event_body(50))).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.body["id"].as_i64().unwrap();
        assert_eq!(created.body["created_by"], owner.id);
        assert_eq!(created.body["registered_count"], 0);
        assert_eq!(created.body["seats_left"], 50);
        assert_eq!(created.body["version"], 1);
        assert_eq!(created.body["price"], 10.5);
        assert_eq!(created.headers["location"], format!("/api/v1/events/{id}").as_str());

        // Reading needs no token.
        let read = app.send("GET", &format!("/api/v1/events/{id}"), None, None).await;
        assert_eq!(read.status, 200);
        assert_eq!(read.body["title"], "Rust in Lyon");

        // Only the creator (or events:update) may change it.
        let path = format!("/api/v1/events/{id}");
        let denied = app.send("PATCH", &path, Some(&stranger.token), Some(json!({"title": "Mine now"}))).await;
        assert_eq!(denied.status, 403);

        let stale = app.send_with("PATCH", &path, Some(&owner.token), Some(json!({"title": "Renamed"})), &[("If-Match", "\"7\"")]).await;
        assert_eq!(stale.status, 412);
        assert_eq!(stale.body["details"]["current_version"], 1);

        let renamed = app.send_with("PATCH", &path, Some(&owner.token), Some(json!({"title": "Renamed", "capacity": 60})), &[("If-Match", "1")]).await;
        assert_eq!(renamed.status, 200, "{}", renamed.body);
        assert_eq!(renamed.body["title"], "Renamed");
        assert_eq!(renamed.body["version"], 2);
        assert_eq!(renamed.body["seats_left"], 60);

        // Capacity may not drop below the seats taken.
        let attendee = app.sign_up("attendee@example.com").await;
        let reg = app.send("POST", &format!("{path}/registrations"), Some(&attendee.token), None).await;
        assert_eq!(reg.status, 201);
        let shrink = app.send("PATCH", &path, Some(&owner.token), Some(json!({"capacity": 0}))).await;
        assert_eq!(shrink.status, 422, "capacity 0 breaks the 1..100000 rule");
        let version = app.send("GET", &path, None, None).await.body["version"].as_i64().unwrap();
        assert_eq!(version, 3, "a registration bumps the version");

        let bad_patch = app.send("PATCH", &path, Some(&owner.token), Some(json!({"date": "2001-01-01T00:00:00Z"}))).await;
        assert_eq!(bad_patch.status, 422);

        assert_eq!(app.send("DELETE", &path, Some(&stranger.token), None).await.status, 403);
        assert_eq!(app.send("DELETE", &path, None, None).await.status, 401);
        assert_eq!(app.send("DELETE", &path, Some(&owner.token), None).await.status, 204);
        assert_eq!(app.send("GET", &path, None, None).await.status, 404);
        assert_eq!(app.send("POST", &format!("{path}/registrations"), Some(&stranger.token), None).await.status, 404);
        assert_eq!(app.send("DELETE", &path, Some(&owner.token), None).await.status, 404);
    }

    async fn reads_never_miss_an_acknowledged_write(app) {
        // Reads of a running event are served from what its actor published; writes must
        // withdraw it before they are acknowledged, whatever reads run meanwhile.
        let owner = app.sign_up("fresh-owner@example.com").await;
        let id = app.create_event(&owner, 100).await;
        let path = format!("/api/v1/events/{id}");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (client, url, stop) = (app.client.clone(), app.url(&path), stop.clone());
                tokio::spawn(async move {
                    let (mut reads, mut last) = (0, 0);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let body: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
                        let version = body["version"].as_i64().unwrap();
                        assert!(version >= last, "a reader saw version {version} after {last}");
                        last = version;
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let attendees = app.sign_up_many("fresh", 10).await;
        for (i, attendee) in attendees.iter().enumerate() {
            let title = format!("Round {i}");
            let changed = app.send("PATCH", &path, Some(&owner.token), Some(json!({"title": title}))).await;
            assert_eq!(changed.status, 200, "{}", changed.body);
            let read = app.send("GET", &path, None, None).await;
            assert_eq!(read.body["title"], title.as_str());
            assert!(read.body["version"].as_i64() >= changed.body["version"].as_i64());
            let reg = app.send("POST", &format!("{path}/registrations"), Some(&attendee.token), None).await;
            assert_eq!(reg.status, 201, "{}", reg.body);
            let read = app.send("GET", &path, None, None).await;
            assert_eq!(read.body["registered_count"], i as i64 + 1);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            assert!(reader.await.unwrap() > 0, "every reader read while the event changed");
        }
        assert_eq!(app.send("DELETE", &path, Some(&owner.token), None).await.status, 204);
        assert_eq!(app.send("GET", &path, None, None).await.status, 404);
    }

    async fn capacity_cannot_drop_below_registered(app) {
        let owner = app.sign_up("cap-owner@example.com").await;
        let id = app.create_event(&owner, 3).await;
        for u in app.sign_up_many("cap", 2).await {
            assert_eq!(app.send("POST", &format!("/api/v1/events/{id}/registrations"), Some(&u.token), None).await.status, 201);
        }
        let shrink = app.send("PATCH", &format!("/api/v1/events/{id}"), Some(&owner.token), Some(json!({"capacity": 1}))).await;
        assert_eq!(shrink.status, 409);
        assert_eq!(shrink.body["error"], "capacity_below_registered");
        let ok = app.send("PATCH", &format!("/api/v1/events/{id}"), Some(&owner.token), Some(json!({"capacity": 2}))).await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body["seats_left"], 0);
    }

    async fn listing_filters_and_pages(app) {
        let a = app.sign_up("lister-a@example.com").await;
        let b = app.sign_up("lister-b@example.com").await;
        for (i, (user, category)) in [(&a, "tech"), (&a, "arts"), (&b, "tech"), (&b, "sports"), (&a, "tech")].into_iter().enumerate() {
            let mut body = event_body(10);
            body["category"] = json!(category);
            body["date"] = json!((chrono::Utc::now() + chrono::Duration::days(10 + i as i64)).to_rfc3339());
            assert_eq!(app.send("POST", "/api/v1/events", Some(&user.token), Some(body)).await.status, 201);
        }
        let tech = app.send("GET", "/api/v1/events?category=tech", None, None).await;
        assert_eq!(tech.body["events"].as_array().unwrap().len(), 3);
        let by_b = app.send("GET", &format!("/api/v1/events?created_by={}", b.id), None, None).await;
        assert_eq!(by_b.body["events"].as_array().unwrap().len(), 2);
        let to = (chrono::Utc::now() + chrono::Duration::days(11) + chrono::Duration::hours(1)).to_rfc3339();
        let early = app.client.get(app.url("/api/v1/events")).query(&[("to", to.as_str())]).send().await.unwrap();
        let early: serde_json::Value = early.json().await.unwrap();
        assert_eq!(early["events"].as_array().unwrap().len(), 2);

        // Pages of two walk through all five in date order, each once.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/v1/events?limit=2&cursor={c}"),
                None => "/api/v1/events?limit=2".to_owned(),
            };
            let page = app.send("GET", &path, None, None).await;
            assert_eq!(page.status, 200);
            for e in page.body["events"].as_array().unwrap() {
                seen.push(e["id"].as_i64().unwrap());
            }
            match page.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 5);
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "dates were given in id order");

        let bad = app.send("GET", "/api/v1/events?category=music&limit=0&from=yesterday", None, None).await;
        assert_eq!(bad.status, 422);
        let fields: Vec<_> = bad.body["details"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(fields, ["category", "from", "limit"]);
    }

    async fn bad_input_gets_clear_errors_and_changes_nothing(app) {
        let user = app.sign_up("fuzzy@example.com").await;
        let t = Some(user.token.as_str());

        let invalid = app.send("POST", "/api/v1/events", t, Some(json!({
            "title": "ab", "description": "x".repeat(5001), "date": "2001-01-01T00:00:00Z",
            "location": "y".repeat(501), "capacity": 100001, "category": "music", "latitude": 91
        }))).await;
        assert_eq!(invalid.status, 422);
        let fields: Vec<_> = invalid.body["details"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(fields, ["capacity", "category", "date", "description", "latitude", "location", "title"]);

        let missing = app.send("POST", "/api/v1/events", t, Some(json!({}))).await;
        assert_eq!(missing.status, 422);
        assert_eq!(missing.body["details"]["title"], json!(["is required"]));

        let nul = app.send("POST", "/api/v1/events", t, Some(json!({
            "title": "nul\u{0}byte", "description": "", "date": (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339(),
            "location": "x", "capacity": 5, "category": "tech"
        }))).await;
        assert_eq!(nul.status, 422);

        for raw in ["{", "[]", "null", "\"text\"", "{\"capacity\": \"many\"}"] {
            let res = app.client.post(app.url("/api/v1/events")).bearer_auth(&user.token)
                .header("content-type", "application/json").body(raw).send().await.unwrap();
            assert!(matches!(res.status().as_u16(), 400 | 422), "{raw}: {}", res.status());
            let body: serde_json::Value = res.json().await.unwrap();
            assert!(body["error"].is_string(), "{raw}: {body}");
        }

        let huge = app.client.post(app.url("/api/v1/events")).bearer_auth(&user.token)
            .body(vec![b' '; 70_000]).send().await.unwrap();
        assert_eq!(huge.status(), 413);

        for path in ["/api/v1/events/abc", "/api/v1/events/-1", "/api/v1/events/99999999999999999999", "/api/v1/nothing", "/api/v1/events/0"] {
            let a = app.send("GET", path, None, None).await;
            assert_eq!(a.status, 404, "{path}");
            assert_eq!(a.body["error"], "not_found");
        }
        assert_eq!(app.send("GET", "/api/v1/events/424242", None, None).await.status, 404);
        assert_eq!(app.send("POST", "/api/v1/events", None, Some(event_body(3))).await.status, 401);
        assert_eq!(app.send("PUT", "/api/v1/events", t, Some(event_body(3))).await.status, 405);

        let listed = app.send("GET", "/api/v1/events", None, None).await;
        assert_eq!(listed.body["events"], json!([]), "nothing was created by the refused requests");
    }
}

//! Registration under contention, waitlists, cancellation and idempotency.

use std::collections::HashMap;

use serde_json::json;

use crate::both_stores;
use crate::helpers::TestApp;

async fn register(
    app: &TestApp,
    event: i64,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let a = app
        .send(
            "POST",
            &format!("/api/v1/events/{event}/registrations"),
            Some(token),
            body,
        )
        .await;
    (a.status, a.body)
}

async fn contended(app: TestApp, waitlist: bool) {
    let owner = app.sign_up("host@example.com").await;
    let event = app.create_event(&owner, 100).await;
    let users = app.sign_up_many("crowd", 500).await;
    let body = waitlist.then(|| json!({"waitlist": true}));
    let answers = futures::future::join_all(
        users
            .iter()
            .map(|u| register(&app, event, &u.token, body.clone())),
    )
    .await;
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for (status, body) in &answers {
        *by_status.entry(*status).or_default() += 1;
        if *status == 409 {
            assert_eq!(body["error"], "event_full");
        }
    }
    let refused = if waitlist { 202 } else { 409 };
    assert_eq!(
        by_status,
        HashMap::from([(201, 100), (refused, 400)]),
        "{by_status:?}"
    );
    assert_eq!(
        app.active_in_db(event).await,
        (100, 100),
        "the database agrees"
    );
    let e = app
        .send("GET", &format!("/api/v1/events/{event}"), None, None)
        .await;
    assert_eq!(
        (
            e.body["registered_count"].as_i64(),
            e.body["seats_left"].as_i64()
        ),
        (Some(100), Some(0))
    );

    // Every 201 a client received is a committed row.
    let listed = app
        .send(
            "GET",
            &format!("/api/v1/events/{event}/registrations"),
            Some(&owner.token),
            None,
        )
        .await;
    let active: Vec<i64> = listed.body["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "active")
        .map(|r| r["user_id"].as_i64().unwrap())
        .collect();
    let mut winners: Vec<i64> = answers
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, b)| b["registration"]["user_id"].as_i64().unwrap())
        .collect();
    let mut active_sorted = active.clone();
    active_sorted.sort();
    winners.sort();
    assert_eq!(active_sorted, winners);
}

both_stores! {
    async fn five_hundred_users_race_for_one_hundred_seats(app) {
        contended(app, false).await;
    }

    async fn the_crowd_beyond_capacity_is_waitlisted(app) {
        contended(app, true).await;
    }

    async fn cancel_promotes_the_oldest_waitlisted_user(app) {
        let owner = app.sign_up("org@example.com").await;
        let event = app.create_event(&owner, 1).await;
        let [a, b, c]: [_; 3] = app.sign_up_many("queue", 3).await.try_into().unwrap();

        assert_eq!(register(&app, event, &a.token, None).await.0, 201);
        let (full, body) = register(&app, event, &b.token, None).await;
        assert_eq!((full, body["error"].as_str()), (409, Some("event_full")));
        let (s, body) = register(&app, event, &b.token, Some(json!({"waitlist": true}))).await;
        assert_eq!((s, body["registration"]["status"].as_str()), (202, Some("waitlisted")));
        assert_eq!(register(&app, event, &c.token, Some(json!({"waitlist": true}))).await.0, 202);
        // Asking again answers with the existing place.
        let (s, body) = register(&app, event, &b.token, Some(json!({"waitlist": true}))).await;
        assert_eq!((s, body["registration"]["status"].as_str()), (200, Some("waitlisted")));

        let me = format!("/api/v1/events/{event}/registrations/me");
        assert_eq!(app.send("DELETE", &me, Some(&a.token), None).await.status, 204);
        assert_eq!(app.send("DELETE", &me, Some(&a.token), None).await.status, 404);
        let mine = app.send("GET", "/api/v1/users/me/registrations", Some(&b.token), None).await;
        assert_eq!(mine.body["registrations"][0]["status"], "active", "b waited longest");
        assert_eq!(app.active_in_db(event).await, (1, 1));

        // a comes back: the seat is b's now, so a waits behind c.
        let (s, _) = register(&app, event, &a.token, Some(json!({"waitlist": true}))).await;
        assert_eq!(s, 202);
        assert_eq!(app.send("DELETE", &me, Some(&b.token), None).await.status, 204);
        let listed = app.send("GET", &format!("/api/v1/events/{event}/registrations"), Some(&owner.token), None).await;
        let order: Vec<(i64, String)> = listed.body["registrations"].as_array().unwrap().iter()
            .map(|r| (r["user_id"].as_i64().unwrap(), r["status"].as_str().unwrap().to_owned())).collect();
        assert_eq!(order, vec![(c.id, "active".into()), (a.id, "waitlisted".into())]);
        assert_eq!(app.active_in_db(event).await, (1, 1));

        // Only the creator or an admin lists registrations.
        assert_eq!(app.send("GET", &format!("/api/v1/events/{event}/registrations"), Some(&c.token), None).await.status, 403);
    }

    async fn a_repeat_with_the_same_idempotency_key_gets_the_first_answer(app) {
        let owner = app.sign_up("idem-owner@example.com").await;
        let event = app.create_event(&owner, 1).await;
        let [a, b]: [_; 2] = app.sign_up_many("idem", 2).await.try_into().unwrap();
        let path = format!("/api/v1/events/{event}/registrations");
        let key = [("Idempotency-Key", "order-77")];

        let first = app.send_with("POST", &path, Some(&a.token), None, &key).await;
        assert_eq!(first.status, 201);
        assert!(first.body["registration"]["id"].as_i64().unwrap() > 0);
        assert_eq!(app.send("DELETE", &format!("{path}/me"), Some(&a.token), None).await.status, 204);
        assert_eq!(app.send("POST", &path, Some(&b.token), None).await.status, 201);

        // The event is full now, yet the retry answers as the first request did.
        let retry = app.send_with("POST", &path, Some(&a.token), None, &key).await;
        assert_eq!(retry.status, 201);
        assert_eq!(retry.body, first.body);
        // Without the key the state speaks.
        assert_eq!(app.send("POST", &path, Some(&a.token), None).await.status, 409);
        // Concurrent repeats of a new key on a full event all get the same answer.
        let answers = futures::future::join_all((0..10).map(|_| {
            app.send_with("POST", &path, Some(&a.token), None, &[("Idempotency-Key", "k2")])
        })).await;
        assert!(answers.iter().all(|x| x.status == 409), "{:?}", answers.iter().map(|x| x.status).collect::<Vec<_>>());
        assert_eq!(app.active_in_db(event).await, (1, 1));

        let bad = app.send_with("POST", &path, Some(&a.token), None, &[("Idempotency-Key", "")]).await;
        assert_eq!(bad.status, 400);
    }

    async fn kept_answers_outlive_the_actor_and_name_their_rows(app) {
        let admin = app.admin("kept-admin@example.com").await;
        let owner = app.sign_up("kept-owner@example.com").await;
        let event = app.create_event(&owner, 3).await;
        let users = app.sign_up_many("kept", 5).await;
        let path = format!("/api/v1/events/{event}/registrations");
        let burst = || futures::future::join_all(users.iter().map(|u| {
            app.send_with("POST", &path, Some(&u.token), None, &[("Idempotency-Key", "seat")])
        }));
        // One burst: its answers are kept by the commits that take the seats.
        let first = burst().await;
        let mut statuses: Vec<u16> = first.iter().map(|a| a.status).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 201, 201, 409, 409]);
        for a in first.iter().filter(|a| a.status == 201) {
            assert!(a.body["registration"]["id"].as_i64().unwrap() > 0, "{}", a.body);
        }

        // The actor goes; the next one knows the answers only from the store.
        let key = format!("event/{event}");
        let gone = app.send("POST", "/api/v1/admin/entities/passivate", Some(&admin.token), Some(json!({"key": key}))).await;
        assert_eq!(gone.status, 200, "{}", gone.body);
        let passivated = crate::helpers::eventually(std::time::Duration::from_secs(5), || async {
            app.send("GET", &format!("/api/v1/admin/entities?key={key}"), Some(&admin.token), None).await.body["active"] == json!([])
        }).await;
        assert!(passivated, "the event actor stopped");

        let again = burst().await;
        for (a, b) in first.iter().zip(&again) {
            assert_eq!((a.status, &a.body), (b.status, &b.body), "a retry answers as the first request did");
        }
        assert_eq!(app.active_in_db(event).await, (3, 3));
    }

    async fn past_events_take_no_registration(app) {
        let owner = app.sign_up("past-owner@example.com").await;
        let event = app.create_event(&owner, 5).await;
        // The rules refuse a past date through the API, so age the event in the database.
        let past = chrono::Utc::now() - chrono::Duration::days(1);
        if app.database.starts_with("postgres") {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&app.database).await.unwrap();
            sqlx::query("UPDATE events SET date = $1 WHERE id = $2").bind(past).bind(event).execute(&mut c).await.unwrap();
        } else {
            let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&app.database).await.unwrap();
            sqlx::query("UPDATE events SET date = $1 WHERE id = $2").bind(past).bind(event).execute(&mut c).await.unwrap();
        }
        // The actor is not active yet (creation does not start it), so it loads the aged row.
        let (s, body) = register(&app, event, &owner.token, None).await;
        assert_eq!((s, body["error"].as_str()), (409, Some("event_past")));
    }
}

/// What a node answers to each of a set of seat requests, good and bad: its status, and the
/// error code or the registration's status.
async fn seat_answers(app: &TestApp) -> Vec<(&'static str, u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let owner = app.sign_up("host@example.com").await;
    let (first, second) = (
        app.sign_up("first@example.com").await,
        app.sign_up("second@example.com").await,
    );
    let event = app.create_event(&owner, 1).await;
    let path = format!("/api/v1/events/{event}/registrations");
    let post = |path: &str, token: Option<&str>| {
        let req = app.client.post(app.url(path));
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    };
    let requests = [
        ("no token", post(&path, None).json(&json!({}))),
        ("bad token", post(&path, Some("nope")).json(&json!({}))),
        ("malformed", post(&path, Some(&first.token)).body("{")),
        ("not an object", post(&path, Some(&first.token)).body("[]")),
        (
            "too large",
            post(&path, Some(&first.token)).body(vec![b' '; 70_000]),
        ),
        (
            "long key",
            post(&path, Some(&first.token)).header("idempotency-key", "k".repeat(300)),
        ),
        (
            "unreadable key",
            post(&path, Some(&first.token)).header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(b"k\xff").unwrap(),
            ),
        ),
        (
            "no such event",
            post("/api/v1/events/424242/registrations", Some(&first.token)),
        ),
        (
            "not an id",
            post("/api/v1/events/abc/registrations", Some(&first.token)),
        ),
        (
            "trailing slash",
            post(&format!("{path}/"), Some(&first.token)),
        ),
        ("repeated", post(&path, Some(&first.token)).json(&json!({}))),
        ("again", post(&path, Some(&first.token))),
        ("full", post(&path, Some(&second.token))),
        (
            "waitlisted",
            post(&path, Some(&second.token)).json(&json!({"waitlist": true})),
        ),
    ];
    let mut answers = Vec::new();
    for (name, req) in requests {
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        let what = if body["error"].is_string() {
            body["error"].clone()
        } else {
            body["registration"]["status"].clone()
        };
        answers.push((name, status, what));
    }
    // A body past the limit without an announced length.
    let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        second.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..7 {
        stream.write_all(b"2710\r\n").await.unwrap();
        stream.write_all(&[b' '; 10_000]).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    let status = reply
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    let error = reply
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .map(|b| b["error"].clone())
        .unwrap_or_default();
    answers.push(("chunked too large", status, error));
    answers
}

/// A node without CORS takes seat requests ahead of its route tree; one with CORS origins sends
/// them through the tree. Both answer every request, good or bad, alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seat_requests_answer_alike_ahead_of_the_route_tree_and_through_it() {
    use crate::helpers::{Backend, Settings, spawn_app, spawn_app_with};
    let ahead = spawn_app(Backend::Sqlite).await.unwrap();
    let through = spawn_app_with(
        Backend::Sqlite,
        Settings {
            env: vec![(
                "CONVENE_CORS_ORIGINS".into(),
                "https://app.example.com".into(),
            )],
            ..Settings::default()
        },
    )
    .await
    .unwrap();
    let answers = seat_answers(&ahead).await;
    assert_eq!(answers, seat_answers(&through).await);
    // An unreadable header is the tree's to answer (the hot path leaves it there), as a bad
    // request, not as a method the other routes of the path do not take.
    let statuses: Vec<(&str, u16)> = answers.iter().map(|(n, s, _)| (*n, *s)).collect();
    assert_eq!(
        statuses,
        [
            ("no token", 401),
            ("bad token", 401),
            ("malformed", 400),
            ("not an object", 400),
            ("too large", 413),
            ("long key", 400),
            ("unreadable key", 400),
            ("no such event", 404),
            ("not an id", 404),
            ("trailing slash", 201),
            ("repeated", 200),
            ("again", 200),
            ("full", 409),
            ("waitlisted", 202),
            ("chunked too large", 413),
        ]
    );
}

//! Curation end to end: an event's suggested category and quality shown when it is read, a
//! category that does not fit the text, a near-duplicate and spam flagged, and the admins' list
//! of flagged events, the lowest quality first.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, eventually};

async fn event(
    app: &TestApp,
    owner: &TestUser,
    title: &str,
    description: &str,
    category: &str,
) -> i64 {
    let a = app
        .send(
            "POST",
            "/api/v1/events",
            Some(&owner.token),
            Some(json!({
                "title": title,
                "description": description,
                "date": (chrono::Utc::now() + chrono::Duration::days(9)).to_rfc3339(),
                "location": "Berlin",
                "latitude": 52.52,
                "longitude": 13.405,
                "capacity": 20,
                "category": category,
                "tags": [category],
            })),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["id"].as_i64().unwrap()
}

async fn curated(app: &TestApp, id: i64) -> Value {
    let path = format!("/api/v1/events/{id}");
    let ok = eventually(Duration::from_secs(20), || async {
        let a = app.send("GET", &path, None, None).await;
        a.body.get("curation").is_some()
    })
    .await;
    let a = app.send("GET", &path, None, None).await;
    assert!(ok, "event {id} was not curated: {}", a.body);
    a.body["curation"].clone()
}

const LONG: &str = "with the people who build it, followed by questions, demonstrations and a \
                    long conversation over dinner";

crate::both_stores! {
    async fn events_get_a_category_suggestion_a_quality_score_and_flags(app) {
        let owner = app.sign_up("curated@example.com").await;
        for (title, category) in [
            ("Rust compiler programming evening", "tech"),
            ("Kubernetes cloud software workshop", "tech"),
            ("Jazz concert in the gallery", "arts"),
            ("Watercolour painting and theatre", "arts"),
            ("Marathon running and cycling training", "sports"),
            ("Football match and climbing session", "sports"),
            ("Startup founders pitch to investors", "business"),
            ("Marketing and sales for founders", "business"),
        ] {
            event(&app, &owner, title, &format!("{title} {LONG}"), category).await;
        }
        let good = event(&app, &owner, "Rust software night", &format!("Rust compiler and cloud software {LONG}"), "tech").await;
        let c = curated(&app, good).await;
        assert_eq!(c["suggested_category"], "tech", "{c}");
        assert!(c["confidence"].as_f64().unwrap() > 0.25, "{c}");
        assert_eq!(c["flags"], json!([]), "{c}");
        assert_eq!(c["quality_score"], 1.0);

        let mismatch = event(
            &app,
            &owner,
            "Rust kubernetes cloud software compiler programming",
            &format!("Rust kubernetes cloud software compiler programming software rust {LONG}"),
            "sports",
        )
        .await;
        let copy = event(&app, &owner, "Rust software night", &format!("Rust compiler and cloud software {LONG}"), "tech").await;
        let spam = event(
            &app,
            &owner,
            "FREE MONEY CRYPTO GIVEAWAY",
            "CLICK HERE!!! HTTPS://A.EXAMPLE HTTPS://B.EXAMPLE HTTPS://C.EXAMPLE EARN BIG TODAY",
            "business",
        )
        .await;
        let m = curated(&app, mismatch).await;
        assert_eq!(m["suggested_category"], "tech", "{m}");
        assert!(m["flags"].as_array().unwrap().contains(&json!("category_mismatch")), "{m}");
        let d = curated(&app, copy).await;
        assert!(d["flags"].as_array().unwrap().contains(&json!(format!("near_duplicate:{good}"))), "{d}");
        let s = curated(&app, spam).await;
        assert!(s["flags"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().starts_with("spam:")), "{s}");

        // The admins' list: flagged events only, the lowest quality first.
        let user = app.sign_up("nosy@example.com").await;
        assert_eq!(app.send("GET", "/api/v1/admin/curation", None, None).await.status, 401);
        assert_eq!(app.send("GET", "/api/v1/admin/curation", Some(&user.token), None).await.status, 403);
        let admin = app.admin("curator-admin@example.com").await;
        assert_eq!(app.send("GET", "/api/v1/admin/curation?limit=0", Some(&admin.token), None).await.status, 422);
        let list = app.send("GET", "/api/v1/admin/curation", Some(&admin.token), None).await;
        assert_eq!(list.status, 200, "{}", list.body);
        let items = list.body["items"].as_array().unwrap();
        let ids: Vec<i64> = items.iter().map(|i| i["event"]["id"].as_i64().unwrap()).collect();
        assert_eq!(ids[0], spam, "{}", list.body);
        assert!(ids.contains(&mismatch) && ids.contains(&copy), "{ids:?}");
        assert!(!ids.contains(&good), "{ids:?}");
        let scores: Vec<f64> = items.iter().map(|i| i["curation"]["quality_score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] <= w[1]), "{scores:?}");
    }
}

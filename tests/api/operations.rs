//! Health, metrics and the OpenAPI document.

use crate::both_stores;

both_stores! {
    async fn health_metrics_and_openapi(app) {
        let health = app.send("GET", "/health", None, None).await;
        assert_eq!(health.status, 200);
        assert_eq!(health.body["service"], "convene");
        assert_eq!(health.body["status"], "healthy");
        assert_eq!(health.body["checks"]["database"]["status"], "healthy");
        assert!(health.body["timestamp"].is_string());
        let live = app.send("GET", "/health/live", None, None).await;
        assert_eq!((live.status, live.body["status"].as_str()), (200, Some("alive")));

        let user = app.sign_up("ops@example.com").await;
        let event = app.create_event(&user, 1).await;
        app.send("POST", &format!("/api/v1/events/{event}/registrations"), Some(&user.token), None).await;
        let other = app.sign_up("ops2@example.com").await;
        app.send("POST", &format!("/api/v1/events/{event}/registrations"), Some(&other.token), None).await;
        app.send("GET", "/api/v1/events/123456", None, None).await;
        app.send("GET", "/some/random/path", None, None).await;

        let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        for needle in [
            "http_requests_total{endpoint=\"/api/v1/events/{id}/registrations\",method=\"POST\",status=\"201\"} 1",
            "http_requests_total{endpoint=\"/api/v1/events/{id}\",method=\"GET\",status=\"404\"} 1",
            "http_requests_total{endpoint=\"unmatched\",method=\"GET\",status=\"404\"} 1",
            "http_request_duration_seconds_bucket{endpoint=\"/api/v1/auth/register\",method=\"POST\"",
            "event_registrations_total{status=\"created\"} 1",
            "event_registrations_total{status=\"full\"} 1",
            "convene_actors_active{kind=\"event\"}",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(!text.contains("123456"), "raw ids never become labels");

        let doc = app.send("GET", "/openapi.json", None, None).await;
        assert_eq!(doc.status, 200);
        assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc.body["paths"].as_object().unwrap();
        for p in [
            "/api/v1/auth/register", "/api/v1/auth/login", "/api/v1/auth/logout", "/api/v1/users/me",
            "/api/v1/users/me/registrations", "/api/v1/events", "/api/v1/events/{id}",
            "/api/v1/events/{id}/registrations", "/api/v1/events/{id}/registrations/me", "/health", "/metrics",
        ] {
            assert!(paths.contains_key(p), "{p} is documented");
        }
        assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
    }
}

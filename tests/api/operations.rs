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
        // An anonymous read of an event its owner here has published is answered ahead of the
        // routes: with the same edge headers, and counted under the same template.
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        for _ in 0..3 {
            let read = app
                .send_with("GET", &format!("/api/v1/events/{event}"), None, None,
                    &[("x-request-id", "read-1"), ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))])
                .await;
            assert_eq!(read.status, 200);
            assert_eq!(read.body["id"], event);
            assert_eq!(read.headers["x-request-id"], "read-1");
            let echoed = read.headers["traceparent"].to_str().unwrap();
            assert!(echoed.starts_with(&format!("00-{trace}-")) && !echoed.contains("00f067aa0ba902b7"), "{echoed}");
            assert_eq!(read.headers["etag"].to_str().unwrap(), format!("\"{}\"", read.body["version"]));
            assert_eq!(read.headers["content-type"], "application/json");
            assert_eq!(read.headers["x-frame-options"], "DENY");
            assert_eq!(read.headers["content-security-policy"], "default-src 'none'; frame-ancestors 'none'");
        }

        let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        for needle in [
            "http_requests_total{endpoint=\"/api/v1/events/{id}/registrations\",method=\"POST\",status=\"201\"} 1",
            "http_requests_total{endpoint=\"/api/v1/events/{id}\",method=\"GET\",status=\"404\"} 1",
            "http_requests_total{endpoint=\"/api/v1/events/{id}\",method=\"GET\",status=\"200\"} 3",
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

both_stores! {
    async fn answers_carry_request_ids_and_security_headers(app) {
        let given = app.send_with("GET", "/api/v1/events", None, None, &[("x-request-id", "trace-42.a:b")]).await;
        assert_eq!(given.headers["x-request-id"], "trace-42.a:b", "a sane id is echoed");
        let made = app.send("GET", "/api/v1/events", None, None).await;
        let id = made.headers["x-request-id"].to_str().unwrap().to_owned();
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        let other = app.send("GET", "/api/v1/events", None, None).await;
        assert_ne!(other.headers["x-request-id"].to_str().unwrap(), id, "each request its own");
        let odd = app.send_with("GET", "/health", None, None, &[("x-request-id", "has spaces")]).await;
        assert_ne!(odd.headers["x-request-id"], "has spaces", "an odd id is replaced");
        for a in [&made, &app.send("GET", "/nowhere", None, None).await] {
            assert_eq!(a.headers["x-content-type-options"], "nosniff");
            assert_eq!(a.headers["x-frame-options"], "DENY");
            assert_eq!(a.headers["referrer-policy"], "no-referrer");
            assert_eq!(a.headers["content-security-policy"], "default-src 'none'; frame-ancestors 'none'");
        }
        let page = app.send("GET", "/console", None, None).await;
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'unsafe-inline'"), "the console keeps its own policy: {csp}");
        // Without configured origins, no CORS headers: browsers keep other origins out.
        let a = app.send_with("GET", "/api/v1/events", None, None, &[("origin", "https://app.example.com")]).await;
        assert!(a.headers.get("access-control-allow-origin").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_the_configured_origins_in_and_no_other() {
    use crate::helpers::{Backend, Settings, spawn_app_with};
    let settings = Settings {
        env: vec![(
            "CONVENE_CORS_ORIGINS".into(),
            "https://app.example.com,https://admin.example.com".into(),
        )],
        ..Settings::default()
    };
    let app = spawn_app_with(Backend::Sqlite, settings).await.unwrap();
    let preflight = |origin: &'static str| {
        let app = &app;
        async move {
            app.send_with(
                "OPTIONS",
                "/api/v1/events",
                None,
                None,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "authorization, content-type",
                    ),
                ],
            )
            .await
        }
    };
    let ok = preflight("https://app.example.com").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    let methods = ok.headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("POST"), "{methods}");
    assert_eq!(ok.headers["access-control-max-age"], "600");
    let refused = preflight("https://evil.example.com").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["error"], "forbidden");
    let a = app
        .send_with(
            "GET",
            "/api/v1/events",
            None,
            None,
            &[("origin", "https://admin.example.com")],
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://admin.example.com"
    );
    let exposed = a.headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    // Requests without an Origin (servers, curl) are not CORS requests and pass as before.
    assert_eq!(
        app.send("GET", "/api/v1/events", None, None).await.status,
        200
    );
}

/// A TCP proxy to PostgreSQL that the test can cut (every connection closed, new ones
/// refused) and restore.
struct CutProxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CutProxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, l) = (cut.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                l.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { port, cut, links }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `convene_breaker_open{dependency="database"}` of a node.
async fn database_breaker(app: &crate::helpers::TestApp) -> Option<i64> {
    let metrics = app.send("GET", "/metrics", None, None).await;
    metrics.body.as_str().unwrap().lines().find_map(|l| {
        l.strip_prefix("convene_breaker_open{dependency=\"database\"} ")?
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_fails_requests_fast_and_they_pass_again_when_it_returns() {
    use std::time::{Duration, Instant};

    use crate::helpers::{Backend, Settings, eventually, fresh_postgres, spawn_app_with};

    let Some(database) = fresh_postgres().await else {
        return;
    };
    // postgres://user@host:port/name → the same through the proxy.
    let (scheme, rest) = database.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let (user, server) = authority
        .rsplit_once('@')
        .map_or(("", authority), |(u, s)| (u, s));
    let server = if server.contains(':') {
        server.to_owned()
    } else {
        format!("{server}:5432")
    };
    let proxy = CutProxy::start(server).await;
    let at = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    let url = format!("{scheme}://{at}127.0.0.1:{}/{path}", proxy.port);
    let settings = Settings {
        env: vec![("CONVENE_DATABASE_URL".to_owned(), url)],
        ..Settings::default()
    };
    let app = spawn_app_with(Backend::Sqlite, settings).await.unwrap();
    assert_eq!(
        app.send("GET", "/api/v1/events", None, None).await.status,
        200
    );
    assert_eq!(database_breaker(&app).await, Some(0));

    proxy.cut();
    // The probe finds the database gone within a few seconds; meanwhile requests fail slowly.
    let opened = eventually(Duration::from_secs(20), || async {
        database_breaker(&app).await == Some(1)
    })
    .await;
    assert!(opened, "the breaker opens");
    let started = Instant::now();
    let refused = app.send("GET", "/api/v1/events", None, None).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not after waiting for a connection: {:?}",
        started.elapsed()
    );
    let health = app.send("GET", "/health", None, None).await;
    assert_eq!(health.status, 503);
    assert_eq!(health.body["checks"]["database"]["status"], "unhealthy");

    proxy.restore();
    let back = eventually(Duration::from_secs(20), || async {
        app.send("GET", "/api/v1/events", None, None).await.status == 200
    })
    .await;
    assert!(back, "requests pass again once the database answers");
    assert_eq!(database_breaker(&app).await, Some(0));
}

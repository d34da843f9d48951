//! Rate limits: a user past their burst gets 429 with `Retry-After` and the RateLimit headers
//! while others pass; two nodes on one Redis share a client's count; Redis killed in the middle
//! leaves users without errors (each node counts alone, `/health` says degraded) and the shared
//! count comes back with it.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::helpers::{Backend, Settings, TestApp, eventually, spawn_app_with, unavailable};

fn limits(pairs: &[(&str, &str)]) -> Settings {
    Settings {
        env: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Settings::default()
    }
}

async fn status(app: &TestApp, token: Option<&str>) -> u16 {
    app.send("GET", "/api/v1/events", token, None).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_past_their_burst_waits_and_others_pass() {
    let settings = limits(&[
        ("CONVENE_RATE_LIMIT_USER_PER_SEC", "1"),
        ("CONVENE_RATE_LIMIT_USER_BURST", "3"),
        ("CONVENE_RATE_LIMIT_IP_PER_SEC", "1000"),
        ("CONVENE_RATE_LIMIT_IP_BURST", "1000"),
    ]);
    let app = spawn_app_with(Backend::Sqlite, settings).await.unwrap();
    let alice = app.sign_up("alice@example.com").await;
    let bob = app.sign_up("bob@example.com").await;
    for _ in 0..3 {
        assert_eq!(status(&app, Some(&alice.token)).await, 200);
    }
    let refused = app
        .send("GET", "/api/v1/users/me", Some(&alice.token), None)
        .await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.body["error"], "rate_limited");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "retry after {retry}");
    assert_eq!(refused.headers["ratelimit-policy"], "\"user\";q=1;w=1");
    assert_eq!(
        refused.headers["ratelimit"].to_str().unwrap(),
        format!("\"user\";r=0;t={retry}")
    );
    assert_eq!(
        status(&app, Some(&bob.token)).await,
        200,
        "another user passes"
    );
    assert_eq!(status(&app, None).await, 200, "so do anonymous reads");
    // Refused requests changed nothing, and the user passes again once a token is back.
    let back = eventually(Duration::from_secs(3), || async {
        status(&app, Some(&alice.token)).await == 200
    })
    .await;
    assert!(back, "the user passes again after Retry-After");
    let metrics = app.send("GET", "/metrics", None, None).await;
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains(
            "convene_rate_limit_decisions_total{backend=\"local\",decision=\"limited\",level=\"user\"}"
        ),
        "{text}"
    );
}

/// A `redis-server` of this test's own on a free port, so it can be killed.
pub(crate) struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub(crate) async fn start(port: Option<u16>) -> Option<Self> {
        if which("redis-server").is_none() {
            unavailable(
                "redis-server",
                "the services script installs it (Debian redis-server)",
            );
            return None;
        }
        let port = port.unwrap_or_else(crate::helpers::free_port);
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        let up = eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "the private redis-server listens on {port}");
        Some(Self {
            port,
            child: Some(child),
        })
    }

    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_limit_through_redis_and_ride_out_its_loss() {
    let Some(mut redis) = PrivateRedis::start(None).await else {
        return;
    };
    let settings = || {
        limits(&[
            ("CONVENE_REDIS_URL", &redis.url()),
            ("CONVENE_RATE_LIMIT_IP_PER_SEC", "1"),
            ("CONVENE_RATE_LIMIT_IP_BURST", "4"),
        ])
    };
    let a = spawn_app_with(Backend::Sqlite, settings()).await.unwrap();
    let b = spawn_app_with(Backend::Sqlite, settings()).await.unwrap();
    // Four requests from this address in all, two on each node, fill the shared burst.
    for app in [&a, &b, &a, &b] {
        assert_eq!(status(app, None).await, 200);
    }
    let refused = b.send("GET", "/api/v1/events", None, None).await;
    assert_eq!(refused.status, 429, "the count is shared: {}", refused.body);
    assert_eq!(refused.headers["ratelimit-policy"], "\"ip\";q=1;w=1");
    let health = a.send("GET", "/health", None, None).await;
    assert_eq!(health.status, 200, "probes are never limited");
    assert_eq!(health.body["checks"]["redis"]["status"], "healthy");

    // Redis goes away: no request fails for it; each node counts alone.
    redis.kill().await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(status(&a, None).await);
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "no server error: {statuses:?}"
    );
    assert!(
        statuses.contains(&200),
        "node a counts alone from a full burst: {statuses:?}"
    );
    let health = a.send("GET", "/health", None, None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["status"], "degraded");
    assert_eq!(health.body["checks"]["redis"]["status"], "unhealthy");
    let metrics = a.send("GET", "/metrics", None, None).await;
    assert!(
        metrics.body.as_str().unwrap().contains("backend=\"local\""),
        "decisions made alone are counted"
    );

    // It comes back: both nodes see it, and the shared count decides again.
    let _redis = PrivateRedis::start(Some(redis.port)).await.unwrap();
    for app in [&a, &b] {
        let healthy = eventually(Duration::from_secs(10), || async {
            app.send("GET", "/health", None, None).await.body["status"] == "healthy"
        })
        .await;
        assert!(healthy, "the node sees Redis again");
    }
    let before = shared_refusals(&a).await + shared_refusals(&b).await;
    let mut refused = false;
    for app in [&a, &b].iter().cycle().take(12) {
        if status(app, None).await == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the limit refuses again");
    let after = shared_refusals(&a).await + shared_refusals(&b).await;
    assert!(after > before, "refused by the shared count");
}

/// How many requests a node refused on Redis's count.
async fn shared_refusals(app: &TestApp) -> u64 {
    let metrics = app.send("GET", "/metrics", None, None).await;
    let prefix =
        "convene_rate_limit_decisions_total{backend=\"redis\",decision=\"limited\",level=\"ip\"} ";
    metrics
        .body
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(prefix)?.parse().ok())
        .unwrap_or(0)
}

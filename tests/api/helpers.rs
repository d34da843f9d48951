//! `spawn_app()`: a real in-process node on a random 127.0.0.1 port with a fresh database
//! (a new SQLite file, or a new PostgreSQL database on the server `DATABASE_URL` names), and a
//! client that talks to it like any other.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use convene::config::{Config, Overrides};
use convene::node::Node;
use serde_json::{Value, json};
use sqlx::Connection;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub node: Node,
    pub client: reqwest::Client,
    pub base: String,
    pub database: String,
    pub dir: TempDir,
}

/// A directory removed when the test ends.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The metrics page of the node at `base`.
pub async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// An event's `registered_count` as the node at `base` shows it.
pub async fn registered_count(client: &reqwest::Client, base: &str, event: i64) -> i64 {
    let r: Value = client
        .get(format!("{base}/api/v1/events/{event}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["registered_count"].as_i64().unwrap()
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// The address of a service the suite talks to: the environment variable `var` when set,
/// otherwise `default` (where `scripts/services up` starts it).
pub fn service_url(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// What a test does when `service` cannot be reached: in CI it fails with `why`; elsewhere it
/// prints why the test is skipped.
pub fn unavailable(service: &str, why: impl std::fmt::Display) {
    assert!(
        !in_ci(),
        "{service} is unreachable in CI (scripts/services up starts it): {why}"
    );
    eprintln!("skipped: {service} is unreachable ({why}); scripts/services up starts it");
}

/// A fresh PostgreSQL database on the server of `DATABASE_URL`, or `None` (with the reason
/// printed) outside CI when no server is configured. In CI a missing server fails the test.
pub async fn fresh_postgres() -> Option<String> {
    let Ok(base) = std::env::var("DATABASE_URL") else {
        assert!(
            !in_ci(),
            "DATABASE_URL must name the PostgreSQL server in CI"
        );
        eprintln!("skipped: DATABASE_URL is not set, so the PostgreSQL variant cannot run");
        return None;
    };
    let mut conn = match sqlx::PgConnection::connect(&base).await {
        Ok(c) => c,
        Err(e) => {
            assert!(!in_ci(), "PostgreSQL at DATABASE_URL is unreachable: {e}");
            eprintln!("skipped: PostgreSQL at DATABASE_URL is unreachable: {e}");
            return None;
        }
    };
    let now = chrono::Utc::now().timestamp();
    // Databases of runs older than a day are leftovers: remove them.
    let old: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'convene_test_%'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    for (name,) in old {
        let stamp = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(now);
        if now - stamp > 86_400 {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\""
            )))
            .execute(&mut conn)
            .await;
        }
    }
    let name = format!("convene_test_{now}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let (head, tail) = base
        .split_once('?')
        .map_or((base.as_str(), None), |(h, t)| (h, Some(t)));
    let server = head.rsplit_once('/').map_or(head, |(s, _)| s);
    Some(match tail {
        Some(t) => format!("{server}/{name}?{t}"),
        None => format!("{server}/{name}"),
    })
}

pub struct Settings {
    pub passivate_after_secs: u64,
    pub ws_publish_per_sec: u32,
    pub ws_outbound_queue: usize,
    pub ws_heartbeat_secs: u64,
    pub room_presence_limit: usize,
    /// More `CONVENE_*` settings, such as the buses'.
    pub env: Vec<(String, String)>,
    /// A configuration file's text (for sections the environment cannot express).
    pub file: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            passivate_after_secs: 600,
            ws_publish_per_sec: 20,
            ws_outbound_queue: 1024,
            ws_heartbeat_secs: 30,
            room_presence_limit: 1000,
            env: Vec::new(),
            file: None,
        }
    }
}

/// Starts a node on `backend`; `None` when that backend is not available outside CI.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, Settings::default()).await
}

pub async fn spawn_app_with(backend: Backend, settings: Settings) -> Option<TestApp> {
    let dir = TempDir(
        std::env::temp_dir().join(format!("convene-test-{}", uuid::Uuid::new_v4().simple())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let database = match backend {
        Backend::Postgres => fresh_postgres().await?,
        Backend::Sqlite => format!("sqlite://{}", dir.0.join("convene.db").display()),
    };
    let env = [
        ("CONVENE_LISTEN", "127.0.0.1:0".to_owned()),
        ("CONVENE_DATABASE_URL", database.clone()),
        ("CONVENE_PASSWORD_HASH_MEMORY_KIB", "1024".to_owned()),
        ("CONVENE_PASSWORD_HASH_ITERATIONS", "1".to_owned()),
        (
            "CONVENE_PASSIVATE_AFTER_SECS",
            settings.passivate_after_secs.to_string(),
        ),
        (
            "CONVENE_WS_PUBLISH_PER_SEC",
            settings.ws_publish_per_sec.to_string(),
        ),
        (
            "CONVENE_WS_OUTBOUND_QUEUE",
            settings.ws_outbound_queue.to_string(),
        ),
        (
            "CONVENE_WS_HEARTBEAT_SECS",
            settings.ws_heartbeat_secs.to_string(),
        ),
        (
            "CONVENE_ROOM_PRESENCE_LIMIT",
            settings.room_presence_limit.to_string(),
        ),
        ("CONVENE_REQUEST_TIMEOUT_MS", "20000".to_owned()),
        ("CONVENE_DATABASE_MAX_CONNECTIONS", "10".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .into_iter()
    .chain(settings.env);
    let overrides = Overrides {
        data_dir: Some(dir.0.clone()),
        ..Default::default()
    };
    let file = settings.file.map(|text| {
        let path = dir.0.join("convene.toml");
        std::fs::write(&path, text).unwrap();
        path
    });
    let config = Config::load(file.as_deref(), env, &overrides).unwrap();
    let node = Node::start(config).await.unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let base = node.url();
    Some(TestApp {
        node,
        client,
        base,
        database,
        dir,
    })
}

/// Runs the test body against SQLite and against PostgreSQL, as two tests.
#[macro_export]
macro_rules! both_stores {
    ($(async fn $name:ident($app:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn run($app: $crate::helpers::TestApp) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await.unwrap();
                    run(app).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(app) = $crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await {
                        run(app).await
                    }
                }
            }
        )*
    };
}

/// A signed-up user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: i64,
    pub email: String,
    pub token: String,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.send_with(method, path, token, body, &[]).await
    }

    pub async fn send_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self
            .client
            .request(reqwest::Method::from_str(method).unwrap(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            body,
            headers,
        }
    }

    pub async fn sign_up(&self, email: &str) -> TestUser {
        let a = self
            .send(
                "POST",
                "/api/v1/auth/register",
                None,
                Some(json!({"email": email, "password": "correct horse battery", "name": "Test User"})),
            )
            .await;
        assert_eq!(a.status, 201, "sign-up of {email}: {}", a.body);
        TestUser {
            id: a.body["user"]["id"].as_i64().unwrap(),
            email: email.to_owned(),
            token: a.body["access_token"].as_str().unwrap().to_owned(),
        }
    }

    /// Signs up an account, makes it an admin, and logs it in again for a token with the
    /// admin's permissions.
    pub async fn admin(&self, email: &str) -> TestUser {
        let user = self.sign_up(email).await;
        assert!(
            self.node
                .app
                .store
                .grant_role(email, convene_actors::model::Role::Admin)
                .await
                .unwrap()
        );
        let a = self
            .send(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(json!({"email": email, "password": "correct horse battery"})),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        TestUser {
            token: a.body["access_token"].as_str().unwrap().to_owned(),
            ..user
        }
    }

    /// Signs up `n` users concurrently.
    pub async fn sign_up_many(&self, prefix: &str, n: usize) -> Vec<TestUser> {
        let futures =
            (0..n).map(|i| async move { self.sign_up(&format!("{prefix}{i}@example.com")).await });
        futures::future::join_all(futures).await
    }

    pub async fn create_event(&self, owner: &TestUser, capacity: i64) -> i64 {
        let a = self
            .send(
                "POST",
                "/api/v1/events",
                Some(&owner.token),
                Some(event_body(capacity)),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        a.body["id"].as_i64().unwrap()
    }

    /// Active registrations of an event, counted in the database itself.
    pub async fn active_in_db(&self, event_id: i64) -> (i64, i64) {
        let q = "SELECT (SELECT COUNT(*) FROM event_registrations WHERE event_id = $1 AND status = 'active'), \
                 (SELECT registered_count FROM events WHERE id = $1)";
        if self.database.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(&self.database).await.unwrap();
            sqlx::query_as(q)
                .bind(event_id)
                .fetch_one(&mut c)
                .await
                .unwrap()
        } else {
            let mut c = sqlx::SqliteConnection::connect(&self.database)
                .await
                .unwrap();
            sqlx::query_as(q)
                .bind(event_id)
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
    }
}

pub fn event_body(capacity: i64) -> Value {
    json!({
        "title": "Rust in Lyon",
        "description": "Talks and pizza",
        "date": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339(),
        "location": "Lyon, La Cordée",
        "latitude": 45.76,
        "longitude": 4.83,
        "capacity": capacity,
        "category": "tech",
        "tags": ["rust", "meetup"],
        "price": 10.5
    })
}

/// A free port on 127.0.0.1 for a server another process will bind. It is taken at random below
/// the kernel's range of ephemeral ports, so the ports of outgoing connections and of `:0`
/// listeners (which come from that range) cannot take it before the server binds it.
pub fn free_port() -> u16 {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000.min(start / 2);
    loop {
        let port = rand::random_range(low..start);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

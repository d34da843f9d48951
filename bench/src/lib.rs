//! Shared pieces of the load scenarios: an in-process Convene node, a load generator that
//! drives a server with N concurrent clients, and the report line printed for each run.

use std::time::{Duration, Instant};

use convene::config::{Config, Overrides};
use convene::node::Node;
use serde_json::{Value, json};

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct Run {
    /// Requests that got the expected answer.
    pub ok: usize,
    /// Requests that did not.
    pub failed: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Median time of one request.
    pub p50: Duration,
    /// 99th percentile time of one request.
    pub p99: Duration,
    /// The time of every request.
    pub times: Vec<Duration>,
}

impl Run {
    /// Runs of one side taken as one: their requests and wall times added, the percentiles
    /// over every request of them.
    pub fn merge(runs: &[Run]) -> Run {
        let mut times: Vec<Duration> = runs.iter().flat_map(|r| r.times.iter().copied()).collect();
        Run {
            ok: runs.iter().map(|r| r.ok).sum(),
            failed: runs.iter().map(|r| r.failed).sum(),
            elapsed: runs.iter().map(|r| r.elapsed).sum(),
            p50: quantile(&mut times, 0.5),
            p99: quantile(&mut times, 0.99),
            times,
        }
    }

    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// Prints a measured run next to its baseline, and their ratio.
pub fn report(what: &str, subject: Run, baseline_name: &str, baseline: Run, target: f64) {
    let ratio = subject.rate() / baseline.rate();
    println!(
        "{what}: convene {:.0}/s ({} ok, {} failed, p50 {:.2} ms, p99 {:.2} ms) | {baseline_name} {:.0}/s ({} ok, {} failed, p50 {:.2} ms, p99 {:.2} ms) | ratio {ratio:.2} (target >= {target})",
        subject.rate(),
        subject.ok,
        subject.failed,
        millis(subject.p50),
        millis(subject.p99),
        baseline.rate(),
        baseline.ok,
        baseline.failed,
        millis(baseline.p50),
        millis(baseline.p99),
    );
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile (0 to 1) of `times`, sorted in place.
fn quantile(times: &mut [Duration], q: f64) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    times.sort_unstable();
    let i = ((times.len() - 1) as f64 * q).round() as usize;
    times[i]
}

/// Runs `jobs` through `clients` concurrent workers; each job returns whether it succeeded.
pub async fn drive<J, F, Fut>(clients: usize, jobs: Vec<J>, work: F) -> Run
where
    J: Send + 'static,
    F: Fn(J) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let queue = std::sync::Arc::new(std::sync::Mutex::new(jobs));
    let start = Instant::now();
    let workers = (0..clients).map(|_| {
        let queue = queue.clone();
        let work = work.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed, mut times) = (0, 0, Vec::new());
            loop {
                let job = queue.lock().expect("queue lock").pop();
                let Some(job) = job else { break };
                let sent = Instant::now();
                if work(job).await {
                    ok += 1;
                } else {
                    failed += 1;
                }
                times.push(sent.elapsed());
            }
            (ok, failed, times)
        })
    });
    let mut run = Run {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        times: Vec::new(),
    };
    let mut times = Vec::new();
    for w in futures::future::join_all(workers).await {
        let (ok, failed, t) = w.unwrap_or((0, 1, Vec::new()));
        run.ok += ok;
        run.failed += failed;
        times.extend(t);
    }
    run.elapsed = start.elapsed();
    run.p50 = quantile(&mut times, 0.5);
    run.p99 = quantile(&mut times, 0.99);
    run.times = times;
    run
}

/// An HTTP client pooled for `clients` concurrent users.
pub fn http_client(clients: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// Starts a Convene node in this process on a random port; `database_url` `None` means
/// SQLite in a fresh directory.
pub async fn start_node(database_url: Option<&str>) -> anyhow::Result<Node> {
    start_node_with(database_url, &[]).await
}

/// [`start_node`] with extra `CONVENE_*` settings.
pub async fn start_node_with(
    database_url: Option<&str>,
    extra: &[(&str, &str)],
) -> anyhow::Result<Node> {
    let dir = std::env::temp_dir().join(format!("convene-bench-{}", uuid::Uuid::new_v4().simple()));
    let mut env = vec![
        ("CONVENE_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "CONVENE_PASSWORD_HASH_MEMORY_KIB".to_owned(),
            "1024".to_owned(),
        ),
        (
            "CONVENE_PASSWORD_HASH_ITERATIONS".to_owned(),
            "1".to_owned(),
        ),
        ("CONVENE_REQUEST_TIMEOUT_MS".to_owned(), "30000".to_owned()),
        (
            "CONVENE_DATABASE_MAX_CONNECTIONS".to_owned(),
            "20".to_owned(),
        ),
    ];
    if let Some(url) = database_url {
        env.push(("CONVENE_DATABASE_URL".to_owned(), url.to_owned()));
    }
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let overrides = Overrides {
        data_dir: Some(dir),
        ..Default::default()
    };
    let config = Config::load(None, env, &overrides).map_err(|e| anyhow::anyhow!("{e}"))?;
    Node::start(config).await
}

/// Starts this program again with `args` and `env` (a server in its own process, so its
/// resident memory is its own), and returns it with the rest of the first line of its output
/// that starts with `prefix` (where it listens). With `BENCH_SERVER_WRAPPER` set (a profiler
/// such as `heaptrack`), the server runs under it.
pub async fn spawn_self(
    args: &[&str],
    env: Vec<(String, String)>,
    prefix: &str,
) -> anyhow::Result<(tokio::process::Child, String)> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let exe = std::env::current_exe()?;
    let mut command = match std::env::var_os("BENCH_SERVER_WRAPPER") {
        Some(wrapper) => {
            let mut c = tokio::process::Command::new(wrapper);
            c.arg(exe);
            c
        }
        None => tokio::process::Command::new(exe),
    };
    let mut process = command
        .args(args)
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = process
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the server exited before it listened"))?;
        if let Some(rest) = line.strip_prefix(prefix) {
            return Ok((process, rest.to_owned()));
        }
    }
}

/// A fresh database on the PostgreSQL server of `base`; returns its URL.
pub async fn fresh_postgres(base: &str, label: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(base).await?;
    let name = format!("convene_bench_{label}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await?;
    let (head, tail) = base
        .split_once('?')
        .map_or((base, None), |(h, t)| (h, Some(t)));
    let server = head.rsplit_once('/').map_or(head, |(s, _)| s);
    Ok(match tail {
        Some(t) => format!("{server}/{name}?{t}"),
        None => format!("{server}/{name}"),
    })
}

/// Drops a database made by [`fresh_postgres`].
pub async fn drop_postgres(base: &str, url: &str) {
    use sqlx::Connection;
    let name = url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    if let Ok(mut conn) = sqlx::PgConnection::connect(base).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}

/// Signs up a user on `base` and returns (id, token).
pub async fn sign_up(
    client: &reqwest::Client,
    base: &str,
    email: &str,
) -> anyhow::Result<(i64, String)> {
    let res: Value = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": email, "password": "bench password", "name": "Bench"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok((
        res["user"]["id"].as_i64().unwrap_or_default(),
        res["access_token"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Publishes an event of `capacity` seats and returns its id.
pub async fn create_event(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    capacity: i64,
) -> anyhow::Result<i64> {
    let res: Value = client
        .post(format!("{base}/api/v1/events"))
        .bearer_auth(token)
        .json(&json!({
            "title": "Benchmark night", "description": "Load", "location": "Loopback",
            "date": (chrono::Utc::now() + chrono::Duration::days(7)).to_rfc3339(),
            "capacity": capacity, "category": "tech"
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(res["id"].as_i64().unwrap_or_default())
}

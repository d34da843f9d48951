//! `GET /api/v1/events/{id}` through one node and through a cluster of three (requests spread
//! round-robin, so two thirds of them are forwarded to the event's owner): throughput and
//! p50/p99 latency side by side; then the latency of a forwarded read next to a local one,
//! one request at a time, to show what a forward adds. Every node is a child process (this
//! binary with `--serve`), sharing one fresh PostgreSQL database (`DATABASE_URL`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use convene::config::{Config, Overrides};
use convene::node::Node;
use convene_bench::{
    create_event, drop_postgres, fresh_postgres, http_client, sign_up, spawn_self,
};
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// Concurrent clients in the throughput runs.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Requests in each throughput run.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Sequential requests in each latency run.
    #[arg(long, default_value_t = 2_000)]
    samples: usize,
    /// Internal: run a node configured by the environment and print its address.
    #[arg(long, hide = true)]
    serve: bool,
}

const SECRET: &str = "the cluster bench's token secret, 32 bytes or more";

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Child {
    _process: tokio::process::Child,
    url: String,
}

impl Child {
    async fn start(env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let mut env = env;
        env.push(("RUST_LOG".into(), "error".into()));
        let (process, url) = spawn_self(&["--serve"], env, "URL ").await?;
        Ok(Self {
            _process: process,
            url,
        })
    }
}

fn node_env(database: &str, cluster: Option<(&str, u16, &str)>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("CONVENE_LISTEN", "127.0.0.1:0"),
        ("CONVENE_DATABASE_URL", database),
        ("CONVENE_JWT_SECRET", SECRET),
        ("CONVENE_PASSWORD_HASH_MEMORY_KIB", "1024"),
        ("CONVENE_PASSWORD_HASH_ITERATIONS", "1"),
        ("CONVENE_DATABASE_MAX_CONNECTIONS", "10"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let dir = std::env::temp_dir().join(format!("convene-bench-{}", uuid::Uuid::new_v4()));
    env.push(("CONVENE_DATA_DIR".into(), dir.display().to_string()));
    if let Some((name, port, seeds)) = cluster {
        env.push(("CONVENE_NODE_NAME".into(), name.into()));
        env.push(("CONVENE_CLUSTER_LISTEN".into(), format!("127.0.0.1:{port}")));
        env.push(("CONVENE_COOKIE".into(), "bench".into()));
        env.push(("CONVENE_SEEDS".into(), seeds.into()));
    }
    env
}

/// Latencies of one run, sorted, and its wall time.
struct Sample {
    latencies: Vec<Duration>,
    failed: usize,
    elapsed: Duration,
}

impl Sample {
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[i]
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms ({} ok, {} failed)",
            self.rate(),
            self.pct(0.50).as_secs_f64() * 1e3,
            self.pct(0.99).as_secs_f64() * 1e3,
            self.latencies.len(),
            self.failed
        )
    }
}

/// `requests` reads of `events` through `clients` concurrent clients, round-robin over `urls`.
async fn load(
    client: &reqwest::Client,
    urls: &[String],
    token: &str,
    events: &[i64],
    clients: usize,
    requests: usize,
) -> Sample {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let workers = (0..clients).map(|_| {
        let (client, urls, token, events, next) = (
            client.clone(),
            urls.to_vec(),
            token.to_owned(),
            events.to_vec(),
            next.clone(),
        );
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let url = format!(
                    "{}/api/v1/events/{}",
                    urls[i % urls.len()],
                    events[(i / urls.len()) % events.len()]
                );
                let sent = Instant::now();
                match client.get(url).bearer_auth(&token).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    _ => failed += 1,
                }
            }
            (latencies, failed)
        })
    });
    let mut sample = Sample {
        latencies: Vec::new(),
        failed: 0,
        elapsed: Duration::ZERO,
    };
    for w in futures::future::join_all(workers).await {
        let (l, f) = w.unwrap_or_default();
        sample.latencies.extend(l);
        sample.failed += f;
    }
    sample.elapsed = start.elapsed();
    sample.latencies.sort_unstable();
    sample
}

/// A warm-up of a quarter of the requests (entities activate, connections open), then the
/// measured run.
async fn warm_then_load(
    client: &reqwest::Client,
    urls: &[String],
    token: &str,
    events: &[i64],
    args: &Args,
) -> Sample {
    load(client, urls, token, events, args.clients, args.requests / 4).await;
    load(client, urls, token, events, args.clients, args.requests).await
}

async fn serve() -> anyhow::Result<()> {
    let config = Config::load(None, std::env::vars(), &Overrides::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let node = Node::start(config).await?;
    println!("URL {}", node.url());
    std::future::pending::<()>().await;
    Ok(())
}

async fn owner_of(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    event: i64,
) -> anyhow::Result<String> {
    let s: Value = client
        .get(format!("{url}/api/v1/cluster"))
        .query(&[("key", format!("event/{event}"))])
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    Ok(s["key"]["owner"].as_str().unwrap_or_default().to_owned())
}

async fn admin_token(
    database: &str,
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<String> {
    use sqlx::Connection;
    sign_up(client, url, "bench-admin@example.com").await?;
    let mut db = sqlx::PgConnection::connect(database).await?;
    sqlx::query("UPDATE users SET role = 'admin' WHERE email = 'bench-admin@example.com'")
        .execute(&mut db)
        .await?;
    let login: Value = client
        .post(format!("{url}/api/v1/auth/login"))
        .json(
            &serde_json::json!({"email": "bench-admin@example.com", "password": "bench password"}),
        )
        .send()
        .await?
        .json()
        .await?;
    Ok(login["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve {
        return serve().await;
    }
    let base = std::env::var("DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("DATABASE_URL must name a PostgreSQL server"))?;
    let database = fresh_postgres(&base, "cluster").await?;
    let client = http_client(args.clients);

    // One node alone.
    let single = Child::start(node_env(&database, None)).await?;
    let token = admin_token(&database, &client, &single.url).await?;
    let mut events = Vec::new();
    for _ in 0..30 {
        events.push(create_event(&client, &single.url, &token, 100).await?);
    }
    let urls = [single.url.clone()];
    let one = warm_then_load(&client, &urls, &token, &events, &args).await;
    drop(single);

    // Three nodes on the same database.
    let ports = [free_port()?, free_port()?, free_port()?];
    let seeds = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let name = format!("bench-{i}");
        nodes.push(Child::start(node_env(&database, Some((&name, *port, &seeds)))).await?);
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s: Value = client
            .get(format!("{}/api/v1/cluster", urls[0]))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let up = s["members"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["status"] == "up").count());
        if up == 3 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the cluster did not form: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let three = warm_then_load(&client, &urls, &token, &events, &args).await;

    println!("GET /api/v1/events/{{id}}, {} clients:", args.clients);
    println!("  {}", one.line("1 node  "));
    println!("  {}", three.line("3 nodes "));
    println!(
        "  3 nodes / 1 node: throughput {:.2}x, p99 {:.2}x (all nodes share this machine's cores)",
        three.rate() / one.rate(),
        three.pct(0.99).as_secs_f64() / one.pct(0.99).as_secs_f64()
    );

    // One request at a time: the same event read on its owner, and on a node that forwards.
    let event = events[0];
    let owner = owner_of(&client, &urls[0], &token, event).await?;
    let owner_i = (0..3)
        .find(|i| format!("bench-{i}") == owner)
        .ok_or_else(|| anyhow::anyhow!("no owner for event {event}"))?;
    let local_url = [urls[owner_i].clone()];
    let forward_url = [urls[(owner_i + 1) % 3].clone()];
    let one_event = [event];
    load(
        &client,
        &forward_url,
        &token,
        &one_event,
        1,
        args.samples / 4,
    )
    .await;
    load(&client, &local_url, &token, &one_event, 1, args.samples / 4).await;
    let mut local = Vec::new();
    let mut forwarded = Vec::new();
    for _ in 0..4 {
        local.push(load(&client, &local_url, &token, &one_event, 1, args.samples / 4).await);
        forwarded.push(
            load(
                &client,
                &forward_url,
                &token,
                &one_event,
                1,
                args.samples / 4,
            )
            .await,
        );
    }
    let merge = |runs: Vec<Sample>| {
        let mut all = Sample {
            latencies: Vec::new(),
            failed: 0,
            elapsed: Duration::ZERO,
        };
        for r in runs {
            all.latencies.extend(r.latencies);
            all.failed += r.failed;
            all.elapsed += r.elapsed;
        }
        all.latencies.sort_unstable();
        all
    };
    let (local, forwarded) = (merge(local), merge(forwarded));
    println!("One request at a time, event {event} owned by {owner}:");
    println!("  {}", local.line("local    "));
    println!("  {}", forwarded.line("forwarded"));
    let added = forwarded.pct(0.5).as_secs_f64() - local.pct(0.5).as_secs_f64();
    println!(
        "  a forward adds {:.3} ms at p50 (target < 1 ms): {}",
        added * 1e3,
        if added < 0.001 { "met" } else { "NOT met" }
    );
    drop(nodes);
    drop_postgres(&base, &database).await;
    Ok(())
}

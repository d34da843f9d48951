//! One hot event, N concurrent clients registering through the HTTP API, next to the same load
//! applied straight to PostgreSQL (`UPDATE … SET registered = registered + 1 WHERE … AND
//! registered < capacity` plus an insert, one transaction per request). Each side runs
//! `--rounds` times, a new hot event each time and the same users, and is counted over all of
//! them, so a run lasts long enough to measure; the sides take turns round by round. Prints
//! both rates and their ratio. Needs `DATABASE_URL` naming a PostgreSQL server; makes and
//! drops its own databases.

use clap::Parser;
use convene_bench::{
    create_event, drive, drop_postgres, fresh_postgres, http_client, report, sign_up, start_node,
};
use sqlx::postgres::PgPoolOptions;

/// The pause after each round.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Parser)]
struct Args {
    /// Concurrent clients.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Registrations (one per user) in each round.
    #[arg(long, default_value_t = 3000)]
    registrations: usize,
    /// Rounds per side, each on a new event.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Connections the baseline may open.
    #[arg(long, default_value_t = 40)]
    baseline_connections: u32,
}

/// The load applied straight to PostgreSQL, in a database of its own.
struct Baseline {
    url: String,
    pool: sqlx::PgPool,
}

impl Baseline {
    async fn start(base: &str, args: &Args) -> anyhow::Result<Self> {
        let url = fresh_postgres(base, "baseline").await?;
        let pool = PgPoolOptions::new()
            .max_connections(args.baseline_connections)
            .connect(&url)
            .await?;
        sqlx::query("CREATE TABLE events (id BIGSERIAL PRIMARY KEY, capacity BIGINT NOT NULL, registered BIGINT NOT NULL DEFAULT 0)")
            .execute(&pool)
            .await?;
        sqlx::query(
            "CREATE TABLE event_registrations (id BIGSERIAL PRIMARY KEY, event_id BIGINT NOT NULL REFERENCES events (id), \
             user_id BIGINT NOT NULL, status VARCHAR(50) NOT NULL DEFAULT 'active', registered_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), \
             UNIQUE (event_id, user_id))",
        )
        .execute(&pool)
        .await?;
        Ok(Self { url, pool })
    }

    async fn round(&self, args: &Args) -> anyhow::Result<convene_bench::Run> {
        let (event,): (i64,) =
            sqlx::query_as("INSERT INTO events (capacity) VALUES ($1) RETURNING id")
                .bind(args.registrations as i64)
                .fetch_one(&self.pool)
                .await?;
        let jobs: Vec<i64> = (0..args.registrations as i64).collect();
        let p = self.pool.clone();
        Ok(drive(args.clients, jobs, move |user: i64| {
            let pool = p.clone();
            async move {
                let Ok(mut tx) = pool.begin().await else { return false };
                let taken = sqlx::query("UPDATE events SET registered = registered + 1 WHERE id = $1 AND registered < capacity")
                    .bind(event)
                    .execute(&mut *tx)
                    .await;
                if !matches!(taken, Ok(r) if r.rows_affected() == 1) {
                    return false;
                }
                let inserted = sqlx::query("INSERT INTO event_registrations (event_id, user_id) VALUES ($1, $2)")
                    .bind(event)
                    .bind(user)
                    .execute(&mut *tx)
                    .await;
                inserted.is_ok() && tx.commit().await.is_ok()
            }
        })
        .await)
    }

    async fn stop(self, base: &str) {
        self.pool.close().await;
        drop_postgres(base, &self.url).await;
    }
}

/// A Convene node on PostgreSQL, with an owner and the users who register.
struct Convene {
    url: String,
    node: convene::node::Node,
    client: reqwest::Client,
    api: String,
    owner: String,
    tokens: Vec<String>,
}

impl Convene {
    async fn start(base: &str, args: &Args) -> anyhow::Result<Self> {
        let url = fresh_postgres(base, "convene").await?;
        let node = start_node(Some(&url)).await?;
        let api = node.url();
        let client = http_client(args.clients);
        let (_, owner) = sign_up(&client, &api, "owner@bench.example").await?;
        let emails: Vec<String> = (0..args.registrations)
            .map(|i| format!("user{i}@bench.example"))
            .collect();
        let tokens = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, a, t) = (client.clone(), api.clone(), tokens.clone());
        drive(32, emails, move |email: String| {
            let (client, api, tokens) = (c.clone(), a.clone(), t.clone());
            async move {
                match sign_up(&client, &api, &email).await {
                    Ok((_, token)) => {
                        tokens.lock().expect("tokens").push(token);
                        true
                    }
                    Err(_) => false,
                }
            }
        })
        .await;
        let tokens = std::mem::take(&mut *tokens.lock().expect("tokens"));
        Ok(Self {
            url,
            node,
            client,
            api,
            owner,
            tokens,
        })
    }

    async fn round(&self, args: &Args) -> anyhow::Result<convene_bench::Run> {
        let event = create_event(
            &self.client,
            &self.api,
            &self.owner,
            args.registrations as i64,
        )
        .await?;
        // Parsed once: the generator's share of the cores goes to requests, not to URL parsing.
        let target: reqwest::Url =
            format!("{}/api/v1/events/{event}/registrations", self.api).parse()?;
        let c = self.client.clone();
        Ok(drive(args.clients, self.tokens.clone(), move |token: String| {
            let (client, target) = (c.clone(), target.clone());
            async move {
                matches!(client.post(target).bearer_auth(token).send().await, Ok(r) if r.status() == 201)
            }
        })
        .await)
    }

    async fn stop(self, base: &str) {
        self.node.shutdown().await;
        drop_postgres(base, &self.url).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = std::env::var("DATABASE_URL").map_err(|_| {
        anyhow::anyhow!(
            "set DATABASE_URL to a PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432/test"
        )
    })?;
    println!(
        "registration: {} rounds of one hot event, {} registrations each, {} concurrent clients",
        args.rounds, args.registrations, args.clients
    );
    let baseline = Baseline::start(&base, &args).await?;
    let convene = Convene::start(&base, &args).await?;
    // The sides take turns, round by round, so a machine that speeds up or slows down during
    // the run weighs on both alike. Each round starts once the one before has settled: the
    // node's work that follows a round (relaying, indexing) does not run into the next.
    let (mut base_runs, mut convene_runs) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        base_runs.push(baseline.round(&args).await?);
        tokio::time::sleep(SETTLE).await;
        convene_runs.push(convene.round(&args).await?);
        tokio::time::sleep(SETTLE).await;
    }
    convene.stop(&base).await;
    baseline.stop(&base).await;
    let (base_run, convene_run) = (
        convene_bench::Run::merge(&base_runs),
        convene_bench::Run::merge(&convene_runs),
    );
    report("registrations", convene_run, "postgres-only", base_run, 8.0);
    Ok(())
}

//! Recommendations on the synthetic set with planted structure (seeded; 10,000 users, 5,000
//! events, 500,000 interactions by default): the offline evaluation table of every engine, the
//! hybrid and the popularity baseline; the training time, alone and inside a node (reading the
//! data from PostgreSQL, evaluating, storing, loading); and `GET /users/me/recommendations`
//! under 32 concurrent clients against an authenticated read of `/users/me` through the same
//! edge, run in turns; then the same for users who did something since the model was trained,
//! whose recommendations are scored as they ask rather than worked out at training time.
//! Targets: training under 60 s, p99 under 20 ms. Needs `DATABASE_URL` naming a PostgreSQL
//! server.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use clap::Parser;
use convene_actors::model::{Role, User};
use convene_actors::recommend::eval::evaluate;
use convene_actors::recommend::synthetic::{Shape, generate};
use convene_actors::recommend::{Engine, Model, Settings};
use convene_bench::{Run, drive, drop_postgres, fresh_postgres, http_client, start_node_with};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
struct Args {
    /// The synthetic set's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Users.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Events.
    #[arg(long, default_value_t = 5_000)]
    events: usize,
    /// Interactions.
    #[arg(long, default_value_t = 500_000)]
    interactions: usize,
    /// Requests per side of the load run.
    #[arg(long, default_value_t = 5_000)]
    requests: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Skips the offline evaluation and the training alone (to look at serving only).
    #[arg(long)]
    serving_only: bool,
}

/// Users given an interaction after training, so their recommendations are scored live.
const LIVE_USERS: usize = 500;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = std::env::var("DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("DATABASE_URL must name a PostgreSQL server"))?;
    let shape = Shape {
        users: args.users,
        events: args.events,
        interactions: args.interactions,
    };
    let data = generate(args.seed, shape);
    println!(
        "recommend: synthetic seed {}: {} users, {} events, {} interactions",
        args.seed, args.users, args.events, args.interactions
    );

    if !args.serving_only {
        offline(&data.items, &data.interactions)?;
    }
    serve(&args, &base, &data).await
}

/// The offline evaluation, and the training alone.
fn offline(
    items: &[convene_actors::recommend::Item],
    interactions: &[convene_actors::recommend::Interaction],
) -> anyhow::Result<()> {
    let started = Instant::now();
    let eval = evaluate(
        items,
        interactions,
        Settings::default(),
        usize::MAX,
        |_| {},
        |_| {},
    );
    println!("evaluation ({:.1} s):", started.elapsed().as_secs_f64());
    print!("{}", convene::recommend::table(&eval));
    drop(eval);

    // Training alone.
    let started = Instant::now();
    let model = Model::train(items, interactions, Settings::default(), 0, |_| {});
    let alone = started.elapsed();
    let bytes = model.to_bytes()?.len();
    let users = model.users().min(2000) as i64;
    let started = Instant::now();
    for user in 1..=users {
        let profile = model.trained_profile(user);
        std::hint::black_box(model.rank(Engine::Hybrid, &profile, 50, |_, _| true));
    }
    println!(
        "scoring alone (the hybrid's top 50 of {} events): {:.2} ms per user",
        model.items.len(),
        ms(started.elapsed()) / users as f64
    );
    drop(model);
    println!(
        "training alone: {:.1} s, model {:.1} MB (target < 60 s)",
        alone.as_secs_f64(),
        bytes as f64 / 1e6
    );
    Ok(())
}

/// A node on PostgreSQL with the data set, trained in place and put under load.
async fn serve(
    args: &Args,
    base: &str,
    data: &convene_actors::recommend::synthetic::Synthetic,
) -> anyhow::Result<()> {
    // A node on PostgreSQL holding the same data, with events moved into the future.
    let url = fresh_postgres(base, "recommend").await?;
    let node = start_node_with(
        Some(&url),
        &[
            ("CONVENE_RECOMMEND_RETRAIN_SECS", "86400"),
            ("CONVENE_RECOMMEND_RETRAIN_AFTER", "100000000"),
        ],
    )
    .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, name) \
         SELECT i, 'user' || i || '@example.com', 'x', 'User ' || i FROM generate_series(1, $1) AS i",
    )
    .bind(args.users as i64)
    .execute(&pool)
    .await?;
    sqlx::query("SELECT setval('users_id_seq', $1)")
        .bind(args.users as i64)
        .execute(&pool)
        .await?;
    let epoch = Utc
        .timestamp_opt(1_767_225_600, 0)
        .single()
        .unwrap_or_default();
    let shift = Utc::now() - epoch + chrono::Duration::days(1);
    for chunk in data.items.chunks(2000) {
        sqlx::query(
            "INSERT INTO events (id, title, description, date, location, latitude, longitude, \
             capacity, category, tags, price_cents, created_by) \
             SELECT i, t, d, dt, 'somewhere', la, lo, 1000, c, to_jsonb(string_to_array(g, ';')), p, o \
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::float8[], \
             $6::float8[], $7::text[], $8::text[], $9::bigint[], $10::bigint[]) \
             AS u(i, t, d, dt, la, lo, c, g, p, o)",
        )
        .bind(chunk.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.title.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.description.clone()).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|e| Utc.timestamp_opt(e.date, 0).single().unwrap_or_default() + shift)
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|e| e.lat.unwrap_or(0.0)).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.lon.unwrap_or(0.0)).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.category.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.tags.join(";")).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.price_cents).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.created_by).collect::<Vec<_>>())
        .execute(&pool)
        .await?;
    }
    sqlx::query("SELECT setval('events_id_seq', $1)")
        .bind(args.events as i64)
        .execute(&pool)
        .await?;
    for chunk in data.interactions.chunks(50_000) {
        sqlx::query(
            "INSERT INTO interactions (user_id, event_id, kind, occurred_at) \
             SELECT u, e, k, to_timestamp(t) FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], \
             $4::float8[]) AS x(u, e, k, t)",
        )
        .bind(chunk.iter().map(|i| i.user_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|i| i.event_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|i| i.kind.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|i| i.ts as f64).collect::<Vec<_>>())
        .execute(&pool)
        .await?;
    }
    sqlx::query("ANALYZE").execute(&pool).await?;
    println!(
        "loaded into PostgreSQL in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Training inside the node: read, evaluate, train, store, load.
    let started = Instant::now();
    node.app.store.request_training().await?;
    let newest = node.app.store.last_interaction().await?;
    // A model of every interaction (one may have started while the data was loading).
    while node
        .app
        .models
        .current()
        .is_none_or(|m| m.last_interaction < newest)
    {
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("no model within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "training in the node (read, evaluate, train, store, load): {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The load: recommendations against an authenticated read, in turns.
    let tokens: Vec<String> = (1..=args.users as i64)
        .map(|id| {
            let user = User {
                id,
                email: format!("user{id}@example.com"),
                name: format!("User {id}"),
                role: Role::User,
                profile: serde_json::json!({}),
                version: 1,
                created_at: Utc::now(),
                updated_at: Utc::now(),
            };
            node.app.auth.issue(&user).map(|(t, _)| t)
        })
        .collect::<anyhow::Result<_>>()?;
    let client = http_client(args.clients);
    let base_url = node.url();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut rng_live = StdRng::seed_from_u64(args.seed + 1);
    let mut picks = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| tokens[rng.random_range(0..tokens.len())].clone())
            .collect()
    };
    let run = |path: &'static str, jobs: Vec<String>| {
        let (client, base_url) = (client.clone(), base_url.clone());
        drive(args.clients, jobs, move |token: String| {
            let (client, url) = (client.clone(), format!("{base_url}{path}"));
            async move {
                matches!(
                    client.get(url).bearer_auth(token).send().await,
                    Ok(r) if r.status().is_success()
                )
            }
        })
    };
    // Warm the connections and every user's actor (a user's first request activates it, which
    // reads the account: the same cost on both sides, and not what this bench measures).
    let mut everyone = tokens.clone();
    everyone.shuffle(&mut StdRng::seed_from_u64(args.seed + 2));
    let _ = run("/api/v1/users/me", everyone).await;
    let mut recs: Vec<Run> = Vec::new();
    let mut reads: Vec<Run> = Vec::new();
    for _ in 0..2 {
        reads.push(run("/api/v1/users/me", picks(args.requests / 2)).await);
        recs.push(
            run(
                "/api/v1/users/me/recommendations?limit=10",
                picks(args.requests / 2),
            )
            .await,
        );
    }
    // Users who did something since the model was trained are scored as they ask (fewer than
    // the interactions that start a new training).
    let active: Vec<String> = tokens[..LIVE_USERS.min(tokens.len())].to_vec();
    sqlx::query(
        "INSERT INTO interactions (user_id, event_id, kind, occurred_at) \
         SELECT u, 1 + u % $2, 'view', NOW() FROM generate_series(1, $1::bigint) AS u",
    )
    .bind(active.len() as i64)
    .bind(args.events as i64)
    .execute(&pool)
    .await?;
    // Written behind the node's back: its follower of the interactions sees them within its
    // period.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut scored: Vec<Run> = Vec::new();
    for _ in 0..2 {
        let jobs: Vec<String> = (0..args.requests / 2)
            .map(|_| active[rng_live.random_range(0..active.len())].clone())
            .collect();
        scored.push(run("/api/v1/users/me/recommendations?limit=10", jobs).await);
    }
    let (r, b, s) = (Run::merge(&recs), Run::merge(&reads), Run::merge(&scored));
    println!(
        "GET /users/me/recommendations, {} clients: {:.0}/s ({} ok, {} failed), p50 {:.2} ms, p99 {:.2} ms (target p99 < 20 ms)",
        args.clients,
        r.rate(),
        r.ok,
        r.failed,
        ms(r.p50),
        ms(r.p99)
    );
    println!(
        "  of users active since the model (scored as they ask), {} clients: {:.0}/s ({} ok, {} failed), p50 {:.2} ms, p99 {:.2} ms",
        args.clients,
        s.rate(),
        s.ok,
        s.failed,
        ms(s.p50),
        ms(s.p99)
    );
    println!(
        "GET /users/me (baseline), {} clients: {:.0}/s ({} ok, {} failed), p50 {:.2} ms, p99 {:.2} ms",
        args.clients,
        b.rate(),
        b.ok,
        b.failed,
        ms(b.p50),
        ms(b.p99)
    );
    println!(
        "ratio: throughput {:.2} of the baseline, p99 {:.2}x the baseline's",
        r.rate() / b.rate(),
        r.p99.as_secs_f64() / b.p99.as_secs_f64().max(1e-9)
    );
    // The recommender's own share of an answer (no edge, no cache): its latency histogram.
    for algorithm in ["precomputed", "hybrid", "popular_near_you"] {
        let h = node
            .app
            .metrics
            .recommendation_latency
            .with_label_values(&[algorithm]);
        let n = h.get_sample_count();
        if n > 0 {
            let metric = prometheus::core::Metric::metric(&h);
            let over: Vec<String> = metric
                .get_histogram()
                .get_bucket()
                .iter()
                .filter(|b| [0.005, 0.01, 0.02].contains(&b.upper_bound()))
                .map(|b| {
                    let above = n - b.cumulative_count();
                    format!(
                        "{:.1}% over {} ms",
                        above as f64 * 100.0 / n as f64,
                        b.upper_bound() * 1000.0
                    )
                })
                .collect();
            println!(
                "  inside the recommender, {algorithm}: {n} answers, mean {:.2} ms, {}",
                h.get_sample_sum() * 1000.0 / n as f64,
                over.join(", ")
            );
        }
    }
    node.shutdown().await;
    pool.close().await;
    drop_postgres(base, &url).await;
    Ok(())
}

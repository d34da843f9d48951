//! Search: 100,000 generated events (seeded: titles, descriptions, tags, categories, prices and
//! places around twenty cities) indexed by Convene's search index and loaded into PostgreSQL
//! with a `tsvector` GIN index (title weighted A, description and tags B) and a distance filter
//! (a latitude/longitude box on a B-tree, then the haversine formula). The same mixed queries
//! (text, text + geo, text + category with facet counts, geo only) run against both, one at a
//! time; prints p50/p99 of each, the p99 ratio (target: Convene at least 5× better), the index
//! build time and size. Convene is called in process, PostgreSQL over its socket. Needs
//! `DATABASE_URL` naming a PostgreSQL server; makes and drops its own database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use convene::search::SearchIndex;
use convene::search::query::{SearchRequest, Sort};
use convene::store::Position;
use convene_actors::model::{Category, Event};
use convene_bench::{drop_postgres, fresh_postgres};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
struct Args {
    /// Events generated.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Queries of each kind.
    #[arg(long, default_value_t = 200)]
    queries: usize,
}

const WORDS: &[&str] = &[
    "rust",
    "python",
    "design",
    "startup",
    "jazz",
    "painting",
    "football",
    "marathon",
    "yoga",
    "cooking",
    "wine",
    "photography",
    "robotics",
    "climate",
    "finance",
    "marketing",
    "poetry",
    "theatre",
    "cinema",
    "chess",
    "cycling",
    "hiking",
    "swimming",
    "tennis",
    "data",
    "cloud",
    "security",
    "blockchain",
    "music",
    "dance",
    "sculpture",
    "history",
    "science",
    "astronomy",
    "gardening",
    "writing",
    "networking",
    "leadership",
    "investing",
    "architecture",
    "ceramics",
    "workshop",
    "conference",
    "meetup",
    "festival",
    "concert",
    "exhibition",
    "tournament",
    "class",
    "seminar",
    "night",
    "morning",
    "weekend",
    "beginners",
    "advanced",
    "community",
    "open",
    "summer",
    "winter",
    "city",
    "river",
    "garden",
    "studio",
    "market",
    "local",
    "global",
    "kids",
    "family",
    "students",
    "professionals",
    "free",
    "evening",
    "talks",
    "hands",
    "session",
];
const CITIES: &[(f64, f64)] = &[
    (48.8566, 2.3522),
    (45.764, 4.8357),
    (43.2965, 5.3698),
    (51.5074, -0.1278),
    (52.52, 13.405),
    (41.3874, 2.1686),
    (40.4168, -3.7038),
    (45.4642, 9.19),
    (50.8503, 4.3517),
    (52.3676, 4.9041),
    (47.3769, 8.5417),
    (48.2082, 16.3738),
    (50.0755, 14.4378),
    (59.3293, 18.0686),
    (55.6761, 12.5683),
    (38.7223, -9.1393),
    (53.3498, -6.2603),
    (60.1699, 24.9384),
    (44.8378, -0.5792),
    (43.6047, 1.4442),
];
const CATEGORIES: [Category; 4] = [
    Category::Tech,
    Category::Business,
    Category::Arts,
    Category::Sports,
];

fn words(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn generate(n: usize) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(42);
    let now = Utc::now();
    (1..=n as i64)
        .map(|id| {
            let city = CITIES[rng.random_range(0..CITIES.len())];
            let title_len = rng.random_range(3..7);
            let description_len = rng.random_range(20..60);
            Event {
                id,
                title: words(&mut rng, title_len),
                description: words(&mut rng, description_len),
                date: now + chrono::Duration::minutes(rng.random_range(60..525_600)),
                location: "somewhere".into(),
                latitude: Some(city.0 + rng.random_range(-0.3..0.3)),
                longitude: Some(city.1 + rng.random_range(-0.3..0.3)),
                capacity: 100,
                registered_count: 0,
                category: CATEGORIES[rng.random_range(0..4)],
                tags: (0..rng.random_range(0..4))
                    .map(|_| WORDS[rng.random_range(0..40)].to_owned())
                    .collect(),
                price_cents: rng.random_bool(0.6).then(|| rng.random_range(100..20_000)),
                created_by: 1,
                version: 1,
                created_at: now,
                updated_at: now,
                deleted_at: None,
            }
        })
        .collect()
}

#[derive(Clone)]
struct Query {
    q: String,
    geo: Option<((f64, f64), f64)>,
    category: Option<Category>,
}

fn queries(n: usize) -> Vec<Query> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = Vec::new();
    for kind in 0..4 {
        for _ in 0..n {
            let n = rng.random_range(1..3);
            let q = if kind == 3 {
                String::new()
            } else {
                words(&mut rng, n)
            };
            let geo = (kind == 1 || kind == 3).then(|| {
                (
                    CITIES[rng.random_range(0..CITIES.len())],
                    if kind == 1 { 50.0 } else { 25.0 },
                )
            });
            let category = (kind == 2).then(|| CATEGORIES[rng.random_range(0..4)]);
            out.push(Query { q, geo, category });
        }
    }
    out
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = std::env::var("DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("DATABASE_URL must name a PostgreSQL server"))?;
    let events = generate(args.events);
    let queries = queries(args.queries);
    println!(
        "search: {} events, {} queries of each of 4 kinds",
        events.len(),
        args.queries
    );

    // Convene's index.
    let dir = std::env::temp_dir().join(format!("convene-bench-search-{}", uuid::Uuid::new_v4()));
    let index = Arc::new(SearchIndex::open(&dir)?);
    let started = Instant::now();
    let mut pages = events.chunks(5000).map(<[Event]>::to_vec);
    index.rebuild(
        Position::default(),
        || Ok(pages.next().unwrap_or_default()),
        |_| {},
    )?;
    let convene_build = started.elapsed();
    let convene_size = dir_size(&dir);

    // PostgreSQL.
    let url = fresh_postgres(&base, "search").await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    sqlx::query(
        "CREATE TABLE ev (id BIGINT PRIMARY KEY, title TEXT, description TEXT, tags TEXT, \
         category TEXT, price_cents BIGINT, date TIMESTAMPTZ, lat FLOAT8, lon FLOAT8, \
         tsv TSVECTOR GENERATED ALWAYS AS (setweight(to_tsvector('english', title), 'A') || \
         setweight(to_tsvector('english', description || ' ' || tags), 'B')) STORED)",
    )
    .execute(&pool)
    .await?;
    let started = Instant::now();
    for chunk in events.chunks(5000) {
        sqlx::query(
            "INSERT INTO ev (id, title, description, tags, category, price_cents, date, lat, lon) \
             SELECT i, t, d, g, c, p, dt, la, lo FROM UNNEST($1::bigint[], \
             $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::timestamptz[], \
             $8::float8[], $9::float8[]) AS u(i, t, d, g, c, p, dt, la, lo)",
        )
        .bind(chunk.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.title.clone()).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|e| e.description.clone())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|e| e.tags.join(" ")).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|e| e.category.as_str().to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|e| e.price_cents.unwrap_or(0))
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|e| e.date).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|e| e.latitude.unwrap_or(0.0))
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|e| e.longitude.unwrap_or(0.0))
                .collect::<Vec<_>>(),
        )
        .execute(&pool)
        .await?;
    }
    for ddl in [
        "CREATE INDEX ev_tsv ON ev USING GIN (tsv)",
        "CREATE INDEX ev_date ON ev (date)",
        "CREATE INDEX ev_geo ON ev (lat, lon)",
        "ANALYZE ev",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(ddl)).execute(&pool).await?;
    }
    let pg_build = started.elapsed();
    let (pg_size,): (i64,) = sqlx::query_as("SELECT pg_total_relation_size('ev')")
        .fetch_one(&pool)
        .await?;

    let mut convene_times = Vec::new();
    let mut pg_times = Vec::new();
    for query in &queries {
        let request = SearchRequest {
            q: query.q.clone(),
            point: query.geo.map(|g| g.0),
            radius_km: query.geo.map(|g| g.1),
            categories: query.category.into_iter().collect(),
            tags: Vec::new(),
            from: None,
            to: None,
            price_min: None,
            price_max: None,
            sort: if query.q.is_empty() {
                Sort::Distance
            } else {
                Sort::Relevance
            },
            limit: 20,
            offset: 0,
            after: None,
            include_past: false,
            now: Utc::now(),
        };
        let started = Instant::now();
        std::hint::black_box(index.search(&request)?);
        convene_times.push(started.elapsed());

        let started = Instant::now();
        let (lat, lon, radius) = query.geo.map_or((0.0, 0.0, -1.0), |((a, b), r)| (a, b, r));
        let dlat = radius / 111.2;
        let dlon = radius / (111.2 * lat.to_radians().cos().max(0.01));
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "WITH m AS (SELECT id, date, category, \
               CASE WHEN $1 = '' THEN 0 ELSE ts_rank(tsv, plainto_tsquery('english', $1)) END AS rank, \
               2 * 6371.0088 * asin(sqrt(power(sin(radians(lat - $2) / 2), 2) + cos(radians($2)) * \
                 cos(radians(lat)) * power(sin(radians(lon - $3) / 2), 2))) AS km \
             FROM ev WHERE date >= NOW() \
               AND ($1 = '' OR tsv @@ plainto_tsquery('english', $1)) \
               AND ($4 < 0 OR (lat BETWEEN $2 - $5 AND $2 + $5 AND lon BETWEEN $3 - $6 AND $3 + $6))), \
             f AS (SELECT * FROM m WHERE $4 < 0 OR km <= $4) \
             SELECT id, COUNT(*) OVER () FROM f WHERE ($7::text IS NULL OR category = $7) \
             ORDER BY CASE WHEN $1 = '' THEN km ELSE -rank END, date, id LIMIT 20",
        )
        .bind(&query.q)
        .bind(lat)
        .bind(lon)
        .bind(radius)
        .bind(dlat)
        .bind(dlon)
        .bind(query.category.map(Category::as_str))
        .fetch_all(&pool)
        .await?;
        std::hint::black_box(rows);
        if query.category.is_some() {
            // The facet the filter leaves out: counts per category over the text match.
            let facet: Vec<(String, i64)> = sqlx::query_as(
                "SELECT category, COUNT(*) FROM ev WHERE date >= NOW() \
                 AND tsv @@ plainto_tsquery('english', $1) GROUP BY category",
            )
            .bind(&query.q)
            .fetch_all(&pool)
            .await?;
            std::hint::black_box(facet);
        }
        pg_times.push(started.elapsed());
    }
    let (c50, c99) = percentiles(convene_times);
    let (p50, p99) = percentiles(pg_times);
    println!(
        "build: convene index {:.1} s, {:.1} MB | postgresql load + indexes {:.1} s, {:.1} MB",
        convene_build.as_secs_f64(),
        convene_size as f64 / 1e6,
        pg_build.as_secs_f64(),
        pg_size as f64 / 1e6
    );
    println!(
        "latency: convene p50 {c50:.2} ms, p99 {c99:.2} ms | postgresql p50 {p50:.2} ms, p99 {p99:.2} ms | p99 ratio {:.1}x (target >= 5x)",
        p99 / c99.max(1e-9)
    );
    index.close()?;
    drop(pool);
    drop_postgres(&base, &url).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

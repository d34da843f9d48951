//! Domain events through the outbox relay, to NATS JetStream and to Kafka, next to a bare
//! publish loop with the same payloads in the same run: a bare `async-nats` JetStream publish
//! loop (message ids set, acknowledgements awaited per batch) and a bare `rdkafka` idempotent
//! produce loop. Prints events/s of each and their ratio (target: the relay reaches at least
//! half the bare loop), then the latency from commit to a subscriber, p50 and p99, beside the
//! bare publish → subscriber latency (target: p50 under 10 ms to NATS). Each side's throughput
//! is run twice, alternating with the other, and counted over both runs.
//!
//! Throughput: a node starts on a fresh PostgreSQL database with the bus while the bench holds
//! the relay lease, so the node sets its bus up but relays nothing; the outbox is filled with
//! `--events` rows (one `events.created` per event, so many entities); the clock starts when
//! the bench gives the lease up (once the node's search indexer has taken the rows and the
//! node is idle, so that the two do not share the cores) and runs until the relay's cursor is
//! past every row. Needs `DATABASE_URL` (PostgreSQL), NATS at `NATS_URL` and Kafka at
//! `KAFKA_BROKERS` (`scripts/services up` starts both).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use clap::Parser;
use convene_bench::{create_event, drop_postgres, fresh_postgres, http_client, sign_up};
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
struct Args {
    /// Domain events per throughput run.
    #[arg(long, default_value_t = 30_000)]
    events: usize,
    /// Rows the relay takes per round; the bare loops send batches of this size too.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Events created one after the other for the latency runs.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Partitions of the Kafka topics, the relay's and the bare loop's alike.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bus {
    Nats,
    Kafka,
}

impl Bus {
    fn name(self) -> &'static str {
        match self {
            Bus::Nats => "nats",
            Bus::Kafka => "kafka",
        }
    }
}

struct Item {
    id: uuid::Uuid,
    entity: i64,
    body: Value,
}

fn items(n: usize) -> Vec<Item> {
    let at = chrono::Utc::now();
    (0..n)
        .map(|i| {
            let id = i as i64 + 1;
            Item {
                id: uuid::Uuid::new_v4(),
                entity: id,
                body: json!({
                    "id": id, "title": "Benchmark night", "description": "Talks, then pizza and a long queue",
                    "date": at, "location": "Loopback, 127.0.0.1", "latitude": 45.76, "longitude": 4.83,
                    "capacity": 100, "registered_count": 0, "category": "tech", "tags": ["rust", "bench"],
                    "price_cents": 1050, "created_by": 1, "version": 1, "created_at": at, "updated_at": at,
                }),
            }
        })
        .collect()
}

/// The envelope the relay would send for `item`, for the bare loops.
fn envelope(item: &Item) -> Vec<u8> {
    json!({"type": "events.created", "version": 1, "id": item.id, "occurred_at": chrono::Utc::now(), "data": item.body})
        .to_string()
        .into_bytes()
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn bus_env(bus: Bus, prefix: &str, stream: &str, args: &Args) -> Vec<(String, String)> {
    let (key, value) = match bus {
        Bus::Nats => ("CONVENE_NATS_URL", nats_url()),
        Bus::Kafka => ("CONVENE_KAFKA_BROKERS", kafka_brokers()),
    };
    vec![
        (key.to_owned(), value),
        ("CONVENE_BUS_PREFIX".to_owned(), prefix.to_owned()),
        ("CONVENE_NATS_STREAM".to_owned(), stream.to_owned()),
        ("CONVENE_OUTBOX_BATCH".to_owned(), args.batch.to_string()),
        // The relay looks for the lease every 40 ms.
        ("CONVENE_RELAY_LEASE_MS".to_owned(), "200".to_owned()),
        (
            "CONVENE_KAFKA_PARTITIONS".to_owned(),
            args.partitions.to_string(),
        ),
    ]
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

async fn start(url: &str, env: &[(String, String)]) -> anyhow::Result<convene::node::Node> {
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    convene_bench::start_node_with(Some(url), &extra).await
}

/// Events/s of the relay draining a full outbox to `bus`.
async fn relay_throughput(base: &str, bus: Bus, args: &Args) -> anyhow::Result<f64> {
    let url = fresh_postgres(base, "bus").await?;
    // Migrations first, then the rows, then the node that relays them.
    drop(convene::store::SqlStore::postgres(&url, 2).await?);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    // The node starts first and sets its buses up (stream, topics, connections) while a
    // holder of the bench's own keeps the relay lease; the outbox is filled meanwhile; the
    // clock starts when the lease is given up, as the baselines' clocks start after their
    // set-up. The curator's and the analytics feeder's leases stay with the bench: they
    // follow the same rows (the curator stores a curation per created event), and the clock
    // measures the relay, not three consumers sharing two cores.
    sqlx::query(
        "INSERT INTO leases (name, holder, expires_at) \
         SELECT name, 'bench', NOW() + INTERVAL '1 hour' \
         FROM UNNEST(ARRAY['relay', 'curator', 'analytics']) AS l(name)",
    )
    .execute(&pool)
    .await?;
    let env = bus_env(
        bus,
        &format!("b{}.", unique()),
        &format!("B{}", unique()),
        args,
    );
    let node = start(&url, &env).await?;
    let all = items(args.events);
    for chunk in all.chunks(1000) {
        let mut qb = sqlx::QueryBuilder::new(
            "INSERT INTO outbox (message_id, topic, entity_key, payload, occurred_at) ",
        );
        qb.push_values(chunk, |mut row, item| {
            row.push_bind(item.id)
                .push_bind("events.created")
                .push_bind(format!("event/{}", item.entity))
                .push_bind(sqlx::types::Json(&item.body))
                .push_bind(chrono::Utc::now());
        });
        qb.build().execute(&pool).await?;
    }
    // The node's search indexer takes the same rows, and its segments are merged after; both
    // are left to finish first, so the clock measures the relay and not two consumers sharing
    // two cores.
    let waited = Instant::now();
    while node.app.search.len() < args.events as u64 {
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(300),
            "the search index did not take the events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settle().await?;
    let started = Instant::now();
    sqlx::query("DELETE FROM leases WHERE name = 'relay'")
        .execute(&pool)
        .await?;
    // A light probe, not too often: the clock must not measure this loop's load on the
    // database (a COUNT over the outbox every few milliseconds halves the relay's rate).
    loop {
        let (left,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM outbox o JOIN outbox_cursors c ON c.name = 'relay' \
                 WHERE (o.xid, o.id) > (c.xid, c.id))",
        )
        .fetch_one(&pool)
        .await?;
        if !left {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the relay did not drain the outbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = args.events as f64 / started.elapsed().as_secs_f64();
    node.shutdown().await;
    pool.close().await;
    drop_postgres(base, &url).await;
    Ok(rate)
}

/// This process's CPU time so far (user and system, every thread), from `/proc/self/stat`,
/// whose clock ticks are 1/100 s on Linux.
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/self/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("unexpected /proc/self/stat"))?
            .parse()?)
    };
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// Waits until the node in this process is idle (under a tenth of a core over half a second),
/// so that background work it started (index merges, caches warming) is not in a clock.
async fn settle() -> anyhow::Result<()> {
    let window = Duration::from_millis(500);
    let waited = Instant::now();
    loop {
        let before = cpu_time()?;
        tokio::time::sleep(window).await;
        if cpu_time()? - before < window / 10 {
            return Ok(());
        }
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(120),
            "the node did not settle"
        );
    }
}

/// Events/s of a bare JetStream publish loop, batches pipelined, acknowledgements awaited.
async fn bare_nats(args: &Args) -> anyhow::Result<f64> {
    let client = async_nats::connect(nats_url()).await?;
    let js = jetstream::new(client);
    let name = format!("BARE{}", unique());
    let subject = format!("bare{}.events.created", unique());
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await?;
    let all = items(args.events);
    let bodies: Vec<Vec<u8>> = all.iter().map(envelope).collect();
    let started = Instant::now();
    for (chunk, bodies) in all.chunks(args.batch).zip(bodies.chunks(args.batch)) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (item, body) in chunk.iter().zip(bodies) {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                item.id.to_string().as_str(),
            );
            headers.insert("Convene-Entity", format!("event/{}", item.entity).as_str());
            acks.push(
                js.publish_with_headers(subject.clone(), headers, body.clone().into())
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
    }
    let rate = args.events as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(&name).await?;
    Ok(rate)
}

fn producer() -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()?)
}

/// Events/s of a bare idempotent produce loop (the relay's records: key, payload and headers),
/// deliveries awaited per batch.
async fn bare_kafka(args: &Args) -> anyhow::Result<f64> {
    let producer = producer()?;
    let topic = format!("bare{}.events", unique());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()?;
    admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                args.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    let all = items(args.events);
    let bodies: Vec<Vec<u8>> = all.iter().map(envelope).collect();
    // The producer's first record meets the topic; keep that out of the clock.
    producer
        .send(
            FutureRecord::to(&topic).key("0").payload("warm-up"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    let started = Instant::now();
    for (chunk, bodies) in all.chunks(args.batch).zip(bodies.chunks(args.batch)) {
        let mut deliveries = Vec::with_capacity(chunk.len());
        for (item, body) in chunk.iter().zip(bodies) {
            let key = item.entity.to_string();
            // The headers the relay sends: the same records, not lighter ones.
            let id = item.id.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "message_id",
                    value: Some(id.as_str()),
                })
                .insert(Header {
                    key: "type",
                    value: Some("events.created"),
                });
            let record = FutureRecord::to(&topic)
                .key(&key)
                .payload(body)
                .headers(headers);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for d in deliveries {
            d.await?.map_err(|(e, _)| e)?;
        }
    }
    Ok(args.events as f64 / started.elapsed().as_secs_f64())
}

fn quantiles(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort_unstable();
    let at = |q: f64| {
        times
            .get(((times.len().max(1) - 1) as f64 * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    (at(0.5), at(0.99))
}

/// Commit → subscriber: events created one at a time over HTTP, each awaited at a subscriber
/// before the next; the commit time is the envelope's `occurred_at` (stamped just before it).
async fn relay_latency(base: &str, bus: Bus, args: &Args) -> anyhow::Result<(f64, f64)> {
    let url = fresh_postgres(base, "buslat").await?;
    let prefix = format!("l{}.", unique());
    let env = bus_env(bus, &prefix, &format!("L{}", unique()), args);
    let node = start(&url, &env).await?;
    let client = http_client(4);
    let (_, token) = sign_up(&client, &node.url(), "latency@example.com").await?;
    let mut times = Vec::with_capacity(args.samples);
    match bus {
        Bus::Nats => {
            let nats = async_nats::connect(nats_url()).await?;
            let mut sub = nats.subscribe(format!("{prefix}events.created")).await?;
            nats.flush().await?;
            for _ in 0..args.samples {
                create_event(&client, &node.url(), &token, 10).await?;
                let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("the subscription ended"))?;
                times.push(since_occurred(&m.payload)?);
            }
        }
        Bus::Kafka => {
            let consumer: StreamConsumer = ClientConfig::new()
                .set("bootstrap.servers", kafka_brokers())
                .set("group.id", format!("{prefix}latency"))
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "5")
                .create()?;
            consumer.subscribe(&[&format!("{prefix}events")])?;
            let mut records = consumer.stream();
            // The first one waits for the topic and the group: not counted.
            create_event(&client, &node.url(), &token, 10).await?;
            tokio::time::timeout(Duration::from_secs(60), records.next()).await?;
            for _ in 0..args.samples {
                create_event(&client, &node.url(), &token, 10).await?;
                let m = tokio::time::timeout(Duration::from_secs(10), records.next())
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("the consumer ended"))??;
                times.push(since_occurred(m.payload().unwrap_or_default())?);
            }
        }
    }
    node.shutdown().await;
    drop_postgres(base, &url).await;
    Ok(quantiles(times))
}

fn since_occurred(envelope: &[u8]) -> anyhow::Result<Duration> {
    let v: Value = serde_json::from_slice(envelope)?;
    let at: chrono::DateTime<chrono::Utc> = serde_json::from_value(v["occurred_at"].clone())?;
    Ok((chrono::Utc::now() - at).to_std().unwrap_or_default())
}

/// Bare publish → subscriber, one message at a time, same payloads.
async fn bare_latency(bus: Bus, args: &Args) -> anyhow::Result<(f64, f64)> {
    let all = items(args.samples);
    let mut times = Vec::with_capacity(args.samples);
    match bus {
        Bus::Nats => {
            let client = async_nats::connect(nats_url()).await?;
            let js = jetstream::new(client.clone());
            let name = format!("BARELAT{}", unique());
            let subject = format!("barelat{}.events.created", unique());
            js.create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                ..Default::default()
            })
            .await?;
            let mut sub = client.subscribe(subject.clone()).await?;
            client.flush().await?;
            for item in &all {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    item.id.to_string().as_str(),
                );
                js.publish_with_headers(subject.clone(), headers, envelope(item).into())
                    .await?
                    .await?;
                let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("the subscription ended"))?;
                times.push(since_occurred(&m.payload)?);
            }
            js.delete_stream(&name).await?;
        }
        Bus::Kafka => {
            let producer = producer()?;
            let topic = format!("barelat{}.events", unique());
            let consumer: StreamConsumer = ClientConfig::new()
                .set("bootstrap.servers", kafka_brokers())
                .set("group.id", format!("{topic}-latency"))
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "5")
                .create()?;
            producer
                .send(
                    FutureRecord::to(&topic).key("0").payload("warm-up"),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)?;
            consumer.subscribe(&[&topic])?;
            let mut records = consumer.stream();
            tokio::time::timeout(Duration::from_secs(60), records.next()).await?;
            for item in &all {
                let key = item.entity.to_string();
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&envelope(item)),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)?;
                let m = tokio::time::timeout(Duration::from_secs(10), records.next())
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("the consumer ended"))??;
                times.push(since_occurred(m.payload().unwrap_or_default())?);
            }
        }
    }
    Ok(quantiles(times))
}

/// The rate over runs of equal size: events over the summed time.
fn pooled(rates: &[f64]) -> f64 {
    rates.len() as f64 / rates.iter().map(|r| 1.0 / r).sum::<f64>()
}

fn runs(rates: &[f64]) -> String {
    rates
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
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
        "bus: {} domain events per run (events.created, one per entity), batches of {}, {} Kafka partitions",
        args.events, args.batch, args.partitions
    );
    for bus in [Bus::Nats, Bus::Kafka] {
        // Each side runs twice, alternating, and is counted over both runs (events over the
        // summed time), so one lucky or unlucky run on a shared machine does not decide.
        let (mut relay, mut bare) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            bare.push(match bus {
                Bus::Nats => bare_nats(&args).await?,
                Bus::Kafka => bare_kafka(&args).await?,
            });
            relay.push(relay_throughput(&base, bus, &args).await?);
        }
        let (relay_all, bare_all) = (pooled(&relay), pooled(&bare));
        println!(
            "{} throughput: relay {relay_all:.0} events/s ({}) | bare loop {bare_all:.0} events/s ({}) | ratio {:.2} (target >= 0.5)",
            bus.name(),
            runs(&relay),
            runs(&bare),
            relay_all / bare_all
        );
        let (p50, p99) = relay_latency(&base, bus, &args).await?;
        let (bare50, bare99) = bare_latency(bus, &args).await?;
        let target = if bus == Bus::Nats {
            " (target: p50 < 10 ms)"
        } else {
            ""
        };
        println!(
            "{} latency: commit -> subscriber p50 {p50:.2} ms, p99 {p99:.2} ms{target} | bare publish -> subscriber p50 {bare50:.2} ms, p99 {bare99:.2} ms",
            bus.name()
        );
    }
    Ok(())
}

//! Smoke tests of the services `scripts/services up` brings up: one real round trip each, so a
//! broken bring-up shows as a red test with its cause rather than as a hang in a later test.
//! Each server is found through its environment variable (`DATABASE_URL`, `REDIS_URL`,
//! `NATS_URL`, `KAFKA_BROKERS`) or at its usual address on 127.0.0.1.

use std::time::Duration;

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::Connection;

use crate::helpers::{service_url, unavailable};

/// Longer than any healthy round trip here (a Kafka consumer group's first join included), short
/// enough that a server that accepts connections and never answers fails the test.
const DEADLINE: Duration = Duration::from_secs(60);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn within<T>(what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, work)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE:?}"))
}

#[tokio::test]
async fn postgresql_answers_a_query_and_keeps_a_write() {
    let url = service_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let connect = tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&url));
    let mut conn = match connect.await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return unavailable("PostgreSQL", e),
        Err(_) => return unavailable("PostgreSQL", "connect timed out"),
    };
    within("the PostgreSQL round trip", async {
        let (version,): (String,) = sqlx::query_as("SELECT version()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(version.starts_with("PostgreSQL"), "{version}");
        sqlx::query("CREATE TEMPORARY TABLE smoke (id INT PRIMARY KEY, note TEXT NOT NULL)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO smoke VALUES (1, 'kept')")
            .execute(&mut conn)
            .await
            .unwrap();
        let (note,): (String,) = sqlx::query_as("SELECT note FROM smoke WHERE id = 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(note, "kept");
    })
    .await;
}

#[tokio::test]
async fn redis_sets_reads_and_expires_a_key() {
    use redis::AsyncCommands;

    let url = service_url("REDIS_URL", "redis://127.0.0.1:6379");
    let client = redis::Client::open(url.as_str()).expect("REDIS_URL is a redis:// URL");
    let connect = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    );
    let mut conn = match connect.await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return unavailable("Redis", e),
        Err(_) => return unavailable("Redis", "connect timed out"),
    };
    within("the Redis round trip", async {
        let key = unique("convene:smoke");
        let () = conn.set_ex(&key, "kept", 60).await.unwrap();
        let value: Option<String> = conn.get(&key).await.unwrap();
        assert_eq!(value.as_deref(), Some("kept"));
        let ttl: i64 = conn.ttl(&key).await.unwrap();
        assert!((1..=60).contains(&ttl), "ttl {ttl}");
        let count: i64 = conn.incr(format!("{key}:n"), 2).await.unwrap();
        assert_eq!(count, 2);
        let removed: i64 = conn.del(&[&key, &format!("{key}:n")]).await.unwrap();
        assert_eq!(removed, 2);
    })
    .await;
}

#[tokio::test]
async fn nats_jetstream_stores_a_message_and_a_consumer_acks_it() {
    use async_nats::jetstream::{self, consumer, stream};

    let url = service_url("NATS_URL", "nats://127.0.0.1:4222");
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .max_reconnects(Some(3))
        .connect(url.as_str());
    let client = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return unavailable("NATS", e),
        Err(_) => return unavailable("NATS", "connect timed out"),
    };
    within("the JetStream round trip", async {
        let js = jetstream::new(client);
        let name = unique("SMOKE").replace('-', "_");
        let subject = format!("smoke.{name}");
        let stream = js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                max_age: Duration::from_secs(300),
                ..Default::default()
            })
            .await
            .expect("JetStream is enabled: the stream is created");
        let ack = js
            .publish(subject.clone(), "kept".into())
            .await
            .unwrap()
            .await
            .expect("JetStream acknowledges the publish");
        assert_eq!(ack.stream, name);
        assert_eq!(ack.sequence, 1);

        let consumer = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
        let message = batch
            .next()
            .await
            .expect("the stored message is delivered")
            .unwrap();
        assert_eq!(message.subject.as_str(), subject);
        assert_eq!(&message.payload[..], b"kept");
        message.ack().await.unwrap();
        js.delete_stream(&name).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn kafka_produces_and_a_consumer_group_reads_back() {
    let brokers = service_url("KAFKA_BROKERS", "127.0.0.1:9092");
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &brokers)
        .set("socket.timeout.ms", "10000")
        .set("message.timeout.ms", "15000");
    let admin: AdminClient<DefaultClientContext> = config.create().unwrap();
    let topic = unique("convene.smoke");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new_topic = [NewTopic::new(&topic, 1, TopicReplication::Fixed(1))];
    let created = tokio::time::timeout(
        Duration::from_secs(20),
        admin.create_topics(&new_topic, &options),
    );
    match created.await {
        Ok(Ok(results)) => {
            for result in results {
                result.expect("the broker creates the topic");
            }
        }
        Ok(Err(e)) => return unavailable("Kafka", e),
        Err(_) => return unavailable("Kafka", "no answer to CreateTopics"),
    }

    within("the Kafka round trip", async {
        let producer: FutureProducer = config
            .clone()
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        for i in 0..3 {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key("event-42")
                        .payload(&format!("kept {i}")),
                    Duration::from_secs(15),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("the broker acknowledges the record");
        }

        let consumer: StreamConsumer = config
            .clone()
            .set("group.id", unique("convene-smoke"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        for i in 0..3 {
            let message = consumer.recv().await.expect("a record is delivered");
            assert_eq!(message.key(), Some(&b"event-42"[..]));
            assert_eq!(message.payload(), Some(format!("kept {i}").as_bytes()));
            assert_eq!(message.offset(), i);
            consumer
                .commit_message(&message, CommitMode::Sync)
                .expect("the group coordinator commits the offset");
        }
        admin.delete_topics(&[&topic], &options).await.unwrap();
    })
    .await;
}

//! Kafka publisher: an idempotent producer (`acks=all`), topics `events`, `registrations` and
//! `users` under the prefix (created when missing), the entity's id as the key so one entity's
//! events stay in one partition and in order, and the message id in a header.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::OnceCell;

use super::{Acks, BusError, Outgoing, Publisher};

const BUS: &str = "kafka";

/// The topics under the prefix: one per family of domain events, the registration commands and
/// their dead letters.
const TOPICS: [&str; 9] = [
    "events",
    "registrations",
    "users",
    "analytics",
    "admin",
    COMMANDS_TOPIC,
    DEAD_LETTERS_TOPIC,
    INTERACTIONS_TOPIC,
    INTERACTIONS_DEAD_LETTERS_TOPIC,
];
/// Registration commands, as NATS takes them on `cmd.events.<id>.<action>`.
pub const COMMANDS_TOPIC: &str = "registrations.requests";
/// Commands that cannot be carried out, with the reason in a header.
pub const DEAD_LETTERS_TOPIC: &str = "registrations.requests.dlq";
/// Interactions of users with events, sent by other services.
pub const INTERACTIONS_TOPIC: &str = "interactions";
/// Interactions that cannot be recorded, with the reason in a header.
pub const INTERACTIONS_DEAD_LETTERS_TOPIC: &str = "interactions.dlq";

/// The Kafka publisher.
pub struct Kafka {
    /// Replaced when librdkafka declares it unusable (a fatal error of the idempotent producer).
    producer: RwLock<FutureProducer>,
    config: ClientConfig,
    admin: AdminClient<DefaultClientContext>,
    brokers: String,
    prefix: String,
    partitions: i32,
    created: OnceCell<()>,
    up: Arc<AtomicBool>,
}

impl Kafka {
    /// A producer for `brokers`; it connects on first use.
    pub fn new(brokers: &str, prefix: &str, partitions: i32) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "convene")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "10000")
            .set("reconnect.backoff.max.ms", "2000");
        let producer = RwLock::new(config.create()?);
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "convene-admin")
            .create()?;
        Ok(Self {
            producer,
            config,
            admin,
            brokers: brokers.to_owned(),
            prefix: prefix.to_owned(),
            partitions: partitions.max(1),
            created: OnceCell::new(),
            up: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The producer, shared with the dead-letter path.
    pub fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the producer if librdkafka declared it unusable.
    fn recover(&self) {
        let producer = self.producer();
        let Some((code, reason)) = producer.client().fatal_error() else {
            return;
        };
        tracing::warn!(?code, %reason, "the Kafka producer failed for good; making a new one");
        match self.config.create() {
            Ok(fresh) => {
                *self
                    .producer
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
            }
            Err(e) => tracing::warn!(error = %e, "a new Kafka producer could not be made"),
        }
    }

    /// A topic under the prefix.
    pub fn topic(&self, family: &str) -> String {
        format!("{}{family}", self.prefix)
    }

    /// The brokers, as configured.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Creates the topics that are missing.
    pub async fn ensure_topics(&self) -> Result<(), BusError> {
        self.created
            .get_or_try_init(|| async {
                let names: Vec<String> = TOPICS.iter().map(|f| self.topic(f)).collect();
                self.create_topics(&names).await
            })
            .await
            .map(|_| ())
    }

    /// Creates these topics (full names) if they are missing, with the configured partitions.
    pub async fn create_topics(&self, names: &[String]) -> Result<(), BusError> {
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, self.partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        let results = self
            .admin
            .create_topics(&topics, &options)
            .await
            .map_err(|e| BusError::new(BUS, format!("creating topics: {e}")))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BusError::new(BUS, format!("creating {topic}: {code}")));
                }
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Publisher for Kafka {
    fn name(&self) -> &'static str {
        BUS
    }

    async fn send(&self, batch: &[Outgoing]) -> Result<Acks, BusError> {
        let producer = self.producer();
        let sent = async {
            self.ensure_topics().await?;
            let mut deliveries = Vec::with_capacity(batch.len());
            // A batch holds a handful of families: each topic name is made once.
            let mut topics: Vec<(&str, String)> = Vec::new();
            let mut id = uuid::Uuid::encode_buffer();
            for m in batch {
                let family = m.family();
                let topic = match topics.iter().position(|(f, _)| *f == family) {
                    Some(i) => &topics[i].1,
                    None => {
                        topics.push((family, self.topic(family)));
                        &topics[topics.len() - 1].1
                    }
                };
                let id = m.id.hyphenated().encode_lower(&mut id);
                let mut headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "message_id",
                        value: Some(&*id),
                    })
                    .insert(Header {
                        key: "type",
                        value: Some(m.kind.as_str()),
                    });
                if let Some(t) = &m.traceparent {
                    headers = headers.insert(Header {
                        key: "traceparent",
                        value: Some(t.as_str()),
                    });
                }
                let record = FutureRecord::to(topic)
                    .key(m.entity_id())
                    .payload(m.body.as_ref())
                    .headers(headers);
                let delivery = producer
                    .send_result(record)
                    .map_err(|(e, _)| BusError::new(BUS, e))?;
                deliveries.push(delivery);
            }
            Ok(deliveries)
        }
        .await;
        let deliveries = match sent {
            Ok(deliveries) => deliveries,
            Err(e) => {
                self.failed();
                return Err(e);
            }
        };
        let up = Arc::clone(&self.up);
        Ok(Box::pin(async move {
            for delivery in deliveries {
                let failure = match delivery.await {
                    Ok(Ok(_)) => continue,
                    Ok(Err((e, _))) => BusError::new(BUS, e),
                    Err(_) => BusError::new(BUS, "the producer went away"),
                };
                up.store(false, Ordering::Relaxed);
                return Err(failure);
            }
            up.store(true, Ordering::Relaxed);
            Ok(())
        }))
    }

    fn failed(&self) {
        self.recover();
        self.up.store(false, Ordering::Relaxed);
    }

    async fn up(&self, probe: bool) -> bool {
        if probe {
            // One topic's metadata (the whole cluster's grows with every topic it holds), and
            // only once it exists: asking for a missing one could have the broker create it
            // with its own partition count.
            if self.ensure_topics().await.is_err() {
                self.up.store(false, Ordering::Relaxed);
                return false;
            }
            let producer = self.producer();
            let topic = self.topic("events");
            let reached = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(1))
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            self.up.store(reached, Ordering::Relaxed);
        }
        self.up.load(Ordering::Relaxed)
    }
}

impl Kafka {
    /// How far the consumer group `group` is behind on `topic` (full name): the messages past
    /// its committed offsets, summed over the partitions; `None` when the broker does not
    /// answer within a second or two.
    pub async fn consumer_lag(&self, group: &str, topic: &str) -> Option<i64> {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .ok()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let wait = Duration::from_secs(1);
            let metadata = consumer.fetch_metadata(Some(&topic), wait).ok()?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)?
                .partitions()
                .iter()
                .map(|p| p.id())
                .collect();
            let mut list = rdkafka::TopicPartitionList::new();
            for p in &partitions {
                list.add_partition(&topic, *p);
            }
            let committed = consumer.committed_offsets(list, wait).ok()?;
            let mut lag = 0;
            for p in partitions {
                let (low, high) = consumer.fetch_watermarks(&topic, p, wait).ok()?;
                let at = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(rdkafka::Offset::Offset(n)) => n,
                    _ => low,
                };
                lag += (high - at).max(0);
            }
            Some(lag)
        })
        .await
        .ok()
        .flatten()
    }
}

/// How long a stopping consumer may take to commit and leave its group before its node carries
/// on without waiting.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Commits (if `commit`) and closes a consumer on a thread of its own: librdkafka's commit and
/// close block until the group coordinator answers, for ever while it is unreachable or just
/// restarted, and must not hold an async worker meanwhile. Waits up to [`CLOSE_WAIT`].
pub async fn close_consumer(consumer: StreamConsumer, commit: bool) {
    let (done, closed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        if commit && let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(error = %e, "the last offsets were not committed");
        }
        consumer.unsubscribe();
        drop(consumer);
        let _ = done.send(());
    });
    if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
        tracing::warn!("a Kafka consumer is still leaving its group; carrying on");
    }
}

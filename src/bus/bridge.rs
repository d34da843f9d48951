//! The NATS↔Kafka bridge: the routes of the `[bridge]` section (`config/bridge.toml`), NATS
//! subject patterns to Kafka topics and Kafka topics to NATS subjects. Each direction is shared
//! by the nodes (a NATS queue group, a Kafka consumer group), carries headers across, marks
//! what it forwards with its origin so nothing comes back around, keeps at most
//! `max_in_flight` messages unacknowledged, and rides out either broker restarting.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::kafka::Kafka;
use crate::metrics::Metrics;

/// The header that says which bus a bridged message came from.
pub const ORIGIN_HEADER: &str = "Convene-Bridge-Origin";
/// The Kafka key as a NATS header: read from NATS messages (otherwise the key is the subject),
/// set on records forwarded to NATS.
pub const KEY_HEADER: &str = "Kafka-Key";
/// Offsets of what was forwarded are committed at least this often when records stop coming.
const IDLE_FLUSH: Duration = Duration::from_millis(100);
/// The queue group of the NATS side.
const QUEUE_GROUP: &str = "convene-bridge";

/// The `[bridge]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// Messages forwarded and not yet acknowledged, per direction; reading stops at this many.
    pub max_in_flight: usize,
    /// NATS subject patterns to Kafka topics.
    pub to_kafka: Vec<ToKafka>,
    /// Kafka topics to NATS subjects.
    pub to_nats: Vec<ToNats>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            to_kafka: Vec::new(),
            to_nats: Vec::new(),
        }
    }
}

impl BridgeConfig {
    /// Whether any route is configured.
    pub fn is_empty(&self) -> bool {
        self.to_kafka.is_empty() && self.to_nats.is_empty()
    }
}

/// A route from NATS to Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToKafka {
    /// A NATS subject, wildcards allowed (`events.*`, `events.>`).
    pub subject: String,
    /// The Kafka topic.
    pub topic: String,
}

/// A route from Kafka to NATS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToNats {
    /// The Kafka topic.
    pub topic: String,
    /// The NATS subject.
    pub subject: String,
}

/// Creates the routes' Kafka topics when missing, then starts both directions; they run until
/// `stop` turns true.
pub fn start(
    config: &BridgeConfig,
    nats: async_nats::Client,
    kafka: Arc<Kafka>,
    group: String,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let brokers = kafka.brokers().to_owned();
    let brokers = brokers.as_str();
    let mut tasks = Vec::new();
    let topics: Vec<String> = config
        .to_kafka
        .iter()
        .map(|r| r.topic.clone())
        .chain(config.to_nats.iter().map(|r| r.topic.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let ready = Arc::new(tokio::sync::OnceCell::new());
    let ensure = {
        let ready = ready.clone();
        move || {
            let (ready, kafka, topics) = (ready.clone(), kafka.clone(), topics.clone());
            async move {
                ready
                    .get_or_init(|| async {
                        while let Err(e) = kafka.create_topics(&topics).await {
                            tracing::warn!(error = %e, "the bridge's topics are not there yet");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    })
                    .await;
            }
        }
    };
    let limit = config.max_in_flight.max(1);
    if !config.to_kafka.is_empty() {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "convene-bridge")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            // A Kafka restart delays forwarded messages; it does not drop them.
            .set("message.timeout.ms", "300000")
            .create()?;
        let in_flight = Arc::new(Semaphore::new(limit));
        for route in &config.to_kafka {
            let run = nats_to_kafka(
                nats.clone(),
                producer.clone(),
                route.clone(),
                in_flight.clone(),
                metrics.clone(),
                stop.clone(),
            );
            let ensure = ensure();
            tasks.push(tokio::spawn(async move {
                ensure.await;
                run.await;
            }));
        }
    }
    if !config.to_nats.is_empty() {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &group)
            .set("client.id", "convene-bridge")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()?;
        let run = kafka_to_nats(consumer, nats, config.to_nats.clone(), limit, metrics, stop);
        let ensure = ensure();
        tasks.push(tokio::spawn(async move {
            ensure.await;
            run.await;
        }));
    }
    Ok(tasks)
}

fn route_label(from: &str, to: &str) -> String {
    format!("{from} -> {to}")
}

async fn nats_to_kafka(
    nats: async_nats::Client,
    producer: FutureProducer,
    route: ToKafka,
    in_flight: Arc<Semaphore>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let label = route_label(
        &format!("nats:{}", route.subject),
        &format!("kafka:{}", route.topic),
    );
    let count = |outcome: &str| {
        metrics
            .bridge_messages
            .with_label_values(&[&label, outcome])
            .inc();
    };
    let mut messages = loop {
        match nats
            .queue_subscribe(route.subject.clone(), QUEUE_GROUP.into())
            .await
        {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, route = %label, "the bridge cannot subscribe yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    loop {
        let message = tokio::select! {
            m = messages.next() => match m {
                Some(m) => m,
                None => break,
            },
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let from_kafka = message
            .headers
            .as_ref()
            .and_then(|h| h.get(ORIGIN_HEADER))
            .is_some_and(|v| v.as_str() == "kafka");
        if from_kafka {
            count("looped");
            continue;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let mut headers = OwnedHeaders::new();
        let mut key = message.subject.to_string();
        if let Some(h) = &message.headers {
            for (name, values) in h.iter() {
                let name: &str = name.as_ref();
                if name == KEY_HEADER {
                    if let Some(v) = values.first() {
                        key = v.as_str().to_owned();
                    }
                    continue;
                }
                for v in values {
                    headers = headers.insert(Header {
                        key: name,
                        value: Some(v.as_str()),
                    });
                }
            }
        }
        let headers = headers
            .insert(Header {
                key: ORIGIN_HEADER,
                value: Some("nats"),
            })
            .insert(Header {
                key: "nats_subject",
                value: Some(message.subject.as_str()),
            });
        let record = FutureRecord::to(&route.topic)
            .key(&key)
            .payload(message.payload.as_ref())
            .headers(headers);
        match producer.send_result(record) {
            Ok(delivery) => {
                let (metrics, label) = (metrics.clone(), label.clone());
                tokio::spawn(async move {
                    let outcome = match delivery.await {
                        Ok(Ok(_)) => "forwarded",
                        _ => "failed",
                    };
                    metrics
                        .bridge_messages
                        .with_label_values(&[&label, outcome])
                        .inc();
                    drop(permit);
                });
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, route = %label, "a bridged message was refused by the producer");
                count("failed");
            }
        }
    }
}

async fn kafka_to_nats(
    consumer: StreamConsumer,
    nats: async_nats::Client,
    routes: Vec<ToNats>,
    limit: usize,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let topics: Vec<&str> = routes.iter().map(|r| r.topic.as_str()).collect();
    if let Err(e) = consumer.subscribe(&topics) {
        tracing::error!(error = %e, "the bridge cannot subscribe to its Kafka topics");
        return;
    }
    let mut unflushed = 0usize;
    loop {
        let received = tokio::select! {
            r = tokio::time::timeout(IDLE_FLUSH, consumer.recv()) => r,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let m = match received {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the bridge could not read from Kafka");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(_) => {
                if unflushed > 0 {
                    flush_and_commit(&nats, &consumer).await;
                    unflushed = 0;
                }
                continue;
            }
        };
        let Some(route) = routes.iter().find(|r| r.topic == m.topic()) else {
            continue;
        };
        let label = route_label(
            &format!("kafka:{}", route.topic),
            &format!("nats:{}", route.subject),
        );
        let mut from_nats = false;
        let mut headers = async_nats::HeaderMap::new();
        if let Some(h) = m.headers() {
            for header in h.iter() {
                let value = String::from_utf8_lossy(header.value.unwrap_or_default());
                if header.key == ORIGIN_HEADER && value == "nats" {
                    from_nats = true;
                }
                headers.append(header.key, value.as_ref());
            }
        }
        if from_nats {
            metrics
                .bridge_messages
                .with_label_values(&[&label, "looped"])
                .inc();
        } else {
            headers.insert(ORIGIN_HEADER, "kafka");
            if let Some(key) = m.key() {
                headers.insert(KEY_HEADER, String::from_utf8_lossy(key).as_ref());
            }
            let payload = bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default());
            // While NATS is away the client queues; when its queue is full this waits, and so
            // does the consumer: the offset moves only past what NATS was handed.
            let outcome = match nats
                .publish_with_headers(route.subject.clone(), headers, payload)
                .await
            {
                Ok(()) => "forwarded",
                Err(e) => {
                    tracing::warn!(error = %e, route = %label, "a bridged record was not published");
                    "failed"
                }
            };
            metrics
                .bridge_messages
                .with_label_values(&[&label, outcome])
                .inc();
        }
        if let Err(e) = consumer.store_offset_from_message(&m) {
            tracing::warn!(error = %e, "a bridged record's offset was not stored");
        }
        unflushed += 1;
        if unflushed >= limit {
            flush_and_commit(&nats, &consumer).await;
            unflushed = 0;
        }
    }
    flush_and_commit(&nats, &consumer).await;
    super::kafka::close_consumer(consumer, false).await;
}

/// Commits the offsets of the records handed to NATS once NATS has them (a flush is a round
/// trip to the server); after a flush that fails nothing is committed until one succeeds.
async fn flush_and_commit(nats: &async_nats::Client, consumer: &StreamConsumer) {
    if let Err(e) = nats.flush().await {
        tracing::warn!(error = %e, "NATS did not take the bridged records yet");
        return;
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
        tracing::debug!(error = %e, "bridge offsets not committed yet");
    }
}

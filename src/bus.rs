//! The buses: the versioned envelope a domain event travels in, the publishers to NATS
//! JetStream and Kafka (each optional), the in-process feed, and the relay that takes the outbox
//! to all of them (`relay.rs`).

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::config::Config;
use crate::store::Pending;

pub mod bridge;
pub mod commands;
pub mod consumer;
pub mod interactions;
pub mod kafka;
pub mod nats;
pub mod relay;

/// The version of every envelope type's `data` schema (`schema/events/<type>.json`).
pub const ENVELOPE_VERSION: u32 = 1;

/// What subscribers receive: one domain event, versioned. Its JSON Schema per `type` is in
/// `schema/events/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The domain event's name, such as `events.created`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The version of `data`'s schema.
    pub version: u32,
    /// Unique per domain event: a repeat carries the same id.
    pub id: Uuid,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// What happened, as the outbox holds it (parse it into what you need).
    pub data: Box<RawValue>,
}

/// A domain event ready for the buses.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The envelope, for consumers in this process.
    pub envelope: Arc<Envelope>,
    /// The envelope's `type`: the NATS subject without the prefix.
    pub kind: String,
    /// The entity it happened to, such as `event/42`.
    pub entity: String,
    /// Its id.
    pub id: Uuid,
    /// The serialised envelope.
    pub body: Bytes,
    /// The trace context of the work that wrote it, for the `traceparent` header.
    pub traceparent: Option<String>,
}

impl Outgoing {
    /// Wraps an outbox row in its envelope; the payload's JSON is copied, not parsed.
    pub fn new(row: Pending) -> Self {
        let envelope = Envelope {
            kind: row.topic.clone(),
            version: ENVELOPE_VERSION,
            id: row.message_id,
            occurred_at: row.occurred_at,
            data: row.payload,
        };
        Self {
            kind: row.topic,
            entity: row.entity,
            id: row.message_id,
            traceparent: row.traceparent,
            body: Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default()),
            envelope: Arc::new(envelope),
        }
    }

    /// The entity's id alone (`42` of `event/42`): the Kafka key.
    pub fn entity_id(&self) -> &str {
        self.entity.rsplit('/').next().unwrap_or(&self.entity)
    }

    /// The Kafka topic: the part of the type before its first dot.
    pub fn family(&self) -> &str {
        self.kind.split('.').next().unwrap_or(&self.kind)
    }
}

/// Why a bus did not take a batch.
#[derive(Debug, thiserror::Error)]
#[error("{bus}: {reason}")]
pub struct BusError {
    /// Which bus.
    pub bus: &'static str,
    /// What went wrong.
    pub reason: String,
}

impl BusError {
    fn new(bus: &'static str, reason: impl std::fmt::Display) -> Self {
        Self {
            bus,
            reason: reason.to_string(),
        }
    }
}

/// The acknowledgements of a batch sent: `Ok` once the bus acknowledged every message.
pub type Acks = std::pin::Pin<Box<dyn Future<Output = Result<(), BusError>> + Send>>;

/// A bus the relay publishes to.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync {
    /// `nats` or `kafka`: its label in metrics and health.
    fn name(&self) -> &'static str;

    /// Sends the batch, in order for each entity, and returns its acknowledgements before
    /// they arrive, so the next batch goes out meanwhile. A batch that failed is sent again
    /// whole, with every batch after it, and the bus or its consumers drop the repeats by id.
    async fn send(&self, batch: &[Outgoing]) -> Result<Acks, BusError>;

    /// Whether an entity's messages keep their order when a later one is sent before an
    /// earlier one is acknowledged, a failure included (Kafka's idempotent producer, per
    /// partition). When not (NATS: a message lost in a reconnection lets the next one through),
    /// the relay sends an entity's message only once its earlier ones are acknowledged.
    fn ordered_in_flight(&self) -> bool {
        true
    }

    /// A batch's acknowledgements failed: the bus mends its client if it has to.
    fn failed(&self) {}

    /// Whether the bus is reachable, as last seen; checks it again when `probe` is set.
    async fn up(&self, probe: bool) -> bool;
}

/// The buses a node publishes to, and its in-process feed of envelopes.
#[derive(Clone)]
pub struct Buses {
    /// NATS, when configured.
    pub nats: Option<Arc<nats::Nats>>,
    /// Kafka, when configured.
    pub kafka: Option<Arc<kafka::Kafka>>,
    /// Every published envelope, for consumers in this process.
    pub local: broadcast::Sender<Arc<Envelope>>,
}

impl Buses {
    /// Connects to the buses `config` names. Neither needs to be up: publishers connect in the
    /// background and the relay retries until they answer.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let nats = match &config.nats_url {
            Some(url) => Some(Arc::new(
                nats::Nats::connect(url.expose(), &config.bus_prefix, &config.nats_stream).await?,
            )),
            None => None,
        };
        let kafka = match &config.kafka_brokers {
            Some(brokers) => Some(Arc::new(kafka::Kafka::new(
                brokers,
                &config.bus_prefix,
                config.kafka_partitions,
            )?)),
            None => None,
        };
        Ok(Self {
            nats,
            kafka,
            local: broadcast::channel(4096).0,
        })
    }

    /// The buses the relay publishes to.
    pub fn publishers(&self) -> Vec<Arc<dyn Publisher>> {
        let mut all: Vec<Arc<dyn Publisher>> = Vec::new();
        if let Some(n) = &self.nats {
            all.push(n.clone());
        }
        if let Some(k) = &self.kafka {
            all.push(k.clone());
        }
        all
    }

    /// The envelopes published from now on, in this process.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.local.subscribe()
    }
}

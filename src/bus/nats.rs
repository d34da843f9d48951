//! NATS JetStream publisher: the stream is created when missing, each message carries its id
//! in `Nats-Msg-Id` (JetStream drops a repeat within the duplicate window), and a message of an
//! entity is sent only once the previous one of that entity was acknowledged, so a lost publish
//! can never be overtaken by a later one of the same entity.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio::sync::OnceCell;

use super::{Acks, BusError, Outgoing, Publisher};

const BUS: &str = "nats";

/// Repeats of one message id within this window are dropped by the stream.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// The subjects of the stream under the prefix: one wildcard per family of domain events.
const FAMILIES: [&str; 5] = [
    "events.>",
    "registrations.>",
    "users.>",
    "analytics.>",
    "admin.>",
];

/// The JetStream publisher.
pub struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    stream: String,
    created: OnceCell<()>,
}

impl Nats {
    /// Connects to `url`; the connection is made (and remade) in the background.
    pub async fn connect(url: &str, prefix: &str, stream: &str) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name("convene")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .connect(url)
            .await?;
        let js = jetstream::context::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .ack_timeout(Duration::from_secs(5))
            .build(client.clone());
        Ok(Self {
            client,
            js,
            prefix: prefix.to_owned(),
            stream: stream.to_owned(),
            created: OnceCell::new(),
        })
    }

    /// The client, for the inbound side and for tests.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Creates the stream, or adds the subjects it lacks to a stream made by an older version.
    async fn ensure_stream(&self) -> Result<(), BusError> {
        let failed = |e: String| BusError::new(BUS, format!("stream {}: {e}", self.stream));
        self.created
            .get_or_try_init(|| async {
                let subjects: Vec<String> = FAMILIES
                    .iter()
                    .map(|s| format!("{}{s}", self.prefix))
                    .collect();
                let stream = self
                    .js
                    .get_or_create_stream(stream::Config {
                        name: self.stream.clone(),
                        subjects: subjects.clone(),
                        duplicate_window: DUPLICATE_WINDOW,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                let mut config = stream.cached_info().config.clone();
                let missing: Vec<String> = subjects
                    .into_iter()
                    .filter(|s| !config.subjects.contains(s))
                    .collect();
                if !missing.is_empty() {
                    tracing::info!(stream = %self.stream, ?missing, "subjects added to the stream");
                    config.subjects.extend(missing);
                    self.js
                        .update_stream(&config)
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }
}

/// Splits a batch into waves: the first message of each entity, then the second, and so on,
/// each wave in outbox order.
fn waves(batch: &[Outgoing]) -> Vec<Vec<&Outgoing>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut waves: Vec<Vec<&Outgoing>> = Vec::new();
    for m in batch {
        let n = seen.entry(m.entity.as_str()).or_default();
        if waves.len() <= *n {
            waves.push(Vec::new());
        }
        waves[*n].push(m);
        *n += 1;
    }
    waves
}

#[async_trait::async_trait]
impl Publisher for Nats {
    fn name(&self) -> &'static str {
        BUS
    }

    /// Each wave but the last is acknowledged before the next goes out; the last one's
    /// acknowledgements are returned.
    async fn send(&self, batch: &[Outgoing]) -> Result<Acks, BusError> {
        self.ensure_stream().await?;
        let mut acks: Vec<jetstream::context::PublishAckFuture> = Vec::new();
        for wave in waves(batch) {
            for ack in std::mem::take(&mut acks) {
                ack.await.map_err(|e| BusError::new(BUS, e))?;
            }
            for m in wave {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    m.id.to_string().as_str(),
                );
                headers.insert("Convene-Entity", m.entity.as_str());
                if let Some(t) = &m.traceparent {
                    headers.insert("traceparent", t.as_str());
                }
                let subject = format!("{}{}", self.prefix, m.kind);
                let ack = self
                    .js
                    .publish_with_headers(subject, headers, m.body.clone())
                    .await
                    .map_err(|e| BusError::new(BUS, e))?;
                acks.push(ack);
            }
        }
        Ok(Box::pin(async move {
            for ack in acks {
                ack.await.map_err(|e| BusError::new(BUS, e))?;
            }
            Ok(())
        }))
    }

    fn ordered_in_flight(&self) -> bool {
        false
    }

    async fn up(&self, _probe: bool) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(entity: &str, n: u8) -> Outgoing {
        Outgoing::new(crate::store::Pending {
            position: crate::store::Position {
                xid: 0,
                id: i64::from(n),
            },
            message_id: uuid::Uuid::from_bytes([n; 16]),
            topic: "events.updated".into(),
            entity: entity.into(),
            payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            occurred_at: chrono::Utc::now(),
            traceparent: None,
        })
    }

    #[test]
    fn one_message_per_entity_in_each_wave_in_outbox_order() {
        let batch = [
            out("event/1", 1),
            out("event/2", 2),
            out("event/1", 3),
            out("event/3", 4),
            out("event/1", 5),
        ];
        let ids: Vec<Vec<u8>> = waves(&batch)
            .iter()
            .map(|w| w.iter().map(|m| m.id.as_bytes()[0]).collect())
            .collect();
        assert_eq!(ids, [vec![1, 2, 4], vec![3], vec![5]]);
    }
}

//! The Kafka consumer group of registration commands: each record of
//! `{prefix}registrations.requests` becomes a command for the event's actor, and its offset is
//! committed only once the actor answered (at least once; the record's `id` is the
//! registration's idempotency key, so a repeat has no second effect). A record that cannot be
//! carried out (bad JSON, an unknown event or user) goes to `{prefix}registrations.requests.dlq`
//! with the reason in a header, and the partition moves on; an unavailable store is retried.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use warp::http::StatusCode;

use super::commands::{Action, Command};
use super::kafka::{COMMANDS_TOPIC, DEAD_LETTERS_TOPIC, Kafka};
use crate::app::App;
use crate::http::error::ApiError;

/// Longest wait before trying a command again while the store is unavailable.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A registration command as a Kafka record's value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    /// Unique per command: the idempotency key of the registration.
    id: String,
    /// `register` or `cancel`.
    action: String,
    event_id: i64,
    user_id: i64,
    #[serde(default)]
    waitlist: bool,
}

impl Record {
    fn command(self) -> Result<Command, ApiError> {
        let action = match self.action.as_str() {
            "register" => Action::Register {
                waitlist: self.waitlist,
                idempotency_key: Some(self.id),
            },
            "cancel" => Action::Cancel,
            other => {
                return Err(ApiError::invalid(
                    "action",
                    format!("`{other}` is neither register nor cancel"),
                ));
            }
        };
        Ok(Command {
            event: self.event_id.to_string(),
            user_id: self.user_id,
            action,
        })
    }
}

/// The reason a command failed, for the dead-letter header.
fn reason(e: &ApiError) -> String {
    let body = e.body();
    match body.details.as_object() {
        Some(d) if !d.is_empty() => format!("{}: {} {}", body.error, body.message, body.details),
        _ => format!("{}: {}", body.error, body.message),
    }
}

/// What became of a record.
enum Outcome {
    Done(StatusCode),
    Dead(String),
}

/// Carries a record out, retrying while the store is unavailable; a cancel with nothing to
/// cancel is done (a repeat after a restart finds the seat already given up).
async fn carry_out(app: &App, payload: Option<&[u8]>) -> Outcome {
    let record: Record = match serde_json::from_slice(payload.unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => return Outcome::Dead(format!("malformed JSON: {e}")),
    };
    let command = match record.command() {
        Ok(c) => c,
        Err(e) => return Outcome::Dead(reason(&e)),
    };
    let mut wait = Duration::from_millis(100);
    loop {
        let cancel = command.action == Action::Cancel;
        match command.clone().run(app).await {
            Ok((status, _)) => return Outcome::Done(status),
            Err(ApiError::NotFound) if cancel => {
                let key = crate::http::events::event_key(&command.event);
                let exists = match key {
                    Ok(key) => app
                        .events
                        .ask(key, |reply| convene_actors::event::EventMessage::Get {
                            reply,
                        })
                        .await
                        .is_ok_and(|r| r.is_ok()),
                    Err(_) => false,
                };
                return if exists {
                    Outcome::Done(StatusCode::NO_CONTENT)
                } else {
                    Outcome::Dead("no such event".into())
                };
            }
            Err(e) if e.status() == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(error = %e, "a Kafka command waits for the store");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
            Err(ApiError::NotFound) => return Outcome::Dead("no such event".into()),
            Err(e) => return Outcome::Dead(reason(&e)),
        }
    }
}

/// Sends a record to the dead-letter topic `family` (under the prefix) with why, until the
/// broker takes it.
pub(super) async fn bury(kafka: &Kafka, family: &str, m: &BorrowedMessage<'_>, reason: &str) {
    let topic = kafka.topic(family);
    let partition = m.partition().to_string();
    let offset = m.offset().to_string();
    let mut headers = OwnedHeaders::new();
    if let Some(original) = m.headers() {
        for h in original.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let headers = headers
        .insert(Header {
            key: "reason",
            value: Some(reason),
        })
        .insert(Header {
            key: "source_topic",
            value: Some(m.topic()),
        })
        .insert(Header {
            key: "source_partition",
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: "source_offset",
            value: Some(offset.as_str()),
        });
    loop {
        let mut record = FutureRecord::to(&topic).headers(headers.clone());
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        if let Some(payload) = m.payload() {
            record = record.payload(payload);
        }
        match kafka.producer().send(record, Duration::from_secs(5)).await {
            Ok(_) => return,
            Err((e, _)) => {
                tracing::warn!(error = %e, "a dead letter waits for the broker");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A consumer in `group` of the topic `family` (under the prefix), once the topics exist;
/// offsets are stored and committed by hand, after a record was carried out.
pub(super) async fn subscribe(kafka: &Kafka, group: &str, family: &str) -> Option<StreamConsumer> {
    while let Err(e) = kafka.ensure_topics().await {
        tracing::warn!(error = %e, "the Kafka topics are not there yet");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let consumer: StreamConsumer = match ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("group.id", group)
        .set("client.id", format!("convene-{family}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, family, "a Kafka consumer cannot be created");
            return None;
        }
    };
    let topic = kafka.topic(family);
    if let Err(e) = consumer.subscribe(&[topic.as_str()]) {
        tracing::error!(error = %e, %topic, "subscribing to a Kafka topic failed");
        return None;
    }
    Some(consumer)
}

/// Reads the command topic in the consumer group `group` until `stop` turns true; then commits
/// what it carried out and leaves the group.
pub fn serve_kafka(
    app: App,
    kafka: Arc<Kafka>,
    group: String,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(consumer) = subscribe(&kafka, &group, COMMANDS_TOPIC).await else {
            return;
        };
        loop {
            let received = tokio::select! {
                received = consumer.recv() => received,
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let m = match received {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "reading commands from Kafka failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            // The command joins the trace its `traceparent` header names.
            let given = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "traceparent")
                    .and_then(|h| std::str::from_utf8(h.value?).ok())
                    .map(str::to_owned)
            });
            let span = tracing::info_span!(
                "command",
                bus = "kafka",
                topic = m.topic(),
                trace_id = tracing::field::Empty
            );
            let trace = convene_cluster::trace::enter(&span, given.as_deref());
            let carried = convene_cluster::trace::scope(trace, carry_out(&app, m.payload()));
            let status = match tracing::Instrument::instrument(carried, span).await {
                Outcome::Done(status) => status.as_str().to_owned(),
                Outcome::Dead(reason) => {
                    bury(&kafka, DEAD_LETTERS_TOPIC, &m, &reason).await;
                    "dead_letter".to_owned()
                }
            };
            app.metrics
                .bus_commands
                .with_label_values(&["kafka", &status])
                .inc();
            if let Err(e) = consumer.store_offset_from_message(&m) {
                tracing::warn!(error = %e, "a command's offset was not stored");
            }
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                tracing::debug!(error = %e, "offsets not committed yet");
            }
        }
        super::kafka::close_consumer(consumer, true).await;
    })
}

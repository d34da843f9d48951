//! The Kafka consumer group of interactions sent by other services: each record of
//! `{prefix}interactions` (`{"user_id", "event_id", "kind", "ts"}`, kind `view`, `click`,
//! `share` or `like`, `ts` in Unix seconds and optional) is recorded as if the user had sent it
//! over HTTP: batched with the node's other interactions, counted by the analytics windows and
//! learnt from by the recommendations. Records are taken a batch at a time and their offsets
//! committed once the batch is in the database (at least once). A record that cannot be taken
//! (bad JSON, another kind, an unknown event, a time far off) goes to
//! `{prefix}interactions.dlq` with the reason in a header, and the partition moves on.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use convene_actors::event::{self, EventMessage};
use convene_actors::recommend::Kind;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::consumer::{bury, subscribe};
use super::kafka::{INTERACTIONS_DEAD_LETTERS_TOPIC, INTERACTIONS_TOPIC, Kafka};
use crate::analytics::interacted;
use crate::app::App;
use crate::store::Interacted;

/// Records taken at most per batch.
const BATCH: usize = 500;
/// How long a batch waits for more records once it has one.
const GATHER: Duration = Duration::from_millis(5);
/// How far in the past (and in the future, for clocks that drift) a record's time may be.
const PAST: chrono::TimeDelta = chrono::TimeDelta::days(7);
const FUTURE: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// Longest wait before trying a batch again while the store is unavailable.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// An interaction as a Kafka record's value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    user_id: i64,
    event_id: i64,
    kind: String,
    /// When, in Unix seconds; now when absent.
    #[serde(default)]
    ts: Option<i64>,
}

/// The interaction a record is, or why it cannot be one.
async fn take(app: &App, payload: Option<&[u8]>) -> Result<Interacted, String> {
    let r: Record = serde_json::from_slice(payload.unwrap_or_default())
        .map_err(|e| format!("malformed JSON: {e}"))?;
    let kind = Kind::parse(&r.kind)
        .filter(|k| matches!(k, Kind::View | Kind::Click | Kind::Share | Kind::Like))
        .ok_or_else(|| format!("kind `{}` is not view, click, share or like", r.kind))?;
    if r.user_id <= 0 || r.event_id <= 0 {
        return Err("user_id and event_id are positive".into());
    }
    let now = Utc::now();
    let at = match r.ts {
        None => now,
        Some(ts) => DateTime::from_timestamp(ts, 0)
            .filter(|at| *at > now - PAST && *at < now + FUTURE)
            .ok_or_else(|| format!("ts {ts} is not within the last seven days"))?,
    };
    let exists = app
        .events
        .ask(event::key(r.event_id), |reply| EventMessage::Get { reply })
        .await;
    match exists {
        Ok(Ok(_)) => {}
        Ok(Err(convene_actors::EntityError::NotFound)) => return Err("no such event".into()),
        Ok(Err(e)) => return Err(format!("the event cannot be read: {e}")),
        Err(e) => return Err(format!("the event cannot be reached: {e}")),
    }
    Ok(Interacted {
        at,
        ..interacted(r.user_id, r.event_id, kind)
    })
}

/// Records `taken` until the store has them all.
async fn record(app: &App, taken: Vec<Interacted>) {
    let mut wait = Duration::from_millis(100);
    let mut left = taken;
    while !left.is_empty() {
        let mut waiting = Vec::with_capacity(left.len());
        for i in &left {
            waiting.push((*i, app.tracker.enqueue(*i).await));
        }
        let mut failed = Vec::new();
        for (i, committed) in waiting {
            if let Err(e) = committed.await {
                tracing::warn!(error = %e, "Kafka interactions wait for the store");
                failed.push(i);
            }
        }
        if !failed.is_empty() {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
        left = failed;
    }
}

/// Reads the interactions topic in the consumer group `group` until `stop` turns true; then
/// commits what it recorded and leaves the group.
pub fn serve_interactions(
    app: App,
    kafka: Arc<Kafka>,
    group: String,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(consumer) = subscribe(&kafka, &group, INTERACTIONS_TOPIC).await else {
            return;
        };
        loop {
            let received = tokio::select! {
                received = consumer.recv() => received,
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let first = match received {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "reading interactions from Kafka failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match tokio::time::timeout(GATHER, consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m),
                    _ => break,
                }
            }
            let mut taken = Vec::with_capacity(batch.len());
            for m in &batch {
                match take(&app, m.payload()).await {
                    Ok(i) => taken.push(i),
                    Err(reason) => {
                        bury(&kafka, INTERACTIONS_DEAD_LETTERS_TOPIC, m, &reason).await;
                        app.metrics
                            .bus_interactions
                            .with_label_values(&["dead_letter"])
                            .inc();
                    }
                }
            }
            let n = taken.len() as u64;
            record(&app, taken).await;
            app.metrics
                .bus_interactions
                .with_label_values(&["recorded"])
                .inc_by(n);
            for m in &batch {
                if let Err(e) = consumer.store_offset_from_message(m) {
                    tracing::warn!(error = %e, "an interaction's offset was not stored");
                }
            }
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                tracing::debug!(error = %e, "offsets not committed yet");
            }
        }
        super::kafka::close_consumer(consumer, true).await;
    })
}

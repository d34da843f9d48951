//! Commands from the buses, into the same mailboxes as HTTP and answered as HTTP answers: NATS
//! request-reply on `{prefix}cmd.events.<id>.register|cancel` (a service token in the
//! `Authorization` header), and the Kafka topic `{prefix}registrations.requests` read by a
//! consumer group (`consumer.rs`). Both go through the router to the event's actor, wherever it
//! lives.

use std::sync::Arc;

use bytes::Bytes;
use convene_actors::user::{self, UserMessage};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use warp::http::StatusCode;

use crate::app::App;
use crate::http::error::ApiError;
use crate::http::events::event_key;
use crate::http::registrations::{give_up_seat, take_seat};

/// Commands answered at once per node; more wait in the subscription.
const IN_FLIGHT: usize = 256;
/// The queue group of every node: each request goes to one of them.
const QUEUE_GROUP: &str = "convene";
/// The reply header that carries the HTTP status code.
pub const STATUS_HEADER: &str = "Convene-Status";

/// What to do to an event's registrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take a seat (or a place on the waitlist).
    Register {
        /// Join the waitlist when full.
        waitlist: bool,
        /// A repeat with the same key answers as the first.
        idempotency_key: Option<String>,
    },
    /// Give the seat up.
    Cancel,
}

/// One command: an action by a user on an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The event.
    pub event: String,
    /// The user it is done for.
    pub user_id: i64,
    /// What.
    pub action: Action,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    user_id: i64,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    waitlist: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    user_id: i64,
}

impl Command {
    /// The command of a request on `subject` (without the prefix), such as
    /// `cmd.events.42.register`, with a JSON `body`.
    pub fn parse(subject: &str, body: &[u8]) -> Result<Self, ApiError> {
        let parts: Vec<&str> = subject.split('.').collect();
        let ["cmd", "events", event, verb] = parts[..] else {
            return Err(ApiError::NotFound);
        };
        let bad = |e: serde_json::Error| ApiError::BadRequest(format!("malformed JSON: {e}"));
        let (user_id, action) = match verb {
            "register" => {
                let b: RegisterBody = serde_json::from_slice(body).map_err(bad)?;
                (
                    b.user_id,
                    Action::Register {
                        waitlist: b.waitlist,
                        idempotency_key: b.idempotency_key,
                    },
                )
            }
            "cancel" => {
                let b: CancelBody = serde_json::from_slice(body).map_err(bad)?;
                (b.user_id, Action::Cancel)
            }
            _ => return Err(ApiError::NotFound),
        };
        Ok(Self {
            event: event.to_owned(),
            user_id,
            action,
        })
    }

    /// Runs the command through the event's actor: the status and body the HTTP API answers
    /// (no body for 204).
    pub async fn run(self, app: &App) -> Result<(StatusCode, Option<Value>), ApiError> {
        let key = event_key(&self.event)?;
        // The user must exist: the store takes the id as given (no foreign key on PostgreSQL),
        // and on SQLite an unknown one would fail the event's whole commit batch.
        match app
            .users
            .ask(user::key(self.user_id), |reply| UserMessage::Get { reply })
            .await?
        {
            Ok(_) => {}
            Err(convene_actors::EntityError::NotFound) => {
                return Err(ApiError::invalid("user_id", "no such user"));
            }
            Err(e) => return Err(e.into()),
        }
        match self.action {
            Action::Register {
                waitlist,
                idempotency_key,
            } => {
                let (status, answer) =
                    take_seat(app, key, self.user_id, waitlist, idempotency_key).await?;
                Ok((
                    status,
                    Some(serde_json::to_value(answer).unwrap_or_default()),
                ))
            }
            Action::Cancel => {
                give_up_seat(app, key, self.user_id).await?;
                Ok((StatusCode::NO_CONTENT, None))
            }
        }
    }
}

/// The reply to a request: its status and JSON body, errors in the HTTP API's error body.
pub fn reply_of(result: Result<(StatusCode, Option<Value>), ApiError>) -> (StatusCode, Bytes) {
    match result {
        Ok((status, body)) => (
            status,
            body.map(|b| Bytes::from(serde_json::to_vec(&b).unwrap_or_default()))
                .unwrap_or_default(),
        ),
        Err(e) => (
            e.status(),
            Bytes::from(serde_json::to_vec(&e.body()).unwrap_or_default()),
        ),
    }
}

/// Answers NATS requests on `{prefix}cmd.>` in the queue group of every node, until `stop`
/// turns true.
pub fn serve_nats(
    app: App,
    client: async_nats::Client,
    prefix: String,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let subject = format!("{prefix}cmd.>");
        // A client still connecting queues the subscription and makes it on connect.
        let mut requests = loop {
            match client
                .queue_subscribe(subject.clone(), QUEUE_GROUP.into())
                .await
            {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, %subject, "subscribing to commands failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        };
        let limit = Arc::new(Semaphore::new(IN_FLIGHT));
        loop {
            let request = tokio::select! {
                request = requests.next() => match request {
                    Some(r) => r,
                    None => break,
                },
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let (app, client, prefix) = (app.clone(), client.clone(), prefix.clone());
            // The command joins the trace its `traceparent` header names, as a request does.
            let span = tracing::info_span!("command", bus = "nats", subject = %request.subject, trace_id = tracing::field::Empty);
            let given = request
                .headers
                .as_ref()
                .and_then(|h| h.get("traceparent"))
                .map(|v| v.as_str().to_owned());
            let trace = convene_cluster::trace::enter(&span, given.as_deref());
            let echoed = trace.clone();
            let work = async move {
                answer(&app, &client, &prefix, request, &echoed).await;
                drop(permit);
            };
            tokio::spawn(tracing::Instrument::instrument(
                convene_cluster::trace::scope(trace, work),
                span,
            ));
        }
    })
}

async fn answer(
    app: &App,
    client: &async_nats::Client,
    prefix: &str,
    request: async_nats::Message,
    traceparent: &str,
) {
    let Some(reply_to) = request.reply.clone() else {
        tracing::debug!(subject = %request.subject, "a command without a reply subject is ignored");
        return;
    };
    let token = request
        .headers
        .as_ref()
        .and_then(|h| h.get("Authorization"))
        .map(|v| v.as_str().to_owned());
    let result = match app.authenticate_service(token.as_deref()) {
        Err(e) => Err(e),
        Ok(_) => {
            let subject = request
                .subject
                .as_str()
                .strip_prefix(prefix)
                .unwrap_or(request.subject.as_str());
            match Command::parse(subject, &request.payload) {
                Ok(command) => command.run(app).await,
                Err(e) => Err(e),
            }
        }
    };
    let (status, body) = reply_of(result);
    app.metrics
        .bus_commands
        .with_label_values(&["nats", status.as_str()])
        .inc();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(STATUS_HEADER, status.as_str());
    headers.insert("traceparent", traceparent);
    if let Err(e) = client.publish_with_headers(reply_to, headers, body).await {
        tracing::warn!(error = %e, "a command's reply was not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_bodies_parse_into_commands() {
        let c = Command::parse(
            "cmd.events.42.register",
            br#"{"user_id": 7, "idempotency_key": "k1"}"#,
        )
        .unwrap();
        assert_eq!(c.event, "42");
        assert_eq!(c.user_id, 7);
        assert_eq!(
            c.action,
            Action::Register {
                waitlist: false,
                idempotency_key: Some("k1".into())
            }
        );
        let c = Command::parse("cmd.events.42.cancel", br#"{"user_id": 7}"#).unwrap();
        assert_eq!(c.action, Action::Cancel);
        assert_eq!(
            Command::parse("cmd.events.42.explode", b"{}"),
            Err(ApiError::NotFound)
        );
        assert_eq!(
            Command::parse("cmd.users.42.register", b"{}"),
            Err(ApiError::NotFound)
        );
        assert!(matches!(
            Command::parse("cmd.events.42.register", b"{\"user\": 7}"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            Command::parse("cmd.events.42.register", b"not json"),
            Err(ApiError::BadRequest(_))
        ));
    }
}

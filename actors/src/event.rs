//! The event actor: owns one event, its seat count, its waitlist and its registrations. It
//! decides every registration and commits bursts of them in one transaction (group commit): a
//! caller is answered only after its row is committed.

use convene_cluster::trace::within;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use convene_cluster::{
    Activation, EntityFactory, EntityKey, Inspect, ShardMessage, Spawning, View,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

use crate::error::{EntityError, Reply};
use crate::idle::{EntityArgs, Idle};
use crate::model::{Event, EventJson, EventPatch, Registration, RegistrationStatus};
use crate::rules::{Principal, RegistrationOutcome, permissions};
use crate::store::Store;

mod batch;
mod state;

pub use state::apply_patch;

convene_cluster::entity_messages! {
    /// Messages an event actor takes.
    pub enum EventMessage via EventRequest {
        ask {
            /// The event as the API shows it.
            Get {} -> Result<EventJson, EntityError>,
            /// Change the event; answers the event as changed.
            Update {
                /// Who asks.
                principal: Principal,
                /// What changes.
                patch: EventPatch,
                /// The version the caller saw (`If-Match`), if it sent one.
                if_match: Option<i64>,
                /// The caller's trace context, for the domain events.
                trace: Option<String>,
            } -> Result<Event, EntityError>,
            /// Delete the event.
            Delete {
                /// Who asks.
                principal: Principal,
                /// The caller's trace context, for the domain events.
                trace: Option<String>,
            } -> Result<(), EntityError>,
            /// Register a user; answers the outcome once it is committed.
            Register {
                /// The user.
                user_id: i64,
                /// Join the waitlist when full instead of being refused.
                waitlist: bool,
                /// The caller's `Idempotency-Key`, if any.
                idempotency_key: Option<String>,
                /// The caller's trace context, for the domain events.
                trace: Option<String>,
            } -> Result<RegistrationOutcome, EntityError>,
            /// Cancel a user's registration; the oldest waitlisted user takes the seat, and the
            /// answer is the registration promoted, if any.
            Cancel {
                /// The user.
                user_id: i64,
                /// The caller's trace context, for the domain events.
                trace: Option<String>,
            } -> Result<Option<Registration>, EntityError>,
            /// Registrations that are not cancelled, first come first.
            ListRegistrations {
                /// Who asks (the creator or an admin).
                principal: Principal,
            } -> Result<Vec<Registration>, EntityError>,
            /// What a user may do in the event's live room: whether they created the event or
            /// hold a seat.
            Access {
                /// The user.
                user_id: i64,
            } -> Result<RoomAccess, EntityError>,
        }
        tell {
            /// Curation of the event's current text is done: shown from now on.
            Curated {
                /// What curation says.
                curation: crate::curation::Curation,
            },
            /// Panics inside the handler, for supervision tests and fault drills.
            InjectFault,
        }
        local {
            /// Commit the pending registrations (sent by the actor to itself).
            Flush,
            /// Idle check (sent by a timer).
            Tick,
        }
    }
}

/// The kind name of events in entity keys.
pub const KIND: &str = "event";

/// The key of the event `id`.
pub fn key(id: i64) -> EntityKey {
    EntityKey::new(KIND, id)
}

/// A user's standing in an event, for its live room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomAccess {
    /// They created the event.
    pub creator: bool,
    /// They hold an active registration.
    pub attendee: bool,
}

/// Starts event actors for the shard.
pub struct EventFactory {
    store: Arc<dyn Store>,
}

impl EventFactory {
    /// A factory whose actors keep their state in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

impl EntityFactory for EventFactory {
    type Msg = EventMessage;

    fn kind(&self) -> &'static str {
        KIND
    }

    fn spawn(
        &self,
        key: EntityKey,
        activation: Activation<EventMessage>,
    ) -> Spawning<EventMessage> {
        let args = EntityArgs::new(key, self.store.clone(), &activation);
        activation.start(EventActor, args)
    }
}

/// The event actor.
pub struct EventActor;

struct Pending {
    user_id: i64,
    waitlist: bool,
    idempotency_key: Option<String>,
    trace: Option<String>,
    reply: Reply<RegistrationOutcome>,
}

/// Everything an event actor holds.
pub struct EventState {
    key: EntityKey,
    store: Arc<dyn Store>,
    shard: ActorRef<ShardMessage<EventMessage>>,
    idle: Idle,
    /// Its JSON, published for reads on this node.
    view: View,
    /// `None` when no such event exists.
    event: Option<Event>,
    /// The JSON of `event`, kept until its version or its curation changes.
    json: Option<EventJson>,
    /// What curation said last.
    curation: Option<crate::curation::Curation>,
    registrations: HashMap<i64, Registration>,
    waitlist: VecDeque<i64>,
    idempotency: HashMap<(i64, String), RegistrationOutcome>,
    pending: Vec<Pending>,
    flush_scheduled: bool,
    last_stamp: DateTime<Utc>,
}

impl Inspect for EventState {
    fn summary(&self) -> serde_json::Value {
        match &self.event {
            Some(e) => serde_json::json!({
                "id": e.id,
                "title": e.title,
                "capacity": e.capacity,
                "registered": e.registered_count,
                "waitlisted": self.waitlist.len(),
                "writes_pending": self.pending.len(),
            }),
            None => serde_json::json!({ "found": false }),
        }
    }
}

impl Actor for EventActor {
    type Msg = EventMessage;
    type State = EventState;
    type Arguments = EntityArgs<EventMessage>;

    async fn pre_start(
        &self,
        myself: ActorRef<EventMessage>,
        args: EntityArgs<EventMessage>,
    ) -> Result<EventState, ActorProcessingErr> {
        let mut state = EventState {
            key: args.key,
            store: args.store,
            shard: args.shard,
            idle: Idle::new(args.idle_after),
            view: args.view,
            event: None,
            json: None,
            curation: None,
            registrations: HashMap::new(),
            waitlist: VecDeque::new(),
            idempotency: HashMap::new(),
            pending: Vec::new(),
            flush_scheduled: false,
            last_stamp: DateTime::<Utc>::MIN_UTC,
        };
        state.load().await?;
        myself.send_interval(state.idle.tick_every(), || EventMessage::Tick);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<EventMessage>,
        message: EventMessage,
        state: &mut EventState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, EventMessage::Tick) {
            state.idle.touch();
        }
        let reads_only = matches!(
            message,
            EventMessage::Get { .. }
                | EventMessage::Access { .. }
                | EventMessage::ListRegistrations { .. }
                | EventMessage::Tick
        );
        if !reads_only {
            // Withdrawn before anything may change, so no read is served from it once the
            // change is acknowledged; published again below.
            state.view.clear();
        }
        // The writes wait on the store in futures of their own, on the heap: this one, which
        // every read builds and moves, stays a few hundred bytes.
        match message {
            EventMessage::Get { reply } => {
                let _ = reply.send(state.json());
            }
            EventMessage::Register {
                user_id,
                waitlist,
                idempotency_key,
                trace,
                reply,
            } => {
                if let Err(e) = state.live() {
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                if let Some(o) = idempotency_key
                    .as_ref()
                    .and_then(|k| state.idempotency.get(&(user_id, k.clone())))
                {
                    let _ = reply.send(Ok(o.clone()));
                    return Ok(());
                }
                state.pending.push(Pending {
                    user_id,
                    waitlist,
                    idempotency_key,
                    trace,
                    reply,
                });
                if !state.flush_scheduled {
                    // The flush is queued behind the requests already in the mailbox, so one
                    // transaction commits all of them. A draining actor (being passivated or
                    // handed off) takes no new messages: it commits at once instead.
                    state.flush_scheduled = true;
                    if myself.cast(EventMessage::Flush).is_err() {
                        Box::pin(state.flush()).await;
                    }
                }
            }
            EventMessage::Flush => Box::pin(state.flush()).await,
            EventMessage::Cancel {
                user_id,
                trace,
                reply,
            } => {
                let answer = Box::pin(within(trace.as_deref(), state.cancel(user_id))).await;
                let _ = reply.send(answer);
            }
            EventMessage::Update {
                principal,
                patch,
                if_match,
                trace,
                reply,
            } => {
                let answer = Box::pin(within(
                    trace.as_deref(),
                    state.update(&principal, patch, if_match),
                ))
                .await;
                let _ = reply.send(answer);
            }
            EventMessage::Delete {
                principal,
                trace,
                reply,
            } => {
                let answer = Box::pin(within(trace.as_deref(), state.delete(&principal))).await;
                let _ = reply.send(answer);
            }
            EventMessage::ListRegistrations { principal, reply } => {
                let answer = state.live().and_then(|e| {
                    if principal.may_manage(e, permissions::ADMIN_ACCESS) {
                        Ok(state.listed())
                    } else {
                        Err(EntityError::Forbidden(
                            "only the creator or an admin may list registrations".into(),
                        ))
                    }
                });
                let _ = reply.send(answer);
            }
            EventMessage::Access { user_id, reply } => {
                let answer = state.live().map(|e| RoomAccess {
                    creator: e.created_by == user_id,
                    attendee: state
                        .registrations
                        .get(&user_id)
                        .is_some_and(|r| r.status == RegistrationStatus::Active),
                });
                let _ = reply.send(answer);
            }
            EventMessage::Tick => {
                if state.view.take_read() {
                    state.idle.touch();
                }
                if state.pending.is_empty() {
                    state.idle.check(&state.shard, &state.key);
                }
            }
            EventMessage::Curated { curation } => {
                state.curation = Some(curation);
                state.json = None;
            }
            EventMessage::InjectFault => panic!("fault injected into {}", state.key),
        }
        if !state.view.is_published() {
            if let Ok(json) = state.json() {
                state.view.publish(json);
            }
        }
        if state.event.is_none() {
            state.idle.release(&state.shard, &state.key);
        }
        Ok(())
    }
}

/// Publishes a new event with its `event.created` domain event. No actor owns an event before
/// it exists; its actor activates on the first message for its key.
pub async fn create(
    store: &dyn Store,
    event: crate::model::NewEvent,
) -> Result<Event, EntityError> {
    store.create_event(event).await.map_err(Into::into)
}

//! The event actor: owns one event, its seat count, its waitlist and its registrations. It
//! decides every registration and commits bursts of them in one transaction (group commit): a
//! caller is answered only after its row is committed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use convene_cluster::wire::{self, Forwardable, Responder, WireError, decode, encode, respond};
use convene_cluster::{EntityFactory, EntityKey, ShardMessage, Spawning};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::EntityError;
use crate::idle::Idle;
use crate::model::{DomainEvent, Event, EventPatch, Registration, RegistrationStatus, topics};
use crate::rules::{Decision, Principal, RegistrationOutcome, decide_registration, permissions};
use crate::store::{EventCommit, IdempotencyRecord, RegistrationWrite, Store, StoreError};

/// A reply carrying an entity answer.
pub type Reply<T> = RpcReplyPort<Result<T, EntityError>>;

/// Messages an event actor takes.
pub enum EventMessage {
    /// The event.
    Get(Reply<Event>),
    /// Change the event.
    Update {
        /// Who asks.
        principal: Principal,
        /// What changes.
        patch: EventPatch,
        /// The version the caller saw (`If-Match`), if it sent one.
        if_match: Option<i64>,
        /// The event as changed.
        reply: Reply<Event>,
    },
    /// Delete the event.
    Delete {
        /// Who asks.
        principal: Principal,
        /// Done.
        reply: Reply<()>,
    },
    /// Register a user.
    Register {
        /// The user.
        user_id: i64,
        /// Join the waitlist when full instead of being refused.
        waitlist: bool,
        /// The caller's `Idempotency-Key`, if any.
        idempotency_key: Option<String>,
        /// The outcome.
        reply: Reply<RegistrationOutcome>,
    },
    /// Cancel a user's registration; the oldest waitlisted user takes the seat.
    Cancel {
        /// The user.
        user_id: i64,
        /// The registration promoted from the waitlist, if any.
        reply: Reply<Option<Registration>>,
    },
    /// Registrations that are not cancelled, first come first.
    ListRegistrations {
        /// Who asks (the creator or an admin).
        principal: Principal,
        /// The registrations.
        reply: Reply<Vec<Registration>>,
    },
    /// What a user may do in the event's live room.
    Access {
        /// The user.
        user_id: i64,
        /// Whether they created the event or hold a seat.
        reply: Reply<RoomAccess>,
    },
    /// Commit the pending registrations (sent by the actor to itself).
    Flush,
    /// Idle check (sent by a timer).
    Tick,
    /// Panics inside the handler, for supervision tests and fault drills.
    InjectFault,
}

impl ractor::Message for EventMessage {}

/// The requests of [`EventMessage`] that may be forwarded to the event's owner on another node.
#[derive(Serialize, Deserialize)]
enum EventRequest {
    Get,
    Update {
        principal: Principal,
        patch: EventPatch,
        if_match: Option<i64>,
    },
    Delete {
        principal: Principal,
    },
    Register {
        user_id: i64,
        waitlist: bool,
        idempotency_key: Option<String>,
    },
    Cancel {
        user_id: i64,
    },
    ListRegistrations {
        principal: Principal,
    },
    Access {
        user_id: i64,
    },
    InjectFault,
}

impl Forwardable for EventMessage {
    fn into_wire(self) -> Result<(Vec<u8>, Responder), Self> {
        let (request, responder) = match self {
            Self::Get(reply) => (EventRequest::Get, respond(reply)),
            Self::Update {
                principal,
                patch,
                if_match,
                reply,
            } => (
                EventRequest::Update {
                    principal,
                    patch,
                    if_match,
                },
                respond(reply),
            ),
            Self::Delete { principal, reply } => {
                (EventRequest::Delete { principal }, respond(reply))
            }
            Self::Register {
                user_id,
                waitlist,
                idempotency_key,
                reply,
            } => (
                EventRequest::Register {
                    user_id,
                    waitlist,
                    idempotency_key,
                },
                respond(reply),
            ),
            Self::Cancel { user_id, reply } => (EventRequest::Cancel { user_id }, respond(reply)),
            Self::ListRegistrations { principal, reply } => (
                EventRequest::ListRegistrations { principal },
                respond(reply),
            ),
            Self::Access { user_id, reply } => (EventRequest::Access { user_id }, respond(reply)),
            Self::InjectFault => (
                EventRequest::InjectFault,
                Box::new(|_: &[u8]| {}) as Responder,
            ),
            // Timer and self messages belong to the actor that sent them.
            local @ (Self::Flush | Self::Tick) => return Err(local),
        };
        Ok((encode(&request), responder))
    }

    fn from_wire(body: &[u8]) -> Result<(Self, wire::Answer), WireError> {
        Ok(match decode::<EventRequest>(body)? {
            EventRequest::Get => {
                let (reply, answer) = wire::answer();
                (Self::Get(reply), answer)
            }
            EventRequest::Update {
                principal,
                patch,
                if_match,
            } => {
                let (reply, answer) = wire::answer();
                let msg = Self::Update {
                    principal,
                    patch,
                    if_match,
                    reply,
                };
                (msg, answer)
            }
            EventRequest::Delete { principal } => {
                let (reply, answer) = wire::answer();
                (Self::Delete { principal, reply }, answer)
            }
            EventRequest::Register {
                user_id,
                waitlist,
                idempotency_key,
            } => {
                let (reply, answer) = wire::answer();
                let msg = Self::Register {
                    user_id,
                    waitlist,
                    idempotency_key,
                    reply,
                };
                (msg, answer)
            }
            EventRequest::Cancel { user_id } => {
                let (reply, answer) = wire::answer();
                (Self::Cancel { user_id, reply }, answer)
            }
            EventRequest::ListRegistrations { principal } => {
                let (reply, answer) = wire::answer();
                (Self::ListRegistrations { principal, reply }, answer)
            }
            EventRequest::Access { user_id } => {
                let (reply, answer) = wire::answer();
                (Self::Access { user_id, reply }, answer)
            }
            EventRequest::InjectFault => (
                Self::InjectFault,
                Box::pin(async { Some(Vec::new()) }) as wire::Answer,
            ),
        })
    }
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
    idle_after: Duration,
}

impl EventFactory {
    /// A factory whose actors passivate after `idle_after` without messages.
    pub fn new(store: Arc<dyn Store>, idle_after: Duration) -> Self {
        Self { store, idle_after }
    }
}

impl EntityFactory for EventFactory {
    type Msg = EventMessage;

    fn kind(&self) -> &'static str {
        "event"
    }

    fn spawn(
        &self,
        key: EntityKey,
        shard: ActorRef<ShardMessage<EventMessage>>,
        supervisor: ActorCell,
    ) -> Spawning<EventMessage> {
        let args = EventArgs {
            key,
            store: self.store.clone(),
            shard,
            idle_after: self.idle_after,
        };
        Box::pin(async move {
            let (actor, _) = Actor::spawn_linked(None, EventActor, args, supervisor).await?;
            Ok(actor)
        })
    }
}

/// Start-up arguments of an event actor.
pub struct EventArgs {
    key: EntityKey,
    store: Arc<dyn Store>,
    shard: ActorRef<ShardMessage<EventMessage>>,
    idle_after: Duration,
}

/// The event actor.
pub struct EventActor;

struct Pending {
    user_id: i64,
    waitlist: bool,
    idempotency_key: Option<String>,
    reply: Reply<RegistrationOutcome>,
}

/// Everything an event actor holds.
pub struct EventState {
    key: EntityKey,
    store: Arc<dyn Store>,
    shard: ActorRef<ShardMessage<EventMessage>>,
    idle: Idle,
    /// `None` when no such event exists.
    event: Option<Event>,
    registrations: HashMap<i64, Registration>,
    waitlist: VecDeque<i64>,
    idempotency: HashMap<(i64, String), RegistrationOutcome>,
    pending: Vec<Pending>,
    flush_scheduled: bool,
    last_stamp: DateTime<Utc>,
}

impl EventState {
    async fn load(&mut self) -> Result<(), StoreError> {
        let id = self.key.numeric_id().unwrap_or(-1);
        self.registrations.clear();
        self.waitlist.clear();
        self.idempotency.clear();
        self.event = None;
        let Some(snapshot) = self.store.load_event(id).await? else {
            return Ok(());
        };
        for reg in snapshot.registrations {
            if reg.status == RegistrationStatus::Waitlisted {
                self.waitlist.push_back(reg.user_id);
            }
            self.last_stamp = self.last_stamp.max(reg.registered_at);
            self.registrations.insert(reg.user_id, reg);
        }
        for rec in snapshot.idempotency {
            if let Ok(outcome) = serde_json::from_value(rec.outcome) {
                self.idempotency.insert((rec.user_id, rec.key), outcome);
            }
        }
        self.event = Some(snapshot.event);
        Ok(())
    }

    /// The live event, or `NotFound` when it does not exist or was deleted.
    fn live(&self) -> Result<&Event, EntityError> {
        self.event
            .as_ref()
            .filter(|e| e.deleted_at.is_none())
            .ok_or(EntityError::NotFound)
    }

    /// A timestamp later than every one this actor handed out, so first-come order is total.
    fn stamp(&mut self) -> DateTime<Utc> {
        // Microseconds: what PostgreSQL keeps, so a reloaded state equals the one in memory.
        let now = Utc::now().trunc_subsecs(6);
        self.last_stamp = if now > self.last_stamp {
            now
        } else {
            self.last_stamp + chrono::Duration::microseconds(1)
        };
        self.last_stamp
    }

    fn active_count(&self) -> i64 {
        self.registrations
            .values()
            .filter(|r| r.status == RegistrationStatus::Active)
            .count() as i64
    }

    fn listed(&self) -> Vec<Registration> {
        let mut regs: Vec<_> = self
            .registrations
            .values()
            .filter(|r| r.status != RegistrationStatus::Cancelled)
            .cloned()
            .collect();
        regs.sort_by_key(|r| (r.registered_at, r.id));
        regs
    }

    /// Moves waitlisted users to active while seats are free; returns the writes and events.
    fn promote(&mut self, event: &Event, at: DateTime<Utc>) -> Vec<(Registration, DomainEvent)> {
        let mut promoted = Vec::new();
        let mut active = self.active_count();
        while active < event.capacity {
            let Some(user_id) = self.waitlist.pop_front() else {
                break;
            };
            let Some(reg) = self.registrations.get(&user_id) else {
                continue;
            };
            let mut reg = reg.clone();
            reg.status = RegistrationStatus::Active;
            reg.updated_at = at;
            let de = DomainEvent::new(
                topics::REGISTRATION_PROMOTED,
                self.key.to_string(),
                json!({"event_id": event.id, "user_id": user_id}),
                at,
            );
            active += 1;
            promoted.push((reg, de));
        }
        promoted
    }

    async fn commit(
        &self,
        event: &Event,
        expected_version: i64,
        registrations: &[RegistrationWrite],
        idempotency: &[IdempotencyRecord],
        events: &[DomainEvent],
    ) -> Result<Vec<i64>, StoreError> {
        self.store
            .save_event(EventCommit {
                event,
                expected_version,
                registrations,
                idempotency,
                events,
            })
            .await
    }
}

/// One batch of registration requests decided together.
struct Batch {
    event: Event,
    writes: Vec<RegistrationWrite>,
    idempotency: Vec<IdempotencyRecord>,
    events: Vec<DomainEvent>,
    /// Per request: the outcome, or the index in `writes` whose committed row answers it.
    answers: Vec<(Pending, Answer)>,
}

enum Answer {
    Ready(RegistrationOutcome),
    Written {
        write: usize,
        outcome: fn(Registration) -> RegistrationOutcome,
    },
}

impl EventState {
    /// Decides every pending request against the current state without changing it.
    fn decide_batch(
        &mut self,
        pending: Vec<Pending>,
        now: DateTime<Utc>,
    ) -> Result<Batch, Vec<Pending>> {
        let Some(base) = self.event.clone().filter(|e| e.deleted_at.is_none()) else {
            return Err(pending);
        };
        let mut event = base;
        let mut active = self.active_count();
        let mut batch = Batch {
            event: event.clone(),
            writes: Vec::new(),
            idempotency: Vec::new(),
            events: Vec::new(),
            answers: Vec::new(),
        };
        // Users decided earlier in this batch: index into writes.
        let mut in_batch: HashMap<i64, usize> = HashMap::new();
        let mut keys_in_batch: HashMap<(i64, String), usize> = HashMap::new();
        for p in pending {
            if let Some(k) = &p.idempotency_key {
                if let Some(&i) = keys_in_batch.get(&(p.user_id, k.clone())) {
                    let answer = match &batch.answers[i].1 {
                        Answer::Ready(o) => Answer::Ready(o.clone()),
                        Answer::Written { write, outcome } => Answer::Written {
                            write: *write,
                            outcome: *outcome,
                        },
                    };
                    batch.answers.push((p, answer));
                    continue;
                }
            }
            let answer = if let Some(&w) = in_batch.get(&p.user_id) {
                Answer::Written {
                    write: w,
                    outcome: RegistrationOutcome::Existing,
                }
            } else {
                match decide_registration(
                    &event,
                    active,
                    self.registrations.get(&p.user_id),
                    p.waitlist,
                    now,
                ) {
                    Decision::Existing(r) => Answer::Ready(RegistrationOutcome::Existing(r)),
                    Decision::Full => Answer::Ready(RegistrationOutcome::Full),
                    Decision::Past => Answer::Ready(RegistrationOutcome::Past),
                    Decision::Take(status) => {
                        let at = self.stamp();
                        let write = match self.registrations.get(&p.user_id) {
                            Some(old) => RegistrationWrite::Update {
                                id: old.id,
                                status,
                                registered_at: at,
                                at,
                            },
                            None => RegistrationWrite::Insert {
                                user_id: p.user_id,
                                status,
                                at,
                            },
                        };
                        let (topic, outcome): (_, fn(Registration) -> RegistrationOutcome) =
                            match status {
                                RegistrationStatus::Active => {
                                    active += 1;
                                    (topics::REGISTRATION_CREATED, RegistrationOutcome::Created)
                                }
                                _ => (
                                    topics::REGISTRATION_WAITLISTED,
                                    RegistrationOutcome::Waitlisted,
                                ),
                            };
                        batch.events.push(DomainEvent::new(
                            topic,
                            self.key.to_string(),
                            json!({"event_id": event.id, "user_id": p.user_id, "status": status.as_str()}),
                            at,
                        ));
                        batch.writes.push(write);
                        in_batch.insert(p.user_id, batch.writes.len() - 1);
                        Answer::Written {
                            write: batch.writes.len() - 1,
                            outcome,
                        }
                    }
                }
            };
            if let Some(k) = &p.idempotency_key {
                keys_in_batch.insert((p.user_id, k.clone()), batch.answers.len());
            }
            batch.answers.push((p, answer));
        }
        event.registered_count = active;
        event.version += 1;
        event.updated_at = now;
        batch.event = event;
        Ok(batch)
    }

    /// The registration a committed write produced.
    fn written(&self, write: &RegistrationWrite, id: Option<i64>, event_id: i64) -> Registration {
        match write {
            RegistrationWrite::Insert {
                user_id,
                status,
                at,
            } => Registration {
                id: id.unwrap_or_default(),
                event_id,
                user_id: *user_id,
                status: *status,
                registered_at: *at,
                updated_at: *at,
            },
            RegistrationWrite::Update {
                id,
                status,
                registered_at,
                at,
            } => {
                let user_id = self
                    .registrations
                    .values()
                    .find(|r| r.id == *id)
                    .map(|r| r.user_id)
                    .unwrap_or_default();
                Registration {
                    id: *id,
                    event_id,
                    user_id,
                    status: *status,
                    registered_at: *registered_at,
                    updated_at: *at,
                }
            }
        }
    }

    async fn flush(&mut self) {
        self.flush_scheduled = false;
        let mut pending = std::mem::take(&mut self.pending);
        for attempt in 0..2 {
            let mut batch = match self.decide_batch(pending, Utc::now()) {
                Ok(b) => b,
                Err(rest) => {
                    for p in rest {
                        let _ = p.reply.send(Err(EntityError::NotFound));
                    }
                    return;
                }
            };
            batch.idempotency = self.idempotency_records(&batch);
            let Some(current) = self.event.clone() else {
                return;
            };
            if batch.writes.is_empty() && batch.idempotency.is_empty() {
                for (p, a) in batch.answers {
                    if let Answer::Ready(o) = a {
                        let _ = p.reply.send(Ok(o));
                    }
                }
                return;
            }
            // With no registration to write the event row keeps its version.
            let next = if batch.writes.is_empty() {
                current.clone()
            } else {
                batch.event.clone()
            };
            match self
                .commit(
                    &next,
                    current.version,
                    &batch.writes,
                    &batch.idempotency,
                    &batch.events,
                )
                .await
            {
                Ok(ids) => {
                    let mut ids = ids.into_iter();
                    let regs: Vec<Registration> = batch
                        .writes
                        .iter()
                        .map(|w| {
                            let id = matches!(w, RegistrationWrite::Insert { .. })
                                .then(|| ids.next())
                                .flatten();
                            self.written(w, id, next.id)
                        })
                        .collect();
                    for reg in &regs {
                        if reg.status == RegistrationStatus::Waitlisted {
                            self.waitlist.push_back(reg.user_id);
                        }
                        self.registrations.insert(reg.user_id, reg.clone());
                    }
                    self.event = Some(next);
                    for (p, a) in batch.answers {
                        let outcome = match a {
                            Answer::Ready(o) => o,
                            Answer::Written { write, outcome } => outcome(regs[write].clone()),
                        };
                        if let Some(k) = p.idempotency_key {
                            self.idempotency
                                .entry((p.user_id, k))
                                .or_insert_with(|| outcome.clone());
                        }
                        let _ = p.reply.send(Ok(outcome));
                    }
                    return;
                }
                Err(StoreError::Conflict | StoreError::Invariant(_)) if attempt == 0 => {
                    tracing::warn!(key = %self.key, "event changed under its actor; reloading");
                    pending = batch.answers.into_iter().map(|(p, _)| p).collect();
                    if let Err(e) = self.load().await {
                        for p in pending {
                            let _ = p.reply.send(Err(e.clone().into()));
                        }
                        return;
                    }
                }
                Err(e) => {
                    if matches!(e, StoreError::Conflict | StoreError::Invariant(_)) {
                        let _ = self.load().await;
                    }
                    for (p, _) in batch.answers {
                        let _ = p.reply.send(Err(e.clone().into()));
                    }
                    return;
                }
            }
        }
    }

    /// Records for the answers of requests that carried a new idempotency key. An answer that
    /// depends on a row inserted by this batch names the write, and the store fills in its id.
    fn idempotency_records(&self, batch: &Batch) -> Vec<IdempotencyRecord> {
        let mut seen = std::collections::HashSet::new();
        batch
            .answers
            .iter()
            .filter_map(|(p, a)| {
                let key = p.idempotency_key.clone()?;
                if self.idempotency.contains_key(&(p.user_id, key.clone()))
                    || !seen.insert((p.user_id, key.clone()))
                {
                    return None;
                }
                let (outcome, write) = match a {
                    Answer::Ready(o) => (o.clone(), None),
                    Answer::Written { write, outcome } => (
                        outcome(self.written(&batch.writes[*write], None, batch.event.id)),
                        Some(*write),
                    ),
                };
                Some(IdempotencyRecord {
                    user_id: p.user_id,
                    key,
                    outcome: serde_json::to_value(outcome).unwrap_or_default(),
                    write,
                })
            })
            .collect()
    }

    async fn cancel(&mut self, user_id: i64) -> Result<Option<Registration>, EntityError> {
        let event = self.live()?.clone();
        let Some(reg) = self
            .registrations
            .get(&user_id)
            .filter(|r| r.status != RegistrationStatus::Cancelled)
            .cloned()
        else {
            return Err(EntityError::NotFound);
        };
        let at = self.stamp();
        let mut next = event.clone();
        let mut cancelled = reg.clone();
        cancelled.status = RegistrationStatus::Cancelled;
        cancelled.updated_at = at;
        let mut writes = vec![RegistrationWrite::Update {
            id: reg.id,
            status: RegistrationStatus::Cancelled,
            registered_at: reg.registered_at,
            at,
        }];
        let mut events = vec![DomainEvent::new(
            topics::REGISTRATION_CANCELLED,
            self.key.to_string(),
            json!({"event_id": event.id, "user_id": user_id}),
            at,
        )];
        // Decide promotions on a copy; apply only after the commit.
        let saved_waitlist = self.waitlist.clone();
        self.waitlist.retain(|u| *u != user_id);
        self.registrations.insert(user_id, cancelled.clone());
        let promoted = self.promote(&event, at);
        self.registrations.insert(user_id, reg.clone());
        for (p, de) in &promoted {
            writes.push(RegistrationWrite::Update {
                id: p.id,
                status: RegistrationStatus::Active,
                registered_at: p.registered_at,
                at,
            });
            events.push(de.clone());
        }
        let freed = i64::from(reg.status == RegistrationStatus::Active);
        next.registered_count = event.registered_count - freed + promoted.len() as i64;
        next.version += 1;
        next.updated_at = at;
        match self
            .commit(&next, event.version, &writes, &[], &events)
            .await
        {
            Ok(_) => {
                self.registrations.insert(user_id, cancelled);
                for (p, _) in &promoted {
                    self.registrations.insert(p.user_id, p.clone());
                }
                self.event = Some(next);
                Ok(promoted.into_iter().next().map(|(p, _)| p))
            }
            Err(e) => {
                self.waitlist = saved_waitlist;
                Err(self.after_failed_write(e).await)
            }
        }
    }

    async fn update(
        &mut self,
        principal: &Principal,
        patch: EventPatch,
        if_match: Option<i64>,
    ) -> Result<Event, EntityError> {
        let event = self.live()?.clone();
        if !principal.may_manage(&event, permissions::EVENTS_UPDATE) {
            return Err(EntityError::Forbidden(
                "only the creator or an admin may change this event".into(),
            ));
        }
        if let Some(expected) = if_match.filter(|v| *v != event.version) {
            return Err(EntityError::PreconditionFailed {
                expected,
                current: event.version,
            });
        }
        let at = self.stamp();
        let mut next = apply_patch(&event, patch)
            .map_err(|m| EntityError::conflict("capacity_below_registered", m))?;
        next.version += 1;
        next.updated_at = at;
        let mut events = vec![DomainEvent::new(
            topics::EVENT_UPDATED,
            self.key.to_string(),
            serde_json::to_value(&next).unwrap_or_default(),
            at,
        )];
        let saved_waitlist = self.waitlist.clone();
        let promoted = self.promote(&next, at);
        let writes: Vec<_> = promoted
            .iter()
            .map(|(p, de)| {
                events.push(de.clone());
                RegistrationWrite::Update {
                    id: p.id,
                    status: RegistrationStatus::Active,
                    registered_at: p.registered_at,
                    at,
                }
            })
            .collect();
        next.registered_count += promoted.len() as i64;
        match self
            .commit(&next, event.version, &writes, &[], &events)
            .await
        {
            Ok(_) => {
                for (p, _) in promoted {
                    self.registrations.insert(p.user_id, p);
                }
                self.event = Some(next.clone());
                Ok(next)
            }
            Err(e) => {
                self.waitlist = saved_waitlist;
                Err(self.after_failed_write(e).await)
            }
        }
    }

    async fn delete(&mut self, principal: &Principal) -> Result<(), EntityError> {
        let event = self.live()?.clone();
        if !principal.may_manage(&event, permissions::EVENTS_DELETE) {
            return Err(EntityError::Forbidden(
                "only the creator or an admin may delete this event".into(),
            ));
        }
        let at = self.stamp();
        let mut next = event.clone();
        next.deleted_at = Some(at);
        next.version += 1;
        next.updated_at = at;
        let events = [DomainEvent::new(
            topics::EVENT_DELETED,
            self.key.to_string(),
            json!({"event_id": event.id}),
            at,
        )];
        match self.commit(&next, event.version, &[], &[], &events).await {
            Ok(_) => {
                self.event = Some(next);
                Ok(())
            }
            Err(e) => Err(self.after_failed_write(e).await),
        }
    }

    /// After a refused write the in-memory state may be stale: reload it so the next request
    /// decides on what the store holds.
    async fn after_failed_write(&mut self, e: StoreError) -> EntityError {
        match e {
            StoreError::Conflict | StoreError::Invariant(_) => {
                let _ = self.load().await;
                EntityError::conflict("concurrent_update", "the event changed meanwhile; retry")
            }
            other => other.into(),
        }
    }
}

/// The event with `patch` applied, or why the patch cannot apply.
pub fn apply_patch(event: &Event, patch: EventPatch) -> Result<Event, String> {
    let mut next = event.clone();
    if let Some(capacity) = patch.capacity {
        if capacity < event.registered_count {
            return Err(format!(
                "capacity {capacity} is below the {} seats already taken",
                event.registered_count
            ));
        }
        next.capacity = capacity;
    }
    if let Some(v) = patch.title {
        next.title = v;
    }
    if let Some(v) = patch.description {
        next.description = v;
    }
    if let Some(v) = patch.date {
        next.date = v;
    }
    if let Some(v) = patch.location {
        next.location = v;
    }
    if let Some(v) = patch.latitude {
        next.latitude = Some(v);
    }
    if let Some(v) = patch.longitude {
        next.longitude = Some(v);
    }
    if let Some(v) = patch.category {
        next.category = v;
    }
    if let Some(v) = patch.tags {
        next.tags = v;
    }
    if let Some(v) = patch.price_cents {
        next.price_cents = Some(v);
    }
    Ok(next)
}

impl Actor for EventActor {
    type Msg = EventMessage;
    type State = EventState;
    type Arguments = EventArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<EventMessage>,
        args: EventArgs,
    ) -> Result<EventState, ActorProcessingErr> {
        let mut state = EventState {
            key: args.key,
            store: args.store,
            shard: args.shard,
            idle: Idle::new(args.idle_after),
            event: None,
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
        match message {
            EventMessage::Get(reply) => {
                let _ = reply.send(state.live().cloned());
            }
            EventMessage::Register {
                user_id,
                waitlist,
                idempotency_key,
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
                    reply,
                });
                if !state.flush_scheduled {
                    // The flush is queued behind the requests already in the mailbox, so one
                    // transaction commits all of them. A draining actor (being passivated or
                    // handed off) takes no new messages: it commits at once instead.
                    state.flush_scheduled = true;
                    if myself.cast(EventMessage::Flush).is_err() {
                        state.flush().await;
                    }
                }
            }
            EventMessage::Flush => state.flush().await,
            EventMessage::Cancel { user_id, reply } => {
                let _ = reply.send(state.cancel(user_id).await);
            }
            EventMessage::Update {
                principal,
                patch,
                if_match,
                reply,
            } => {
                let _ = reply.send(state.update(&principal, patch, if_match).await);
            }
            EventMessage::Delete { principal, reply } => {
                let _ = reply.send(state.delete(&principal).await);
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
                if state.pending.is_empty() {
                    state.idle.check(&state.shard, &state.key);
                }
            }
            EventMessage::InjectFault => panic!("fault injected into {}", state.key),
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

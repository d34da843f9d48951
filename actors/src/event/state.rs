//! An event actor's state between messages: loading it, the counts and lists it answers from,
//! and the changes other than registrations (cancel, update, delete), each one write.

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;

use crate::error::EntityError;
use crate::model::{
    DomainEvent, Event, EventJson, EventPatch, Registration, RegistrationStatus, topics,
};
use crate::rules::{Principal, permissions};
use crate::store::{EventCommit, IdempotencyRecord, RegistrationWrite, StoreError};

use super::EventState;

impl EventState {
    pub(super) async fn load(&mut self) -> Result<(), StoreError> {
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
        self.curation = snapshot.curation;
        self.json = None;
        Ok(())
    }

    /// The live event, or `NotFound` when it does not exist or was deleted.
    pub(super) fn live(&self) -> Result<&Event, EntityError> {
        self.event
            .as_ref()
            .filter(|e| e.deleted_at.is_none())
            .ok_or(EntityError::NotFound)
    }

    /// The live event's JSON, serialised again only when its version changed.
    pub(super) fn json(&mut self) -> Result<EventJson, EntityError> {
        let event = self
            .event
            .as_ref()
            .filter(|e| e.deleted_at.is_none())
            .ok_or(EntityError::NotFound)?;
        match &self.json {
            Some(j) if j.version == event.version => Ok(j.clone()),
            _ => {
                let json = EventJson::of(event, self.curation.as_ref());
                self.json = Some(json.clone());
                Ok(json)
            }
        }
    }

    /// A timestamp later than every one this actor handed out, so first-come order is total.
    pub(super) fn stamp(&mut self) -> DateTime<Utc> {
        // Microseconds: what PostgreSQL keeps, so a reloaded state equals the one in memory.
        let now = Utc::now().trunc_subsecs(6);
        self.last_stamp = if now > self.last_stamp {
            now
        } else {
            self.last_stamp + chrono::Duration::microseconds(1)
        };
        self.last_stamp
    }

    pub(super) fn active_count(&self) -> i64 {
        self.registrations
            .values()
            .filter(|r| r.status == RegistrationStatus::Active)
            .count() as i64
    }

    pub(super) fn listed(&self) -> Vec<Registration> {
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
    pub(super) fn promote(
        &mut self,
        event: &Event,
        at: DateTime<Utc>,
    ) -> Vec<(Registration, DomainEvent)> {
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

    pub(super) async fn commit(
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

impl EventState {
    pub(super) async fn cancel(
        &mut self,
        user_id: i64,
    ) -> Result<Option<Registration>, EntityError> {
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

    pub(super) async fn update(
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

    pub(super) async fn delete(&mut self, principal: &Principal) -> Result<(), EntityError> {
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
    pub(super) async fn after_failed_write(&mut self, e: StoreError) -> EntityError {
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

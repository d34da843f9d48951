//! Registrations decided in batches: every request in a mailbox burst is decided against the
//! same state, written in one transaction, and answered once committed (group commit).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::error::EntityError;
use crate::model::{DomainEvent, Event, Registration, RegistrationStatus, topics};
use crate::rules::{Decision, RegistrationOutcome, decide_registration};
use crate::store::{IdempotencyRecord, RegistrationWrite, StoreError};

use super::{EventState, Pending};

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
                        batch.events.push(
                            DomainEvent::new(
                                topic,
                                self.key.to_string(),
                                json!({"event_id": event.id, "user_id": p.user_id, "status": status.as_str()}),
                                at,
                            )
                            .traced(p.trace.as_deref()),
                        );
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

    pub(super) async fn flush(&mut self) {
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
}

//! Events and registrations: the [`EventStore`] the event actors commit through, and the
//! listings the edges read.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use convene_actors::StoreError;
use convene_actors::curation::Curation;
use convene_actors::model::{
    Category, DomainEvent, Event, NewEvent, Registration, RegistrationStatus, topics,
};
use convene_actors::store::{
    EventCommit, EventSnapshot, EventStore, IdempotencyRecord, RegistrationWrite,
};
use serde_json::{Value, json};
use sqlx::types::Json;

use super::batch::{self, Batch, Idempotent, NewRegistration, Registrations};
use super::interactions::{Interacted, interaction_of};
use super::{CHUNK, Db, SqlStore, corrupt, unavailable, write_error};

/// Filters of the event listing.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this category.
    pub category: Option<Category>,
    /// Only events on or after this date.
    pub from: Option<DateTime<Utc>>,
    /// Only events on or before this date.
    pub to: Option<DateTime<Utc>>,
    /// Only events created by this user.
    pub created_by: Option<i64>,
    /// Only events after this (date, id), the position of the previous page's last event.
    pub after: Option<(DateTime<Utc>, i64)>,
    /// At most this many.
    pub limit: i64,
}

const EVENT_BY_ID: &str = "SELECT id, title, description, date, location, latitude, longitude, capacity, registered_count, category, tags, price_cents, created_by, version, created_at, updated_at, deleted_at FROM events WHERE id = $1";
const LIST_EVENTS: &str = "SELECT id, title, description, date, location, latitude, longitude, capacity, registered_count, category, tags, price_cents, created_by, version, created_at, updated_at, deleted_at FROM events \
    WHERE deleted_at IS NULL \
      AND ($1 IS NULL OR category = $1) \
      AND ($2 IS NULL OR date >= $2) \
      AND ($3 IS NULL OR date <= $3) \
      AND ($4 IS NULL OR created_by = $4) \
      AND ($5 IS NULL OR date > $5 OR (date = $5 AND id > $6)) \
    ORDER BY date, id LIMIT $7";
const EVENT_REGISTRATIONS: &str = "SELECT id, event_id, user_id, status, registered_at, updated_at FROM event_registrations WHERE event_id = $1 ORDER BY registered_at, id";
const USER_REGISTRATIONS: &str = "SELECT id, event_id, user_id, status, registered_at, updated_at FROM event_registrations WHERE user_id = $1 AND status <> 'cancelled' ORDER BY registered_at DESC, id DESC";

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    title: String,
    description: String,
    date: DateTime<Utc>,
    location: String,
    latitude: Option<f64>,
    longitude: Option<f64>,
    capacity: i64,
    registered_count: i64,
    category: String,
    tags: Json<Vec<String>>,
    price_cents: Option<i64>,
    created_by: i64,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

impl EventRow {
    fn into_event(self) -> Result<Event, StoreError> {
        Ok(Event {
            id: self.id,
            title: self.title,
            description: self.description,
            date: self.date,
            location: self.location,
            latitude: self.latitude,
            longitude: self.longitude,
            capacity: self.capacity,
            registered_count: self.registered_count,
            category: Category::parse(&self.category)
                .ok_or_else(|| corrupt("events.category", &self.category))?,
            tags: self.tags.0,
            price_cents: self.price_cents,
            created_by: self.created_by,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
        })
    }
}

const CURATION_BY_EVENT: &str = "SELECT suggested_category, confidence, quality_score, flags FROM event_curation WHERE event_id = $1";

#[derive(sqlx::FromRow)]
struct CurationRow {
    suggested_category: Option<String>,
    confidence: f64,
    quality_score: f64,
    flags: Json<Vec<String>>,
}

impl CurationRow {
    fn into_curation(self) -> Curation {
        Curation {
            suggested_category: self.suggested_category,
            confidence: self.confidence,
            quality_score: self.quality_score,
            flags: self.flags.0,
        }
    }
}

#[derive(sqlx::FromRow)]
struct FlaggedRow {
    event_id: i64,
    #[sqlx(flatten)]
    curation: CurationRow,
}

#[derive(sqlx::FromRow)]
struct RegistrationRow {
    id: i64,
    event_id: i64,
    user_id: i64,
    status: String,
    registered_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl RegistrationRow {
    fn into_registration(self) -> Result<Registration, StoreError> {
        Ok(Registration {
            id: self.id,
            event_id: self.event_id,
            user_id: self.user_id,
            status: RegistrationStatus::parse(&self.status)
                .ok_or_else(|| corrupt("event_registrations.status", &self.status))?,
            registered_at: self.registered_at,
            updated_at: self.updated_at,
        })
    }
}

impl SqlStore {
    /// Live events matching `filter`, by date then id, after the filter's cursor.
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let rows: Vec<EventRow> = on_pool!(self, read, pool => {
            sqlx::query_as(LIST_EVENTS)
                .bind(filter.category.map(Category::as_str))
                .bind(filter.from)
                .bind(filter.to)
                .bind(filter.created_by)
                .bind(filter.after.map(|(d, _)| d))
                .bind(filter.after.map(|(_, id)| id))
                .bind(filter.limit)
                .fetch_all(pool)
                .await
        })
        .map_err(unavailable)?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    /// One event as the database holds it, deleted or not; `None` when there is none.
    pub async fn event(&self, id: i64) -> Result<Option<Event>, StoreError> {
        let row: Option<EventRow> = on_pool!(self, read, pool => {
            sqlx::query_as(EVENT_BY_ID).bind(id).fetch_optional(pool).await
        })
        .map_err(unavailable)?;
        row.map(EventRow::into_event).transpose()
    }

    /// How many live events there are, past and future.
    pub async fn live_events(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = on_pool!(self, read, pool => {
            sqlx::query_as("SELECT COUNT(*) FROM events WHERE deleted_at IS NULL")
                .fetch_one(pool)
                .await
        })
        .map_err(unavailable)?;
        Ok(n)
    }

    /// Live events past and future with an id above `after`, by id: a walk over all of them.
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<Event>, StoreError> {
        let rows: Vec<EventRow> = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT id, title, description, date, location, latitude, longitude, capacity, \
                 registered_count, category, tags, price_cents, created_by, version, created_at, \
                 updated_at, deleted_at FROM events WHERE deleted_at IS NULL AND id > $1 \
                 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    /// The live events among `ids`, in no particular order.
    pub async fn events_by_ids(&self, ids: &[i64]) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let rows: Vec<EventRow> = on_pool!(self, read, pool => {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT id, title, description, date, location, latitude, longitude, capacity, \
                     registered_count, category, tags, price_cents, created_by, version, created_at, \
                     updated_at, deleted_at FROM events WHERE deleted_at IS NULL AND id IN (",
                );
                let mut list = qb.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                qb.push(")");
                qb.build_query_as().fetch_all(pool).await
            })
            .map_err(unavailable)?;
            for row in rows {
                out.push(row.into_event()?);
            }
        }
        Ok(out)
    }

    /// Upcoming events with seats left, the most registered first (of `category` when given):
    /// what is offered when nothing better is known.
    pub async fn popular_upcoming(
        &self,
        category: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let rows: Vec<EventRow> = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT id, title, description, date, location, latitude, longitude, capacity, \
                 registered_count, category, tags, price_cents, created_by, version, created_at, \
                 updated_at, deleted_at FROM events WHERE deleted_at IS NULL AND date > $1 \
                 AND registered_count < capacity AND ($2 IS NULL OR category = $2) \
                 ORDER BY registered_count DESC, date, id LIMIT $3",
            )
            .bind(Utc::now())
            .bind(category)
            .bind(limit)
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    /// Records what curation says of events `(id, curation)`, in one transaction.
    pub async fn save_curations(&self, curations: &[(i64, Curation)]) -> Result<(), StoreError> {
        if curations.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        on_pool!(self, write, pool => async {
            let mut tx = pool.begin().await?;
            for (event_id, c) in curations {
                sqlx::query(
                    "INSERT INTO event_curation (event_id, suggested_category, confidence, \
                     quality_score, flags, flagged, curated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (event_id) DO UPDATE SET suggested_category = EXCLUDED.suggested_category, \
                     confidence = EXCLUDED.confidence, quality_score = EXCLUDED.quality_score, \
                     flags = EXCLUDED.flags, flagged = EXCLUDED.flagged, curated_at = EXCLUDED.curated_at",
                )
                .bind(event_id)
                .bind(c.suggested_category.as_deref())
                .bind(c.confidence)
                .bind(c.quality_score)
                .bind(Json(&c.flags))
                .bind(!c.flags.is_empty())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }
        .await)
        .map_err(unavailable)
    }

    /// Live events with curation flags, the lowest quality first, at most `limit`, from the
    /// `offset`th.
    pub async fn flagged_events(
        &self,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<(Event, Curation)>, StoreError> {
        let rows: Vec<FlaggedRow> = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT c.event_id, c.suggested_category, c.confidence, c.quality_score, c.flags \
                 FROM event_curation c JOIN events e ON e.id = c.event_id \
                 WHERE c.flagged AND e.deleted_at IS NULL \
                 ORDER BY c.quality_score, c.event_id LIMIT $1 OFFSET $2",
            )
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)?;
        let ids: Vec<i64> = rows.iter().map(|r| r.event_id).collect();
        let mut events: HashMap<i64, Event> = self
            .events_by_ids(&ids)
            .await?
            .into_iter()
            .map(|e| (e.id, e))
            .collect();
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                events
                    .remove(&r.event_id)
                    .map(|e| (e, r.curation.into_curation()))
            })
            .collect())
    }

    /// A user's registrations that are not cancelled, newest first.
    pub async fn user_registrations(&self, user_id: i64) -> Result<Vec<Registration>, StoreError> {
        let rows: Vec<RegistrationRow> = on_pool!(self, read, pool => {
            sqlx::query_as(USER_REGISTRATIONS).bind(user_id).fetch_all(pool).await
        })
        .map_err(unavailable)?;
        rows.into_iter()
            .map(RegistrationRow::into_registration)
            .collect()
    }
}

#[async_trait]
impl EventStore for SqlStore {
    async fn create_event(&self, e: NewEvent) -> Result<Event, StoreError> {
        let now = Utc::now();
        on_pool!(self, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let row: EventRow = sqlx::query_as(
                "INSERT INTO events (title, description, date, location, latitude, longitude, capacity, \
                 registered_count, category, tags, price_cents, created_by, version, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10, $11, 1, $12, $12) \
                 RETURNING id, title, description, date, location, latitude, longitude, capacity, registered_count, \
                 category, tags, price_cents, created_by, version, created_at, updated_at, deleted_at",
            )
            .bind(&e.title)
            .bind(&e.description)
            .bind(e.date)
            .bind(&e.location)
            .bind(e.latitude)
            .bind(e.longitude)
            .bind(e.capacity)
            .bind(e.category.as_str())
            .bind(Json(&e.tags))
            .bind(e.price_cents)
            .bind(e.created_by)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(|err| write_error(err, || StoreError::Duplicate("event".into())))?;
            let event = row.into_event()?;
            let created = DomainEvent::new(
                topics::EVENT_CREATED,
                format!("event/{}", event.id),
                serde_json::to_value(&event).unwrap_or_default(),
                now,
            );
            write_outbox!(self, tx, [&created]);
            tx.commit().await.map_err(unavailable)?;
            self.outbox_written();
            Ok(event)
        })
    }

    async fn load_event(&self, id: i64) -> Result<Option<EventSnapshot>, StoreError> {
        let scope = format!("event/{id}");
        let (row, regs, keys, curation): (
            Option<EventRow>,
            Vec<RegistrationRow>,
            Vec<(i64, String, Json<Value>)>,
            Option<CurationRow>,
        ) = on_pool!(self, read, pool => {
            let row = sqlx::query_as(EVENT_BY_ID).bind(id).fetch_optional(pool).await.map_err(unavailable)?;
            let regs = sqlx::query_as(EVENT_REGISTRATIONS).bind(id).fetch_all(pool).await.map_err(unavailable)?;
            let keys = sqlx::query_as("SELECT user_id, key, outcome FROM idempotency_keys WHERE scope = $1")
                .bind(&scope)
                .fetch_all(pool)
                .await
                .map_err(unavailable)?;
            let curation: Option<CurationRow> = sqlx::query_as(CURATION_BY_EVENT)
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(unavailable)?;
            (row, regs, keys, curation)
        });
        let Some(row) = row else { return Ok(None) };
        Ok(Some(EventSnapshot {
            event: row.into_event()?,
            registrations: regs
                .into_iter()
                .map(RegistrationRow::into_registration)
                .collect::<Result<_, _>>()?,
            idempotency: keys
                .into_iter()
                .map(|(user_id, key, outcome)| IdempotencyRecord {
                    user_id,
                    key,
                    outcome: outcome.0,
                    write: None,
                })
                .collect(),
            curation: curation.map(CurationRow::into_curation),
        }))
    }

    async fn save_event(&self, c: EventCommit<'_>) -> Result<Vec<i64>, StoreError> {
        let e = c.event;
        let scope = format!("event/{}", e.id);
        // Each changed row's final status in this batch (the last write wins).
        let mut changed: HashMap<i64, RegistrationStatus> = HashMap::new();
        for w in c.registrations {
            if let RegistrationWrite::Update { id, status, .. } = w {
                changed.insert(*id, *status);
            }
        }
        let inserts: Vec<NewRegistration> = c
            .registrations
            .iter()
            .filter_map(|w| match w {
                RegistrationWrite::Insert {
                    user_id,
                    status,
                    at,
                } => Some((*user_id, *status, *at)),
                RegistrationWrite::Update { .. } => None,
            })
            .collect();
        if !c.registrations.is_empty() && e.registered_count > e.capacity {
            return Err(StoreError::Invariant(format!(
                "event {} would hold {} active registrations for {} seats",
                e.id, e.registered_count, e.capacity
            )));
        }
        // What this batch's own rows add to the active count, beside what the changed rows were.
        let added_active = inserts
            .iter()
            .filter(|(_, status, _)| *status == RegistrationStatus::Active)
            .count() as i64
            + changed
                .values()
                .filter(|s| **s == RegistrationStatus::Active)
                .count() as i64;
        if let Db::Postgres(pool) = &self.db
            && changed.is_empty()
            && !inserts.is_empty()
        {
            // New registrations only, the common batch: one statement, one round trip.
            self.admit()?;
            // Every write is an insert, so a record's write index is an index into `inserts`.
            let idempotency: Vec<Idempotent> = c
                .idempotency
                .iter()
                .map(|rec| Idempotent {
                    user: rec.user_id,
                    key: rec.key.clone(),
                    outcome: rec.outcome.to_string(),
                    inserted_for: rec
                        .write
                        .and_then(|w| inserts.get(w))
                        .map(|(user, _, _)| *user),
                })
                .collect();
            let events: Vec<&DomainEvent> = c.events.iter().collect();
            let interactions: Vec<Interacted> =
                events.iter().filter_map(|e| interaction_of(e)).collect();
            let written = batch::register(
                pool,
                Registrations {
                    event: e,
                    expected_version: c.expected_version,
                    before: e.registered_count - added_active,
                    inserts: &inserts,
                    events: &events,
                    interactions: &interactions,
                    scope: &scope,
                    idempotency: &idempotency,
                },
            )
            .await
            .map_err(|err| write_error(err, || StoreError::Conflict))?
            .ok_or(StoreError::Conflict)?;
            self.touched.touch(written.interactions);
            self.outbox_written();
            let ids: HashMap<i64, i64> = written
                .registrations
                .into_iter()
                .map(|(id, user)| (user, id))
                .collect();
            return inserts
                .iter()
                .map(|(user, _, _)| ids.get(user).copied().ok_or_else(no_id))
                .collect();
        }
        on_pool!(self, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            // How many of the changed rows were active before this batch.
            let ids: Vec<i64> = changed.keys().copied().collect();
            let mut were_active = 0;
            for chunk in ids.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT COUNT(*) FROM event_registrations WHERE status = 'active' AND event_id = ",
                );
                qb.push_bind(e.id).push(" AND id IN (");
                let mut list = qb.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                qb.push(")");
                let (n,): (i64,) = qb
                    .build_query_as()
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                were_active += n;
            }
            // The count the row holds before this batch, which every earlier commit checked:
            // the batch's own rows must take it to the new count, whatever the actor believed.
            // A row holding another count is not the one the actor decided against.
            let before = (!c.registrations.is_empty())
                .then(|| e.registered_count - added_active + were_active);
            let done = bind_event!(sqlx::query(
                "UPDATE events SET title = $1, description = $2, date = $3, location = $4, latitude = $5, \
                 longitude = $6, capacity = $7, registered_count = $8, category = $9, tags = $10, price_cents = $11, \
                 version = $12, updated_at = $13, deleted_at = $14 WHERE id = $15 AND version = $16 \
                 AND ($17 IS NULL OR registered_count = $17)",
            ), e)
            .bind(e.id)
            .bind(c.expected_version)
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(|err| write_error(err, || StoreError::Conflict))?;
            if done.rows_affected() != 1 {
                return Err(StoreError::Conflict);
            }
            // The ids come back keyed by user (unique per event).
            let inserted: HashMap<i64, i64> = Batch::insert_registrations(&mut *tx, e.id, &inserts)
                .await
                .map_err(|err| write_error(err, || StoreError::Conflict))?
                .into_iter()
                .map(|(id, user)| (user, id))
                .collect();
            let mut ids = Vec::with_capacity(inserts.len());
            let mut write_ids = Vec::with_capacity(c.registrations.len());
            for w in c.registrations {
                match w {
                    RegistrationWrite::Insert { user_id, .. } => {
                        let id = *inserted.get(user_id).ok_or_else(no_id)?;
                        ids.push(id);
                        write_ids.push(Some(id));
                    }
                    RegistrationWrite::Update { id, status, registered_at, at } => {
                        sqlx::query(
                            "UPDATE event_registrations SET status = $1, registered_at = $2, updated_at = $3 \
                             WHERE id = $4 AND event_id = $5",
                        )
                        .bind(status.as_str())
                        .bind(registered_at)
                        .bind(at)
                        .bind(id)
                        .bind(e.id)
                        .execute(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                        write_ids.push(None);
                    }
                }
            }
            for rec in c.idempotency {
                let mut outcome = rec.outcome.clone();
                if let Some(id) = rec.write.and_then(|i| write_ids.get(i).copied().flatten()) {
                    if let Some(reg) = outcome.get_mut("registration") {
                        reg["id"] = json!(id);
                    }
                }
                sqlx::query(
                    "INSERT INTO idempotency_keys (scope, user_id, key, outcome, created_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (scope, user_id, key) DO NOTHING",
                )
                .bind(&scope)
                .bind(rec.user_id)
                .bind(&rec.key)
                .bind(Json(&outcome))
                .bind(e.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
            write_outbox!(self, tx, c.events.iter());
            tx.commit().await.map_err(unavailable)?;
            self.outbox_written();
            Ok(ids)
        })
    }
}

fn no_id() -> StoreError {
    StoreError::Unavailable("an inserted registration returned no id".into())
}

//! Multi-row writes, per database: new registrations, and the journal a commit writes beside
//! its rows (its domain events into the outbox, the interactions among them into
//! `interactions` and `analytics_events`). On PostgreSQL each is one statement over arrays:
//! its text never changes, so it is prepared once per connection, and it costs one round trip
//! whatever the batch. SQLite, in process, takes multi-row inserts.

use chrono::{DateTime, Utc};
use convene_actors::model::{DomainEvent, Event, RegistrationStatus};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, SqliteConnection};

use super::CHUNK;
use super::interactions::Interacted;

/// Binds `events` as the outbox's six arrays: ids, topics, keys, payloads, times, traces.
macro_rules! bind_outbox {
    ($query:expr, $events:expr) => {
        $query
            .bind($events.iter().map(|e| e.message_id).collect::<Vec<_>>())
            .bind($events.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>())
            .bind($events.iter().map(|e| e.key.as_str()).collect::<Vec<_>>())
            .bind(
                $events
                    .iter()
                    .map(|e| e.payload.to_string())
                    .collect::<Vec<_>>(),
            )
            .bind($events.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
            .bind(
                $events
                    .iter()
                    .map(|e| e.traceparent.as_deref())
                    .collect::<Vec<_>>(),
            )
    };
}

/// Binds `interactions` as five arrays: users, events, kinds, times, ids.
macro_rules! bind_interactions {
    ($query:expr, $interactions:expr) => {
        $query
            .bind($interactions.iter().map(|i| i.user).collect::<Vec<_>>())
            .bind($interactions.iter().map(|i| i.event).collect::<Vec<_>>())
            .bind(
                $interactions
                    .iter()
                    .map(|i| i.kind.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind($interactions.iter().map(|i| i.at).collect::<Vec<_>>())
            .bind($interactions.iter().map(|i| i.id).collect::<Vec<_>>())
    };
}

/// A registration row to insert: the user, its status, when.
pub(super) type NewRegistration = (i64, RegistrationStatus, DateTime<Utc>);

/// The (id, user) of each row written.
type Written = Vec<(i64, i64)>;

/// Writes of many rows on a connection inside a transaction.
pub(super) trait Batch {
    /// Inserts registrations for `event`.
    async fn insert_registrations(
        &mut self,
        event: i64,
        rows: &[NewRegistration],
    ) -> Result<Written, sqlx::Error>;

    /// Writes `events` to the outbox, in their order, and `interactions`; the interactions'
    /// rows.
    async fn journal(
        &mut self,
        events: &[&DomainEvent],
        interactions: &[Interacted],
    ) -> Result<Written, sqlx::Error>;
}

const PG_REGISTRATIONS: &str = "INSERT INTO event_registrations (event_id, user_id, status, registered_at, updated_at) \
     SELECT $1, u, s, t, t FROM UNNEST($2::bigint[], $3::text[], $4::timestamptz[]) AS x(u, s, t) \
     RETURNING id, user_id";

/// The outbox's rows take their ids in the events' order: the relay publishes in id order.
const PG_OUTBOX: &str = "INSERT INTO outbox (message_id, topic, entity_key, payload, occurred_at, traceparent) \
     SELECT m, t, k, p::json, o, tp \
     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[]) \
     WITH ORDINALITY AS x(m, t, k, p, o, tp, n) ORDER BY n";

/// Interactions ($1 user, $2 event, $3 kind, $4 when, $5 id) and their analytics rows.
const PG_INTERACTIONS: &str = "WITH i AS (\
     INSERT INTO interactions (user_id, event_id, kind, occurred_at) \
     SELECT u, e, k, o FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[]) \
     WITH ORDINALITY AS x(u, e, k, o, n) ORDER BY n RETURNING id, user_id), \
     a AS (INSERT INTO analytics_events (user_id, event_type, event_data, timestamp) \
     SELECT u, k, jsonb_build_object('event_id', e, 'id', m), o \
     FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[], $5::uuid[]) AS y(u, e, k, o, m)) \
     SELECT id, user_id FROM i";

/// Both at once: the outbox's parameters first, then the interactions' from $7.
const PG_JOURNAL: &str = "WITH w AS (\
     INSERT INTO outbox (message_id, topic, entity_key, payload, occurred_at, traceparent) \
     SELECT m, t, k, p::json, o, tp \
     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[]) \
     WITH ORDINALITY AS z(m, t, k, p, o, tp, n) ORDER BY n), \
     i AS (\
     INSERT INTO interactions (user_id, event_id, kind, occurred_at) \
     SELECT u, e, k, o FROM UNNEST($7::bigint[], $8::bigint[], $9::text[], $10::timestamptz[]) \
     WITH ORDINALITY AS x(u, e, k, o, n) ORDER BY n RETURNING id, user_id), \
     a AS (INSERT INTO analytics_events (user_id, event_type, event_data, timestamp) \
     SELECT u, k, jsonb_build_object('event_id', e, 'id', m), o \
     FROM UNNEST($7::bigint[], $8::bigint[], $9::text[], $10::timestamptz[], $11::uuid[]) AS y(u, e, k, o, m)) \
     SELECT id, user_id FROM i";

impl Batch for PgConnection {
    async fn insert_registrations(
        &mut self,
        event: i64,
        rows: &[NewRegistration],
    ) -> Result<Written, sqlx::Error> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as(PG_REGISTRATIONS)
            .bind(event)
            .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
            .fetch_all(self)
            .await
    }

    async fn journal(
        &mut self,
        events: &[&DomainEvent],
        interactions: &[Interacted],
    ) -> Result<Written, sqlx::Error> {
        // A statement that inserts nothing into the outbox would still fire its notification.
        let query = match (events.is_empty(), interactions.is_empty()) {
            (true, true) => return Ok(Vec::new()),
            (false, true) => {
                bind_outbox!(sqlx::query(PG_OUTBOX), events)
                    .execute(self)
                    .await?;
                return Ok(Vec::new());
            }
            (true, false) => sqlx::query_as(PG_INTERACTIONS),
            (false, false) => bind_outbox!(sqlx::query_as(PG_JOURNAL), events),
        };
        bind_interactions!(query, interactions)
            .fetch_all(self)
            .await
    }
}

impl Batch for SqliteConnection {
    async fn insert_registrations(
        &mut self,
        event: i64,
        rows: &[NewRegistration],
    ) -> Result<Written, sqlx::Error> {
        let mut written = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(CHUNK) {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO event_registrations (event_id, user_id, status, registered_at, updated_at) ",
            );
            qb.push_values(chunk, |mut row, (user_id, status, at)| {
                row.push_bind(event)
                    .push_bind(*user_id)
                    .push_bind(status.as_str())
                    .push_bind(*at)
                    .push_bind(*at);
            });
            qb.push(" RETURNING id, user_id");
            written.extend(
                qb.build_query_as::<(i64, i64)>()
                    .fetch_all(&mut *self)
                    .await?,
            );
        }
        Ok(written)
    }

    async fn journal(
        &mut self,
        events: &[&DomainEvent],
        interactions: &[Interacted],
    ) -> Result<Written, sqlx::Error> {
        for chunk in events.chunks(CHUNK) {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO outbox (message_id, topic, entity_key, payload, occurred_at, traceparent) ",
            );
            qb.push_values(chunk, |mut row, event| {
                row.push_bind(event.message_id)
                    .push_bind(event.topic.clone())
                    .push_bind(event.key.clone())
                    .push_bind(event.payload.to_string())
                    .push_bind(event.occurred_at)
                    .push_bind(event.traceparent.clone());
            });
            qb.build().execute(&mut *self).await?;
        }
        let mut written = Vec::with_capacity(interactions.len());
        for chunk in interactions.chunks(CHUNK) {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO interactions (user_id, event_id, kind, occurred_at) ",
            );
            qb.push_values(chunk, |mut row, i| {
                row.push_bind(i.user)
                    .push_bind(i.event)
                    .push_bind(i.kind.as_str())
                    .push_bind(i.at);
            });
            qb.push(" RETURNING id, user_id");
            written.extend(
                qb.build_query_as::<(i64, i64)>()
                    .fetch_all(&mut *self)
                    .await?,
            );
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO analytics_events (user_id, event_type, event_data, timestamp) ",
            );
            qb.push_values(chunk, |mut row, i| {
                row.push_bind(i.user)
                    .push_bind(i.kind.as_str())
                    .push_bind(Json(serde_json::json!({ "event_id": i.event, "id": i.id })))
                    .push_bind(i.at);
            });
            qb.build().execute(&mut *self).await?;
        }
        Ok(written)
    }
}

/// A batch of new registrations, what it journals and the answers it keeps for idempotency
/// keys, as one statement.
pub(super) struct Registrations<'a> {
    /// The event as it is after the batch.
    pub event: &'a Event,
    /// The version the actor loaded.
    pub expected_version: i64,
    /// The count the row must hold before the batch.
    pub before: i64,
    pub inserts: &'a [NewRegistration],
    pub events: &'a [&'a DomainEvent],
    pub interactions: &'a [Interacted],
    /// Where the idempotency keys are kept, such as `event/42`.
    pub scope: &'a str,
    pub idempotency: &'a [Idempotent],
}

/// An answer to keep for an idempotency key.
pub(super) struct Idempotent {
    pub user: i64,
    pub key: String,
    /// The answer's JSON.
    pub outcome: String,
    /// When the answer holds a registration this batch inserts: that row's user, whose id goes
    /// into `registration.id`.
    pub inserted_for: Option<i64>,
}

/// What [`Registrations`] wrote: the registrations' rows and the interactions' rows.
pub(super) struct Registered {
    pub registrations: Written,
    pub interactions: Written,
}

/// The event row is updated only at the expected version and count; every insert is joined to
/// that update, so a row at another version or count writes nothing at all.
const PG_REGISTER: &str = "WITH ev AS (\
     UPDATE events SET title = $1, description = $2, date = $3, location = $4, latitude = $5, \
     longitude = $6, capacity = $7, registered_count = $8, category = $9, tags = $10, price_cents = $11, \
     version = $12, updated_at = $13, deleted_at = $14 WHERE id = $15 AND version = $16 AND registered_count = $17 \
     RETURNING id), \
     reg AS (\
     INSERT INTO event_registrations (event_id, user_id, status, registered_at, updated_at) \
     SELECT ev.id, x.u, x.s, x.t, x.t FROM ev, UNNEST($18::bigint[], $19::text[], $20::timestamptz[]) AS x(u, s, t) \
     RETURNING id, user_id), \
     ob AS (\
     INSERT INTO outbox (message_id, topic, entity_key, payload, occurred_at, traceparent) \
     SELECT z.m, z.t, z.k, z.p::json, z.o, z.tp \
     FROM ev, UNNEST($21::uuid[], $22::text[], $23::text[], $24::text[], $25::timestamptz[], $26::text[]) \
     WITH ORDINALITY AS z(m, t, k, p, o, tp, n) ORDER BY z.n), \
     ia AS (\
     INSERT INTO interactions (user_id, event_id, kind, occurred_at) \
     SELECT y.u, y.e, y.k, y.o FROM ev, UNNEST($27::bigint[], $28::bigint[], $29::text[], $30::timestamptz[]) \
     WITH ORDINALITY AS y(u, e, k, o, n) ORDER BY y.n RETURNING id, user_id), \
     an AS (\
     INSERT INTO analytics_events (user_id, event_type, event_data, timestamp) \
     SELECT q.u, q.k, jsonb_build_object('event_id', q.e, 'id', q.m), q.o \
     FROM ev, UNNEST($27::bigint[], $28::bigint[], $29::text[], $30::timestamptz[], $31::uuid[]) AS q(u, e, k, o, m)), \
     idem AS (\
     INSERT INTO idempotency_keys (scope, user_id, key, outcome, created_at) \
     SELECT $32, i.u, i.k, CASE WHEN reg.id IS NULL THEN i.o::jsonb \
     ELSE jsonb_set(i.o::jsonb, '{registration,id}', to_jsonb(reg.id)) END, $13 \
     FROM ev CROSS JOIN UNNEST($33::bigint[], $34::text[], $35::text[], $36::bigint[]) AS i(u, k, o, w) \
     LEFT JOIN reg ON reg.user_id = i.w \
     ON CONFLICT (scope, user_id, key) DO NOTHING) \
     SELECT 0 AS part, id, 0::bigint AS user_id FROM ev \
     UNION ALL SELECT 1, id, user_id FROM reg \
     UNION ALL SELECT 2, id, user_id FROM ia";

/// Writes `r` in one statement outside any transaction: one round trip, atomic. `None` when
/// the event row was not at the expected version and count.
pub(super) async fn register(
    pool: &PgPool,
    r: Registrations<'_>,
) -> Result<Option<Registered>, sqlx::Error> {
    let e = r.event;
    let query = bind_event!(sqlx::query_as(PG_REGISTER), e)
        .bind(e.id)
        .bind(r.expected_version)
        .bind(r.before)
        .bind(r.inserts.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(r.inserts.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(r.inserts.iter().map(|r| r.2).collect::<Vec<_>>());
    let rows: Vec<(i32, i64, i64)> =
        bind_interactions!(bind_outbox!(query, r.events), r.interactions)
            .bind(r.scope)
            .bind(r.idempotency.iter().map(|i| i.user).collect::<Vec<_>>())
            .bind(
                r.idempotency
                    .iter()
                    .map(|i| i.key.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                r.idempotency
                    .iter()
                    .map(|i| i.outcome.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                r.idempotency
                    .iter()
                    .map(|i| i.inserted_for)
                    .collect::<Vec<_>>(),
            )
            .fetch_all(pool)
            .await?;
    if !rows.iter().any(|(part, _, _)| *part == 0) {
        return Ok(None);
    }
    let mut out = Registered {
        registrations: Vec::with_capacity(r.inserts.len()),
        interactions: Vec::with_capacity(r.interactions.len()),
    };
    for (part, id, user) in rows {
        match part {
            1 => out.registrations.push((id, user)),
            2 => out.interactions.push((id, user)),
            _ => {}
        }
    }
    Ok(Some(out))
}

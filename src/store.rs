//! The sqlx store over PostgreSQL or SQLite: the [`Store`] the actors write through, the read
//! queries the edges use, and the one place where database errors become domain errors.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use convene_actors::model::{
    Category, DomainEvent, Event, NewEvent, NewUser, Registration, RegistrationStatus, Role, User,
    topics,
};
use convene_actors::store::{
    EventCommit, EventSnapshot, IdempotencyRecord, RegistrationWrite, RoomMessage,
};
use convene_actors::{Store, StoreError};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{PgPool, SqlitePool};

/// The database behind the store.
#[derive(Clone, Debug)]
enum Db {
    Postgres(PgPool),
    /// SQLite takes one writer at a time: writes go through a single connection so they queue
    /// in the pool instead of failing as busy; reads use their own connections.
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
    },
}

/// Runs `$body` with `$pool` bound to the pool for writes or for reads, whichever the database.
macro_rules! on_pool {
    ($db:expr, write, $pool:ident => $body:expr) => {
        match &$db {
            Db::Postgres($pool) => $body,
            Db::Sqlite { write: $pool, .. } => $body,
        }
    };
    ($db:expr, read, $pool:ident => $body:expr) => {
        match &$db {
            Db::Postgres($pool) => $body,
            Db::Sqlite { read: $pool, .. } => $body,
        }
    };
}

/// Rows per multi-row insert, well under either database's limit on bound parameters.
const CHUNK: usize = 500;

/// Writes `events` to the outbox inside the transaction `$tx`, many rows per statement.
macro_rules! write_outbox {
    ($tx:expr, $events:expr) => {
        let events: Vec<&DomainEvent> = $events.into_iter().collect();
        for chunk in events.chunks(CHUNK) {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO outbox (message_id, topic, entity_key, payload, occurred_at) ",
            );
            qb.push_values(chunk, |mut row, event| {
                row.push_bind(event.message_id)
                    .push_bind(event.topic.clone())
                    .push_bind(event.key.clone())
                    .push_bind(Json(event.payload.clone()))
                    .push_bind(event.occurred_at);
            });
            qb.build().execute(&mut *$tx).await.map_err(unavailable)?;
        }
    };
}

/// The store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqlStore {
    db: Db,
}

/// Which database a URL names.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl SqlStore {
    /// Connects to PostgreSQL and applies the migrations.
    pub async fn postgres(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./schema/postgres").run(&pool).await?;
        Ok(Self {
            db: Db::Postgres(pool),
        })
    }

    /// Opens (creating it if needed) the SQLite file at `path` and applies the migrations.
    pub async fn sqlite(path: &Path) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./schema/sqlite").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            db: Db::Sqlite { write, read },
        })
    }

    /// `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Postgres(_) => "postgres",
            Db::Sqlite { .. } => "sqlite",
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self.db, read, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
            .map_err(unavailable)
    }

    /// The account with this e-mail address and its password hash.
    pub async fn credentials(&self, email: &str) -> Result<Option<(User, String)>, StoreError> {
        let row: Option<UserRow> = on_pool!(self.db, read, pool => {
            sqlx::query_as(USER_BY_EMAIL).bind(email).fetch_optional(pool).await
        })
        .map_err(unavailable)?;
        row.map(|r| {
            let hash = r.password_hash.clone();
            r.into_user().map(|u| (u, hash))
        })
        .transpose()
    }

    /// Whether the token `jti` was revoked.
    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let row: Option<(String,)> = on_pool!(self.db, read, pool => {
            sqlx::query_as("SELECT jti FROM token_blacklist WHERE jti = $1")
                .bind(jti)
                .fetch_optional(pool)
                .await
        })
        .map_err(unavailable)?;
        Ok(row.is_some())
    }

    /// Live events matching `filter`, by date then id, after the filter's cursor.
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let rows: Vec<EventRow> = on_pool!(self.db, read, pool => {
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

    /// A user's registrations that are not cancelled, newest first.
    pub async fn user_registrations(&self, user_id: i64) -> Result<Vec<Registration>, StoreError> {
        let rows: Vec<RegistrationRow> = on_pool!(self.db, read, pool => {
            sqlx::query_as(USER_REGISTRATIONS).bind(user_id).fetch_all(pool).await
        })
        .map_err(unavailable)?;
        rows.into_iter()
            .map(RegistrationRow::into_registration)
            .collect()
    }

    /// Gives the account with this e-mail address a role; `false` when there is no such account.
    pub async fn grant_role(&self, email: &str, role: Role) -> Result<bool, StoreError> {
        let now = Utc::now();
        let event = DomainEvent::new(
            topics::USER_UPDATED,
            "user",
            json!({"email": email, "role": role.as_str()}),
            now,
        );
        on_pool!(self.db, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let row: Option<(i64,)> = sqlx::query_as(
                "UPDATE users SET role = $1, version = version + 1, updated_at = $2 WHERE email = $3 RETURNING id",
            )
            .bind(role.as_str())
            .bind(now)
            .bind(email)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            let Some((id,)) = row else { return Ok(false) };
            let event = DomainEvent { key: format!("user/{id}"), ..event };
            write_outbox!(tx, [&event]);
            tx.commit().await.map_err(unavailable)?;
            Ok(true)
        })
    }

    /// Domain events not yet published, oldest first.
    pub async fn outbox(&self, limit: i64) -> Result<Vec<DomainEvent>, StoreError> {
        let rows: Vec<OutboxRow> = on_pool!(self.db, read, pool => {
            sqlx::query_as(
                "SELECT message_id, topic, entity_key, payload, occurred_at FROM outbox \
                 WHERE published_at IS NULL ORDER BY id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|r| DomainEvent {
                message_id: r.message_id,
                topic: r.topic,
                key: r.entity_key,
                payload: r.payload.0,
                occurred_at: r.occurred_at,
            })
            .collect())
    }
}

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

const USER_BY_EMAIL: &str = "SELECT id, email, password_hash, name, role, profile, version, created_at, updated_at FROM users WHERE email = $1";
const USER_BY_ID: &str = "SELECT id, email, password_hash, name, role, profile, version, created_at, updated_at FROM users WHERE id = $1";
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
struct UserRow {
    id: i64,
    email: String,
    password_hash: String,
    name: String,
    role: String,
    profile: Json<Value>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl UserRow {
    fn into_user(self) -> Result<User, StoreError> {
        Ok(User {
            id: self.id,
            email: self.email,
            name: self.name,
            role: Role::parse(&self.role).ok_or_else(|| corrupt("users.role", &self.role))?,
            profile: self.profile.0,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

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

#[derive(sqlx::FromRow)]
struct OutboxRow {
    message_id: uuid::Uuid,
    topic: String,
    entity_key: String,
    payload: Json<Value>,
    occurred_at: DateTime<Utc>,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(column: &str, value: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected value `{value}` in {column}"))
}

/// The one place where a failed write becomes a domain error.
fn write_error(e: sqlx::Error, unique: impl FnOnce() -> StoreError) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => unique(),
        sqlx::Error::Database(db) if db.is_check_violation() => {
            StoreError::Invariant(db.message().to_owned())
        }
        _ => unavailable(e),
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let now = Utc::now();
        on_pool!(self.db, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let row: UserRow = sqlx::query_as(
                "INSERT INTO users (email, password_hash, name, role, profile, version, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 1, $6, $6) \
                 RETURNING id, email, password_hash, name, role, profile, version, created_at, updated_at",
            )
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(&user.name)
            .bind(user.role.as_str())
            .bind(Json(json!({})))
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| write_error(e, || StoreError::Duplicate("email".into())))?;
            let user = row.into_user()?;
            let event = DomainEvent::new(
                topics::USER_CREATED,
                format!("user/{}", user.id),
                json!({"user_id": user.id, "email": user.email, "name": user.name}),
                now,
            );
            write_outbox!(tx, [&event]);
            tx.commit().await.map_err(unavailable)?;
            Ok(user)
        })
    }

    async fn load_user(&self, id: i64) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> = on_pool!(self.db, read, pool => {
            sqlx::query_as(USER_BY_ID).bind(id).fetch_optional(pool).await
        })
        .map_err(unavailable)?;
        row.map(UserRow::into_user).transpose()
    }

    async fn save_user(
        &self,
        user: &User,
        expected_version: i64,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        on_pool!(self.db, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let done = sqlx::query(
                "UPDATE users SET name = $1, profile = $2, version = $3, updated_at = $4 WHERE id = $5 AND version = $6",
            )
            .bind(&user.name)
            .bind(Json(&user.profile))
            .bind(user.version)
            .bind(user.updated_at)
            .bind(user.id)
            .bind(expected_version)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            if done.rows_affected() != 1 {
                return Err(StoreError::Conflict);
            }
            write_outbox!(tx, events.iter());
            tx.commit().await.map_err(unavailable)
        })
    }

    async fn revoke_token(&self, jti: &str, expires_at: DateTime<Utc>) -> Result<(), StoreError> {
        on_pool!(self.db, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            sqlx::query("INSERT INTO token_blacklist (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
                .bind(jti)
                .bind(expires_at)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            // Expired tokens are refused on their own; their entries are no longer needed.
            sqlx::query("DELETE FROM token_blacklist WHERE expires_at < $1")
                .bind(Utc::now())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)
        })
    }

    async fn create_event(&self, e: NewEvent) -> Result<Event, StoreError> {
        let now = Utc::now();
        on_pool!(self.db, write, pool => {
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
            write_outbox!(tx, [&created]);
            tx.commit().await.map_err(unavailable)?;
            Ok(event)
        })
    }

    async fn load_event(&self, id: i64) -> Result<Option<EventSnapshot>, StoreError> {
        let scope = format!("event/{id}");
        let (row, regs, keys): (
            Option<EventRow>,
            Vec<RegistrationRow>,
            Vec<(i64, String, Json<Value>)>,
        ) = on_pool!(self.db, read, pool => {
            let row = sqlx::query_as(EVENT_BY_ID).bind(id).fetch_optional(pool).await.map_err(unavailable)?;
            let regs = sqlx::query_as(EVENT_REGISTRATIONS).bind(id).fetch_all(pool).await.map_err(unavailable)?;
            let keys = sqlx::query_as("SELECT user_id, key, outcome FROM idempotency_keys WHERE scope = $1")
                .bind(&scope)
                .fetch_all(pool)
                .await
                .map_err(unavailable)?;
            (row, regs, keys)
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
        }))
    }

    async fn save_event(&self, c: EventCommit<'_>) -> Result<Vec<i64>, StoreError> {
        let e = c.event;
        let scope = format!("event/{}", e.id);
        on_pool!(self.db, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let done = sqlx::query(
                "UPDATE events SET title = $1, description = $2, date = $3, location = $4, latitude = $5, \
                 longitude = $6, capacity = $7, registered_count = $8, category = $9, tags = $10, price_cents = $11, \
                 version = $12, updated_at = $13, deleted_at = $14 WHERE id = $15 AND version = $16",
            )
            .bind(&e.title)
            .bind(&e.description)
            .bind(e.date)
            .bind(&e.location)
            .bind(e.latitude)
            .bind(e.longitude)
            .bind(e.capacity)
            .bind(e.registered_count)
            .bind(e.category.as_str())
            .bind(Json(&e.tags))
            .bind(e.price_cents)
            .bind(e.version)
            .bind(e.updated_at)
            .bind(e.deleted_at)
            .bind(e.id)
            .bind(c.expected_version)
            .execute(&mut *tx)
            .await
            .map_err(|err| write_error(err, || StoreError::Conflict))?;
            if done.rows_affected() != 1 {
                return Err(StoreError::Conflict);
            }
            // New rows go in by the hundred; the ids come back keyed by user (unique per event).
            let inserts: Vec<(i64, RegistrationStatus, DateTime<Utc>)> = c
                .registrations
                .iter()
                .filter_map(|w| match w {
                    RegistrationWrite::Insert { user_id, status, at } => Some((*user_id, *status, *at)),
                    RegistrationWrite::Update { .. } => None,
                })
                .collect();
            let mut inserted = std::collections::HashMap::with_capacity(inserts.len());
            for chunk in inserts.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO event_registrations (event_id, user_id, status, registered_at, updated_at) ",
                );
                qb.push_values(chunk, |mut row, (user_id, status, at)| {
                    row.push_bind(e.id)
                        .push_bind(*user_id)
                        .push_bind(status.as_str())
                        .push_bind(*at)
                        .push_bind(*at);
                });
                qb.push(" RETURNING id, user_id");
                let rows: Vec<(i64, i64)> = qb
                    .build_query_as()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|err| write_error(err, || StoreError::Conflict))?;
                inserted.extend(rows.into_iter().map(|(id, user)| (user, id)));
            }
            let mut ids = Vec::with_capacity(inserts.len());
            let mut write_ids = Vec::with_capacity(c.registrations.len());
            for w in c.registrations {
                match w {
                    RegistrationWrite::Insert { user_id, .. } => {
                        let id = *inserted.get(user_id).ok_or_else(|| {
                            StoreError::Unavailable("an inserted registration returned no id".into())
                        })?;
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
            if !c.registrations.is_empty() {
                // The capacity check again, inside the transaction: whatever the actor believed,
                // the rows themselves never exceed the capacity.
                let (active,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM event_registrations WHERE event_id = $1 AND status = 'active'",
                )
                .bind(e.id)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
                if active > e.capacity || active != e.registered_count {
                    return Err(StoreError::Invariant(format!(
                        "event {} would hold {active} active registrations for {} seats (count {})",
                        e.id, e.capacity, e.registered_count
                    )));
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
            write_outbox!(tx, c.events.iter());
            tx.commit().await.map_err(unavailable)?;
            Ok(ids)
        })
    }

    async fn load_room(&self, room: &str, keep: i64) -> Result<Vec<RoomMessage>, StoreError> {
        let rows: Vec<(i64, i64, Json<Value>, DateTime<Utc>)> = on_pool!(self.db, read, pool => {
            sqlx::query_as(
                "SELECT seq, user_id, body, ts FROM room_messages WHERE room = $1 ORDER BY seq DESC LIMIT $2",
            )
            .bind(room)
            .bind(keep)
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .rev()
            .map(|(seq, from, body, ts)| RoomMessage {
                seq,
                from,
                body: body.0,
                ts,
            })
            .collect())
    }

    async fn append_room(
        &self,
        room: &str,
        messages: &[RoomMessage],
        keep: i64,
    ) -> Result<(), StoreError> {
        let Some(last) = messages.last().map(|m| m.seq) else {
            return Ok(());
        };
        on_pool!(self.db, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            for chunk in messages.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new("INSERT INTO room_messages (room, seq, user_id, body, ts) ");
                qb.push_values(chunk, |mut row, m| {
                    row.push_bind(room.to_owned())
                        .push_bind(m.seq)
                        .push_bind(m.from)
                        .push_bind(Json(m.body.clone()))
                        .push_bind(m.ts);
                });
                qb.build()
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| write_error(e, || StoreError::Conflict))?;
            }
            // Forget what fell out of the kept history now and then, not on every message.
            if messages.iter().any(|m| m.seq % 100 == 0) {
                sqlx::query("DELETE FROM room_messages WHERE room = $1 AND seq <= $2")
                    .bind(room)
                    .bind(last - keep)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)
        })
    }
}

//! What the entity actors need from persistence. The program implements it over sqlx for
//! PostgreSQL and SQLite; every write is one transaction holding the state change, its
//! optimistic-concurrency check and its domain events (the outbox).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::analytics::anomaly::Anomaly;
use crate::analytics::window::MinuteSummary;
use crate::model::{DomainEvent, Event, NewEvent, NewUser, Registration, RegistrationStatus, User};

/// Why a store call failed. Nothing was written when it fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another writer changed the entity first (its version moved on).
    #[error("the entity changed since it was loaded")]
    Conflict,
    /// A unique value is taken already (such as an e-mail address).
    #[error("{0} is taken")]
    Duplicate(String),
    /// The write would break an invariant the store checks itself (such as capacity).
    #[error("invariant violated: {0}")]
    Invariant(String),
    /// The database could not be reached or failed.
    #[error("{0}")]
    Unavailable(String),
}

/// An event with everything its actor keeps in memory.
#[derive(Debug, Clone)]
pub struct EventSnapshot {
    /// The event row.
    pub event: Event,
    /// Every registration, in first-come order.
    pub registrations: Vec<Registration>,
    /// Recorded answers to requests that carried an idempotency key.
    pub idempotency: Vec<IdempotencyRecord>,
    /// What curation says of it, once curated.
    pub curation: Option<crate::curation::Curation>,
}

/// The recorded answer to a request that carried an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    /// Who sent it.
    pub user_id: i64,
    /// The key they chose.
    pub key: String,
    /// The answer, as the entity gave it.
    pub outcome: Value,
    /// When the answer holds a registration inserted by the same commit: the index of that
    /// write in [`EventCommit::registrations`]; the store sets `outcome.registration.id` to the
    /// inserted row's id.
    pub write: Option<usize>,
}

/// A registration row to write.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistrationWrite {
    /// A user registers for the first time.
    Insert {
        /// The user.
        user_id: i64,
        /// Active or waitlisted.
        status: RegistrationStatus,
        /// When.
        at: DateTime<Utc>,
    },
    /// An existing row changes status.
    Update {
        /// The row.
        id: i64,
        /// Its new status.
        status: RegistrationStatus,
        /// Its first-come timestamp (new when a cancelled user registers again).
        registered_at: DateTime<Utc>,
        /// When.
        at: DateTime<Utc>,
    },
}

/// One transaction of an event actor.
#[derive(Debug)]
pub struct EventCommit<'a> {
    /// The event as it is after the change (its version already bumped).
    pub event: &'a Event,
    /// The version the actor loaded; the write fails with [`StoreError::Conflict`] otherwise.
    pub expected_version: i64,
    /// Registration rows to write.
    pub registrations: &'a [RegistrationWrite],
    /// Answers to record for idempotency keys.
    pub idempotency: &'a [IdempotencyRecord],
    /// Domain events for the outbox.
    pub events: &'a [DomainEvent],
}

/// One message of a room, as kept in its history.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RoomMessage {
    /// Position in the room, 1, 2, 3… with no gaps.
    pub seq: i64,
    /// Who sent it.
    pub from: i64,
    /// What they sent (a JSON object).
    #[schema(value_type = Object)]
    pub body: Value,
    /// When the room accepted it.
    pub ts: DateTime<Utc>,
}

/// Persistence of the analytics windows: the raw events they count, the minutes they close,
/// and the anomalies they find.
#[async_trait]
pub trait AnalyticsStore: Send + Sync + 'static {
    /// The interactions recorded from `since` on (raw analytics events), oldest first.
    async fn load_observations(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<crate::analytics::Observation>, StoreError>;
    /// The stored per-minute totals (those without dimensions) from `since` on.
    async fn load_minutes(&self, since: DateTime<Utc>) -> Result<Vec<MinuteSummary>, StoreError>;
    /// Stores per-minute rows, replacing those of the same metric, dimensions and minute.
    async fn save_minutes(&self, rows: &[MinuteSummary]) -> Result<(), StoreError>;
    /// Records an anomaly: its raw analytics event and its `analytics.anomaly` domain event,
    /// in one transaction.
    async fn report_anomaly(&self, anomaly: &Anomaly) -> Result<(), StoreError>;
}

/// Persistence used by the entity actors: one trait per kind of entity, so a store for a new
/// kind is a new trait and an impl beside the others.
pub trait Store: UserStore + EventStore + RoomStore {}

impl<T: UserStore + EventStore + RoomStore> Store for T {}

/// Persistence of accounts.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Creates a user and its `user.created` event.
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError>;
    /// Loads a user.
    async fn load_user(&self, id: i64) -> Result<Option<User>, StoreError>;
    /// Writes a changed user if its stored version is still `expected_version`.
    async fn save_user(
        &self,
        user: &User,
        expected_version: i64,
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;
    /// Refuses the token `jti` from now on (kept until it would have expired anyway).
    async fn revoke_token(&self, jti: &str, expires_at: DateTime<Utc>) -> Result<(), StoreError>;
}

/// Persistence of events and their registrations.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Creates an event and its `event.created` event.
    async fn create_event(&self, event: NewEvent) -> Result<Event, StoreError>;
    /// Loads an event (deleted ones too) with its registrations and idempotency records.
    async fn load_event(&self, id: i64) -> Result<Option<EventSnapshot>, StoreError>;
    /// Writes one event transaction; returns the ids of inserted registrations in order. The
    /// store checks again, inside the transaction, that active registrations fit the capacity.
    async fn save_event(&self, commit: EventCommit<'_>) -> Result<Vec<i64>, StoreError>;
}

/// Persistence of room histories.
#[async_trait]
pub trait RoomStore: Send + Sync + 'static {
    /// The last `keep` messages of a room, oldest first.
    async fn load_room(&self, room: &str, keep: i64) -> Result<Vec<RoomMessage>, StoreError>;
    /// Appends messages to a room's history and forgets those older than the last `keep`; a
    /// sequence number written already fails with [`StoreError::Conflict`].
    async fn append_room(
        &self,
        room: &str,
        messages: &[RoomMessage],
        keep: i64,
    ) -> Result<(), StoreError>;
}

//! The entities' data as the store keeps it and the edges show it, and the domain events that
//! state changes produce (written to the outbox with the change).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// Names of the domain events written to the outbox, which are also their subjects on NATS; the
/// part before the dot is their Kafka topic.
pub mod topics {
    /// A user signed up.
    pub const USER_CREATED: &str = "users.created";
    /// A user changed their name or profile, or was given a role.
    pub const USER_UPDATED: &str = "users.updated";
    /// An event was published.
    pub const EVENT_CREATED: &str = "events.created";
    /// An event was changed.
    pub const EVENT_UPDATED: &str = "events.updated";
    /// An event was deleted.
    pub const EVENT_DELETED: &str = "events.deleted";
    /// A seat was taken.
    pub const REGISTRATION_CREATED: &str = "registrations.created";
    /// A user joined the waitlist.
    pub const REGISTRATION_WAITLISTED: &str = "registrations.waitlisted";
    /// A waitlisted user got a seat.
    pub const REGISTRATION_PROMOTED: &str = "registrations.promoted";
    /// A registration was cancelled.
    pub const REGISTRATION_CANCELLED: &str = "registrations.cancelled";
    /// A minute's rate of a watched metric was far from the usual.
    pub const ANALYTICS_ANOMALY: &str = "analytics.anomaly";
    /// An operator acted from the console or its command line.
    pub const ADMIN_ACTION: &str = "admin.action";
}

/// A user's role; it decides the permissions put in their tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and creates events.
    User,
    /// Every permission.
    Admin,
}

impl Role {
    /// The role's name as stored and put in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored or typed role name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A user account (without its password hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// Numeric id.
    pub id: i64,
    /// Unique, lower-cased e-mail address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Free-form profile object.
    #[schema(value_type = Object)]
    pub profile: Value,
    /// Optimistic-concurrency version, bumped by every change.
    pub version: i64,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Lower-cased e-mail address.
    pub email: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// Event categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Technology.
    Tech,
    /// Business.
    Business,
    /// Arts.
    Arts,
    /// Sports.
    Sports,
}

impl Category {
    /// All categories, in their stored spelling.
    pub const ALL: [&'static str; 4] = ["tech", "business", "arts", "sports"];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Tech => "tech",
            Category::Business => "business",
            Category::Arts => "arts",
            Category::Sports => "sports",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tech" => Some(Category::Tech),
            "business" => Some(Category::Business),
            "arts" => Some(Category::Arts),
            "sports" => Some(Category::Sports),
            _ => None,
        }
    }
}

/// An event people register for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Numeric id.
    pub id: i64,
    /// Title, 3 to 255 characters.
    pub title: String,
    /// Description, at most 5000 characters.
    pub description: String,
    /// When it takes place.
    pub date: DateTime<Utc>,
    /// Where, at most 500 characters.
    pub location: String,
    /// Latitude of the venue.
    pub latitude: Option<f64>,
    /// Longitude of the venue.
    pub longitude: Option<f64>,
    /// Seats.
    pub capacity: i64,
    /// Active registrations.
    pub registered_count: i64,
    /// Category.
    pub category: Category,
    /// Tags.
    pub tags: Vec<String>,
    /// Price in cents, if the event is not free.
    pub price_cents: Option<i64>,
    /// Who created it.
    pub created_by: i64,
    /// Optimistic-concurrency version, bumped by every change.
    pub version: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was deleted; a deleted event is not found.
    pub deleted_at: Option<DateTime<Utc>>,
}

impl Event {
    /// Seats still free.
    pub fn seats_left(&self) -> i64 {
        (self.capacity - self.registered_count).max(0)
    }

    /// The price in currency units.
    pub fn price(&self) -> Option<f64> {
        self.price_cents.map(|c| c as f64 / 100.0)
    }
}

/// An event as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// The event.
    #[serde(flatten)]
    pub event: Event,
    /// Seats still free.
    pub seats_left: i64,
    /// Price in currency units, absent when free.
    pub price: Option<f64>,
    /// The suggested category and quality of the event, once curated (shown when the event
    /// is read on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curation: Option<crate::curation::Curation>,
}

impl From<Event> for EventView {
    fn from(event: Event) -> Self {
        Self {
            seats_left: event.seats_left(),
            price: event.price(),
            curation: None,
            event,
        }
    }
}

/// An event as the API shows it, serialised once per version: the answer to every read of
/// that version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventJson {
    /// The version it shows.
    pub version: i64,
    /// The [`EventView`] as JSON.
    pub body: bytes::Bytes,
}

impl EventJson {
    /// The JSON of `event`'s view, with its curation when it has one.
    pub fn of(event: &Event, curation: Option<&crate::curation::Curation>) -> Self {
        let view = EventView {
            curation: curation.cloned(),
            ..EventView::from(event.clone())
        };
        Self {
            version: event.version,
            // Serialising an event cannot fail: every map key is a string.
            body: serde_json::to_vec(&view).unwrap_or_default().into(),
        }
    }
}

/// An event to create (already validated).
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// When.
    pub date: DateTime<Utc>,
    /// Where.
    pub location: String,
    /// Latitude.
    pub latitude: Option<f64>,
    /// Longitude.
    pub longitude: Option<f64>,
    /// Seats.
    pub capacity: i64,
    /// Category.
    pub category: Category,
    /// Tags.
    pub tags: Vec<String>,
    /// Price in cents.
    pub price_cents: Option<i64>,
    /// Creator.
    pub created_by: i64,
}

/// Changes to an event (already validated); absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventPatch {
    /// New title.
    pub title: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New date.
    pub date: Option<DateTime<Utc>>,
    /// New location.
    pub location: Option<String>,
    /// New latitude.
    pub latitude: Option<f64>,
    /// New longitude.
    pub longitude: Option<f64>,
    /// New capacity.
    pub capacity: Option<i64>,
    /// New category.
    pub category: Option<Category>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New price in cents.
    pub price_cents: Option<i64>,
}

/// Where a registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationStatus {
    /// Holds a seat.
    Active,
    /// Waits for a seat, first come first served.
    Waitlisted,
    /// Gave up the seat or the place in the waitlist.
    Cancelled,
}

impl RegistrationStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Waitlisted => "waitlisted",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "waitlisted" => Some(Self::Waitlisted),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// One user's registration for one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Registration {
    /// Numeric id.
    pub id: i64,
    /// The event.
    pub event_id: i64,
    /// The user.
    pub user_id: i64,
    /// Where it stands.
    pub status: RegistrationStatus,
    /// When the user (last) asked for a seat; waitlist order.
    pub registered_at: DateTime<Utc>,
    /// When its status last changed.
    pub updated_at: DateTime<Utc>,
}

/// A domain event to write to the outbox with the state change that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainEvent {
    /// Stable id: the bus de-duplicates repeats by it.
    pub message_id: Uuid,
    /// What happened (see [`topics`]).
    pub topic: String,
    /// The entity it happened to, such as `event/42`.
    pub key: String,
    /// What the subscribers need to know.
    pub payload: Value,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The W3C trace context of the work that made it happen, when it had one: the buses carry
    /// it as the `traceparent` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl DomainEvent {
    /// A new domain event with a fresh message id, in the trace of the running task.
    pub fn new(topic: &str, key: impl Into<String>, payload: Value, at: DateTime<Utc>) -> Self {
        Self {
            message_id: Uuid::new_v4(),
            topic: topic.to_owned(),
            key: key.into(),
            payload,
            occurred_at: at,
            traceparent: convene_cluster::trace::carried(),
        }
    }

    /// The same, in the trace `traceparent` names (when it names one).
    pub fn traced(mut self, traceparent: Option<&str>) -> Self {
        if let Some(t) = traceparent {
            self.traceparent = Some(t.to_owned());
        }
        self
    }
}

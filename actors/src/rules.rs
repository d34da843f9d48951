//! Domain rules that need no actor: who may do what, and how a registration request is decided.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Event, Registration, RegistrationStatus, Role};

/// Permission names, as carried in tokens.
pub mod permissions {
    /// Read events.
    pub const EVENTS_READ: &str = "events:read";
    /// Create events.
    pub const EVENTS_CREATE: &str = "events:create";
    /// Change anyone's events.
    pub const EVENTS_UPDATE: &str = "events:update";
    /// Delete anyone's events.
    pub const EVENTS_DELETE: &str = "events:delete";
    /// Manage users.
    pub const USERS_MANAGE: &str = "users:manage";
    /// Use the admin endpoints.
    pub const ADMIN_ACCESS: &str = "admin:access";
}

/// The permissions a role grants.
pub fn role_permissions(role: Role) -> &'static [&'static str] {
    use permissions::*;
    match role {
        Role::User => &[EVENTS_READ, EVENTS_CREATE],
        Role::Admin => &[
            EVENTS_READ,
            EVENTS_CREATE,
            EVENTS_UPDATE,
            EVENTS_DELETE,
            USERS_MANAGE,
            ADMIN_ACCESS,
        ],
    }
}

/// Who is asking: the authenticated user and the permissions of their token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The user's id.
    pub user_id: i64,
    /// Permissions carried by the token.
    pub permissions: Vec<String>,
}

impl Principal {
    /// Whether the token carries `permission`.
    pub fn has(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }

    /// The creator of an event may change it; so may anyone holding `permission`.
    pub fn may_manage(&self, event: &Event, permission: &str) -> bool {
        event.created_by == self.user_id || self.has(permission)
    }
}

/// The answer to a registration request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "registration", rename_all = "snake_case")]
pub enum RegistrationOutcome {
    /// A seat was taken.
    Created(Registration),
    /// The user already had a seat or a waitlist place; this is it.
    Existing(Registration),
    /// The event is full and the user asked to wait; this is their place.
    Waitlisted(Registration),
    /// The event is full.
    Full,
    /// The event has already taken place.
    Past,
}

/// What to do with one registration request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Answer with the user's current registration.
    Existing(Registration),
    /// Give the user this status (a new row, or the cancelled row revived).
    Take(RegistrationStatus),
    /// Refuse: no seat and no waitlist asked.
    Full,
    /// Refuse: the event is over.
    Past,
}

/// Decides one request against the event as it stands, `active` being the seats taken.
pub fn decide_registration(
    event: &Event,
    active: i64,
    existing: Option<&Registration>,
    waitlist: bool,
    now: DateTime<Utc>,
) -> Decision {
    if let Some(reg) = existing.filter(|r| r.status != RegistrationStatus::Cancelled) {
        return Decision::Existing(reg.clone());
    }
    if event.date <= now {
        return Decision::Past;
    }
    if active < event.capacity {
        Decision::Take(RegistrationStatus::Active)
    } else if waitlist {
        Decision::Take(RegistrationStatus::Waitlisted)
    } else {
        Decision::Full
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Category;
    use chrono::Duration;

    fn event(capacity: i64) -> Event {
        let now = Utc::now();
        Event {
            id: 1,
            title: "Rust meetup".into(),
            description: String::new(),
            date: now + Duration::days(3),
            location: "Lyon".into(),
            latitude: None,
            longitude: None,
            capacity,
            registered_count: 0,
            category: Category::Tech,
            tags: vec![],
            price_cents: None,
            created_by: 7,
            version: 1,
            created_at: now,
            updated_at: now,
            deleted_at: None,
        }
    }

    fn reg(status: RegistrationStatus) -> Registration {
        Registration {
            id: 3,
            event_id: 1,
            user_id: 9,
            status,
            registered_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn seats_are_given_until_capacity_then_waitlist_or_full() {
        let e = event(2);
        let now = Utc::now();
        assert_eq!(
            decide_registration(&e, 1, None, false, now),
            Decision::Take(RegistrationStatus::Active)
        );
        assert_eq!(decide_registration(&e, 2, None, false, now), Decision::Full);
        assert_eq!(
            decide_registration(&e, 2, None, true, now),
            Decision::Take(RegistrationStatus::Waitlisted)
        );
    }

    #[test]
    fn an_existing_registration_is_returned_and_a_cancelled_one_revived() {
        let e = event(1);
        let now = Utc::now();
        let active = reg(RegistrationStatus::Active);
        assert_eq!(
            decide_registration(&e, 1, Some(&active), false, now),
            Decision::Existing(active)
        );
        let cancelled = reg(RegistrationStatus::Cancelled);
        assert_eq!(
            decide_registration(&e, 0, Some(&cancelled), false, now),
            Decision::Take(RegistrationStatus::Active)
        );
    }

    #[test]
    fn past_events_take_no_registration() {
        let mut e = event(10);
        e.date = Utc::now() - Duration::hours(1);
        assert_eq!(
            decide_registration(&e, 0, None, true, Utc::now()),
            Decision::Past
        );
    }

    #[test]
    fn only_creator_or_holder_of_the_permission_manages_an_event() {
        let e = event(1);
        let creator = Principal {
            user_id: 7,
            permissions: vec![],
        };
        let other = Principal {
            user_id: 8,
            permissions: vec![],
        };
        let admin = Principal {
            user_id: 9,
            permissions: role_permissions(Role::Admin)
                .iter()
                .map(|p| p.to_string())
                .collect(),
        };
        assert!(creator.may_manage(&e, permissions::EVENTS_UPDATE));
        assert!(!other.may_manage(&e, permissions::EVENTS_UPDATE));
        assert!(admin.may_manage(&e, permissions::EVENTS_DELETE));
    }
}

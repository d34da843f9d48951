//! Interactions of users with events (recorded by the edges, and by every registration commit
//! from its domain events), the recent ones counted per event, and the recommendation models
//! the trainer stores and every node loads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use convene_actors::StoreError;
use convene_actors::model::{DomainEvent, topics};
use convene_actors::recommend::{Interaction, Kind};

use super::outbox::horizon;
use super::{Db, Position, SqlStore, unavailable};

/// How long the follower of the interactions may go without reading before what this node
/// knows of them is no longer trusted.
const FOLLOWED_WITHIN: Duration = Duration::from_secs(2);

/// Users who interacted lately, as this node knows them: each user's newest interaction id,
/// for the interactions newer than the model served. This node's own writes are marked as
/// they are made; the other nodes' as the follower of the interactions reads them (within its
/// period). It lets recommendations tell, without a query, whether a user did anything since
/// the model was trained; when it cannot tell, it says so and the store is asked.
#[derive(Debug)]
pub struct Touched {
    users: RwLock<HashMap<i64, i64>>,
    /// Every interaction with an id above this is known (`i64::MAX` until the interactions
    /// past a model were read).
    complete_after: AtomicI64,
    /// Interactions up to this id were let go.
    forgotten: AtomicI64,
    /// When the follower last read the interactions.
    followed: Mutex<Option<Instant>>,
}

impl Default for Touched {
    fn default() -> Self {
        Self {
            users: RwLock::default(),
            complete_after: AtomicI64::new(i64::MAX),
            forgotten: AtomicI64::new(0),
            followed: Mutex::new(None),
        }
    }
}

impl Touched {
    /// Marks interactions, as `(id, user)`.
    pub fn touch(&self, interactions: impl IntoIterator<Item = (i64, i64)>) {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        for (id, user) in interactions {
            let newest = users.entry(user).or_insert(id);
            *newest = (*newest).max(id);
        }
    }

    /// Whether `user` has an interaction with an id above `interaction`; `None` when this node
    /// cannot tell (the follower is behind, or has not read that far back).
    pub fn after(&self, user: i64, interaction: i64) -> Option<bool> {
        let followed = *self.followed.lock().unwrap_or_else(|e| e.into_inner());
        if interaction < self.complete_after.load(Ordering::Acquire)
            || interaction < self.forgotten.load(Ordering::Acquire)
            || followed.is_none_or(|at| at.elapsed() > FOLLOWED_WITHIN)
        {
            return None;
        }
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        Some(users.get(&user).is_some_and(|id| *id > interaction))
    }

    /// The interactions above `after`, as `(id, user)`, were all read: every later one is
    /// known from now on.
    pub fn complete(&self, after: i64, interactions: Vec<(i64, i64)>) {
        self.touch(interactions);
        self.complete_after.fetch_min(after, Ordering::AcqRel);
    }

    /// Every interaction with an id above this is known (`i64::MAX` before the first model).
    pub fn complete_after(&self) -> i64 {
        self.complete_after.load(Ordering::Acquire)
    }

    /// Lets go of the users whose newest interaction is at or below `interaction` (a model
    /// learnt from them).
    pub fn forget_up_to(&self, interaction: i64) {
        self.forgotten.fetch_max(interaction, Ordering::AcqRel);
        self.users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, id| *id > interaction);
    }

    /// The follower has read the interactions committed until now.
    pub fn followed(&self) {
        *self.followed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}

/// The interaction a domain event is, if it is one: registrations, waitlistings, promotions
/// and cancellations; its id is the domain event's.
pub(super) fn interaction_of(e: &DomainEvent) -> Option<Interacted> {
    let kind = match e.topic.as_str() {
        topics::REGISTRATION_CREATED | topics::REGISTRATION_PROMOTED => Kind::Register,
        topics::REGISTRATION_WAITLISTED => Kind::Waitlist,
        topics::REGISTRATION_CANCELLED => Kind::Cancel,
        _ => return None,
    };
    let user = e.payload.get("user_id")?.as_i64()?;
    let event = e.payload.get("event_id")?.as_i64()?;
    Some(Interacted {
        id: e.message_id,
        user,
        event,
        kind,
        at: e.occurred_at,
    })
}

/// An interaction to record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interacted {
    /// Unique: the analytics windows know it by this.
    pub id: uuid::Uuid,
    /// Who.
    pub user: i64,
    /// With which event.
    pub event: i64,
    /// What they did.
    pub kind: Kind,
    /// When.
    pub at: DateTime<Utc>,
}

/// A stored model's description.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Its version, increasing.
    pub version: i64,
    /// When it was trained.
    pub trained_at: DateTime<Utc>,
    /// The last interaction it learnt from.
    pub last_interaction: i64,
    /// Its offline evaluation.
    pub metrics: serde_json::Value,
}

type ModelRow = (
    i64,
    DateTime<Utc>,
    i64,
    sqlx::types::Json<serde_json::Value>,
);

fn model_info((version, trained_at, last_interaction, metrics): ModelRow) -> ModelInfo {
    ModelInfo {
        version,
        trained_at,
        last_interaction,
        metrics: metrics.0,
    }
}

fn kind_of(s: &str) -> Result<Kind, StoreError> {
    Kind::parse(s).ok_or_else(|| super::corrupt("interactions.kind", s))
}

impl SqlStore {
    /// A user's latest `limit` interactions, newest first.
    pub async fn user_interactions(
        &self,
        user_id: i64,
        limit: i64,
    ) -> Result<Vec<Interaction>, StoreError> {
        let rows: Vec<(i64, String, DateTime<Utc>)> = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT event_id, kind, occurred_at FROM interactions WHERE user_id = $1 \
                 ORDER BY occurred_at DESC, id DESC LIMIT $2",
            )
            .bind(user_id)
            .bind(limit)
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|(event_id, kind, at)| {
                Ok(Interaction {
                    user_id,
                    event_id,
                    kind: kind_of(&kind)?,
                    ts: at.timestamp(),
                })
            })
            .collect()
    }

    /// Interactions with an id above `after`, by id, at most `limit`, with their ids.
    pub async fn interactions_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Interaction)>, StoreError> {
        let rows: Vec<(i64, i64, i64, String, DateTime<Utc>)> = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT id, user_id, event_id, kind, occurred_at FROM interactions \
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|(id, user_id, event_id, kind, at)| {
                Ok((
                    id,
                    Interaction {
                        user_id,
                        event_id,
                        kind: kind_of(&kind)?,
                        ts: at.timestamp(),
                    },
                ))
            })
            .collect()
    }

    /// Users who interacted since the model, as this node knows them.
    pub fn touched(&self) -> &Touched {
        &self.touched
    }

    /// Where a follower of the interactions starts: every interaction at or before it is in
    /// what a read made from now on sees, and every later one is past it.
    pub async fn interactions_head(&self) -> Result<Position, StoreError> {
        match &self.db {
            Db::Postgres(pool) => horizon(pool).await,
            Db::Sqlite { read, .. } => {
                let (id,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM interactions")
                    .fetch_one(read)
                    .await
                    .map_err(unavailable)?;
                Ok(Position { xid: 0, id })
            }
        }
    }

    /// Interactions committed past `after`, in commit order, at most `limit`: their place and
    /// `(id, user)`. On PostgreSQL only those below the snapshot horizon, so none committed
    /// later can sort before them (as the outbox is read).
    pub async fn interactions_since(
        &self,
        after: Position,
        limit: i64,
    ) -> Result<Vec<(Position, i64, i64)>, StoreError> {
        let rows: Vec<(i64, i64, i64)> =
            match &self.db {
                Db::Postgres(pool) => {
                    sqlx::query_as(
                        "SELECT i.xid::text::bigint AS xid, i.id, i.user_id FROM interactions i \
                     WHERE (i.xid, i.id) > ($1::bigint::text::xid8, $2) \
                     AND i.xid < pg_snapshot_xmin(pg_current_snapshot()) \
                     ORDER BY i.xid, i.id LIMIT $3",
                    )
                    .bind(after.xid)
                    .bind(after.id)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                }
                Db::Sqlite { read, .. } => sqlx::query_as(
                    "SELECT 0, id, user_id FROM interactions WHERE id > $1 ORDER BY id LIMIT $2",
                )
                .bind(after.id)
                .bind(limit)
                .fetch_all(read)
                .await,
            }
            .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(xid, id, user)| (Position { xid, id }, id, user))
            .collect())
    }

    /// Each user's newest interaction with an id above `after`, as `(id, user)`.
    pub async fn users_interacted_after(&self, after: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT MAX(id), user_id FROM interactions WHERE id > $1 GROUP BY user_id",
            )
            .bind(after)
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)
    }

    /// The id of `user_id`'s latest interaction (0 when there is none).
    pub async fn last_interaction_of(&self, user_id: i64) -> Result<i64, StoreError> {
        let (n,): (Option<i64>,) = on_pool!(self, read, pool => {
            sqlx::query_as("SELECT MAX(id) FROM interactions WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(pool)
                .await
        })
        .map_err(unavailable)?;
        Ok(n.unwrap_or(0))
    }

    /// The homes users set in their profiles.
    pub async fn user_homes(&self) -> Result<HashMap<i64, (f64, f64)>, StoreError> {
        let rows: Vec<(i64, sqlx::types::Json<serde_json::Value>)> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as("SELECT id, profile FROM users WHERE profile ? 'home'")
                    .fetch_all(pool)
                    .await
            }
            Db::Sqlite { read, .. } => sqlx::query_as(
                "SELECT id, profile FROM users WHERE json_extract(profile, '$.home') IS NOT NULL",
            )
            .fetch_all(read)
            .await,
        }
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, profile)| Some((id, crate::recommend::home(&profile.0)?)))
            .collect())
    }

    /// The id of the latest interaction (0 when there is none).
    pub async fn last_interaction(&self) -> Result<i64, StoreError> {
        let (n,): (Option<i64>,) = on_pool!(self, read, pool => {
            sqlx::query_as("SELECT MAX(id) FROM interactions").fetch_one(pool).await
        })
        .map_err(unavailable)?;
        Ok(n.unwrap_or(0))
    }

    /// Events by interactions since `since`, the most first (weighted by kind), at most
    /// `limit`.
    pub async fn trending(
        &self,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT event_id, CAST(SUM(CASE kind WHEN 'register' THEN 5 WHEN 'waitlist' THEN 4 \
                 WHEN 'like' THEN 3 WHEN 'share' THEN 3 WHEN 'click' THEN 2 WHEN 'view' THEN 1 \
                 ELSE 0 END) AS DOUBLE PRECISION) AS score FROM interactions \
                 WHERE occurred_at > $1 GROUP BY event_id ORDER BY score DESC, event_id LIMIT $2",
            )
            .bind(since)
            .bind(limit)
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)
    }

    /// Stores a trained model; its version.
    pub async fn save_model(
        &self,
        bytes: &[u8],
        last_interaction: i64,
        metrics: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let (version,): (i64,) = on_pool!(self, write, pool => {
            sqlx::query_as(
                "INSERT INTO recommendation_models (trained_at, last_interaction, metrics, model) \
                 VALUES ($1, $2, $3, $4) RETURNING version",
            )
            .bind(Utc::now())
            .bind(last_interaction)
            .bind(sqlx::types::Json(metrics))
            .bind(bytes)
            .fetch_one(pool)
            .await
        })
        .map_err(unavailable)?;
        Ok(version)
    }

    /// The newest model's description, if any.
    pub async fn latest_model(&self) -> Result<Option<ModelInfo>, StoreError> {
        let row: Option<ModelRow> = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT version, trained_at, last_interaction, metrics FROM recommendation_models \
                 ORDER BY version DESC LIMIT 1",
            )
            .fetch_optional(pool)
            .await
        })
        .map_err(unavailable)?;
        Ok(row.map(model_info))
    }

    /// A model's bytes; `None` when it was deleted meanwhile.
    pub async fn model_bytes(&self, version: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Vec<u8>,)> = on_pool!(self, read, pool => {
            sqlx::query_as("SELECT model FROM recommendation_models WHERE version = $1")
                .bind(version)
                .fetch_optional(pool)
                .await
        })
        .map_err(unavailable)?;
        Ok(row.map(|(b,)| b))
    }

    /// Deletes all but the newest `keep` models.
    pub async fn prune_models(&self, keep: i64) -> Result<u64, StoreError> {
        on_pool!(self, write, pool => {
            sqlx::query(
                "DELETE FROM recommendation_models WHERE version <= \
                 (SELECT MAX(version) FROM recommendation_models) - $1",
            )
            .bind(keep.max(1))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(unavailable)
    }
}

/// The row that asks the trainer to train now, whichever node holds its lease.
const TRAIN_REQUEST: &str = "recommend-train-request";

impl SqlStore {
    /// Asks the cluster's trainer to train at its next look.
    pub async fn request_training(&self) -> Result<(), StoreError> {
        on_pool!(self, write, pool => {
            sqlx::query(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, 'requested', $2) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(TRAIN_REQUEST)
            .bind(Utc::now() + chrono::TimeDelta::days(1))
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(unavailable)
    }

    /// Takes the request to train, if there is one.
    pub async fn take_training_request(&self) -> Result<bool, StoreError> {
        let taken: Option<(String,)> = on_pool!(self, write, pool => {
            sqlx::query_as("DELETE FROM leases WHERE name = $1 RETURNING name")
                .bind(TRAIN_REQUEST)
                .fetch_optional(pool)
                .await
        })
        .map_err(unavailable)?;
        Ok(taken.is_some())
    }
}

//! The transactional outbox: domain events written in the same transaction as the change they
//! describe, read back in commit order for the relay, marked once every bus took them, pruned
//! after their retention; and the leases that let one node of a cluster relay.

use std::time::Duration;

use chrono::{DateTime, Utc};
use convene_actors::StoreError;
use serde_json::value::RawValue;
use sqlx::types::Json;

use super::{Db, SqlStore, unavailable};

/// An outbox row not yet published, its payload as the JSON text the database holds.
#[derive(Debug)]
pub struct Pending {
    /// Its place in the outbox.
    pub id: i64,
    /// The domain event's id.
    pub message_id: uuid::Uuid,
    /// Its type, such as `events.created`.
    pub topic: String,
    /// The entity it happened to.
    pub entity: String,
    /// What the subscribers need to know.
    pub payload: Box<RawValue>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    message_id: uuid::Uuid,
    topic: String,
    entity_key: String,
    payload: Json<Box<RawValue>>,
    occurred_at: DateTime<Utc>,
}

impl SqlStore {
    /// Called after a commit that wrote outbox rows.
    pub(super) fn outbox_written(&self) {
        self.written.notify_one();
    }

    /// Resolves after the next commit on this node that wrote outbox rows (or at once if one
    /// happened since the last call).
    pub async fn outbox_wait(&self) {
        self.written.notified().await;
    }

    /// Domain events not yet published with an id above `after`, oldest first.
    pub async fn outbox(&self, after: i64, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let rows: Vec<OutboxRow> = on_pool!(self.db, read, pool => {
            sqlx::query_as(
                "SELECT id, message_id, topic, entity_key, payload, occurred_at FROM outbox \
                 WHERE published_at IS NULL AND id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|r| Pending {
                id: r.id,
                message_id: r.message_id,
                topic: r.topic,
                entity: r.entity_key,
                payload: r.payload.0,
                occurred_at: r.occurred_at,
            })
            .collect())
    }

    /// Marks these rows published. On PostgreSQL the commit does not wait for the disk: a mark
    /// lost in a crash only sends those rows again, and the buses drop repeats by id.
    pub async fn mark_published(&self, ids: &[i64], at: DateTime<Utc>) -> Result<(), StoreError> {
        match &self.db {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(unavailable)?;
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                sqlx::query("UPDATE outbox SET published_at = $1 WHERE id = ANY($2)")
                    .bind(at)
                    .bind(ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                tx.commit().await.map_err(unavailable)
            }
            Db::Sqlite { write, .. } => {
                for chunk in ids.chunks(super::CHUNK) {
                    let mut qb = sqlx::QueryBuilder::new("UPDATE outbox SET published_at = ");
                    qb.push_bind(at).push(" WHERE id IN (");
                    let mut list = qb.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    list.push_unseparated(")");
                    qb.build().execute(write).await.map_err(unavailable)?;
                }
                Ok(())
            }
        }
    }

    /// How many rows wait to be published.
    pub async fn outbox_pending(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = on_pool!(self.db, read, pool => {
            sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(pool)
                .await
        })
        .map_err(unavailable)?;
        Ok(n)
    }

    /// Deletes the rows published before `before`; returns how many. No index serves this (each
    /// one would cost every mark an index write); it runs every few minutes.
    pub async fn prune_outbox(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        on_pool!(self.db, write, pool => {
            sqlx::query("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1")
                .bind(before)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(unavailable)
    }

    /// Takes or renews the lease `name` for `holder` until `ttl` from now; `false` when another
    /// holder has it and it has not expired. The database's clock decides on PostgreSQL, so the
    /// nodes' clocks need not agree.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let held: Option<(String,)> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as(
                    "INSERT INTO leases (name, holder, expires_at) \
                     VALUES ($1, $2, NOW() + $3 * INTERVAL '1 millisecond') \
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                     WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < NOW() \
                     RETURNING holder",
                )
                .bind(name)
                .bind(holder)
                .bind(ttl.as_millis() as f64)
                .fetch_optional(pool)
                .await
            }
            Db::Sqlite { write, .. } => {
                let now = Utc::now();
                let expires = now + ttl;
                sqlx::query_as(
                    "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                     WHERE leases.holder = excluded.holder OR leases.expires_at < $4 \
                     RETURNING holder",
                )
                .bind(name)
                .bind(holder)
                .bind(expires)
                .bind(now)
                .fetch_optional(write)
                .await
            }
        }
        .map_err(unavailable)?;
        Ok(held.is_some())
    }

    /// Gives the lease up if `holder` has it, so another node takes it at once.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        on_pool!(self.db, write, pool => {
            sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(unavailable)
    }

    /// The PostgreSQL pool, for LISTEN; `None` on SQLite.
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.db {
            Db::Postgres(pool) => Some(pool),
            Db::Sqlite { .. } => None,
        }
    }
}

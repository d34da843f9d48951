//! The operator's records: entities pinned to a member, the audit of every console action (a
//! domain event in the outbox), and how far the outbox relay is behind.

use chrono::{DateTime, Utc};
use convene_actors::StoreError;
use convene_actors::model::DomainEvent;

use super::{Db, SqlStore, unavailable};

/// An entity pinned to a member.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Pin {
    /// The entity's key, `kind/id`.
    pub key: String,
    /// The member it is pinned to.
    pub node: String,
    /// The admin who pinned it.
    pub pinned_by: i64,
    /// When.
    pub pinned_at: DateTime<Utc>,
}

impl SqlStore {
    /// Every pin, by key.
    pub async fn pins(&self) -> Result<Vec<Pin>, StoreError> {
        let rows: Vec<(String, String, i64, DateTime<Utc>)> = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT entity_key, node, pinned_by, pinned_at FROM placement_pins ORDER BY entity_key",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(key, node, pinned_by, pinned_at)| Pin {
                key,
                node,
                pinned_by,
                pinned_at,
            })
            .collect())
    }

    /// Pins (or re-pins) an entity, with the action's audit event, in one transaction.
    pub async fn pin(&self, pin: &Pin, audit: &DomainEvent) -> Result<(), StoreError> {
        on_pool!(self, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            sqlx::query(
                "INSERT INTO placement_pins (entity_key, node, pinned_by, pinned_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (entity_key) DO UPDATE \
                 SET node = excluded.node, pinned_by = excluded.pinned_by, \
                 pinned_at = excluded.pinned_at",
            )
            .bind(&pin.key)
            .bind(&pin.node)
            .bind(pin.pinned_by)
            .bind(pin.pinned_at)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            write_outbox!(self, tx, [audit]);
            tx.commit().await.map_err(unavailable)?;
        });
        self.outbox_written();
        Ok(())
    }

    /// Lifts the pin of `key` (only if it still names `node`, when given), with its audit
    /// event when there is one; false when there was no such pin.
    pub async fn unpin(
        &self,
        key: &str,
        node: Option<&str>,
        audit: Option<&DomainEvent>,
    ) -> Result<bool, StoreError> {
        let removed = on_pool!(self, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let removed = sqlx::query(
                "DELETE FROM placement_pins WHERE entity_key = $1 AND (CAST($2 AS TEXT) IS NULL OR node = CAST($2 AS TEXT))",
            )
            .bind(key)
            .bind(node)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
            if removed > 0 {
                write_outbox!(self, tx, audit);
            }
            tx.commit().await.map_err(unavailable)?;
            removed > 0
        });
        if removed && audit.is_some() {
            self.outbox_written();
        }
        Ok(removed)
    }

    /// Records an operator's action.
    pub async fn audit(&self, audit: &DomainEvent) -> Result<(), StoreError> {
        on_pool!(self, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            write_outbox!(self, tx, [audit]);
            tx.commit().await.map_err(unavailable)?;
        });
        self.outbox_written();
        Ok(())
    }

    /// Rows the outbox reader `name` has not read yet, and the age in seconds of the oldest.
    pub async fn outbox_lag(&self, name: &str) -> Result<(i64, f64), StoreError> {
        let (n, oldest): (i64, Option<DateTime<Utc>>) = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT COUNT(*), MIN(o.occurred_at) FROM outbox o \
                 JOIN outbox_cursors c ON c.name = $1 WHERE (o.xid, o.id) > (c.xid, c.id)",
            )
            .bind(name)
            .fetch_one(pool)
            .await
        })
        .map_err(unavailable)?;
        let age = oldest.map_or(0.0, |t| {
            (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
        });
        Ok((n, age))
    }
}

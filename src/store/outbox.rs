//! The transactional outbox: domain events written in the same transaction as the change they
//! describe, read back in commit order past a reader's position, the readers' positions, pruning
//! after the retention; and the leases that let one node of a cluster relay.

use std::time::Duration;

use chrono::{DateTime, Utc};
use convene_actors::StoreError;
use serde_json::value::RawValue;
use sqlx::types::Json;

use super::{Db, SqlStore, unavailable};

/// A place in the outbox's commit order: the writing transaction (always 0 on SQLite, where
/// ids are in commit order), then the id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, sqlx::FromRow)]
pub struct Position {
    /// The transaction that wrote the row.
    pub xid: i64,
    /// The row's id.
    pub id: i64,
}

/// An outbox row, its payload as the JSON text the database holds.
#[derive(Debug)]
pub struct Pending {
    /// Its place in the outbox.
    pub position: Position,
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
    /// The trace context of the work that wrote it, if it had one.
    pub traceparent: Option<String>,
}

/// What a read of the outbox found.
#[derive(Debug, Default)]
pub struct Read {
    /// The rows past the position, in commit order.
    pub rows: Vec<Pending>,
    /// Rows past the last one returned exist but cannot be read yet: an older transaction is
    /// still open, and a row it writes would come before them.
    pub held_back: bool,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    xid: i64,
    id: i64,
    message_id: uuid::Uuid,
    topic: String,
    entity_key: String,
    payload: Json<Box<RawValue>>,
    occurred_at: DateTime<Utc>,
    traceparent: Option<String>,
}

/// Wakes a reader of the outbox: after each commit on this node that wrote rows, on
/// PostgreSQL's NOTIFY for commits on other nodes, and at least every `poll` (rows written by
/// another process on SQLite, or a notification missed).
pub struct OutboxWatch {
    commits: tokio::sync::watch::Receiver<u64>,
    listener: Option<sqlx::postgres::PgListener>,
    poll: Duration,
}

impl OutboxWatch {
    /// Starts watching; without a LISTEN connection it falls back to polling.
    pub async fn new(store: &SqlStore, poll: Duration) -> Self {
        let listener = match &store.db {
            Db::Postgres(pool) => match sqlx::postgres::PgListener::connect_with(pool).await {
                Ok(mut l) => match l.listen("convene_outbox").await {
                    Ok(()) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN failed; the outbox is polled");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "no LISTEN connection; the outbox is polled");
                    None
                }
            },
            Db::Sqlite { .. } => None,
        };
        Self {
            commits: store.written.subscribe(),
            listener,
            poll,
        }
    }

    /// Resolves when rows may have been written since the last call.
    pub async fn next(&mut self) {
        let poll = self.poll;
        let notified = async {
            match &mut self.listener {
                // On a lost connection `recv` reconnects and listens again.
                Some(l) => {
                    if l.recv().await.is_err() {
                        tokio::time::sleep(poll).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = self.commits.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(poll).await;
                }
            }
            () = notified => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// The cursor that records the last row pruned.
pub const PRUNED: &str = "pruned";

impl SqlStore {
    /// Called after a commit that wrote outbox rows.
    pub(super) fn outbox_written(&self) {
        self.written.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Up to `limit` domain events past `after`, in commit order. A row is returned only once
    /// no row can commit before it any more, so a reader that carries on from the last row it
    /// read never skips one.
    pub async fn outbox(&self, after: Position, limit: usize) -> Result<Read, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<OutboxRow> = match &self.db {
            Db::Postgres(pool) => {
                // The horizon is the oldest transaction that may still be running: every row
                // written by an older one is there to read, and every row written later sorts
                // after it.
                sqlx::query_as(
                    // Qualified names: a bare `xid` in ORDER BY would be the output column, a
                    // bigint no index serves.
                    "SELECT o.xid::text::bigint AS xid, o.id, o.message_id, o.topic, o.entity_key, \
                     o.payload, o.occurred_at, o.traceparent FROM outbox o \
                     WHERE (o.xid, o.id) > ($1::bigint::text::xid8, $2) \
                     AND o.xid < pg_snapshot_xmin(pg_current_snapshot()) \
                     ORDER BY o.xid, o.id LIMIT $3",
                )
                .bind(after.xid)
                .bind(after.id)
                .bind(limit)
                .fetch_all(pool)
                .await
            }
            Db::Sqlite { read, .. } => {
                sqlx::query_as(
                    "SELECT xid, id, message_id, topic, entity_key, payload, occurred_at, \
                     traceparent FROM outbox WHERE id > $1 ORDER BY id LIMIT $2",
                )
                .bind(after.id)
                .bind(limit)
                .fetch_all(read)
                .await
            }
        }
        .map_err(unavailable)?;
        let full = rows.len() as i64 == limit;
        let rows: Vec<Pending> = rows
            .into_iter()
            .map(|r| Pending {
                position: Position {
                    xid: r.xid,
                    id: r.id,
                },
                message_id: r.message_id,
                topic: r.topic,
                entity: r.entity_key,
                payload: r.payload.0,
                occurred_at: r.occurred_at,
                traceparent: r.traceparent,
            })
            .collect();
        let held_back = match &self.db {
            Db::Postgres(pool) if !full => {
                // Whether the newest row lies past the horizon. Asked as the newest row, not as
                // "any row past the horizon": the planner serves that from the end of the index
                // whatever it believes of the table, where a filter it guesses to match a third
                // of the rows would have it scan the whole table for one.
                let (held,): (bool,) = sqlx::query_as(
                    "SELECT COALESCE((SELECT xid >= pg_snapshot_xmin(pg_current_snapshot()) \
                     FROM outbox ORDER BY xid DESC LIMIT 1), false)",
                )
                .fetch_one(pool)
                .await
                .map_err(unavailable)?;
                held
            }
            _ => false,
        };
        Ok(Read { rows, held_back })
    }

    /// Where the reader `name` stands.
    pub async fn outbox_cursor(&self, name: &str) -> Result<Position, StoreError> {
        let found: Option<Position> = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT CAST(CAST(xid AS TEXT) AS BIGINT) AS xid, id FROM outbox_cursors \
                 WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(pool)
            .await
        })
        .map_err(unavailable)?;
        Ok(found.unwrap_or_default())
    }

    /// Moves the reader `name` forward to `to` (never back). On PostgreSQL the commit does not
    /// wait for the disk: a move lost in a crash only reads those rows again, and the buses
    /// drop repeats by id.
    pub async fn advance_outbox_cursor(&self, name: &str, to: Position) -> Result<(), StoreError> {
        match &self.db {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(unavailable)?;
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                sqlx::query(
                    "INSERT INTO outbox_cursors (name, xid, id) VALUES ($1, $2::bigint::text::xid8, $3) \
                     ON CONFLICT (name) DO UPDATE SET xid = EXCLUDED.xid, id = EXCLUDED.id \
                     WHERE (outbox_cursors.xid, outbox_cursors.id) < (EXCLUDED.xid, EXCLUDED.id)",
                )
                .bind(name)
                .bind(to.xid)
                .bind(to.id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                tx.commit().await.map_err(unavailable)
            }
            Db::Sqlite { write, .. } => sqlx::query(
                "INSERT INTO outbox_cursors (name, xid, id) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET xid = excluded.xid, id = excluded.id \
                 WHERE (outbox_cursors.xid, outbox_cursors.id) < (excluded.xid, excluded.id)",
            )
            .bind(name)
            .bind(to.xid)
            .bind(to.id)
            .execute(write)
            .await
            .map(|_| ())
            .map_err(unavailable),
        }
    }

    /// How many rows the reader `name` has still to take.
    pub async fn outbox_pending(&self, name: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) = on_pool!(self, read, pool => {
            sqlx::query_as(
                "SELECT COUNT(*) FROM outbox o JOIN outbox_cursors c ON c.name = $1 \
                 WHERE (o.xid, o.id) > (c.xid, c.id)",
            )
            .bind(name)
            .fetch_one(pool)
            .await
        })
        .map_err(unavailable)?;
        Ok(n)
    }

    /// The position a reader that reads the tables from now on carries on from: every row at
    /// or before it is reflected in what such a read sees, and every later row is past it.
    pub async fn outbox_head(&self) -> Result<Position, StoreError> {
        match &self.db {
            Db::Postgres(pool) => horizon(pool).await,
            Db::Sqlite { read, .. } => {
                let (id,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM outbox")
                    .fetch_one(read)
                    .await
                    .map_err(unavailable)?;
                Ok(Position { xid: 0, id })
            }
        }
    }

    /// Deletes the rows that happened before `before` and that the reader `name` has taken;
    /// returns how many. The last position deleted is kept as the cursor [`PRUNED`]: a reader
    /// behind it has missed rows.
    pub async fn prune_outbox(&self, name: &str, before: DateTime<Utc>) -> Result<u64, StoreError> {
        match &self.db {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(unavailable)?;
                let gone: Vec<Position> = sqlx::query_as(
                    "DELETE FROM outbox WHERE occurred_at < $2 AND (xid, id) <= \
                     (SELECT xid, id FROM outbox_cursors WHERE name = $1) \
                     RETURNING xid::text::bigint AS xid, id",
                )
                .bind(name)
                .bind(before)
                .fetch_all(&mut *tx)
                .await
                .map_err(unavailable)?;
                if let Some(last) = gone.iter().max() {
                    sqlx::query(
                        "INSERT INTO outbox_cursors (name, xid, id) \
                         VALUES ($1, $2::bigint::text::xid8, $3) \
                         ON CONFLICT (name) DO UPDATE SET xid = EXCLUDED.xid, id = EXCLUDED.id \
                         WHERE (outbox_cursors.xid, outbox_cursors.id) < (EXCLUDED.xid, EXCLUDED.id)",
                    )
                    .bind(PRUNED)
                    .bind(last.xid)
                    .bind(last.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                }
                tx.commit().await.map_err(unavailable)?;
                Ok(gone.len() as u64)
            }
            Db::Sqlite { write, .. } => {
                let mut tx = write.begin().await.map_err(unavailable)?;
                let gone: Vec<Position> = sqlx::query_as(
                    "DELETE FROM outbox WHERE occurred_at < $2 AND (xid, id) <= \
                     (SELECT xid, id FROM outbox_cursors WHERE name = $1) RETURNING xid, id",
                )
                .bind(name)
                .bind(before)
                .fetch_all(&mut *tx)
                .await
                .map_err(unavailable)?;
                if let Some(last) = gone.iter().max() {
                    sqlx::query(
                        "INSERT INTO outbox_cursors (name, xid, id) VALUES ($1, $2, $3) \
                         ON CONFLICT (name) DO UPDATE SET xid = excluded.xid, id = excluded.id \
                         WHERE (outbox_cursors.xid, outbox_cursors.id) < (excluded.xid, excluded.id)",
                    )
                    .bind(PRUNED)
                    .bind(last.xid)
                    .bind(last.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                }
                tx.commit().await.map_err(unavailable)?;
                Ok(gone.len() as u64)
            }
        }
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
        on_pool!(self, write, pool => {
            sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(unavailable)
    }
}

/// The position just before the oldest transaction that may still be running: every row
/// written by an older one is there to read, and every row written later sorts after it.
pub(super) async fn horizon(pool: &sqlx::PgPool) -> Result<Position, StoreError> {
    let (horizon,): (i64,) =
        sqlx::query_as("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await
            .map_err(unavailable)?;
    Ok(Position {
        xid: horizon - 1,
        id: i64::MAX,
    })
}

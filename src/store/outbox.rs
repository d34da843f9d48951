//! The transactional outbox: domain events written in the same transaction as the change they
//! describe, read back in order for the bus relay.

use chrono::{DateTime, Utc};
use convene_actors::StoreError;
use convene_actors::model::DomainEvent;
use serde_json::Value;
use sqlx::types::Json;

use super::{Db, SqlStore, unavailable};

#[derive(sqlx::FromRow)]
struct OutboxRow {
    message_id: uuid::Uuid,
    topic: String,
    entity_key: String,
    payload: Json<Value>,
    occurred_at: DateTime<Utc>,
}

impl SqlStore {
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

//! Room history: the [`RoomStore`] the room actors keep their last messages in.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use convene_actors::StoreError;
use convene_actors::store::{RoomMessage, RoomStore};
use serde_json::Value;
use sqlx::types::Json;

use super::{CHUNK, Db, SqlStore, unavailable, write_error};

#[async_trait]
impl RoomStore for SqlStore {
    async fn load_room(&self, room: &str, keep: i64) -> Result<Vec<RoomMessage>, StoreError> {
        let rows: Vec<(i64, i64, Json<Value>, DateTime<Utc>)> = on_pool!(self, read, pool => {
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
        on_pool!(self, write, pool => {
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

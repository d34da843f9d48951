//! Who interacted since the model, on this node: a task that follows the interactions every
//! node writes, in commit order, into the store's [`Touched`](crate::store::Touched) (this
//! node's own writes are marked there as they are made). When a model is loaded it reads the
//! users who interacted past it once, then lets go of those the model learnt from.

use std::sync::Arc;
use std::time::Duration;

use convene_actors::StoreError;
use tokio::task::JoinHandle;

use super::serving::Models;
use crate::store::{Position, SqlStore};

/// How often the interactions are read: how late another node's interaction can be seen here.
const EVERY: Duration = Duration::from_millis(200);
/// Interactions read at a time.
const ROWS: i64 = 5_000;

/// Follows the interactions until aborted.
pub fn follow(store: SqlStore, models: Arc<Models>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut follower = Follower {
            store,
            models,
            at: None,
            forgotten: 0,
        };
        let mut failing = false;
        loop {
            match follower.step().await {
                Ok(more) => {
                    failing = false;
                    if more {
                        continue;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "the interactions could not be followed; recommendations ask the store");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    })
}

struct Follower {
    store: SqlStore,
    models: Arc<Models>,
    /// The last interaction read (`None` until the head was read).
    at: Option<Position>,
    /// The model's last interaction that users were let go up to.
    forgotten: i64,
}

impl Follower {
    /// Reads what was committed since the last step; true when more is waiting.
    async fn step(&mut self) -> Result<bool, StoreError> {
        let touched = self.store.touched();
        let at = match self.at {
            Some(at) => at,
            None => {
                let head = self.store.interactions_head().await?;
                self.at = Some(head);
                head
            }
        };
        // After the head: whatever the reads from the head miss, this one has.
        if let Some(model) = self.models.current() {
            let learnt = model.last_interaction;
            if learnt < touched.complete_after() {
                let users = self.store.users_interacted_after(learnt).await?;
                touched.complete(learnt, users);
            }
            if learnt > self.forgotten {
                touched.forget_up_to(learnt);
                self.forgotten = learnt;
            }
        }
        let rows = self.store.interactions_since(at, ROWS).await?;
        let more = rows.len() as i64 == ROWS;
        if let Some((last, _, _)) = rows.last() {
            self.at = Some(*last);
        }
        touched.touch(rows.into_iter().map(|(_, id, user)| (id, user)));
        touched.followed();
        Ok(more)
    }
}

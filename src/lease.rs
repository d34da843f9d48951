//! A lease in the database that makes one node of the cluster do a job: the outbox relay, the
//! recommendation trainer, the curator, the analytics feeder. Each node's actor renews it on
//! its timer; the holder renews before it expires, another node takes it over once it has.
//! A [`Follower`] is a lease with a cursor in the outbox: the job that reads the domain events
//! in commit order, once for the whole cluster.

use std::time::Duration;

use convene_actors::StoreError;

use crate::store::{PRUNED, Position, Read, SqlStore};

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// This node holds it, as before.
    Held,
    /// This node took it now.
    Gained,
    /// This node held it and does not any more (or cannot tell: the database failed).
    Lost,
    /// Another node holds it, as before.
    Elsewhere,
}

/// One node's side of a named lease.
pub struct Lease {
    store: SqlStore,
    name: &'static str,
    holder: String,
    lifetime: Duration,
    holding: bool,
}

impl Lease {
    /// The lease `name`, taken by `holder` (unique per process) for `lifetime` at a time.
    pub fn new(store: SqlStore, name: &'static str, holder: String, lifetime: Duration) -> Self {
        Self {
            store,
            name,
            holder,
            lifetime,
            holding: false,
        }
    }

    /// Whether this node held it at the last renewal.
    pub fn held(&self) -> bool {
        self.holding
    }

    /// Takes or renews it. A database error counts as not holding it: the job stops here until
    /// a renewal succeeds, so two nodes never both believe they hold it.
    pub async fn renew(&mut self) -> Renewal {
        let was = self.holding;
        self.holding = match self
            .store
            .take_lease(self.name, &self.holder, self.lifetime)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(lease = self.name, error = %e, "a lease could not be renewed");
                false
            }
        };
        if self.holding != was {
            tracing::info!(lease = self.name, holder = %self.holder, holding = self.holding, "lease");
        }
        match (was, self.holding) {
            (true, true) => Renewal::Held,
            (false, true) => Renewal::Gained,
            (true, false) => Renewal::Lost,
            (false, false) => Renewal::Elsewhere,
        }
    }

    /// Gives it up, when held, so another node takes over at once.
    pub async fn release(&mut self) {
        if !std::mem::take(&mut self.holding) {
            return;
        }
        if let Err(e) = self.store.release_lease(self.name, &self.holder).await {
            tracing::warn!(lease = self.name, error = %e, "a lease was not released");
        }
    }
}

/// A job that follows the outbox past its own cursor on the node holding its lease (the lease
/// and the cursor share a name).
pub struct Follower {
    lease: Lease,
    /// Where this node carries on from; read from the database after the lease is taken.
    position: Option<Position>,
}

impl Follower {
    /// Follows the outbox under `lease`.
    pub fn new(lease: Lease) -> Self {
        Self {
            lease,
            position: None,
        }
    }

    /// Whether this node held the lease at the last round.
    pub fn held(&self) -> bool {
        self.lease.held()
    }

    /// Renews the lease and, when this node holds it, reads up to `limit` rows past the cursor
    /// (`None` when another node holds it). Rows pruned before they were read are skipped,
    /// with a warning.
    pub async fn next(&mut self, limit: usize) -> Result<Option<Read>, StoreError> {
        if self.lease.renew().await != Renewal::Held {
            self.position = None;
        }
        if !self.lease.held() {
            return Ok(None);
        }
        let store = &self.lease.store;
        let mut position = match self.position {
            Some(p) => p,
            None => store.outbox_cursor(self.lease.name).await?,
        };
        let pruned = store.outbox_cursor(PRUNED).await?;
        if position < pruned {
            tracing::warn!(
                follower = self.lease.name,
                "outbox rows were pruned before they were read; they are skipped"
            );
            position = pruned;
        }
        self.position = Some(position);
        store.outbox(position, limit).await.map(Some)
    }

    /// Records that the rows up to `to` are done with.
    pub async fn advance(&mut self, to: Position) -> Result<(), StoreError> {
        self.lease
            .store
            .advance_outbox_cursor(self.lease.name, to)
            .await?;
        self.position = Some(to);
        Ok(())
    }

    /// Gives the lease up, when held.
    pub async fn release(&mut self) {
        self.lease.release().await;
    }
}

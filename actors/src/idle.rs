//! What entity actors share: the start-up arguments of those that need only their store, and
//! idle tracking: after a quiet period an entity asks its shard to passivate it (its state is
//! already durable, so nothing is lost).

use std::sync::Arc;
use std::time::{Duration, Instant};

use convene_cluster::{Activation, EntityKey, ShardMessage, View};
use ractor::{ActorRef, Message};

use crate::store::Store;

/// Start-up arguments of an entity actor that needs only its store.
pub struct EntityArgs<M> {
    pub(crate) key: EntityKey,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) shard: ActorRef<ShardMessage<M>>,
    pub(crate) idle_after: Duration,
    /// Where the actor publishes its answer to reads.
    pub(crate) view: View,
}

impl<M> EntityArgs<M> {
    pub(crate) fn new(key: EntityKey, store: Arc<dyn Store>, activation: &Activation<M>) -> Self {
        Self {
            key,
            store,
            shard: activation.shard.clone(),
            idle_after: activation.passivate_after,
            view: activation.view(),
        }
    }
}

pub(crate) struct Idle {
    last: Instant,
    after: Duration,
    asked: bool,
}

impl Idle {
    pub(crate) fn new(after: Duration) -> Self {
        Self {
            last: Instant::now(),
            after,
            asked: false,
        }
    }

    /// How often the actor should check.
    pub(crate) fn tick_every(&self) -> Duration {
        (self.after / 4).clamp(Duration::from_millis(50), Duration::from_secs(30))
    }

    pub(crate) fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Asks the shard once to passivate `key` now: an actor for an entity that does not exist
    /// holds nothing worth keeping, and must not pile up when clients probe unknown ids.
    pub(crate) fn release<M: Message>(
        &mut self,
        shard: &ActorRef<ShardMessage<M>>,
        key: &EntityKey,
    ) {
        if !self.asked {
            self.asked = true;
            let _ = shard.cast(ShardMessage::Passivate { key: key.clone() });
        }
    }

    /// On a tick: asks the shard once to passivate `key` if the actor has been idle long enough.
    pub(crate) fn check<M: Message>(&mut self, shard: &ActorRef<ShardMessage<M>>, key: &EntityKey) {
        if !self.asked && self.last.elapsed() >= self.after {
            self.asked = true;
            // A shard that is gone takes its linked children with it.
            let _ = shard.cast(ShardMessage::Passivate { key: key.clone() });
        }
    }
}

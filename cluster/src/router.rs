//! The routing seam: the one way edges and bus adapters reach an entity, wherever it lives. A
//! message for a key this node owns goes to the local shard; one for a key another member owns
//! is forwarded in one hop to that member's router actor, and its answer comes back the same way.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorRef, RpcReplyPort, SpawnErr};
use tokio::sync::oneshot;

use crate::directory::Directory;
use crate::probe::KindProbes;
use crate::registry::LocalKind;
use crate::shard::{
    EntityFactory, KindSettings, Shard, ShardArgs, deliver_local, remote_owner, route,
};
use crate::wire::{Answer, Forwardable, WireError};
use crate::{Cluster, EntityKey, ShardMessage, ShardStats};

/// Why an ask got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AskError {
    /// The owner did not answer within the request timeout.
    #[error("the entity did not answer in time")]
    Timeout,
    /// The owner is stopping, crashed while handling the message, or could not start.
    #[error("the entity is unavailable")]
    Unavailable,
}

/// Sends messages to the owner of an entity key and waits for replies.
pub struct Router<M> {
    cluster: Cluster,
    shard: ActorRef<ShardMessage<M>>,
    directory: Arc<Directory<M>>,
    probes: Arc<KindProbes>,
    timeout: Duration,
}

impl<M> Clone for Router<M> {
    fn clone(&self) -> Self {
        Self {
            cluster: self.cluster.clone(),
            shard: self.shard.clone(),
            directory: self.directory.clone(),
            probes: self.probes.clone(),
            timeout: self.timeout,
        }
    }
}

impl<M: Forwardable> Router<M> {
    /// Registers the entity kind `factory` starts: spawns its shard on this node and registers
    /// it with the cluster, so that its keys parse, messages forwarded by other members reach
    /// it, and it hands its entities off when the placement changes.
    pub async fn start<F: EntityFactory<Msg = M>>(
        cluster: Cluster,
        factory: F,
        settings: KindSettings,
    ) -> Result<Self, SpawnErr> {
        let kind = factory.kind();
        let directory = Arc::new(Directory::new());
        let probes = KindProbes::new(kind, cluster.local(), cluster.metrics());
        probes.start_sampling();
        let args = ShardArgs {
            factory: Arc::new(factory),
            settings,
            cluster: cluster.clone(),
            directory: directory.clone(),
            probes: probes.clone(),
        };
        let (shard, _) = Actor::spawn(None, Shard::<F>::default(), args).await?;
        let router = Self {
            cluster,
            shard,
            directory,
            probes,
            timeout: settings.timeout,
        };
        router
            .cluster
            .register(kind, Arc::new(router.clone()) as Arc<dyn LocalKind>);
        Ok(router)
    }

    /// The shard actor of this kind on this node.
    pub fn shard(&self) -> ActorCell {
        self.shard.get_cell()
    }

    /// The cluster this router places keys over.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Sends a one-way message to the entity of `key`.
    pub fn tell(&self, key: EntityKey, msg: M) -> Result<(), AskError> {
        if route(
            &self.cluster,
            &self.shard,
            &self.directory,
            self.timeout,
            key,
            msg,
        ) {
            Ok(())
        } else {
            Err(AskError::Unavailable)
        }
    }

    /// What the entity of `key` published for reads (see [`crate::View`]), when this node owns
    /// the key, its actor runs here, and it published a `V`; otherwise ask it.
    pub fn view<V: Any + Send + Sync>(&self, key: &EntityKey) -> Option<Arc<V>> {
        if remote_owner::<M>(&self.cluster, key).is_some() {
            return None;
        }
        self.directory.view(key, &self.probes)
    }

    /// Sends the message built by `build` to the entity of `key` and waits for its reply.
    pub async fn ask<T: Send + 'static>(
        &self,
        key: EntityKey,
        build: impl FnOnce(RpcReplyPort<T>) -> M,
    ) -> Result<T, AskError> {
        self.send(key, build)?.await
    }

    /// Sends the message now and returns the wait for its reply, so a caller can send several
    /// in order and collect the answers later.
    pub fn send<T: Send + 'static>(
        &self,
        key: EntityKey,
        build: impl FnOnce(RpcReplyPort<T>) -> M,
    ) -> Result<impl Future<Output = Result<T, AskError>> + Send + 'static, AskError> {
        let (tx, rx) = oneshot::channel();
        self.tell(key, build(RpcReplyPort::from(tx)))?;
        let timeout = self.timeout;
        Ok(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(_)) => Err(AskError::Unavailable),
                Err(_) => Err(AskError::Timeout),
            }
        })
    }

    /// The local shard's counters.
    pub async fn stats(&self) -> Result<ShardStats, AskError> {
        ractor::call_t!(self.shard, ShardMessage::Stats, 1000).map_err(|_| AskError::Unavailable)
    }
}

impl<M: Forwardable> LocalKind for Router<M> {
    fn deliver(&self, key: EntityKey, body: &[u8]) -> Result<Answer, WireError> {
        let (msg, answer) = M::from_wire(body)?;
        // If the shard is gone the message and its reply port drop, and the answer is `None`.
        deliver_local(&self.shard, &self.directory, key, msg);
        Ok(answer)
    }

    fn rebalance(&self) {
        let _ = self.shard.cast(ShardMessage::Rebalance);
    }

    fn stats(&self) -> Pin<Box<dyn Future<Output = Option<ShardStats>> + Send>> {
        let shard = self.shard.clone();
        Box::pin(async move { ractor::call_t!(shard, ShardMessage::Stats, 1000).ok() })
    }

    fn probes(&self) -> Arc<KindProbes> {
        self.probes.clone()
    }

    fn passivate(&self, key: EntityKey) {
        let _ = self.shard.cast(ShardMessage::Passivate { key });
    }
}

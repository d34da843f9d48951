//! The routing seam: the one way edges and bus adapters reach an entity, wherever it lives. A
//! message for a key this node owns goes to the local shard; one for a key another member owns
//! is forwarded in one hop to that member's router actor, and its answer comes back the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorRef, RpcReplyPort, SpawnErr};
use tokio::sync::oneshot;

use crate::membership::Owner;
use crate::protocol::{PeerMessage, reply};
use crate::registry::LocalKind;
use crate::shard::{EntityFactory, KindSettings, Shard, ShardArgs};
use crate::wire::{Answer, Forwardable, Responder, WireError};
use crate::{Cluster, EntityKey, ShardMessage, ShardStats};

/// How long a forward waits before asking again when the owner moved or could not be reached.
const RETRY_AFTER: Duration = Duration::from_millis(25);

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
    timeout: Duration,
}

impl<M> Clone for Router<M> {
    fn clone(&self) -> Self {
        Self {
            cluster: self.cluster.clone(),
            shard: self.shard.clone(),
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
        let args = ShardArgs {
            factory: Arc::new(factory),
            settings,
            cluster: cluster.clone(),
        };
        let (shard, _) = Actor::spawn(None, Shard::<F>::default(), args).await?;
        let router = Self {
            cluster,
            shard,
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
        route(&self.cluster, &self.shard, self.timeout, key, msg)
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
        let _ = self.shard.cast(ShardMessage::Deliver { key, msg });
        Ok(answer)
    }

    fn rebalance(&self) {
        let _ = self.shard.cast(ShardMessage::Rebalance);
    }

    fn stats(&self) -> Pin<Box<dyn Future<Output = Option<ShardStats>> + Send>> {
        let shard = self.shard.clone();
        Box::pin(async move { ractor::call_t!(shard, ShardMessage::Stats, 1000).ok() })
    }
}

/// Delivers `msg` to the owner of `key`: the local shard, or the member that owns it.
pub(crate) fn route<M: Forwardable>(
    cluster: &Cluster,
    shard: &ActorRef<ShardMessage<M>>,
    timeout: Duration,
    key: EntityKey,
    msg: M,
) -> Result<(), AskError> {
    let msg = match remote_owner::<M>(cluster, &key) {
        Some(owner) => match msg.into_wire() {
            Ok((body, responder)) => {
                let forward = Forward {
                    cluster: cluster.clone(),
                    shard: shard.clone(),
                    key,
                    body,
                    deadline: Instant::now() + timeout,
                };
                tokio::spawn(forward.run(owner, responder));
                return Ok(());
            }
            Err(msg) => msg,
        },
        None => msg,
    };
    shard
        .cast(ShardMessage::Deliver { key, msg })
        .map_err(|_| AskError::Unavailable)
}

/// The member that owns `key` if it is not this node and the kind is placed.
pub(crate) fn remote_owner<M: Forwardable>(cluster: &Cluster, key: &EntityKey) -> Option<String> {
    if !M::placed() {
        return None;
    }
    match cluster.owner(key) {
        Owner::Remote(name) => Some(name),
        Owner::Local => None,
    }
}

/// One message on its way to a remote owner.
pub(crate) struct Forward<M> {
    pub(crate) cluster: Cluster,
    pub(crate) shard: ActorRef<ShardMessage<M>>,
    pub(crate) key: EntityKey,
    pub(crate) body: Vec<u8>,
    pub(crate) deadline: Instant,
}

impl<M: Forwardable> Forward<M> {
    /// Sends the message to `owner` and completes `responder` with its answer. When the owner
    /// says it no longer owns the key, or the message could not be sent at all, it asks the
    /// owner of the moment again, until the deadline. A message that reached an owner which
    /// then vanished is not sent again (it may have been handled): the caller sees the entity
    /// as unavailable and may retry.
    pub(crate) async fn run(self, mut owner: String, responder: Responder) {
        let kind = self.key.kind().to_owned();
        let key = self.key.to_string();
        loop {
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return;
            }
            if let Some(peer) = self.cluster.peer(&owner) {
                let sent = Instant::now();
                let metrics = self.cluster.metrics();
                metrics.forwarded.inc();
                let call = peer
                    .call(
                        |port| {
                            PeerMessage::Forward(kind.clone(), key.clone(), self.body.clone(), port)
                        },
                        Some(remaining),
                    )
                    .await;
                metrics
                    .forward_latency
                    .observe(sent.elapsed().as_secs_f64());
                match call {
                    Ok(CallResult::Success(answer)) => match answer.first() {
                        Some(&reply::ANSWER) => {
                            responder(&answer[1..]);
                            return;
                        }
                        Some(&reply::MOVED) => {}
                        _ => return,
                    },
                    Ok(CallResult::Timeout) => return,
                    Ok(CallResult::SenderError) => {
                        self.cluster.lost(&owner);
                        return;
                    }
                    Err(_) => self.cluster.lost(&owner),
                }
            }
            tokio::time::sleep(RETRY_AFTER.min(remaining)).await;
            match remote_owner::<M>(&self.cluster, &self.key) {
                Some(next) => owner = next,
                None => return self.deliver_here(responder).await,
            }
        }
    }

    /// The key came to this node while the message waited: deliver it to the local shard.
    async fn deliver_here(self, responder: Responder) {
        let Ok((msg, answer)) = M::from_wire(&self.body) else {
            return;
        };
        if self
            .shard
            .cast(ShardMessage::Deliver { key: self.key, msg })
            .is_err()
        {
            return;
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(bytes)) = tokio::time::timeout(remaining, answer).await {
            responder(&bytes);
        }
    }
}

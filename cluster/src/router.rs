//! The routing seam: the one way edges and bus adapters reach an entity, wherever it lives.

use std::time::Duration;

use ractor::{ActorRef, Message, RpcReplyPort};
use tokio::sync::oneshot;

use crate::{EntityKey, Placement, ShardMessage, ShardStats};

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
    placement: Placement,
    shard: ActorRef<ShardMessage<M>>,
    timeout: Duration,
}

impl<M> Clone for Router<M> {
    fn clone(&self) -> Self {
        Self {
            placement: self.placement.clone(),
            shard: self.shard.clone(),
            timeout: self.timeout,
        }
    }
}

impl<M: Message> Router<M> {
    /// A router over the local shard of one kind.
    pub fn new(placement: Placement, shard: ActorRef<ShardMessage<M>>, timeout: Duration) -> Self {
        Self {
            placement,
            shard,
            timeout,
        }
    }

    /// The member list this router places keys over.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Sends a one-way message to the entity of `key`.
    pub fn tell(&self, key: EntityKey, msg: M) -> Result<(), AskError> {
        self.shard
            .cast(ShardMessage::Deliver { key, msg })
            .map_err(|_| AskError::Unavailable)
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

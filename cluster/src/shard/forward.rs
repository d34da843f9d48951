//! Messages that follow their key to another member: sent in one hop to the owner's router
//! actor, asked again of the owner of the moment when the owner moved, and delivered here when
//! the key came back to this node meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use ractor::rpc::CallResult;

use super::ShardMessage;
use crate::breaker::jittered;
use crate::directory::Directory;
use crate::membership::Owner;
use crate::protocol::{PeerMessage, reply};
use crate::wire::{Forwardable, Responder};
use crate::{Cluster, EntityKey};

/// How long a forward waits before asking again when the owner moved or could not be reached
/// (jittered), doubling up to `RETRY_MAX`.
const RETRY_AFTER: Duration = Duration::from_millis(25);
const RETRY_MAX: Duration = Duration::from_millis(400);

/// Delivers `msg` to the owner of `key`: the local shard, or the member that owns it. False
/// when the local shard is gone.
pub(crate) fn route<M: Forwardable>(
    cluster: &Cluster,
    shard: &ActorRef<ShardMessage<M>>,
    directory: &Directory<M>,
    timeout: Duration,
    key: EntityKey,
    msg: M,
) -> bool {
    let msg = match remote_owner::<M>(cluster, &key) {
        Some(owner) => match msg.into_wire() {
            Ok((body, responder)) => {
                let forward = Forward {
                    cluster: cluster.clone(),
                    shard: shard.clone(),
                    key,
                    body,
                    deadline: Instant::now() + timeout,
                    trace: crate::trace::current(),
                };
                tokio::spawn(forward.run(owner, responder));
                return true;
            }
            Err(msg) => msg,
        },
        None => msg,
    };
    deliver_local(shard, directory, key, msg)
}

/// Delivers `msg` to the local actor of `key`: straight to it when it runs and nothing for the
/// key is on its way through the shard, through the shard otherwise.
pub(crate) fn deliver_local<M: Forwardable>(
    shard: &ActorRef<ShardMessage<M>>,
    directory: &Directory<M>,
    key: EntityKey,
    msg: M,
) -> bool {
    match directory.send(&key, msg) {
        Ok(()) => true,
        Err((msg, ticket)) => shard
            .cast(ShardMessage::Deliver {
                key,
                msg,
                ticket: Some(ticket),
            })
            .is_ok(),
    }
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
    /// The sender's trace context, passed to the owner.
    pub(crate) trace: Option<Arc<str>>,
}

impl<M: Forwardable> Forward<M> {
    /// Sends the message to `owner` and completes `responder` with its answer. When the owner
    /// says it no longer owns the key, or the message could not be sent at all, it asks the
    /// owner of the moment again, until the deadline. A message that reached an owner which
    /// then vanished is not sent again (it may have been handled): the caller sees the entity
    /// as unavailable and may retry. While the breaker of an owner is open, messages for it
    /// fail at once instead of waiting for their deadline.
    pub(crate) async fn run(self, mut owner: String, responder: Responder) {
        let kind = self.key.kind().to_owned();
        let key = self.key.to_string();
        let trace = self.trace.as_deref().unwrap_or_default().to_owned();
        if let Some(id) = crate::trace::trace_id(&trace) {
            tracing::debug!(trace_id = id, %key, %owner, "forwarding to the owner");
        }
        let mut wait = RETRY_AFTER;
        loop {
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return;
            }
            if let Some(peer) = self.cluster.peer(&owner) {
                let breaker = self.cluster.breaker(&owner);
                if !breaker.allow() {
                    return;
                }
                let sent = Instant::now();
                let metrics = self.cluster.metrics();
                metrics.forwarded.inc();
                let call = peer
                    .call(
                        |port| {
                            PeerMessage::Forward(
                                kind.clone(),
                                key.clone(),
                                self.body.clone(),
                                trace.clone(),
                                port,
                            )
                        },
                        Some(remaining),
                    )
                    .await;
                metrics
                    .forward_latency
                    .observe(sent.elapsed().as_secs_f64());
                match call {
                    Ok(CallResult::Success(answer)) => {
                        breaker.success();
                        match answer.first() {
                            Some(&reply::ANSWER) => {
                                responder(&answer[1..]);
                                return;
                            }
                            Some(&reply::MOVED) => {}
                            _ => return,
                        }
                    }
                    Ok(CallResult::Timeout) => {
                        breaker.failure("no answer in time");
                        return;
                    }
                    Ok(CallResult::SenderError) => {
                        breaker.failure("the session closed");
                        self.cluster.lost(&owner);
                        return;
                    }
                    Err(_) => {
                        breaker.failure("unreachable");
                        self.cluster.lost(&owner);
                    }
                }
            }
            tokio::time::sleep(jittered(wait).min(remaining)).await;
            wait = (wait * 2).min(RETRY_MAX);
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
            .cast(ShardMessage::Deliver {
                key: self.key,
                msg,
                ticket: None,
            })
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

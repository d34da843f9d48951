//! What a node serves: the entity kinds registered at start (each reached through its shard)
//! and the node services (such as the fan-out of room frames) that other nodes call by topic.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use crate::probe::KindProbes;
use crate::wire::{Answer, WireError};
use crate::{EntityKey, KeyError, ShardStats};

/// One kind of entity this node serves, as the cluster layer reaches it.
pub(crate) trait LocalKind: Send + Sync {
    /// Rebuilds a forwarded message and delivers it to the local shard.
    fn deliver(&self, key: EntityKey, body: &[u8]) -> Result<Answer, WireError>;
    /// Asks the local shard to hand off the entities this node no longer owns.
    fn rebalance(&self);
    /// The local shard's counters.
    fn stats(&self) -> Pin<Box<dyn Future<Output = Option<ShardStats>> + Send>>;
    /// What the console sees of the kind's actors here.
    fn probes(&self) -> Arc<KindProbes>;
    /// Asks the local shard to passivate the entity of `key` if it runs.
    fn passivate(&self, key: EntityKey);
}

/// A service every node runs once (such as the fan-out of room frames to the node's sockets),
/// which other nodes reach by its topic.
pub trait NodeService: Send + Sync + 'static {
    /// Takes a one-way message.
    fn cast(&self, payload: &[u8]);
    /// Answers a request.
    fn call(&self, payload: &[u8]) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;
}

/// The kinds and services of one node.
#[derive(Default)]
pub(crate) struct Registry {
    kinds: RwLock<HashMap<&'static str, Arc<dyn LocalKind>>>,
    services: RwLock<HashMap<&'static str, Arc<dyn NodeService>>>,
}

impl Registry {
    /// Registers an entity kind; a second registration of the same name replaces the first.
    pub(crate) fn register(&self, kind: &'static str, local: Arc<dyn LocalKind>) {
        self.kinds
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind, local);
    }

    /// The kind named `kind`, if registered.
    pub(crate) fn kind(&self, kind: &str) -> Option<Arc<dyn LocalKind>> {
        self.kinds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind)
            .cloned()
    }

    /// Every registered kind.
    pub(crate) fn kinds(&self) -> Vec<(&'static str, Arc<dyn LocalKind>)> {
        self.kinds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// Parses `kind/id` for a registered kind.
    pub(crate) fn parse_key(&self, s: &str) -> Result<EntityKey, KeyError> {
        let kinds = self.kinds.read().unwrap_or_else(|e| e.into_inner());
        EntityKey::parse(s, kinds.keys())
    }

    /// Runs `service` under `topic`.
    pub(crate) fn serve(&self, topic: &'static str, service: Arc<dyn NodeService>) {
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic, service);
    }

    /// The service under `topic`, if any.
    pub(crate) fn service(&self, topic: &str) -> Option<Arc<dyn NodeService>> {
        self.services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
    }
}

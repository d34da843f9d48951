//! Revoked tokens, held in memory on every node so that authenticating a request reads no
//! database: loaded from the store at start, told at once by the node that revokes a token
//! (a node service every member runs), and refreshed from the store every few seconds, which
//! brings in what a node missed (a cast lost between nodes, a revocation made while it was
//! away). Entries past their token's expiry are dropped: an expired token is refused anyway.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use convene_cluster::{Cluster, NodeService};
use serde::{Deserialize, Serialize};

use crate::store::SqlStore;

/// The node service that takes revocations from the other members.
pub const TOPIC: &str = "convene.revocations";

/// How often the set is refreshed from the store.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The token ids revoked and not yet expired, with their expiry.
#[derive(Debug, Default)]
pub struct Revocations {
    by_jti: RwLock<HashMap<String, DateTime<Utc>>>,
}

/// One revocation, as nodes tell each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Revoked {
    jti: String,
    expires_at: DateTime<Utc>,
}

impl Revocations {
    /// Whether the token `jti` was revoked.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.by_jti
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(jti)
    }

    /// Adds revocations (from the store or from another node), then drops the expired ones.
    pub fn add(&self, revoked: impl IntoIterator<Item = (String, DateTime<Utc>)>) {
        let now = Utc::now();
        let mut set = self.by_jti.write().unwrap_or_else(|e| e.into_inner());
        set.extend(revoked.into_iter().filter(|(_, exp)| *exp > now));
        set.retain(|_, exp| *exp > now);
    }

    /// Loads the unexpired revocations of `store`.
    pub async fn load(&self, store: &SqlStore) -> Result<(), convene_actors::StoreError> {
        self.add(store.revocations(Utc::now()).await?);
        Ok(())
    }

    /// Serves the revocations of the other members on `cluster`, and refreshes the set from
    /// `store` until it is dropped.
    pub fn start(self: &Arc<Self>, cluster: &Cluster, store: SqlStore) {
        cluster.serve(TOPIC, Arc::new(Service(Arc::downgrade(self))));
        let set = Arc::downgrade(self);
        tokio::spawn(refresh(set, store));
    }
}

/// Tells every live member, this node included, that `jti` is revoked.
pub fn announce(cluster: &Cluster, jti: &str, expires_at: DateTime<Utc>) {
    let revoked = Revoked {
        jti: jti.to_owned(),
        expires_at,
    };
    let payload = serde_json::to_vec(&revoked).unwrap_or_default();
    for node in cluster.live_nodes() {
        cluster.cast_node(&node, TOPIC, payload.clone());
    }
}

async fn refresh(set: Weak<Revocations>, store: SqlStore) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let Some(set) = set.upgrade() else { return };
        if let Err(e) = set.load(&store).await {
            tracing::warn!(error = %e, "revoked tokens not refreshed");
        }
    }
}

struct Service(Weak<Revocations>);

impl NodeService for Service {
    fn cast(&self, payload: &[u8]) {
        match (serde_json::from_slice::<Revoked>(payload), self.0.upgrade()) {
            (Ok(r), Some(set)) => set.add([(r.jti, r.expires_at)]),
            (Err(e), _) => tracing::warn!(error = %e, "undecodable revocation"),
            (_, None) => {}
        }
    }

    fn call(&self, _payload: &[u8]) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>> {
        Box::pin(async { Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn revoked_tokens_are_held_until_they_expire() {
        let set = Revocations::default();
        let now = Utc::now();
        set.add([
            ("live".to_owned(), now + TimeDelta::hours(1)),
            ("gone".to_owned(), now - TimeDelta::seconds(1)),
        ]);
        assert!(set.is_revoked("live"));
        assert!(!set.is_revoked("gone"));
        assert!(!set.is_revoked("other"));
        assert_eq!(
            set.by_jti.read().unwrap().len(),
            1,
            "the expired entry is not kept"
        );
    }

    #[tokio::test]
    async fn a_cast_from_another_node_revokes() {
        let set = Arc::new(Revocations::default());
        let service = Service(Arc::downgrade(&set));
        let revoked = Revoked {
            jti: "abc".into(),
            expires_at: Utc::now() + TimeDelta::minutes(5),
        };
        service.cast(&serde_json::to_vec(&revoked).unwrap());
        service.cast(b"not json");
        assert!(set.is_revoked("abc"));
        assert_eq!(set.by_jti.read().unwrap().len(), 1);
    }
}

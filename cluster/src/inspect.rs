//! What the operator console asks of this node's entity actors: each kind's counters, the
//! hottest and most backed-up entities, one entity's report, and its passivation.

use crate::probe::{ActorsReport, EntityBrief, EntityReport, top_n};
use crate::{Cluster, EntityKey};

impl Cluster {
    /// The entity actors of this node: every kind, and the `top` hottest and most backed-up
    /// entities across kinds.
    pub async fn actors_report(&self, top: usize) -> ActorsReport {
        let mut kinds = Vec::new();
        let (mut hottest, mut longest): (Vec<EntityBrief>, Vec<EntityBrief>) = (vec![], vec![]);
        let mut registered = self.kinds();
        registered.sort_by_key(|(kind, _)| *kind);
        for (_, local) in registered {
            let probes = local.probes();
            let stats = local.stats().await.unwrap_or_default();
            kinds.push(probes.report(
                stats.restarts,
                stats.passivations,
                stats.handoffs,
                stats.active as u64,
            ));
            hottest.extend(probes.hottest(top));
            longest.extend(probes.longest(top));
        }
        top_n(&mut hottest, top, |b| b.messages_per_sec);
        top_n(&mut longest, top, |b| b.mailbox);
        ActorsReport {
            node: self.local().to_owned(),
            kinds,
            hottest,
            longest,
        }
    }

    /// The report of the entity `key` if it is active on this node.
    pub fn entity_report(&self, key: &EntityKey) -> Option<EntityReport> {
        self.kind(key.kind())?.probes().entity(key)
    }

    /// The busiest `n` active entities of `kind` on this node, with their summaries.
    pub fn entity_summaries(&self, kind: &str, n: usize) -> Vec<EntityReport> {
        self.kind(kind)
            .map(|k| k.probes().summaries(n))
            .unwrap_or_default()
    }

    /// Passivates the entity `key` if it is active on this node; false when it is not.
    pub fn passivate(&self, key: &EntityKey) -> bool {
        let Some(local) = self.kind(key.kind()) else {
            return false;
        };
        if local.probes().entity(key).is_none() {
            return false;
        }
        local.passivate(key.clone());
        true
    }
}

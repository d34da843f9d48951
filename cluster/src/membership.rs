//! The member list as this node sees it: who is joining, up, leaving or down, kept current by
//! heartbeats, and the placement derived from it. The kinds and services a node serves are in
//! `registry`, the calls between nodes in `calls`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::ActorRef;
use serde::{Deserialize, Serialize};

use crate::breaker::Breaker;
use crate::metrics::ClusterMetrics;
use crate::protocol::{Heartbeat, PeerMessage};
use crate::registry::{LocalKind, NodeService, Registry};
use crate::{EntityKey, KeyError, Member, MemberStatus, Placement};

/// Where a key's owner is, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This node.
    Local,
    /// The named member.
    Remote(String),
}

/// A member as the console shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberReport {
    /// The node's name.
    pub name: String,
    /// Its node-to-node address.
    pub address: Option<String>,
    /// Its HTTP address.
    pub http: Option<String>,
    /// Where it is in its life.
    pub status: MemberStatus,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Entity actors active on it, by kind.
    pub entities: BTreeMap<String, u64>,
    /// Whether it is the node answering.
    pub this_node: bool,
}

struct Known {
    heartbeat: Heartbeat,
    /// What this node concluded; equals the announced status unless the member is down.
    status: MemberStatus,
    last_seen: Instant,
    peer: Option<ActorRef<PeerMessage>>,
}

/// Settings of this node's membership.
#[derive(Debug, Clone)]
pub struct MembershipSettings {
    /// This node's unique name.
    pub node_name: String,
    /// Its node-to-node address, when clustered.
    pub address: Option<String>,
    /// Its HTTP address.
    pub http: Option<String>,
    /// How often heartbeats are sent.
    pub heartbeat: Duration,
    /// Silence after which a member is marked down.
    pub down_after: Duration,
}

struct Inner {
    settings: MembershipSettings,
    started: Instant,
    started_ms: i64,
    clustered: bool,
    /// The status this node is in, and the one it announces (they differ while it drains).
    status: Mutex<(MemberStatus, MemberStatus)>,
    members: Mutex<BTreeMap<String, Known>>,
    placement: RwLock<Arc<Placement>>,
    overrides: RwLock<Arc<BTreeMap<EntityKey, String>>>,
    registry: Registry,
    on_change: RwLock<Vec<Box<dyn Fn() + Send + Sync>>>,
    metrics: ClusterMetrics,
    /// One circuit breaker per member forwarded to.
    breakers: Mutex<BTreeMap<String, Arc<Breaker>>>,
}

/// This node's view of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster(Arc<Inner>);

impl Cluster {
    /// A node on its own: it is up and owns every key.
    pub fn single(node_name: impl Into<String>) -> Self {
        let settings = MembershipSettings {
            node_name: node_name.into(),
            address: None,
            http: None,
            heartbeat: Duration::from_secs(1),
            down_after: Duration::from_secs(5),
        };
        Self::new(settings, false)
    }

    /// A node that will join others: it starts `joining` and owns nothing until it is up.
    pub fn clustered(settings: MembershipSettings) -> Self {
        Self::new(settings, true)
    }

    fn new(settings: MembershipSettings, clustered: bool) -> Self {
        let status = if clustered {
            MemberStatus::Joining
        } else {
            MemberStatus::Up
        };
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let placement = Placement::new(
            settings.node_name.clone(),
            vec![Member {
                name: settings.node_name.clone(),
                address: settings.address.clone(),
                status,
            }],
        );
        let cluster = Self(Arc::new(Inner {
            settings,
            started: Instant::now(),
            started_ms,
            clustered,
            status: Mutex::new((status, status)),
            members: Mutex::new(BTreeMap::new()),
            placement: RwLock::new(Arc::new(placement)),
            overrides: RwLock::default(),
            registry: Registry::default(),
            on_change: RwLock::new(Vec::new()),
            metrics: ClusterMetrics::new(),
            breakers: Mutex::new(BTreeMap::new()),
        }));
        cluster.replace_placement();
        cluster
    }

    /// This node's name.
    pub fn local(&self) -> &str {
        &self.0.settings.node_name
    }

    /// Whether this node was started to be part of a cluster.
    pub fn is_clustered(&self) -> bool {
        self.0.clustered
    }

    /// The membership settings.
    pub fn settings(&self) -> &MembershipSettings {
        &self.0.settings
    }

    /// The cluster's metric families.
    pub fn metrics(&self) -> &ClusterMetrics {
        &self.0.metrics
    }

    /// The status this node is in.
    pub fn status(&self) -> MemberStatus {
        lock(&self.0.status).0
    }

    /// The current placement.
    pub fn placement(&self) -> Arc<Placement> {
        self.0
            .placement
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Where the owner of `key` is. With no member up (a node alone while joining or leaving),
    /// this node keeps serving: the store still fences every write.
    pub fn owner(&self, key: &EntityKey) -> Owner {
        match self.placement().owner(key) {
            Some(m) if m.name != self.local() => Owner::Remote(m.name.clone()),
            _ => Owner::Local,
        }
    }

    /// Whether this node owns `key`.
    pub fn is_local(&self, key: &EntityKey) -> bool {
        self.owner(key) == Owner::Local
    }

    /// The circuit breaker of forwards to member `name`: after five failures in a row (no
    /// answer in time, or no session), forwards to it fail fast for a second or more, until
    /// one goes through again.
    pub(crate) fn breaker(&self, name: &str) -> Arc<Breaker> {
        lock(&self.0.breakers)
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(
                    Breaker::new(
                        format!("peer:{name}"),
                        5,
                        Duration::from_secs(1),
                        Duration::from_secs(8),
                    )
                    .with_metrics(&self.0.metrics),
                )
            })
            .clone()
    }

    /// The router actor of a member, while a session to it is open.
    pub(crate) fn peer(&self, name: &str) -> Option<ActorRef<PeerMessage>> {
        lock(&self.0.members).get(name).and_then(|k| k.peer.clone())
    }

    /// Marks a member down at once (its session closed under a call).
    pub(crate) fn lost(&self, name: &str) {
        let changed = {
            let mut members = lock(&self.0.members);
            match members.get_mut(name) {
                Some(k) if k.status != MemberStatus::Down => {
                    k.status = MemberStatus::Down;
                    k.peer = None;
                    true
                }
                _ => false,
            }
        };
        if changed {
            tracing::warn!(member = name, "member unreachable; marked down");
            self.replace_placement();
        }
    }

    pub(crate) fn register(&self, kind: &'static str, local: Arc<dyn LocalKind>) {
        self.0.registry.register(kind, local);
    }

    pub(crate) fn kind(&self, kind: &str) -> Option<Arc<dyn LocalKind>> {
        self.0.registry.kind(kind)
    }

    pub(crate) fn kinds(&self) -> Vec<(&'static str, Arc<dyn LocalKind>)> {
        self.0.registry.kinds()
    }

    /// Parses `kind/id` for a kind registered on this node.
    pub fn parse_key(&self, s: &str) -> Result<EntityKey, KeyError> {
        self.0.registry.parse_key(s)
    }

    /// Runs `service` under `topic` on this node, for this node and the others.
    pub fn serve(&self, topic: &'static str, service: Arc<dyn NodeService>) {
        self.0.registry.serve(topic, service);
    }

    pub(crate) fn service(&self, topic: &str) -> Option<Arc<dyn NodeService>> {
        self.0.registry.service(topic)
    }

    /// Calls `f` after every change of the members that own keys.
    pub fn on_change(&self, f: impl Fn() + Send + Sync + 'static) {
        self.0
            .on_change
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    /// The nodes that may hold connections and entities now: this node and every member not
    /// marked down.
    pub fn live_nodes(&self) -> Vec<String> {
        let mut out = vec![self.local().to_owned()];
        out.extend(
            lock(&self.0.members)
                .iter()
                .filter(|(_, k)| k.status != MemberStatus::Down)
                .map(|(name, _)| name.clone()),
        );
        out
    }

    /// Whether `node` is this node or a member not marked down (a node never heard of counts
    /// as live: it reached this one somehow).
    pub fn is_live(&self, node: &str) -> bool {
        node == self.local()
            || lock(&self.0.members)
                .get(node)
                .is_none_or(|k| k.status != MemberStatus::Down)
    }

    /// Entity actors active on this node, by kind.
    pub async fn local_entities(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (kind, local) in self.kinds() {
            if let Some(stats) = local.stats().await {
                out.insert(kind.to_owned(), stats.active as u64);
            }
        }
        out
    }

    /// Becomes `up` (a joining node that has met its peers, or waited long enough).
    pub fn set_up(&self) {
        let changed = {
            let mut s = lock(&self.0.status);
            let was = s.0;
            if was == MemberStatus::Joining {
                *s = (MemberStatus::Up, MemberStatus::Up);
            }
            was == MemberStatus::Joining
        };
        if changed {
            tracing::info!(node = self.local(), "member up");
            self.replace_placement();
        }
    }

    /// Starts leaving: this node stops owning keys, so its shards hand their entities off,
    /// while it still announces itself up until [`Cluster::announce_leaving`].
    pub fn start_leaving(&self) {
        let mut s = lock(&self.0.status);
        s.0 = MemberStatus::Leaving;
        drop(s);
        tracing::info!(node = self.local(), "member leaving; handing entities off");
        self.replace_placement();
    }

    /// Comes back after [`Cluster::start_leaving`] without having stopped: up again, and
    /// owning its share of the keys.
    pub fn rejoin(&self) {
        let changed = {
            let mut s = lock(&self.0.status);
            let was = s.0;
            if was == MemberStatus::Leaving {
                *s = (MemberStatus::Up, MemberStatus::Up);
            }
            was == MemberStatus::Leaving
        };
        if changed {
            tracing::info!(node = self.local(), "member up again");
            self.replace_placement();
        }
    }

    /// The entities pinned to a member by an operator.
    pub fn overrides(&self) -> Arc<BTreeMap<EntityKey, String>> {
        self.0
            .overrides
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the pinned entities; the ones that moved are handed off to their new owners.
    pub fn set_overrides(&self, overrides: BTreeMap<EntityKey, String>) {
        {
            let mut slot = self.0.overrides.write().unwrap_or_else(|e| e.into_inner());
            if **slot == overrides {
                return;
            }
            *slot = Arc::new(overrides);
        }
        tracing::info!(
            pinned = self.overrides().len(),
            "placement overrides changed"
        );
        self.replace_placement();
    }

    /// Tells the other members that this node is leaving, once its entities are handed off.
    pub fn announce_leaving(&self) {
        lock(&self.0.status).1 = MemberStatus::Leaving;
    }

    /// Whether every entity that is placed has left this node.
    pub async fn handed_off(&self) -> bool {
        for (_, local) in self.kinds() {
            if local
                .stats()
                .await
                .is_some_and(|s| s.placed && s.active > 0)
            {
                return false;
            }
        }
        true
    }

    pub(crate) async fn heartbeat(&self) -> Heartbeat {
        let entities = self.local_entities().await;
        let status = lock(&self.0.status).1;
        Heartbeat {
            name: self.local().to_owned(),
            address: self.0.settings.address.clone(),
            http: self.0.settings.http.clone(),
            status,
            started_ms: self.0.started_ms,
            entities,
        }
    }

    /// Takes a heartbeat from another member.
    pub(crate) fn on_heartbeat(&self, hb: Heartbeat, peer: Option<ActorRef<PeerMessage>>) {
        if hb.name == self.local() {
            return;
        }
        let changed = {
            let mut members = lock(&self.0.members);
            let name = hb.name.clone();
            match members.get_mut(&name) {
                Some(k) => {
                    let changed = k.status != hb.status;
                    if changed {
                        tracing::info!(member = %name, status = ?hb.status, "member status");
                    }
                    k.status = hb.status;
                    k.last_seen = Instant::now();
                    if peer.is_some() {
                        k.peer = peer;
                    }
                    k.heartbeat = hb;
                    changed
                }
                None => {
                    tracing::info!(member = %name, status = ?hb.status, address = ?hb.address, "member seen");
                    members.insert(
                        name,
                        Known {
                            status: hb.status,
                            heartbeat: hb,
                            last_seen: Instant::now(),
                            peer,
                        },
                    );
                    true
                }
            }
        };
        if changed {
            self.replace_placement();
        }
    }

    /// Whether any other member has been heard from.
    pub(crate) fn has_peers(&self) -> bool {
        !lock(&self.0.members).is_empty()
    }

    /// Refreshes the routes to members and marks silent or disconnected ones down.
    pub(crate) fn sweep(&self, peers: &HashMap<String, ActorRef<PeerMessage>>) {
        let down_after = self.0.settings.down_after;
        let mut changed = false;
        {
            let mut members = lock(&self.0.members);
            for (name, k) in members.iter_mut() {
                let found = peers.get(name).cloned();
                let disconnected = k.peer.is_some() && found.is_none();
                k.peer = found;
                if k.status != MemberStatus::Down
                    && (disconnected || k.last_seen.elapsed() > down_after)
                {
                    tracing::warn!(member = %name, disconnected, "member down");
                    k.status = MemberStatus::Down;
                    changed = true;
                }
            }
        }
        if changed {
            self.replace_placement();
        }
        self.count_members();
    }

    fn count_members(&self) {
        let mut counts: BTreeMap<MemberStatus, i64> = BTreeMap::new();
        counts.insert(self.status(), 1);
        for k in lock(&self.0.members).values() {
            *counts.entry(k.status).or_default() += 1;
        }
        for status in [
            MemberStatus::Joining,
            MemberStatus::Up,
            MemberStatus::Leaving,
            MemberStatus::Down,
        ] {
            self.0
                .metrics
                .members
                .with_label_values(&[status.as_str()])
                .set(counts.get(&status).copied().unwrap_or(0));
        }
    }

    fn replace_placement(&self) {
        let mut members = vec![Member {
            name: self.local().to_owned(),
            address: self.0.settings.address.clone(),
            status: self.status(),
        }];
        members.extend(lock(&self.0.members).values().map(|k| Member {
            name: k.heartbeat.name.clone(),
            address: k.heartbeat.address.clone(),
            status: k.status,
        }));
        let next =
            Placement::new(self.local().to_owned(), members).with_overrides(self.overrides());
        let before = {
            let mut slot = self.0.placement.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *slot, Arc::new(next.clone()))
        };
        self.count_members();
        if before.up_names() != next.up_names() || before.overrides() != next.overrides() {
            tracing::info!(up = ?next.up_names(), "placement changed");
            for (_, local) in self.kinds() {
                local.rebalance();
            }
            for f in self
                .0
                .on_change
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                f();
            }
        }
    }

    /// Every member, this node first.
    pub async fn report(&self) -> Vec<MemberReport> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let entities = self.local_entities().await;
        let mut out = vec![MemberReport {
            name: self.local().to_owned(),
            address: self.0.settings.address.clone(),
            http: self.0.settings.http.clone(),
            status: self.status(),
            uptime_secs: self.0.started.elapsed().as_secs(),
            entities,
            this_node: true,
        }];
        out.extend(lock(&self.0.members).values().map(|k| MemberReport {
            name: k.heartbeat.name.clone(),
            address: k.heartbeat.address.clone(),
            http: k.heartbeat.http.clone(),
            status: k.status,
            uptime_secs: ((now_ms - k.heartbeat.started_ms).max(0) / 1000) as u64,
            entities: k.heartbeat.entities.clone(),
            this_node: false,
        }));
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

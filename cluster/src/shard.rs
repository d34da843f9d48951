//! The shard: one actor per entity kind and node that activates entity actors on their first
//! message, supervises them (a crashed entity is restarted with its state reloaded), and
//! passivates them when they ask to, buffering messages for a key while its actor starts or stops.
//! When the placement changes it hands off the entities this node no longer owns: each is
//! drained (its in-flight messages finish) and the messages that arrive meanwhile follow the key
//! to its new owner.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, Message, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};

mod forward;

use crate::directory::{Directory, Ticket};
use crate::probe::{Inspect, KindProbes, Probe, Probed};
use crate::view::View;
use crate::wire::Forwardable;
use crate::{Cluster, EntityKey};
use forward::Forward;
pub(crate) use forward::{deliver_local, remote_owner, route};

/// The spawn of one entity actor, in flight.
pub type Spawning<M> = Pin<Box<dyn Future<Output = Result<ActorRef<M>, SpawnErr>> + Send>>;

/// How to start the actor of one entity kind.
pub trait EntityFactory: Send + Sync + 'static {
    /// The message type of the entity actors.
    type Msg: Forwardable;

    /// The kind of entity this factory starts (`user`, `event`, …).
    fn kind(&self) -> &'static str;

    /// Spawns the actor for `key` as `activation` says (linked to its supervisor, passivating
    /// after its idle time). Its `pre_start` loads the entity's state from the store.
    fn spawn(&self, key: EntityKey, activation: Activation<Self::Msg>) -> Spawning<Self::Msg>;
}

/// What a new entity actor is given by its shard.
pub struct Activation<M> {
    /// Where the actor asks to be passivated.
    pub shard: ActorRef<ShardMessage<M>>,
    /// The actor to link the new one to.
    pub supervisor: ActorCell,
    /// How long the actor may stay without messages before it asks to be passivated.
    pub passivate_after: Duration,
    probe: Arc<Probe>,
    probes: Arc<KindProbes>,
    view: View,
}

impl<M> Activation<M> {
    /// Where the new actor publishes its answer to reads (see [`View`]).
    pub fn view(&self) -> View {
        self.view.clone()
    }
}

impl<M: Forwardable> Activation<M> {
    /// Spawns `actor` with `args`, linked to the supervisor, with the probe the console reads
    /// (its messages counted and timed, a summary of its state kept).
    pub fn start<A>(self, actor: A, args: A::Arguments) -> Spawning<M>
    where
        A: Actor<Msg = M>,
        A::State: Inspect,
    {
        let probed = Probed {
            inner: actor,
            probe: self.probe,
            kind: self.probes,
        };
        Box::pin(async move {
            let (actor, _) = Actor::spawn_linked(None, probed, args, self.supervisor).await?;
            Ok(actor)
        })
    }
}

/// How a node runs one kind of entity: its passivation and supervision policy, and the time a
/// forwarded message may take. Given once, when the kind is registered at node start.
#[derive(Debug, Clone, Copy)]
pub struct KindSettings {
    /// Idle time after which an entity actor is stopped (its state is in the store).
    pub passivate_after: Duration,
    /// At most this many crash restarts of one key within `restart_window`; past that the key is
    /// left inactive until its next message.
    pub max_restarts: u32,
    /// See `max_restarts`.
    pub restart_window: Duration,
    /// How long an ask, or a message that follows its key to another member, may take.
    pub timeout: Duration,
}

/// Messages a shard takes.
pub enum ShardMessage<M> {
    /// Deliver `msg` to the actor of `key`, activating it first if needed.
    Deliver {
        /// The entity the message is for.
        key: EntityKey,
        /// The message itself.
        msg: M,
        /// Held until the message is in the actor's mailbox, so that later messages of the
        /// key wait for it rather than go straight to the actor.
        ticket: Option<Ticket<M>>,
    },
    /// An entity actor idle long enough asks to be stopped; the shard drains it.
    Passivate {
        /// The entity that asks.
        key: EntityKey,
    },
    /// A spawn started by the shard finished.
    Started {
        /// The entity that was started.
        key: EntityKey,
        /// Its actor, or why it could not start.
        result: Result<ActorRef<M>, String>,
        /// The activation's probe.
        probe: Arc<Probe>,
        /// The activation's view.
        view: View,
    },
    /// How many entities are active, for metrics and the console.
    Stats(RpcReplyPort<ShardStats>),
    /// The placement changed: hand off the entities this node no longer owns.
    Rebalance,
}

impl<M: Message> Message for ShardMessage<M> {}

/// A shard's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Entity actors running now.
    pub active: usize,
    /// Restarts after a crash since the shard started.
    pub restarts: u64,
    /// Passivations since the shard started.
    pub passivations: u64,
    /// Entities handed off to another member since the shard started.
    pub handoffs: u64,
    /// Whether this kind's keys are placed over the members (or live where they are used).
    pub placed: bool,
}

/// Start-up arguments of a shard.
pub struct ShardArgs<F: EntityFactory> {
    /// Starts entity actors.
    pub factory: Arc<F>,
    /// The kind's policy.
    pub settings: KindSettings,
    /// The member list, to tell which keys this node owns.
    pub cluster: Cluster,
    /// Where the kind's routers find running actors.
    pub(crate) directory: Arc<Directory<F::Msg>>,
    /// What the console sees of the kind's actors.
    pub(crate) probes: Arc<KindProbes>,
}

/// The shard actor for one kind. Its state is the table of entity slots.
pub struct Shard<F>(std::marker::PhantomData<F>);

impl<F> Default for Shard<F> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// Messages waiting for a key's actor, with their tickets.
type Waiting<M> = VecDeque<(M, Option<Ticket<M>>)>;

enum Slot<M> {
    Starting(Waiting<M>),
    Running(ActorRef<M>, Arc<Probe>),
    Stopping(Waiting<M>),
}

/// Shard state.
pub struct ShardState<F: EntityFactory> {
    args: ShardArgs<F>,
    slots: HashMap<EntityKey, Slot<F::Msg>>,
    by_actor: HashMap<ractor::ActorId, EntityKey>,
    crashes: HashMap<EntityKey, (Instant, u32)>,
    stats: ShardStats,
}

impl<F: EntityFactory> ShardState<F> {
    fn start(
        &mut self,
        myself: &ActorRef<ShardMessage<F::Msg>>,
        key: EntityKey,
        buf: Waiting<F::Msg>,
    ) {
        self.slots.insert(key.clone(), Slot::Starting(buf));
        let factory = self.args.factory.clone();
        let me = myself.clone();
        let passivate_after = self.args.settings.passivate_after;
        let probes = self.args.probes.clone();
        tokio::spawn(async move {
            let probe = Probe::new();
            let view = View::default();
            let activation = Activation {
                shard: me.clone(),
                supervisor: me.get_cell(),
                passivate_after,
                probe: probe.clone(),
                probes,
                view: view.clone(),
            };
            let result = factory
                .spawn(key.clone(), activation)
                .await
                .map_err(|e| e.to_string());
            // If the shard is gone the new actor is linked to it and stops with it.
            let _ = me.cast(ShardMessage::Started {
                key,
                result,
                probe,
                view,
            });
        });
    }

    /// Sends `msg` on to the key's owner if that is another member now; gives it back if the
    /// key is this node's (or the message cannot leave it).
    fn follow(
        &self,
        myself: &ActorRef<ShardMessage<F::Msg>>,
        key: &EntityKey,
        msg: F::Msg,
    ) -> Option<F::Msg> {
        let Some(owner) = remote_owner::<F::Msg>(&self.args.cluster, key) else {
            return Some(msg);
        };
        match msg.into_wire() {
            Ok((body, responder)) => {
                let forward = Forward {
                    cluster: self.args.cluster.clone(),
                    shard: myself.clone(),
                    key: key.clone(),
                    body,
                    deadline: Instant::now() + self.args.settings.timeout,
                    trace: crate::trace::current(),
                };
                tokio::spawn(forward.run(owner, responder));
                None
            }
            Err(msg) => Some(msg),
        }
    }

    fn deliver(
        &mut self,
        myself: &ActorRef<ShardMessage<F::Msg>>,
        key: EntityKey,
        msg: F::Msg,
        ticket: Option<Ticket<F::Msg>>,
    ) {
        if !matches!(self.slots.get(&key), Some(Slot::Running(..))) {
            let Some(msg) = self.follow(myself, &key, msg) else {
                return;
            };
            return self.deliver_here(myself, key, msg, ticket);
        }
        self.deliver_here(myself, key, msg, ticket);
    }

    fn deliver_here(
        &mut self,
        myself: &ActorRef<ShardMessage<F::Msg>>,
        key: EntityKey,
        msg: F::Msg,
        ticket: Option<Ticket<F::Msg>>,
    ) {
        match self.slots.get_mut(&key) {
            Some(Slot::Starting(buf) | Slot::Stopping(buf)) => buf.push_back((msg, ticket)),
            Some(Slot::Running(actor, probe)) => {
                probe.enqueued();
                if let Err(e) = actor.cast(msg) {
                    // The actor stopped between its last message and this one; its exit
                    // notice is on the way. Start it again with this message first.
                    self.args.directory.stopping(&key);
                    let mut buf = VecDeque::new();
                    if let ractor::MessagingErr::SendErr(m) = e {
                        buf.push_back((m, ticket));
                    }
                    self.by_actor.retain(|_, k| *k != key);
                    self.args.probes.stopped(&key);
                    self.start(myself, key, buf);
                }
            }
            None => self.start(myself, key, VecDeque::from([(msg, ticket)])),
        }
    }

    fn on_exit(
        &mut self,
        myself: &ActorRef<ShardMessage<F::Msg>>,
        cell: &ActorCell,
        crashed: bool,
    ) {
        let Some(key) = self.by_actor.remove(&cell.get_id()) else {
            return;
        };
        let buf = match self.slots.remove(&key) {
            Some(Slot::Stopping(buf)) => buf,
            Some(Slot::Running(..)) | None => VecDeque::new(),
            Some(other) => {
                // A newer activation already replaced this one.
                self.slots.insert(key, other);
                return;
            }
        };
        let restart = if crashed {
            let now = Instant::now();
            let entry = self.crashes.entry(key.clone()).or_insert((now, 0));
            if now.duration_since(entry.0) > self.args.settings.restart_window {
                *entry = (now, 0);
            }
            entry.1 += 1;
            if entry.1 <= self.args.settings.max_restarts {
                self.stats.restarts += 1;
                self.args.probes.restarted();
                true
            } else {
                tracing::error!(%key, "entity keeps crashing; left inactive until its next message");
                false
            }
        } else {
            false
        };
        self.args.probes.stopped(&key);
        // Messages that waited for a handed-off entity follow its key to the new owner.
        let buf: Waiting<F::Msg> = buf
            .into_iter()
            .filter_map(|(m, ticket)| Some((self.follow(myself, &key, m)?, ticket)))
            .collect();
        if restart || !buf.is_empty() {
            self.args.directory.stopping(&key);
            self.start(myself, key, buf);
        } else {
            self.args.directory.remove(&key);
        }
    }

    /// Drains every running entity this node no longer owns.
    fn rebalance(&mut self) {
        if !F::Msg::placed() {
            return;
        }
        let moved: Vec<EntityKey> = self
            .slots
            .iter()
            .filter(|(k, slot)| matches!(slot, Slot::Running(..)) && !self.args.cluster.is_local(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in moved {
            if let Some(Slot::Running(actor, _)) = self.slots.get(&key) {
                self.args.directory.stopping(&key);
                let _ = actor.drain();
                self.slots.insert(key, Slot::Stopping(VecDeque::new()));
                self.stats.handoffs += 1;
                self.args.cluster.metrics().handoffs.inc();
            }
        }
    }
}

impl<F: EntityFactory> Actor for Shard<F> {
    type Msg = ShardMessage<F::Msg>;
    type State = ShardState<F>;
    type Arguments = ShardArgs<F>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ShardArgs<F>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ShardState {
            args,
            slots: HashMap::new(),
            by_actor: HashMap::new(),
            crashes: HashMap::new(),
            stats: ShardStats::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ShardMessage::Deliver { key, msg, ticket } => {
                state.deliver(&myself, key, msg, ticket);
            }
            ShardMessage::Started {
                key,
                result,
                probe,
                view,
            } => {
                let Some(Slot::Starting(buf)) = state.slots.remove(&key) else {
                    return Ok(());
                };
                match result {
                    Ok(actor) => {
                        for (msg, ticket) in buf {
                            // A send error means it already died; its exit notice restarts it.
                            probe.enqueued();
                            let _ = actor.cast(msg);
                            drop(ticket);
                        }
                        state
                            .args
                            .directory
                            .running(&key, actor.clone(), probe.clone(), view);
                        state.args.probes.activated(&key, probe.clone());
                        state.by_actor.insert(actor.get_id(), key.clone());
                        state.slots.insert(key.clone(), Slot::Running(actor, probe));
                        if remote_owner::<F::Msg>(&state.args.cluster, &key).is_some() {
                            // The key moved while its actor started.
                            state.rebalance();
                        }
                    }
                    Err(reason) => {
                        // Dropping the buffered messages drops their reply ports: each caller
                        // sees the entity as unavailable and may retry.
                        drop(buf);
                        state.args.directory.remove(&key);
                        tracing::warn!(%key, %reason, "entity failed to start");
                    }
                }
            }
            ShardMessage::Passivate { key } => {
                if let Some(Slot::Running(actor, _)) = state.slots.get(&key) {
                    // Drain: messages already in its mailbox are handled before it stops, and
                    // new ones wait here until it has stopped.
                    state.args.directory.stopping(&key);
                    let _ = actor.drain();
                    state.slots.insert(key, Slot::Stopping(VecDeque::new()));
                    state.stats.passivations += 1;
                    state.args.probes.passivated();
                }
            }
            ShardMessage::Stats(reply) => {
                let mut stats = state.stats;
                stats.active = state.by_actor.len();
                stats.placed = F::Msg::placed();
                let _ = reply.send(stats);
            }
            ShardMessage::Rebalance => state.rebalance(),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => state.on_exit(&myself, &cell, false),
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(actor = %cell.get_id(), error = %err, "entity crashed; restarting");
                state.on_exit(&myself, &cell, true);
            }
            _ => {}
        }
        Ok(())
    }
}

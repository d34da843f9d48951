//! The running entities of one kind on this node, shared by the kind's shard (which keeps it
//! current) and its routers (which read it): a message for a running local entity goes straight
//! to the entity's mailbox instead of through the shard. A sender's messages keep their order:
//! a key's messages go direct only while none sent through the shard is still on its way to the
//! actor, and an actor leaves the directory before it is drained or stopped.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use ractor::{ActorRef, Message, MessagingErr};

use crate::EntityKey;
use crate::probe::{KindProbes, Probe};
use crate::view::View;

/// Running entity actors by key.
pub(crate) struct Directory<M> {
    entries: RwLock<HashMap<EntityKey, Arc<Entry<M>>>>,
}

/// A running actor with its probe and its view.
type Running<M> = (ActorRef<M>, Arc<Probe>, View);

struct Entry<M> {
    /// The running actor, its probe and its view; `None` while it starts, drains or after it
    /// stopped.
    actor: RwLock<Option<Running<M>>>,
    /// Messages for the key sent through the shard that are not yet in the actor's mailbox.
    in_flight: AtomicUsize,
}

/// A message's place among those of its key on their way through the shard. It is dropped once
/// the message is in the actor's mailbox, has left for another member, or was dropped.
pub struct Ticket<M>(Arc<Entry<M>>);

impl<M> Entry<M> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            actor: RwLock::new(None),
            in_flight: AtomicUsize::new(0),
        })
    }
}

impl<M> Ticket<M> {
    fn take(entry: &Arc<Entry<M>>) -> Self {
        entry.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(entry.clone())
    }
}

impl<M> Drop for Ticket<M> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<M: Message> Directory<M> {
    pub(crate) fn new() -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
        }
    }

    fn get(&self, key: &EntityKey) -> Option<Arc<Entry<M>>> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn entry(&self, key: &EntityKey) -> Arc<Entry<M>> {
        self.get(key).unwrap_or_else(|| {
            self.entries
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.clone())
                .or_insert_with(Entry::new)
                .clone()
        })
    }

    /// Sends `msg` straight to the running actor of `key` when nothing for the key is on its
    /// way through the shard; otherwise gives it back, with the ticket it goes to the shard with.
    /// Tickets are taken under the directory's lock, so no entry is removed with one out.
    pub(crate) fn send(&self, key: &EntityKey, msg: M) -> Result<(), (M, Ticket<M>)> {
        let mut msg = msg;
        {
            let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = entries.get(key) {
                let actor = entry.actor.read().unwrap_or_else(PoisonError::into_inner);
                if let Some((actor, probe, _)) = actor.as_ref()
                    && entry.in_flight.load(Ordering::Acquire) == 0
                {
                    // Counted before it is sent: the actor may handle it at once.
                    probe.enqueued();
                    match actor.cast(msg) {
                        Ok(()) => return Ok(()),
                        // Draining or stopped: the shard knows what to do with it.
                        Err(MessagingErr::SendErr(m)) => {
                            probe.unqueued();
                            msg = m;
                        }
                        // The mailbox closed under it: the message is gone, and with it the
                        // reply port, so the caller sees the entity as unavailable.
                        Err(_) => return Ok(()),
                    }
                }
                return Err((msg, Ticket::take(entry)));
            }
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.entry(key.clone()).or_insert_with(Entry::new);
        Err((msg, Ticket::take(entry)))
    }

    /// The actor of `key` runs and has every message the shard held for it.
    pub(crate) fn running(
        &self,
        key: &EntityKey,
        actor: ActorRef<M>,
        probe: Arc<Probe>,
        view: View,
    ) {
        let entry = self.entry(key);
        *entry.actor.write().unwrap_or_else(PoisonError::into_inner) = Some((actor, probe, view));
    }

    /// What the running actor of `key` published, if it runs and published a `V`; counted as
    /// a read of it in `probes`.
    pub(crate) fn view<V: Any + Send + Sync>(
        &self,
        key: &EntityKey,
        probes: &KindProbes,
    ) -> Option<Arc<V>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let actor = entries
            .get(key)?
            .actor
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let (_, probe, view) = actor.as_ref()?;
        let answer = view.read()?;
        probes.read(probe);
        Some(answer)
    }

    /// The actor of `key` is about to drain or stop, or has stopped: messages go through the
    /// shard again. Returns once no message is being sent straight to it.
    pub(crate) fn stopping(&self, key: &EntityKey) {
        if let Some(entry) = self.get(key) {
            *entry.actor.write().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// The key has no actor and none is starting: its entry goes, unless a message is still on
    /// its way through the shard (the key's next activation uses it then).
    pub(crate) fn remove(&self, key: &EntityKey) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get(key) {
            *entry.actor.write().unwrap_or_else(PoisonError::into_inner) = None;
            if entry.in_flight.load(Ordering::Acquire) == 0 {
                entries.remove(key);
            }
        }
    }
}

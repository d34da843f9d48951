//! The curator: one per cluster (a lease), an actor that follows the outbox past its own
//! cursor and, for each event created or changed, suggests a category from its text and
//! scores its quality (see [`convene_actors::curation`]); it stores the result and tells the
//! event's actor, which shows it from then on. Its classifier is trained on the events when it
//! takes the lease and again after every few hundred events.

use std::time::Duration;

use convene_actors::curation::Curator;
use convene_actors::event::{self, EventMessage};
use convene_actors::model::{Event, topics};
use convene_cluster::Router;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::lease::{Follower, Lease};
use crate::store::SqlStore;

/// The lease's name, and the cursor's.
const NAME: &str = "curator";
/// Outbox rows per round.
const BATCH: usize = 500;
/// The classifier is trained again after a fifth more events than it learnt from were
/// curated, and at least after this many.
const RETRAIN_AFTER: usize = 500;

/// What it starts with.
#[derive(Clone)]
pub struct CuratorArgs {
    /// The outbox, the events and the curation table.
    pub store: SqlStore,
    /// Reaches event actors, to show their curation.
    pub events: Router<EventMessage>,
    /// The lease's lifetime; the curator looks at the outbox three times per lifetime, and
    /// at once after a full batch.
    pub lease: Duration,
    /// Who holds the lease when this node does: unique per process.
    pub holder: String,
}

/// The curator actor.
#[derive(Default)]
pub struct CuratorActor;

/// Its messages (local only).
pub enum CuratorMessage {
    /// Renew the lease and curate what is new.
    Tick,
    /// Panics inside the handler, for supervision tests and fault drills.
    InjectFault,
}

impl ractor::Message for CuratorMessage {}

/// Its state.
pub struct CuratorState {
    store: SqlStore,
    events: Router<EventMessage>,
    follower: Follower,
    /// Trained while holding the lease.
    curator: Option<Curator>,
    since_training: usize,
    trained_on: usize,
    ticker: JoinHandle<()>,
}

#[derive(Deserialize)]
struct EventId {
    event_id: i64,
}

impl CuratorState {
    async fn train(&mut self) -> anyhow::Result<()> {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.events_after(after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            events.extend(page);
        }
        let curator = tokio::task::spawn_blocking(move || Curator::train(&events)).await?;
        tracing::info!(events = curator.len(), "curation classifier trained");
        self.trained_on = curator.len();
        self.curator = Some(curator);
        self.since_training = 0;
        Ok(())
    }

    /// One round; whether the batch was full.
    async fn round(&mut self) -> anyhow::Result<bool> {
        let Some(read) = self.follower.next(BATCH).await? else {
            self.curator = None;
            return Ok(false);
        };
        let store = self.store.clone();
        let Some(last) = read.rows.last().map(|r| r.position) else {
            return Ok(false);
        };
        // Trained lazily, on the events as they are now (those of this batch included).
        let coming = read
            .rows
            .iter()
            .filter(|r| r.topic == topics::EVENT_CREATED || r.topic == topics::EVENT_UPDATED)
            .count();
        let due = RETRAIN_AFTER.min((self.trained_on / 5).max(1));
        if self.curator.is_none() || (coming > 0 && self.since_training + coming >= due) {
            self.train().await?;
        }
        let mut curated = Vec::new();
        for row in &read.rows {
            let curator = self.curator.as_mut().expect("trained above");
            match row.topic.as_str() {
                topics::EVENT_CREATED | topics::EVENT_UPDATED => {
                    let Ok(e) = serde_json::from_str::<Event>(row.payload.get()) else {
                        tracing::warn!(message_id = %row.message_id, "an event the curator cannot read; skipped");
                        continue;
                    };
                    curated.push((e.id, curator.curate(&e)));
                    self.since_training += 1;
                }
                topics::EVENT_DELETED => {
                    if let Ok(e) = serde_json::from_str::<EventId>(row.payload.get()) {
                        curator.forget(e.event_id);
                    }
                }
                _ => {}
            }
        }
        // One commit for the round; each event's actor shows its curation once it is stored.
        store.save_curations(&curated).await?;
        for (id, curation) in curated {
            let _ = self
                .events
                .tell(event::key(id), EventMessage::Curated { curation });
        }
        self.follower.advance(last).await?;
        Ok(read.rows.len() == BATCH)
    }
}

impl Actor for CuratorActor {
    type Msg = CuratorMessage;
    type State = CuratorState;
    type Arguments = CuratorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CuratorMessage>,
        args: CuratorArgs,
    ) -> Result<CuratorState, ActorProcessingErr> {
        let period = (args.lease / 3).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let ticker = myself.send_interval(period, || CuratorMessage::Tick);
        let lease = Lease::new(args.store.clone(), NAME, args.holder, args.lease);
        Ok(CuratorState {
            store: args.store,
            events: args.events,
            follower: Follower::new(lease),
            curator: None,
            since_training: 0,
            trained_on: 0,
            ticker,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CuratorMessage>,
        state: &mut CuratorState,
    ) -> Result<(), ActorProcessingErr> {
        state.ticker.abort();
        state.follower.release().await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<CuratorMessage>,
        message: CuratorMessage,
        state: &mut CuratorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CuratorMessage::InjectFault => panic!("fault injected into the curator"),
            CuratorMessage::Tick => match state.round().await {
                Ok(true) => myself.cast(CuratorMessage::Tick)?,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "curation round failed"),
            },
        }
        Ok(())
    }
}

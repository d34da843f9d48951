//! The indexer: an actor on every node that keeps the node's search index following the
//! outbox in commit order, past the position its last commit recorded, so no event is ever
//! skipped, and commits at most every [`SPACING`] while it keeps up ([`SEAT_SPACING`] after a
//! commit of seat counts alone); it rebuilds the index from
//! the tables when it is missing, of an older schema, or behind rows already pruned from the
//! outbox.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use convene_actors::model::{Event, topics};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::{Change, SearchIndex};
use crate::cache::Caches;
use crate::recommend::serving::EventCache;
use crate::store::{OutboxWatch, PRUNED, Position, Read, SqlStore};

/// Outbox rows per round.
const BATCH: usize = 2000;
/// Events per page while rebuilding.
const PAGE: i64 = 1000;
/// Least time between two commits while the indexer keeps up: each is a segment written and
/// merged later, so a burst of small transactions (registrations on a busy event) is taken in a
/// few commits, not one per transaction. Searches and the caches it invalidates lag by as much.
const SPACING: Duration = Duration::from_millis(100);
/// Least time after a commit that changed seat counts alone (a round of registration rows)
/// before the next: a sold-out event's registrations keep coming for as long as it sells, and
/// search shows its seats up to this late rather than writing a segment ten times a second.
const SEAT_SPACING: Duration = Duration::from_secs(1);
/// Wake-up without any commit seen.
const POLL: Duration = Duration::from_secs(1);
/// First and longest wait for an older transaction to end when it holds rows back.
const HELD_MIN: Duration = Duration::from_millis(2);
const HELD_MAX: Duration = Duration::from_millis(200);
/// First and longest wait after a failed round.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The indexer actor.
#[derive(Default)]
pub struct Indexer;

/// Its messages (local only).
pub enum IndexerMessage {
    /// Build the index again from the tables.
    Rebuild,
    /// Rows may be waiting.
    Wake,
    /// Panics inside the handler, for supervision tests and fault drills.
    InjectFault,
}

impl ractor::Message for IndexerMessage {}

/// What it starts with.
#[derive(Clone)]
pub struct IndexerArgs {
    /// The outbox and the tables.
    pub store: SqlStore,
    /// This node's index.
    pub index: Arc<SearchIndex>,
    /// The events the recommendations read lately, forgotten as they change.
    pub events: EventCache,
    /// The read caches, made stale by the changes as they are applied.
    pub caches: Arc<Caches>,
}

/// Its state.
pub struct IndexerState {
    args: IndexerArgs,
    /// The index reflects the outbox up to here; `None` until built.
    position: Option<Position>,
    held: Duration,
    backoff: Duration,
    /// When the last round that left nothing behind committed, and the spacing that follows
    /// it.
    applied: Option<(Instant, Duration)>,
    /// Set while a `Wake` is in the mailbox, so a burst of commits queues one.
    woken: Arc<AtomicBool>,
    watcher: JoinHandle<()>,
}

fn wake(indexer: &ActorRef<IndexerMessage>, woken: &AtomicBool) -> bool {
    if woken.swap(true, Ordering::AcqRel) {
        return true;
    }
    indexer.cast(IndexerMessage::Wake).is_ok()
}

#[derive(Deserialize)]
struct EventId {
    event_id: i64,
}

/// Who a row concerns, for the caches.
#[derive(Deserialize)]
struct Concerns {
    /// An event's own rows carry `id`.
    id: Option<i64>,
    event_id: Option<i64>,
    user_id: Option<i64>,
}

/// Makes stale what the rows changed: the details of the events they touch, and the
/// recommendations of the users who registered or cancelled.
async fn invalidate(caches: &Caches, rows: &Read) {
    let mut events = BTreeSet::new();
    let mut users = BTreeSet::new();
    for row in &rows.rows {
        let Ok(c) = serde_json::from_str::<Concerns>(row.payload.get()) else {
            continue;
        };
        if row.topic.starts_with("events.") {
            events.extend(c.event_id.or(c.id));
        } else if row.topic.starts_with("registrations.") {
            events.extend(c.event_id);
            users.extend(c.user_id);
        }
    }
    for id in events {
        caches.event_changed(id).await;
    }
    for id in users {
        caches.user_changed(id).await;
    }
}

/// The changes a batch of outbox rows makes to the index; events whose seats changed are read
/// again from the tables, last, so their newest state wins. A row whose payload is not what its
/// type promises is logged and skipped: it cannot block the rows after it.
async fn changes(store: &SqlStore, rows: &Read) -> anyhow::Result<Vec<Change>> {
    let mut out = Vec::new();
    let mut seats = BTreeSet::new();
    for row in &rows.rows {
        let payload = row.payload.get();
        let parsed = match row.topic.as_str() {
            topics::EVENT_CREATED | topics::EVENT_UPDATED => serde_json::from_str::<Event>(payload)
                .map(|e| out.push(Change::Upsert(Box::new(e)))),
            topics::EVENT_DELETED => serde_json::from_str::<EventId>(payload)
                .map(|e| out.push(Change::Remove(e.event_id))),
            t if t.starts_with("registrations.") => {
                serde_json::from_str::<EventId>(payload).map(|e| {
                    seats.insert(e.event_id);
                })
            }
            _ => Ok(()),
        };
        if let Err(e) = parsed {
            tracing::warn!(error = %e, message_id = %row.message_id, topic = %row.topic, "an outbox row the index cannot use; skipped");
        }
    }
    for id in seats {
        out.push(match store.event(id).await? {
            Some(event) => Change::Upsert(Box::new(event)),
            None => Change::Remove(id),
        });
    }
    Ok(out)
}

/// Builds `index` again from the tables; the number of events and the outbox position the
/// index then reflects. `progress` hears the events indexed so far.
pub async fn rebuild(
    store: &SqlStore,
    index: &Arc<SearchIndex>,
    progress: impl FnMut(u64) + Send + 'static,
) -> anyhow::Result<(u64, Position)> {
    let head = store.outbox_head().await?;
    let (store, index) = (store.clone(), index.clone());
    let runtime = tokio::runtime::Handle::current();
    let n = tokio::task::spawn_blocking(move || {
        let mut after = 0;
        index.rebuild(
            head,
            || {
                let page = runtime.block_on(store.events_after(after, PAGE))?;
                if let Some(last) = page.last() {
                    after = last.id;
                }
                Ok(page)
            },
            progress,
        )
    })
    .await??;
    Ok((n, head))
}

impl IndexerState {
    async fn rebuild(&mut self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let (n, head) = rebuild(&self.args.store, &self.args.index, |_| {}).await?;
        tracing::info!(
            events = n,
            ms = started.elapsed().as_millis() as u64,
            "search index built"
        );
        self.position = Some(head);
        Ok(())
    }

    /// Applies one batch; whether it was full, and whether rows are held back.
    async fn round(&mut self) -> anyhow::Result<(bool, bool)> {
        let Some(position) = self.position else {
            return Ok((false, false));
        };
        let read = self.args.store.outbox(position, BATCH).await?;
        let Some(last) = read.rows.last().map(|r| r.position) else {
            return Ok((false, read.held_back));
        };
        let full = read.rows.len() == BATCH;
        let spacing = if read
            .rows
            .iter()
            .all(|r| r.topic.starts_with("registrations."))
        {
            SEAT_SPACING
        } else {
            SPACING
        };
        let changes = changes(&self.args.store, &read).await?;
        for change in &changes {
            self.args.events.forget(match change {
                Change::Upsert(e) => e.id,
                Change::Remove(id) => *id,
            });
        }
        let index = self.args.index.clone();
        tokio::task::spawn_blocking(move || index.apply(&changes, last)).await??;
        invalidate(&self.args.caches, &read).await;
        self.position = Some(last);
        // A backlog is read at full speed; only commits that keep up are spaced.
        self.applied = (!full).then(|| (Instant::now(), spacing));
        Ok((full, read.held_back))
    }
}

impl Actor for Indexer {
    type Msg = IndexerMessage;
    type State = IndexerState;
    type Arguments = IndexerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<IndexerMessage>,
        args: IndexerArgs,
    ) -> Result<IndexerState, ActorProcessingErr> {
        let position = if args.index.is_ready() {
            args.index.position()?
        } else {
            None
        };
        let pruned = args.store.outbox_cursor(PRUNED).await?;
        let position = position.filter(|p| *p >= pruned);
        if position.is_none() {
            myself.cast(IndexerMessage::Rebuild)?;
        }
        let woken = Arc::new(AtomicBool::new(false));
        let (store, me, flag) = (args.store.clone(), myself.clone(), woken.clone());
        let watcher = tokio::spawn(async move {
            let mut outbox = OutboxWatch::new(&store, POLL).await;
            while wake(&me, &flag) {
                outbox.next().await;
            }
        });
        Ok(IndexerState {
            args,
            position,
            held: HELD_MIN,
            backoff: BACKOFF_MIN,
            applied: None,
            woken,
            watcher,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<IndexerMessage>,
        state: &mut IndexerState,
    ) -> Result<(), ActorProcessingErr> {
        state.watcher.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<IndexerMessage>,
        message: IndexerMessage,
        state: &mut IndexerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            IndexerMessage::InjectFault => panic!("fault injected into the indexer"),
            IndexerMessage::Rebuild => {
                if let Err(e) = state.rebuild().await {
                    let wait = state.backoff;
                    state.backoff = (state.backoff * 2).min(BACKOFF_MAX);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "building the search index failed");
                    myself.send_after(wait, || IndexerMessage::Rebuild);
                    return Ok(());
                }
                state.backoff = BACKOFF_MIN;
                wake(&myself, &state.woken);
            }
            IndexerMessage::Wake => {
                if let Some(wait) = state
                    .applied
                    .and_then(|(at, spacing)| spacing.checked_sub(at.elapsed()))
                {
                    // Commits that arrive meanwhile go into the next round (a `Wake` is already
                    // counted as queued: this one).
                    myself.send_after(wait, || IndexerMessage::Wake);
                    return Ok(());
                }
                state.woken.store(false, Ordering::Release);
                match state.round().await {
                    Ok((full, held_back)) => {
                        state.backoff = BACKOFF_MIN;
                        if full {
                            wake(&myself, &state.woken);
                        } else if held_back {
                            let wait = state.held;
                            state.held = (state.held * 2).min(HELD_MAX);
                            myself.send_after(wait, || IndexerMessage::Wake);
                        } else {
                            state.held = HELD_MIN;
                        }
                    }
                    Err(e) => {
                        let wait = state.backoff;
                        state.backoff = (state.backoff * 2).min(BACKOFF_MAX);
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "indexing round failed");
                        myself.send_after(wait, || IndexerMessage::Wake);
                    }
                }
            }
        }
        Ok(())
    }
}

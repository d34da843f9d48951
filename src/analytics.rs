//! The program side of real-time analytics (the windows themselves are entities:
//! [`convene_actors::analytics`]): every node's [`Tracker`], which batches the interactions
//! its edges see into one transaction and counts its requests, then feeds the windows; the
//! [`Feeder`], one per cluster (a lease), which follows the outbox and feeds them the
//! registrations, waitlistings and cancellations, and keeps the analytics tables' partitions
//! and retention; and the store the windows use, which also counts anomalies and logs them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use convene_actors::StoreError;
use convene_actors::analytics::anomaly::Anomaly;
use convene_actors::analytics::window::MinuteSummary;
use convene_actors::analytics::{self, AnalyticsMessage, Observation, Signal};
use convene_actors::model::topics;
use convene_actors::recommend::Kind;
use convene_actors::store::AnalyticsStore;
use convene_cluster::Router;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cache::Caches;
use crate::lease::{Follower, Lease};
use crate::metrics::Metrics;
use crate::store::{Interacted, SqlStore};

/// Interactions waiting in a node's queue before views are dropped.
const QUEUE: usize = 65_536;
/// Interactions written per transaction at most.
const BATCH: usize = 2_000;
/// A batch is written at least this often while interactions wait.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Request counts go to the health window this often.
const REQUESTS_EVERY: u32 = 10;

struct Tracked {
    interaction: Interacted,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// A node's analytics intake: interactions are queued, written in batches (to
/// `interactions` and `analytics_events` in one transaction) and then counted by the windows;
/// requests are counted in memory and sent to the health window every second. Cheap to clone.
#[derive(Clone)]
pub struct Tracker {
    queue: mpsc::Sender<Tracked>,
    /// Requests answered and, of those, with a 5xx status, since the last report.
    requests: Arc<[AtomicU64; 2]>,
    metrics: Metrics,
}

impl Tracker {
    /// Starts the node's tracker, writing through `store` and feeding `windows`.
    /// The recommendations cached for a user are made stale by what they do.
    pub fn start(
        store: SqlStore,
        windows: Router<AnalyticsMessage>,
        metrics: Metrics,
        caches: Arc<Caches>,
    ) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let requests = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        tokio::spawn(run(rx, store, windows, requests.clone(), caches));
        Self {
            queue,
            requests,
            metrics,
        }
    }

    /// Counts a view by `user` of `event` without waiting; a view that finds the queue full
    /// is dropped (and counted in `convene_analytics_dropped_total`).
    pub fn view(&self, user: i64, event: i64) {
        let tracked = Tracked {
            interaction: interacted(user, event, Kind::View),
            done: None,
        };
        if self.queue.try_send(tracked).is_err() {
            self.metrics.analytics_dropped.inc();
        }
    }

    /// Records an interaction by `user` with `event` now, and waits until it is committed.
    pub async fn record(&self, user: i64, event: i64, kind: Kind) -> Result<(), StoreError> {
        self.enqueue(interacted(user, event, kind)).await.await
    }

    /// Queues an interaction; the returned future ends once its batch is committed (or not).
    pub async fn enqueue(
        &self,
        interaction: Interacted,
    ) -> impl Future<Output = Result<(), StoreError>> + use<> {
        let (done, committed) = oneshot::channel();
        let tracked = Tracked {
            interaction,
            done: Some(done),
        };
        let queued = self.queue.send(tracked).await.is_ok();
        async move {
            let gone = || StoreError::Unavailable("the analytics queue is stopped".into());
            if !queued {
                return Err(gone());
            }
            committed.await.map_err(|_| gone())?
        }
    }

    /// Counts a request answered with `status`.
    pub fn request(&self, status: u16) {
        self.requests[0].fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.requests[1].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A new interaction by `user` with `event` now.
pub fn interacted(user: i64, event: i64, kind: Kind) -> Interacted {
    Interacted {
        id: uuid::Uuid::new_v4(),
        user,
        event,
        kind,
        at: Utc::now(),
    }
}

/// Sends each window what concerns it.
pub fn feed(windows: &Router<AnalyticsMessage>, batch: &[Observation]) {
    for (role, mine) in analytics::split(batch) {
        // A window out of reach misses these; it recovers interactions from the store when
        // it starts again.
        let _ = windows.tell(
            analytics::key(role),
            AnalyticsMessage::Observe { batch: mine },
        );
    }
}

async fn run(
    mut rx: mpsc::Receiver<Tracked>,
    store: SqlStore,
    windows: Router<AnalyticsMessage>,
    requests: Arc<[AtomicU64; 2]>,
    caches: Arc<Caches>,
) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pending: Vec<Tracked> = Vec::new();
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(t) => {
                    pending.push(t);
                    while pending.len() < BATCH {
                        match rx.try_recv() {
                            Ok(t) => pending.push(t),
                            Err(_) => break,
                        }
                    }
                    if pending.len() >= BATCH {
                        flush(&mut pending, &store, &windows, &caches).await;
                    }
                }
                None => {
                    flush(&mut pending, &store, &windows, &caches).await;
                    break;
                }
            },
            _ = tick.tick() => {
                flush(&mut pending, &store, &windows, &caches).await;
                ticks += 1;
                if ticks % REQUESTS_EVERY == 0 {
                    report_requests(&requests, &windows);
                }
            }
        }
    }
}

fn report_requests(requests: &[AtomicU64; 2], windows: &Router<AnalyticsMessage>) {
    let at = Utc::now().timestamp_millis();
    let batch: Vec<Observation> = [Signal::Request, Signal::ServerError]
        .into_iter()
        .zip(requests.iter())
        .filter_map(|(signal, n)| {
            let n = n.swap(0, Ordering::Relaxed);
            (n > 0).then(|| Observation {
                id: None,
                at,
                signal,
                user: None,
                event: None,
                count: u32::try_from(n).unwrap_or(u32::MAX),
            })
        })
        .collect();
    if !batch.is_empty() {
        feed(windows, &batch);
    }
}

async fn flush(
    pending: &mut Vec<Tracked>,
    store: &SqlStore,
    windows: &Router<AnalyticsMessage>,
    caches: &Caches,
) {
    if pending.is_empty() {
        return;
    }
    let batch = std::mem::take(pending);
    let rows: Vec<Interacted> = batch.iter().map(|t| t.interaction).collect();
    let result = store.record_interactions(&rows).await;
    if let Err(e) = &result {
        tracing::warn!(error = %e, interactions = rows.len(), "interactions were not recorded");
    }
    let observations: Vec<Observation> = rows
        .iter()
        .map(|i| Observation {
            id: Some(i.id),
            at: i.at.timestamp_millis(),
            signal: Signal::from(i.kind),
            user: Some(i.user),
            event: Some(i.event),
            count: 1,
        })
        .collect();
    if result.is_ok() {
        // Before anyone hears it is recorded: their next recommendations must see it.
        let users: std::collections::BTreeSet<i64> = rows.iter().map(|i| i.user).collect();
        for user in users {
            caches.user_changed(user).await;
        }
    }
    for t in batch {
        if let Some(done) = t.done {
            let _ = done.send(result.clone());
        }
    }
    if result.is_ok() {
        feed(windows, &observations);
    }
}

/// The store the windows use, which also logs and counts the anomalies they report.
pub struct WindowStore {
    /// The database.
    pub store: SqlStore,
    /// `convene_anomalies_total`.
    pub metrics: Metrics,
}

#[async_trait]
impl AnalyticsStore for WindowStore {
    async fn load_observations(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<Observation>, StoreError> {
        self.store.load_observations(since).await
    }

    async fn load_minutes(&self, since: DateTime<Utc>) -> Result<Vec<MinuteSummary>, StoreError> {
        self.store.load_minutes(since).await
    }

    async fn save_minutes(&self, rows: &[MinuteSummary]) -> Result<(), StoreError> {
        self.store.save_minutes(rows).await
    }

    async fn report_anomaly(&self, a: &Anomaly) -> Result<(), StoreError> {
        tracing::warn!(
            metric = %a.metric, minute = %a.minute, value = a.value, baseline = a.baseline,
            z = a.z, direction = %a.direction, "anomaly"
        );
        self.metrics
            .anomalies
            .with_label_values(&[a.metric.as_str()])
            .inc();
        self.store.report_anomaly(a).await
    }
}

/// The lease's name, and the cursor's.
const NAME: &str = "analytics";
/// Outbox rows per round.
const ROWS: usize = 1_000;
/// Partitions are prepared and old data pruned this often.
const UPKEEP_EVERY: Duration = Duration::from_secs(3600);

/// What the feeder starts with.
#[derive(Clone)]
pub struct FeederArgs {
    /// The outbox and the analytics tables.
    pub store: SqlStore,
    /// Reaches the windows.
    pub windows: Router<AnalyticsMessage>,
    /// The lease's lifetime; the feeder looks at the outbox three times per lifetime.
    pub lease: Duration,
    /// Who holds the lease when this node does: unique per process.
    pub holder: String,
    /// Raw events are kept this long.
    pub raw_retention: Duration,
    /// Per-minute aggregates are kept this long.
    pub summary_retention: Duration,
}

/// The feeder actor.
#[derive(Default)]
pub struct Feeder;

/// Its messages (local only).
pub enum FeederMessage {
    /// Renew the lease, feed what is new, keep the tables.
    Tick,
    /// Panics inside the handler, for supervision tests and fault drills.
    InjectFault,
}

impl ractor::Message for FeederMessage {}

/// Its state.
pub struct FeederState {
    args: FeederArgs,
    follower: Follower,
    upkept: Option<Instant>,
    ticker: JoinHandle<()>,
}

#[derive(Deserialize)]
struct RegistrationIds {
    user_id: i64,
    event_id: i64,
}

/// The signal a registration's domain event is.
fn signal_of(topic: &str) -> Option<Signal> {
    Some(match topic {
        topics::REGISTRATION_CREATED | topics::REGISTRATION_PROMOTED => Signal::Register,
        topics::REGISTRATION_WAITLISTED => Signal::Waitlist,
        topics::REGISTRATION_CANCELLED => Signal::Cancel,
        _ => return None,
    })
}

impl FeederState {
    /// One round; whether the batch was full.
    async fn round(&mut self) -> anyhow::Result<bool> {
        let Some(read) = self.follower.next(ROWS).await? else {
            return Ok(false);
        };
        if self.upkept.is_none_or(|at| at.elapsed() >= UPKEEP_EVERY) {
            self.upkeep().await;
        }
        let Some(last) = read.rows.last().map(|r| r.position) else {
            return Ok(false);
        };
        let batch: Vec<Observation> = read
            .rows
            .iter()
            .filter_map(|row| {
                let signal = signal_of(&row.topic)?;
                let ids: RegistrationIds = serde_json::from_str(row.payload.get()).ok()?;
                Some(Observation {
                    id: Some(row.message_id),
                    at: row.occurred_at.timestamp_millis(),
                    signal,
                    user: Some(ids.user_id),
                    event: Some(ids.event_id),
                    count: 1,
                })
            })
            .collect();
        feed(&self.args.windows, &batch);
        self.follower.advance(last).await?;
        Ok(read.rows.len() == ROWS)
    }

    async fn upkeep(&mut self) {
        let store = &self.args.store;
        store.prepare_analytics().await;
        let now = Utc::now();
        let ago =
            |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        match store
            .prune_analytics(
                ago(self.args.raw_retention),
                ago(self.args.summary_retention),
            )
            .await
        {
            Ok(p) if p.partitions + p.rows > 0 => {
                tracing::info!(
                    partitions = p.partitions,
                    rows = p.rows,
                    "old analytics pruned"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning the analytics failed"),
        }
        self.upkept = Some(Instant::now());
    }
}

impl Actor for Feeder {
    type Msg = FeederMessage;
    type State = FeederState;
    type Arguments = FeederArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<FeederMessage>,
        args: FeederArgs,
    ) -> Result<FeederState, ActorProcessingErr> {
        let period = (args.lease / 3).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let ticker = myself.send_interval(period, || FeederMessage::Tick);
        let lease = Lease::new(args.store.clone(), NAME, args.holder.clone(), args.lease);
        Ok(FeederState {
            args,
            follower: Follower::new(lease),
            upkept: None,
            ticker,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<FeederMessage>,
        state: &mut FeederState,
    ) -> Result<(), ActorProcessingErr> {
        state.ticker.abort();
        state.follower.release().await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<FeederMessage>,
        message: FeederMessage,
        state: &mut FeederState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            FeederMessage::InjectFault => panic!("fault injected into the analytics feeder"),
            FeederMessage::Tick => match state.round().await {
                Ok(true) => myself.cast(FeederMessage::Tick)?,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "analytics feeding round failed"),
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_the_signals_the_feeder_takes() {
        assert_eq!(
            signal_of(topics::REGISTRATION_CREATED),
            Some(Signal::Register)
        );
        assert_eq!(
            signal_of(topics::REGISTRATION_PROMOTED),
            Some(Signal::Register)
        );
        assert_eq!(
            signal_of(topics::REGISTRATION_WAITLISTED),
            Some(Signal::Waitlist)
        );
        assert_eq!(
            signal_of(topics::REGISTRATION_CANCELLED),
            Some(Signal::Cancel)
        );
        assert_eq!(signal_of(topics::EVENT_CREATED), None);
    }
}

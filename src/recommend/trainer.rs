//! The trainer: an actor on every node that loads each new model the moment it is stored (so a
//! node serves the newest one, and a restarted node serves the latest without training), and,
//! on the one node holding the trainer's lease, trains in the background on a schedule, after
//! enough new interactions, or when an admin asks; then stores the model with its offline
//! evaluation and keeps the newest few.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use convene_actors::recommend::eval::evaluate;
use convene_actors::recommend::model::Precompute;
use convene_actors::recommend::{Interaction, Item, Kind, Model, Settings};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::serving::{Loaded, Models, PICKS};
use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::store::SqlStore;

/// The lease's name in the database.
const LEASE: &str = "recommend-trainer";
/// Users scored by the evaluation run with each training.
const EVALUATED_USERS: usize = 2000;
/// After a failed training, the next waits this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Rows read per query while gathering the training data.
const PAGE: i64 = 50_000;

/// How the trainer works.
#[derive(Clone)]
pub struct TrainerSettings {
    /// How models are trained.
    pub train: Settings,
    /// Train at least this often.
    pub every: Duration,
    /// ...or once this many interactions arrived since the last model,
    pub after: u64,
    /// ...and this long after the last training: a burst of interactions does not keep the
    /// trainer (and its reads of every interaction) going back to back.
    pub gap: Duration,
    /// Models kept in the database.
    pub keep: i64,
    /// Users whose recommendations are worked out at training time (those with the longest
    /// histories first); the others are scored when they ask.
    pub precomputed_users: usize,
    /// The lease's lifetime; the trainer looks for new models and renews it three times per
    /// lifetime.
    pub lease: Duration,
    /// Who holds the lease when this node does: unique per process.
    pub holder: String,
}

/// What it starts with.
#[derive(Clone)]
pub struct TrainerArgs {
    /// Interactions, events and models.
    pub store: SqlStore,
    /// The model this node serves.
    pub models: Arc<Models>,
    /// The model gauges.
    pub metrics: Metrics,
    /// See [`TrainerSettings`].
    pub settings: TrainerSettings,
}

/// The trainer actor.
#[derive(Default)]
pub struct Trainer;

/// Its messages (local only).
pub enum TrainerMessage {
    /// Look for a new model; renew the lease; train when due.
    Tick,
    /// A training ended: the version stored, or why not.
    Trained(Result<i64, String>),
    /// Panics inside the handler, for supervision tests and fault drills.
    InjectFault,
}

impl ractor::Message for TrainerMessage {}

/// Its state.
pub struct TrainerState {
    args: TrainerArgs,
    lease: Lease,
    training: Option<JoinHandle<()>>,
    last_trained: Option<Instant>,
    /// No training before this, after one failed.
    retry_at: Option<Instant>,
    /// The training running (or last run) was asked for; asked again if it fails.
    requested: bool,
    /// A stored model this version of the program cannot read (training was asked for).
    unreadable: Option<i64>,
    ticker: JoinHandle<()>,
}

/// Everything the engines learn from, read from the store.
async fn gather(store: &SqlStore) -> anyhow::Result<(Vec<Item>, Vec<Interaction>, i64)> {
    let mut items = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_after(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        items.extend(page.iter().map(Item::from));
    }
    let mut interactions = Vec::new();
    let mut last = 0;
    loop {
        let page = store.interactions_after(last, PAGE).await?;
        let Some((id, _)) = page.last() else { break };
        last = *id;
        interactions.extend(page.into_iter().map(|(_, i)| i));
    }
    Ok((items, interactions, last))
}

/// The (user, event) pairs of seats and waitlist places held at the end of `interactions`
/// (in time order): a registration or waitlisting not cancelled since.
fn taken(interactions: &[Interaction]) -> HashSet<(i64, i64)> {
    let mut held = HashSet::new();
    for i in interactions {
        match i.kind {
            Kind::Register | Kind::Waitlist => {
                held.insert((i.user_id, i.event_id));
            }
            Kind::Cancel => {
                held.remove(&(i.user_id, i.event_id));
            }
            _ => {}
        }
    }
    held
}

/// Where `SCHED_IDLE` is missing, the training thread's priority: nice 10 (`thread-priority`
/// maps 0..=99 onto nice 19..=-20).
#[cfg(not(target_os = "linux"))]
const TRAINING_PRIORITY: u8 = 22;

/// Lowers the calling thread (and the threads it starts, which inherit it) below every request.
/// On Linux it runs under `SCHED_IDLE`: it gets a core only when no request wants one, and a
/// request thread that wakes takes its core at once, so training on a busy node waits for the
/// gaps between requests instead of taking a share of their time; an idle node trains at full
/// speed. Elsewhere it runs at nice 10.
fn lower_priority() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        )
        .map_err(|e| e.to_string())
    }
    #[cfg(not(target_os = "linux"))]
    {
        thread_priority::ThreadPriorityValue::try_from(TRAINING_PRIORITY)
            .map_err(|e| e.to_owned())
            .and_then(|p| {
                thread_priority::set_current_thread_priority(
                    thread_priority::ThreadPriority::Crossplatform(p),
                )
                .map_err(|e| e.to_string())
            })
    }
}

/// Runs `work` on a thread of its own at the lowest priority ([`lower_priority`]), and waits
/// for its result.
async fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("convene-trainer".into())
        .spawn(move || {
            if let Err(e) = lower_priority() {
                tracing::debug!(error = %e, "the training thread keeps the usual priority");
            }
            let _ = done.send(work());
        })?;
    result
        .await
        .map_err(|_| anyhow::anyhow!("the training thread panicked"))?
}

/// Trains, evaluates and stores a model; its version.
async fn train(store: SqlStore, settings: TrainerSettings) -> anyhow::Result<i64> {
    let started = Instant::now();
    let (items, interactions, last) = gather(&store).await?;
    let homes = store.user_homes().await?;
    let read = started.elapsed();
    let n = interactions.len();
    let (bytes, metrics) = in_background(move || -> anyhow::Result<_> {
        let eval = evaluate(
            &items,
            &interactions,
            settings.train,
            EVALUATED_USERS,
            |_| {},
            |_| {},
        );
        let metrics: serde_json::Map<String, serde_json::Value> = eval
            .metrics
            .iter()
            .map(|(e, m)| (e.as_str().to_owned(), serde_json::json!(m.ndcg_at_10)))
            .collect();
        drop(eval);
        let now = chrono::Utc::now().timestamp();
        let mut model = Model::train(&items, &interactions, settings.train, now, |_| {});
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        model.precompute(
            &homes,
            &taken(&interactions),
            Precompute {
                want: PICKS,
                max_users: settings.precomputed_users,
                threads,
            },
        );
        Ok((model.to_bytes()?, serde_json::Value::Object(metrics)))
    })
    .await?;
    let version = store.save_model(&bytes, last, &metrics).await?;
    let pruned = store.prune_models(settings.keep).await?;
    tracing::info!(
        version,
        interactions = n,
        bytes = bytes.len(),
        read_ms = read.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        pruned,
        %metrics,
        "recommendation model trained"
    );
    Ok(version)
}

impl TrainerState {
    /// Loads the newest stored model when it is newer than the one served.
    async fn load_newest(&mut self) -> anyhow::Result<()> {
        let Some(info) = self.args.store.latest_model().await? else {
            return Ok(());
        };
        if info.version <= self.args.models.version() {
            return Ok(());
        }
        if self.unreadable == Some(info.version) {
            return Ok(());
        }
        let Some(bytes) = self.args.store.model_bytes(info.version).await? else {
            return Ok(());
        };
        let model = match tokio::task::spawn_blocking(move || Model::from_bytes(&bytes)).await? {
            Ok(model) => model,
            Err(e) => {
                // Stored by an older version of the program: a new one is trained.
                tracing::warn!(version = info.version, error = %e, "a stored model cannot be read; training a new one");
                self.unreadable = Some(info.version);
                self.args.store.request_training().await?;
                return Ok(());
            }
        };
        let metrics = &self.args.metrics;
        if let Some(m) = info.metrics.as_object() {
            for (engine, ndcg) in m {
                if let Some(x) = ndcg.as_f64() {
                    metrics
                        .ml_model_accuracy
                        .with_label_values(&[engine])
                        .set(x);
                }
            }
        }
        metrics.model_version.set(info.version);
        tracing::info!(
            version = info.version,
            items = model.items.len(),
            users = model.users(),
            "recommendation model loaded"
        );
        self.args.models.swap(Arc::new(Loaded {
            version: info.version,
            trained_at: info.trained_at,
            last_interaction: info.last_interaction,
            model,
        }));
        Ok(())
    }

    /// Whether the holder should train now.
    async fn due(&mut self) -> anyhow::Result<bool> {
        let store = &self.args.store;
        if store.take_training_request().await? {
            self.requested = true;
            return Ok(true);
        }
        let newest = store.last_interaction().await?;
        let Some(info) = store.latest_model().await? else {
            return Ok(newest > 0);
        };
        let since = newest.saturating_sub(info.last_interaction);
        let settings = &self.args.settings;
        let trained_ago = match self.last_trained {
            Some(at) => at.elapsed(),
            None => (chrono::Utc::now() - info.trained_at)
                .to_std()
                .unwrap_or_default(),
        };
        let stale = trained_ago >= settings.every;
        let busy = since as u64 >= settings.after && trained_ago >= settings.gap;
        Ok(since > 0 && (stale || busy))
    }

    async fn tick(&mut self, myself: &ActorRef<TrainerMessage>) -> anyhow::Result<()> {
        self.load_newest().await?;
        self.lease.renew().await;
        let holding = self.lease.held();
        let waiting = self.retry_at.is_some_and(|at| Instant::now() < at);
        if !holding || waiting || self.training.is_some() || !self.due().await? {
            return Ok(());
        }
        let (store, settings, me) = (
            self.args.store.clone(),
            self.args.settings.clone(),
            myself.clone(),
        );
        self.training = Some(tokio::spawn(async move {
            let result = train(store, settings).await.map_err(|e| format!("{e:#}"));
            let _ = me.cast(TrainerMessage::Trained(result));
        }));
        Ok(())
    }
}

impl Actor for Trainer {
    type Msg = TrainerMessage;
    type State = TrainerState;
    type Arguments = TrainerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TrainerMessage>,
        args: TrainerArgs,
    ) -> Result<TrainerState, ActorProcessingErr> {
        let period = (args.settings.lease / 3).max(Duration::from_millis(20));
        let ticker = myself.send_interval(period, || TrainerMessage::Tick);
        let lease = Lease::new(
            args.store.clone(),
            LEASE,
            args.settings.holder.clone(),
            args.settings.lease,
        );
        Ok(TrainerState {
            args,
            lease,
            training: None,
            last_trained: None,
            retry_at: None,
            requested: false,
            unreadable: None,
            ticker,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TrainerMessage>,
        state: &mut TrainerState,
    ) -> Result<(), ActorProcessingErr> {
        state.ticker.abort();
        if let Some(training) = state.training.take() {
            training.abort();
        }
        state.lease.release().await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TrainerMessage>,
        message: TrainerMessage,
        state: &mut TrainerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TrainerMessage::InjectFault => panic!("fault injected into the trainer"),
            TrainerMessage::Tick => {
                if let Err(e) = state.tick(&myself).await {
                    tracing::warn!(error = %e, "recommendation trainer round failed");
                }
            }
            TrainerMessage::Trained(result) => {
                state.training = None;
                state.last_trained = Some(Instant::now());
                state.retry_at = result.is_err().then(|| Instant::now() + RETRY_AFTER);
                if std::mem::take(&mut state.requested) && result.is_err() {
                    // Asked for again, so it is tried again once the retry wait is over.
                    if let Err(e) = state.args.store.request_training().await {
                        tracing::warn!(error = %e, "a failed training asked for is not retried");
                    }
                }
                match result {
                    Ok(_) => {
                        if let Err(e) = state.load_newest().await {
                            tracing::warn!(error = %e, "loading the new model failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "training the recommendation model failed")
                    }
                }
            }
        }
        Ok(())
    }
}

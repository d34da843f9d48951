//! Serving recommendations: the model this node holds (swapped whole when a newer one is
//! loaded, so a request sees one model from start to end), and the pool of workers (a
//! supervised `ractor` factory) that answers for a user or for an event: the hybrid's
//! candidates, then the rules (future, not full, not registered, not the user's own, at most
//! three of a category in the first ten); popular-near-you for a user without history.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use convene_actors::StoreError;
use convene_actors::analytics::{self, AnalyticsMessage, Role};
use convene_actors::geo::haversine_km;
use convene_actors::model::Event;
use convene_actors::recommend::data::aggregate;
use convene_actors::recommend::model::diversify;
use convene_actors::recommend::{Engine, Model, Profile};
use convene_cluster::Router;
use ractor::factory::queues::DefaultQueue;
use ractor::factory::routing::QueuerRouting;
use ractor::factory::{
    DiscardMode, DiscardSettings, Factory, FactoryArguments, FactoryMessage, FactoryRef, Job,
    Worker, WorkerId, worker_builder,
};
use ractor::{Actor, ActorProcessingErr};
use serde::Serialize;
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use crate::metrics::Metrics;
use crate::store::SqlStore;

/// Interactions of a user read to make their profile.
const HISTORY: i64 = 500;
/// Of one category, at most this many in the first [`WINDOW`].
const PER_CATEGORY: usize = 3;
const WINDOW: usize = 10;
/// The window in which interactions make an event trending.
const TRENDING: chrono::TimeDelta = chrono::TimeDelta::minutes(30);
/// The latency label of answers from picks worked out at training time.
const PRECOMPUTED: &str = "precomputed";
/// Events worked out per user at training time (see [`Model::precompute`]).
pub const PICKS: usize = 60;
/// Events read for recommendations are kept this long at most: the indexer forgets each one as
/// soon as it changes, so this only bounds what a missed change could leave.
const EVENTS_FOR: Duration = Duration::from_secs(60);
/// Events kept.
const EVENTS_KEPT: u64 = 100_000;
/// The upcoming events of the model served are read into the cache this often (and as soon as
/// a newer model is served), so answers rarely wait for the store; events read per query.
const WARM_EVERY: Duration = Duration::from_secs(30);
const WARM_CHUNK: usize = 1_000;
/// Requests queued for the workers beyond which new ones are refused.
const QUEUE_LIMIT: usize = 10_000;

/// A model with its stored version.
pub struct Loaded {
    /// Its version.
    pub version: i64,
    /// When it was trained.
    pub trained_at: DateTime<Utc>,
    /// The last interaction it learnt from.
    pub last_interaction: i64,
    /// The model.
    pub model: Model,
}

/// The model this node serves.
#[derive(Default)]
pub struct Models(RwLock<Option<Arc<Loaded>>>);

impl Models {
    /// The model now (`None` before the first one).
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves `loaded` from now on; requests that took the old one finish with it.
    pub fn swap(&self, loaded: Arc<Loaded>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(loaded);
    }

    /// The version served (0 before the first model).
    pub fn version(&self) -> i64 {
        self.current().map_or(0, |l| l.version)
    }
}

/// How a list was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The hybrid engine, from the user's history.
    Hybrid,
    /// Cold start: what is trending (or popular), nearest first when the user's home is known.
    PopularNearYou,
    /// Events like another one.
    Similar,
}

impl Strategy {
    fn as_str(self) -> &'static str {
        match self {
            Strategy::Hybrid => "hybrid",
            Strategy::PopularNearYou => "popular_near_you",
            Strategy::Similar => "similar",
        }
    }
}

/// One recommended event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Recommended {
    /// The event (shared with the node's cache of events read lately).
    #[schema(value_type = Event)]
    pub event: Arc<Event>,
    /// Its score, higher is better.
    pub score: f32,
    /// Why: the engines that contributed (`collaborative`, `content`, `factorisation`), or
    /// `trending`, `popular`, `nearby`.
    pub reasons: Vec<&'static str>,
}

/// A list of recommendations.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Recommendations {
    /// How it was made.
    pub strategy: Strategy,
    /// True when the user has no history yet and gets what is popular near them.
    pub cold_start: bool,
    /// The model version used (absent when none was needed or none exists yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<i64>,
    /// The events, best first.
    pub items: Vec<Recommended>,
}

/// Work for the pool: a ranking on a model, run to its end by one worker. Store reads never
/// hold a worker: they happen in the asking task, before and after.
pub struct Ranking(Box<dyn FnOnce() + Send>);

impl ractor::Message for Ranking {}

/// What serving reads.
pub struct Sources {
    /// Interactions, registrations and events.
    pub store: SqlStore,
    /// The model served.
    pub models: Arc<Models>,
    /// Predictions and latency.
    pub metrics: Metrics,
    /// The analytics windows (what is trending).
    pub windows: Router<AnalyticsMessage>,
    /// Events read lately.
    pub events: EventCache,
}

/// Answers recommendation requests on this node: reads in the asking task, rankings on the
/// pool of workers.
#[derive(Clone)]
pub struct Recommender {
    store: SqlStore,
    models: Arc<Models>,
    metrics: Metrics,
    windows: Router<AnalyticsMessage>,
    events: EventCache,
    pool: FactoryRef<(), Ranking>,
    /// How long a ranking may wait for a worker and run.
    timeout: Duration,
    /// Follow who interacted since the model, and keep its events read.
    upkeep: Arc<[JoinHandle<()>; 2]>,
}

/// A node's events for the recommendations: the upcoming events of the model served, read
/// ahead, and any other as it is read; each kept a minute at most. The search indexer, which
/// follows every change in the outbox, forgets an event as soon as it changes (a read that
/// crossed a change can leave the older copy until the next read ahead).
#[derive(Clone)]
pub struct EventCache(moka::sync::Cache<i64, Arc<Event>>);

impl Default for EventCache {
    fn default() -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(EVENTS_KEPT)
                .time_to_live(EVENTS_FOR)
                .build(),
        )
    }
}

impl EventCache {
    /// Forgets an event that changed.
    pub fn forget(&self, id: i64) {
        self.0.invalidate(&id);
    }

    /// Reads the upcoming events the model served can offer into the cache, each time a newer
    /// model is served and every [`WARM_EVERY`] (which also renews what a missed change could
    /// have left), until aborted.
    async fn keep_warm(self, models: Arc<Models>, store: SqlStore) {
        let mut warmed: Option<(i64, Instant)> = None;
        let mut failing = false;
        loop {
            if let Some(l) = models.current()
                && warmed.is_none_or(|(v, at)| v != l.version || at.elapsed() >= WARM_EVERY)
            {
                let now = Utc::now().timestamp();
                let ids: Vec<i64> = l
                    .model
                    .items
                    .iter()
                    .filter(|m| m.date > now)
                    .map(|m| m.event_id)
                    .take(EVENTS_KEPT as usize)
                    .collect();
                let mut read = Ok(());
                for chunk in ids.chunks(WARM_CHUNK) {
                    match store.events_by_ids(chunk).await {
                        Ok(found) => {
                            for e in found {
                                self.0.insert(e.id, Arc::new(e));
                            }
                        }
                        Err(e) => {
                            read = Err(e);
                            break;
                        }
                    }
                }
                match read {
                    Ok(()) => {
                        warmed = Some((l.version, Instant::now()));
                        failing = false;
                    }
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "the model's events were not read ahead");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Whether the first `limit` places of `diversify(items)` are taken, so that items after these
/// could not change them: `limit` items fit the per-category rule within the window, which
/// `diversify` fills in order. Never for more than the window.
fn settled<T>(items: &[T], category: impl Fn(&T) -> &str, limit: usize) -> bool {
    if limit > WINDOW {
        return false;
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut placed = 0;
    for item in items {
        let n = counts.entry(category(item)).or_default();
        if *n < PER_CATEGORY {
            *n += 1;
            placed += 1;
            if placed >= limit {
                return true;
            }
        }
    }
    false
}

fn live(e: &Event, now: DateTime<Utc>) -> bool {
    e.deleted_at.is_none() && e.date > now && e.registered_count < e.capacity
}

impl Recommender {
    /// Recommendations for `user_id`, counted by how they were made.
    pub async fn for_user(
        &self,
        user_id: i64,
        home: Option<(f64, f64)>,
        profile_at: DateTime<Utc>,
        limit: usize,
    ) -> Result<Recommendations, StoreError> {
        let answer = self.answer_user(user_id, home, profile_at, limit).await;
        let strategy = answer.as_ref().map_or("hybrid", |r| r.strategy.as_str());
        self.count(strategy, answer.is_ok());
        answer
    }

    /// Events like `event_id`, counted; `None` when it does not exist.
    pub async fn similar(
        &self,
        event_id: i64,
        limit: usize,
    ) -> Result<Option<Recommendations>, StoreError> {
        let answer = self.answer_similar(event_id, limit).await;
        self.count(Strategy::Similar.as_str(), answer.is_ok());
        answer
    }

    /// Stops the pool and its upkeep (the node is leaving).
    pub async fn stop(&self) {
        for task in self.upkeep.iter() {
            task.abort();
        }
        let _ = self
            .pool
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
    }

    /// Runs `ranking` on a worker; unavailable when none took it and finished within the
    /// timeout (the pool is overloaded or stopping).
    async fn on_workers<T: Send + 'static>(
        &self,
        ranking: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let busy =
            || StoreError::Unavailable("the recommendation workers are busy; retry shortly".into());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Ranking(Box::new(move || {
            let _ = tx.send(ranking());
        }));
        self.pool
            .cast(FactoryMessage::Dispatch(Job::new((), job)))
            .map_err(|_| busy())?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(busy()),
        }
    }

    async fn answer_user(
        &self,
        user_id: i64,
        home: Option<(f64, f64)>,
        profile_at: DateTime<Utc>,
        limit: usize,
    ) -> Result<Recommendations, StoreError> {
        let started = Instant::now();
        let now = Utc::now();
        let loaded = self.models.current();
        let picked = match &loaded {
            Some(l) => {
                let keep = |e: &Event| live(e, now) && e.created_by != user_id;
                self.picked(user_id, profile_at, l, limit, keep).await?
            }
            None => None,
        };
        // Picks hold only for a user who did nothing since the model: their registrations are
        // the ones it knew, and left out already.
        let mut registered = HashSet::new();
        let mut algorithm = PRECOMPUTED;
        let mut out = match (picked, &loaded) {
            (Some(items), Some(l)) => Recommendations {
                strategy: Strategy::Hybrid,
                cold_start: false,
                model_version: Some(l.version),
                items,
            },
            _ => {
                registered = self
                    .store
                    .user_registrations(user_id)
                    .await?
                    .into_iter()
                    .map(|r| r.event_id)
                    .collect();
                let out = self
                    .scored(user_id, home, &registered, loaded.as_ref(), limit)
                    .await?;
                algorithm = out.strategy.as_str();
                out
            }
        };
        let eligible =
            |e: &Event| live(e, now) && e.created_by != user_id && !registered.contains(&e.id);
        out.items.retain(|r| eligible(&r.event));
        if out.items.len() < limit {
            // Too little from the history (or none): what is popular near the user fills in.
            let seen: HashSet<i64> = out.items.iter().map(|r| r.event.id).collect();
            let popular = self.popular_near(home, loaded.as_ref(), limit * 3, |e| {
                eligible(e) && !seen.contains(&e.id)
            });
            out.items.extend(popular.await?);
        }
        out.items = diversify(
            out.items,
            |r| r.event.category.as_str(),
            PER_CATEGORY,
            WINDOW,
        );
        out.items.truncate(limit);
        self.observe(algorithm, started);
        Ok(out)
    }

    async fn answer_similar(
        &self,
        event_id: i64,
        limit: usize,
    ) -> Result<Option<Recommendations>, StoreError> {
        let started = Instant::now();
        let Some(me) = self
            .store
            .event(event_id)
            .await?
            .filter(|e| e.deleted_at.is_none())
        else {
            return Ok(None);
        };
        let now = Utc::now();
        let horizon = now.timestamp();
        let loaded = self.models.current();
        let scored = match &loaded {
            Some(l) => {
                let l = Arc::clone(l);
                self.on_workers(move || {
                    l.model
                        .similar(event_id, limit * 3 + 20, |_, m| m.date > horizon)
                })
                .await?
                .unwrap_or_default()
            }
            None => Vec::new(),
        };
        let events = self.events(scored.iter().map(|s| s.event_id)).await?;
        let mut items: Vec<Recommended> = scored
            .into_iter()
            .filter_map(|s| {
                let event = events.get(&s.event_id).filter(|e| live(e, now))?.clone();
                Some(Recommended {
                    event,
                    score: s.score,
                    reasons: s.engines.iter().map(|e| e.as_str()).collect(),
                })
            })
            .collect();
        if items.len() < limit {
            // An event the model does not know yet: the popular upcoming ones of its category.
            let seen: HashSet<i64> = items.iter().map(|r| r.event.id).collect();
            let more = self
                .store
                .popular_upcoming(Some(me.category.as_str()), (limit * 2) as i64)
                .await?;
            items.extend(
                more.into_iter()
                    .filter(|e| e.id != event_id && !seen.contains(&e.id))
                    .map(|event| Recommended {
                        event: Arc::new(event),
                        score: 0.0,
                        reasons: vec!["popular"],
                    }),
            );
        }
        items.truncate(limit);
        self.observe(Strategy::Similar.as_str(), started);
        Ok(Some(Recommendations {
            strategy: Strategy::Similar,
            cold_start: false,
            model_version: loaded.map(|l| l.version),
            items,
        }))
    }

    /// The events of `ids`, from the cache or else the store.
    async fn events(
        &self,
        ids: impl Iterator<Item = i64>,
    ) -> Result<HashMap<i64, Arc<Event>>, StoreError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for id in ids {
            match self.events.0.get(&id) {
                Some(e) => {
                    found.insert(id, e);
                }
                None => missing.push(id),
            }
        }
        if !missing.is_empty() {
            for e in self.store.events_by_ids(&missing).await? {
                let e = Arc::new(e);
                self.events.0.insert(e.id, Arc::clone(&e));
                found.insert(e.id, e);
            }
        }
        Ok(found)
    }

    /// The picks worked out at training time that `keep` keeps, with their events, when they
    /// still hold: the user did nothing and changed no profile since the model was trained (as
    /// this node's follower of the interactions knows, or else as the store says). Events are
    /// looked up a few picks at a time, only until the first `limit` places of the diversified
    /// list are settled.
    async fn picked(
        &self,
        user_id: i64,
        profile_at: DateTime<Utc>,
        loaded: &Loaded,
        limit: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<Option<Vec<Recommended>>, StoreError> {
        let Some(picks) = loaded.model.picks(user_id) else {
            return Ok(None);
        };
        if profile_at > loaded.trained_at {
            return Ok(None);
        }
        let learnt = loaded.last_interaction;
        let acted = match self.store.touched().after(user_id, learnt) {
            Some(acted) => acted,
            None => self.store.last_interaction_of(user_id).await? > learnt,
        };
        if acted {
            return Ok(None);
        }
        // As many as live scoring would look at.
        let picks = &picks[..picks.len().min(limit * 3 + 20)];
        let mut items = Vec::new();
        for chunk in picks.chunks(limit.clamp(1, WINDOW) + PER_CATEGORY) {
            let events = self.events(chunk.iter().map(|p| p.event_id)).await?;
            items.extend(chunk.iter().filter_map(|p| {
                let event = events.get(&p.event_id).filter(|e| keep(e))?.clone();
                Some(Recommended {
                    event,
                    score: p.score,
                    reasons: p.engines.iter().map(|e| e.as_str()).collect(),
                })
            }));
            if settled(&items, |r| r.event.category.as_str(), limit) {
                break;
            }
        }
        Ok(Some(items))
    }

    /// The hybrid's answer from the user's history as it is now (the newest [`HISTORY`]
    /// interactions), or an empty cold start when the model knows none of their events.
    async fn scored(
        &self,
        user_id: i64,
        home: Option<(f64, f64)>,
        registered: &HashSet<i64>,
        loaded: Option<&Arc<Loaded>>,
        limit: usize,
    ) -> Result<Recommendations, StoreError> {
        let history = self.store.user_interactions(user_id, HISTORY).await?;
        let weights: Vec<(i64, f32)> = aggregate(&history)
            .into_iter()
            .map(|((_, event), w)| (event, w))
            .collect();
        let Some(l) = loaded.filter(|l| weights.iter().any(|(e, _)| l.model.item(*e).is_some()))
        else {
            return Ok(Recommendations {
                strategy: Strategy::PopularNearYou,
                cold_start: true,
                model_version: loaded.map(|l| l.version),
                items: Vec::new(),
            });
        };
        let profile = Profile {
            user_id: Some(user_id),
            history: weights,
            home,
        };
        let horizon = Utc::now().timestamp();
        let (model, registered) = (Arc::clone(l), registered.clone());
        let scored = self
            .on_workers(move || {
                model
                    .model
                    .rank(Engine::Hybrid, &profile, limit * 3 + 20, |_, m| {
                        m.date > horizon
                            && m.created_by != user_id
                            && !registered.contains(&m.event_id)
                    })
            })
            .await?;
        let events = self.events(scored.iter().map(|s| s.event_id)).await?;
        let items = scored
            .into_iter()
            .filter_map(|s| {
                Some(Recommended {
                    event: events.get(&s.event_id)?.clone(),
                    score: s.score,
                    reasons: s.engines.iter().map(|e| e.as_str()).collect(),
                })
            })
            .collect();
        Ok(Recommendations {
            strategy: Strategy::Hybrid,
            cold_start: false,
            model_version: Some(l.version),
            items,
        })
    }

    /// What is trending in the popularity window; from the interactions stored when the
    /// window cannot be reached.
    async fn trending(&self, limit: usize) -> Result<Vec<(i64, f64)>, StoreError> {
        let minutes = TRENDING.num_minutes();
        let asked = self
            .windows
            .ask(analytics::key(Role::Popularity), |reply| {
                AnalyticsMessage::Trending {
                    minutes,
                    limit,
                    reply,
                }
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match asked {
            Ok(trends) => Ok(trends.into_iter().map(|t| (t.event_id, t.score)).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "trending read from the store");
                self.store
                    .trending(Utc::now() - TRENDING, limit as i64)
                    .await
            }
        }
    }

    /// What is trending in the last half hour, else what the model found popular, else the
    /// upcoming events with most registrations; nearest first when `home` is known.
    async fn popular_near(
        &self,
        home: Option<(f64, f64)>,
        loaded: Option<&Arc<Loaded>>,
        want: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<Vec<Recommended>, StoreError> {
        let mut ranked: Vec<(i64, f32, &'static str)> = self
            .trending(want * 4)
            .await?
            .into_iter()
            .map(|(e, s)| (e, s as f32, "trending"))
            .collect();
        if ranked.len() < want {
            if let Some(l) = loaded {
                let (now, l) = (Utc::now().timestamp(), Arc::clone(l));
                let popular = self
                    .on_workers(move || {
                        l.model
                            .rank(Engine::Popularity, &Profile::default(), want * 4, |_, m| {
                                m.date > now
                            })
                    })
                    .await?;
                ranked.extend(
                    popular
                        .into_iter()
                        .map(|s| (s.event_id, s.score, "popular")),
                );
            }
        }
        let events = self.events(ranked.iter().map(|r| r.0)).await?;
        let mut seen = HashSet::new();
        let mut items: Vec<Recommended> = ranked
            .into_iter()
            .filter(|(e, _, _)| seen.insert(*e))
            .filter_map(|(e, score, why)| {
                let event = events.get(&e).filter(|e| keep(e))?.clone();
                Some(Recommended {
                    event,
                    score,
                    reasons: vec![why],
                })
            })
            .collect();
        if items.len() < want {
            let ids: HashSet<i64> = items.iter().map(|r| r.event.id).collect();
            let upcoming = self.store.popular_upcoming(None, (want * 4) as i64).await?;
            items.extend(
                upcoming
                    .into_iter()
                    .filter(|e| keep(e) && !ids.contains(&e.id))
                    .map(|event| Recommended {
                        score: event.registered_count as f32,
                        event: Arc::new(event),
                        reasons: vec!["popular"],
                    }),
            );
        }
        items.truncate(want);
        if let Some(home) = home {
            let distance = |r: &Recommended| match (r.event.latitude, r.event.longitude) {
                (Some(lat), Some(lon)) => haversine_km(home, (lat, lon)),
                _ => f64::INFINITY,
            };
            items.sort_by(|a, b| distance(a).total_cmp(&distance(b)));
            for r in &mut items {
                if distance(r).is_finite() {
                    r.reasons.push("nearby");
                }
            }
        }
        Ok(items)
    }

    /// Times an answer, by how it was made (`algorithm`: a strategy, or `precomputed`).
    fn observe(&self, algorithm: &str, started: Instant) {
        self.metrics
            .recommendation_latency
            .with_label_values(&[algorithm])
            .observe(started.elapsed().as_secs_f64());
    }

    fn count(&self, strategy: &str, ok: bool) {
        self.metrics
            .ml_predictions
            .with_label_values(&[strategy, if ok { "success" } else { "error" }])
            .inc();
    }
}

/// One worker of the pool: runs rankings, one at a time.
pub struct RankWorker;

impl Worker for RankWorker {
    type Key = ();
    type Message = Ranking;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _wid: WorkerId,
        _factory: &FactoryRef<(), Ranking>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _wid: WorkerId,
        _factory: &FactoryRef<(), Ranking>,
        job: Job<(), Ranking>,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        (job.msg.0)();
        // The job's key, `()`, tells the factory this worker is free again.
        Ok(())
    }
}

type Pool =
    Factory<(), Ranking, (), RankWorker, QueuerRouting<(), Ranking>, DefaultQueue<(), Ranking>>;

/// Starts the pool of `workers` on this node (a worker that fails is replaced by the factory)
/// and the recommender that uses it; a ranking not done within `timeout` answers unavailable.
pub async fn start(
    sources: Sources,
    workers: usize,
    timeout: Duration,
) -> Result<Recommender, ractor::SpawnErr> {
    let args = FactoryArguments::builder()
        .worker_builder(Box::new(worker_builder(move |_wid: WorkerId| {
            (RankWorker, ())
        })))
        .queue(DefaultQueue::default())
        .router(QueuerRouting::default())
        .num_initial_workers(workers.max(1))
        .discard_settings(DiscardSettings::Static {
            limit: QUEUE_LIMIT,
            mode: DiscardMode::Newest,
        })
        .build();
    let (pool, _) = Actor::spawn(None, Pool::default(), args).await?;
    let Sources {
        store,
        models,
        metrics,
        windows,
        events,
    } = sources;
    let upkeep = Arc::new([
        super::recent::follow(store.clone(), models.clone()),
        tokio::spawn(events.clone().keep_warm(models.clone(), store.clone())),
    ]);
    Ok(Recommender {
        upkeep,
        store,
        models,
        metrics,
        windows,
        events,
        pool,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whenever a prefix is settled, diversifying it gives the same first places as
    /// diversifying the whole list.
    #[test]
    fn a_settled_prefix_diversifies_like_the_whole_list() {
        let categories = ["tech", "arts", "sports", "food"];
        let mut seed: u64 = 7;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let mut checked = 0;
        for _ in 0..500 {
            // Skewed towards one category, so that some lists never settle.
            let all: Vec<(usize, &str)> = (0..next() % 50)
                .map(|i| (i, categories[(next() % 7).min(3)]))
                .collect();
            let limit = 1 + next() % 12;
            let whole = diversify(all.clone(), |x| x.1, PER_CATEGORY, WINDOW);
            for n in 0..=all.len() {
                if settled(&all[..n], |x| x.1, limit) {
                    let prefix = diversify(all[..n].to_vec(), |x| x.1, PER_CATEGORY, WINDOW);
                    assert_eq!(prefix[..limit], whole[..limit], "{all:?}, limit {limit}");
                    checked += 1;
                    break;
                }
            }
        }
        assert!(checked > 100, "only {checked} lists settled");
    }
}

//! Real-time analytics: three entities of kind `analytics`, placed in the cluster like any
//! other, each keeping one sliding window ([`window`]): `analytics/event-popularity` (30
//! minutes, per event), `analytics/user-activity` (an hour, per user) and
//! `analytics/system-health` (5 minutes of totals, an hour kept for [`anomaly`] detection).
//! Every node's edges and the outbox feed them observations; each closes its minutes into
//! pre-aggregated rows, and the health window judges each closed minute and reports anomalies.
//! A window that starts (first use, restart after a crash, hand-off) takes its state back from
//! the stored raw events and minutes.

pub mod anomaly;
pub mod window;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use convene_cluster::{Activation, EntityFactory, EntityKey, Inspect, Spawning};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use self::anomaly::Thresholds;
use self::window::{Activity, Health, Popularity, minute_of, start_of};
pub use self::window::{
    ActivitySummary, EventWindow, HealthSummary, Observation, Signal, Trend, Window,
};
use crate::error::EntityError;
use crate::store::AnalyticsStore;

convene_cluster::entity_messages! {
    /// Messages an analytics window takes.
    pub enum AnalyticsMessage via AnalyticsRequest {
        ask {
            /// The most popular events over the last `minutes` (popularity window only).
            Trending {
                /// 1 to 30.
                minutes: i64,
                /// How many.
                limit: usize,
            } -> Result<Vec<Trend>, EntityError>,
            /// One event's counts (popularity window only).
            EventStats {
                /// The event.
                event_id: i64,
            } -> Result<EventWindow, EntityError>,
            /// The window as it is now.
            Summary {} -> Result<WindowSummary, EntityError>,
        }
        tell {
            /// Things that happened, to count.
            Observe {
                /// Oldest first.
                batch: Vec<Observation>,
            },
            /// Panics inside the handler, for supervision tests and fault drills.
            InjectFault,
        }
        local {
            /// Close the minutes that ended (sent by a timer).
            Tick,
        }
    }
}

/// The kind name of analytics windows in entity keys.
pub const KIND: &str = "analytics";

/// Observations taken back from the store when a window starts are recognised by id for this
/// long, in case they also arrive (they were committed before their senders sent them).
const RECOVERED_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// A minute is closed this long after it ended, so observations batched on other nodes reach
/// it first.
const GRACE_MS: i64 = 5_000;

/// Which window an analytics entity keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Per event, 30 minutes.
    Popularity,
    /// Per user, an hour.
    Activity,
    /// Totals, 5 minutes.
    Health,
}

impl Role {
    /// All three.
    pub const ALL: [Role; 3] = [Role::Popularity, Role::Activity, Role::Health];

    /// Its entity id.
    pub fn id(self) -> &'static str {
        match self {
            Role::Popularity => "event-popularity",
            Role::Activity => "user-activity",
            Role::Health => "system-health",
        }
    }

    fn parse(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.id() == id)
    }

    fn window(self) -> Window {
        match self {
            Role::Popularity => Window::Popularity(Popularity::new()),
            Role::Activity => Window::Activity(Activity::new()),
            Role::Health => Window::Health(Health::new()),
        }
    }

    /// Whether an observation concerns this window.
    fn wants(self, o: &Observation) -> bool {
        match self {
            Role::Popularity => o.event.is_some(),
            Role::Activity => o.user.is_some(),
            Role::Health => true,
        }
    }
}

/// The key of the window `role`.
pub fn key(role: Role) -> EntityKey {
    EntityKey::new(KIND, role.id())
}

/// The observations of `batch` each window wants, by window (windows with none left out).
/// The health window gets counts only, without users and events.
pub fn split(batch: &[Observation]) -> Vec<(Role, Vec<Observation>)> {
    Role::ALL
        .into_iter()
        .filter_map(|role| {
            let mine: Vec<Observation> = batch
                .iter()
                .filter(|o| role.wants(o))
                .map(|o| match role {
                    Role::Health => Observation {
                        user: None,
                        event: None,
                        ..o.clone()
                    },
                    _ => o.clone(),
                })
                .collect();
            (!mine.is_empty()).then_some((role, mine))
        })
        .collect()
}

/// What a window says of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "window", rename_all = "snake_case")]
pub enum WindowSummary {
    /// Events: how many had interactions in the window, and the top five.
    EventPopularity {
        /// The window, in minutes.
        minutes: i64,
        /// The five most popular.
        top: Vec<Trend>,
    },
    /// Users.
    UserActivity(ActivitySummary),
    /// The system.
    SystemHealth(HealthSummary),
}

/// Starts analytics windows for the shard.
pub struct AnalyticsFactory {
    store: Arc<dyn AnalyticsStore>,
    thresholds: Thresholds,
}

impl AnalyticsFactory {
    /// Windows that keep their minutes in `store` and judge anomalies by `thresholds`.
    pub fn new(store: Arc<dyn AnalyticsStore>, thresholds: Thresholds) -> Self {
        Self { store, thresholds }
    }
}

impl EntityFactory for AnalyticsFactory {
    type Msg = AnalyticsMessage;

    fn kind(&self) -> &'static str {
        KIND
    }

    fn spawn(
        &self,
        key: EntityKey,
        activation: Activation<AnalyticsMessage>,
    ) -> Spawning<AnalyticsMessage> {
        let args = AnalyticsArgs {
            key,
            store: self.store.clone(),
            thresholds: self.thresholds,
        };
        activation.start(AnalyticsActor, args)
    }
}

/// What a window starts with.
pub struct AnalyticsArgs {
    key: EntityKey,
    store: Arc<dyn AnalyticsStore>,
    thresholds: Thresholds,
}

/// The analytics actor. It is never passivated: its window is only worth something while it
/// keeps counting.
pub struct AnalyticsActor;

/// Everything a window holds.
pub struct AnalyticsState {
    key: EntityKey,
    role: Role,
    window: Window,
    store: Arc<dyn AnalyticsStore>,
    thresholds: Thresholds,
    /// Minutes up to this one are closed: stored, and judged.
    closed_through: i64,
    /// Closed minutes that changed since (late observations), to store again.
    dirty: BTreeSet<i64>,
    /// The ids of the observations taken back from the store, until [`RECOVERED_FOR`] after
    /// the start.
    recovered: HashSet<uuid::Uuid>,
    started: Instant,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Inspect for AnalyticsState {
    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "window": format!("{:?}", self.role).to_lowercase(),
            "closed_through_minute": self.closed_through,
            "open_minutes": self.dirty.len(),
            "uptime_secs": self.started.elapsed().as_secs(),
        })
    }
}

impl AnalyticsState {
    fn observe(&mut self, batch: &[Observation]) {
        let now = minute_of(now_ms());
        for o in batch {
            if o.id.is_some_and(|id| self.recovered.remove(&id)) {
                continue;
            }
            if let Some(m) = self.window.observe(o, now)
                && m <= self.closed_through
            {
                self.dirty.insert(m);
            }
        }
    }

    /// Takes the window back from the store.
    async fn recover(&mut self) -> Result<(), ActorProcessingErr> {
        let now = minute_of(now_ms());
        let mut raw_from = now - self.window.size() + 1;
        self.closed_through = now - 1;
        if let Window::Health(h) = &mut self.window {
            let minutes = self
                .store
                .load_minutes(start_of(now - Health::BASELINE))
                .await?;
            let mut last = None;
            for row in &minutes {
                let m = minute_of(row.minute.timestamp_millis());
                if let Some(s) = Signal::parse(&row.metric) {
                    h.restore(m, s, row.value.max(0.0) as u64, now);
                    last = last.max(Some(m));
                }
            }
            // Raw interactions fill the minutes after the last one stored; requests counted
            // in them but not yet stored are lost with the actor that counted them.
            if let Some(last) = last {
                raw_from = last + 1;
                self.closed_through = last.min(now - 1);
            }
        }
        let raw = self.store.load_observations(start_of(raw_from)).await?;
        let role = self.role;
        for o in raw.iter().filter(|o| role.wants(o)) {
            self.window.observe(o, now);
        }
        self.recovered = raw.iter().filter_map(|o| o.id).collect();
        // The owner before may have stopped before storing the last minute. (The health
        // window knows which minutes were stored, and closes and judges the others.)
        if role != Role::Health {
            self.dirty.insert(self.closed_through);
        }
        tracing::info!(key = %self.key, observations = raw.len(), "analytics window recovered");
        Ok(())
    }

    /// Closes the minutes that ended, stores them and what changed since, and reports the
    /// anomalies of the minutes just closed.
    async fn tick(&mut self) {
        let now_ms = now_ms();
        let now = minute_of(now_ms);
        let closable = minute_of(now_ms - GRACE_MS) - 1;
        let from = (self.closed_through + 1).max(closable - self.window.size() + 2);
        let mut rows = Vec::new();
        let mut anomalies = Vec::new();
        for m in from..=closable {
            self.window.touch(m, now);
            rows.extend(self.window.rows(m));
            if let Window::Health(h) = &self.window {
                anomalies.extend(h.judge(m, self.thresholds));
            }
            self.dirty.remove(&m);
        }
        for m in &self.dirty {
            rows.extend(self.window.rows(*m));
        }
        self.closed_through = self.closed_through.max(closable);
        if !rows.is_empty() {
            match self.store.save_minutes(&rows).await {
                Ok(()) => self.dirty.clear(),
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "analytics minutes not stored; retried");
                    self.dirty.extend(from..=closable);
                }
            }
        }
        for a in anomalies {
            if let Err(e) = self.store.report_anomaly(&a).await {
                tracing::warn!(key = %self.key, error = %e, metric = %a.metric, "an anomaly was not stored");
            }
        }
        if self.started.elapsed() >= RECOVERED_FOR && !self.recovered.is_empty() {
            self.recovered = HashSet::new();
        }
        self.window.expire(now);
        let oldest = now - self.window.size();
        self.dirty = self.dirty.split_off(&(oldest + 1));
    }

    /// On a stop (hand-off, drain): stores the minutes not stored yet, the running one too,
    /// so the next owner starts from them.
    async fn store_unclosed(&mut self) {
        let now = minute_of(now_ms());
        let mut minutes: BTreeSet<i64> = std::mem::take(&mut self.dirty);
        minutes.extend(self.closed_through + 1..=now);
        let rows: Vec<_> = minutes.iter().flat_map(|m| self.window.rows(*m)).collect();
        if let Err(e) = self.store.save_minutes(&rows).await {
            tracing::warn!(key = %self.key, error = %e, "analytics minutes lost on stop");
        }
    }

    fn trending(&self, minutes: i64, limit: usize) -> Result<Vec<Trend>, EntityError> {
        match &self.window {
            Window::Popularity(w) => Ok(w.trending(minutes, limit, minute_of(now_ms()))),
            _ => Err(EntityError::NotFound),
        }
    }

    fn event(&self, id: i64) -> Result<EventWindow, EntityError> {
        match &self.window {
            Window::Popularity(w) => Ok(w.event(id, minute_of(now_ms()))),
            _ => Err(EntityError::NotFound),
        }
    }

    fn summary(&self) -> WindowSummary {
        let now = minute_of(now_ms());
        match &self.window {
            Window::Popularity(w) => WindowSummary::EventPopularity {
                minutes: Popularity::MINUTES,
                top: w.trending(Popularity::MINUTES, 5, now),
            },
            Window::Activity(w) => WindowSummary::UserActivity(w.summary(now)),
            Window::Health(w) => WindowSummary::SystemHealth(w.summary(now)),
        }
    }
}

impl Actor for AnalyticsActor {
    type Msg = AnalyticsMessage;
    type State = AnalyticsState;
    type Arguments = AnalyticsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AnalyticsMessage>,
        args: AnalyticsArgs,
    ) -> Result<AnalyticsState, ActorProcessingErr> {
        let role = Role::parse(args.key.id())
            .ok_or_else(|| format!("no analytics window is called {}", args.key.id()))?;
        let mut state = AnalyticsState {
            key: args.key,
            role,
            window: role.window(),
            store: args.store,
            thresholds: args.thresholds,
            closed_through: 0,
            dirty: BTreeSet::new(),
            recovered: HashSet::new(),
            started: Instant::now(),
        };
        state.recover().await?;
        myself.send_interval(std::time::Duration::from_secs(1), || AnalyticsMessage::Tick);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AnalyticsMessage>,
        state: &mut AnalyticsState,
    ) -> Result<(), ActorProcessingErr> {
        state.store_unclosed().await;
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<AnalyticsMessage>,
        message: AnalyticsMessage,
        state: &mut AnalyticsState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AnalyticsMessage::Observe { batch } => state.observe(&batch),
            AnalyticsMessage::Trending {
                minutes,
                limit,
                reply,
            } => {
                let _ = reply.send(state.trending(minutes, limit));
            }
            AnalyticsMessage::EventStats { event_id, reply } => {
                let _ = reply.send(state.event(event_id));
            }
            AnalyticsMessage::Summary { reply } => {
                let _ = reply.send(Ok(state.summary()));
            }
            AnalyticsMessage::Tick => state.tick().await,
            AnalyticsMessage::InjectFault => panic!("fault injected into {}", state.key),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_window_gets_what_concerns_it_and_health_only_counts() {
        let view = Observation {
            id: Some(uuid::Uuid::new_v4()),
            at: 0,
            signal: Signal::View,
            user: Some(1),
            event: Some(2),
            count: 1,
        };
        let request = Observation {
            id: None,
            at: 0,
            signal: Signal::Request,
            user: None,
            event: None,
            count: 40,
        };
        let split = split(&[view.clone(), request.clone()]);
        let roles: Vec<Role> = split.iter().map(|(r, _)| *r).collect();
        assert_eq!(roles, Role::ALL);
        assert_eq!(split[0].1, vec![view.clone()]);
        assert_eq!(split[1].1, vec![view]);
        assert_eq!(split[2].1.len(), 2);
        assert!(
            split[2]
                .1
                .iter()
                .all(|o| o.user.is_none() && o.event.is_none())
        );
        assert_eq!(split[2].1[1], request);
    }

    #[test]
    fn keys_name_the_three_windows() {
        for role in Role::ALL {
            assert_eq!(Role::parse(key(role).id()), Some(role));
        }
        assert_eq!(Role::parse("other"), None);
    }
}

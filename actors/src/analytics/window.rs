//! The sliding windows of the analytics entities, as counts per minute: event popularity
//! (per event, 30 minutes), user activity (per user, 1 hour) and system health (totals, 5
//! minutes, with an hour of closed minutes kept as the baseline for anomaly detection). Pure
//! state; the actor in [`super`] feeds it, closes minutes and stores them.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::anomaly::{self, Anomaly, Thresholds};
use crate::recommend::Kind;

/// What an observation counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// A user opened an event.
    View,
    /// A user followed a link to an event.
    Click,
    /// A user liked an event.
    Like,
    /// A user shared an event.
    Share,
    /// A seat was taken (a promotion from the waitlist too).
    Register,
    /// A user joined a waitlist.
    Waitlist,
    /// A registration was cancelled.
    Cancel,
    /// An HTTP request was answered.
    Request,
    /// An HTTP request was answered with a 5xx status.
    ServerError,
}

/// How many signals there are.
pub const SIGNALS: usize = 9;

impl Signal {
    /// Every signal, in index order.
    pub const ALL: [Signal; SIGNALS] = [
        Signal::View,
        Signal::Click,
        Signal::Like,
        Signal::Share,
        Signal::Register,
        Signal::Waitlist,
        Signal::Cancel,
        Signal::Request,
        Signal::ServerError,
    ];

    /// Its spelling, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Request => "request",
            Signal::ServerError => "server_error",
            other => other.kind().map(Kind::as_str).unwrap_or_default(),
        }
    }

    /// Parses its spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "request" => Some(Signal::Request),
            "server_error" => Some(Signal::ServerError),
            other => Kind::parse(other).map(Signal::from),
        }
    }

    /// The interaction it is, if it is one.
    pub fn kind(self) -> Option<Kind> {
        Some(match self {
            Signal::View => Kind::View,
            Signal::Click => Kind::Click,
            Signal::Like => Kind::Like,
            Signal::Share => Kind::Share,
            Signal::Register => Kind::Register,
            Signal::Waitlist => Kind::Waitlist,
            Signal::Cancel => Kind::Cancel,
            Signal::Request | Signal::ServerError => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<Kind> for Signal {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::View => Signal::View,
            Kind::Click => Signal::Click,
            Kind::Like => Signal::Like,
            Kind::Share => Signal::Share,
            Kind::Register => Signal::Register,
            Kind::Waitlist => Signal::Waitlist,
            Kind::Cancel => Signal::Cancel,
        }
    }
}

/// Something that happened, to count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The raw event's id (the domain event's for registrations), so a window that took it
    /// back from the store when it started does not count it again when it arrives; none for
    /// counts of requests.
    #[serde(default)]
    pub id: Option<uuid::Uuid>,
    /// When, in Unix milliseconds.
    pub at: i64,
    /// What.
    pub signal: Signal,
    /// Who, for interactions.
    pub user: Option<i64>,
    /// With which event, for interactions.
    pub event: Option<i64>,
    /// How many times (requests are counted per node and second).
    pub count: u32,
}

/// Counts per signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts([u64; SIGNALS]);

impl Counts {
    /// Adds `n` to `signal`.
    pub fn add(&mut self, signal: Signal, n: u64) {
        self.0[signal.index()] += n;
    }

    /// The count of `signal`.
    pub fn get(&self, signal: Signal) -> u64 {
        self.0[signal.index()]
    }

    fn merge(&mut self, other: &Counts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// Interest shown, weighted as the recommendations weigh interactions (a registration 5, a
    /// view 1, a cancellation −5), never below zero.
    pub fn score(&self) -> f64 {
        let sum: f64 = Signal::ALL
            .iter()
            .filter_map(|s| Some(f64::from(s.kind()?.weight()) * self.get(*s) as f64))
            .sum();
        sum.max(0.0)
    }

    /// The counts by name, those above zero.
    pub fn named(&self) -> BTreeMap<String, u64> {
        Signal::ALL
            .iter()
            .filter(|s| self.get(**s) > 0)
            .map(|s| (s.as_str().to_owned(), self.get(*s)))
            .collect()
    }
}

/// One pre-aggregated value: a metric over one minute, with its dimensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinuteSummary {
    /// Such as `view`, `event.register` or `active_users`.
    pub metric: String,
    /// Such as `{"event_id": 42}`; `{}` for totals.
    pub dimensions: serde_json::Value,
    /// Its value.
    pub value: f64,
    /// The minute's start.
    pub minute: DateTime<Utc>,
}

/// Minutes since the epoch.
pub fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000)
}

/// The start of minute `m`.
pub fn start_of(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(m * 60, 0).unwrap_or_default()
}

/// Per-minute buckets, the newest `size` minutes kept.
#[derive(Debug, Clone)]
struct Minutes<T> {
    size: i64,
    buckets: BTreeMap<i64, T>,
}

impl<T: Default> Minutes<T> {
    fn new(size: i64) -> Self {
        Self {
            size,
            buckets: BTreeMap::new(),
        }
    }

    /// The bucket of `minute`, if the window still holds it at `now`.
    fn at(&mut self, minute: i64, now: i64) -> Option<&mut T> {
        (minute > now - self.size).then(|| self.buckets.entry(minute.min(now)).or_default())
    }

    fn expire(&mut self, now: i64) {
        self.buckets = self.buckets.split_off(&(now - self.size + 1));
    }

    /// The buckets of the last `n` minutes up to `now`.
    fn last(&self, n: i64, now: i64) -> impl Iterator<Item = (&i64, &T)> {
        self.buckets.range(now - n + 1..=now)
    }
}

/// An event's place in what is trending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Trend {
    /// The event.
    pub event_id: i64,
    /// Interest shown in the window, weighted by kind.
    pub score: f64,
    /// Counts by signal (`view`, `click`, `register`…), those above zero.
    pub counts: BTreeMap<String, u64>,
}

/// One event's counts in the popularity window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventWindow {
    /// The window, in minutes.
    pub minutes: i64,
    /// Views.
    pub views: u64,
    /// Registrations (promotions from the waitlist included).
    pub registrations: u64,
    /// Registrations per view, when there were views.
    pub conversion: Option<f64>,
    /// Every count by signal, those above zero.
    pub counts: BTreeMap<String, u64>,
}

/// Registrations per view.
pub fn conversion(views: u64, registrations: u64) -> Option<f64> {
    (views > 0).then(|| registrations as f64 / views as f64)
}

/// What is popular: counts per event and minute, over 30 minutes.
#[derive(Debug, Clone)]
pub struct Popularity {
    minutes: Minutes<HashMap<i64, Counts>>,
}

impl Popularity {
    /// The window's length in minutes.
    pub const MINUTES: i64 = 30;

    /// An empty window.
    pub fn new() -> Self {
        Self {
            minutes: Minutes::new(Self::MINUTES),
        }
    }

    fn observe(&mut self, o: &Observation, now: i64) -> Option<i64> {
        let event = o.event?;
        let minute = minute_of(o.at).min(now);
        self.minutes
            .at(minute, now)?
            .entry(event)
            .or_default()
            .add(o.signal, u64::from(o.count));
        Some(minute)
    }

    fn totals(&self, minutes: i64, now: i64) -> HashMap<i64, Counts> {
        let mut totals: HashMap<i64, Counts> = HashMap::new();
        for (_, events) in self.minutes.last(minutes, now) {
            for (id, counts) in events {
                totals.entry(*id).or_default().merge(counts);
            }
        }
        totals
    }

    /// The `limit` events with the highest score over the last `minutes`, highest first.
    pub fn trending(&self, minutes: i64, limit: usize, now: i64) -> Vec<Trend> {
        let mut trends: Vec<Trend> = self
            .totals(minutes, now)
            .into_iter()
            .map(|(event_id, c)| Trend {
                event_id,
                score: c.score(),
                counts: c.named(),
            })
            .filter(|t| t.score > 0.0)
            .collect();
        trends.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.event_id.cmp(&b.event_id))
        });
        trends.truncate(limit);
        trends
    }

    /// One event's counts over the whole window.
    pub fn event(&self, id: i64, now: i64) -> EventWindow {
        let mut c = Counts::default();
        for (_, events) in self.minutes.last(Self::MINUTES, now) {
            if let Some(counts) = events.get(&id) {
                c.merge(counts);
            }
        }
        let (views, registrations) = (c.get(Signal::View), c.get(Signal::Register));
        EventWindow {
            minutes: Self::MINUTES,
            views,
            registrations,
            conversion: conversion(views, registrations),
            counts: c.named(),
        }
    }

    fn rows(&self, minute: i64) -> Vec<MinuteSummary> {
        let Some(events) = self.minutes.buckets.get(&minute) else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        for (id, counts) in events {
            for s in Signal::ALL.iter().filter(|s| counts.get(**s) > 0) {
                rows.push(MinuteSummary {
                    metric: format!("event.{}", s.as_str()),
                    dimensions: serde_json::json!({ "event_id": id }),
                    value: counts.get(*s) as f64,
                    minute: start_of(minute),
                });
            }
        }
        rows
    }
}

impl Default for Popularity {
    fn default() -> Self {
        Self::new()
    }
}

/// Who is active: counts per user and minute, over an hour.
#[derive(Debug, Clone)]
pub struct Activity {
    minutes: Minutes<HashMap<i64, Counts>>,
}

/// Users active over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActivitySummary {
    /// The window, in minutes.
    pub minutes: i64,
    /// Users with at least one interaction in the window.
    pub active_users: usize,
    /// Of those, the ones active in the last 5 minutes.
    pub active_users_5m: usize,
    /// Interactions in the window by kind.
    pub interactions: BTreeMap<String, u64>,
}

impl Activity {
    /// The window's length in minutes.
    pub const MINUTES: i64 = 60;

    /// An empty window.
    pub fn new() -> Self {
        Self {
            minutes: Minutes::new(Self::MINUTES),
        }
    }

    fn observe(&mut self, o: &Observation, now: i64) -> Option<i64> {
        let user = o.user?;
        let minute = minute_of(o.at).min(now);
        self.minutes
            .at(minute, now)?
            .entry(user)
            .or_default()
            .add(o.signal, u64::from(o.count));
        Some(minute)
    }

    fn users(&self, minutes: i64, now: i64) -> usize {
        let mut users: std::collections::HashSet<i64> = std::collections::HashSet::new();
        for (_, m) in self.minutes.last(minutes, now) {
            users.extend(m.keys());
        }
        users.len()
    }

    /// The window as it is at minute `now`.
    pub fn summary(&self, now: i64) -> ActivitySummary {
        let mut total = Counts::default();
        for (_, m) in self.minutes.last(Self::MINUTES, now) {
            for c in m.values() {
                total.merge(c);
            }
        }
        ActivitySummary {
            minutes: Self::MINUTES,
            active_users: self.users(Self::MINUTES, now),
            active_users_5m: self.users(5, now),
            interactions: total.named(),
        }
    }

    fn rows(&self, minute: i64) -> Vec<MinuteSummary> {
        let users = self.minutes.buckets.get(&minute).map_or(0, HashMap::len);
        vec![MinuteSummary {
            metric: "active_users".to_owned(),
            dimensions: serde_json::json!({}),
            value: users as f64,
            minute: start_of(minute),
        }]
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// The metrics anomalies are looked for in, with the signal each counts.
pub const WATCHED: [(&str, Signal); 3] = [
    ("registrations", Signal::Register),
    ("views", Signal::View),
    ("errors", Signal::ServerError),
];

/// The system as a whole: totals per minute, 5 minutes reported, an hour kept as the baseline
/// of anomaly detection.
#[derive(Debug, Clone)]
pub struct Health {
    minutes: Minutes<Counts>,
}

/// The last minutes of the system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthSummary {
    /// The window, in minutes.
    pub minutes: i64,
    /// HTTP requests answered.
    pub requests: u64,
    /// Of those, answered with a 5xx status.
    pub server_errors: u64,
    /// Server errors per request, when there were requests.
    pub error_rate: Option<f64>,
    /// Every count in the window by signal, those above zero.
    pub counts: BTreeMap<String, u64>,
    /// Per minute, oldest first: the minute's start and its counts.
    pub per_minute: Vec<MinuteCounts>,
}

/// One minute's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MinuteCounts {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Counts by signal, those above zero.
    pub counts: BTreeMap<String, u64>,
}

impl Health {
    /// The minutes reported.
    pub const MINUTES: i64 = 5;
    /// The closed minutes kept as the baseline of anomaly detection.
    pub const BASELINE: i64 = 60;

    /// An empty window.
    pub fn new() -> Self {
        Self {
            minutes: Minutes::new(Self::BASELINE + 1),
        }
    }

    fn observe(&mut self, o: &Observation, now: i64) -> Option<i64> {
        let minute = minute_of(o.at).min(now);
        self.minutes
            .at(minute, now)?
            .add(o.signal, u64::from(o.count));
        Some(minute)
    }

    /// Takes back a minute stored earlier.
    pub fn restore(&mut self, minute: i64, signal: Signal, value: u64, now: i64) {
        if let Some(c) = self.minutes.at(minute, now) {
            c.add(signal, value);
        }
    }

    /// The window as it is at minute `now`.
    pub fn summary(&self, now: i64) -> HealthSummary {
        let mut total = Counts::default();
        let mut per_minute = Vec::new();
        for (m, c) in self.minutes.last(Self::MINUTES, now) {
            total.merge(c);
            per_minute.push(MinuteCounts {
                minute: start_of(*m),
                counts: c.named(),
            });
        }
        let (requests, server_errors) =
            (total.get(Signal::Request), total.get(Signal::ServerError));
        HealthSummary {
            minutes: Self::MINUTES,
            requests,
            server_errors,
            error_rate: (requests > 0).then(|| server_errors as f64 / requests as f64),
            counts: total.named(),
            per_minute,
        }
    }

    fn rows(&self, minute: i64) -> Vec<MinuteSummary> {
        let c = self
            .minutes
            .buckets
            .get(&minute)
            .copied()
            .unwrap_or_default();
        Signal::ALL
            .iter()
            .map(|s| MinuteSummary {
                metric: s.as_str().to_owned(),
                dimensions: serde_json::json!({}),
                value: c.get(*s) as f64,
                minute: start_of(minute),
            })
            .collect()
    }

    /// The anomalies of minute `m` against the minutes before it that the window holds.
    pub fn judge(&self, m: i64, thresholds: Thresholds) -> Vec<Anomaly> {
        let Some(counts) = self.minutes.buckets.get(&m) else {
            return Vec::new();
        };
        WATCHED
            .iter()
            .filter_map(|(name, signal)| {
                let history: Vec<f64> = self
                    .minutes
                    .buckets
                    .range(m - Self::BASELINE..m)
                    .map(|(_, c)| c.get(*signal) as f64)
                    .collect();
                anomaly::judge(
                    name,
                    start_of(m),
                    counts.get(*signal) as f64,
                    &history,
                    thresholds,
                )
            })
            .collect()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

/// One of the three windows.
#[derive(Debug, Clone)]
pub enum Window {
    /// Per event, 30 minutes.
    Popularity(Popularity),
    /// Per user, an hour.
    Activity(Activity),
    /// Totals, 5 minutes (an hour kept).
    Health(Health),
}

impl Window {
    /// Counts an observation at minute `now`; the minute it went to, or `None` when it is too
    /// old for the window or does not concern it.
    pub fn observe(&mut self, o: &Observation, now: i64) -> Option<i64> {
        match self {
            Window::Popularity(w) => w.observe(o, now),
            Window::Activity(w) => w.observe(o, now),
            Window::Health(w) => w.observe(o, now),
        }
    }

    /// Marks minute `m` as seen (a closed minute with nothing in it is a zero, not a gap).
    pub fn touch(&mut self, m: i64, now: i64) {
        match self {
            Window::Popularity(w) => drop(w.minutes.at(m, now)),
            Window::Activity(w) => drop(w.minutes.at(m, now)),
            Window::Health(w) => drop(w.minutes.at(m, now)),
        }
    }

    /// The pre-aggregated rows of minute `m`.
    pub fn rows(&self, m: i64) -> Vec<MinuteSummary> {
        match self {
            Window::Popularity(w) => w.rows(m),
            Window::Activity(w) => w.rows(m),
            Window::Health(w) => w.rows(m),
        }
    }

    /// Forgets the minutes out of the window at `now`.
    pub fn expire(&mut self, now: i64) {
        match self {
            Window::Popularity(w) => w.minutes.expire(now),
            Window::Activity(w) => w.minutes.expire(now),
            Window::Health(w) => w.minutes.expire(now),
        }
    }

    /// Its length in minutes (what it keeps).
    pub fn size(&self) -> i64 {
        match self {
            Window::Popularity(w) => w.minutes.size,
            Window::Activity(w) => w.minutes.size,
            Window::Health(w) => w.minutes.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(minute: i64, signal: Signal, user: i64, event: i64, count: u32) -> Observation {
        Observation {
            id: None,
            at: minute * 60_000 + 30_000,
            signal,
            user: Some(user),
            event: Some(event),
            count,
        }
    }

    #[test]
    fn signals_spell_and_parse_back() {
        for s in Signal::ALL {
            assert_eq!(Signal::parse(s.as_str()), Some(s));
        }
        assert_eq!(Signal::parse("nope"), None);
    }

    #[test]
    fn trending_weighs_kinds_and_forgets_what_left_the_window() {
        let now = 1_000;
        let mut w = Popularity::new();
        // Event 1: 10 views now; event 2: two registrations 10 minutes ago; event 3: one
        // registration 40 minutes ago (out of the window); event 4: registered then cancelled.
        w.observe(&obs(now, Signal::View, 1, 1, 10), now);
        w.observe(&obs(now - 10, Signal::Register, 2, 2, 1), now);
        w.observe(&obs(now - 10, Signal::Register, 3, 2, 1), now);
        assert_eq!(
            w.observe(&obs(now - 40, Signal::Register, 4, 3, 1), now),
            None
        );
        w.observe(&obs(now, Signal::Register, 5, 4, 1), now);
        w.observe(&obs(now, Signal::Cancel, 5, 4, 1), now);
        let t = w.trending(30, 10, now);
        let ids: Vec<i64> = t.iter().map(|t| t.event_id).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!((t[0].score, t[1].score), (10.0, 10.0));
        assert_eq!(t[1].counts["register"], 2);
        // Over the last 5 minutes only event 1 counts.
        let ids: Vec<i64> = w.trending(5, 10, now).iter().map(|t| t.event_id).collect();
        assert_eq!(ids, vec![1]);
        assert_eq!(w.trending(30, 1, now).len(), 1);
        // Twenty-five minutes on, event 2's minute has left the window.
        w.minutes.expire(now + 25);
        let ids: Vec<i64> = w
            .trending(30, 10, now + 25)
            .iter()
            .map(|t| t.event_id)
            .collect();
        assert_eq!(ids, vec![1]);
    }

    #[test]
    fn an_event_s_conversion_is_registrations_per_view() {
        let now = 500;
        let mut w = Popularity::new();
        w.observe(&obs(now - 1, Signal::View, 1, 7, 8), now);
        w.observe(&obs(now, Signal::Register, 1, 7, 2), now);
        let e = w.event(7, now);
        assert_eq!((e.views, e.registrations, e.conversion), (8, 2, Some(0.25)));
        assert_eq!(w.event(8, now).conversion, None);
        let rows = w.rows(now - 1);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].metric, "event.view");
        assert_eq!(rows[0].dimensions, serde_json::json!({"event_id": 7}));
    }

    #[test]
    fn activity_counts_distinct_users_over_the_hour_and_five_minutes() {
        let now = 10_000;
        let mut w = Activity::new();
        w.observe(&obs(now, Signal::View, 1, 1, 1), now);
        w.observe(&obs(now - 2, Signal::Click, 1, 2, 1), now);
        w.observe(&obs(now - 30, Signal::View, 2, 1, 3), now);
        w.observe(&obs(now - 59, Signal::Like, 3, 1, 1), now);
        let s = w.summary(now);
        assert_eq!((s.active_users, s.active_users_5m), (3, 1));
        assert_eq!(s.interactions["view"], 4);
        assert_eq!(w.rows(now)[0].value, 1.0);
    }

    #[test]
    fn health_reports_five_minutes_and_judges_a_spike_against_the_hour() {
        let now = 20_000;
        let mut w = Health::new();
        for m in now - 40..now {
            w.observe(&obs(m, Signal::Request, 0, 0, 100 + (m % 3) as u32), now);
            w.observe(&obs(m, Signal::Register, 0, 0, 5 + (m % 2) as u32), now);
        }
        w.observe(&obs(now, Signal::Register, 0, 0, 300), now);
        w.observe(&obs(now, Signal::ServerError, 0, 0, 2), now);
        let a = w.judge(now, Thresholds::default());
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            (a[0].metric.as_str(), a[0].direction.as_str()),
            ("registrations", "spike")
        );
        assert!(w.judge(now - 1, Thresholds::default()).is_empty());
        let s = w.summary(now);
        assert_eq!(s.per_minute.len(), 5);
        assert_eq!(s.server_errors, 2);
        assert!(s.requests >= 400 && s.error_rate.unwrap() < 0.01);
        assert_eq!(w.rows(now).len(), SIGNALS);
    }
}

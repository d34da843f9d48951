//! What the console sees of the entity actors on this node: one probe per activation (messages
//! waiting and handled, its rate, the last messages it handled, a summary of its state), the
//! totals and handling times of each kind, and the actor wrapper that keeps them current.
//!
//! A probe counts a message as waiting when the router or the shard puts it in the actor's
//! mailbox, and as handled when the actor is done with it; messages an actor sends itself
//! (timers) are handled without having waited, so the mailbox depth is a close lower bound.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{Histogram, IntCounter, IntGauge};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::{Deserialize, Serialize};

use crate::EntityKey;
use crate::metrics::ClusterMetrics;
use crate::wire::Forwardable;

/// A summary of an entity's state for the console: a few fields, never its whole state.
pub trait Inspect {
    /// The summary, as a JSON object.
    fn summary(&self) -> serde_json::Value;
}

/// How many handled messages a probe remembers.
const LAST: usize = 8;
/// A summary is taken again at most this often while the entity handles messages.
const SUMMARY_EVERY: Duration = Duration::from_millis(250);
/// Handling-time buckets: bucket `i` holds times under `2^i` microseconds.
const BUCKETS: usize = 28;
/// The handling-time percentiles cover this many of the last one-second samples.
const WINDOW: usize = 10;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One message an entity handled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handled {
    /// The message's name.
    pub message: String,
    /// When it was done, Unix milliseconds.
    pub at_ms: i64,
    /// How long handling it took, in microseconds.
    pub micros: u64,
}

/// One handled message as kept: its name is the variant's, copied only when reported.
struct Kept {
    message: &'static str,
    at_ms: i64,
    micros: u64,
}

struct Recent {
    last: VecDeque<Kept>,
    summary: serde_json::Value,
    summary_at_ms: i64,
    summarised: Option<Instant>,
}

/// The counters of one activation of an entity.
pub struct Probe {
    started_ms: i64,
    waiting: AtomicI64,
    handled: AtomicU64,
    /// Reads answered from its published view, without a message.
    reads: AtomicU64,
    /// Handled at the last sample, and the messages per second since the one before.
    sampled: AtomicU64,
    rate: AtomicU64,
    recent: Mutex<Recent>,
}

impl Probe {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            started_ms: now_ms(),
            waiting: AtomicI64::new(0),
            handled: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            sampled: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            recent: Mutex::new(Recent {
                last: VecDeque::with_capacity(LAST),
                summary: serde_json::Value::Null,
                summary_at_ms: 0,
                summarised: None,
            }),
        })
    }

    /// A message was put in the actor's mailbox.
    pub(crate) fn enqueued(&self) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
    }

    /// A message counted as waiting could not be put in the mailbox after all.
    pub(crate) fn unqueued(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    fn mailbox(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed).max(0) as u64
    }

    /// Counts a handled message; answers whether a new summary of the state is due.
    fn handled(&self, label: &'static str, took: Duration) -> bool {
        let _ = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                (w > 0).then_some(w - 1)
            });
        self.handled.fetch_add(1, Ordering::Relaxed);
        let mut recent = lock(&self.recent);
        if recent.last.len() == LAST {
            recent.last.pop_front();
        }
        recent.last.push_back(Kept {
            message: label,
            at_ms: now_ms(),
            micros: took.as_micros() as u64,
        });
        recent
            .summarised
            .is_none_or(|t| t.elapsed() >= SUMMARY_EVERY)
    }

    fn summarise(&self, state: &impl Inspect) {
        let summary = state.summary();
        let mut recent = lock(&self.recent);
        recent.summary = summary;
        recent.summary_at_ms = now_ms();
        recent.summarised = Some(Instant::now());
    }

    fn sample(&self) -> u64 {
        let handled = self.handled.load(Ordering::Relaxed);
        let rate = handled.saturating_sub(self.sampled.swap(handled, Ordering::Relaxed));
        self.rate.store(rate, Ordering::Relaxed);
        rate
    }

    fn brief(&self, key: &EntityKey) -> EntityBrief {
        EntityBrief {
            key: key.to_string(),
            mailbox: self.mailbox(),
            messages_per_sec: self.rate.load(Ordering::Relaxed),
            handled: self.handled.load(Ordering::Relaxed),
        }
    }
}

/// One entity in a top-N list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntityBrief {
    /// Its key, `kind/id`.
    pub key: String,
    /// Messages waiting in its mailbox.
    pub mailbox: u64,
    /// Messages handled in the last second.
    pub messages_per_sec: u64,
    /// Messages handled since it was activated.
    pub handled: u64,
}

/// An active entity as the console shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntityReport {
    /// Its key, `kind/id`.
    pub key: String,
    /// The node it is active on.
    pub node: String,
    /// When this activation started, Unix milliseconds.
    pub started_ms: i64,
    /// Messages waiting in its mailbox.
    pub mailbox: u64,
    /// Messages handled in the last second.
    pub messages_per_sec: u64,
    /// Messages handled since it was activated.
    pub handled: u64,
    /// Reads answered from what it published since it was activated: no message, no mailbox.
    #[serde(default)]
    pub reads: u64,
    /// The last messages it handled, oldest first.
    pub last: Vec<Handled>,
    /// A summary of its state.
    pub summary: serde_json::Value,
    /// When the summary was taken, Unix milliseconds.
    pub summary_at_ms: i64,
}

/// One kind of entity on one node.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct KindReport {
    /// The kind.
    pub kind: String,
    /// Entity actors running.
    pub active: u64,
    /// Messages waiting in their mailboxes.
    pub mailbox: u64,
    /// Messages handled in the last second.
    pub messages_per_sec: u64,
    /// Messages handled since the node started.
    pub handled: u64,
    /// Reads answered from what entities published since the node started, without messages.
    #[serde(default)]
    pub reads: u64,
    /// Median handling time over the last ten seconds, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile of the handling time over the last ten seconds, in milliseconds.
    pub p99_ms: f64,
    /// Restarts after a crash since the node started.
    pub restarts: u64,
    /// Passivations since the node started.
    pub passivations: u64,
    /// Entities handed off to another member since the node started.
    pub handoffs: u64,
}

/// The entity actors of one node: each kind, and the hottest and the most backed-up entities.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ActorsReport {
    /// The node.
    pub node: String,
    /// Each kind, by name.
    pub kinds: Vec<KindReport>,
    /// The entities that handled the most messages in the last second, most first.
    pub hottest: Vec<EntityBrief>,
    /// The entities with the most messages waiting, most first.
    pub longest: Vec<EntityBrief>,
}

/// The probes of one kind on one node, and its totals.
pub struct KindProbes {
    kind: &'static str,
    node: String,
    entities: RwLock<HashMap<EntityKey, Arc<Probe>>>,
    buckets: [AtomicU64; BUCKETS],
    handled: AtomicU64,
    reads: AtomicU64,
    rate: AtomicU64,
    mailbox: AtomicU64,
    /// Bucket counts at each of the last samples, oldest first.
    history: Mutex<VecDeque<[u64; BUCKETS]>>,
    metrics: KindMetrics,
}

struct KindMetrics {
    messages: IntCounter,
    handling: Histogram,
    mailbox: IntGauge,
    active: IntGauge,
    restarts: IntCounter,
    passivations: IntCounter,
}

impl KindProbes {
    pub(crate) fn new(kind: &'static str, node: &str, metrics: &ClusterMetrics) -> Arc<Self> {
        let labels = [node, kind];
        Arc::new(Self {
            kind,
            node: node.to_owned(),
            entities: RwLock::new(HashMap::new()),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            handled: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            mailbox: AtomicU64::new(0),
            history: Mutex::new(VecDeque::with_capacity(WINDOW + 1)),
            metrics: KindMetrics {
                messages: metrics.actor_messages.with_label_values(&labels),
                handling: metrics.actor_handling.with_label_values(&labels),
                mailbox: metrics.actor_mailbox.with_label_values(&labels),
                active: metrics.actor_active.with_label_values(&labels),
                restarts: metrics.actor_restarts.with_label_values(&labels),
                passivations: metrics.actor_passivations.with_label_values(&labels),
            },
        })
    }

    /// Starts sampling every second, for as long as the kind is registered.
    pub(crate) fn start_sampling(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match weak.upgrade() {
                    Some(probes) => probes.sample(),
                    None => return,
                }
            }
        });
    }

    fn sample(&self) {
        let (mut rate, mut mailbox) = (0, 0);
        let active = {
            let entities = self.entities.read().unwrap_or_else(PoisonError::into_inner);
            for probe in entities.values() {
                rate += probe.sample();
                mailbox += probe.mailbox();
            }
            entities.len()
        };
        self.rate.store(rate, Ordering::Relaxed);
        self.mailbox.store(mailbox, Ordering::Relaxed);
        self.metrics.mailbox.set(mailbox as i64);
        self.metrics.active.set(active as i64);
        let now: [u64; BUCKETS] = std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        let mut history = lock(&self.history);
        history.push_back(now);
        while history.len() > WINDOW + 1 {
            history.pop_front();
        }
    }

    pub(crate) fn activated(&self, key: &EntityKey, probe: Arc<Probe>) {
        self.entities
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), probe);
    }

    pub(crate) fn stopped(&self, key: &EntityKey) {
        self.entities
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    pub(crate) fn restarted(&self) {
        self.metrics.restarts.inc();
    }

    pub(crate) fn passivated(&self) {
        self.metrics.passivations.inc();
    }

    /// Counts a message `probe`'s actor handled; answers whether its summary is due.
    fn handled(&self, probe: &Probe, label: &'static str, took: Duration) -> bool {
        let due = probe.handled(label, took);
        let micros = took.as_micros() as u64;
        let bucket = (u64::BITS - micros.leading_zeros()) as usize;
        self.buckets[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.metrics.messages.inc();
        self.metrics.handling.observe(took.as_secs_f64());
        due
    }

    /// The percentiles `qs` (0..1) of the handling time over the last samples, in ms.
    fn percentiles<const N: usize>(&self, qs: [f64; N]) -> [f64; N] {
        let history = lock(&self.history);
        let (Some(first), Some(last)) = (history.front(), history.back()) else {
            return [0.0; N];
        };
        let counts: Vec<u64> = (0..BUCKETS).map(|i| last[i] - first[i]).collect();
        let total: u64 = counts.iter().sum();
        qs.map(|q| {
            if total == 0 {
                return 0.0;
            }
            let want = (q * total as f64).ceil() as u64;
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= want {
                    // The bucket's upper bound: times under 2^i microseconds.
                    return (1u64 << i) as f64 / 1000.0;
                }
            }
            (1u64 << (BUCKETS - 1)) as f64 / 1000.0
        })
    }

    /// A read of the entity `probe` watches was answered from its view.
    pub(crate) fn read(&self, probe: &Probe) {
        probe.reads.fetch_add(1, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn report(
        &self,
        restarts: u64,
        passivations: u64,
        handoffs: u64,
        active: u64,
    ) -> KindReport {
        let [p50_ms, p99_ms] = self.percentiles([0.5, 0.99]);
        KindReport {
            kind: self.kind.to_owned(),
            active,
            mailbox: self.mailbox.load(Ordering::Relaxed),
            messages_per_sec: self.rate.load(Ordering::Relaxed),
            handled: self.handled.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            p50_ms,
            p99_ms,
            restarts,
            passivations,
            handoffs,
        }
    }

    /// The `n` entities with the highest non-zero `by` (of the probe), highest first, ties by
    /// key. Only those `n` are copied out, however many are active.
    fn ranked(&self, n: usize, by: impl Fn(&Probe) -> u64) -> Vec<(EntityKey, Arc<Probe>)> {
        type Ranked<'a> = (u64, &'a EntityKey, &'a Arc<Probe>);
        let entities = self.entities.read().unwrap_or_else(PoisonError::into_inner);
        let mut ranked: Vec<Ranked> = entities
            .iter()
            .map(|(k, p)| (by(p), k, p))
            .filter(|(v, _, _)| *v > 0)
            .collect();
        let order = |a: &Ranked, b: &Ranked| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1));
        if ranked.len() > n && n > 0 {
            ranked.select_nth_unstable_by(n - 1, order);
        }
        ranked.truncate(n);
        ranked.sort_by(order);
        ranked
            .into_iter()
            .map(|(_, k, p)| (k.clone(), p.clone()))
            .collect()
    }

    /// The `n` hottest entities (messages per second), most first.
    pub(crate) fn hottest(&self, n: usize) -> Vec<EntityBrief> {
        self.ranked(n, |p| p.rate.load(Ordering::Relaxed))
            .iter()
            .map(|(k, p)| p.brief(k))
            .collect()
    }

    /// The `n` entities with the most messages waiting, most first.
    pub(crate) fn longest(&self, n: usize) -> Vec<EntityBrief> {
        self.ranked(n, Probe::mailbox)
            .iter()
            .map(|(k, p)| p.brief(k))
            .collect()
    }

    /// The report of the entity `key`, if it is active here.
    pub(crate) fn entity(&self, key: &EntityKey) -> Option<EntityReport> {
        let probe = self
            .entities
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()?;
        let brief = probe.brief(key);
        let recent = lock(&probe.recent);
        Some(EntityReport {
            key: brief.key,
            node: self.node.clone(),
            started_ms: probe.started_ms,
            mailbox: brief.mailbox,
            messages_per_sec: brief.messages_per_sec,
            handled: brief.handled,
            reads: probe.reads.load(Ordering::Relaxed),
            last: recent
                .last
                .iter()
                .map(|k| Handled {
                    message: k.message.to_owned(),
                    at_ms: k.at_ms,
                    micros: k.micros,
                })
                .collect(),
            summary: recent.summary.clone(),
            summary_at_ms: recent.summary_at_ms,
        })
    }

    /// The reports of the `n` busiest active entities (messages per second, then handled).
    pub(crate) fn summaries(&self, n: usize) -> Vec<EntityReport> {
        let busy = |p: &Probe| {
            // Every active entity ranks: rate first, then all it handled, never zero.
            (p.rate.load(Ordering::Relaxed).min(1 << 23) << 40)
                + p.handled.load(Ordering::Relaxed).min((1 << 40) - 1)
                + 1
        };
        self.ranked(n, busy)
            .iter()
            .filter_map(|(k, _)| self.entity(k))
            .collect()
    }
}

/// Keeps the `n` highest of `all` by `by`, highest first, ties by key.
pub(crate) fn top_n(all: &mut Vec<EntityBrief>, n: usize, by: impl Fn(&EntityBrief) -> u64) {
    let order =
        |a: &EntityBrief, b: &EntityBrief| by(b).cmp(&by(a)).then_with(|| a.key.cmp(&b.key));
    if all.len() > n && n > 0 {
        all.select_nth_unstable_by(n - 1, order);
    }
    all.truncate(n);
    all.sort_by(order);
}

/// An entity actor with its probe: every message it handles is timed and counted, and a
/// summary of its state is taken when it starts and, at most every quarter second, as it works.
pub(crate) struct Probed<A> {
    pub(crate) inner: A,
    pub(crate) probe: Arc<Probe>,
    pub(crate) kind: Arc<KindProbes>,
}

impl<A> Actor for Probed<A>
where
    A: Actor,
    A::Msg: Forwardable,
    A::State: Inspect,
{
    type Msg = A::Msg;
    type State = A::State;
    type Arguments = A::Arguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let state = self.inner.pre_start(myself, args).await?;
        self.probe.summarise(&state);
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.inner.post_start(myself, state).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.inner.post_stop(myself, state).await
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let label = message.label();
        let started = Instant::now();
        let result = self.inner.handle(myself, message, state).await;
        if self.kind.handled(&self.probe, label, started.elapsed()) {
            self.probe.summarise(state);
        }
        result
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.inner
            .handle_supervisor_evt(myself, message, state)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brief(key: &str, rate: u64) -> EntityBrief {
        EntityBrief {
            key: key.into(),
            mailbox: 0,
            messages_per_sec: rate,
            handled: 0,
        }
    }

    #[test]
    fn top_n_keeps_the_highest_in_order() {
        let mut all: Vec<_> = (0..100)
            .map(|i| brief(&format!("e/{i:03}"), i % 10))
            .collect();
        top_n(&mut all, 3, |b| b.messages_per_sec);
        let keys: Vec<_> = all.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(keys, ["e/009", "e/019", "e/029"]);
    }

    #[test]
    fn top_lists_pick_the_few_highest_of_many() {
        let probes = KindProbes::new("item", "n1", &ClusterMetrics::new());
        for i in 0..100_000u64 {
            let p = Probe::new();
            p.rate.store(i % 1000, Ordering::Relaxed);
            if i % 5000 == 0 {
                p.waiting.store((i / 5000) as i64, Ordering::Relaxed);
            }
            probes.activated(&EntityKey::new("item", i), p);
        }
        let hot = probes.hottest(3);
        assert_eq!(
            hot.iter().map(|b| b.messages_per_sec).collect::<Vec<_>>(),
            [999; 3]
        );
        assert!(hot.windows(2).all(|w| w[0].key < w[1].key), "ties by key");
        let longest: Vec<u64> = probes.longest(3).iter().map(|b| b.mailbox).collect();
        assert_eq!(longest, [19, 18, 17]);
        assert_eq!(probes.summaries(5).len(), 5);
        assert!(probes.longest(0).is_empty());
    }

    #[test]
    fn percentiles_come_from_the_last_samples() {
        let probes = KindProbes::new("item", "n1", &ClusterMetrics::new());
        probes.sample();
        let probe = Probe::new();
        for _ in 0..98 {
            probes.handled(&probe, "Get", Duration::from_micros(100));
        }
        for _ in 0..2 {
            probes.handled(&probe, "Get", Duration::from_millis(20));
        }
        probes.sample();
        let [p50, p99] = probes.percentiles([0.5, 0.99]);
        assert_eq!(p50, 0.128);
        assert_eq!(p99, 32.768);
        assert_eq!(probe.mailbox(), 0);
        assert_eq!(probe.handled.load(Ordering::Relaxed), 100);
        assert_eq!(lock(&probe.recent).last.len(), LAST);
    }
}

//! The outbox relay, an actor on every node of which one at a time (the holder of the `relay`
//! lease) publishes: it wakes on each local commit, on PostgreSQL's NOTIFY for commits on other
//! nodes, and once a second besides; reads the unpublished rows in order, publishes them to
//! every bus, and marks them published only when every bus acknowledged them. A bus that fails
//! makes it back off with jitter and retry; the rows wait in the outbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::Rng;
use tokio::task::JoinHandle;

use super::{Buses, Outgoing};
use crate::metrics::Metrics;
use crate::store::SqlStore;

/// The lease's name in the database.
const LEASE: &str = "relay";
/// First and longest wait before trying a failed bus again.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Wake-up without any commit seen: rows written by another process on SQLite, or a missed
/// notification.
const POLL: Duration = Duration::from_secs(1);
/// Published rows past their retention are deleted this often.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// The buses are probed every this many ticks.
const PROBE_EVERY: u64 = 5;

/// What the relay is given.
pub struct RelaySettings {
    /// Rows per round.
    pub batch: usize,
    /// The lease's lifetime; it is renewed five times per lifetime.
    pub lease: Duration,
    /// How long published rows are kept.
    pub retention: Duration,
    /// Who holds the lease when this node does: unique per process.
    pub holder: String,
}

/// The relay actor.
pub struct Relay;

/// Its messages (local only).
pub enum RelayMessage {
    /// Rows may be waiting.
    Wake,
    /// Renew the lease, update the gauges, prune.
    Tick,
}

impl ractor::Message for RelayMessage {}

/// What it starts with.
pub struct RelayArgs {
    /// The outbox.
    pub store: SqlStore,
    /// Where it publishes.
    pub buses: Buses,
    /// Its gauges and counters.
    pub metrics: Metrics,
    /// Its policy.
    pub settings: RelaySettings,
}

/// Its state.
pub struct RelayState {
    args: RelayArgs,
    holding: bool,
    backoff: Duration,
    retry_at: Option<Instant>,
    pruned: Option<Instant>,
    ticks: u64,
    /// Set while a `Wake` is in the mailbox, so a burst of commits queues one.
    woken: Arc<AtomicBool>,
    waker: JoinHandle<()>,
    ticker: JoinHandle<()>,
}

fn wake(relay: &ActorRef<RelayMessage>, woken: &AtomicBool) -> bool {
    if woken.swap(true, Ordering::AcqRel) {
        return true;
    }
    relay.cast(RelayMessage::Wake).is_ok()
}

/// Wakes the relay on local commits, on NOTIFY from PostgreSQL, and every [`POLL`].
async fn watch(relay: ActorRef<RelayMessage>, store: SqlStore, woken: Arc<AtomicBool>) {
    let mut listener = match store.postgres_pool() {
        Some(pool) => match sqlx::postgres::PgListener::connect_with(pool).await {
            Ok(mut l) => match l.listen("convene_outbox").await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; the relay polls");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no LISTEN connection; the relay polls");
                None
            }
        },
        None => None,
    };
    loop {
        let notified = async {
            match &mut listener {
                // On a lost connection `recv` reconnects and listens again.
                Some(l) => {
                    if l.recv().await.is_err() {
                        tokio::time::sleep(POLL).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = store.outbox_wait() => {}
            () = notified => {}
            () = tokio::time::sleep(POLL) => {}
        }
        if !wake(&relay, &woken) {
            break;
        }
    }
}

impl RelayState {
    /// Publishes one batch; the number of rows it took.
    async fn round(&mut self) -> anyhow::Result<usize> {
        let args = &self.args;
        let rows = args.store.outbox(args.settings.batch).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let out: Vec<Outgoing> = rows.iter().map(|r| Outgoing::new(&r.event)).collect();
        let mut per_kind: HashMap<&str, u64> = HashMap::new();
        for m in &out {
            *per_kind.entry(m.kind.as_str()).or_default() += 1;
        }
        for bus in &args.buses.publishers() {
            let started = Instant::now();
            let result = bus.publish(&out).await;
            let up = args.metrics.bus_up.with_label_values(&[bus.name()]);
            if let Err(e) = result {
                up.set(0);
                return Err(e.into());
            }
            up.set(1);
            args.metrics
                .bus_publish_seconds
                .with_label_values(&[bus.name()])
                .observe(started.elapsed().as_secs_f64());
            for (kind, n) in &per_kind {
                args.metrics
                    .bus_published
                    .with_label_values(&[bus.name(), kind])
                    .inc_by(*n);
            }
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        args.store.mark_published(&ids, Utc::now()).await?;
        for m in out {
            // Nobody listening in this process is not an error.
            let _ = args.buses.local.send(m.envelope);
        }
        args.metrics.outbox_pending.sub(rows.len() as i64);
        Ok(rows.len())
    }

    async fn tick(&mut self, myself: &ActorRef<RelayMessage>) {
        let args = &self.args;
        let settings = &args.settings;
        let was = self.holding;
        self.holding = match args
            .store
            .take_lease(LEASE, &settings.holder, settings.lease)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "the relay lease could not be renewed");
                false
            }
        };
        if self.holding != was {
            tracing::info!(holder = %settings.holder, holding = self.holding, "relay lease");
        }
        if let Ok(n) = args.store.outbox_pending().await {
            args.metrics.outbox_pending.set(n);
        }
        let probe = self.ticks % PROBE_EVERY == 0;
        self.ticks += 1;
        for bus in &args.buses.publishers() {
            let up = bus.up(probe).await;
            args.metrics
                .bus_up
                .with_label_values(&[bus.name()])
                .set(i64::from(up));
        }
        if !self.holding {
            return;
        }
        if self.pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            let before = Utc::now()
                - chrono::Duration::from_std(settings.retention).unwrap_or(chrono::Duration::MAX);
            match args.store.prune_outbox(before).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "published outbox rows pruned"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning the outbox failed"),
            }
            self.pruned = Some(Instant::now());
        }
        if !was {
            wake(myself, &self.woken);
        }
    }
}

impl Actor for Relay {
    type Msg = RelayMessage;
    type State = RelayState;
    type Arguments = RelayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RelayMessage>,
        args: RelayArgs,
    ) -> Result<RelayState, ActorProcessingErr> {
        let woken = Arc::new(AtomicBool::new(false));
        let waker = tokio::spawn(watch(myself.clone(), args.store.clone(), woken.clone()));
        let period = (args.settings.lease / 5).max(Duration::from_millis(20));
        let ticker = myself.send_interval(period, || RelayMessage::Tick);
        myself.cast(RelayMessage::Tick)?;
        Ok(RelayState {
            args,
            holding: false,
            backoff: BACKOFF_MIN,
            retry_at: None,
            pruned: None,
            ticks: 0,
            woken,
            waker,
            ticker,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RelayMessage>,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        state.waker.abort();
        state.ticker.abort();
        if state.holding {
            let settings = &state.args.settings;
            if let Err(e) = state
                .args
                .store
                .release_lease(LEASE, &settings.holder)
                .await
            {
                tracing::warn!(error = %e, "the relay lease was not released");
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RelayMessage>,
        message: RelayMessage,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RelayMessage::Tick => state.tick(&myself).await,
            RelayMessage::Wake => {
                state.woken.store(false, Ordering::Release);
                if !state.holding || state.retry_at.is_some_and(|at| Instant::now() < at) {
                    return Ok(());
                }
                match state.round().await {
                    Ok(n) => {
                        state.backoff = BACKOFF_MIN;
                        state.retry_at = None;
                        if n == state.args.settings.batch {
                            wake(&myself, &state.woken);
                        }
                    }
                    Err(e) => {
                        let wait = state.backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "relay round failed");
                        state.backoff = (state.backoff * 2).min(BACKOFF_MAX);
                        state.retry_at = Some(Instant::now() + wait);
                        myself.send_after(wait, || RelayMessage::Wake);
                    }
                }
            }
        }
        Ok(())
    }
}

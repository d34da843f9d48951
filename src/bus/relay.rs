//! The outbox relay, an actor on every node of which one at a time (the holder of the `relay`
//! lease) publishes: it wakes on each local commit, on PostgreSQL's NOTIFY for commits on other
//! nodes, and once a second besides; reads the rows past its cursor in commit order, publishes
//! them to every bus (the next batch is read, and sent, while the last ones are acknowledged;
//! on a bus that would not keep an entity's order, only once that entity's earlier messages are),
//! and moves the cursor only past batches every bus acknowledged (a task of its own stores it,
//! so publishing never waits for that write). A bus that fails makes it
//! back off with jitter and retry; the rows wait in the outbox.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::Rng;
use tokio::task::JoinHandle;

use super::{Acks, Buses, Outgoing, Publisher};
use crate::lease::{Lease, Renewal};
use crate::metrics::Metrics;
use crate::store::{OutboxWatch, Position, Read, SqlStore};
use convene_actors::StoreError;

/// The lease's name in the database, and the relay's cursor's.
pub const LEASE: &str = "relay";
/// First and longest wait before trying a failed bus again.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Wake-up without any commit seen: rows written by another process on SQLite, or a missed
/// notification.
const POLL: Duration = Duration::from_secs(1);
/// Published rows past their retention are deleted this often (or once per retention, when
/// shorter).
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// First and longest wait for an older transaction to end when it holds rows back (a
/// commit that writes outbox rows wakes the relay anyway; other writes do not).
const HELD_MIN: Duration = Duration::from_millis(2);
const HELD_MAX: Duration = Duration::from_millis(200);
/// The buses are probed, and the backlog counted, every this many ticks.
const PROBE_EVERY: u64 = 5;
/// Batches sent and not yet acknowledged, at most, while the outbox has more.
const IN_FLIGHT: usize = 4;
/// How long a stopping relay waits for the acknowledgements of what it sent.
const SETTLE_ON_STOP: Duration = Duration::from_secs(5);

/// What the relay is given.
#[derive(Clone)]
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
#[derive(Default)]
pub struct Relay;

/// Its messages (local only).
pub enum RelayMessage {
    /// Rows may be waiting.
    Wake,
    /// Renew the lease, update the gauges, prune.
    Tick,
    /// Panics inside the handler, for supervision tests and fault drills.
    InjectFault,
}

impl ractor::Message for RelayMessage {}

/// What it starts with.
#[derive(Clone)]
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
    lease: Lease,
    backoff: Duration,
    retry_at: Option<Instant>,
    pruned: Option<Instant>,
    ticks: u64,
    /// Set while a `Wake` is in the mailbox, so a burst of commits queues one.
    woken: Arc<AtomicBool>,
    /// Every bus acknowledged the rows up to here; `None` until read from the database after
    /// the lease was taken.
    sent: Option<Position>,
    /// Rows up to here were read (or are being read).
    read: Position,
    /// The next batch, being read.
    prefetch: Option<JoinHandle<Result<Read, StoreError>>>,
    /// Batches sent and awaiting acknowledgements, oldest first.
    in_flight: VecDeque<Sent>,
    /// The backlog count and the buses' probes, when running.
    probing: Option<JoinHandle<()>>,
    /// Where the cursor is to be stored: the writer stores the latest, off the relay's path.
    cursor: tokio::sync::watch::Sender<Option<Position>>,
    cursor_writer: JoinHandle<()>,
    /// The wait before looking again at rows held back by an open transaction.
    held: Duration,
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
    let mut outbox = OutboxWatch::new(&store, POLL).await;
    loop {
        outbox.next().await;
        if !wake(&relay, &woken) {
            break;
        }
    }
}

/// Stores the cursor as it moves, the latest position each time, so publishing never waits for
/// the write. A write that fails is tried again; until then a relay that takes over reads a few
/// published rows again, which the buses drop by id.
async fn write_cursor(store: SqlStore, mut cursor: tokio::sync::watch::Receiver<Option<Position>>) {
    let mut wait = BACKOFF_MIN;
    while cursor.changed().await.is_ok() {
        loop {
            let Some(at) = *cursor.borrow_and_update() else {
                break;
            };
            match store.advance_outbox_cursor(LEASE, at).await {
                Ok(()) => {
                    wait = BACKOFF_MIN;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "the relay's cursor was not stored");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// A batch sent to every bus, until they all acknowledge it.
struct Sent {
    /// Its last row.
    last: Position,
    out: Vec<Outgoing>,
    acks: Vec<(Arc<dyn Publisher>, Acks)>,
    started: Instant,
}

impl RelayState {
    /// Publishes one batch; the number of rows it took, and whether rows are held back by an
    /// open transaction. While a batch is published the next is read. The cursor moves only
    /// after every bus acknowledged a batch; after a failure, reading starts again from it.
    async fn round(&mut self) -> anyhow::Result<(usize, bool)> {
        let sent = match self.sent {
            Some(sent) => sent,
            None => {
                let sent = self.args.store.outbox_cursor(LEASE).await?;
                self.sent = Some(sent);
                self.read = sent;
                sent
            }
        };
        let result = self.publish_next().await;
        if result.is_err() {
            self.forget_reads();
            self.read = self.sent.unwrap_or(sent);
        }
        result
    }

    /// Drops the batch being read ahead and the batches awaiting acknowledgements (they are
    /// sent again from the cursor).
    fn forget_reads(&mut self) {
        if let Some(read) = self.prefetch.take() {
            read.abort();
        }
        self.in_flight.clear();
    }

    /// Waits for the acknowledgements of the oldest batches until at most `keep` are in
    /// flight, then moves the cursor past those every bus acknowledged.
    async fn settle(&mut self, keep: usize) -> anyhow::Result<()> {
        let args = &self.args;
        let mut done: Vec<Sent> = Vec::new();
        let mut failure = None;
        while self.in_flight.len() > keep {
            let Some(mut sent) = self.in_flight.pop_front() else {
                break;
            };
            let mut per_kind: HashMap<&str, u64> = HashMap::new();
            for m in &sent.out {
                *per_kind.entry(m.kind.as_str()).or_default() += 1;
            }
            for (bus, acks) in sent.acks.drain(..) {
                let up = args.metrics.bus_up.with_label_values(&[bus.name()]);
                if let Err(e) = acks.await {
                    bus.failed();
                    up.set(0);
                    failure = Some(e);
                    break;
                }
                up.set(1);
                args.metrics
                    .bus_publish_seconds
                    .with_label_values(&[bus.name()])
                    .observe(sent.started.elapsed().as_secs_f64());
                for (kind, n) in &per_kind {
                    args.metrics
                        .bus_published
                        .with_label_values(&[bus.name(), kind])
                        .inc_by(*n);
                }
            }
            if failure.is_some() {
                break;
            }
            done.push(sent);
        }
        // What was acknowledged before a failure stays published.
        if let Some(last) = done.last().map(|s| s.last) {
            self.sent = Some(last);
            self.cursor.send_replace(Some(last));
            for sent in done {
                args.metrics.outbox_pending.sub(sent.out.len() as i64);
                for m in sent.out {
                    // Nobody listening in this process is not an error.
                    let _ = args.buses.local.send(m.envelope);
                }
            }
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Whether a batch in flight holds a message for an entity of `out`.
    fn shares_entity(&self, out: &[Outgoing]) -> bool {
        if self.in_flight.is_empty() {
            return false;
        }
        let entities: std::collections::HashSet<&str> =
            out.iter().map(|m| m.entity.as_str()).collect();
        self.in_flight
            .iter()
            .flat_map(|s| &s.out)
            .any(|m| entities.contains(m.entity.as_str()))
    }

    async fn publish_next(&mut self) -> anyhow::Result<(usize, bool)> {
        let batch = self.args.settings.batch;
        let Read { rows, held_back } = match self.prefetch.take() {
            Some(read) => read.await??,
            None => self.args.store.outbox(self.read, batch).await?,
        };
        let Some(last) = rows.last().map(|r| r.position) else {
            self.settle(0).await?;
            return Ok((0, held_back));
        };
        self.read = last;
        let full = rows.len() == batch;
        if full {
            let (store, after) = (self.args.store.clone(), self.read);
            self.prefetch = Some(tokio::spawn(
                async move { store.outbox(after, batch).await },
            ));
        }
        let out: Vec<Outgoing> = rows.into_iter().map(Outgoing::new).collect();
        let publishers = self.args.buses.publishers();
        if publishers.iter().any(|b| !b.ordered_in_flight()) && self.shares_entity(&out) {
            // An entity of this batch has a message not yet acknowledged by a bus that would
            // not keep their order: that one is acknowledged first.
            self.settle(0).await?;
        }
        let started = Instant::now();
        let mut acks = Vec::new();
        for bus in publishers {
            match bus.send(&out).await {
                Ok(a) => acks.push((bus, a)),
                Err(e) => {
                    self.args
                        .metrics
                        .bus_up
                        .with_label_values(&[bus.name()])
                        .set(0);
                    return Err(e.into());
                }
            }
        }
        let n = out.len();
        self.in_flight.push_back(Sent {
            last,
            out,
            acks,
            started,
        });
        // More rows wait: keep sending while earlier batches are acknowledged. Caught up:
        // settle everything, so the cursor is current.
        self.settle(if full { IN_FLIGHT - 1 } else { 0 }).await?;
        Ok((n, held_back))
    }

    async fn tick(&mut self, myself: &ActorRef<RelayMessage>) {
        let settings = self.args.settings.clone();
        let renewal = self.lease.renew().await;
        if renewal == Renewal::Lost {
            // Another node relays now; a later pass starts from the cursor as it is then.
            self.forget_reads();
            self.sent = None;
        }
        let args = &self.args;
        let probe = self.ticks % PROBE_EVERY == 0
            && self.probing.as_ref().is_none_or(JoinHandle::is_finished);
        self.ticks += 1;
        if probe {
            // A count over the rows past the cursor (cheap when the relay keeps up, a scan of
            // the backlog when a bus is down) and a round trip to each bus: not on every tick,
            // and off the relay's own path, so publishing never waits for them.
            let (store, buses, metrics) =
                (args.store.clone(), args.buses.clone(), args.metrics.clone());
            self.probing = Some(tokio::spawn(async move {
                if let Ok(n) = store.outbox_pending(LEASE).await {
                    metrics.outbox_pending.set(n);
                }
                for bus in &buses.publishers() {
                    let up = bus.up(true).await;
                    metrics
                        .bus_up
                        .with_label_values(&[bus.name()])
                        .set(i64::from(up));
                }
            }));
        } else {
            for bus in &args.buses.publishers() {
                let up = bus.up(false).await;
                args.metrics
                    .bus_up
                    .with_label_values(&[bus.name()])
                    .set(i64::from(up));
            }
        }
        if !self.lease.held() {
            return;
        }
        let every = PRUNE_EVERY
            .min(settings.retention)
            .max(Duration::from_millis(100));
        if self.pruned.is_none_or(|at| at.elapsed() >= every) {
            let before = Utc::now()
                - chrono::Duration::from_std(settings.retention).unwrap_or(chrono::Duration::MAX);
            match args.store.prune_outbox(LEASE, before).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "published outbox rows pruned"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning the outbox failed"),
            }
            self.pruned = Some(Instant::now());
        }
        if renewal == Renewal::Gained {
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
        let (cursor, stored) = tokio::sync::watch::channel(None);
        let cursor_writer = tokio::spawn(write_cursor(args.store.clone(), stored));
        let lease = Lease::new(
            args.store.clone(),
            LEASE,
            args.settings.holder.clone(),
            args.settings.lease,
        );
        Ok(RelayState {
            args,
            lease,
            backoff: BACKOFF_MIN,
            retry_at: None,
            pruned: None,
            ticks: 0,
            woken,
            sent: None,
            read: Position::default(),
            prefetch: None,
            in_flight: VecDeque::new(),
            probing: None,
            cursor,
            cursor_writer,
            held: HELD_MIN,
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
        if let Some(probing) = state.probing.take() {
            probing.abort();
        }
        state.cursor_writer.abort();
        if state.lease.held() {
            // What is sent already is acknowledged soon: the cursor moves past it, stored here
            // before the lease is given up.
            let _ = tokio::time::timeout(SETTLE_ON_STOP, state.settle(0)).await;
            if let Some(sent) = state.sent
                && let Err(e) = state.args.store.advance_outbox_cursor(LEASE, sent).await
            {
                tracing::warn!(error = %e, "the relay's cursor was not stored as it stopped");
            }
        }
        state.forget_reads();
        state.lease.release().await;
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
            RelayMessage::InjectFault => panic!("fault injected into the relay"),
            RelayMessage::Wake => {
                state.woken.store(false, Ordering::Release);
                if !state.lease.held() || state.retry_at.is_some_and(|at| Instant::now() < at) {
                    return Ok(());
                }
                match state.round().await {
                    Ok((n, held_back)) => {
                        state.backoff = BACKOFF_MIN;
                        state.retry_at = None;
                        if n == state.args.settings.batch {
                            wake(&myself, &state.woken);
                        } else if held_back {
                            let wait = state.held;
                            state.held = (state.held * 2).min(HELD_MAX);
                            myself.send_after(wait, || RelayMessage::Wake);
                        } else {
                            state.held = HELD_MIN;
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

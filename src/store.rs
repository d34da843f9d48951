//! The sqlx store over PostgreSQL or SQLite: the [`Store`] the actors write through, the read
//! queries the edges use, and the one place where database errors become domain errors.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use convene_actors::StoreError;
use convene_cluster::breaker::Breaker;
use futures::FutureExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

/// The database behind the store.
#[derive(Clone, Debug)]
enum Db {
    Postgres(PgPool),
    /// SQLite takes one writer at a time: writes go through a single connection so they queue
    /// in the pool instead of failing as busy; reads use their own connections.
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
    },
}

/// Runs `$body` with `$pool` bound to the pool for writes or for reads, whichever the database,
/// unless the database's circuit breaker is open: then it returns the store's error at once.
macro_rules! on_pool {
    ($store:expr, write, $pool:ident => $body:expr) => {{
        $store.admit()?;
        match &$store.db {
            Db::Postgres($pool) => $body,
            Db::Sqlite { write: $pool, .. } => $body,
        }
    }};
    ($store:expr, read, $pool:ident => $body:expr) => {{
        $store.admit()?;
        match &$store.db {
            Db::Postgres($pool) => $body,
            Db::Sqlite { read: $pool, .. } => $body,
        }
    }};
}

/// Rows per multi-row insert, well under either database's limit on bound parameters.
const CHUNK: usize = 500;

/// Binds an event's columns, title to deletion, as $1 to $14 of the statements that update
/// its row.
macro_rules! bind_event {
    ($query:expr, $e:expr) => {
        $query
            .bind(&$e.title)
            .bind(&$e.description)
            .bind($e.date)
            .bind(&$e.location)
            .bind($e.latitude)
            .bind($e.longitude)
            .bind($e.capacity)
            .bind($e.registered_count)
            .bind($e.category.as_str())
            .bind(sqlx::types::Json(&$e.tags))
            .bind($e.price_cents)
            .bind($e.version)
            .bind($e.updated_at)
            .bind($e.deleted_at)
    };
}

/// Writes interactions ([`Interacted`]) inside the transaction `$tx`, to
/// `interactions` (what the recommendations learn from) and to `analytics_events` (what the
/// analytics windows count); the users are marked in `$store`'s [`Touched`] at once.
macro_rules! write_interactions {
    ($store:expr, $tx:expr, $interactions:expr) => {
        let written = $crate::store::batch::Batch::journal(&mut *$tx, &[], $interactions)
            .await
            .map_err(unavailable)?;
        // Known before the commit: a transaction that rolls back leaves a user marked who
        // did nothing, which only costs them a live scoring.
        $store.touched.touch(written);
    };
}

/// Writes `events` to the outbox inside the transaction `$tx`, and the interactions among
/// them (registrations and their changes) as `write_interactions!` does.
macro_rules! write_outbox {
    ($store:expr, $tx:expr, $events:expr) => {
        let events: Vec<&DomainEvent> = $events.into_iter().collect();
        let interactions: Vec<_> = events
            .iter()
            .filter_map(|e| $crate::store::interactions::interaction_of(e))
            .collect();
        let written = $crate::store::batch::Batch::journal(&mut *$tx, &events, &interactions)
            .await
            .map_err(unavailable)?;
        $store.touched.touch(written);
    };
}

mod admin;
mod analytics;
mod batch;
mod events;
mod interactions;
mod outbox;
mod rooms;
mod users;

pub use admin::Pin;
pub use events::EventFilter;
pub use interactions::{Interacted, ModelInfo, Touched};
pub use outbox::{OutboxWatch, PRUNED, Pending, Position, Read};

/// The store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqlStore {
    db: Db,
    /// Bumped after every commit that wrote to the outbox, so the outbox's readers on this node
    /// need not poll.
    written: Arc<tokio::sync::watch::Sender<u64>>,
    /// Users who interacted since the model, as this node knows them.
    touched: Arc<Touched>,
    /// Open while the database does not answer: queries fail at once instead of each waiting
    /// for a connection. Fed by [`SqlStore::watch`]'s probe and by [`SqlStore::ping`].
    breaker: Arc<Breaker>,
}

/// How often the database is probed, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A pooled PostgreSQL connection idle this long is pinged before it is used again.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

fn breaker() -> Arc<Breaker> {
    // Two probes in a row without an answer open it; trials come after 1 s, then up to 4 s.
    Arc::new(Breaker::new(
        "database",
        2,
        Duration::from_secs(1),
        Duration::from_secs(4),
    ))
}

/// Which database a URL names.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl SqlStore {
    /// Connects to PostgreSQL and applies the migrations.
    pub async fn postgres(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // A ping before every query doubled the round trips of the hot paths: only a
            // connection left idle a while is checked. A busy one that broke fails its query,
            // is dropped when released (sqlx pings on release), and the probe sees an outage.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                }
                .boxed()
            })
            .connect_with(options)
            .await?;
        sqlx::migrate!("./schema/postgres").run(&pool).await?;
        let store = Self {
            db: Db::Postgres(pool),
            written: Arc::new(tokio::sync::watch::Sender::new(0)),
            touched: Arc::default(),
            breaker: breaker(),
        };
        store.prepare_analytics().await;
        Ok(store)
    }

    /// Opens (creating it if needed) the SQLite file at `path` and applies the migrations.
    pub async fn sqlite(path: &Path) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./schema/sqlite").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            db: Db::Sqlite { write, read },
            written: Arc::new(tokio::sync::watch::Sender::new(0)),
            touched: Arc::default(),
            breaker: breaker(),
        })
    }

    /// `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Postgres(_) => "postgres",
            Db::Sqlite { .. } => "sqlite",
        }
    }

    /// Whether the database answers, whatever its breaker says; the answer closes or opens
    /// the breaker.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let answer = match &self.db {
            Db::Postgres(pool) => probe(pool).await,
            Db::Sqlite { read, .. } => probe(read).await,
        };
        match &answer {
            Ok(()) => self.breaker.success(),
            Err(e) => self.breaker.failure(&e.to_string()),
        }
        answer
    }

    /// Refuses at once while the breaker is open.
    fn admit(&self) -> Result<(), StoreError> {
        if self.breaker.is_open() {
            return Err(StoreError::Unavailable(
                "the database is not answering; retry shortly".into(),
            ));
        }
        Ok(())
    }

    /// Reports the breaker in `metrics` and, on PostgreSQL, probes the database every second
    /// (at the breaker's trial times while it is open) until `stop` says so.
    pub fn watch(
        &self,
        metrics: &convene_cluster::ClusterMetrics,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.breaker.report_to(metrics);
        let Db::Postgres(pool) = &self.db else {
            return None;
        };
        let (pool, breaker) = (pool.clone(), self.breaker.clone());
        Some(tokio::spawn(async move {
            loop {
                let wait = if breaker.is_open() {
                    Duration::from_millis(100)
                } else {
                    PROBE_EVERY
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                        return;
                    },
                }
                if breaker.is_open() && !breaker.allow() {
                    continue;
                }
                match probe(&pool).await {
                    Ok(()) => breaker.success(),
                    Err(e) => breaker.failure(&e.to_string()),
                }
            }
        }))
    }
}

/// `SELECT 1` within the probe timeout.
async fn probe<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Result<(), StoreError>
where
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    match tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(StoreError::Unavailable("no answer to SELECT 1".into())),
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(column: &str, value: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected value `{value}` in {column}"))
}

/// The one place where a failed write becomes a domain error.
fn write_error(e: sqlx::Error, unique: impl FnOnce() -> StoreError) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => unique(),
        sqlx::Error::Database(db) if db.is_check_violation() => {
            StoreError::Invariant(db.message().to_owned())
        }
        _ => unavailable(e),
    }
}

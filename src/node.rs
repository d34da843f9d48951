//! A running node: opens the store, joins the cluster (when configured to), starts the entity
//! shards under the routing seam, and serves the HTTP edge until asked to stop; then it drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use convene_actors::analytics::AnalyticsFactory;
use convene_actors::analytics::anomaly::Thresholds;
use convene_actors::event::EventFactory;
use convene_actors::fanout::{self, FanOut, FanOutMessage, FanOutService};
use convene_actors::room::{self, PresenceSettings, RoomCommand, RoomFactory};
use convene_actors::user::UserFactory;
use convene_cluster::{
    Cluster, KindSettings, MembershipSettings, Network, NetworkSettings, Router, Seed,
};
use ractor::Actor;
use tokio::sync::oneshot;

use crate::analytics::{Feeder, FeederArgs, FeederMessage, Tracker, WindowStore};
use crate::app::{App, Inner};
use crate::auth::{Auth, load_or_create_secret};
use crate::bus::relay::{Relay, RelayArgs, RelayMessage, RelaySettings};
use crate::bus::{Buses, bridge, commands, consumer, interactions};
use crate::config::Config;
use crate::curator::{CuratorActor, CuratorArgs, CuratorMessage};
use crate::http::events::HotRead;
use crate::http::{TRACEPARENT, X_REQUEST_ID};
use crate::keeper::{Keeper, KeeperMessage};
use crate::metrics::Metrics;
use crate::recommend::serving::{self as recommend, EventCache, Models, Sources};
use crate::recommend::trainer::{Trainer, TrainerArgs, TrainerMessage, TrainerSettings};
use crate::revocations::Revocations;
use crate::search::SearchIndex;
use crate::search::indexer::{Indexer, IndexerArgs, IndexerMessage};
use crate::store::{SqlStore, is_postgres};

/// A node serving HTTP; dropping it does not stop it, [`Node::shutdown`] does.
pub struct Node {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its dependencies (tests reach the routers through it).
    pub app: App,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
    shards: Vec<ractor::ActorCell>,
    relay: ractor::ActorRef<KeeperMessage>,
    /// Keeps the search index following the outbox.
    indexer: ractor::ActorRef<KeeperMessage>,
    /// Loads new recommendation models, and trains them while holding the lease.
    trainer: ractor::ActorRef<KeeperMessage>,
    /// Feeds the analytics windows from the outbox while holding the lease.
    feeder: ractor::ActorRef<KeeperMessage>,
    /// Curates new and changed events while holding the lease.
    curator: ractor::ActorRef<KeeperMessage>,
    /// The NATS responder, the Kafka consumer of commands and the bridge, and what stops them.
    inbound: Vec<tokio::task::JoinHandle<()>>,
    stop_inbound: tokio::sync::watch::Sender<bool>,
    network: Option<Network>,
}

/// The SQLite file the configuration names (`None` for PostgreSQL).
pub fn sqlite_path(config: &Config) -> Option<std::path::PathBuf> {
    match &config.database_url {
        Some(url) if is_postgres(url.expose()) => None,
        Some(url) => Some(
            url.expose()
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .into(),
        ),
        None => Some(config.data_dir.join("convene.db")),
    }
}

/// Opens the store the configuration names.
pub async fn open_store(config: &Config) -> anyhow::Result<SqlStore> {
    let Some(path) = sqlite_path(config) else {
        let url = config.database_url.as_ref().map(|u| u.expose());
        return SqlStore::postgres(url.unwrap_or_default(), config.database_max_connections)
            .await
            .context("connecting to PostgreSQL");
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    SqlStore::sqlite(&path).await.context("opening SQLite")
}

/// The token signing secret: `jwt_secret`, or the one kept under the data directory (made on
/// first use).
pub fn token_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    match &config.jwt_secret {
        Some(s) if s.expose().len() >= 32 => Ok(s.expose().as_bytes().to_vec()),
        Some(_) => anyhow::bail!("jwt_secret must be at least 32 bytes"),
        None => {
            std::fs::create_dir_all(&config.data_dir)?;
            load_or_create_secret(&config.data_dir)
        }
    }
}

/// The membership of this node: alone, or a member of the cluster its configuration names.
fn membership(config: &Config, http: SocketAddr) -> anyhow::Result<Option<NetworkSettings>> {
    if !config.clustered() {
        return Ok(None);
    }
    if !config
        .database_url
        .as_ref()
        .is_some_and(|u| is_postgres(u.expose()))
    {
        anyhow::bail!(
            "a cluster needs a PostgreSQL database shared by its nodes: set DATABASE_URL to a \
             postgres:// URL (the SQLite default is one node's file)"
        );
    }
    if config.jwt_secret.is_none() {
        anyhow::bail!(
            "a cluster needs jwt_secret (CONVENE_JWT_SECRET) shared by its nodes, so a token \
             one node signs is valid on every node"
        );
    }
    let listen = config.cluster_listen.context(
        "a clustered node needs cluster_listen (--cluster-listen), the node-to-node address",
    )?;
    let cookie = config
        .cookie
        .as_ref()
        .filter(|c| !c.expose().is_empty())
        .context("a clustered node needs the cluster's cookie (--cookie or CONVENE_COOKIE)")?;
    let seeds = config
        .seeds
        .iter()
        .map(|s| s.parse::<Seed>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let advertise_host = match &config.cluster_advertise {
        Some(host) => host.clone(),
        None if !listen.ip().is_unspecified() => listen.ip().to_string(),
        None => std::env::var("HOSTNAME").unwrap_or_else(|_| http.ip().to_string()),
    };
    Ok(Some(NetworkSettings {
        listen,
        advertise_host,
        cookie: cookie.expose().to_owned(),
        seeds,
    }))
}

/// A request's answer and the route template its metrics count under (a type of its own: a
/// bare `&'static str` in an async block's output trips the compiler's `Send` check).
type Answered = Result<(warp::reply::Response, Template), std::convert::Infallible>;

/// A route template.
struct Template(&'static str);

impl Template {
    /// The template `req`'s path matches.
    fn of<B>(req: &hyper::Request<B>) -> Self {
        Self(crate::http::route_template(req.uri().path()))
    }
}

/// Serves HTTP on `listener` until `stop` fires, then lets requests in flight finish. WebSocket
/// upgrades at `/ws` are taken here, before the routes, so the socket is configured by us;
/// everything else goes to the warp routes.
async fn serve(listener: tokio::net::TcpListener, app: App, stop: oneshot::Receiver<()>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let routes = warp::service(crate::http::routes(app.clone()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        // Small frames and replies go out at once instead of waiting for Nagle's algorithm.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let (app, routes) = (app.clone(), routes.clone());
        let service = hyper::service::service_fn(
            move |req: hyper::Request<hyper::body::Incoming>| {
                let (app, mut routes) = (app.clone(), routes.clone());
                // Every request has an id: the caller's `X-Request-Id` when it is a sane one,
                // else a new one. It is echoed in the answer and carried by every log line
                // written while the request is handled.
                let id = crate::http::request_id(req.headers());
                let started = Instant::now();
                let method = req.method().clone();
                // Its trace: the caller's `traceparent` continued, or a new one; carried to the
                // owners of the entities it reaches on other nodes, and echoed.
                let span = tracing::info_span!("request", id = %id.to_str().unwrap_or_default(), trace_id = tracing::field::Empty, method = %req.method(), path = %req.uri().path());
                let trace = convene_cluster::trace::enter(
                    &span,
                    req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()),
                );
                let echoed = warp::http::HeaderValue::from_str(&trace);
                let finishing = app.clone();
                let handled = async move {
                    if app.limiter.is_on() && !crate::limits::exempt(req.uri().path()) {
                        // On the heap: it holds a Redis round trip, and most nodes set no limit.
                        let admitted =
                            Box::pin(crate::limits::admit(&app, req.headers(), peer.ip())).await;
                        if let Err(refused) = admitted {
                            let endpoint = Template::of(&req);
                            return Ok((warp::Reply::into_response(refused), endpoint));
                        }
                    }
                    let answered = if crate::ws::is_upgrade(&req) {
                        let endpoint = Template::of(&req);
                        (crate::ws::upgrade(app, req), endpoint)
                    } else if let Some(read) = crate::http::events::hot_read(&app, &req) {
                        let res = match read {
                            HotRead::Answered(res) => res,
                            // Boxed, as the tree's answers are: this future stays small.
                            HotRead::Ask(id, auth) => {
                                Box::pin(crate::http::events::read_now(app, id, auth)).await
                            }
                        };
                        (res, Template(crate::http::EVENT_ROUTE))
                    } else if let Some(seat) = crate::http::registrations::hot_register(&app, &req)
                    {
                        let body = req.into_body();
                        let res =
                            Box::pin(crate::http::registrations::register_now(app, seat, body))
                                .await;
                        (res, Template(crate::http::REGISTRATIONS_ROUTE))
                    } else {
                        let endpoint = Template::of(&req);
                        let res = tower_service::Service::call(&mut routes, req).await?;
                        (res, endpoint)
                    };
                    Answered::Ok(answered)
                };
                // Combinators rather than another `async` block: hyper moves this future into
                // place for every request, and each async layer would hold `handled` again.
                // The answer is finished inside the request's span, so its log lines carry it.
                let handled = convene_cluster::trace::scope(trace, handled);
                let finished = futures::FutureExt::map(handled, move |answered: Answered| {
                    let (mut res, endpoint) = answered?;
                    crate::http::finish(&finishing, started, &method, endpoint.0, &mut res);
                    res.headers_mut().insert(X_REQUEST_ID, id);
                    if let Ok(value) = echoed {
                        res.headers_mut().insert(TRACEPARENT, value);
                    }
                    Ok::<_, std::convert::Infallible>(res)
                });
                tracing::Instrument::instrument(finished, span)
            },
        );
        let connection = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

impl Node {
    /// Starts a node with `config`, listening on its `listen` address (port 0 picks one).
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let store = open_store(&config).await?;
        let secret = token_secret(&config)?;
        let auth = Auth::new(
            &secret,
            config.token_ttl_secs,
            config.password_hash_memory_kib,
            config.password_hash_iterations,
        )?;
        let dummy_hash = auth.hash_password("a password nobody has")?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let network = membership(&config, addr)?;
        let cluster = match &network {
            Some(n) => Cluster::clustered(MembershipSettings {
                node_name: config.node_name.clone(),
                address: Some(format!("{}:{}", n.advertise_host, n.listen.port())),
                http: Some(addr.to_string()),
                heartbeat: Duration::from_millis(config.heartbeat_ms.max(10)),
                down_after: Duration::from_millis(config.down_after_ms.max(100)),
            }),
            None => Cluster::single(config.node_name.clone()),
        };
        // Every kind is registered here, once: its factory and its policy.
        let settings = KindSettings {
            passivate_after: Duration::from_secs(config.passivate_after_secs),
            max_restarts: 5,
            restart_window: Duration::from_secs(30),
            timeout: Duration::from_millis(config.request_timeout_ms),
        };
        let store_dyn: Arc<dyn convene_actors::Store> = Arc::new(store.clone());
        let users = Router::start(
            cluster.clone(),
            UserFactory::new(store_dyn.clone()),
            settings,
        )
        .await?;
        let events = Router::start(
            cluster.clone(),
            EventFactory::new(store_dyn.clone()),
            settings,
        )
        .await?;
        let metrics = Metrics::new();
        let redis = match &config.redis_url {
            Some(url) => Some(Arc::new(crate::redis_link::RedisLink::new(
                url.expose(),
                cluster.metrics(),
            )?)),
            None => None,
        };
        let caches = Arc::new(crate::cache::Caches::new(&config, &metrics, redis.clone()));
        let windows = Router::start(
            cluster.clone(),
            AnalyticsFactory::new(
                Arc::new(WindowStore {
                    store: store.clone(),
                    metrics: metrics.clone(),
                }),
                Thresholds {
                    z: config.anomaly_z,
                    min_delta: config.anomaly_min_delta,
                },
            ),
            settings,
        )
        .await?;
        let tracker = Tracker::start(
            store.clone(),
            windows.clone(),
            metrics.clone(),
            caches.clone(),
        );
        let (fanout, _) = Actor::spawn(None, FanOut, ()).await?;
        cluster.serve(fanout::TOPIC, Arc::new(FanOutService(fanout.clone())));
        // A joiner's first frames must fit its outbound queue: the reply, the presence, and up
        // to a room's whole history when it resumes, with some room for live traffic.
        let queue = config.ws_outbound_queue;
        let presence = PresenceSettings {
            frames: queue
                .saturating_sub(convene_actors::room::HISTORY + 24)
                .max(queue / 4)
                .max(1),
            limit: config.room_presence_limit,
        };
        let rooms_factory = RoomFactory::new(store_dyn, events.clone(), fanout.clone(), presence);
        let rooms = Router::start(cluster.clone(), rooms_factory, settings).await?;
        // When the owners change, the rooms this node has sockets in are woken on their
        // (possibly new) owners, which take their members back and resend the presence.
        let (poke_fanout, poke_rooms) = (fanout.clone(), rooms.clone());
        cluster.on_change(move || {
            let (fanout, rooms) = (poke_fanout.clone(), poke_rooms.clone());
            tokio::spawn(async move {
                if let Ok(names) = ractor::call_t!(fanout, FanOutMessage::Rooms, 2000) {
                    for room in names {
                        let _ = rooms.tell(room::key(&room), RoomCommand::Touch);
                    }
                }
            });
        });
        let revocations = Arc::new(Revocations::default());
        revocations
            .load(&store)
            .await
            .context("loading the revoked tokens")?;
        revocations.start(&cluster, store.clone());
        metrics.register(cluster.metrics().collectors());
        let buses = Buses::connect(&config)
            .await
            .context("configuring the buses")?;
        let (relay, _) = Actor::spawn(
            None,
            Keeper::<Relay>::default(),
            RelayArgs {
                store: store.clone(),
                buses: buses.clone(),
                metrics: metrics.clone(),
                settings: RelaySettings {
                    batch: config.outbox_batch.max(1),
                    lease: Duration::from_millis(config.relay_lease_ms.max(100)),
                    retention: Duration::from_secs(config.outbox_retention_secs),
                    holder: format!("{}/{}", config.node_name, uuid::Uuid::new_v4().simple()),
                },
            },
        )
        .await?;
        let events_read = EventCache::default();
        let index_dir = config.data_dir.join("index");
        let search =
            Arc::new(tokio::task::spawn_blocking(move || SearchIndex::open(&index_dir)).await??);
        let (indexer, _) = Actor::spawn(
            None,
            Keeper::<Indexer>::default(),
            IndexerArgs {
                store: store.clone(),
                index: search.clone(),
                events: events_read.clone(),
                caches: caches.clone(),
            },
        )
        .await?;
        let models = Arc::new(Models::default());
        let (trainer, _) = Actor::spawn(
            None,
            Keeper::<Trainer>::default(),
            TrainerArgs {
                store: store.clone(),
                models: models.clone(),
                metrics: metrics.clone(),
                settings: TrainerSettings {
                    train: config.recommend_settings(),
                    every: Duration::from_secs(config.recommend_retrain_secs.max(1)),
                    after: config.recommend_retrain_after.max(1),
                    gap: Duration::from_secs(config.recommend_retrain_gap_secs),
                    keep: config.recommend_models_kept.max(1),
                    precomputed_users: config.recommend_precomputed_users,
                    lease: Duration::from_millis(config.relay_lease_ms.max(100)),
                    holder: format!("{}/{}", config.node_name, uuid::Uuid::new_v4().simple()),
                },
            },
        )
        .await?;
        let (curator, _) = Actor::spawn(
            None,
            Keeper::<CuratorActor>::default(),
            CuratorArgs {
                store: store.clone(),
                events: events.clone(),
                lease: Duration::from_millis(config.relay_lease_ms.max(100)),
                holder: format!("{}/{}", config.node_name, uuid::Uuid::new_v4().simple()),
            },
        )
        .await?;
        let days = |d: u64| Duration::from_secs(d.saturating_mul(86_400));
        let (feeder, _) = Actor::spawn(
            None,
            Keeper::<Feeder>::default(),
            FeederArgs {
                store: store.clone(),
                windows: windows.clone(),
                lease: Duration::from_millis(config.relay_lease_ms.max(100)),
                holder: format!("{}/{}", config.node_name, uuid::Uuid::new_v4().simple()),
                raw_retention: days(config.analytics_retention_days.max(1)),
                summary_retention: days(config.analytics_summary_retention_days.max(1)),
            },
        )
        .await?;
        let recommender = recommend::start(
            Sources {
                store: store.clone(),
                models: models.clone(),
                metrics: metrics.clone(),
                windows: windows.clone(),
                events: events_read,
            },
            config.recommend_workers,
            Duration::from_millis(config.request_timeout_ms),
        )
        .await?;
        let network = match network {
            Some(settings) => Some(Network::start(cluster.clone(), settings).await?),
            None => None,
        };
        let shards = vec![
            users.shard(),
            events.shard(),
            rooms.shard(),
            windows.shard(),
            fanout.get_cell(),
        ];
        let limiter = crate::limits::Limiter::new(&config, &metrics, redis.clone())?;
        limiter.start_pruning();
        let app = App::new(Inner {
            store,
            auth,
            revocations,
            users,
            events,
            rooms,
            windows,
            tracker,
            fanout: fanout.clone(),
            buses,
            search,
            models,
            recommender,
            cluster,
            draining: AtomicBool::new(false),
            metrics,
            admin: crate::admin::Admin::default(),
            limiter,
            redis,
            caches,
            config: config.clone(),
            started: Instant::now(),
            dummy_hash,
        });
        app.cluster.serve(
            crate::admin::TOPIC,
            Arc::new(crate::admin::Service(app.clone())),
        );
        let (stop_inbound, inbound_stopped) = tokio::sync::watch::channel(false);
        let mut inbound = vec![crate::admin::watch_pins(
            app.clone(),
            inbound_stopped.clone(),
        )];
        inbound.extend(crate::leaderboard::start(
            app.clone(),
            inbound_stopped.clone(),
        ));
        inbound.extend(
            app.store
                .watch(app.cluster.metrics(), inbound_stopped.clone()),
        );
        if let Some(nats) = &app.buses.nats {
            let prefix = config.bus_prefix.clone();
            inbound.push(commands::serve_nats(
                app.clone(),
                nats.client().clone(),
                prefix,
                inbound_stopped.clone(),
            ));
        }
        if let Some(kafka) = &app.buses.kafka {
            let group = format!("{}{}", config.bus_prefix, config.kafka_group);
            inbound.push(consumer::serve_kafka(
                app.clone(),
                kafka.clone(),
                group.clone(),
                inbound_stopped.clone(),
            ));
            inbound.push(interactions::serve_interactions(
                app.clone(),
                kafka.clone(),
                format!("{group}-interactions"),
                inbound_stopped.clone(),
            ));
        }
        if !config.bridge.is_empty() {
            let (Some(nats), Some(kafka)) = (&app.buses.nats, &app.buses.kafka) else {
                anyhow::bail!("the bridge needs both nats_url and kafka_brokers");
            };
            inbound.extend(bridge::start(
                &config.bridge,
                nats.client().clone(),
                kafka.clone(),
                format!("{}{}-bridge", config.bus_prefix, config.kafka_group),
                app.metrics.clone(),
                inbound_stopped.clone(),
            )?);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, app.clone(), stopped));
        tracing::info!(%addr, backend = app.store.backend(), node = %config.node_name, "node started");
        Ok(Self {
            addr,
            app,
            stop: Some(stop),
            served,
            shards,
            relay,
            indexer,
            trainer,
            curator,
            feeder,
            inbound,
            stop_inbound,
            network,
        })
    }

    /// The outbox relay running on this node (it publishes only while it holds the lease).
    pub fn relay(&self) -> Option<ractor::ActorRef<RelayMessage>> {
        crate::keeper::child(&self.relay)
    }

    /// The search indexer running on this node.
    pub fn indexer(&self) -> Option<ractor::ActorRef<IndexerMessage>> {
        crate::keeper::child(&self.indexer)
    }

    /// The recommendation trainer running on this node.
    pub fn trainer(&self) -> Option<ractor::ActorRef<TrainerMessage>> {
        crate::keeper::child(&self.trainer)
    }

    /// The curator running on this node.
    pub fn curator(&self) -> Option<ractor::ActorRef<CuratorMessage>> {
        crate::keeper::child(&self.curator)
    }

    /// The analytics feeder running on this node.
    pub fn feeder(&self) -> Option<ractor::ActorRef<FeederMessage>> {
        crate::keeper::child(&self.feeder)
    }

    /// The base URL of the HTTP edge.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Leaves the cluster gracefully, within the configured grace period: `/health` turns
    /// unhealthy at once so load balancers stop sending work, while requests that still arrive
    /// are served; the entities are handed off to the other members; then the node stops
    /// taking requests, lets those in flight finish, and stops its actors.
    pub async fn shutdown(mut self) {
        let deadline = Instant::now() + Duration::from_secs(self.app.config.drain_grace_secs);
        self.app.draining.store(true, Ordering::SeqCst);
        // Commands still on the buses go to the other nodes (or wait for this one's return):
        // the Kafka consumer commits what it carried out and leaves its group.
        let _ = self.stop_inbound.send(true);
        for mut task in self.inbound.drain(..) {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        // The relay and the trainer give their leases up, so another node takes over at once.
        let _ = self
            .relay
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        for singleton in [&self.trainer, &self.curator, &self.feeder] {
            let _ = singleton
                .stop_and_wait(None, Some(Duration::from_secs(5)))
                .await;
        }
        if let Some(network) = self.network.take() {
            let cluster = self.app.cluster.clone();
            let heartbeat = cluster.settings().heartbeat;
            let grace = Duration::from_secs(self.app.config.drain_grace_secs);
            // Time for load balancers to see the health check fail.
            tokio::time::sleep((grace / 10).min(Duration::from_secs(2))).await;
            cluster.start_leaving();
            let handoff_by = Instant::now() + grace / 2;
            while !cluster.handed_off().await && Instant::now() < handoff_by {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            cluster.announce_leaving();
            // Two heartbeats: every member hears that this node left, and routes its keys
            // to their new owners; forwards this node still receives meanwhile find them.
            tokio::time::sleep(heartbeat * 2).await;
            self.stop_serving(deadline).await;
            network.stop().await;
        } else {
            self.stop_serving(deadline).await;
        }
        for shard in &self.shards {
            let _ = shard.drain_and_wait(Some(Duration::from_secs(5))).await;
        }
        self.app.recommender.stop().await;
        let _ = self
            .indexer
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        let search = self.app.search.clone();
        match tokio::task::spawn_blocking(move || search.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "closing the search index failed"),
            Err(e) => tracing::warn!(error = %e, "closing the search index failed"),
        }
    }

    async fn stop_serving(&mut self, deadline: Instant) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, &mut self.served).await.is_err() {
            tracing::warn!("requests still in flight at the end of the grace period");
            self.served.abort();
        }
    }
}

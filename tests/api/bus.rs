//! The outbox relay against real brokers: envelopes on NATS JetStream and Kafka that match their
//! schemas, the in-process feed of the embedded default, a NATS server killed and restarted while
//! events are created (nothing lost, nothing doubled, each entity in order, health degraded
//! meanwhile), and the lease that lets one node of a cluster relay.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::brokers::{OwnKafka, OwnNats};
use crate::helpers::{
    Backend, Settings, TestApp, eventually, service_url, spawn_app_with, unavailable,
};

/// A prefix and a stream name no other test run uses.
pub(crate) fn names() -> (String, String) {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    (format!("t{tag}."), format!("T{tag}"))
}

fn bus_env(prefix: &str, stream: &str, nats: Option<&str>, kafka: Option<&str>) -> Settings {
    let mut env = vec![
        ("CONVENE_BUS_PREFIX".to_owned(), prefix.to_owned()),
        ("CONVENE_NATS_STREAM".to_owned(), stream.to_owned()),
        ("CONVENE_RELAY_LEASE_MS".to_owned(), "500".to_owned()),
    ];
    if let Some(url) = nats {
        env.push(("CONVENE_NATS_URL".to_owned(), url.to_owned()));
    }
    if let Some(brokers) = kafka {
        env.push(("CONVENE_KAFKA_BROKERS".to_owned(), brokers.to_owned()));
    }
    Settings {
        env,
        ..Settings::default()
    }
}

pub(crate) async fn nats_client(url: &str) -> Option<async_nats::Client> {
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url);
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            unavailable("NATS", e);
            None
        }
        Err(_) => {
            unavailable("NATS", "connect timed out");
            None
        }
    }
}

pub(crate) async fn kafka_reachable(brokers: &str) -> bool {
    let brokers = brokers.to_owned();
    let reached = tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    match reached {
        Ok(_) => true,
        Err(e) => {
            unavailable("Kafka", e);
            false
        }
    }
}

/// The outbox as the database holds it: (message id, entity key, type), in commit order.
pub(crate) async fn outbox(database: &str) -> Vec<(uuid::Uuid, String, String)> {
    let q = "SELECT message_id, entity_key, topic FROM outbox ORDER BY xid, id";
    if database.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(database).await.unwrap();
        sqlx::query_as(q).fetch_all(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::SqliteConnection::connect(database).await.unwrap();
        sqlx::query_as(q).fetch_all(&mut c).await.unwrap()
    }
}

async fn pending(database: &str) -> i64 {
    let q = "SELECT COUNT(*) FROM outbox o JOIN outbox_cursors c ON c.name = 'relay' \
             WHERE (o.xid, o.id) > (c.xid, c.id)";
    let (n,): (i64,) = if database.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(database).await.unwrap();
        sqlx::query_as(q).fetch_one(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::SqliteConnection::connect(database).await.unwrap();
        sqlx::query_as(q).fetch_one(&mut c).await.unwrap()
    };
    n
}

/// A message as a subscriber saw it: its id header, its entity, its envelope.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    id: String,
    entity: String,
    envelope: Value,
    traceparent: String,
}

/// Every message in the stream, in stream order.
pub(crate) async fn read_stream(client: &async_nats::Client, stream: &str) -> Vec<Seen> {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut seen = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let header = |name: &str| {
            m.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        seen.push(Seen {
            id: header("Nats-Msg-Id"),
            entity: header("Convene-Entity"),
            envelope: serde_json::from_slice(&m.payload).unwrap(),
            traceparent: header("traceparent"),
        });
    }
    seen
}

/// Checks the subscriber's view against the outbox: every row exactly once after dropping
/// repeats of an id, and each entity's rows in commit order.
pub(crate) fn check_exactly_once_in_order(rows: &[(uuid::Uuid, String, String)], seen: &[Seen]) {
    let mut first = HashSet::new();
    let deduped: Vec<&Seen> = seen.iter().filter(|s| first.insert(s.id.clone())).collect();
    let expected: HashSet<String> = rows.iter().map(|r| r.0.to_string()).collect();
    let got: HashSet<String> = deduped.iter().map(|s| s.id.clone()).collect();
    assert_eq!(expected.len(), rows.len(), "the outbox holds each id once");
    let missing: Vec<_> = expected.difference(&got).collect();
    assert!(missing.is_empty(), "{} domain events lost", missing.len());
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(extra.is_empty(), "{} unknown messages", extra.len());
    let mut per_entity: HashMap<&str, Vec<String>> = HashMap::new();
    for (id, entity, _) in rows {
        per_entity.entry(entity).or_default().push(id.to_string());
    }
    let mut arrived: HashMap<&str, Vec<String>> = HashMap::new();
    for s in &deduped {
        arrived.entry(&s.entity).or_default().push(s.id.clone());
    }
    for (entity, ids) in &per_entity {
        assert_eq!(
            arrived.get(entity),
            Some(ids),
            "{entity} arrived out of commit order"
        );
    }
}

/// Every record of the three domain topics until each outbox row was seen at least once; each
/// as `Seen` with the entity "key topic" (Kafka orders within a topic, so an entity's events
/// are in order one family at a time).
async fn read_kafka(
    brokers: &str,
    prefix: &str,
    rows: &[(uuid::Uuid, String, String)],
) -> Vec<Seen> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{prefix}reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let topics: Vec<String> = ["events", "registrations", "users"]
        .iter()
        .map(|t| format!("{prefix}{t}"))
        .collect();
    consumer
        .subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap();
    let entities: HashMap<String, &str> = rows
        .iter()
        .map(|r| (r.0.to_string(), r.1.as_str()))
        .collect();
    let mut seen = Vec::new();
    let mut distinct = HashSet::new();
    let mut records = consumer.stream();
    while distinct.len() < rows.len() {
        let m = tokio::time::timeout(Duration::from_secs(60), records.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {} domain events on Kafka",
                    distinct.len(),
                    rows.len()
                )
            })
            .unwrap()
            .unwrap();
        let envelope: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let kind = envelope["type"].as_str().unwrap().to_owned();
        assert_eq!(
            m.topic(),
            format!("{prefix}{}", kind.split('.').next().unwrap())
        );
        let id = envelope["id"].as_str().unwrap().to_owned();
        let entity = entities.get(&id).expect("a known message");
        let key = std::str::from_utf8(m.key().unwrap()).unwrap();
        assert_eq!(entity.rsplit('/').next().unwrap(), key, "key = entity id");
        distinct.insert(id.clone());
        let traceparent = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
            .and_then(|h| std::str::from_utf8(h.value?).ok())
            .unwrap_or_default()
            .to_owned();
        seen.push(Seen {
            id,
            entity: format!("{entity} {}", m.topic()),
            envelope,
            traceparent,
        });
    }
    seen
}

/// The outbox rows with the entity "key topic", as `read_kafka` names them.
fn per_topic(
    prefix: &str,
    rows: &[(uuid::Uuid, String, String)],
) -> Vec<(uuid::Uuid, String, String)> {
    rows.iter()
        .map(|(id, entity, kind)| {
            let topic = format!("{prefix}{}", kind.split('.').next().unwrap());
            (*id, format!("{entity} {topic}"), kind.clone())
        })
        .collect()
}

/// Validates an envelope against its schema in `schema/events/`.
pub(crate) fn check_schema(envelope: &Value) {
    let kind = envelope["type"].as_str().expect("an envelope has a type");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schema/events/{kind}.json"));
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("no schema for {kind}")),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(envelope)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{kind}: {errors:?} in {envelope}");
}

/// A user, an event and its whole life: registrations, a waitlist, a promotion, an update, a
/// deletion, a profile change.
/// The trace ids the first registration and the change of the event are sent in.
const REGISTERED_IN: &str = "5bf92f3577b34da6a3ce929d0e0e4736";
const CHANGED_IN: &str = "6bf92f3577b34da6a3ce929d0e0e4736";

async fn lifecycle(app: &TestApp) {
    let owner = app.sign_up("owner@example.com").await;
    let guests = app.sign_up_many("guest", 2).await;
    let event = app.create_event(&owner, 1).await;
    for (i, g) in guests.iter().enumerate() {
        let trace = format!("00-{REGISTERED_IN}-00f067aa0ba902b7-01");
        let headers: &[(&str, &str)] = if i == 0 {
            &[("traceparent", &trace)]
        } else {
            &[]
        };
        let a = app
            .send_with(
                "POST",
                &format!("/api/v1/events/{event}/registrations"),
                Some(&g.token),
                Some(json!({"waitlist": true})),
                headers,
            )
            .await;
        assert!(a.status == 201 || a.status == 202, "{}", a.body);
    }
    let a = app
        .send(
            "DELETE",
            &format!("/api/v1/events/{event}/registrations/me"),
            Some(&guests[0].token),
            None,
        )
        .await;
    assert!(a.status < 300, "{}", a.body);
    let a = app
        .send_with(
            "PATCH",
            &format!("/api/v1/events/{event}"),
            Some(&owner.token),
            Some(json!({"title": "Rust in Lyon, again"})),
            &[(
                "traceparent",
                &format!("00-{CHANGED_IN}-00f067aa0ba902b7-01"),
            )],
        )
        .await;
    assert!(a.status < 300, "{}", a.body);
    let a = app
        .send(
            "PATCH",
            "/api/v1/users/me",
            Some(&owner.token),
            Some(json!({"name": "Owner"})),
        )
        .await;
    assert!(a.status < 300, "{}", a.body);
    let a = app
        .send(
            "DELETE",
            &format!("/api/v1/events/{event}"),
            Some(&owner.token),
            None,
        )
        .await;
    assert!(a.status < 300, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_publishes_in_process_and_marks_the_outbox() {
    let app = spawn_app_with(Backend::Sqlite, Settings::default())
        .await
        .unwrap();
    let mut feed = app.node.app.buses.subscribe();
    lifecycle(&app).await;
    let rows = outbox(&app.database).await;
    let mut got = Vec::new();
    while got.len() < rows.len() {
        let envelope = tokio::time::timeout(Duration::from_secs(10), feed.recv())
            .await
            .expect("every domain event reaches the in-process feed")
            .unwrap();
        got.push(envelope.id);
    }
    assert_eq!(got, rows.iter().map(|r| r.0).collect::<Vec<_>>());
    let kinds: HashSet<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    for kind in [
        "users.created",
        "users.updated",
        "events.created",
        "events.updated",
        "events.deleted",
        "registrations.created",
        "registrations.waitlisted",
        "registrations.cancelled",
        "registrations.promoted",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            pending(&app.database).await == 0
        })
        .await,
        "published rows are marked"
    );
    let health = app.send("GET", "/health", None, None).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "healthy", "{}", health.body);
    assert!(health.body["checks"].get("nats").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_fails_is_started_again_and_relays_the_rest() {
    let app = spawn_app_with(Backend::Sqlite, Settings::default())
        .await
        .unwrap();
    let first = app.node.relay().expect("a relay runs");
    first
        .cast(convene::bus::relay::RelayMessage::InjectFault)
        .unwrap();
    let restarted = eventually(Duration::from_secs(5), || async {
        app.node
            .relay()
            .is_some_and(|r| r.get_id() != first.get_id())
    })
    .await;
    assert!(restarted, "the keeper starts a new relay");
    lifecycle(&app).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            pending(&app.database).await == 0
        })
        .await,
        "the new relay takes the lease and publishes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rows_are_pruned_after_their_retention() {
    let settings = Settings {
        env: vec![
            ("CONVENE_OUTBOX_RETENTION_SECS".into(), "1".into()),
            ("CONVENE_RELAY_LEASE_MS".into(), "200".into()),
        ],
        ..Settings::default()
    };
    let app = spawn_app_with(Backend::Sqlite, settings).await.unwrap();
    lifecycle(&app).await;
    assert!(!outbox(&app.database).await.is_empty());
    let pruned = eventually(Duration::from_secs(10), || async {
        outbox(&app.database).await.is_empty()
    })
    .await;
    assert!(pruned, "published rows outlive their retention");
}

/// On PostgreSQL ids come from a sequence, so a row can commit after rows with higher ids. A
/// transaction holds an outbox row open while writers commit many more; when it commits, its
/// row is relayed before theirs and nothing is skipped or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_late_with_a_lower_id_is_relayed_in_commit_order() {
    let Some(app) = spawn_app_with(Backend::Postgres, Settings::default()).await else {
        return;
    };
    let owner = app.sign_up("owner@example.com").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            pending(&app.database).await == 0
        })
        .await
    );
    let before = outbox(&app.database).await.len();
    let app = std::sync::Arc::new(app);
    let mut feed = app.node.app.buses.subscribe();
    let mut db = sqlx::PgConnection::connect(&app.database).await.unwrap();
    let mut open = db.begin().await.unwrap();
    let late = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO outbox (message_id, topic, entity_key, payload, occurred_at) \
         VALUES ($1, 'events.updated', 'event/0', '{}', NOW())",
    )
    .bind(late)
    .execute(&mut *open)
    .await
    .unwrap();
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (app, owner) = (app.clone(), owner.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    app.create_event(&owner, 5).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let early = tokio::time::timeout(Duration::from_millis(500), feed.recv()).await;
    assert!(
        early.is_err(),
        "rows written after an open transaction wait for it: {early:?}"
    );
    open.commit().await.unwrap();
    let rows = outbox(&app.database).await.split_off(before);
    assert_eq!(rows.len(), 41);
    let mut got = Vec::new();
    while got.len() < rows.len() {
        let envelope = tokio::time::timeout(Duration::from_secs(10), feed.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {} rows relayed", got.len(), rows.len()))
            .unwrap();
        got.push(envelope.id);
    }
    assert_eq!(got[0], late, "the open transaction's row goes first");
    assert_eq!(got, rows.iter().map(|r| r.0).collect::<Vec<_>>());
    let more = tokio::time::timeout(Duration::from_millis(300), feed.recv()).await;
    assert!(more.is_err(), "nothing is relayed twice: {more:?}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            pending(&app.database).await == 0
        })
        .await,
        "the cursor moves past every row"
    );
}

async fn relays_to_both(backend: Backend) {
    let nats_url = service_url("NATS_URL", "nats://127.0.0.1:4222");
    let brokers = service_url("KAFKA_BROKERS", "127.0.0.1:9092");
    let Some(client) = nats_client(&nats_url).await else {
        return;
    };
    if !kafka_reachable(&brokers).await {
        return;
    }
    let (prefix, stream) = names();
    let settings = bus_env(&prefix, &stream, Some(&nats_url), Some(&brokers));
    let Some(app) = spawn_app_with(backend, settings).await else {
        return;
    };
    lifecycle(&app).await;
    let rows = outbox(&app.database).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            pending(&app.database).await == 0
        })
        .await,
        "the outbox drains to both buses"
    );

    let seen = read_stream(&client, &stream).await;
    check_exactly_once_in_order(&rows, &seen);
    let kinds: HashMap<String, &str> = rows
        .iter()
        .map(|r| (r.0.to_string(), r.2.as_str()))
        .collect();
    for s in &seen {
        check_schema(&s.envelope);
        assert_eq!(s.envelope["id"], s.id);
        assert_eq!(s.envelope["type"], kinds[&s.id]);
        assert_eq!(s.envelope["version"], 1);
        assert!(
            !s.envelope.to_string().contains("password"),
            "{}",
            s.envelope
        );
    }

    let from_kafka = read_kafka(&brokers, &prefix, &rows).await;
    check_exactly_once_in_order(&per_topic(&prefix, &rows), &from_kafka);
    // Each domain event carries the trace of the request that made it happen.
    for (bus, seen) in [("nats", &seen), ("kafka", &from_kafka)] {
        for (kind, trace) in [
            ("registrations.created", REGISTERED_IN),
            ("events.updated", CHANGED_IN),
        ] {
            assert!(
                seen.iter().any(|s| s.envelope["type"] == kind
                    && s.traceparent.starts_with(&format!("00-{trace}-"))),
                "{bus}: {kind} in trace {trace}: {:?}",
                seen.iter()
                    .map(|s| (&s.envelope["type"], &s.traceparent))
                    .collect::<Vec<_>>()
            );
        }
        assert!(
            seen.iter().all(|s| s.traceparent.len() == 55),
            "{bus}: every domain event made by a request carries its trace: {:?}",
            seen.iter()
                .filter(|s| s.traceparent.len() != 55)
                .map(|s| &s.envelope["type"])
                .collect::<Vec<_>>()
        );
    }

    let metrics = app.send("GET", "/metrics", None, None).await;
    let text = metrics.body.as_str().unwrap();
    for bus in ["nats", "kafka"] {
        assert!(
            text.contains(&format!(
                "convene_bus_published_total{{bus=\"{bus}\",topic=\"events.created\"}} 1"
            )),
            "{text}"
        );
        assert!(text.contains(&format!("convene_bus_up{{bus=\"{bus}\"}} 1")));
    }
    let health = app.send("GET", "/health", None, None).await;
    assert_eq!(health.body["status"], "healthy", "{}", health.body);
    assert_eq!(health.body["checks"]["nats"]["status"], "healthy");
    assert_eq!(health.body["checks"]["kafka"]["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_reach_nats_and_kafka_once_in_order_sqlite() {
    relays_to_both(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_reach_nats_and_kafka_once_in_order_postgres() {
    relays_to_both(Backend::Postgres).await;
}

/// A broker of the test's own, killed and started again in the middle of the load.
enum Outage {
    Nats(OwnNats),
    Kafka(OwnKafka),
}

impl Outage {
    fn bus(&self) -> &'static str {
        match self {
            Self::Nats(_) => "nats",
            Self::Kafka(_) => "kafka",
        }
    }

    async fn start(&mut self) {
        match self {
            Self::Nats(b) => b.start().await,
            Self::Kafka(b) => b.start().await,
        }
    }

    async fn kill(&mut self) {
        match self {
            Self::Nats(b) => b.kill().await,
            Self::Kafka(b) => b.kill().await,
        }
    }
}

async fn killed_midway(backend: Backend, mut broker: Outage) {
    let (prefix, stream) = names();
    let settings = match &broker {
        Outage::Nats(b) => bus_env(&prefix, &stream, Some(&b.url()), None),
        Outage::Kafka(b) => bus_env(&prefix, &stream, None, Some(&b.brokers())),
    };
    let bus = broker.bus();
    // The node starts before its bus: it must come up anyway and catch up later.
    let Some(app) = spawn_app_with(backend, settings).await else {
        return;
    };
    let degraded = eventually(Duration::from_secs(10), || async {
        let h = app.send("GET", "/health", None, None).await;
        h.status == 200
            && h.body["status"] == "degraded"
            && h.body["checks"][bus]["status"] == "unhealthy"
    })
    .await;
    assert!(
        degraded,
        "a bus down is not critical, and health says which"
    );
    broker.start().await;

    let owners = app.sign_up_many("owner", 10).await;
    let created = std::sync::atomic::AtomicUsize::new(0);
    let work = futures::stream::iter(0..1000)
        .map(|i| {
            let (app, owner, created) = (&app, &owners[i % owners.len()], &created);
            async move {
                let event = app.create_event(owner, 10).await;
                let a = app
                    .send(
                        "PATCH",
                        &format!("/api/v1/events/{event}"),
                        Some(&owner.token),
                        Some(json!({"capacity": 20})),
                    )
                    .await;
                assert!(a.status < 300, "{}", a.body);
                created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();
    let outage = async {
        while created.load(std::sync::atomic::Ordering::SeqCst) < 300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        broker.kill().await;
        while created.load(std::sync::atomic::Ordering::SeqCst) < 600 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            pending(&app.database).await > 0,
            "rows wait in the outbox while {bus} is down"
        );
        let degraded = eventually(Duration::from_secs(20), || async {
            let h = app.send("GET", "/health", None, None).await;
            h.status == 200 && h.body["status"] == "degraded"
        })
        .await;
        assert!(degraded, "health tells that {bus} is down");
        broker.start().await;
    };
    tokio::join!(work, outage);

    assert!(
        eventually(Duration::from_secs(90), || async {
            pending(&app.database).await == 0
        })
        .await,
        "the outbox drains once {bus} is back"
    );
    let rows = outbox(&app.database).await;
    assert!(rows.len() >= 2010, "{} rows", rows.len());
    match &broker {
        Outage::Nats(b) => {
            let client = nats_client(&b.url()).await.unwrap();
            let seen = read_stream(&client, &stream).await;
            check_exactly_once_in_order(&rows, &seen);
        }
        Outage::Kafka(b) => {
            let seen = read_kafka(&b.brokers(), &prefix, &rows).await;
            check_exactly_once_in_order(&per_topic(&prefix, &rows), &seen);
        }
    }
    let healthy = eventually(Duration::from_secs(20), || async {
        app.send("GET", "/health", None, None).await.body["status"] == "healthy"
    })
    .await;
    assert!(healthy, "health recovers with {bus}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_while_events_are_created_loses_and_doubles_nothing_sqlite() {
    if let Some(nats) = OwnNats::new() {
        killed_midway(Backend::Sqlite, Outage::Nats(nats)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_while_events_are_created_loses_and_doubles_nothing_postgres() {
    if let Some(nats) = OwnNats::new() {
        killed_midway(Backend::Postgres, Outage::Nats(nats)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_killed_while_events_are_created_loses_and_doubles_nothing() {
    if let Some(kafka) = OwnKafka::new().await {
        killed_midway(Backend::Postgres, Outage::Kafka(kafka)).await;
    }
}

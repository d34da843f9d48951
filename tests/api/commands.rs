//! Commands from the buses against real brokers: NATS request-reply racing HTTP for the seats of
//! one event (capacity holds, the replies are HTTP's), refused without a service token; and the
//! Kafka consumer group, restarted in the middle, with poison records sent to the dead letters.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use crate::bus::{names, nats_client};
use crate::helpers::{
    Backend, Settings, TestApp, eventually, registered_count, service_url, spawn_app_with,
    unavailable,
};

/// A service token minted by the `convene tokens issue` command, with the node's secret.
async fn service_token(app: &TestApp) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_convene"))
        .args(["--data-dir"])
        .arg(&app.dir.0)
        .args([
            "tokens", "issue", "--role", "service", "--ttl", "1h", "--name", "tests",
        ])
        .env_clear()
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Reply {
    status: u16,
    body: Value,
}

async fn request(
    client: &async_nats::Client,
    subject: String,
    token: Option<&str>,
    body: Value,
) -> Reply {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(t) = token {
        headers.insert("Authorization", format!("Bearer {t}").as_str());
    }
    let trace = format!("{:032x}", rand::random::<u128>() | 1);
    headers.insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01").as_str(),
    );
    let m = tokio::time::timeout(
        Duration::from_secs(30),
        client.request_with_headers(subject, headers, body.to_string().into()),
    )
    .await
    .expect("a command is answered")
    .expect("a command is answered, never dropped");
    let status = m
        .headers
        .as_ref()
        .and_then(|h| h.get("Convene-Status"))
        .expect("every reply carries its status")
        .as_str()
        .parse()
        .unwrap();
    let traced = m
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .expect("every reply carries the command's trace")
        .to_string();
    assert!(
        traced.starts_with(&format!("00-{trace}-")),
        "the command's trace is continued: {traced}"
    );
    let body = if m.payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&m.payload).unwrap()
    };
    Reply { status, body }
}

async fn nats_race(backend: Backend) {
    let url = service_url("NATS_URL", "nats://127.0.0.1:4222");
    let Some(client) = nats_client(&url).await else {
        return;
    };
    let (prefix, stream) = names();
    let settings = Settings {
        env: vec![
            ("CONVENE_NATS_URL".into(), url.clone()),
            ("CONVENE_BUS_PREFIX".into(), prefix.clone()),
            ("CONVENE_NATS_STREAM".into(), stream),
        ],
        ..Settings::default()
    };
    let Some(app) = spawn_app_with(backend, settings).await else {
        return;
    };
    let token = service_token(&app).await;
    let owner = app.sign_up("owner@example.com").await;
    let event = app.create_event(&owner, 20).await;
    let subject = |verb: &str| format!("{prefix}cmd.events.{event}.{verb}");

    // Refused without a service token, and with a user's.
    let no_token = request(
        &client,
        subject("register"),
        None,
        json!({"user_id": owner.id}),
    )
    .await;
    assert_eq!(no_token.status, 401, "{}", no_token.body);
    assert_eq!(no_token.body["error"], "unauthorized");
    let user_token = request(
        &client,
        subject("register"),
        Some(&owner.token),
        json!({"user_id": owner.id}),
    )
    .await;
    assert_eq!(user_token.status, 403, "{}", user_token.body);
    // Bad commands get HTTP's errors.
    let unknown_user = request(
        &client,
        subject("register"),
        Some(&token),
        json!({"user_id": 999_999}),
    )
    .await;
    assert_eq!(unknown_user.status, 422, "{}", unknown_user.body);
    let unknown_event = request(
        &client,
        format!("{prefix}cmd.events.999999.register"),
        Some(&token),
        json!({"user_id": owner.id}),
    )
    .await;
    assert_eq!(unknown_event.status, 404, "{}", unknown_event.body);
    let malformed = request(
        &client,
        subject("register"),
        Some(&token),
        json!({"user": 1}),
    )
    .await;
    assert_eq!(malformed.status, 400, "{}", malformed.body);

    // 30 users over NATS and 30 over HTTP for 20 seats, every user's actor awake beforehand.
    let users = app.sign_up_many("racer", 60).await;
    for u in &users {
        assert_eq!(
            app.send("GET", "/api/v1/users/me", Some(&u.token), None)
                .await
                .status,
            200
        );
    }
    let over_nats = users[..30].iter().map(|u| {
        let (client, token, subject) = (&client, &token, subject("register"));
        async move {
            let r = request(
                client,
                subject,
                Some(token),
                json!({"user_id": u.id, "idempotency_key": format!("k{}", u.id)}),
            )
            .await;
            (r.status, r.body)
        }
    });
    let over_http = users[30..].iter().map(|u| {
        let app = &app;
        async move {
            let a = app
                .send(
                    "POST",
                    &format!("/api/v1/events/{event}/registrations"),
                    Some(&u.token),
                    None,
                )
                .await;
            (a.status, a.body)
        }
    });
    let (nats_answers, http_answers) = tokio::join!(
        futures::future::join_all(over_nats),
        futures::future::join_all(over_http)
    );
    let mut tally: HashMap<u16, usize> = HashMap::new();
    for (status, body) in nats_answers.iter().chain(&http_answers) {
        *tally.entry(*status).or_default() += 1;
        match status {
            201 => assert_eq!(body["registration"]["status"], "active", "{body}"),
            409 => assert_eq!(body["error"], "event_full", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(tally.get(&201), Some(&20), "{tally:?}");
    assert_eq!(tally.get(&409), Some(&40), "{tally:?}");
    assert_eq!(app.active_in_db(event).await, (20, 20));

    // A repeat answers as HTTP does: 200 and the same registration (whichever edge won the
    // seat in the race).
    let (winner, first) = users
        .iter()
        .zip(nats_answers.iter().chain(&http_answers))
        .find(|(_, (s, _))| *s == 201)
        .map(|(u, (_, b))| (u, b.clone()))
        .expect("twenty seats were taken");
    let again = request(
        &client,
        subject("register"),
        Some(&token),
        json!({"user_id": winner.id}),
    )
    .await;
    assert_eq!(again.status, 200);
    let http_again = app
        .send(
            "POST",
            &format!("/api/v1/events/{event}/registrations"),
            Some(&winner.token),
            None,
        )
        .await;
    assert_eq!(http_again.status, 200);
    assert_eq!(again.body, http_again.body);
    assert_eq!(again.body["registration"], first["registration"]);

    let cancelled = request(
        &client,
        subject("cancel"),
        Some(&token),
        json!({"user_id": winner.id}),
    )
    .await;
    assert_eq!(cancelled.status, 204, "{}", cancelled.body);
    assert_eq!(app.active_in_db(event).await, (19, 19));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_commands_race_http_for_seats_sqlite() {
    nats_race(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_commands_race_http_for_seats_postgres() {
    nats_race(Backend::Postgres).await;
}

/// A producer for the brokers at `brokers`, or `None` (with the reason printed, or a
/// failure in CI) when they cannot be reached.
pub(crate) async fn kafka_producer(brokers: &str) -> Option<FutureProducer> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    let reachable = {
        let p = producer.clone();
        tokio::task::spawn_blocking(move || {
            rdkafka::producer::Producer::client(&p)
                .fetch_metadata(None, Duration::from_secs(5))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap()
    };
    match reachable {
        Ok(()) => Some(producer),
        Err(e) => {
            unavailable("Kafka", e);
            None
        }
    }
}

/// Waits until the node has created `topic`, rather than racing it.
pub(crate) async fn topic_ready(producer: &FutureProducer, topic: &str) {
    assert!(
        eventually(Duration::from_secs(30), || async {
            let p = producer.clone();
            let topic = topic.to_owned();
            tokio::task::spawn_blocking(move || {
                rdkafka::producer::Producer::client(&p)
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .is_ok_and(|m| {
                        m.topics()
                            .iter()
                            .any(|t| t.error().is_none() && !t.partitions().is_empty())
                    })
            })
            .await
            .unwrap()
        })
        .await,
        "the topic {topic} exists"
    );
}

pub(crate) async fn produce(producer: &FutureProducer, topic: &str, key: &str, value: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

fn command(id: &str, event: i64, user: i64) -> Vec<u8> {
    json!({"id": id, "action": "register", "event_id": event, "user_id": user})
        .to_string()
        .into_bytes()
}

pub(crate) fn metric(text: &str, line: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_commands_resume_after_a_restart_and_poison_goes_to_the_dead_letters() {
    let brokers = service_url("KAFKA_BROKERS", "127.0.0.1:9092");
    let Some(producer) = kafka_producer(&brokers).await else {
        return;
    };
    let (prefix, _) = names();
    let settings = || Settings {
        env: vec![
            ("CONVENE_KAFKA_BROKERS".into(), brokers.clone()),
            ("CONVENE_BUS_PREFIX".into(), prefix.clone()),
        ],
        ..Settings::default()
    };
    let app = spawn_app_with(Backend::Sqlite, settings()).await.unwrap();
    let owner = app.sign_up("owner@example.com").await;
    let event = app.create_event(&owner, 100).await;
    let users = app.sign_up_many("member", 40).await;
    let topic = format!("{prefix}registrations.requests");
    topic_ready(&producer, &topic).await;

    for u in &users[..20] {
        produce(
            &producer,
            &topic,
            &event.to_string(),
            &command(&format!("c{}", u.id), event, u.id),
        )
        .await;
    }
    produce(&producer, &topic, "x", b"{not json").await;
    produce(
        &producer,
        &topic,
        "999999",
        &command("c-unknown", 999_999, users[0].id),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            app.active_in_db(event).await.0 == 20
        })
        .await,
        "the first twenty commands are carried out"
    );
    let text = app.send("GET", "/metrics", None, None).await.body;
    assert!(
        eventually(Duration::from_secs(30), || async {
            let text = app.send("GET", "/metrics", None, None).await.body;
            metric(
                text.as_str().unwrap(),
                "convene_bus_commands_total{bus=\"kafka\",status=\"dead_letter\"}",
            ) == 2
        })
        .await,
        "{text}"
    );

    // The node stops; commands keep coming: twenty new ones and five repeats of old ones.
    let config = app.node.app.config.clone();
    let TestApp {
        node, dir, client, ..
    } = app;
    node.shutdown().await;
    for u in &users[20..] {
        produce(
            &producer,
            &topic,
            &event.to_string(),
            &command(&format!("c{}", u.id), event, u.id),
        )
        .await;
    }
    for u in &users[..5] {
        produce(
            &producer,
            &topic,
            &event.to_string(),
            &command(&format!("c{}", u.id), event, u.id),
        )
        .await;
    }
    let node = convene::node::Node::start(config).await.unwrap();
    let base = node.url();
    let seats = || registered_count(&client, &base, event);
    assert!(
        eventually(Duration::from_secs(60), || async { seats().await == 40 }).await,
        "the restarted consumer carries out the rest"
    );
    let metrics = crate::helpers::metrics_text(&client, &base).await;
    // A repeat answers as the first did (201), with no second effect. Resumed from the
    // committed offset: twenty new commands and five repeats, none of the first twenty again.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let m = crate::helpers::metrics_text(&client, &base).await;
            metric(
                &m,
                "convene_bus_commands_total{bus=\"kafka\",status=\"201\"}",
            ) >= 25
        })
        .await,
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = crate::helpers::metrics_text(&client, &base).await;
    assert_eq!(
        metric(
            &metrics,
            "convene_bus_commands_total{bus=\"kafka\",status=\"201\"}"
        ),
        25,
        "{metrics}"
    );
    let database = dir.0.join("convene.db");
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        database.display()
    ))
    .await
    .unwrap();
    let (created,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE topic = 'registrations.created'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(created, 40, "no command had a second effect");

    // The poison records wait in the dead letters, with the reason.
    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{prefix}dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[&format!("{prefix}registrations.requests.dlq")])
        .unwrap();
    let mut reasons = Vec::new();
    let mut records = dlq.stream();
    while reasons.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(60), records.next())
            .await
            .expect("the dead letters are there")
            .unwrap()
            .unwrap();
        let headers = m.headers().expect("a dead letter has headers");
        let reason = headers
            .iter()
            .find(|h| h.key == "reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("a dead letter says why");
        reasons.push(reason);
    }
    reasons.sort();
    assert!(reasons[0].starts_with("malformed JSON"), "{reasons:?}");
    assert!(reasons[1].contains("no such event"), "{reasons:?}");
    node.shutdown().await;
}

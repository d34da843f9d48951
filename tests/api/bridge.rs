//! The NATS↔Kafka bridge against the real brokers: NATS to Kafka and Kafka to NATS with headers
//! and keys carried across, a pair of routes that would loop forever without the origin
//! header, and a NATS server restarted under the bridge.

use std::time::Duration;

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::brokers::{OwnKafka, OwnNats};
use crate::bus::{kafka_reachable, names, nats_client};
use crate::helpers::{Backend, Settings, TestApp, eventually, service_url, spawn_app_with};

fn header(m: &impl Message, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The first `n` records of `topic` whose payload is not `skip`: (key, payload, "trace|origin");
/// fails if one more arrives within a second.
async fn read_topic(
    brokers: &str,
    group: &str,
    topic: &str,
    n: usize,
    skip: &str,
) -> Vec<(String, String, String)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut records = consumer.stream();
    let mut got = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(60), records.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} records on {topic}", got.len()))
            .unwrap()
            .unwrap();
        if m.payload() == Some(skip.as_bytes()) {
            continue;
        }
        got.push((
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            format!(
                "{}|{}",
                header(&m, "Trace-Id").unwrap_or_default(),
                header(&m, "Convene-Bridge-Origin").unwrap_or_default()
            ),
        ));
    }
    if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(1), records.next()).await {
        assert_eq!(
            m.payload(),
            Some(skip.as_bytes()),
            "more than {n} records on {topic}"
        );
    }
    got
}

/// A node on SQLite with both buses and the bridge routes `routes` (TOML, `{p}` standing for a
/// prefix no other run uses); returns it with that prefix.
async fn bridge_node(nats_url: &str, brokers: &str, routes: &str) -> (TestApp, String) {
    let (p, stream) = names();
    let settings = Settings {
        env: vec![
            ("CONVENE_NATS_URL".into(), nats_url.to_owned()),
            ("CONVENE_KAFKA_BROKERS".into(), brokers.to_owned()),
            ("CONVENE_BUS_PREFIX".into(), p.clone()),
            ("CONVENE_NATS_STREAM".into(), stream),
        ],
        file: Some(routes.replace("{p}", &p)),
        ..Settings::default()
    };
    (spawn_app_with(Backend::Sqlite, settings).await.unwrap(), p)
}

/// The one NATS route and the one Kafka route of the restart tests.
const TWO_ROUTES: &str = r#"
[[bridge.to_kafka]]
subject = "{p}in.>"
topic = "{p}from-nats"

[[bridge.to_nats]]
topic = "{p}to-nats"
subject = "{p}out"
"#;

/// Messages the bridge forwarded on the routes whose label contains `route`.
async fn forwarded(app: &TestApp, route: &str) -> u64 {
    let text = app.send("GET", "/metrics", None, None).await.body;
    text.as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("convene_bridge_messages_total"))
        .filter(|l| l.contains(route) && l.contains("outcome=\"forwarded\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_carries_both_ways_and_never_loops() {
    let nats_url = service_url("NATS_URL", "nats://127.0.0.1:4222");
    let brokers = service_url("KAFKA_BROKERS", "127.0.0.1:9092");
    let Some(client) = nats_client(&nats_url).await else {
        return;
    };
    if !kafka_reachable(&brokers).await {
        return;
    }
    let (app, p) = bridge_node(
        &nats_url,
        &brokers,
        r#"
[bridge]
max_in_flight = 8

[[bridge.to_kafka]]
subject = "{p}in.>"
topic = "{p}from-nats"

[[bridge.to_kafka]]
subject = "{p}loop.>"
topic = "{p}loop"

[[bridge.to_nats]]
topic = "{p}to-nats"
subject = "{p}out"

[[bridge.to_nats]]
topic = "{p}loop"
subject = "{p}loop.back"
"#,
    )
    .await;
    let metrics = || async {
        app.send("GET", "/metrics", None, None)
            .await
            .body
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut out = client.subscribe(format!("{p}out")).await.unwrap();
    let mut back = client.subscribe(format!("{p}loop.back")).await.unwrap();
    client.flush().await.unwrap();

    // NATS to Kafka: once a probe makes it across, 50 messages, headers and keys carried.
    let probe_sent = eventually(Duration::from_secs(30), || async {
        client
            .publish(format!("{p}in.probe"), "probe".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        forwarded(&app, "nats:").await > 0
    })
    .await;
    assert!(
        probe_sent,
        "the bridge forwards NATS messages:\n{}",
        metrics().await
    );
    for i in 0..50 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Trace-Id", format!("t{i}").as_str());
        headers.insert("Kafka-Key", format!("k{}", i % 5).as_str());
        client
            .publish_with_headers(format!("{p}in.item"), headers, format!("m{i}").into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let items = read_topic(
        &brokers,
        &format!("{p}r1"),
        &format!("{p}from-nats"),
        50,
        "probe",
    )
    .await;
    // Keys spread over partitions: the order holds per key.
    let mut last_per_key: std::collections::HashMap<&str, usize> = Default::default();
    for (key, payload, headers) in &items {
        let i: usize = payload.strip_prefix('m').unwrap().parse().unwrap();
        assert_eq!(key, &format!("k{}", i % 5));
        assert_eq!(headers, &format!("t{i}|nats"));
        if let Some(last) = last_per_key.insert(key, i) {
            assert!(last < i, "{key}: m{i} after m{last}");
        }
    }

    // Kafka to NATS: 50 records, headers and keys carried.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for i in 0..50 {
        let headers = OwnedHeaders::new().insert(Header {
            key: "Trace-Id",
            value: Some(format!("t{i}").as_str()),
        });
        producer
            .send(
                FutureRecord::to(&format!("{p}to-nats"))
                    .key("same-key")
                    .payload(&format!("r{i}"))
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    for i in 0..50 {
        let m = tokio::time::timeout(Duration::from_secs(60), out.next())
            .await
            .unwrap_or_else(|_| panic!("record {i} did not reach NATS"))
            .unwrap();
        assert_eq!(
            m.payload,
            format!("r{i}").as_bytes(),
            "in order within one key"
        );
        let h = m.headers.unwrap();
        assert_eq!(h.get("Trace-Id").unwrap().as_str(), format!("t{i}"));
        assert_eq!(h.get("Kafka-Key").unwrap().as_str(), "same-key");
        assert_eq!(h.get("Convene-Bridge-Origin").unwrap().as_str(), "kafka");
    }

    // The loop: NATS `loop.>` -> Kafka `loop` -> NATS `loop.back`, which `loop.>` matches.
    client
        .publish(format!("{p}loop.start"), "from nats".into())
        .await
        .unwrap();
    producer
        .send(
            FutureRecord::to(&format!("{p}loop"))
                .key("k")
                .payload("from kafka"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), back.next())
        .await
        .expect("the Kafka record reaches NATS once")
        .unwrap();
    assert_eq!(first.payload, "from kafka".as_bytes());
    let looped = eventually(Duration::from_secs(30), || async {
        let text = metrics().await;
        text.lines()
            .filter(|l| l.starts_with("convene_bridge_messages_total") && l.contains("looped"))
            .count()
            == 2
    })
    .await;
    assert!(
        looped,
        "both loop attempts are stopped:\n{}",
        metrics().await
    );
    // Nothing more comes around, either way.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), back.next())
            .await
            .is_err(),
        "a message came back around"
    );
    let records = read_topic(&brokers, &format!("{p}r2"), &format!("{p}loop"), 2, "").await;
    let mut payloads: Vec<&str> = records.iter().map(|r| r.1.as_str()).collect();
    payloads.sort();
    assert_eq!(payloads, ["from kafka", "from nats"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_rides_out_a_nats_restart() {
    let brokers = service_url("KAFKA_BROKERS", "127.0.0.1:9092");
    if !kafka_reachable(&brokers).await {
        return;
    }
    let Some(mut nats) = OwnNats::new() else {
        return;
    };
    nats.start().await;
    let (app, p) = bridge_node(&nats.url(), &brokers, TWO_ROUTES).await;
    let client = nats_client(&nats.url()).await.unwrap();
    // What reaches `out` is kept across the restart, so nothing depends on who reconnects first.
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BRIDGED".into(),
        subjects: vec![format!("{p}out")],
        ..Default::default()
    })
    .await
    .unwrap();
    let ready = eventually(Duration::from_secs(30), || async {
        client
            .publish(format!("{p}in.probe"), "probe".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        forwarded(&app, &format!("nats:{p}in.>")).await > 0
    })
    .await;
    assert!(ready, "the bridge forwards before the restart");

    nats.kill().await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for i in 0..20 {
        producer
            .send(
                FutureRecord::to(&format!("{p}to-nats"))
                    .key("k")
                    .payload(&format!("r{i}")),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.start().await;

    // Kafka to NATS: the records produced while NATS was down arrive, in order.
    let arrived = eventually(Duration::from_secs(60), || async {
        let Ok(mut s) = js.get_stream("BRIDGED").await else {
            return false;
        };
        s.info().await.is_ok_and(|i| i.state.messages >= 20)
    })
    .await;
    assert!(arrived, "the records produced during the outage reach NATS");
    let mut s = js.get_stream("BRIDGED").await.unwrap();
    let last = s.info().await.unwrap().state.last_sequence;
    let mut payloads = Vec::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await.unwrap();
        let p = String::from_utf8(m.payload.to_vec()).unwrap();
        if !payloads.contains(&p) {
            payloads.push(p);
        }
    }
    let expected: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    assert_eq!(payloads, expected);

    // NATS to Kafka: the subscription is back after the restart.
    let before = forwarded(&app, &format!("nats:{p}in.>")).await;
    let resumed = eventually(Duration::from_secs(30), || async {
        client
            .publish(format!("{p}in.after"), "after".into())
            .await
            .is_ok()
            && client.flush().await.is_ok()
            && forwarded(&app, &format!("nats:{p}in.>")).await > before
    })
    .await;
    assert!(resumed, "NATS messages are bridged again after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_rides_out_a_kafka_restart() {
    let nats_url = service_url("NATS_URL", "nats://127.0.0.1:4222");
    let Some(client) = nats_client(&nats_url).await else {
        return;
    };
    let Some(mut kafka) = OwnKafka::new().await else {
        return;
    };
    kafka.start().await;
    let (app, p) = bridge_node(&nats_url, &kafka.brokers(), TWO_ROUTES).await;
    let ready = eventually(Duration::from_secs(60), || async {
        client
            .publish(format!("{p}in.probe"), "probe".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        forwarded(&app, &format!("nats:{p}in.>")).await > 0
    })
    .await;
    assert!(ready, "the bridge forwards before the restart");

    // NATS to Kafka while the broker is down: the producer keeps the records.
    kafka.kill().await;
    for i in 0..20 {
        client
            .publish(format!("{p}in.item"), format!("m{i}").into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    kafka.start().await;
    let items = read_topic(
        &kafka.brokers(),
        &format!("{p}r"),
        &format!("{p}from-nats"),
        20,
        "probe",
    )
    .await;
    let mut payloads: Vec<&str> = items.iter().map(|r| r.1.as_str()).collect();
    payloads.sort_by_key(|m| m[1..].parse::<u32>().unwrap());
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(
        payloads, expected,
        "what NATS sent during the outage reaches Kafka"
    );

    // Kafka to NATS: the bridge's consumer is back in its group.
    let mut out = client.subscribe(format!("{p}out")).await.unwrap();
    client.flush().await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&format!("{p}to-nats"))
                .key("k")
                .payload("after"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    // The bridge's consumer takes about 40 s to rejoin its group after the coordinator came
    // back (measured here); a loaded machine takes longer.
    let m = tokio::time::timeout(Duration::from_secs(150), out.next())
        .await
        .expect("a record produced after the restart reaches NATS")
        .unwrap();
    assert_eq!(m.payload, "after".as_bytes());
}

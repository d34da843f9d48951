//! Live rooms over real WebSocket connections: join, publish and order, presence with several
//! tabs, resume with `since`, history gaps, limits, slow consumers and bad tokens.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{Backend, Settings, TestApp, TestUser, eventually, spawn_app_with};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) struct Client {
    ws: Socket,
}

impl Client {
    async fn connect(app: &TestApp, token: &str) -> Self {
        Self::connect_to(&app.node.url(), token).await
    }

    /// A connection to the node whose HTTP base URL is `base`.
    pub(crate) async fn connect_to(base: &str, token: &str) -> Self {
        let url = format!("{}/ws?token={token}", base.replacen("http://", "ws://", 1));
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Self { ws }
    }

    /// A connection whose upgrade request carries `traceparent`.
    pub(crate) async fn connect_traced(base: &str, token: &str, traceparent: &str) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/ws?token={token}", base.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        Self { ws }
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next text frame as JSON, or `None` when the connection closes (with its close code).
    pub(crate) async fn next(&mut self) -> Result<Value, Option<u16>> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame within 10 s");
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    pub(crate) async fn expect(&mut self, op: &str) -> Value {
        let v = self
            .next()
            .await
            .unwrap_or_else(|code| panic!("closed ({code:?}) waiting for {op}"));
        assert_eq!(v["op"], op, "{v}");
        v
    }

    async fn expect_any(&mut self) -> Value {
        self.next()
            .await
            .unwrap_or_else(|code| panic!("closed ({code:?})"))
    }

    pub(crate) async fn join(&mut self, room: &str, since: Option<i64>) -> Value {
        let mut frame = json!({"op": "join", "room": room, "ref": "j"});
        if let Some(s) = since {
            frame["since"] = json!(s);
        }
        self.send(frame).await;
        let reply = self.expect("reply").await;
        assert_eq!(reply["status"], "ok", "{reply}");
        assert_eq!(reply["ref"], "j");
        if reply["body"]["presence"] == "counts" {
            self.expect("presence_count").await;
        } else {
            assert_eq!(reply["body"]["presence"], "full", "{reply}");
            self.expect("presence_state").await;
        }
        reply
    }

    pub(crate) async fn publish(&mut self, room: &str, body: Value, reference: i64) {
        self.send(json!({"op": "publish", "room": room, "body": body, "ref": reference}))
            .await;
    }
}

async fn app_with(backend: Backend, settings: Settings) -> Option<TestApp> {
    spawn_app_with(backend, settings).await
}

async fn presence(app: &TestApp, user: &TestUser, room: &str) -> Value {
    app.send(
        "GET",
        &format!("/api/v1/rooms/{room}/presence"),
        Some(&user.token),
        None,
    )
    .await
    .body["presences"]
        .clone()
}

/// Reads frames until a `reply` with this ref, collecting the others.
pub(crate) async fn reply_to(c: &mut Client, reference: i64, others: &mut Vec<Value>) -> Value {
    loop {
        let v = c.next().await.expect("open");
        if v["op"] == "reply" && v["ref"] == reference {
            return v;
        }
        others.push(v);
    }
}

async fn join_publish_and_presence(app: TestApp) {
    let alice = app.sign_up("alice@example.com").await;
    let bob = app.sign_up("bob@example.com").await;
    let mut a1 = Client::connect(&app, &alice.token).await;
    let mut a2 = Client::connect(&app, &alice.token).await;
    let mut b = Client::connect(&app, &bob.token).await;

    assert_eq!(a1.join("room:lobby", None).await["body"]["seq"], 0);
    a1.expect("presence_diff").await;
    a2.join("room:lobby", None).await;
    let diff = a1.expect("presence_diff").await;
    assert_eq!(
        diff["joins"][alice.id.to_string()]["metas"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    a2.expect("presence_diff").await;
    b.send(json!({"op": "join", "room": "room:lobby", "ref": "j", "meta": {"device": "phone"}}))
        .await;
    b.expect("reply").await;
    let state = b.expect("presence_state").await;
    // Alice is present once, with one meta per tab.
    assert_eq!(
        state["presences"][alice.id.to_string()]["metas"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The state is what was last broadcast; bob's own arrival comes in the next diff, to
    // everyone, with the meta he sent.
    for c in [&mut a1, &mut a2, &mut b] {
        let diff = c.expect("presence_diff").await;
        assert_eq!(
            diff["joins"][bob.id.to_string()]["metas"][0]["device"],
            "phone"
        );
    }

    for i in 1..=5 {
        b.publish("room:lobby", json!({"text": format!("hello {i}")}), i)
            .await;
    }
    let mut seen = Vec::new();
    for i in 1..=5 {
        let r = reply_to(&mut b, i, &mut seen).await;
        assert_eq!(
            (r["status"].as_str(), r["body"]["seq"].as_i64()),
            (Some("ok"), Some(i))
        );
    }
    for c in [&mut a1, &mut a2] {
        for i in 1..=5 {
            let m = c.expect("message").await;
            assert_eq!(
                (m["seq"].as_i64(), m["from"].as_i64()),
                (Some(i), Some(bob.id))
            );
            assert_eq!(m["body"]["text"], format!("hello {i}"));
        }
    }
    let from_b: Vec<i64> = seen
        .iter()
        .filter(|v| v["op"] == "message")
        .map(|v| v["seq"].as_i64().unwrap())
        .collect();
    let mut rest = from_b.clone();
    while rest.len() < 5 {
        rest.push(b.expect("message").await["seq"].as_i64().unwrap());
    }
    assert_eq!(rest, [1, 2, 3, 4, 5], "the publisher sees the same order");

    // One tab closes: alice stays present with one meta; the second closes: she leaves.
    a1.ws.close(None).await.unwrap();
    let diff = b.expect("presence_diff").await;
    assert_eq!(
        diff["leaves"][alice.id.to_string()]["metas"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let p = presence(&app, &bob, "room:lobby").await;
    assert_eq!(
        p[alice.id.to_string()]["metas"].as_array().unwrap().len(),
        1
    );
    a2.ws.close(None).await.unwrap();
    b.expect("presence_diff").await;
    let p = presence(&app, &bob, "room:lobby").await;
    assert!(p.get(alice.id.to_string()).is_none(), "{p}");
    assert!(p.get(bob.id.to_string()).is_some());

    // Resume: a late joiner asks for what it missed after seq 2.
    let carol = app.sign_up("carol@example.com").await;
    let mut c = Client::connect(&app, &carol.token).await;
    c.join("room:lobby", Some(2)).await;
    for i in 3..=5 {
        assert_eq!(c.expect("message").await["seq"], i);
    }
    let rest = app
        .send(
            "GET",
            "/api/v1/rooms/room:lobby/messages?since=3",
            Some(&carol.token),
            None,
        )
        .await;
    assert_eq!(rest.status, 200);
    assert_eq!(rest.body["last_seq"], 5);
    assert_eq!(rest.body["messages"].as_array().unwrap().len(), 2);
}

async fn bad_input_and_limits(app: TestApp) {
    let user = app.sign_up("limits@example.com").await;

    // Bad tokens close with 4001; a first-frame auth works.
    for token in ["garbage", ""] {
        let mut c = Client::connect(&app, token).await;
        assert_eq!(c.next().await.err(), Some(Some(4001)), "token {token:?}");
    }
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.node.addr))
        .await
        .unwrap();
    let mut c = Client { ws };
    c.send(json!({"op": "auth", "token": user.token})).await;
    c.send(json!({"op": "ping", "ref": 1})).await;
    assert_eq!(c.expect("reply").await["ref"], 1);

    // Invalid JSON and unknown ops get error replies; the connection stays.
    c.ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(c.expect("reply").await["body"]["reason"], "invalid_json");
    c.send(json!({"op": "dance", "ref": 2})).await;
    assert_eq!(c.expect("reply").await["body"]["reason"], "unknown_op");
    c.send(json!({"op": "join", "room": "lobby", "ref": 3}))
        .await;
    assert_eq!(c.expect("reply").await["body"]["reason"], "invalid_room");
    c.send(json!({"op": "publish", "room": "room:x", "body": {"a": 1}, "ref": 4}))
        .await;
    assert_eq!(c.expect("reply").await["body"]["reason"], "not_joined");
    c.join("room:x", None).await;
    c.expect("presence_diff").await;
    c.send(json!({"op": "publish", "room": "room:x", "body": "text", "ref": 5}))
        .await;
    assert_eq!(c.expect("reply").await["body"]["reason"], "invalid_body");

    // Publishing faster than 20/s is refused.
    for i in 0..40 {
        c.publish("room:x", json!({"n": i}), 100 + i).await;
    }
    let mut limited = 0;
    let mut ok = 0;
    while ok + limited < 40 {
        let v = c.next().await.unwrap();
        if v["op"] == "reply" {
            match v["status"].as_str() {
                Some("ok") => ok += 1,
                _ => {
                    assert_eq!(v["body"]["reason"], "rate_limited");
                    limited += 1;
                }
            }
        }
    }
    assert!(limited >= 10 && ok >= 10, "ok {ok}, limited {limited}");

    // A frame over 64 KiB closes with 1009.
    c.ws.send(Message::text(
        json!({"op": "ping", "pad": "x".repeat(70 * 1024)}).to_string(),
    ))
    .await
    .unwrap();
    let code = loop {
        match c.next().await {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(1009));

    // Event rooms: anyone signed in joins, only attendees and the creator publish.
    let host = app.sign_up("host@example.com").await;
    let event = app.create_event(&host, 5).await;
    let room = format!("event:{event}");
    let mut guest = Client::connect(&app, &user.token).await;
    guest.join(&room, None).await;
    guest.expect("presence_diff").await;
    guest.publish(&room, json!({"q": "hi"}), 1).await;
    assert_eq!(guest.expect("reply").await["body"]["reason"], "forbidden");
    assert_eq!(
        app.send(
            "POST",
            &format!("/api/v1/events/{event}/registrations"),
            Some(&user.token),
            None
        )
        .await
        .status,
        201
    );
    guest.publish(&room, json!({"q": "hi"}), 2).await;
    let mut others = Vec::new();
    assert_eq!(reply_to(&mut guest, 2, &mut others).await["status"], "ok");
    guest
        .send(json!({"op": "join", "room": "event:999999", "ref": 9}))
        .await;
    let r = loop {
        let v = guest.next().await.unwrap();
        if v["op"] == "reply" && v["ref"] == 9 {
            break v;
        }
    };
    assert_eq!(r["body"]["reason"], "not_found");
    assert_eq!(
        app.send(
            "GET",
            "/api/v1/rooms/nonsense/presence",
            Some(&user.token),
            None
        )
        .await
        .status,
        404
    );
    assert_eq!(
        app.send("GET", "/api/v1/rooms/room:x/presence", None, None)
            .await
            .status,
        401
    );
}

async fn history_gap_and_persistence(app: TestApp) {
    let user = app.sign_up("historian@example.com").await;
    let mut c = Client::connect(&app, &user.token).await;
    c.join("room:archive", None).await;
    c.expect("presence_diff").await;
    for i in 1..=205 {
        c.publish("room:archive", json!({"n": i}), i).await;
    }
    let mut others = Vec::new();
    reply_to(&mut c, 205, &mut others).await;
    c.ws.close(None).await.unwrap();

    let mut late = Client::connect(&app, &user.token).await;
    late.send(json!({"op": "join", "room": "room:archive", "since": 1, "ref": "g"}))
        .await;
    let gap = late.expect("reply").await;
    assert_eq!(
        (gap["status"].as_str(), gap["body"]["reason"].as_str()),
        (Some("error"), Some("history_gap"))
    );
    assert_eq!(gap["body"]["oldest"], 6);
    let rest = app
        .send(
            "GET",
            "/api/v1/rooms/room:archive/messages?since=1",
            Some(&user.token),
            None,
        )
        .await;
    assert_eq!(
        (rest.status, rest.body["error"].as_str()),
        (409, Some("history_gap"))
    );
    late.ws.close(None).await.unwrap();

    // Once the room is empty and idle it is passivated; its history comes back from the store.
    let rooms = app.node.app.rooms.clone();
    assert!(
        eventually(Duration::from_secs(10), || async {
            rooms.stats().await.unwrap().active == 0
        })
        .await
    );
    let after = app
        .send(
            "GET",
            "/api/v1/rooms/room:archive/messages?since=195&limit=200",
            Some(&user.token),
            None,
        )
        .await;
    assert_eq!(after.status, 200);
    let seqs: Vec<i64> = after.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (196..=205).collect::<Vec<_>>());
    let mut again = Client::connect(&app, &user.token).await;
    assert_eq!(
        again.join("room:archive", Some(204)).await["body"]["seq"],
        205
    );
    assert_eq!(again.expect("message").await["seq"], 205);
}

async fn a_slow_consumer_is_cut_off(app: TestApp) {
    let publisher = app.sign_up("loud@example.com").await;
    let reader = app.sign_up("fast@example.com").await;
    let sleeper = app.sign_up("slow@example.com").await;
    let mut p = Client::connect(&app, &publisher.token).await;
    let mut fast = Client::connect(&app, &reader.token).await;
    let mut slow = Client::connect(&app, &sleeper.token).await;
    slow.join("room:firehose", None).await;
    fast.join("room:firehose", None).await;
    p.join("room:firehose", None).await;

    let fast_task = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < 300 {
            let v = fast.next().await.expect("the fast reader stays connected");
            if v["op"] == "message" {
                seqs.push(v["seq"].as_i64().unwrap());
            }
        }
        seqs
    });
    let blob = "x".repeat(60 * 1024);
    for i in 1..=300 {
        p.publish("room:firehose", json!({"blob": blob, "n": i}), i)
            .await;
        // The publisher is a member too: it reads its own share often enough not to become a
        // slow consumer itself on a loaded machine.
        if i % 5 == 0 {
            let mut others = Vec::new();
            reply_to(&mut p, i, &mut others).await;
        }
    }
    let seqs = tokio::time::timeout(Duration::from_secs(60), fast_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seqs,
        (1..=300).collect::<Vec<_>>(),
        "the fast member got everything, in order"
    );

    let gone = eventually(Duration::from_secs(15), || async {
        presence(&app, &publisher, "room:firehose")
            .await
            .get(sleeper.id.to_string())
            .is_none()
    })
    .await;
    assert!(gone, "the slow consumer's presence left");
    // When it reads again it gets the rest of what was on its way, then the close frame.
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(f))) => break f.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
        }
    };
    assert_eq!(code, Some(CloseCode::Library(4008)));
}

async fn a_silent_connection_is_dropped(app: TestApp) {
    let talker = app.sign_up("talker@example.com").await;
    let mute = app.sign_up("mute@example.com").await;
    let mut t = Client::connect(&app, &talker.token).await;
    let mut m = Client::connect(&app, &mute.token).await;
    t.join("room:quiet", None).await;
    t.expect("presence_diff").await;
    m.join("room:quiet", None).await;
    assert!(
        t.expect("presence_diff").await["joins"]
            .get(mute.id.to_string())
            .is_some()
    );
    // The mute client stops reading, so it answers no ping; after two heartbeats it is dropped,
    // while the talker, who reads (and so answers pings), stays.
    let diff = t.expect("presence_diff").await;
    assert!(diff["leaves"].get(mute.id.to_string()).is_some(), "{diff}");
    t.send(json!({"op": "ping", "ref": "still"})).await;
    assert_eq!(t.expect("reply").await["ref"], "still");
    let code = loop {
        match m.next().await {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    // A client that reads only now may first fail to send its overdue pongs (broken pipe)
    // before it sees the close frame.
    assert!(matches!(code, Some(4000) | None), "{code:?}");
}

async fn a_crashed_room_comes_back_with_members_and_history(app: TestApp) {
    let a = app.sign_up("crash-a@example.com").await;
    let b = app.sign_up("crash-b@example.com").await;
    let mut ca = Client::connect(&app, &a.token).await;
    let mut cb = Client::connect(&app, &b.token).await;
    ca.join("room:fragile", None).await;
    ca.expect("presence_diff").await;
    cb.join("room:fragile", None).await;
    ca.expect("presence_diff").await;
    cb.expect("presence_diff").await;
    ca.publish("room:fragile", json!({"n": 1}), 1).await;
    let mut others = Vec::new();
    reply_to(&mut ca, 1, &mut others).await;
    assert_eq!(cb.expect("message").await["seq"], 1);

    let rooms = app.node.app.rooms.clone();
    rooms
        .tell(
            convene_cluster::EntityKey::new("room", "room:fragile"),
            convene_actors::room::RoomCommand::InjectFault,
        )
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            rooms.stats().await.unwrap().restarts == 1
        })
        .await
    );

    // The restarted room knows both connections again and continues the sequence.
    let p = presence(&app, &a, "room:fragile").await;
    assert!(
        p.get(a.id.to_string()).is_some() && p.get(b.id.to_string()).is_some(),
        "{p}"
    );
    cb.publish("room:fragile", json!({"n": 2}), 2).await;
    let mut seen = Vec::new();
    let r = reply_to(&mut cb, 2, &mut seen).await;
    assert_eq!(
        (r["status"].as_str(), r["body"]["seq"].as_i64()),
        (Some("ok"), Some(2)),
        "{r}"
    );
    let m = loop {
        let v = ca.expect_any().await;
        if v["op"] == "message" && v["seq"] != 1 {
            break v;
        }
    };
    assert_eq!(
        (m["seq"].as_i64(), m["from"].as_i64()),
        (Some(2), Some(b.id))
    );
}

macro_rules! on_both {
    ($name:ident, $body:ident, $settings:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body(app_with(Backend::Sqlite, $settings).await.unwrap()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = app_with(Backend::Postgres, $settings).await {
                    $body(app).await;
                }
            }
        }
    };
}

/// A room with more members than a connection's queue has frames: a joiner still gets the
/// whole presence (in fewer, larger frames) and is not taken for a slow consumer.
async fn a_large_room_fits_a_joiners_queue(app: TestApp) {
    let user = app.sign_up("crowd@example.com").await;
    let mut crowd = Vec::new();
    for _ in 0..200 {
        let mut c = Client::connect(&app, &user.token).await;
        c.join("room:crowd", None).await;
        crowd.push(c);
    }
    let mut last = Client::connect(&app, &user.token).await;
    last.send(json!({"op": "join", "room": "room:crowd", "ref": "j"}))
        .await;
    assert_eq!(last.expect("reply").await["status"], "ok");
    let state = last.expect("presence_state").await;
    let metas = |v: &Value, key: &str| {
        v[key][user.id.to_string()]["metas"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let mut seen = metas(&state, "presences");
    let mut frames = 1;
    while seen < 200 {
        let v = last.next().await.expect("not cut off as a slow consumer");
        if v["op"] == "presence_diff" {
            seen += metas(&v, "joins");
            frames += 1;
        }
    }
    assert!(frames <= 8, "{frames} presence frames for a queue of 16");
}

/// Reads frames until one that `pred` accepts, returning it and the frames before it.
async fn until(c: &mut Client, pred: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let v = c.next().await.expect("open");
        if pred(&v) {
            return (v, before);
        }
        before.push(v);
    }
}

fn count_is(connections: usize, users: usize) -> impl Fn(&Value) -> bool {
    move |v| v["op"] == "presence_count" && v["connections"] == connections && v["users"] == users
}

/// The connection ids of presence metas, over every user.
fn conns(presences: &Value) -> Vec<String> {
    let mut ids: Vec<String> = presences
        .as_object()
        .into_iter()
        .flat_map(|users| users.values())
        .flat_map(|u| u["metas"].as_array().cloned().unwrap_or_default())
        .map(|m| m["conn"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Above the presence limit (4 here) a room sends counts, at most once a second, and no diffs;
/// its presence is paged on request over WebSocket and REST; at half the limit it sends the
/// whole presence again and diffs resume.
async fn a_room_above_the_presence_limit_sends_counts(app: TestApp) {
    let (a, b, c, d) = (
        app.sign_up("ann@example.com").await,
        app.sign_up("bob@example.com").await,
        app.sign_up("cat@example.com").await,
        app.sign_up("dan@example.com").await,
    );
    let room = "room:stadium";
    let mut a1 = Client::connect(&app, &a.token).await;
    let mut a2 = Client::connect(&app, &a.token).await;
    let mut b1 = Client::connect(&app, &b.token).await;
    let mut c1 = Client::connect(&app, &c.token).await;
    for client in [&mut a1, &mut a2, &mut b1, &mut c1] {
        let reply = client.join(room, None).await;
        assert_eq!(reply["body"]["presence"], "full");
    }
    // The fifth connection crosses the limit: everyone is told the counts instead of a diff.
    let mut d1 = Client::connect(&app, &d.token).await;
    d1.join(room, None).await;
    for client in [&mut a1, &mut d1] {
        let (_, before) = until(client, count_is(5, 4)).await;
        assert!(
            before
                .iter()
                .all(|v| v["op"] != "presence_diff" || v["joins"].get(d.id.to_string()).is_none()),
            "the crossing join came as a diff: {before:?}"
        );
    }
    // A second tab of Bob: the joiner gets the counts with it, and users stay four.
    let mut b2 = Client::connect(&app, &b.token).await;
    b2.send(json!({"op": "join", "room": room, "ref": "j"}))
        .await;
    let reply = b2.expect("reply").await;
    assert_eq!(reply["body"]["presence"], "counts", "{reply}");
    let count = b2.expect("presence_count").await;
    assert_eq!(
        (count["connections"].clone(), count["users"].clone()),
        (json!(6), json!(4))
    );
    let (_, before) = until(&mut a1, count_is(6, 4)).await;
    assert!(
        before.iter().all(|v| v["op"] != "presence_diff"),
        "{before:?}"
    );

    // The list, a page at a time, over WebSocket.
    b2.send(json!({"op": "presence", "room": room, "limit": 4, "ref": 7}))
        .await;
    let first = reply_to(&mut b2, 7, &mut Vec::new()).await;
    assert_eq!(first["status"], "ok", "{first}");
    assert_eq!(first["body"]["connections"], 6);
    assert_eq!(first["body"]["users"], 4);
    let next = first["body"]["next"]
        .as_str()
        .expect("a next page")
        .to_owned();
    b2.send(json!({"op": "presence", "room": room, "after": next, "ref": 8}))
        .await;
    let second = reply_to(&mut b2, 8, &mut Vec::new()).await;
    assert!(second["body"].get("next").is_none(), "{second}");
    let mut paged = conns(&first["body"]["presences"]);
    paged.extend(conns(&second["body"]["presences"]));
    paged.sort();
    assert_eq!(paged.len(), 6);
    // And over REST: the same connections, paged the same way.
    let res = app
        .send(
            "GET",
            &format!("/api/v1/rooms/{room}/presence?limit=4"),
            Some(&a.token),
            None,
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.body["connections"], 6);
    let next = res.body["next"].as_str().unwrap().to_owned();
    let rest = app
        .send(
            "GET",
            &format!("/api/v1/rooms/{room}/presence?limit=4&after={next}"),
            Some(&a.token),
            None,
        )
        .await;
    let mut by_rest = conns(&res.body["presences"]);
    by_rest.extend(conns(&rest.body["presences"]));
    by_rest.sort();
    assert_eq!(by_rest, paged);
    assert_eq!(conns(&presence(&app, &a, room).await), paged);
    // Bad pages change nothing and say why.
    for (frame, r) in [
        (
            json!({"op": "presence", "room": room, "limit": 0, "ref": 9}),
            9,
        ),
        (
            json!({"op": "presence", "room": room, "after": "x", "ref": 10}),
            10,
        ),
        (
            json!({"op": "presence", "room": room, "limit": 1001, "ref": 11}),
            11,
        ),
    ] {
        b2.send(frame).await;
        let reply = reply_to(&mut b2, r, &mut Vec::new()).await;
        assert_eq!(reply["status"], "error");
        assert_eq!(reply["body"]["reason"], "invalid_frame", "{reply}");
    }
    for query in ["limit=0", "limit=x", "after=-1"] {
        let res = app
            .send(
                "GET",
                &format!("/api/v1/rooms/{room}/presence?{query}"),
                Some(&a.token),
                None,
            )
            .await;
        assert_eq!(res.status, 422, "{query}: {}", res.body);
    }

    // Leaving: counts while above half the limit (two), then the whole presence again.
    drop(b2);
    drop(d1);
    until(&mut a1, count_is(4, 3)).await;
    drop(c1);
    drop(b1);
    let (state, before) = until(&mut a1, |v| v["op"] == "presence_state").await;
    assert!(
        before.iter().all(|v| v["op"] != "presence_diff"),
        "{before:?}"
    );
    let ours = conns(&state["presences"]);
    assert_eq!(ours.len(), 2, "{state}");
    assert!(state["presences"].get(a.id.to_string()).is_some());
    until(&mut a2, |v| v["op"] == "presence_state").await;
    // Diffs resume.
    let mut b3 = Client::connect(&app, &b.token).await;
    let reply = b3.join(room, None).await;
    assert_eq!(reply["body"]["presence"], "full");
    let (diff, _) = until(&mut a1, |v| v["op"] == "presence_diff").await;
    assert!(diff["joins"].get(b.id.to_string()).is_some(), "{diff}");
}

on_both!(join_publish, join_publish_and_presence, Settings::default());
on_both!(
    presence_counts,
    a_room_above_the_presence_limit_sends_counts,
    Settings {
        room_presence_limit: 4,
        ..Settings::default()
    }
);
on_both!(limits, bad_input_and_limits, Settings::default());
on_both!(
    history,
    history_gap_and_persistence,
    Settings {
        passivate_after_secs: 1,
        ws_publish_per_sec: 1000,
        ..Settings::default()
    }
);
on_both!(
    slow_consumer,
    a_slow_consumer_is_cut_off,
    Settings {
        ws_publish_per_sec: 1000,
        ws_outbound_queue: 16,
        ..Settings::default()
    }
);
on_both!(
    large_room,
    a_large_room_fits_a_joiners_queue,
    Settings {
        ws_outbound_queue: 16,
        ..Settings::default()
    }
);
on_both!(
    heartbeat,
    a_silent_connection_is_dropped,
    Settings {
        ws_heartbeat_secs: 1,
        ..Settings::default()
    }
);

const PAGE: &str = r#"<!doctype html>
<html><body><p id="out">waiting</p><script>
const params = new URLSearchParams(location.search);
const room = params.get("room");
const ws = new WebSocket(params.get("ws") + "?token=" + encodeURIComponent(params.get("token")));
ws.onopen = () => ws.send(JSON.stringify({op: "join", room, ref: "browser"}));
ws.onmessage = (event) => {
  const frame = JSON.parse(event.data);
  if (frame.op === "message" && frame.body.text) {
    document.getElementById("out").textContent = frame.body.text;
    ws.send(JSON.stringify({op: "publish", room, ref: "echo",
      body: {echo: document.getElementById("out").textContent, agent: navigator.userAgent}}));
  }
};
</script></body></html>"#;

fn chromium() -> Option<String> {
    let candidates = [
        std::env::var("CHROMIUM").ok(),
        Some("/usr/bin/chromium".into()),
        Some("/usr/bin/chromium-browser".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| std::path::Path::new(p).exists())
}

/// A real headless Chromium page joins a room through the browser's WebSocket API and shows a
/// message a Rust client publishes; the page echoes what it displays, which the Rust client reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_page_sees_a_message_from_a_rust_client() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CI").is_err(),
            "chromium must be installed in CI (.ci/run installs it)"
        );
        eprintln!("skipped: no chromium found (apt-get install chromium)");
        return;
    };
    let app = app_with(Backend::Sqlite, Settings::default())
        .await
        .unwrap();
    let page_user = app.sign_up("page@example.com").await;
    let rust_user = app.sign_up("rust@example.com").await;
    let mut rust = Client::connect(&app, &rust_user.token).await;
    rust.join("room:browser", None).await;
    rust.expect("presence_diff").await;

    let page = app.dir.0.join("page.html");
    std::fs::write(&page, PAGE).unwrap();
    let url = format!(
        "file://{}?room=room:browser&ws=ws://{}/ws&token={}",
        page.display(),
        app.node.addr,
        page_user.token
    );
    let profile = app.dir.0.join("chromium-profile");
    let mut child = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");

    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let v = rust.next().await.expect("open");
            if v["op"] == "presence_diff" && v["joins"].get(page_user.id.to_string()).is_some() {
                break;
            }
        }
        rust.publish("room:browser", json!({"text": "hello from rust"}), 1)
            .await;
        loop {
            let v = rust.next().await.expect("open");
            if v["op"] == "message" && v["from"] == page_user.id {
                return v;
            }
        }
    })
    .await
    .expect("the page answered within 60 s");
    let _ = child.kill().await;
    assert_eq!(seen["body"]["echo"], "hello from rust");
    assert!(
        seen["body"]["agent"].as_str().unwrap().contains("Chrome"),
        "{seen}"
    );
}
on_both!(
    room_crash,
    a_crashed_room_comes_back_with_members_and_history,
    Settings::default()
);

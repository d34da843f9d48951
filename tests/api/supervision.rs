//! Entity actors under supervision: a crash restarts the actor with its state reloaded, and an
//! idle actor is passivated and comes back on its next message.

use std::time::Duration;

use convene::node::Node;
use convene_actors::event::EventMessage;
use convene_actors::user::UserMessage;
use convene_cluster::EntityKey;
use serde_json::json;

use crate::helpers::{Backend, Settings, TestApp, eventually, spawn_app, spawn_app_with};

async fn active_events(node: &Node) -> usize {
    node.app.events.stats().await.unwrap().active
}

async fn crash_restarts_with_state(app: TestApp) {
    let owner = app.sign_up("crash@example.com").await;
    let event = app.create_event(&owner, 2).await;
    let path = format!("/api/v1/events/{event}/registrations");
    assert_eq!(
        app.send("POST", &path, Some(&owner.token), None)
            .await
            .status,
        201
    );

    let key = EntityKey::new("event", event);
    app.node
        .app
        .events
        .tell(key.clone(), EventMessage::InjectFault)
        .unwrap();
    let restarted = eventually(Duration::from_secs(5), || async {
        app.node.app.events.stats().await.unwrap().restarts == 1
    })
    .await;
    assert!(restarted, "the shard restarts the crashed event actor");

    // The restarted actor reloaded its state: the seat taken before the crash is still taken,
    // and the request that follows succeeds.
    let e = app
        .send("GET", &format!("/api/v1/events/{event}"), None, None)
        .await;
    assert_eq!(
        (e.status, e.body["registered_count"].as_i64()),
        (200, Some(1))
    );
    assert_eq!(
        app.send("POST", &path, Some(&owner.token), None)
            .await
            .status,
        200
    );
    let other = app.sign_up("after-crash@example.com").await;
    assert_eq!(
        app.send("POST", &path, Some(&other.token), None)
            .await
            .status,
        201
    );
    let third = app.sign_up("too-late@example.com").await;
    assert_eq!(
        app.send("POST", &path, Some(&third.token), None)
            .await
            .status,
        409
    );
    assert_eq!(app.active_in_db(event).await, (2, 2));

    // The same holds for users.
    app.node
        .app
        .users
        .tell(EntityKey::new("user", owner.id), UserMessage::InjectFault)
        .unwrap();
    let patched = app
        .send(
            "PATCH",
            "/api/v1/users/me",
            Some(&owner.token),
            Some(json!({"name": "Still here"})),
        )
        .await;
    assert!(matches!(patched.status, 200 | 503), "{}", patched.status);
    let me = eventually(Duration::from_secs(5), || async {
        app.send(
            "PATCH",
            "/api/v1/users/me",
            Some(&owner.token),
            Some(json!({"name": "Still here"})),
        )
        .await
        .status
            == 200
    })
    .await;
    assert!(me);
}

async fn idle_entities_are_passivated(app: TestApp) {
    let owner = app.sign_up("idle@example.com").await;
    let event = app.create_event(&owner, 5).await;
    assert_eq!(
        app.send(
            "POST",
            &format!("/api/v1/events/{event}/registrations"),
            Some(&owner.token),
            None
        )
        .await
        .status,
        201
    );
    assert_eq!(active_events(&app.node).await, 1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            active_events(&app.node).await == 0
        })
        .await,
        "passivated"
    );
    let passivations = app.node.app.events.stats().await.unwrap().passivations;
    assert!(passivations >= 1);
    let e = app
        .send("GET", &format!("/api/v1/events/{event}"), None, None)
        .await;
    assert_eq!(
        (e.status, e.body["registered_count"].as_i64()),
        (200, Some(1)),
        "state survives passivation"
    );
    assert_eq!(active_events(&app.node).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restarts_with_state_sqlite() {
    crash_restarts_with_state(spawn_app(Backend::Sqlite).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restarts_with_state_postgres() {
    if let Some(app) = spawn_app(Backend::Postgres).await {
        crash_restarts_with_state(app).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_entities_are_passivated_sqlite() {
    let app = spawn_app_with(
        Backend::Sqlite,
        Settings {
            passivate_after_secs: 1,
            ..Settings::default()
        },
    )
    .await
    .unwrap();
    idle_entities_are_passivated(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_entities_are_passivated_postgres() {
    if let Some(app) = spawn_app_with(
        Backend::Postgres,
        Settings {
            passivate_after_secs: 1,
            ..Settings::default()
        },
    )
    .await
    {
        idle_entities_are_passivated(app).await;
    }
}

//! Backup and restore of the embedded SQLite store: a copy taken while registrations pour in
//! is one consistent snapshot that a new node serves; a restore is refused while a node serves
//! from the directory, and the database it replaces is kept.

use std::time::Duration;

use convene::backup::{self, DataDirLock};

use crate::helpers::{Backend, TempDir, registered_count, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_write_load_restores_to_a_consistent_node() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.sign_up("owner@example.com").await;
    let event = app.create_event(&owner, 1000).await;
    let users = app.sign_up_many("writer", 60).await;
    // Registrations keep coming while the copy is taken.
    let load = {
        let (client, url) = (
            app.client.clone(),
            app.url(&format!("/api/v1/events/{event}/registrations")),
        );
        let tokens: Vec<String> = users.iter().map(|u| u.token.clone()).collect();
        tokio::spawn(async move {
            for token in tokens {
                let res = client.post(&url).bearer_auth(token).send().await.unwrap();
                assert_eq!(res.status(), 201);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    assert!(
        crate::helpers::eventually(Duration::from_secs(10), || async {
            app.active_in_db(event).await.0 >= 5
        })
        .await
    );
    let db = app.dir.0.join("convene.db");
    let copy = app.dir.0.join("copy.db");
    let before = app.active_in_db(event).await.0;
    let bytes = backup::backup(&db, &copy).await.unwrap();
    let after = app.active_in_db(event).await.0;
    assert!(bytes > 0);
    assert!(after < 60, "the copy was taken while registrations came in");
    load.await.unwrap();
    assert_eq!(app.active_in_db(event).await.0, 60);
    // A second copy to the same file is refused rather than overwriting it.
    let again = backup::backup(&db, &copy).await.unwrap_err();
    assert!(again.to_string().contains("exists already"), "{again}");

    // Restored into a fresh directory, a node serves the snapshot: the seats it counts are
    // the registrations it holds, as many as were committed when the copy was taken.
    let dir =
        TempDir(std::env::temp_dir().join(format!("convene-restore-{}", uuid::Uuid::new_v4())));
    let target = dir.0.join("convene.db");
    assert_eq!(backup::restore(&copy, &target, &dir.0).await.unwrap(), None);
    let mut config = app.node.app.config.clone();
    config.data_dir = dir.0.clone();
    config.database_url = None;
    config.listen = "127.0.0.1:0".parse().unwrap();
    let node = convene::node::Node::start(config.clone()).await.unwrap();
    let restored = registered_count(&app.client, &node.url(), event).await;
    assert!(
        (before..=after).contains(&restored),
        "{restored} seats, not between {before} and {after}"
    );
    let (rows, counted): (i64, i64) = {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", target.display()))
            .await
            .unwrap();
        sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM event_registrations WHERE event_id = $1 AND status = 'active'), \
             (SELECT registered_count FROM events WHERE id = $1)",
        )
        .bind(event)
        .fetch_one(&mut c)
        .await
        .unwrap()
    };
    assert_eq!(
        (rows, counted),
        (restored, restored),
        "the seat count and the rows agree"
    );
    // The accounts came along: a writer logs in on the restored node.
    let login = app
        .client
        .post(format!("{}/api/v1/auth/login", node.url()))
        .json(&serde_json::json!({"email": "writer0@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);

    // While a node holds the directory, a restore is refused and changes nothing.
    let lock = DataDirLock::acquire(&dir.0).unwrap();
    let refused = backup::restore(&copy, &target, &dir.0).await.unwrap_err();
    assert!(refused.to_string().contains("stop it first"), "{refused}");
    drop(lock);
    node.shutdown().await;

    // Restoring over a database keeps the one replaced, with its journal.
    let kept = backup::restore(&copy, &target, &dir.0)
        .await
        .unwrap()
        .expect("kept");
    assert!(kept.exists());
    // Something that is not a Convene database is refused.
    let junk = dir.0.join("junk.db");
    std::fs::write(&junk, b"not a database").unwrap();
    assert!(backup::restore(&junk, &target, &dir.0).await.is_err());
}

/// `convene backup` copies a serving node's database; `convene restore` under it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_back_up_a_serving_node_and_refuse_to_restore_under_it() {
    use tokio::io::AsyncBufReadExt;
    let dir = TempDir(std::env::temp_dir().join(format!("convene-cli-{}", uuid::Uuid::new_v4())));
    let convene = |args: &[&str]| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_convene"));
        c.args(args)
            .env_clear()
            .env("CONVENE_DATA_DIR", &dir.0)
            .env("CONVENE_LISTEN", "127.0.0.1:0");
        c
    };
    let mut serving = convene(&["serve"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(serving.stdout.take().unwrap()).lines();
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("convene listening on") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(started, "the node did not start");
    let copy = dir.0.join("copy.db");
    let copy = copy.to_str().unwrap();
    let (ok, out, err) = run(convene(&["backup", "--out", copy])).await;
    assert!(ok && out.starts_with("backed up"), "{out}{err}");
    let (ok, _, err) = run(convene(&["restore", "--from", copy])).await;
    assert!(!ok && err.contains("a node is serving from"), "{err}");
    serving.kill().await.unwrap();
    serving.wait().await.unwrap();
    // Once it stopped, the restore goes through and keeps what it replaced.
    let (ok, out, err) = run(convene(&["restore", "--from", copy])).await;
    assert!(ok && out.contains("is kept as"), "{out}{err}");
}

/// Whether a command succeeded, and what it printed on stdout and stderr.
async fn run(mut command: tokio::process::Command) -> (bool, String, String) {
    let out = command.output().await.unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

//! The console page end to end in a real headless Chromium (Debian's `chromium`, driven through
//! `chromedriver` over WebDriver) against a three-node cluster: a plain user is refused; an
//! admin signs in and sees the three members; a room's presence count follows WebSocket clients
//! joining; a node drained from the page turns `leaving`, then `up` again; an entity moved from
//! the page changes owner. Screenshots go to `target/console-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::cluster::TestCluster;
use crate::helpers::{TempDir, unavailable};
use crate::rooms::Client;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver on a free port and one headless Chromium session through it.
struct Session {
    browser: Browser,
    _driver: Child,
    _profile: TempDir,
}

impl Session {
    /// `None` (skipped, with the reason) when Chromium is not installed outside CI.
    async fn start() -> Option<Self> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            unavailable(
                "chromium",
                "install Debian's chromium and chromium-driver (scripts/services does)",
            );
            return None;
        }
        let port = crate::helpers::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile =
            std::env::temp_dir().join(format!("convene-chromium-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1600,1300",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let browser = loop {
            let mut builder =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            builder.capabilities(caps.clone());
            match builder.connect(&url).await {
                Ok(b) => break b,
                Err(e) if Instant::now() > deadline => panic!("no Chromium session: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Some(Self {
            browser,
            _driver: driver,
            _profile: TempDir(profile),
        })
    }

    async fn text(&self, css: &str) -> Option<String> {
        self.browser
            .find(Locator::Css(css))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// Waits until the text of `css` satisfies `check`; panics with what it saw and a screenshot.
    async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = self.text(css).await;
            if text.as_deref().is_some_and(&check) {
                return;
            }
            if Instant::now() > deadline {
                self.screenshot("failure").await;
                panic!("{what}: `{css}` shows {text:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.browser
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |v| v.len())
    }

    async fn click(&self, css: &str) {
        self.browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
            .click()
            .await
            .unwrap();
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.browser.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Confirms the action the page asks about.
    async fn confirm(&self) {
        self.click("#confirm-ok").await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        let png = self.browser.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn sign_in(&self, email: &str, password: &str) {
        self.fill("#email", email).await;
        self.fill("#password", password).await;
        self.click("#signin-button").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_watches_and_acts_on_a_three_node_cluster_from_the_console() {
    let Some(cluster) = TestCluster::start(3).await else {
        return;
    };
    let Some(session) = Session::start().await else {
        return;
    };
    let base = cluster.nodes[0].http.clone();
    session
        .browser
        .goto(&format!("{base}/console"))
        .await
        .unwrap();

    // A plain user is told the console is not for them.
    let plain = cluster
        .client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": "plain@example.com", "password": "correct horse battery", "name": "Plain"}))
        .send()
        .await
        .unwrap();
    let plain: serde_json::Value = plain.json().await.unwrap();
    let plain_token = plain["access_token"].as_str().unwrap().to_owned();
    session
        .sign_in("plain@example.com", "correct horse battery")
        .await;
    session
        .wait_text("#signin-error", "a plain user is refused", |t| {
            t.contains("admin:access")
        })
        .await;
    session.sign_in("admin@example.com", "wrong password").await;
    session
        .wait_text("#signin-error", "a wrong password is refused", |t| {
            !t.is_empty() && !t.contains("admin:access")
        })
        .await;

    // The admin sees the three members, live.
    session
        .sign_in("admin@example.com", "correct horse battery")
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while session.count("#members tbody tr[data-node]").await != 3 {
        assert!(Instant::now() < deadline, "the three members are listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in &cluster.nodes {
        let css = format!("#members tr[data-node='{}'] .status", node.name);
        session
            .wait_text(&css, "every member is up", |t| t.starts_with("up"))
            .await;
    }
    session
        .wait_text("#live", "the stream is live", |t| t == "live")
        .await;

    // A room's presence count follows the WebSocket clients joining it, on any node.
    let mut first = Client::connect_to(&cluster.nodes[1].http, &plain_token).await;
    first.join("room:lobby", None).await;
    let connections = "#rooms tr[data-room='room:lobby'] .connections";
    session
        .wait_text(connections, "one connection in the room", |t| t == "1")
        .await;
    let mut second = Client::connect_to(&cluster.nodes[2].http, &plain_token).await;
    second.join("room:lobby", None).await;
    session
        .wait_text(connections, "two connections in the room", |t| t == "2")
        .await;
    session.screenshot("console").await;

    // Move an entity to a chosen node: its owner changes.
    let event = cluster.create_event(5).await;
    let key = format!("event/{event}");
    let hashed = cluster.owner_of(&key).await;
    let target = cluster.nodes[(hashed + 1) % 3].name.clone();
    session.fill("#move-key", &key).await;
    session
        .browser
        .find(Locator::Css("#move-node"))
        .await
        .unwrap()
        .select_by_value(&target)
        .await
        .unwrap();
    session.click("#move-button").await;
    session.confirm().await;
    session
        .wait_text("#entity-owner", "the entity's owner changes", |t| {
            t == target
        })
        .await;
    let css = format!("#pins tr[data-key='{key}']");
    session
        .wait_text(&css, "the pin is listed", |t| t.contains(&target))
        .await;

    // Drain a node from the page: its status turns `leaving`; undrain it: `up` again.
    let drained = cluster.nodes[2].name.clone();
    session
        .click(&format!("#members tr[data-node='{drained}'] button.drain"))
        .await;
    session.confirm().await;
    let status = format!("#members tr[data-node='{drained}'] .status");
    session
        .wait_text(&status, "the drained node is leaving", |t| {
            t.starts_with("leaving")
        })
        .await;
    session.screenshot("drained").await;
    session
        .click(&format!(
            "#members tr[data-node='{drained}'] button.undrain"
        ))
        .await;
    session.confirm().await;
    session
        .wait_text(&status, "the node is up again", |t| t.starts_with("up"))
        .await;

    drop((first, second));
    let _ = session.browser.clone().close().await;
}

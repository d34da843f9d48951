//! Clusters of real `convene` processes on 127.0.0.1 and random ports, sharing one fresh
//! PostgreSQL database: placement and forwarding under concurrent load, a node killed with
//! SIGKILL halfway through, a node joining under load, a graceful SIGTERM drain, and a node
//! with the wrong cookie; and live rooms whose members are on several nodes.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{TempDir, event_body, eventually, free_port, fresh_postgres};
use crate::rooms::{Client, reply_to};

const SECRET: &str = "a cluster test secret of at least thirty-two bytes";
const REQUEST_TIMEOUT_MS: u64 = 3000;

pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
    pub(crate) http: String,
    log: Arc<Mutex<Vec<String>>>,
    alive: Arc<AtomicBool>,
}

pub(crate) struct TestCluster {
    database: String,
    dir: TempDir,
    cluster_ports: Vec<u16>,
    pub(crate) nodes: Vec<Proc>,
    pub(crate) client: reqwest::Client,
    pub(crate) admin: String,
    /// More settings for every node.
    env: Vec<(String, String)>,
}

impl TestCluster {
    /// Starts `n` nodes that know each other as seeds; `None` (skipped) without PostgreSQL
    /// outside CI.
    pub(crate) async fn start(n: usize) -> Option<Self> {
        Self::start_with(n, Vec::new()).await
    }

    /// [`Self::start`], with more settings for every node.
    pub(crate) async fn start_with(n: usize, env: Vec<(String, String)>) -> Option<Self> {
        let database = fresh_postgres().await?;
        let dir = std::env::temp_dir().join(format!("convene-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Self {
            database,
            dir: TempDir(dir),
            cluster_ports: (0..n).map(|_| free_port()).collect(),
            nodes: Vec::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            admin: String::new(),
            env,
        };
        for i in 0..n {
            let node = cluster.spawn(i, "cookie-ok").await;
            cluster.nodes.push(node);
        }
        cluster.admin = cluster.make_admin().await;
        cluster.wait_members(n).await;
        Some(cluster)
    }

    async fn spawn(&self, i: usize, cookie: &str) -> Proc {
        // Nodes started later find the cluster through DNS (as in Kubernetes) and meet the
        // others through it.
        let seeds = if i >= 3 {
            format!("dns:localhost:{}", self.cluster_ports[0])
        } else {
            self.cluster_ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let name = format!("node-{i}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_convene"))
            .args(["serve", "--listen", "127.0.0.1:0", "--node-name", &name])
            .args([
                "--cluster-listen",
                &format!("127.0.0.1:{}", self.cluster_ports[i]),
            ])
            .args(["--cookie", cookie, "--seeds", &seeds])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.database)
            .env("CONVENE_DATA_DIR", self.dir.0.join(&name))
            .env("CONVENE_JWT_SECRET", SECRET)
            .env("CONVENE_PASSWORD_HASH_MEMORY_KIB", "1024")
            .env("CONVENE_PASSWORD_HASH_ITERATIONS", "1")
            .env("CONVENE_REQUEST_TIMEOUT_MS", REQUEST_TIMEOUT_MS.to_string())
            .env("CONVENE_DATABASE_MAX_CONNECTIONS", "8")
            .env("CONVENE_HEARTBEAT_MS", "200")
            .env("CONVENE_DOWN_AFTER_MS", "2000")
            .env("RUST_LOG", "warn,convene=info,convene_cluster=info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the convene binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (url_tx, url_rx) = tokio::sync::oneshot::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut url_tx = Some(url_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("convene listening on ") {
                    if let Some(tx) = url_tx.take() {
                        let _ = tx.send(url.to_owned());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let http = match tokio::time::timeout(Duration::from_secs(30), url_rx).await {
            Ok(Ok(url)) => url,
            _ => panic!("{name} did not start:\n{}", log.lock().unwrap().join("\n")),
        };
        Proc {
            name,
            child,
            http,
            log,
            alive: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Signs up an account, makes it an admin in the database, and logs it in.
    async fn make_admin(&self) -> String {
        let base = &self.nodes[0].http;
        let body = json!({"email": "admin@example.com", "password": "correct horse battery", "name": "Admin"});
        let r = self
            .client
            .post(format!("{base}/api/v1/auth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let mut db = sqlx::PgConnection::connect(&self.database).await.unwrap();
        sqlx::query("UPDATE users SET role = 'admin' WHERE email = 'admin@example.com'")
            .execute(&mut db)
            .await
            .unwrap();
        let login: Value = self
            .client
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"email": "admin@example.com", "password": "correct horse battery"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        login["access_token"].as_str().unwrap().to_owned()
    }

    /// `/api/v1/cluster` as node `i` answers it.
    pub(crate) async fn status(&self, i: usize, key: Option<&str>) -> Value {
        let mut req = self
            .client
            .get(format!("{}/api/v1/cluster", self.nodes[i].http))
            .bearer_auth(&self.admin);
        if let Some(k) = key {
            req = req.query(&[("key", k)]);
        }
        req.send().await.unwrap().json().await.unwrap()
    }

    /// Waits until every live node sees `n` members up.
    pub(crate) async fn wait_members(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut all = true;
            for (i, node) in self.nodes.iter().enumerate() {
                if !node.alive.load(Ordering::SeqCst) {
                    continue;
                }
                let s = self.status(i, None).await;
                let up = s["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["status"] == "up")
                    .count();
                all &= up == n;
            }
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the members did not converge on {n} up: {}",
                self.status(0, None).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn bases(&self) -> Vec<(String, Arc<AtomicBool>)> {
        self.nodes
            .iter()
            .map(|n| (n.http.clone(), n.alive.clone()))
            .collect()
    }

    pub(crate) async fn sign_up_many(&self, n: usize) -> Vec<(i64, String)> {
        let bases = self.bases();
        let futures = (0..n).map(|i| {
            let (base, _) = bases[i % bases.len()].clone();
            let client = self.client.clone();
            async move {
                let body = json!({"email": format!("u{i}@example.com"), "password": "correct horse battery", "name": "Member"});
                let r: Value = client
                    .post(format!("{base}/api/v1/auth/register"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (
                    r["user"]["id"].as_i64().expect("signed up"),
                    r["access_token"].as_str().unwrap().to_owned(),
                )
            }
        });
        futures::stream::iter(futures).buffered(100).collect().await
    }

    pub(crate) async fn create_event(&self, capacity: i64) -> i64 {
        let r: Value = self
            .client
            .post(format!("{}/api/v1/events", self.nodes[0].http))
            .bearer_auth(&self.admin)
            .json(&event_body(capacity))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["id"].as_i64().unwrap()
    }

    /// The index of the node that owns `key`.
    pub(crate) async fn owner_of(&self, key: &str) -> usize {
        let s = self.status(0, Some(key)).await;
        let owner = s["key"]["owner"].as_str().unwrap();
        self.nodes.iter().position(|n| n.name == owner).unwrap()
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i].alive.store(false, Ordering::SeqCst);
        self.nodes[i].child.start_kill().unwrap();
    }

    fn terminate(&self, i: usize) {
        let pid = self.nodes[i].child.id().unwrap();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Active registrations of an event in the database, their users, and the event's count.
    async fn seats_in_db(&self, event: i64) -> (HashSet<i64>, i64) {
        let mut db = sqlx::PgConnection::connect(&self.database).await.unwrap();
        let users: Vec<(i64,)> = sqlx::query_as(
            "SELECT user_id FROM event_registrations WHERE event_id = $1 AND status = 'active'",
        )
        .bind(event)
        .fetch_all(&mut db)
        .await
        .unwrap();
        let (count,): (i64,) = sqlx::query_as("SELECT registered_count FROM events WHERE id = $1")
            .bind(event)
            .fetch_one(&mut db)
            .await
            .unwrap();
        (users.into_iter().map(|(u,)| u).collect(), count)
    }

    /// `n` concurrent readers of `events` over `bases` (see [`read_load`]), until `stop`.
    fn readers(
        &self,
        n: usize,
        bases: Vec<(String, Arc<AtomicBool>)>,
        events: &[i64],
        stop: &Arc<AtomicBool>,
        healthy_only: bool,
    ) -> Vec<tokio::task::JoinHandle<(usize, Vec<String>)>> {
        (0..n)
            .map(|_| {
                tokio::spawn(read_load(
                    self.client.clone(),
                    bases.clone(),
                    self.admin.clone(),
                    events.to_vec(),
                    stop.clone(),
                    healthy_only,
                ))
            })
            .collect()
    }

    /// The sum of a counter over the live nodes.
    async fn metric_total(&self, name: &str) -> f64 {
        let mut total = 0.0;
        for node in self.nodes.iter().filter(|n| n.alive.load(Ordering::SeqCst)) {
            let text = self
                .client
                .get(format!("{}/metrics", node.http))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            total += text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} is not exported"))
                .parse::<f64>()
                .unwrap();
        }
        total
    }

    pub(crate) fn log(&self, i: usize) -> String {
        self.nodes[i].log.lock().unwrap().join("\n")
    }
}

/// How the clients' requests ended.
#[derive(Default)]
struct Tally {
    created: Mutex<Vec<i64>>,
    existing: AtomicUsize,
    full: AtomicUsize,
    retries: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

/// Registers `user` for `event`, trying the nodes round-robin from `start`. A 503 must carry
/// `Retry-After` and is retried; a node that refuses connections is dead and skipped; anything
/// else unexpected, or a request that hangs past the node's timeout, is a failure.
async fn register(
    client: &reqwest::Client,
    bases: &[(String, Arc<AtomicBool>)],
    event: i64,
    user: &(i64, String),
    start: usize,
    tally: &Tally,
) {
    for attempt in 0..60 {
        let (base, alive) = &bases[(start + attempt) % bases.len()];
        if !alive.load(Ordering::SeqCst) {
            continue;
        }
        let sent = Instant::now();
        let res = client
            .post(format!("{base}/api/v1/events/{event}/registrations"))
            .bearer_auth(&user.1)
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS * 2 + 2000))
            .send()
            .await;
        match res {
            Ok(r) => match r.status().as_u16() {
                201 => return tally.created.lock().unwrap().push(user.0),
                200 => {
                    tally.existing.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                409 => {
                    tally.full.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                503 => {
                    if r.headers().get("retry-after").is_none() {
                        tally
                            .failures
                            .lock()
                            .unwrap()
                            .push("503 without Retry-After".into());
                        return;
                    }
                    tally.retries.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => {
                    let body = r.text().await.unwrap_or_default();
                    tally
                        .failures
                        .lock()
                        .unwrap()
                        .push(format!("{other}: {body}"));
                    return;
                }
            },
            Err(e) if e.is_timeout() => {
                tally
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("no answer after {:?} from {base}", sent.elapsed()));
                return;
            }
            // The node is gone (connection refused or reset): the next node takes the retry.
            Err(_) => {
                tally.retries.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    tally
        .failures
        .lock()
        .unwrap()
        .push(format!("user {} never got an answer", user.0));
}

/// 1000 users register concurrently for one event of 100 seats, round-robin over the nodes;
/// `during` runs halfway: once half of the seats are taken, while the race is on.
async fn race_for_seats(
    cluster: &mut TestCluster,
    users: &[(i64, String)],
    event: i64,
    during: impl FnOnce(&mut TestCluster),
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let done = Arc::new(AtomicUsize::new(0));
    let bases = cluster.bases();
    let mut tasks = Vec::new();
    for (i, user) in users.iter().cloned().enumerate() {
        let (client, bases, tally, done) = (
            cluster.client.clone(),
            bases.clone(),
            tally.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            register(&client, &bases, event, &user, i, &tally).await;
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    while tally.created.lock().unwrap().len() < 50 && done.load(Ordering::SeqCst) < users.len() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    during(cluster);
    for t in tasks {
        t.await.unwrap();
    }
    tally
}

async fn check_no_oversell(cluster: &TestCluster, event: i64, tally: &Tally, users: usize) {
    println!(
        "created {}, existing {}, full {}, retried {}",
        tally.created.lock().unwrap().len(),
        tally.existing.load(Ordering::SeqCst),
        tally.full.load(Ordering::SeqCst),
        tally.retries.load(Ordering::SeqCst)
    );
    let failures = tally.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let created = tally.created.lock().unwrap().clone();
    let (seated, count) = cluster.seats_in_db(event).await;
    assert!(seated.len() <= 100, "oversold: {} seats", seated.len());
    assert_eq!(
        seated.len(),
        100,
        "every seat is taken once the retries succeed"
    );
    assert_eq!(count, 100, "the event's count agrees with its rows");
    for u in &created {
        assert!(seated.contains(u), "user {u} got 201 but holds no seat");
    }
    let answered =
        created.len() + tally.existing.load(Ordering::SeqCst) + tally.full.load(Ordering::SeqCst);
    assert_eq!(answered, users, "every request got an answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_place_forward_and_never_oversell() {
    let Some(mut cluster) = TestCluster::start(3).await else {
        return;
    };
    let users = cluster.sign_up_many(1000).await;
    let event = cluster.create_event(100).await;
    let tally = race_for_seats(&mut cluster, &users, event, |_| {}).await;
    check_no_oversell(&cluster, event, &tally, 1000).await;
    assert_eq!(tally.created.lock().unwrap().len(), 100);
    assert_eq!(tally.full.load(Ordering::SeqCst), 900);

    // Every node names the same owner, and two thirds of the requests were forwarded to it.
    let key = format!("event/{event}");
    let owner = cluster.owner_of(&key).await;
    for i in 0..3 {
        let s = cluster.status(i, Some(&key)).await;
        assert_eq!(s["key"]["owner"], cluster.nodes[owner].name.as_str());
        assert_eq!(s["members"].as_array().unwrap().len(), 3);
    }
    let forwarded = cluster
        .metric_total("convene_forwarded_messages_total")
        .await;
    assert!(forwarded >= 600.0, "forwarded {forwarded}");

    // The console prints the same members as a table.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convene"))
        .args([
            "cluster",
            "status",
            "--url",
            &cluster.nodes[1].http,
            "--key",
            &key,
        ])
        .env("CONVENE_TOKEN", &cluster.admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for node in &cluster.nodes {
        assert!(table.contains(&node.name), "{table}");
    }
    assert!(
        table.contains(&format!("{key} is owned by {}", cluster.nodes[owner].name)),
        "{table}"
    );
}

async fn kill_halfway(kill_owner: bool) {
    let Some(mut cluster) = TestCluster::start(3).await else {
        return;
    };
    let users = cluster.sign_up_many(1000).await;
    let event = cluster.create_event(100).await;
    let owner = cluster.owner_of(&format!("event/{event}")).await;
    let victim = if kill_owner { owner } else { (owner + 1) % 3 };
    let tally = race_for_seats(&mut cluster, &users, event, |c| c.kill(victim)).await;
    check_no_oversell(&cluster, event, &tally, 1000).await;

    // The survivors took over: the key has a live owner, and the dead node is down.
    let survivor = (victim + 1) % 3;
    let s = cluster
        .status(survivor, Some(&format!("event/{event}")))
        .await;
    assert_ne!(s["key"]["owner"], cluster.nodes[victim].name.as_str());
    let dead = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == cluster.nodes[victim].name.as_str())
        .unwrap()
        .clone();
    assert_eq!(dead["status"], "down", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_owner_halfway_loses_no_seat_and_oversells_none() {
    kill_halfway(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_non_owner_halfway_loses_no_seat_and_oversells_none() {
    kill_halfway(false).await;
}

/// Reads every event round-robin over the nodes, each read retried on 503; returns the
/// requests that failed.
async fn read_load(
    client: reqwest::Client,
    bases: Vec<(String, Arc<AtomicBool>)>,
    token: String,
    events: Vec<i64>,
    stop: Arc<AtomicBool>,
    healthy_only: bool,
) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut done = 0;
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let (base, alive) = &bases[i % bases.len()];
        if !alive.load(Ordering::SeqCst) {
            continue;
        }
        let event = events[i % events.len()];
        let mut answered = false;
        for _ in 0..20 {
            match client
                .get(format!("{base}/api/v1/events/{event}"))
                .bearer_auth(&token)
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => {
                    answered = true;
                    break;
                }
                Ok(r) if r.status() == 503 && !healthy_only => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(r) => {
                    failures.push(format!("{base}: {}", r.status()));
                    answered = true;
                    break;
                }
                Err(e) => {
                    failures.push(format!("{base}: {e}"));
                    answered = true;
                    break;
                }
            }
        }
        if !answered {
            failures.push(format!("{base}: event {event} never answered"));
        }
        done += 1;
    }
    (done, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_takes_a_fair_share_under_load() {
    let Some(mut cluster) = TestCluster::start(3).await else {
        return;
    };
    let mut events = Vec::new();
    for _ in 0..120 {
        events.push(cluster.create_event(50).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = cluster.readers(8, cluster.bases(), &events, &stop, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.cluster_ports.push(free_port());
    let fourth = cluster.spawn(3, "cookie-ok").await;
    cluster.nodes.push(fourth);
    cluster.wait_members(4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for l in load {
        let (done, failures) = l.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        total += done;
    }
    assert!(total > 0);

    // The new node owns about a quarter of the events, and serves them.
    let mut owned = [0usize; 4];
    for e in &events {
        owned[cluster.owner_of(&format!("event/{e}")).await] += 1;
    }
    println!("events owned per node after the join: {owned:?}");
    assert!((15..=50).contains(&owned[3]), "{owned:?}");
    let s = cluster.status(3, None).await;
    let active = s["members"][0]["entities"]["event"].as_u64().unwrap();
    assert!(active > 0, "{s}");
    let handoffs = cluster.metric_total("convene_entity_handoffs_total").await;
    assert!(handoffs > 0.0, "the old owners handed entities off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_a_node_with_zero_failed_requests() {
    let Some(mut cluster) = TestCluster::start(3).await else {
        return;
    };
    let mut events = Vec::new();
    for _ in 0..30 {
        events.push(cluster.create_event(50).await);
    }
    // A load balancer's view: a node is sent requests while its /health says healthy.
    let bases = cluster.bases();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (client, bases, stop) = (cluster.client.clone(), bases.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for (base, alive) in &bases {
                    let healthy = matches!(
                        client.get(format!("{base}/health")).send().await,
                        Ok(r) if r.status() == 200
                    );
                    alive.store(healthy, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let load = cluster.readers(6, bases.clone(), &events, &stop, true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leaving = cluster.owner_of(&format!("event/{}", events[0])).await;
    let started = Instant::now();
    cluster.terminate(leaving);
    let status = tokio::time::timeout(Duration::from_secs(25), cluster.nodes[leaving].child.wait())
        .await
        .expect("the node exits within its grace period")
        .unwrap();
    assert!(status.success(), "{}", cluster.log(leaving));
    println!("drained and exited in {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    let mut total = 0;
    for l in load {
        let (done, failures) = l.await.unwrap();
        assert!(
            failures.is_empty(),
            "failed requests during the drain: {failures:?}"
        );
        total += done;
    }
    assert!(total > 100, "{total} requests");
    assert!(cluster.log(leaving).contains("handing entities off"));
    let survivor = (leaving + 1) % 3;
    let s = cluster
        .status(survivor, Some(&format!("event/{}", events[0])))
        .await;
    assert_ne!(
        s["key"]["owner"],
        cluster.nodes[leaving].name.as_str(),
        "{s}"
    );
}

/// A token revoked on one node is refused by every node within a second, without a database
/// read: each node holds the revocations in memory, told by the node that revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_is_refused_on_every_node_within_a_second() {
    let Some(cluster) = TestCluster::start(3).await else {
        return;
    };
    let (_, token) = cluster.sign_up_many(1).await.remove(0);
    let me = |i: usize| {
        cluster
            .client
            .get(format!("{}/api/v1/users/me", cluster.nodes[i].http))
            .bearer_auth(&token)
            .send()
    };
    for i in 0..3 {
        assert_eq!(
            me(i).await.unwrap().status(),
            200,
            "node-{i} takes the token"
        );
    }
    let logout = cluster
        .client
        .post(format!("{}/api/v1/auth/logout", cluster.nodes[1].http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let revoked_at = Instant::now();
    for i in 0..3 {
        loop {
            let status = me(i).await.unwrap().status();
            if status == 401 {
                break;
            }
            assert_eq!(status, 200);
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "node-{i} still takes the token a second after it was revoked"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A node that starts later loads the revocation from the store.
    let mut cluster = cluster;
    cluster.cluster_ports.push(free_port());
    let late = cluster.spawn(3, "cookie-ok").await;
    let status = cluster
        .client
        .get(format!("{}/api/v1/users/me", late.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        status, 401,
        "a node started after the logout refuses the token"
    );
    cluster.nodes.push(late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_the_wrong_cookie_is_refused() {
    let Some(mut cluster) = TestCluster::start(1).await else {
        return;
    };
    cluster.cluster_ports.push(free_port());
    let intruder = cluster.spawn(1, "not-the-cookie").await;
    cluster.nodes.push(intruder);
    let refused = |c: &TestCluster, i: usize| c.log(i).contains("cluster peer refused");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(refused(&cluster, 0) && refused(&cluster, 1)) {
        assert!(
            Instant::now() < deadline,
            "the refusal is not logged on both sides:\n--- node-0\n{}\n--- node-1\n{}",
            cluster.log(0),
            cluster.log(1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = cluster.status(0, None).await;
    let names: Vec<&str> = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node-0"], "the intruder never became a member");
}

#[tokio::test]
async fn a_cluster_on_sqlite_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("convene-sqlite-{}", uuid::Uuid::new_v4()));
    let _cleanup = TempDir(dir.clone());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convene"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cluster-listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(["--cookie", "c", "--seeds", "127.0.0.1:1"])
        .env_clear()
        .env("CONVENE_DATA_DIR", &dir)
        .env("CONVENE_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a cluster needs a PostgreSQL database"),
        "{err}"
    );
}

/// Reads `client`'s frames until it has seen `n` messages; returns them and the other frames.
async fn messages(client: &mut Client, n: usize, seen: &mut Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = seen
        .iter()
        .filter(|v| v["op"] == "message")
        .cloned()
        .collect();
    seen.retain(|v| v["op"] != "message");
    while out.len() < n {
        let v = client.next().await.expect("open");
        if v["op"] == "message" {
            out.push(v);
        } else {
            seen.push(v);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_spans_nodes_with_one_order_and_one_presence() {
    let Some(cluster) = TestCluster::start(3).await else {
        return;
    };
    let users = cluster.sign_up_many(3).await;
    let room = "room:span";
    let mut clients = Vec::new();
    for (i, (_, token)) in users.iter().enumerate() {
        let mut c = Client::connect_to(&cluster.nodes[i].http, token).await;
        c.join(room, None).await;
        clients.push(c);
    }
    let owner = cluster.owner_of(&format!("room/{room}")).await;
    println!("room owned by node-{owner}");
    // Everyone publishes, interleaved, from every node.
    for round in 0..4 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.publish(
                room,
                json!({"from_node": i, "round": round}),
                round * 10 + i as i64,
            )
            .await;
        }
    }
    let mut orders = Vec::new();
    let mut others = [Vec::new(), Vec::new(), Vec::new()];
    for (i, c) in clients.iter_mut().enumerate() {
        let got = messages(c, 12, &mut others[i]).await;
        let order: Vec<(i64, Value)> = got
            .iter()
            .map(|m| (m["seq"].as_i64().unwrap(), m["body"].clone()))
            .collect();
        orders.push(order);
    }
    assert_eq!(
        orders[0].iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>(),
        "gap-free seq"
    );
    assert_eq!(orders[0], orders[1], "node-0 and node-1 see the same order");
    assert_eq!(orders[0], orders[2], "node-0 and node-2 see the same order");

    // The first joiner sees the others arrive from their nodes, and the REST presence (asked on
    // any node) lists all three. Presence diffs are gathered over 20 ms and are not ordered with
    // messages, so the last diff may still be on its way after the twelfth message.
    let joins_in = |frames: &[Value]| -> HashSet<String> {
        frames
            .iter()
            .filter(|v| v["op"] == "presence_diff")
            .flat_map(|v| {
                v["joins"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let expected: Vec<String> = users[1..].iter().map(|(id, _)| id.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !expected.iter().all(|id| joins_in(&others[0]).contains(id)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, clients[0].next()).await {
            Ok(frame) => others[0].push(frame.expect("open")),
            Err(_) => panic!(
                "the first joiner never saw {expected:?} join: {:?}",
                joins_in(&others[0])
            ),
        }
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        let p: Value = cluster
            .client
            .get(format!("{}/api/v1/rooms/{room}/presence", node.http))
            .bearer_auth(&users[i].1)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(p["presences"].as_object().unwrap().len(), 3, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_nodes_leave_rooms_and_a_dead_owner_loses_no_acknowledged_message() {
    let Some(mut cluster) = TestCluster::start(3).await else {
        return;
    };
    let users = cluster.sign_up_many(3).await;
    let room = "room:survive";
    let owner = cluster.owner_of(&format!("room/{room}")).await;
    let (gone, stays) = ((owner + 1) % 3, (owner + 2) % 3);
    let mut on_owner = Client::connect_to(&cluster.nodes[owner].http, &users[owner].1).await;
    let mut on_gone = Client::connect_to(&cluster.nodes[gone].http, &users[gone].1).await;
    let mut on_stays = Client::connect_to(&cluster.nodes[stays].http, &users[stays].1).await;
    on_owner.join(room, None).await;
    on_gone.join(room, None).await;
    on_stays.join(room, None).await;

    // A node that dies: its connections' presences leave everywhere within 10 s.
    let killed = Instant::now();
    cluster.kill(gone);
    let gone_user = users[gone].0.to_string();
    loop {
        let v = on_stays.next().await.expect("open");
        if v["op"] == "presence_diff" && v["leaves"].get(&gone_user).is_some() {
            break;
        }
    }
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "{:?}",
        killed.elapsed()
    );

    // Acknowledged messages, then the room's owner dies.
    let mut seqs = Vec::new();
    for n in 0..3 {
        on_stays.publish(room, json!({"n": n}), n).await;
        let mut seen = Vec::new();
        let r = reply_to(&mut on_stays, n, &mut seen).await;
        assert_eq!(r["status"], "ok", "{r}");
        seqs.push(r["body"]["seq"].as_i64().unwrap());
    }
    cluster.kill(owner);
    drop(on_owner);

    // The room comes back on the survivor, history intact: a client that reconnects with
    // `since` gets every acknowledged message, and the sequence goes on.
    // A join that was on its way to the dead owner gets `unavailable`: the client retries.
    let mut again = Client::connect_to(&cluster.nodes[stays].http, &users[stays].1).await;
    let mut attempts = 0;
    loop {
        again
            .send(json!({"op": "join", "room": room, "ref": "j", "since": 0}))
            .await;
        let r = again.expect("reply").await;
        if r["status"] == "ok" {
            break;
        }
        assert_eq!(r["body"]["reason"], "unavailable", "{r}");
        attempts += 1;
        assert!(attempts < 50, "the room never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    again.expect("presence_state").await;
    let mut seen = Vec::new();
    let missed = messages(&mut again, seqs.len(), &mut seen).await;
    assert_eq!(
        missed
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        seqs
    );
    again.publish(room, json!({"after": "failover"}), 99).await;
    let r = reply_to(&mut again, 99, &mut seen).await;
    assert_eq!(r["body"]["seq"].as_i64(), Some(seqs[2] + 1), "{r}");

    // Only the survivor's user is present once the dead owner's connection is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p: Value = cluster
            .client
            .get(format!(
                "{}/api/v1/rooms/{room}/presence",
                cluster.nodes[stays].http
            ))
            .bearer_auth(&users[stays].1)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let present: Vec<String> = p["presences"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        if present == [users[stays].0.to_string()] {
            break;
        }
        assert!(Instant::now() < deadline, "{p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_moves_with_its_owner_on_sigterm() {
    let Some(mut cluster) = TestCluster::start(3).await else {
        return;
    };
    let users = cluster.sign_up_many(3).await;
    let room = "room:moving";
    let owner = cluster.owner_of(&format!("room/{room}")).await;
    let (a, b) = ((owner + 1) % 3, (owner + 2) % 3);
    let mut ca = Client::connect_to(&cluster.nodes[a].http, &users[a].1).await;
    let mut cb = Client::connect_to(&cluster.nodes[b].http, &users[b].1).await;
    ca.join(room, None).await;
    cb.join(room, None).await;
    ca.publish(room, json!({"before": true}), 1).await;
    let mut seen = Vec::new();
    assert_eq!(reply_to(&mut ca, 1, &mut seen).await["body"]["seq"], 1);

    // The owner leaves gracefully: the room moves to a survivor, which takes both members
    // back; the sequence goes on and both members still see every message.
    cluster.terminate(owner);
    let exited = tokio::time::timeout(Duration::from_secs(25), cluster.nodes[owner].child.wait())
        .await
        .expect("the owner exits within its grace period")
        .unwrap();
    assert!(exited.success());
    cluster.nodes[owner].alive.store(false, Ordering::SeqCst);
    let moved = cluster.owner_of(&format!("room/{room}")).await;
    assert_ne!(moved, owner);
    cb.publish(room, json!({"after": true}), 2).await;
    let mut seen_b = Vec::new();
    let r = reply_to(&mut cb, 2, &mut seen_b).await;
    assert_eq!(r["body"]["seq"], 2, "{r}");
    for (c, frames) in [(&mut ca, &mut seen), (&mut cb, &mut seen_b)] {
        let got = messages(c, 2, frames).await;
        let seqs: Vec<i64> = got.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, [1, 2]);
    }
    let p: Value = cluster
        .client
        .get(format!(
            "{}/api/v1/rooms/{room}/presence",
            cluster.nodes[a].http
        ))
        .bearer_auth(&users[a].1)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["presences"].as_object().unwrap().len(), 2, "{p}");
}

/// Which node holds the relay's lease, by index.
async fn relay_holder(cluster: &TestCluster) -> Option<usize> {
    let mut db = sqlx::PgConnection::connect(&cluster.database)
        .await
        .unwrap();
    let holder: Option<(String,)> =
        sqlx::query_as("SELECT holder FROM leases WHERE name = 'relay' AND expires_at > NOW()")
            .fetch_optional(&mut db)
            .await
            .unwrap();
    let (holder,) = holder?;
    let name = holder.split('/').next().unwrap();
    cluster.nodes.iter().position(|n| n.name == name)
}

async fn create_events_on(cluster: &TestCluster, node: usize, n: usize) {
    for _ in 0..n {
        let r = cluster
            .client
            .post(format!("{}/api/v1/events", cluster.nodes[node].http))
            .bearer_auth(&cluster.admin)
            .json(&event_body(5))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_node_hands_the_outbox_to_another_and_loses_nothing() {
    let nats_url = crate::helpers::service_url("NATS_URL", "nats://127.0.0.1:4222");
    let Some(client) = crate::bus::nats_client(&nats_url).await else {
        return;
    };
    let (prefix, stream) = crate::bus::names();
    let env = vec![
        ("CONVENE_NATS_URL".to_owned(), nats_url),
        ("CONVENE_BUS_PREFIX".to_owned(), prefix),
        ("CONVENE_NATS_STREAM".to_owned(), stream.clone()),
        ("CONVENE_RELAY_LEASE_MS".to_owned(), "1500".to_owned()),
    ];
    let Some(mut cluster) = TestCluster::start_with(3, env).await else {
        return;
    };
    let mut holder = None;
    for _ in 0..100 {
        holder = relay_holder(&cluster).await;
        if holder.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let holder = holder.expect("one node takes the relay lease");
    let other = (holder + 1) % 3;
    create_events_on(&cluster, other, 20).await;
    cluster.kill(holder);
    // Written while the relay's node is dead and its lease not yet expired.
    create_events_on(&cluster, other, 20).await;
    let mut db = sqlx::PgConnection::connect(&cluster.database)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (pending,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM outbox o JOIN outbox_cursors c ON c.name = 'relay' \
             WHERE (o.xid, o.id) > (c.xid, c.id)",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} rows still pending; logs:\n{}",
            cluster.log(other)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let next = relay_holder(&cluster).await.expect("a live node relays");
    assert_ne!(next, holder);
    let rows = crate::bus::outbox(&cluster.database).await;
    let seen = crate::bus::read_stream(&client, &stream).await;
    crate::bus::check_exactly_once_in_order(&rows, &seen);
}

/// Every node keeps its own search index: an event created through one node is found through
/// the others, and a deletion reaches them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_searchable_on_every_node_soon_after_its_commit() {
    let Some(cluster) = TestCluster::start(3).await else {
        return;
    };
    let found_on = |node: usize, id: i64| {
        let url = format!(
            "{}/api/v1/search/events?q=lyon&limit=100",
            cluster.nodes[node].http
        );
        let client = cluster.client.clone();
        async move {
            let r = client.get(&url).send().await.unwrap();
            let body: Value = r.json().await.unwrap();
            body["hits"]
                .as_array()
                .is_some_and(|h| h.iter().any(|h| h["event"]["id"] == id))
        }
    };
    let id = cluster.create_event(5).await;
    let created = Instant::now();
    for node in 1..3 {
        let ok = eventually(Duration::from_secs(5), || found_on(node, id)).await;
        assert!(
            ok,
            "node {node} does not find event {id}:\n{}",
            cluster.log(node)
        );
    }
    println!(
        "found on every node {} ms after the commit",
        created.elapsed().as_millis()
    );
    let r = cluster
        .client
        .delete(format!("{}/api/v1/events/{id}", cluster.nodes[2].http))
        .bearer_auth(&cluster.admin)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    for node in 0..3 {
        let gone = eventually(Duration::from_secs(5), || async {
            !found_on(node, id).await
        })
        .await;
        assert!(gone, "node {node} still finds deleted event {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_carries_its_trace_id_into_the_owners_logs() {
    let env = vec![(
        "RUST_LOG".to_owned(),
        "warn,convene=info,convene_cluster=debug".to_owned(),
    )];
    let Some(cluster) = TestCluster::start_with(3, env).await else {
        return;
    };
    let event = cluster.create_event(5).await;
    let owner = cluster.owner_of(&format!("event/{event}")).await;
    let edge = (owner + 1) % 3;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let res = cluster
        .client
        .get(format!(
            "{}/api/v1/events/{event}",
            cluster.nodes[edge].http
        ))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echoed = res.headers()["traceparent"].to_str().unwrap().to_owned();
    assert!(echoed.starts_with(&format!("00-{trace_id}-")), "{echoed}");
    for (node, what) in [
        (edge, "forwarding to the owner"),
        (owner, "forwarded message for this node"),
    ] {
        let found = eventually(Duration::from_secs(5), || async {
            cluster
                .log(node)
                .lines()
                .any(|l| l.contains(trace_id) && l.contains(what))
        })
        .await;
        assert!(
            found,
            "node-{node} logs `{what}` with the trace id:\n{}",
            cluster.log(node)
        );
    }
    // A request without one starts a trace of its own.
    let res = cluster
        .client
        .get(format!(
            "{}/api/v1/events/{event}",
            cluster.nodes[edge].http
        ))
        .send()
        .await
        .unwrap();
    let fresh = res.headers()["traceparent"].to_str().unwrap().to_owned();
    assert!(!fresh.contains(trace_id) && fresh.len() == 55, "{fresh}");

    // A WebSocket connection's frames are in the trace of its upgrade request, and travel with
    // it to the room's owner.
    let mut i = 0;
    let room = loop {
        let room = format!("room:traced-{i}");
        if cluster.owner_of(&format!("room/{room}")).await != edge {
            break room;
        }
        i += 1;
    };
    let ws_trace = "7bf92f3577b34da6a3ce929d0e0e4736";
    let (_, token) = cluster.sign_up_many(1).await.remove(0);
    let mut client = Client::connect_traced(
        &cluster.nodes[edge].http,
        &token,
        &format!("00-{ws_trace}-00f067aa0ba902b7-01"),
    )
    .await;
    client
        .send(json!({"op": "join", "room": room, "ref": 1}))
        .await;
    let joined = reply_to(&mut client, 1, &mut Vec::new()).await;
    assert_eq!(joined["status"], "ok", "{joined}");
    let owner = cluster.owner_of(&format!("room/{room}")).await;
    let found = eventually(Duration::from_secs(5), || async {
        cluster
            .log(owner)
            .lines()
            .any(|l| l.contains(ws_trace) && l.contains("forwarded message for this node"))
    })
    .await;
    assert!(
        found,
        "the room's owner logs the frame's trace id:\n{}",
        cluster.log(owner)
    );
}

fn signal(cluster: &TestCluster, i: usize, signal: &str) {
    let pid = cluster.nodes[i].child.id().unwrap();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// `convene_breaker_open` of the breaker `dependency` on node `i`.
async fn breaker_open(cluster: &TestCluster, i: usize, dependency: &str) -> Option<i64> {
    let text = crate::helpers::metrics_text(&cluster.client, &cluster.nodes[i].http).await;
    let prefix = format!("convene_breaker_open{{dependency=\"{dependency}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_member_trips_its_breaker_and_is_used_again_once_it_answers() {
    let Some(cluster) = TestCluster::start(2).await else {
        return;
    };
    let key = |e: i64| format!("event/{e}");
    let event = loop {
        let e = cluster.create_event(5).await;
        if cluster.owner_of(&key(e)).await == 1 {
            break e;
        }
    };
    let url = format!("{}/api/v1/events/{event}", cluster.nodes[0].http);
    // As many connections as reads below, open and pooled, so those go out at once.
    let reads = 8;
    let warm = futures::future::join_all((0..reads).map(|_| cluster.client.get(&url).send())).await;
    for r in warm {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(breaker_open(&cluster, 0, "peer:node-1").await, Some(0));
    signal(&cluster, 1, "STOP");
    // Reads forwarded to the frozen member wait for their deadline and fail; its breaker
    // opens after 5 failures in a row, and the member is taken for lost: its keys are served
    // here meanwhile. A read that a loaded machine delays until then is answered here (200).
    let waited =
        futures::future::join_all((0..reads).map(|_| cluster.client.get(&url).send())).await;
    let statuses: Vec<u16> = waited
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );
    let failed = statuses.iter().filter(|s| **s == 503).count();
    assert!(
        failed >= 5,
        "reads forwarded to the frozen member fail: {statuses:?}"
    );
    // The edge answers at the request's deadline, the forwards fail at theirs: the last
    // failure may be counted just after the last answer.
    let opened = eventually(Duration::from_secs(3), || async {
        breaker_open(&cluster, 0, "peer:node-1").await == Some(1)
    })
    .await;
    assert!(opened, "the breaker of the frozen member did not open");
    assert_eq!(cluster.client.get(&url).send().await.unwrap().status(), 200);
    // Thawed, it is a member again, owns its keys, and once a forward goes through (after the
    // breaker's pause) the breaker closes.
    signal(&cluster, 1, "CONT");
    let back = eventually(Duration::from_secs(20), || async {
        cluster.owner_of(&key(event)).await == 1
            && cluster.client.get(&url).send().await.unwrap().status() == 200
            && breaker_open(&cluster, 0, "peer:node-1").await == Some(0)
    })
    .await;
    assert!(back, "the member serves again once it answers");
}

/// A span an OTLP receiver got: name, trace id, span id, parent span id, node.
type Received = (String, String, String, String, String);

/// An OTLP/HTTP traces endpoint (protobuf `ExportTraceServiceRequest`s, as a collector takes
/// them) on a free port; what it received.
async fn otlp_receiver() -> (u16, Arc<Mutex<Vec<Received>>>) {
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                    for resource in request.resource_spans {
                        let node = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.instance.id")
                            .and_then(|a| a.value.as_ref())
                            .map(|v| format!("{:?}", v.value))
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                sink.lock().unwrap().push((
                                    span.name,
                                    hex(&span.trace_id),
                                    hex(&span.span_id),
                                    hex(&span.parent_span_id),
                                    node.clone(),
                                ));
                            }
                        }
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if stream.get_mut().write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_a_forwarded_request_reach_the_collector_as_one_trace() {
    let (port, received) = otlp_receiver().await;
    let env = vec![(
        "CONVENE_OTLP_ENDPOINT".to_owned(),
        format!("http://127.0.0.1:{port}/v1/traces"),
    )];
    let Some(cluster) = TestCluster::start_with(2, env).await else {
        return;
    };
    let event = cluster.create_event(5).await;
    let owner = cluster.owner_of(&format!("event/{event}")).await;
    let edge = 1 - owner;
    let (trace, caller) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let res = cluster
        .client
        .get(format!(
            "{}/api/v1/events/{event}",
            cluster.nodes[edge].http
        ))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echoed = res.headers()["traceparent"].to_str().unwrap().to_owned();
    let request_span = echoed.split('-').nth(2).unwrap().to_owned();
    assert!(echoed.starts_with(&format!("00-{trace}-")), "{echoed}");
    assert_ne!(
        request_span, caller,
        "the edge's span is a child of the caller's"
    );
    let found = |name: &str, parent: &str, node: &str| {
        received
            .lock()
            .unwrap()
            .iter()
            .any(|(n, t, _, p, at)| n == name && t == trace && p == parent && at.contains(node))
    };
    let exported = eventually(Duration::from_secs(15), || async {
        found("request", caller, &cluster.nodes[edge].name)
            && found("forwarded", &request_span, &cluster.nodes[owner].name)
    })
    .await;
    assert!(
        exported,
        "both nodes' spans in one trace: {:?}",
        received.lock().unwrap()
    );
    let request = received
        .lock()
        .unwrap()
        .iter()
        .find(|(n, t, ..)| n == "request" && t == trace)
        .cloned()
        .unwrap();
    assert_eq!(
        request.2, request_span,
        "the echoed traceparent names the exported span"
    );
}

//! Brokers of a test's own, on free ports with their own data directories, for the tests that
//! kill and restart them: a NATS server with JetStream, and an Apache Kafka broker started from
//! the classpath `scripts/services up` collected. The shared servers are never disturbed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::process::{Child, Command};

use crate::helpers::{TempDir, eventually, free_port, unavailable};

/// A NATS server of the test's own, on a free port, with its JetStream store in `dir`.
pub struct OwnNats {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

fn nats_server_binary() -> Option<String> {
    for candidate in [
        "nats-server",
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
    ] {
        let found = std::process::Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return Some(candidate.to_owned());
        }
    }
    None
}

impl OwnNats {
    pub fn new() -> Option<Self> {
        if nats_server_binary().is_none() {
            unavailable("nats-server", "not installed");
            return None;
        }
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("convene-nats-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Some(Self {
            port,
            dir: TempDir(dir),
            child: None,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn start(&mut self) {
        let child = Command::new(nats_server_binary().unwrap())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        assert!(
            eventually(Duration::from_secs(10), || async {
                tokio::net::TcpStream::connect(&addr).await.is_ok()
            })
            .await,
            "nats-server did not start on {addr}"
        );
    }

    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

/// The directory of the Kafka broker's jars, as `scripts/services kafka-classpath` tells.
fn kafka_classpath() -> Option<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/services");
    let out = std::process::Command::new(script)
        .arg("kafka-classpath")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && dir.is_dir()).then_some(dir)
}

/// A single-node KRaft Kafka broker of the test's own.
pub struct OwnKafka {
    port: u16,
    dir: TempDir,
    classpath: PathBuf,
    child: Option<Child>,
}

impl OwnKafka {
    /// Configures and formats a broker; `None` (and the reason) when Java or the classpath is
    /// missing.
    pub async fn new() -> Option<Self> {
        let Some(classpath) = kafka_classpath() else {
            unavailable("Kafka's classpath", "scripts/services up collects it");
            return None;
        };
        let (port, controller) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("convene-kafka-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let properties = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             inter.broker.listener.name=PLAINTEXT\n\
             controller.listener.names=CONTROLLER\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
             log.dirs={logs}\n\
             num.partitions=1\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=1\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=1\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n",
            logs = dir.join("logs").display()
        );
        std::fs::write(dir.join("server.properties"), properties).unwrap();
        // As Kafka's own ids: never one starting with `-`, which its command line takes for an
        // option.
        let cluster_id = std::iter::repeat_with(|| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
        })
        .find(|id| !id.starts_with('-'))
        .expect("an id");
        let kafka = Self {
            port,
            dir: TempDir(dir),
            classpath,
            child: None,
        };
        let formatted = kafka
            .java()
            .args(["kafka.tools.StorageTool", "format", "-t", &cluster_id, "-c"])
            .arg(kafka.dir.0.join("server.properties"))
            .stdout(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(formatted.success(), "formatting the Kafka storage failed");
        Some(kafka)
    }

    fn java(&self) -> Command {
        let mut java = Command::new("java");
        java.arg("-Xms128m")
            .arg("-Xmx384m")
            .arg(format!(
                "-Dlog4j2.configurationFile={}/scripts/kafka/log4j2.properties",
                env!("CARGO_MANIFEST_DIR")
            ))
            .arg("-cp")
            .arg(format!("{}/*", self.classpath.display()));
        java
    }

    /// `127.0.0.1:PORT`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker and waits until it answers a metadata request.
    pub async fn start(&mut self) {
        let log = std::fs::File::create(self.dir.0.join("kafka.log")).unwrap();
        let child = self
            .java()
            .arg("kafka.Kafka")
            .arg(self.dir.0.join("server.properties"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let brokers = self.brokers();
        let ready = eventually(Duration::from_secs(90), || {
            let brokers = brokers.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let consumer: BaseConsumer = ClientConfig::new()
                        .set("bootstrap.servers", &brokers)
                        .create()
                        .unwrap();
                    consumer
                        .fetch_metadata(None, Duration::from_secs(2))
                        .is_ok_and(|m| !m.brokers().is_empty())
                })
                .await
                .unwrap()
            }
        })
        .await;
        assert!(
            ready,
            "the test's Kafka broker did not start:\n{}",
            std::fs::read_to_string(self.dir.0.join("kafka.log")).unwrap_or_default()
        );
    }

    /// Kills the broker at once (SIGKILL).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

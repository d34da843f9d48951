//! Configuration: the embedded `config/default.toml`, then an optional file, then `CONVENE_*`
//! environment variables (and `DATABASE_URL`), then command-line flags. Unknown keys are errors.
//! The environment is passed in, so tests inject theirs.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::{Deserialize, Serialize};

const DEFAULT: &str = include_str!("../config/default.toml");

/// `CONVENE_*` variables the command line reads (`CONVENE_CONFIG`, `CONVENE_TOKEN`); they are
/// not settings.
const COMMAND_LINE_VARS: [&str; 2] = ["config", "token"];

/// A secret string that never shows in logs or debug output.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Everything a node is configured with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP listener.
    pub listen: SocketAddr,
    /// Where local files live.
    pub data_dir: PathBuf,
    /// This node's name.
    pub node_name: String,
    /// PostgreSQL URL; unset means SQLite under `data_dir`.
    pub database_url: Option<Secret>,
    /// Pool size for PostgreSQL.
    pub database_max_connections: u32,
    /// Token signing secret; unset means one generated and kept under `data_dir`.
    pub jwt_secret: Option<Secret>,
    /// Token lifetime.
    pub token_ttl_secs: i64,
    /// argon2id memory cost.
    pub password_hash_memory_kib: u32,
    /// argon2id passes.
    pub password_hash_iterations: u32,
    /// Idle time before an entity is passivated.
    pub passivate_after_secs: u64,
    /// How long an edge waits for an entity.
    pub request_timeout_ms: u64,
    /// Largest request body.
    pub max_body_bytes: u64,
    /// `text` or `json` logs.
    pub log_format: String,
    /// Frames queued per WebSocket connection.
    pub ws_outbound_queue: usize,
    /// Publishes per WebSocket connection per second.
    pub ws_publish_per_sec: u32,
    /// Server ping period; silence for twice as long drops the connection.
    pub ws_heartbeat_secs: u64,
    /// Connections above which a room sends presence counts instead of lists.
    pub room_presence_limit: usize,
    /// Origins that browsers may call the API from (`https://app.example.com`); empty sends
    /// no CORS headers, so browsers keep pages of other origins out.
    #[serde(deserialize_with = "list")]
    pub cors_origins: Vec<String>,
    /// How long browsers may cache a CORS preflight's answer.
    pub cors_max_age_secs: u64,
    /// Redis, shared by the nodes for the rate limits and the caches; unset keeps both per node.
    pub redis_url: Option<Secret>,
    /// Where spans are exported by OTLP/HTTP (an OpenTelemetry collector's traces URL, such as
    /// `http://otel-collector:4318/v1/traces`); unset exports nothing.
    pub otlp_endpoint: Option<String>,
    /// How long an event's details stay in the shared cache (changes make them stale at once).
    pub cache_event_ttl_secs: u64,
    /// How long search results stay cached (a change to the index makes them stale at once).
    pub cache_search_ttl_secs: u64,
    /// How long a user's recommendations stay cached (what they do makes them stale at once).
    pub cache_recommendations_ttl_secs: u64,
    /// Requests per second the whole cluster takes (0: no limit), and the burst above it.
    pub rate_limit_global_per_sec: u32,
    /// See `rate_limit_global_per_sec`.
    pub rate_limit_global_burst: u32,
    /// Requests per second one signed-in user may send (0: no limit), and the burst.
    pub rate_limit_user_per_sec: u32,
    /// See `rate_limit_user_per_sec`.
    pub rate_limit_user_burst: u32,
    /// Requests per second one client address may send (0: no limit), and the burst.
    pub rate_limit_ip_per_sec: u32,
    /// See `rate_limit_ip_per_sec`.
    pub rate_limit_ip_burst: u32,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed: the client of a
    /// request they pass on is the last address in it that is not one of them.
    #[serde(deserialize_with = "list")]
    pub trusted_proxies: Vec<String>,
    /// Node-to-node listener; set (or give seeds) to run as a member of a cluster.
    pub cluster_listen: Option<SocketAddr>,
    /// The host other nodes reach this one at (default: the listener's address, or the
    /// machine's host name when it listens on every interface).
    pub cluster_advertise: Option<String>,
    /// The shared secret of the cluster's nodes.
    pub cookie: Option<Secret>,
    /// Other nodes: `host:port` node-to-node addresses, or `dns:NAME:PORT`.
    #[serde(deserialize_with = "list")]
    pub seeds: Vec<String>,
    /// Heartbeat period between members.
    pub heartbeat_ms: u64,
    /// A member silent this long is marked down.
    pub down_after_ms: u64,
    /// On SIGTERM, the most a node takes to hand off its entities and exit.
    pub drain_grace_secs: u64,
    /// NATS server(s) with JetStream; unset means no NATS.
    pub nats_url: Option<Secret>,
    /// Kafka bootstrap servers; unset means no Kafka.
    pub kafka_brokers: Option<String>,
    /// Put in front of every subject and topic.
    pub bus_prefix: String,
    /// The JetStream stream the relay publishes into (created if missing).
    pub nats_stream: String,
    /// The Kafka consumer group of the command topic (under the prefix).
    pub kafka_group: String,
    /// Partitions of the Kafka topics the relay creates.
    pub kafka_partitions: i32,
    /// Outbox rows relayed per round.
    pub outbox_batch: usize,
    /// Lifetime of the relay's lease.
    pub relay_lease_ms: u64,
    /// Published outbox rows are kept this long.
    pub outbox_retention_secs: u64,
    /// Factors of the recommendations' matrix factorisation.
    pub recommend_rank: usize,
    /// Its multiplicative updates per training.
    pub recommend_rounds: usize,
    /// Neighbours kept per event by the collaborative engine.
    pub recommend_neighbours: usize,
    /// The hybrid's weight of collaborative filtering.
    pub recommend_weight_collaborative: f32,
    /// The hybrid's weight of the content-based engine.
    pub recommend_weight_content: f32,
    /// The hybrid's weight of matrix factorisation.
    pub recommend_weight_factorisation: f32,
    /// Workers serving recommendations on each node.
    pub recommend_workers: usize,
    /// The trainer retrains at least this often.
    pub recommend_retrain_secs: u64,
    /// ...and as soon as this many interactions arrived since the last model,
    pub recommend_retrain_after: u64,
    /// ...once this long after the last training.
    pub recommend_retrain_gap_secs: u64,
    /// Models kept in the database (older ones are deleted).
    pub recommend_models_kept: i64,
    /// Users whose recommendations are worked out at training time, the most active first
    /// (0: none); the others are scored when they ask.
    pub recommend_precomputed_users: usize,
    /// Raw analytics events are kept this many days.
    pub analytics_retention_days: u64,
    /// Per-minute analytics aggregates are kept this many days.
    pub analytics_summary_retention_days: u64,
    /// The robust z-score from which a minute's rate is an anomaly.
    pub anomaly_z: f64,
    /// ...and the least distance from the usual rate, in events per minute.
    pub anomaly_min_delta: f64,
    /// The NATS↔Kafka bridge's routes (none by default).
    #[serde(default)]
    pub bridge: crate::bus::bridge::BridgeConfig,
}

impl Config {
    /// How models are trained.
    pub fn recommend_settings(&self) -> convene_actors::recommend::Settings {
        convene_actors::recommend::Settings {
            rank: self.recommend_rank.max(1),
            rounds: self.recommend_rounds,
            neighbours: self.recommend_neighbours.max(1),
            weights: convene_actors::recommend::Weights {
                collaborative: self.recommend_weight_collaborative.max(0.0),
                content: self.recommend_weight_content.max(0.0),
                factorisation: self.recommend_weight_factorisation.max(0.0),
            },
            seed: 42,
        }
    }

    /// Whether this node is to be a member of a cluster.
    pub fn clustered(&self) -> bool {
        self.cluster_listen.is_some() || !self.seeds.is_empty()
    }
}

/// A list given either as a list or as one comma-separated string (as in the environment).
fn list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s,
        OneOrMany::Many(v) => v.join(","),
    }
    .split(',')
    .map(str::trim)
    .filter(|s| !s.is_empty())
    .map(str::to_owned)
    .collect())
}

/// Values given on the command line, which win over everything else.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--node-name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `--cluster-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_listen: Option<SocketAddr>,
    /// `--cookie`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// `--seeds`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeds: Option<String>,
}

impl Config {
    /// Loads the configuration from the layers above; `env` is the process environment.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Toml::string(DEFAULT));
        if let Some(file) = file {
            if !file.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    file.display()
                ))));
            }
            figment = figment.merge(Toml::file(file));
        }
        let mut vars = Dict::new();
        let mut prefixed = Dict::new();
        for (k, v) in env {
            let value: Value = v.parse().unwrap_or_else(|_| Value::from(v.clone()));
            if k == "DATABASE_URL" {
                vars.insert("database_url".into(), Value::from(v));
            } else if let Some(key) = k.strip_prefix("CONVENE_") {
                let key = key.to_ascii_lowercase();
                if COMMAND_LINE_VARS.contains(&key.as_str()) {
                    continue;
                }
                // Secrets and URLs stay strings even when they look like numbers.
                let value = match key.as_str() {
                    "jwt_secret" | "database_url" | "node_name" | "data_dir" | "cookie"
                    | "seeds" | "cors_origins" | "cluster_advertise" | "nats_url"
                    | "kafka_brokers" | "bus_prefix" | "nats_stream" | "redis_url"
                    | "otlp_endpoint" | "trusted_proxies" => Value::from(v),
                    _ => value,
                };
                prefixed.insert(key, value);
            }
        }
        figment
            .merge(Serialized::globals(vars))
            .merge(Serialized::globals(prefixed))
            .merge(Serialized::globals(overrides))
            .extract()
            .map_err(Box::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_nothing() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(c.database_url.is_none());
        assert_eq!(c.max_body_bytes, 65536);
    }

    #[test]
    fn environment_then_flags_override() {
        let c = Config::load(
            None,
            env(&[
                ("CONVENE_LISTEN", "127.0.0.1:9000"),
                ("CONVENE_REQUEST_TIMEOUT_MS", "250"),
                ("DATABASE_URL", "postgres://x/y"),
            ]),
            &Overrides {
                data_dir: Some("/tmp/x".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.request_timeout_ms, 250);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.database_url.unwrap().expose(), "postgres://x/y");
    }

    #[test]
    fn seeds_come_as_a_list_or_a_comma_separated_string() {
        let c = Config::load(
            None,
            env(&[("CONVENE_SEEDS", "10.0.0.1:7000, dns:convene-headless:7000")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.seeds, ["10.0.0.1:7000", "dns:convene-headless:7000"]);
        assert!(c.clustered());
        let c = Config::load(
            None,
            env(&[("CONVENE_CONFIG", "x.toml"), ("CONVENE_TOKEN", "t")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(!c.clustered());
    }

    #[test]
    fn the_three_node_example_loads() {
        for i in 1..=3 {
            let path = PathBuf::from(format!("config/cluster/node-{i}.toml"));
            let c = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap();
            assert!(c.clustered());
            assert_eq!(c.node_name, format!("convene-{i}"));
            assert_eq!(c.seeds.len(), 3);
        }
    }

    #[test]
    fn the_bridge_example_loads() {
        let path = PathBuf::from("config/bridge.toml");
        let c = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.bridge.to_kafka[0].subject, "events.*");
        assert!(!c.bridge.to_nats.is_empty());
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert!(c.bridge.is_empty());
        assert!(c.nats_url.is_none() && c.kafka_brokers.is_none());
        let path = PathBuf::from("config/production.example.toml");
        let c = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.kafka_brokers.as_deref(), Some("kafka:9092"));
    }

    #[test]
    fn the_kubernetes_file_loads_with_the_pods_environment() {
        let path = PathBuf::from("config/kubernetes.toml");
        let pod = env(&[
            ("CONVENE_NODE_NAME", "convene-2"),
            ("CONVENE_CLUSTER_ADVERTISE", "10.0.0.7"),
        ]);
        let c = Config::load(Some(&path), pod, &Overrides::default()).unwrap();
        assert!(c.clustered());
        assert_eq!(c.node_name, "convene-2");
        assert_eq!(c.cluster_advertise.as_deref(), Some("10.0.0.7"));
        assert_eq!(
            c.seeds,
            ["dns:convene-peers.events-platform.svc.cluster.local:7000"]
        );
        assert_eq!(c.drain_grace_secs, 20);
    }

    #[test]
    fn unknown_keys_are_refused_and_secrets_hidden() {
        assert!(
            Config::load(
                None,
                env(&[("CONVENE_LISTEN_PORT", "1")]),
                &Overrides::default()
            )
            .is_err()
        );
        let c = Config::load(
            None,
            env(&[("CONVENE_JWT_SECRET", "hunter2")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

//! A sender's messages to one entity arrive in the order sent and none is lost, while the
//! entity's actor stops and starts again under them (messages then pass through the shard, and
//! go straight to the actor once it runs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use convene_cluster::{
    Activation, Cluster, EntityFactory, EntityKey, Inspect, KindSettings, Router, ShardMessage,
    Spawning,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};

convene_cluster::entity_messages! {
    /// Messages of a recording entity.
    enum RecordMessage via RecordRequest {
        ask {
            /// Everything recorded so far.
            Seen {} -> Vec<u64>,
        }
        tell {
            /// Record `n`.
            Record { n: u64 },
            /// Ask the shard to stop this actor (its records stay).
            Rest,
        }
        local {}
    }
}

/// What each key recorded, kept across activations (the entities' store).
type Records = Arc<Mutex<HashMap<EntityKey, Vec<u64>>>>;

struct Recorder;

struct RecorderState {
    key: EntityKey,
    records: Records,
    shard: ActorRef<ShardMessage<RecordMessage>>,
}

impl Inspect for RecorderState {
    fn summary(&self) -> serde_json::Value {
        let records = self.records.lock().unwrap();
        serde_json::json!({ "recorded": records.get(&self.key).map_or(0, Vec::len) })
    }
}

impl Actor for Recorder {
    type Msg = RecordMessage;
    type State = RecorderState;
    type Arguments = RecorderState;

    async fn pre_start(
        &self,
        _: ActorRef<RecordMessage>,
        args: RecorderState,
    ) -> Result<RecorderState, ActorProcessingErr> {
        // Loading takes a while, as it does from a database: messages queue meanwhile.
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<RecordMessage>,
        message: RecordMessage,
        state: &mut RecorderState,
    ) -> Result<(), ActorProcessingErr> {
        let mut records = state.records.lock().unwrap();
        let seen = records.entry(state.key.clone()).or_default();
        match message {
            RecordMessage::Record { n } => seen.push(n),
            RecordMessage::Seen { reply } => {
                let _ = reply.send(seen.clone());
            }
            RecordMessage::Rest => {
                let _ = state.shard.cast(ShardMessage::Passivate {
                    key: state.key.clone(),
                });
            }
        }
        Ok(())
    }
}

struct Factory(Records);

impl EntityFactory for Factory {
    type Msg = RecordMessage;

    fn kind(&self) -> &'static str {
        "record"
    }

    fn spawn(
        &self,
        key: EntityKey,
        activation: Activation<RecordMessage>,
    ) -> Spawning<RecordMessage> {
        let state = RecorderState {
            key,
            records: self.0.clone(),
            shard: activation.shard.clone(),
        };
        activation.start(Recorder, state)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keep_their_order_while_the_actor_stops_and_starts() {
    let records = Records::default();
    let settings = KindSettings {
        passivate_after: Duration::from_secs(600),
        max_restarts: 3,
        restart_window: Duration::from_secs(10),
        timeout: Duration::from_secs(10),
    };
    let router = Router::start(Cluster::single("n1"), Factory(records.clone()), settings)
        .await
        .unwrap();
    const SENDERS: u64 = 4;
    const EACH: u64 = 5_000;
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let router = router.clone();
        senders.push(tokio::spawn(async move {
            let key = EntityKey::new("record", format!("k{s}"));
            for n in 0..EACH {
                router
                    .tell(key.clone(), RecordMessage::Record { n })
                    .unwrap();
                if n % 250 == 0 {
                    router.tell(key.clone(), RecordMessage::Rest).unwrap();
                }
                if n % 250 == 1 {
                    // Let the actor stop and start again while the next messages arrive.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                } else if n % 25 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            let seen = router
                .ask(key, |reply| RecordMessage::Seen { reply })
                .await
                .unwrap();
            assert_eq!(seen.len() as u64, EACH, "messages lost");
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "messages out of order"
            );
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    // How many rests end in a stop depends on scheduling; every actor must have stopped at
    // least once in mid-stream for the run to mean anything.
    let stats = router.stats().await.unwrap();
    assert!(stats.passivations >= SENDERS, "{stats:?}");
}

//! The node's link to Redis, shared by the rate limits and the caches: one multiplexed
//! connection, made again after a failure, every call bounded by a timeout and guarded by a
//! circuit breaker, so a Redis that is down or slow costs a request nothing but a fall-back.

use std::future::Future;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use convene_cluster::ClusterMetrics;
use convene_cluster::breaker::{Breaker, retry};

/// How long a call may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_millis(100);

/// See the module.
pub struct RedisLink {
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    breaker: Breaker,
}

impl RedisLink {
    /// A link to `url`; nothing is connected before the first call.
    pub fn new(url: &str, metrics: &ClusterMetrics) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: tokio::sync::Mutex::new(None),
            // One failure opens it: a request never waits twice for a Redis that is gone.
            breaker: Breaker::new("redis", 1, Duration::from_secs(1), Duration::from_secs(8))
                .with_metrics(metrics),
        })
    }

    /// Whether the last calls went through (the circuit is closed).
    pub fn is_up(&self) -> bool {
        !self.breaker.is_open()
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut slot = self.connection.lock().await;
        match slot.as_ref() {
            Some(c) => Ok(c.clone()),
            None => {
                let c = self.client.get_multiplexed_async_connection().await?;
                *slot = Some(c.clone());
                Ok(c)
            }
        }
    }

    /// Runs `call` on the connection; `None` when the circuit is open, or the call failed or
    /// timed out (which opens it). A connection found broken (Redis restarted) is made again
    /// and the call tried once more, within the same timeout.
    pub async fn call<T, F, Fut>(&self, call: F) -> Option<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allow() {
            return None;
        }
        let dropped = |e: &redis::RedisError| e.is_connection_dropped() || e.is_io_error();
        let outcome = tokio::time::timeout(
            TIMEOUT,
            retry(2, Duration::from_millis(10), dropped, || async {
                let connection = self.connection().await?;
                let answer = call(connection).await;
                if answer.as_ref().is_err_and(dropped) {
                    *self.connection.lock().await = None;
                }
                answer
            }),
        )
        .await;
        match outcome {
            Ok(Ok(answer)) => {
                self.breaker.success();
                Some(answer)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string()).await;
                None
            }
            Err(_) => {
                self.failed("timed out").await;
                None
            }
        }
    }

    async fn failed(&self, why: &str) {
        *self.connection.lock().await = None;
        self.breaker.failure(why);
    }

    /// Whether Redis answers a PING now, whatever the circuit says (the health check's probe);
    /// the answer closes or opens the circuit.
    pub async fn ping(&self) -> bool {
        let ping = async {
            let mut c = self.connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        match tokio::time::timeout(TIMEOUT * 2, ping).await {
            Ok(Ok(_)) => {
                self.breaker.success();
                true
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string()).await;
                false
            }
            Err(_) => {
                self.failed("no answer to PING").await;
                false
            }
        }
    }
}

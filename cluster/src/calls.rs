//! Calls between nodes: a one-way message or a request to a node service of any member (this
//! node included), over the router actors' sessions.

use std::time::Duration;

use crate::Cluster;
use crate::protocol::PeerMessage;

impl Cluster {
    /// Sends `payload` to the service `topic` of `node` (this node included). Messages from
    /// one sender to one node arrive in the order they were sent. False when the node is not
    /// reachable now.
    pub fn cast_node(&self, node: &str, topic: &str, payload: Vec<u8>) -> bool {
        if node == self.local() {
            return match self.service(topic) {
                Some(s) => {
                    s.cast(&payload);
                    true
                }
                None => false,
            };
        }
        match self.peer(node) {
            Some(peer) => peer
                .cast(PeerMessage::Cast(topic.to_owned(), payload))
                .is_ok(),
            None => false,
        }
    }

    /// Asks the service `topic` of `node` (this node included); `None` when it cannot answer
    /// within `timeout`.
    pub async fn call_node(
        &self,
        node: &str,
        topic: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Option<Vec<u8>> {
        if node == self.local() {
            let answer = self.service(topic)?.call(&payload);
            return tokio::time::timeout(timeout, answer).await.ok();
        }
        let peer = self.peer(node)?;
        let topic = topic.to_owned();
        match peer
            .call(
                |port| PeerMessage::Call(topic, payload, port),
                Some(timeout),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(answer)) => Some(answer),
            _ => None,
        }
    }
}

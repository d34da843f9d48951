//! What nodes say to each other: the messages between their router actors, the codes that
//! open a forward's reply, and the heartbeat a member announces itself with.

use std::collections::BTreeMap;

use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use crate::MemberStatus;

/// The first byte of a forward reply.
pub(crate) mod reply {
    /// The entity answered; its encoded answer follows.
    pub const ANSWER: u8 = 0;
    /// This node does not own the key (its view changed): ask the owner again.
    pub const MOVED: u8 = 1;
    /// The entity could not answer.
    pub const UNAVAILABLE: u8 = 2;
    /// The request could not be decoded.
    pub const BAD_REQUEST: u8 = 3;
}

/// Messages between the router actors of nodes.
#[derive(RactorClusterMessage)]
pub enum PeerMessage {
    /// An entity message for a key this node should own: kind, key, encoded request, the
    /// sender's `traceparent` (empty when it has none). The reply's first byte is one of
    /// [`reply`]'s codes.
    #[rpc]
    Forward(String, String, Vec<u8>, String, RpcReplyPort<Vec<u8>>),
    /// A member's heartbeat, encoded.
    Heartbeat(Vec<u8>),
    /// A one-way message for a node service of this node: topic, payload.
    Cast(String, Vec<u8>),
    /// A request to a node service of this node: topic, payload; the reply is its answer.
    #[rpc]
    Call(String, Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// What a node says about itself in every heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub name: String,
    pub address: Option<String>,
    pub http: Option<String>,
    pub status: MemberStatus,
    pub started_ms: i64,
    pub entities: BTreeMap<String, u64>,
}

//! Convene's cluster layer: entity keys; the members of the cluster, kept current by heartbeats
//! over `ractor_cluster`; the placement of each entity on one member by rendezvous hashing; the
//! router that forwards a message to its owner; and the shard actors that activate, supervise,
//! passivate and hand off entity actors, with the probes the operator console reads.
//!
//! [`Router::ask`] is the only way the edges reach an entity, wherever it lives.

pub mod breaker;
mod calls;
mod directory;
mod inspect;
mod key;
mod membership;
mod metrics;
mod peer;
mod placement;
mod probe;
mod protocol;
mod registry;
mod router;
mod shard;
pub mod trace;
mod view;
pub mod wire;

pub use directory::Ticket;
pub use key::{EntityKey, KeyError};
pub use membership::{Cluster, MemberReport, MembershipSettings, Owner};
pub use metrics::ClusterMetrics;
pub use peer::{Network, NetworkSettings, Seed};
pub use placement::{Member, MemberStatus, Placement};
pub use probe::{ActorsReport, EntityBrief, EntityReport, Handled, Inspect, KindReport};
pub use protocol::PeerMessage;
pub use registry::NodeService;
pub use router::{AskError, Router};
pub use shard::{
    Activation, EntityFactory, KindSettings, Shard, ShardArgs, ShardMessage, ShardStats, Spawning,
};
pub use view::View;

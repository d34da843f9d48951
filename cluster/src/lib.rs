//! Convene's cluster layer: entity keys, the members of the cluster, the placement of each entity
//! on one member, and the shard actors that activate, supervise and passivate entity actors.
//!
//! Today a node is a cluster of one member; every message is delivered to the local shard. The
//! seam stays the same when several members exist: [`Router::ask`] is the only way the edges reach
//! an entity, so forwarding to a remote owner is added here without touching a caller.

mod key;
mod placement;
mod router;
mod shard;

pub use key::{EntityKey, KeyError};
pub use placement::{Member, MemberStatus, Placement};
pub use router::{AskError, Router};
pub use shard::{EntityFactory, Shard, ShardArgs, ShardMessage, ShardStats, Spawning};

//! Convene's domain: the user, event, room and analytics entity actors, the per-node fan-out of room
//! traffic, their messages, the WebSocket protocol, the model they share with the edges, and
//! the rules they apply (permissions, registration with capacity and waitlist).
//! Nothing here speaks HTTP or holds an SQL string: persistence goes through [`store::Store`].

pub mod analytics;
pub mod curation;
pub mod error;
pub mod event;
pub mod fanout;
pub mod geo;
mod idle;
pub mod model;
pub mod protocol;
pub mod recommend;
pub mod room;
pub mod rules;
pub mod store;
pub mod user;

pub use error::EntityError;
pub use store::{Store, StoreError};

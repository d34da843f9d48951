//! Convene: an events platform backend. Users, events and their registrations are long-lived
//! actors (see `convene-actors`) placed on nodes by `convene-cluster`; this crate is the program
//! around them: configuration, the sqlx store, authentication and revoked tokens, the HTTP and
//! WebSocket edges, the buses and the outbox relay, metrics, and the operator console.

pub mod admin;
pub mod analytics;
pub mod app;
pub mod auth;
pub mod backup;
pub mod bus;
pub mod cache;
pub mod config;
pub mod console;
pub mod curator;
pub mod http;
pub mod keeper;
pub mod leaderboard;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod recommend;
pub mod redis_link;
pub mod revocations;
pub mod search;
pub mod store;
pub mod telemetry;
pub mod validation;
pub mod ws;

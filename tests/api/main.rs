//! Black-box tests: real nodes on random ports, a fresh database each, talked to over HTTP.
//! Every scenario runs against SQLite and against PostgreSQL.

mod helpers;

mod analytics;
mod auth;
mod backup;
mod bridge;
mod brokers;
mod browser;
mod bus;
mod caches;
mod cluster;
mod commands;
mod console;
mod curation;
mod events;
mod limits;
mod operations;
mod recommendations;
mod registrations;
mod rooms;
mod search;
mod services;
mod supervision;

//! The cluster's metric families: members by status, hand-offs, forwards and their latency,
//! and the entity actors of each kind (messages, handling time, mailboxes, restarts).

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
};

/// The cluster's metric families.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// `convene_cluster_members{status}`.
    pub members: IntGaugeVec,
    /// `convene_entity_handoffs_total`.
    pub handoffs: IntCounter,
    /// `convene_forwarded_messages_total`.
    pub forwarded: IntCounter,
    /// `convene_forward_duration_seconds`.
    pub forward_latency: Histogram,
    /// `convene_actor_messages_total{node,kind}`.
    pub actor_messages: IntCounterVec,
    /// `convene_actor_handling_seconds{node,kind}`.
    pub actor_handling: HistogramVec,
    /// `convene_actor_mailbox_messages{node,kind}`.
    pub actor_mailbox: IntGaugeVec,
    /// `convene_actor_active{node,kind}`.
    pub actor_active: IntGaugeVec,
    /// `convene_actor_restarts_total{node,kind}`.
    pub actor_restarts: IntCounterVec,
    /// `convene_actor_passivations_total{node,kind}`.
    pub actor_passivations: IntCounterVec,
    /// `convene_breaker_open{dependency}`: 1 while calls to it fail fast.
    pub breaker_open: IntGaugeVec,
    /// `convene_breaker_trips_total{dependency}`.
    pub breaker_trips: IntCounterVec,
}

impl ClusterMetrics {
    pub(crate) fn new() -> Self {
        Self {
            members: IntGaugeVec::new(
                Opts::new("convene_cluster_members", "Cluster members by status"),
                &["status"],
            )
            .expect("valid metric"),
            handoffs: IntCounter::new(
                "convene_entity_handoffs_total",
                "Entities handed off to another node after a membership change",
            )
            .expect("valid metric"),
            forwarded: IntCounter::new(
                "convene_forwarded_messages_total",
                "Messages forwarded to the owner of their entity on another node",
            )
            .expect("valid metric"),
            forward_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "convene_forward_duration_seconds",
                    "Round trip of a message forwarded to another node",
                )
                .buckets(vec![
                    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
            )
            .expect("valid metric"),
            actor_messages: IntCounterVec::new(
                Opts::new(
                    "convene_actor_messages_total",
                    "Messages handled by entity actors",
                ),
                &["node", "kind"],
            )
            .expect("valid metric"),
            actor_handling: HistogramVec::new(
                HistogramOpts::new(
                    "convene_actor_handling_seconds",
                    "Time an entity actor took to handle a message",
                )
                .buckets(vec![
                    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                ]),
                &["node", "kind"],
            )
            .expect("valid metric"),
            actor_mailbox: IntGaugeVec::new(
                Opts::new(
                    "convene_actor_mailbox_messages",
                    "Messages waiting in the mailboxes of entity actors",
                ),
                &["node", "kind"],
            )
            .expect("valid metric"),
            actor_active: IntGaugeVec::new(
                Opts::new("convene_actor_active", "Entity actors running"),
                &["node", "kind"],
            )
            .expect("valid metric"),
            actor_restarts: IntCounterVec::new(
                Opts::new(
                    "convene_actor_restarts_total",
                    "Entity actors restarted after a crash",
                ),
                &["node", "kind"],
            )
            .expect("valid metric"),
            actor_passivations: IntCounterVec::new(
                Opts::new(
                    "convene_actor_passivations_total",
                    "Entity actors stopped after being idle or asked to",
                ),
                &["node", "kind"],
            )
            .expect("valid metric"),
            breaker_open: IntGaugeVec::new(
                Opts::new(
                    "convene_breaker_open",
                    "1 while the circuit breaker of a dependency is open (calls fail fast)",
                ),
                &["dependency"],
            )
            .expect("valid metric"),
            breaker_trips: IntCounterVec::new(
                Opts::new(
                    "convene_breaker_trips_total",
                    "Times the circuit breaker of a dependency opened",
                ),
                &["dependency"],
            )
            .expect("valid metric"),
        }
    }

    /// Every family, to register in the node's registry.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.members.clone()),
            Box::new(self.handoffs.clone()),
            Box::new(self.forwarded.clone()),
            Box::new(self.forward_latency.clone()),
            Box::new(self.actor_messages.clone()),
            Box::new(self.actor_handling.clone()),
            Box::new(self.actor_mailbox.clone()),
            Box::new(self.actor_active.clone()),
            Box::new(self.actor_restarts.clone()),
            Box::new(self.actor_passivations.clone()),
            Box::new(self.breaker_open.clone()),
            Box::new(self.breaker_trips.clone()),
        ]
    }
}

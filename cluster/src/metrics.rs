//! The cluster's metric families: members by status, hand-offs, forwards and their latency.

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGaugeVec, Opts};

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
        }
    }

    /// Every family, to register in the node's registry.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.members.clone()),
            Box::new(self.handoffs.clone()),
            Box::new(self.forwarded.clone()),
            Box::new(self.forward_latency.clone()),
        ]
    }
}

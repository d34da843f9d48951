//! Prometheus metrics of a node, named as the seed names them: `http_requests_total`,
//! `http_request_duration_seconds` (labelled by route template, never by raw path: see
//! [`crate::http::route_template`]),
//! `event_registrations_total` by status, `convene_actors_active` by kind, and the relay's
//! `convene_outbox_pending`, `convene_bus_published_total`, `convene_bus_publish_seconds`,
//! `convene_bus_up`, `convene_bus_commands_total` and `convene_bus_interactions_total`, and the bridge's
//! `convene_bridge_messages_total`; the recommendations' `ml_predictions_total`,
//! `recommendation_latency_seconds`, `ml_model_accuracy` and `convene_recommend_model_version`;
//! the analytics' `convene_anomalies_total` and `convene_analytics_dropped_total`; the WebSocket
//! edge's `convene_ws_connections` and `convene_ws_slow_consumer_cutoffs_total`; the rate
//! limits' `convene_rate_limit_decisions_total`; the caches' `convene_cache_lookups_total`.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The metric families of one node, in their own registry (so in-process test nodes do not
/// share counters).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by method, route template and status.
    pub http_requests: IntCounterVec,
    /// Request latency by method and route template.
    pub http_duration: HistogramVec,
    /// Registration requests by outcome.
    pub registrations: IntCounterVec,
    /// Entity actors running, by kind.
    pub actors_active: IntGaugeVec,
    /// Outbox rows not yet published.
    pub outbox_pending: IntGauge,
    /// Domain events a bus acknowledged, by bus and type.
    pub bus_published: IntCounterVec,
    /// Time for a bus to acknowledge a batch, by bus.
    pub bus_publish_seconds: HistogramVec,
    /// 1 when a bus is reachable, by bus.
    pub bus_up: IntGaugeVec,
    /// Commands taken from a bus, by bus and the status answered.
    pub bus_commands: IntCounterVec,
    /// Messages the bridge saw, by route and outcome (forwarded, looped, failed).
    pub bridge_messages: IntCounterVec,
    /// Recommendation answers, by model (strategy) and status.
    pub ml_predictions: IntCounterVec,
    /// Time to make recommendations, by algorithm.
    pub recommendation_latency: HistogramVec,
    /// NDCG@10 of each engine in the loaded model's offline evaluation.
    pub ml_model_accuracy: GaugeVec,
    /// The version of the model this node serves (0: none yet).
    pub model_version: IntGauge,
    /// Interactions taken from Kafka, by outcome (recorded, dead_letter).
    pub bus_interactions: IntCounterVec,
    /// Anomalies found by the analytics, by metric.
    pub anomalies: IntCounterVec,
    /// Views not counted because this node's analytics queue was full.
    pub analytics_dropped: IntGauge,
    /// `convene_ws_connections`.
    pub ws_connections: IntGauge,
    /// `convene_ws_slow_consumer_cutoffs_total`.
    pub ws_slow_consumers: IntCounter,
    /// `convene_rate_limit_decisions_total{level,decision,backend}`.
    pub rate_limit_decisions: IntCounterVec,
    /// `convene_cache_lookups_total{cache,outcome,backend}`: `hit`, `stale` or `miss`.
    pub cache_lookups: IntCounterVec,
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "Total HTTP requests processed"),
            &["method", "endpoint", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request duration in seconds",
            ),
            &["method", "endpoint"],
        )
        .expect("valid metric");
        let registrations = IntCounterVec::new(
            Opts::new("event_registrations_total", "Total event registrations"),
            &["status"],
        )
        .expect("valid metric");
        let actors_active = IntGaugeVec::new(
            Opts::new(
                "convene_actors_active",
                "Entity actors running on this node",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let outbox_pending = IntGauge::new(
            "convene_outbox_pending",
            "Outbox rows waiting to be published",
        )
        .expect("valid metric");
        let bus_published = IntCounterVec::new(
            Opts::new(
                "convene_bus_published_total",
                "Domain events a bus acknowledged",
            ),
            &["bus", "topic"],
        )
        .expect("valid metric");
        let bus_publish_seconds = HistogramVec::new(
            HistogramOpts::new(
                "convene_bus_publish_seconds",
                "Time for a bus to acknowledge a batch of domain events",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
            &["bus"],
        )
        .expect("valid metric");
        let bus_up = IntGaugeVec::new(
            Opts::new("convene_bus_up", "1 when the bus is reachable"),
            &["bus"],
        )
        .expect("valid metric");
        let bus_commands = IntCounterVec::new(
            Opts::new(
                "convene_bus_commands_total",
                "Commands taken from a bus, by the status answered",
            ),
            &["bus", "status"],
        )
        .expect("valid metric");
        let bridge_messages = IntCounterVec::new(
            Opts::new(
                "convene_bridge_messages_total",
                "Messages the NATS-Kafka bridge saw, by route and outcome",
            ),
            &["route", "outcome"],
        )
        .expect("valid metric");
        let ml_predictions = IntCounterVec::new(
            Opts::new("ml_predictions_total", "Total ML predictions made"),
            &["model", "status"],
        )
        .expect("valid metric");
        let recommendation_latency = HistogramVec::new(
            HistogramOpts::new(
                "recommendation_latency_seconds",
                "Time to generate recommendations",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["algorithm"],
        )
        .expect("valid metric");
        let ml_model_accuracy = GaugeVec::new(
            Opts::new(
                "ml_model_accuracy",
                "Current model accuracy (NDCG@10, offline)",
            ),
            &["model"],
        )
        .expect("valid metric");
        let model_version = IntGauge::new(
            "convene_recommend_model_version",
            "The recommendation model this node serves",
        )
        .expect("valid metric");
        let bus_interactions = IntCounterVec::new(
            Opts::new(
                "convene_bus_interactions_total",
                "Interactions taken from Kafka, by outcome",
            ),
            &["status"],
        )
        .expect("valid metric");
        let anomalies = IntCounterVec::new(
            Opts::new(
                "convene_anomalies_total",
                "Anomalies found by the analytics",
            ),
            &["metric"],
        )
        .expect("valid metric");
        let analytics_dropped = IntGauge::new(
            "convene_analytics_dropped_total",
            "Views not counted because the analytics queue was full",
        )
        .expect("valid metric");
        let ws_connections = IntGauge::new(
            "convene_ws_connections",
            "WebSocket connections open on this node",
        )
        .expect("valid metric");
        let ws_slow_consumers = IntCounter::new(
            "convene_ws_slow_consumer_cutoffs_total",
            "WebSocket connections closed with 4008 for not reading their frames",
        )
        .expect("valid metric");
        let rate_limit_decisions = IntCounterVec::new(
            Opts::new(
                "convene_rate_limit_decisions_total",
                "Rate limit decisions by level (the refusing one), outcome and where they were made",
            ),
            &["level", "decision", "backend"],
        )
        .expect("valid metric");
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "convene_cache_lookups_total",
                "Cache lookups by cache, outcome (hit, stale, miss) and backend (redis, local)",
            ),
            &["cache", "outcome", "backend"],
        )
        .expect("valid metric");
        for c in [
            Box::new(bus_commands.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(cache_lookups.clone()),
            Box::new(rate_limit_decisions.clone()),
            Box::new(ws_connections.clone()),
            Box::new(ws_slow_consumers.clone()),
            Box::new(anomalies.clone()),
            Box::new(bus_interactions.clone()),
            Box::new(analytics_dropped.clone()),
            Box::new(ml_predictions.clone()),
            Box::new(recommendation_latency.clone()),
            Box::new(ml_model_accuracy.clone()),
            Box::new(model_version.clone()),
            Box::new(bridge_messages.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_duration.clone()),
            Box::new(registrations.clone()),
            Box::new(actors_active.clone()),
            Box::new(outbox_pending.clone()),
            Box::new(bus_published.clone()),
            Box::new(bus_publish_seconds.clone()),
            Box::new(bus_up.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            http_requests,
            http_duration,
            registrations,
            actors_active,
            outbox_pending,
            bus_published,
            bus_publish_seconds,
            bus_up,
            bus_commands,
            bridge_messages,
            ml_predictions,
            recommendation_latency,
            ml_model_accuracy,
            model_version,
            anomalies,
            analytics_dropped,
            bus_interactions,
            ws_connections,
            ws_slow_consumers,
            rate_limit_decisions,
            cache_lookups,
        }
    }

    /// Adds families kept elsewhere (the cluster layer's).
    pub fn register(&self, collectors: Vec<Box<dyn prometheus::core::Collector>>) {
        for c in collectors {
            // A family registered twice is the same family: keep the first.
            let _ = self.registry.register(c);
        }
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_the_seed_names() {
        let m = Metrics::new();
        m.http_requests
            .with_label_values(&["GET", "/health", "200"])
            .inc();
        m.registrations.with_label_values(&["created"]).inc();
        let text = m.render();
        assert!(
            text.contains(
                "http_requests_total{endpoint=\"/health\",method=\"GET\",status=\"200\"} 1"
            )
        );
        assert!(text.contains("event_registrations_total{status=\"created\"} 1"));
    }
}

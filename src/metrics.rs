//! Prometheus metrics of a node, named as the seed names them: `http_requests_total`,
//! `http_request_duration_seconds` (labelled by route template, never by raw path: see
//! [`crate::http::route_template`]),
//! `event_registrations_total` by status, and `convene_actors_active` by kind.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
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
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(registrations.clone()),
            Box::new(actors_active.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            http_requests,
            http_duration,
            registrations,
            actors_active,
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

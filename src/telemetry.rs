//! Logs and traces: the `tracing` subscriber (text or JSON lines, filtered by `RUST_LOG`) and,
//! when `otlp_endpoint` is set, the export of spans to an OpenTelemetry collector over OTLP/HTTP
//! (protobuf), batched on the Tokio runtime. The request span of an edge and the span of a
//! message forwarded to another node join the trace their `traceparent` names.

use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Config;

/// How long spans wait to be sent in a batch.
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// The installed exporter; [`Telemetry::shutdown`] sends what is left.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued, and stops exporting.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("exporting the last spans failed: {e}");
            }
        }
    }
}

/// Installs the subscriber `config` asks for. Exporting needs a Tokio runtime: call it inside
/// one.
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // ractor_cluster narrates every session at info; its warnings and our own cluster log
        // (members, refusals) are what operators need.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ractor_cluster=warn"));
    let lines = if config.log_format == "json" {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint.clone())
                .with_timeout(Duration::from_secs(5))
                .with_headers(Default::default())
                .build()?;
            let batches = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_scheduled_delay(EXPORT_EVERY)
                        .build(),
                )
                .build();
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("convene")
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.instance.id",
                    config.node_name.clone(),
                ))
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_span_processor(batches)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("convene"))
            .boxed()
    });
    tracing_subscriber::registry()
        .with(spans)
        .with(lines)
        .with(filter)
        .try_init()?;
    if provider.is_some() {
        convene_cluster::trace::on_span(join);
    }
    Ok(Telemetry { provider })
}

/// The span context a `traceparent` names, as a remote parent.
fn parent(traceparent: &str) -> Option<opentelemetry::Context> {
    let mut parts = traceparent.split('-');
    let (_, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context
        .is_valid()
        .then(|| opentelemetry::Context::new().with_remote_span_context(context))
}

/// Makes `span` a child of the span `traceparent` names, and answers the `traceparent` of
/// `span` itself (what is echoed and carried on).
fn join(span: &tracing::Span, traceparent: &str) -> Option<String> {
    if let Some(parent) = parent(traceparent) {
        let _ = span.set_parent(parent);
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    own.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            own.trace_id(),
            own.span_id(),
            own.trace_flags().to_u8()
        )
    })
}

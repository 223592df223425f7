//! Getting spans to the collector without the request path ever waiting for it. Ended spans go
//! into a bounded queue that the SDK's batch processor drains on a thread of its own, posting
//! OTLP/HTTP protobuf batches with a blocking client bounded by `tracing.export_timeout`.
//! When the queue is full (the collector is slow or gone) a span is dropped, and a batch the
//! collector refused or never took is dropped too: both are counted in
//! `mcp_sidecar_trace_spans_dropped_total{reason}`, and nothing else happens to a request.

use super::Exporting;
use crate::metrics::METRICS;
use async_trait::async_trait;
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The batch processor behind a gate that counts what it lets in: spans queued or being
/// exported never exceed `max_queue`, and the gate (not the SDK, which only logs) counts a
/// span it turns away.
#[derive(Debug)]
pub(super) struct Gate {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    max_queue: usize,
}

/// The OTLP exporter, telling the gate how many spans left the queue and how many of them
/// the collector did not take.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
}

pub(super) fn processor(exporting: &Exporting) -> Result<Gate, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(exporting.endpoint.clone())
        .with_timeout(exporting.export_timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let pending = Arc::new(AtomicUsize::new(0));
    let max_queue = exporting.max_queue.max(1);
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(max_queue)
        .with_max_export_batch_size(512.min(max_queue))
        .build();
    let inner = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        pending: pending.clone(),
    })
    .with_batch_config(config)
    .build();
    Ok(Gate {
        inner,
        pending,
        max_queue,
    })
}

impl SpanProcessor for Gate {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            METRICS
                .trace_spans_dropped
                .with_label_values(&["queue_full"])
                .inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.pending.fetch_sub(n, Ordering::AcqRel);
        match &result {
            Ok(()) => METRICS.trace_spans_exported.inc_by(n as u64),
            Err(e) => {
                METRICS
                    .trace_spans_dropped
                    .with_label_values(&["export_failed"])
                    .inc_by(n as u64);
                log::debug!("tracing: {n} spans not exported: {e}");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Starts the exporter in the serving process (its thread would not survive Pingora's
/// daemonizing if it were started before), so no request waits for it to be built.
pub struct TelemetryService;

#[async_trait]
impl BackgroundService for TelemetryService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        if super::enabled() {
            // building the blocking HTTP client joins a thread: not on a runtime worker
            let _ = tokio::task::spawn_blocking(|| super::tracer().is_some()).await;
        }
    }
}

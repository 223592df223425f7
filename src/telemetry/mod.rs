//! What the sidecar tells operators beyond metrics and access lines: OpenTelemetry traces of
//! every MCP request across pods (`trace.rs`: spans and W3C trace context; `export.rs`: the
//! OTLP exporter off the request path) and the audit log of tool, resource and prompt use
//! (`audit.rs`). Nothing here knows about Pingora or Redis: the proxy and the session layer
//! call in.
//!
//! Tracing is off unless a collector is named (`tracing.endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`), and
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off again. Off, every call
//! here is a check of one `OnceLock`.

pub mod audit;
mod export;
pub mod trace;

use crate::config::TracingSection;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::sync::OnceLock;
use std::time::Duration;

pub use export::TelemetryService;

/// Where and how spans are exported, resolved once from the configuration and `OTEL_*`.
#[derive(Debug, Clone, PartialEq)]
pub struct Exporting {
    /// The full OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// `None`: `OTEL_TRACES_SAMPLER` decides (read by the SDK); else parent-based with this
    /// ratio for new traces.
    pub ratio: Option<f64>,
    pub service_name: String,
    pub max_queue: usize,
    pub export_timeout: Duration,
}

impl Exporting {
    /// Tracing as the configuration and the environment (`env`) ask for it; `None` when off.
    /// `Err` names what is wrong.
    pub fn resolve(
        section: &TracingSection,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Exporting>, String> {
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let base = |url: &str| format!("{}/v1/traces", url.trim_end_matches('/'));
        let (from, endpoint) = if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        } else if let Some(url) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_ENDPOINT", base(&url))
        } else if let Some(url) = section.endpoint.as_deref().filter(|u| !u.is_empty()) {
            ("tracing.endpoint", base(url))
        } else {
            return Ok(None);
        };
        if !endpoint.starts_with("http://") || endpoint.parse::<http::Uri>().is_err() {
            return Err(format!(
                "{from}: {endpoint:?} is not an http:// URL of an OTLP/HTTP collector (https is not supported: run a collector agent beside the pod, on the node or in the cluster)"
            ));
        }
        if let Some(p) = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .filter(|p| p != "http/protobuf")
        {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL: {p:?} is not supported (only http/protobuf)"
            ));
        }
        Ok(Some(Exporting {
            endpoint,
            ratio: match var("OTEL_TRACES_SAMPLER") {
                Some(_) => None,
                None => Some(section.sampling_ratio),
            },
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| section.service_name.clone()),
            max_queue: section.max_queue,
            export_timeout: section.export_timeout,
        }))
    }
}

/// The settings `install` was given; `None` inside: tracing is off.
static SETTINGS: OnceLock<Option<Exporting>> = OnceLock::new();
/// Built on first use, inside the process that serves (after Pingora daemonized, since the
/// exporter runs on a thread of its own).
static PROVIDER: OnceLock<Option<(SdkTracerProvider, SdkTracer)>> = OnceLock::new();

/// This pod's advertised address, as spans and audit lines name it.
static POD: OnceLock<String> = OnceLock::new();

/// Sets how this process traces and what it calls itself; once, at startup, before any
/// request.
pub fn install(pod: String, exporting: Option<Exporting>) {
    let _ = POD.set(pod);
    let _ = SETTINGS.set(exporting);
}

/// Whether spans are made at all.
pub fn enabled() -> bool {
    matches!(SETTINGS.get(), Some(Some(_)))
}

/// This pod's address (`server.advertise_address`).
pub fn pod() -> &'static str {
    POD.get().map_or("-", String::as_str)
}

/// The tracer, built on first use; `None` when tracing is off.
pub(crate) fn tracer() -> Option<&'static SdkTracer> {
    SETTINGS.get()?.as_ref()?;
    PROVIDER
        .get_or_init(|| {
            let exporting = SETTINGS.get()?.as_ref()?;
            match build(exporting) {
                Ok(provider) => {
                    let tracer = provider.tracer("mcp-sidecar");
                    log::info!(
                        "tracing: spans of {} go to {} ({})",
                        exporting.service_name,
                        exporting.endpoint,
                        match exporting.ratio {
                            Some(r) => format!("parent-based, {r} of new traces"),
                            None => "sampler from OTEL_TRACES_SAMPLER".to_string(),
                        }
                    );
                    Some((provider, tracer))
                }
                Err(e) => {
                    log::error!("tracing: exporter not started, no spans: {e}");
                    None
                }
            }
        })
        .as_ref()
        .map(|(_, tracer)| tracer)
}

fn build(exporting: &Exporting) -> Result<SdkTracerProvider, String> {
    let processor = export::processor(exporting)?;
    let resource = Resource::builder()
        .with_service_name(exporting.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", pod().to_string()),
        ])
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource);
    if let Some(ratio) = exporting.ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    Ok(builder.build())
}

/// Exports what is queued and stops the exporter (at shutdown).
pub fn shutdown() {
    if let Some(Some((provider, _))) = PROVIDER.get() {
        if let Err(e) = provider.shutdown() {
            log::warn!("tracing: shutdown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(endpoint: Option<&str>) -> TracingSection {
        TracingSection {
            endpoint: endpoint.map(str::to_string),
            ..TracingSection::default()
        }
    }

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn off_unless_a_collector_is_named() {
        assert_eq!(Exporting::resolve(&section(None), env(&[])), Ok(None));
        assert_eq!(Exporting::resolve(&section(Some("")), env(&[])), Ok(None));
        let on = Exporting::resolve(&section(Some("http://c:4318/")), env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(on.endpoint, "http://c:4318/v1/traces");
        assert_eq!(on.ratio, Some(1.0));
        assert_eq!(on.service_name, "mcp-sidecar");
        // the standard switches turn it off again
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                Exporting::resolve(&section(Some("http://c:4318")), env(&[off])),
                Ok(None)
            );
        }
    }

    #[test]
    fn standard_variables_win_over_the_file() {
        let e = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_SERVICE_NAME", "github-mcp"),
        ];
        let on = Exporting::resolve(&section(Some("http://c:4318")), env(&e))
            .unwrap()
            .unwrap();
        assert_eq!(on.endpoint, "http://a:4318/v1/traces");
        assert_eq!(on.service_name, "github-mcp");
        // the per-signal variable is taken as it is
        let e = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:9/x"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ];
        let on = Exporting::resolve(&section(None), env(&e))
            .unwrap()
            .unwrap();
        assert_eq!(on.endpoint, "http://b:9/x");
        assert_eq!(on.ratio, None, "the SDK reads OTEL_TRACES_SAMPLER(_ARG)");
    }

    #[test]
    fn unusable_endpoints_are_named() {
        let err = Exporting::resolve(&section(Some("https://c:4318")), env(&[])).unwrap_err();
        assert!(err.starts_with("tracing.endpoint: "), "{err}");
        let err = Exporting::resolve(
            &section(None),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")]),
        )
        .unwrap_err();
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: "), "{err}");
        let err = Exporting::resolve(
            &section(Some("http://c:4318")),
            env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
        )
        .unwrap_err();
        assert!(err.contains("grpc"), "{err}");
    }
}

//! The spans of one request and the W3C trace context around them. A request's server span
//! (`RequestTrace`) continues the trace its caller started: from `traceparent`/`tracestate`
//! headers (a client, a gateway in front, or the previous sidecar over the peer hop) or else
//! from `params._meta` (the 2026-07-28 convention). What the sidecar does on the way gets a
//! child span (`ChildSpan`); whatever it sends on carries the context of the span that sends
//! it (`inject`, `inject_meta`). Code that has no request at hand (the store, the session
//! layer's own upstream calls) makes children of the context attached to the running future
//! (`RequestTrace::scope`, `current_child`).
//!
//! With tracing off, a `RequestTrace` is empty and every method returns at once.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, Status, TraceContextExt, Tracer as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::future::Future;
use std::time::SystemTime;

pub use opentelemetry::trace::SpanKind;
pub use opentelemetry::KeyValue;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Where a request's trace comes from: the caller's span, or nothing (a new trace).
#[derive(Debug, Clone)]
pub struct Parent(Context);

impl Parent {
    /// The caller's context: the `traceparent` (and `tracestate`) header when it is valid,
    /// else the pair a client put in `params._meta`, else none. The header wins because it
    /// names the nearer caller: a gateway's span or, on the peer hop, the sidecar that
    /// forwarded the request (whose span is itself a child of what the client sent).
    pub fn extract<'a>(
        header: impl Fn(&str) -> Option<&'a str>,
        meta: Option<(&'a str, Option<&'a str>)>,
    ) -> Parent {
        let propagator = TraceContextPropagator::new();
        if let Some(traceparent) = header(TRACEPARENT).filter(|t| well_formed(t)) {
            let from_header = propagator.extract(&Fields {
                traceparent: Some(traceparent),
                tracestate: header(TRACESTATE),
            });
            if from_header.span().span_context().is_valid() {
                return Parent(from_header);
            }
        }
        if let Some((traceparent, tracestate)) = meta.filter(|(t, _)| well_formed(t)) {
            return Parent(propagator.extract(&Fields {
                traceparent: Some(traceparent),
                tracestate,
            }));
        }
        Parent(Context::new())
    }

    /// No caller's context: the request starts a trace.
    pub fn none() -> Parent {
        Parent(Context::new())
    }

    /// The caller's span, when there is one (for tests and logs).
    pub fn span_context(&self) -> Option<SpanContext> {
        let sc = self.0.span().span_context().clone();
        sc.is_valid().then_some(sc)
    }
}

/// Whether `value` is a `traceparent` as W3C Trace Context writes it: lower-case hex fields
/// of exactly 2, 32, 16 and 2 digits (a later version may append fields; version `ff` is
/// invalid). The SDK's parser is more lenient (short ids, upper case); a malformed context
/// starts a new trace instead of continuing a made-up one.
pub fn well_formed(value: &str) -> bool {
    let b = value.trim().as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b.get(r)
            .is_some_and(|s| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
    };
    b.len() >= 55
        && hex(0..2)
        && &b[..2] != b"ff"
        && b[2] == b'-'
        && hex(3..35)
        && b[35] == b'-'
        && hex(36..52)
        && b[52] == b'-'
        && hex(53..55)
        && (b.len() == 55 || (&b[..2] != b"00" && b[55] == b'-'))
}

struct Fields<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Fields<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.map(str::trim),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

struct Collect(Vec<(&'static str, String)>);

impl Injector for Collect {
    fn set(&mut self, key: &str, value: String) {
        let key = match key {
            TRACEPARENT => TRACEPARENT,
            TRACESTATE => TRACESTATE,
            _ => return,
        };
        self.0.push((key, value));
    }
}

/// The `traceparent` (and `tracestate`, when not empty) that make a callee's span a child of
/// the span in `cx`; nothing when `cx` holds none.
fn fields_of(cx: &Context) -> Vec<(&'static str, String)> {
    let mut out = Collect(Vec::with_capacity(2));
    TraceContextPropagator::new().inject_context(cx, &mut out);
    out.0
}

/// Writes the fields of `cx` into a JSON-RPC request's `params._meta`, creating it.
fn meta_of(cx: &Context, params: &mut serde_json::Map<String, serde_json::Value>) {
    let fields = fields_of(cx);
    if fields.is_empty() {
        return;
    }
    let meta = params
        .entry("_meta")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    if let Some(meta) = meta.as_object_mut() {
        for (k, v) in fields {
            meta.insert(k.to_string(), serde_json::Value::String(v));
        }
    }
}

/// A span and the context that holds it; empty when tracing is off or nothing was started.
#[derive(Debug, Default)]
struct Held(Option<Context>);

impl Held {
    fn start(
        parent: &Context,
        name: String,
        kind: SpanKind,
        start: Option<SystemTime>,
        attrs: Vec<KeyValue>,
    ) -> Held {
        let Some(tracer) = super::tracer() else {
            return Held(None);
        };
        let mut builder = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attrs);
        if let Some(start) = start {
            builder = builder.with_start_time(start);
        }
        let span = builder.start_with_context(tracer, parent);
        Held(Some(parent.with_span(span)))
    }

    fn recording(&self) -> Option<&Context> {
        self.0.as_ref().filter(|cx| cx.span().is_recording())
    }

    fn end(&mut self, error_type: Option<&str>) {
        if let Some(cx) = self.0.take() {
            let span = cx.span();
            if let Some(e) = error_type.filter(|_| span.is_recording()) {
                span.set_attribute(KeyValue::new("error.type", e.to_string()));
                span.set_status(Status::error(e.to_string()));
            }
            span.end();
        }
    }
}

/// The server span of one request on this pod.
#[derive(Debug, Default)]
pub struct RequestTrace {
    held: Held,
}

impl RequestTrace {
    /// Starts the span of a request that arrived at `started`, as a child of `parent`.
    /// Empty when tracing is off.
    pub fn start(
        parent: &Parent,
        name: String,
        started: SystemTime,
        attrs: Vec<KeyValue>,
    ) -> RequestTrace {
        RequestTrace {
            held: Held::start(&parent.0, name, SpanKind::Server, Some(started), attrs),
        }
    }

    /// Whether a span was started (tracing is on), sampled or not.
    pub fn started(&self) -> bool {
        self.held.0.is_some()
    }

    /// Whether the span is recorded: worth computing attributes for.
    pub fn recording(&self) -> bool {
        self.held.recording().is_some()
    }

    /// Sets attributes (only on a recorded span).
    pub fn set(&self, attrs: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(cx) = self.held.recording() {
            cx.span().set_attributes(attrs());
        }
    }

    /// The span's trace id (hex), when a span was started and is recorded.
    pub fn trace_id(&self) -> Option<String> {
        self.held
            .recording()
            .map(|cx| cx.span().span_context().trace_id().to_string())
    }

    /// Renames the span (its method became known after its head: a body read late).
    pub fn rename(&self, name: impl FnOnce() -> String) {
        if let Some(cx) = self.held.recording() {
            cx.span().update_name(name());
        }
    }

    /// A child span for something the sidecar does for this request (`kind` Client for a
    /// call to another process, Internal otherwise).
    pub fn child(&self, name: &'static str, kind: SpanKind) -> ChildSpan {
        match &self.held.0 {
            Some(cx) => ChildSpan(Held::start(cx, name.to_string(), kind, None, Vec::new())),
            None => ChildSpan::default(),
        }
    }

    /// This request's span as a scope to run work in, so the store and the session layer
    /// make their spans children of it (`current_child`).
    pub fn scope(&self) -> Scope {
        Scope(self.held.0.clone())
    }

    /// The header fields that continue this request's trace in a callee.
    pub fn inject(&self) -> Vec<(&'static str, String)> {
        self.held.0.as_ref().map(fields_of).unwrap_or_default()
    }

    /// Ends the span; `error_type` (a bounded label) marks it failed.
    pub fn end(&mut self, error_type: Option<&str>) {
        self.held.end(error_type);
    }
}

impl Drop for RequestTrace {
    fn drop(&mut self) {
        self.held.end(None);
    }
}

/// A span to run work in (`run`): code below the proxy finds it as the current context.
#[derive(Debug, Default)]
pub struct Scope(Option<Context>);

impl Scope {
    /// `fut` with the span as the current context whenever it is polled.
    pub fn run<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        use futures_util::future::Either;
        use opentelemetry::context::FutureExt as _;
        match self.0 {
            Some(cx) => Either::Left(fut.with_context(cx)),
            None => Either::Right(fut),
        }
    }
}

/// A child span; it ends when dropped (or at `end`).
#[derive(Debug, Default)]
pub struct ChildSpan(Held);

impl ChildSpan {
    /// Sets attributes (only on a recorded span).
    pub fn set(&self, attrs: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(cx) = self.0.recording() {
            cx.span().set_attributes(attrs());
        }
    }

    /// The header fields that make the callee's span a child of this one.
    pub fn inject(&self) -> Vec<(&'static str, String)> {
        self.0 .0.as_ref().map(fields_of).unwrap_or_default()
    }

    /// Writes this span's context into `params._meta` of a JSON-RPC request the sidecar
    /// writes or rewrites itself.
    pub fn inject_meta(&self, params: &mut serde_json::Map<String, serde_json::Value>) {
        if let Some(cx) = &self.0 .0 {
            meta_of(cx, params);
        }
    }

    /// A JSON-RPC message the sidecar sends itself, with this span's context in its
    /// `params._meta` (params made when it has none); `None` when there is no span or the
    /// message is not a JSON object.
    pub fn with_meta(&self, message: &str) -> Option<String> {
        let cx = self.0 .0.as_ref()?;
        let mut v: serde_json::Value = serde_json::from_str(message).ok()?;
        let params = v
            .as_object_mut()?
            .entry("params")
            .or_insert_with(|| serde_json::Value::Object(Default::default()))
            .as_object_mut()?;
        meta_of(cx, params);
        serde_json::to_string(&v).ok()
    }

    /// This span as a scope to run work in.
    pub fn scope(&self) -> Scope {
        Scope(self.0 .0.clone())
    }

    /// Ends the span; `error_type` (a bounded label) marks it failed.
    pub fn end(mut self, error_type: Option<&str>) {
        self.0.end(error_type);
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        self.0.end(None);
    }
}

/// A child of the span current in this task (a `Scope` runs it), for work done below the
/// proxy (a store operation, a replayed initialize). Empty when tracing is off or no
/// recorded span is current, so background work (the heartbeat) makes no traces of its own.
pub fn current_child(name: &'static str, kind: SpanKind) -> ChildSpan {
    if !super::enabled() {
        return ChildSpan::default();
    }
    Context::map_current(|cx| {
        if cx.span().is_recording() {
            ChildSpan(Held::start(cx, name.to_string(), kind, None, Vec::new()))
        } else {
            ChildSpan::default()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const TP2: &str = "00-11111111111111111111111111111111-2222222222222222-01";

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    #[test]
    fn the_header_wins_over_meta() {
        let p = Parent::extract(headers(&[(TRACEPARENT, TP)]), Some((TP2, None)));
        let sc = p.span_context().unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_sampled() && sc.is_remote());
        // no header: _meta
        let p = Parent::extract(headers(&[]), Some((TP2, Some("vendor=x"))));
        let sc = p.span_context().unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "11111111111111111111111111111111"
        );
        assert_eq!(sc.trace_state().get("vendor"), Some("x"));
        // a header that is not valid does not hide a valid _meta
        let p = Parent::extract(headers(&[(TRACEPARENT, "00-zz-yy-01")]), Some((TP2, None)));
        assert_eq!(
            p.span_context().unwrap().span_id().to_string(),
            "2222222222222222"
        );
    }

    #[test]
    fn invalid_contexts_start_a_trace() {
        for bad in [
            "",
            "garbage",
            // all-zero trace or span id
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            // version ff is forbidden
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            // short ids
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        ] {
            let p = Parent::extract(headers(&[(TRACEPARENT, bad)]), None);
            assert!(p.span_context().is_none(), "{bad:?} was accepted");
        }
        assert!(Parent::none().span_context().is_none());
        // a later version may add fields; version 00 may not
        assert!(well_formed(
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xyz"
        ));
        assert!(!well_formed(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xyz"
        ));
        assert!(well_formed(TP));
        // a malformed _meta is no parent either
        let p = Parent::extract(headers(&[]), Some(("00-abc-def-01", None)));
        assert!(p.span_context().is_none());
    }

    #[test]
    fn fields_round_trip_through_meta() {
        let p = Parent::extract(headers(&[(TRACEPARENT, TP), (TRACESTATE, "a=1,b=2")]), None);
        let fields = fields_of(&p.0);
        assert!(
            fields.contains(&(TRACEPARENT, TP.to_string())),
            "{fields:?}"
        );
        assert!(
            fields.contains(&(TRACESTATE, "a=1,b=2".to_string())),
            "{fields:?}"
        );
        let mut params = serde_json::json!({"name": "add", "_meta": {"progressToken": 7}});
        meta_of(&p.0, params.as_object_mut().unwrap());
        assert_eq!(params["_meta"]["traceparent"], TP);
        assert_eq!(params["_meta"]["tracestate"], "a=1,b=2");
        assert_eq!(params["_meta"]["progressToken"], 7, "other _meta kept");
        let mut bare = serde_json::json!({});
        meta_of(&Context::new(), bare.as_object_mut().unwrap());
        assert_eq!(
            bare,
            serde_json::json!({}),
            "nothing to write without a span"
        );
    }

    #[test]
    fn off_means_empty() {
        // no `install` in unit tests: tracing is off
        let mut t = RequestTrace::start(&Parent::none(), "x".into(), SystemTime::now(), vec![]);
        assert!(!t.started() && !t.recording());
        assert!(t.inject().is_empty());
        assert!(t.child("c", SpanKind::Internal).inject().is_empty());
        assert!(current_child("c", SpanKind::Internal).inject().is_empty());
        t.end(Some("x"));
    }
}

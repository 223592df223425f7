//! The proxy's part of telemetry (`crate::telemetry`): a request's server span, begun once
//! what the request is can be known (its body read, or its head when the body comes later);
//! the trace context on everything it sends on, with a child span per attempt (the hop to
//! another sidecar, or the call to this pod's MCP server); and at the end the span's outcome,
//! the MCP operation histogram and the audit line. The phases call in with one line each.
//!
//! Nothing here names a key, a token or a header value other than the trace context: the
//! user is named by id, the session by the client's id.

use super::context::RequestCtx;
use super::plan::Plan;
use super::reply::{Reason, Refusal};
use crate::metrics::METRICS;
use crate::protocol::headers::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use crate::protocol::jsonrpc::Envelope;
use crate::protocol::target::{self, Facts};
use crate::telemetry::audit::{self, Outcome};
use crate::telemetry::trace::{KeyValue, Parent, RequestTrace, SpanKind, TRACEPARENT, TRACESTATE};
use crate::telemetry::{self, trace::ChildSpan};
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::time::{Instant, SystemTime};

/// What the sidecar answered itself, for the span and the audit line.
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    /// The JSON-RPC error code of the answer.
    pub code: i64,
    /// Why, when the refusal says (`tool_denied`).
    pub reason: Option<Reason>,
    /// Refused before the upstream was asked (else: the upstream failed).
    pub refusal: bool,
}

/// What telemetry keeps for one request.
#[derive(Debug, Default)]
pub struct RequestTelemetry {
    pub(super) span: RequestTrace,
    /// The current attempt toward the MCP server or the next sidecar.
    upstream: ChildSpan,
    facts: Option<Facts>,
    begun: bool,
    pub(super) answered: Option<Answered>,
}

impl RequestTelemetry {
    /// A child span of the request for work the sidecar does itself (the bridge's calls, an
    /// MRTR round); empty when tracing is off.
    pub(super) fn child(&self, name: &'static str, kind: SpanKind) -> ChildSpan {
        self.span.child(name, kind)
    }

    /// The span of an MRTR round: a held call resumed with the client's input.
    pub(super) fn round(&self) -> ChildSpan {
        self.child("mcp_sidecar.mrtr_round", SpanKind::Internal)
    }
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's method, when it is one message with a method.
fn method(ctx: &RequestCtx) -> Option<&str> {
    ctx.envelope.as_ref().and_then(Envelope::method)
}

/// Whether the request is a single audited message whose line goes somewhere (a batch is
/// looked at message by message).
fn audited(ctx: &RequestCtx) -> bool {
    method(ctx).is_some_and(audit::audited) && audit::enabled()
}

/// Begins the request's server span with what is known now: its head, and its body when it
/// was read. Once; later calls do nothing.
pub(super) fn begin(req: &RequestHeader, ctx: &mut RequestCtx) {
    if ctx.telemetry.begun {
        return;
    }
    ctx.telemetry.begun = true;
    let tracing = telemetry::enabled();
    if tracing || audited(ctx) {
        if let (Some(body), Some(m)) = (&ctx.raw_body, method(ctx)) {
            ctx.telemetry.facts = target::facts(body, m);
        }
    }
    if !tracing {
        return;
    }
    let facts = ctx.telemetry.facts.as_ref();
    let meta = facts.and_then(|f| Some((f.traceparent.as_deref()?, f.tracestate.as_deref())));
    let parent = Parent::extract(|n| header(req, n), meta);
    let started = SystemTime::now() - ctx.started.elapsed();
    let span = RequestTrace::start(&parent, span_name(req, ctx), started, Vec::new());
    if span.recording() {
        span.set(|| start_attributes(req, ctx));
    }
    ctx.telemetry.span = span;
}

/// A body held until complete is known now: its target, and the span's name.
pub(super) fn body_known(req: &RequestHeader, ctx: &mut RequestCtx, full: &Bytes) {
    if !(telemetry::enabled() || audited(ctx)) {
        return;
    }
    if let Some(m) = method(ctx) {
        ctx.telemetry.facts = target::facts(full, m);
    }
    let span = &ctx.telemetry.span;
    if span.recording() {
        span.rename(|| span_name(req, ctx));
        span.set(|| start_attributes(req, ctx));
    }
}

/// `{mcp.method.name} {target}` (the MCP semantic conventions), or the HTTP method and the
/// route's prefix for a request without one (a GET stream, a DELETE).
fn span_name(req: &RequestHeader, ctx: &RequestCtx) -> String {
    let target = ctx
        .telemetry
        .facts
        .as_ref()
        .and_then(|f| f.target.as_deref());
    match (ctx.envelope.as_ref(), target) {
        (Some(Envelope::Batch { .. }), _) => "batch".to_string(),
        (Some(e), Some(t)) if e.method().is_some() => {
            format!("{} {t}", e.method().unwrap_or_default())
        }
        (Some(e), None) if e.method().is_some() => e.method().unwrap_or_default().to_string(),
        _ => format!(
            "{} {}",
            req.method,
            ctx.route.as_ref().map_or("-", |r| r.prefix.as_str())
        ),
    }
}

fn start_attributes(req: &RequestHeader, ctx: &RequestCtx) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("network.transport", "tcp"),
        KeyValue::new("network.protocol.name", "http"),
        KeyValue::new("http.request.method", req.method.as_str().to_string()),
        KeyValue::new("mcp_sidecar.request_id", ctx.request_id.clone()),
        KeyValue::new("mcp_sidecar.from_peer", ctx.from_peer),
    ];
    a.push(KeyValue::new(
        "mcp_sidecar.pod",
        telemetry::pod().to_string(),
    ));
    if let Some(route) = &ctx.route {
        a.push(KeyValue::new(
            "mcp_sidecar.route",
            route.server_name.clone(),
        ));
    }
    match &ctx.envelope {
        Some(Envelope::Request { method, id }) => {
            a.push(KeyValue::new("mcp.method.name", method.clone()));
            a.push(KeyValue::new("jsonrpc.request.id", id.clone()));
        }
        Some(Envelope::Notification { method }) => {
            a.push(KeyValue::new("mcp.method.name", method.clone()));
        }
        Some(Envelope::Batch { len }) => {
            a.push(KeyValue::new("mcp_sidecar.batch_size", *len as i64));
        }
        _ => {}
    }
    let version =
        header(req, MCP_PROTOCOL_VERSION).or(ctx.init.as_ref().and_then(|(_, v)| v.as_deref()));
    if let Some(v) = version {
        a.push(KeyValue::new("mcp.protocol.version", v.to_string()));
    }
    if let (Some(m), Some(t)) = (
        method(ctx),
        ctx.telemetry.facts.as_ref().and_then(|f| f.target.clone()),
    ) {
        match target::target_kind(m) {
            Some(target::TargetKind::Tool) => {
                a.push(KeyValue::new("gen_ai.tool.name", t));
                a.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
            }
            Some(target::TargetKind::Prompt) => a.push(KeyValue::new("gen_ai.prompt.name", t)),
            Some(target::TargetKind::Resource) => a.push(KeyValue::new("mcp.resource.uri", t)),
            None => {}
        }
    }
    a
}

/// An attempt to send the request on begins (before its connection): a child span for it,
/// the hop to `next_sidecar` or the call to this pod's MCP server. A retry's previous
/// attempt ended when it failed.
pub(super) fn attempt(ctx: &mut RequestCtx, next_sidecar: Option<&str>) {
    let t = &mut ctx.telemetry;
    if !t.span.started() {
        return;
    }
    let (name, address) = match next_sidecar {
        Some(peer) => ("mcp_sidecar.hop", peer.to_string()),
        None => (
            "mcp_sidecar.upstream",
            ctx.route
                .as_ref()
                .map_or_else(String::new, |r| r.upstream_authority.clone()),
        ),
    };
    t.upstream = t.span.child(name, SpanKind::Client);
    t.upstream
        .set(|| vec![KeyValue::new("server.address", address)]);
}

/// The request head goes on with the attempt's trace context, so the callee's span is its
/// child. With tracing off the client's own `traceparent` passes untouched.
pub(super) fn sending(upstream_request: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    if !ctx.telemetry.span.started() {
        return Ok(());
    }
    // the client's context is the parent of this pod's span, not of the callee's
    upstream_request.remove_header(TRACEPARENT);
    upstream_request.remove_header(TRACESTATE);
    for (field, value) in ctx.telemetry.upstream.inject() {
        upstream_request.insert_header(field, value)?;
    }
    Ok(())
}

/// The connection for this attempt failed (the plan may try again).
pub(super) fn connect_failed(ctx: &mut RequestCtx) {
    std::mem::take(&mut ctx.telemetry.upstream).end(Some("connect_failed"));
}

/// The sidecar answers with `refusal` itself: it refused the request (`refusal`), or answers
/// for an upstream that failed.
pub(super) fn answered(ctx: &mut RequestCtx, answer: &Refusal, refusal: bool) {
    ctx.telemetry.answered = Some(Answered {
        code: answer.code,
        reason: answer.reason,
        refusal,
    });
}

/// The request is over: the span's outcome, the operation histogram, the audit line.
pub(super) fn finish(session: &Session, e: Option<&Error>, ctx: &mut RequestCtx, plan: &Plan) {
    let req = session.req_header();
    begin(req, ctx);
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let answered = ctx.telemetry.answered;
    let error_type: Option<String> = match (answered, ctx.upstream_error) {
        (
            Some(Answered {
                reason: Some(r), ..
            }),
            _,
        ) => Some(r.label().to_string()),
        (_, Some(kind)) => Some(kind.to_string()),
        _ if status >= 400 || status == 0 && e.is_some() => Some(match status {
            0 => "incomplete".to_string(),
            s => s.to_string(),
        }),
        _ => None,
    };
    let ttfb = ctx.responded.unwrap_or_else(Instant::now) - ctx.started;
    if let Some(env) = &ctx.envelope {
        if env.method().is_some() || matches!(env, Envelope::Batch { .. }) {
            METRICS
                .operation_duration
                .with_label_values(&[
                    ctx.route_label(),
                    ctx.rpc_label,
                    error_label(error_type.as_deref()),
                ])
                .observe(ttfb.as_secs_f64());
        }
    }
    let session_id = header(req, MCP_SESSION_ID).or(ctx.legacy_sid.as_deref());
    let span = &ctx.telemetry.span;
    span.set(|| {
        let mut a = vec![KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        )];
        if let Some(via) = plan.via() {
            a.push(KeyValue::new("mcp_sidecar.via", via));
        }
        if let Some(peer) = plan.handoff() {
            a.push(KeyValue::new("mcp_sidecar.handoff", peer.to_string()));
        }
        if let Some(sid) = session_id {
            a.push(KeyValue::new("mcp.session.id", sid.to_string()));
        }
        if let Some(user) = ctx.user_id() {
            a.push(KeyValue::new("enduser.id", user.to_string()));
        }
        if let Some(ans) = answered {
            a.push(KeyValue::new(
                "rpc.response.status_code",
                ans.code.to_string(),
            ));
        }
        a
    });
    let upstream_error = error_type
        .as_deref()
        .filter(|_| ctx.upstream_error.is_some());
    std::mem::take(&mut ctx.telemetry.upstream).end(upstream_error);
    let trace_id = span.trace_id();
    ctx.telemetry.span.end(error_type.as_deref());
    audit_lines(ctx, plan, status, session_id, trace_id);
}

/// The histogram's `error_type`: bounded (a reason, a kind, an HTTP status), or empty.
fn error_label(error_type: Option<&str>) -> &str {
    error_type.unwrap_or("")
}

fn audit_lines(
    ctx: &RequestCtx,
    plan: &Plan,
    status: u16,
    session_id: Option<&str>,
    trace_id: Option<String>,
) {
    if ctx.from_peer || !audit::enabled() {
        // the pod the client reached writes the line
        return;
    }
    let outcome = match ctx.telemetry.answered {
        Some(Answered {
            reason: Some(Reason::ToolDenied),
            ..
        }) => Outcome::RefusedByPolicy,
        Some(Answered { refusal: true, .. }) => Outcome::Refused,
        _ if (200..300).contains(&status) => Outcome::Ok,
        _ => Outcome::Error,
    };
    let write = |method: &str, id: Option<&str>, target: Option<&str>| {
        audit::write(&audit::Line {
            time: audit::timestamp(SystemTime::now() - ctx.started.elapsed()),
            pod: telemetry::pod(),
            route: ctx.route_label(),
            user: ctx.user_id(),
            method,
            target,
            outcome,
            status,
            duration_ms: (ctx.started.elapsed().as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
            request_id: &ctx.request_id,
            jsonrpc_id: id,
            session_id,
            via: plan.via(),
            forwarded_to: plan.next_sidecar(),
            trace_id: trace_id.clone(),
        })
    };
    match &ctx.envelope {
        Some(Envelope::Request { method, id }) if audit::audited(method) => {
            let target = ctx
                .telemetry
                .facts
                .as_ref()
                .and_then(|f| f.target.as_deref());
            write(method, Some(id), target);
        }
        Some(Envelope::Batch { .. }) => {
            let Some(body) = &ctx.raw_body else { return };
            for item in target::batch(body) {
                if audit::audited(&item.method) && item.id.is_some() {
                    write(&item.method, item.id.as_deref(), item.target.as_deref());
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::jsonrpc::Envelope;

    fn request(method: &str, version: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/mcp?key=mcphub_secret", None).unwrap();
        r.insert_header("authorization", "Bearer mcphub_secret")
            .unwrap();
        if let Some(v) = version {
            r.insert_header(MCP_PROTOCOL_VERSION, v).unwrap();
        }
        r
    }

    fn with_body(body: &str) -> RequestCtx {
        let mut ctx = RequestCtx::new();
        ctx.request_id = "r-1".into();
        ctx.envelope = Envelope::parse(body.as_bytes()).ok();
        let method = ctx
            .envelope
            .as_ref()
            .and_then(|e| e.method().map(str::to_string));
        ctx.telemetry.facts = method.and_then(|m| target::facts(body.as_bytes(), &m));
        ctx
    }

    fn value(attrs: &[KeyValue], key: &str) -> Option<String> {
        attrs
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn names_and_attributes_follow_the_mcp_conventions() {
        let req = request("POST", Some("2025-06-18"));
        let ctx = with_body(
            r#"{"jsonrpc":"2.0","id":"a1","method":"tools/call","params":{"name":"get_issue","arguments":{"token":"ghp_x"}}}"#,
        );
        assert_eq!(span_name(&req, &ctx), "tools/call get_issue");
        let attrs = start_attributes(&req, &ctx);
        assert_eq!(
            value(&attrs, "mcp.method.name").as_deref(),
            Some("tools/call")
        );
        assert_eq!(
            value(&attrs, "jsonrpc.request.id").as_deref(),
            Some("\"a1\"")
        );
        assert_eq!(
            value(&attrs, "gen_ai.tool.name").as_deref(),
            Some("get_issue")
        );
        assert_eq!(
            value(&attrs, "gen_ai.operation.name").as_deref(),
            Some("execute_tool")
        );
        assert_eq!(
            value(&attrs, "mcp.protocol.version").as_deref(),
            Some("2025-06-18")
        );
        assert_eq!(
            value(&attrs, "mcp_sidecar.request_id").as_deref(),
            Some("r-1")
        );
        // nothing of the head but its method and version; never the key or the arguments
        for kv in &attrs {
            let v = kv.value.to_string();
            assert!(!v.contains("mcphub_") && !v.contains("ghp_"), "{kv:?}");
        }

        let ctx = with_body(
            r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///x?sig=1"}}"#,
        );
        assert_eq!(span_name(&req, &ctx), "resources/read file:///x");
        let attrs = start_attributes(&req, &ctx);
        assert_eq!(
            value(&attrs, "mcp.resource.uri").as_deref(),
            Some("file:///x")
        );
        assert_eq!(value(&attrs, "gen_ai.tool.name"), None);

        let ctx = with_body(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(span_name(&req, &ctx), "notifications/initialized");
        let ctx = with_body(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#);
        assert_eq!(span_name(&req, &ctx), "batch");
        // no message: the HTTP method and the route (none here)
        assert_eq!(
            span_name(&request("GET", None), &RequestCtx::new()),
            "GET -"
        );
    }
}

//! Prometheus metrics, all under `mcp_sidecar_`. Label values are bounded: routes come from the
//! configuration and JSON-RPC methods from a fixed list (see `protocol::jsonrpc`).

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Encoder, Histogram, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};
use std::sync::LazyLock;

pub struct Metrics {
    /// Requests by route, JSON-RPC method label and HTTP status.
    pub requests: IntCounterVec,
    /// Time from request start to response headers sent downstream (a stream's lifetime is not
    /// latency, so streams are measured to their first byte).
    pub latency: HistogramVec,
    /// Upstream failures by route and kind (connect, timeout, closed, ...).
    pub upstream_errors: IntCounterVec,
    /// Failed session store operations by operation.
    pub store_errors: IntCounterVec,
    /// 1 for the backend in use (`memory` or `redis`).
    pub store_backend: IntGaugeVec,
    /// Session lifecycle events: created, forwarded, recovered, lost (to a peer that took it
    /// over), expired, deleted.
    pub sessions: IntCounterVec,
    /// Sessions owned by this pod (an HPA can scale on it).
    pub active_sessions: IntGauge,
    /// Time to response headers for requests forwarded to the owner pod.
    pub forward_latency: Histogram,
    /// 1 while this pod drains (SIGTERM or the admin API).
    pub draining: IntGauge,
    /// Legacy SSE streams open on this pod.
    pub sse_streams: IntGauge,
    /// Legacy SSE message posts: served here (`local`), sent to the owner pod (`forwarded`),
    /// or served here for a peer (`from_peer`).
    pub sse_posts: IntCounterVec,
    /// Legacy SSE failures by reason (unknown_session, owner_gone, owner_unreachable, ...).
    pub sse_failures: IntCounterVec,
    /// Hub key checks by result: ok, anonymous, missing, malformed, unknown, inactive,
    /// expired, unavailable, missing_token.
    pub auth: IntCounterVec,
    /// Key registry lookups: hit (cache), miss (asked the store), stale (store down, cached
    /// answer used).
    pub auth_cache: IntCounterVec,
    /// Requests refused by hub policy, by route and reason: tool_denied, session_user.
    pub hub_refusals: IntCounterVec,
    /// Shared upstream sessions: established, re-established.
    pub shared_sessions: IntCounterVec,
    /// Client requests on shared upstream sessions, by how they ended: multiplexed (sent with
    /// a rewritten id), answered_here (initialize, initialized, DELETE, GET), refused.
    pub shared_requests: IntCounterVec,
    /// Client requests in flight on this pod's shared upstream sessions.
    pub shared_in_flight: IntGauge,
    /// Requests the sidecar refused before any routing decision, by reason: host, origin
    /// (DNS rebinding checks), body (not one JSON-RPC message or batch under the strict
    /// reading), session_limit.
    pub client_refusals: IntCounterVec,
    /// Peer hops refused, by reason (see `peer::HopError::label`).
    pub hop_refusals: IntCounterVec,
    /// Era probes of `era: auto` routes, by route and verdict (legacy, modern).
    pub era_probes: IntCounterVec,
    /// Legacy sessions the bridge opened for modern clients, by route and event
    /// (established, re_established).
    pub bridge_sessions: IntCounterVec,
    /// MRTR rounds of bridged calls, by route and outcome: asked (an input request went to
    /// the client), resumed, expired (cancelled upstream), refused (a state that failed
    /// verification or belongs elsewhere), gone (the pod holding it is gone), full.
    pub bridge_rounds: IntCounterVec,
    /// Bridged calls waiting on this pod for a modern client's input.
    pub bridge_pending: IntGauge,
    /// `subscriptions/listen` streams of modern clients open on this pod.
    pub bridge_listeners: IntGauge,
    /// MCP semantic conventions' `mcp.server.operation.duration`: a request's time to its
    /// answer's headers, by route, method label and error type (bounded).
    pub operation_duration: HistogramVec,
    /// MCP semantic conventions' `mcp.server.session.duration`: how long sessions owned by
    /// this pod lasted, by route and how they ended.
    pub session_duration: HistogramVec,
    /// Spans handed to the collector.
    pub trace_spans_exported: IntCounter,
    /// Spans never exported: `queue_full` (the exporter fell behind), `export_failed` (the
    /// collector refused or did not answer).
    pub trace_spans_dropped: IntCounterVec,
    /// Audit lines the file writer could not take (its queue was full).
    pub audit_lines_dropped: IntCounter,
}

/// The MCP semantic conventions' advised boundaries for operation durations, in seconds.
const MCP_OPERATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Session lifetimes, in seconds: a minute to a day.
const MCP_SESSION_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
];

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    Metrics {
    requests: register_int_counter_vec!(
        "mcp_sidecar_requests_total",
        "Requests handled, by route, JSON-RPC method, HTTP status and the client's protocol era",
        &["route", "method", "status", "era"]
    )
    .expect("metric registers once"),
    latency: register_histogram_vec!(
        "mcp_sidecar_request_duration_seconds",
        "Time to response headers, by route, JSON-RPC method and the client's protocol era",
        &["route", "method", "era"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once"),
    upstream_errors: register_int_counter_vec!(
        "mcp_sidecar_upstream_errors_total",
        "Upstream failures, by route and kind",
        &["route", "kind"]
    )
    .expect("metric registers once"),
    store_errors: register_int_counter_vec!(
        "mcp_sidecar_redis_errors_total",
        "Session store (Redis) operations that failed or timed out, by operation",
        &["op"]
    )
    .expect("metric registers once"),
    store_backend: register_int_gauge_vec!(
        "mcp_sidecar_store_backend",
        "Session store backend in use (1 = active)",
        &["backend"]
    )
    .expect("metric registers once"),
    sessions: register_int_counter_vec!(
        "mcp_sidecar_sessions_total",
        "Session lifecycle events on this pod: created, forwarded, recovered, lost, expired, deleted",
        &["event"]
    )
    .expect("metric registers once"),
    active_sessions: register_int_gauge!(
        "mcp_sidecar_active_sessions",
        "MCP sessions owned by this pod"
    )
    .expect("metric registers once"),
    forward_latency: register_histogram!(
        "mcp_sidecar_forward_duration_seconds",
        "Time to response headers for requests forwarded to the owner pod",
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once"),
    draining: register_int_gauge!(
        "mcp_sidecar_draining",
        "1 while this pod drains: deregistered, handing requests to peers"
    )
    .expect("metric registers once"),
    sse_streams: register_int_gauge!(
        "mcp_sidecar_sse_streams",
        "Legacy SSE streams open on this pod"
    )
    .expect("metric registers once"),
    sse_posts: register_int_counter_vec!(
        "mcp_sidecar_sse_posts_total",
        "Legacy SSE message posts: local (stream on this pod), forwarded (to the owner pod), from_peer (served for a peer)",
        &["via"]
    )
    .expect("metric registers once"),
    sse_failures: register_int_counter_vec!(
        "mcp_sidecar_sse_failures_total",
        "Legacy SSE failures, by reason",
        &["reason"]
    )
    .expect("metric registers once"),
    auth: register_int_counter_vec!(
        "mcp_sidecar_auth_total",
        "Hub key checks on auth routes, by result",
        &["result"]
    )
    .expect("metric registers once"),
    auth_cache: register_int_counter_vec!(
        "mcp_sidecar_auth_cache_total",
        "Key registry lookups: hit (local cache), miss (store asked), stale (store down, cached answer used)",
        &["result"]
    )
    .expect("metric registers once"),
    client_refusals: register_int_counter_vec!(
        "mcp_sidecar_client_refusals_total",
        "Requests refused before routing, by reason (host, origin, body, session_limit)",
        &["reason"]
    )
    .expect("metric registers once"),
    hub_refusals: register_int_counter_vec!(
        "mcp_sidecar_hub_refusals_total",
        "Requests refused by hub policy, by route and reason (tool_denied, session_user)",
        &["route", "reason"]
    )
    .expect("metric registers once"),
    shared_sessions: register_int_counter_vec!(
        "mcp_sidecar_shared_upstream_sessions_total",
        "Shared upstream sessions established and re-established by this pod",
        &["event"]
    )
    .expect("metric registers once"),
    shared_requests: register_int_counter_vec!(
        "mcp_sidecar_shared_requests_total",
        "Client requests on shared upstream sessions: multiplexed, answered_here, refused",
        &["route", "outcome"]
    )
    .expect("metric registers once"),
    shared_in_flight: register_int_gauge!(
        "mcp_sidecar_shared_in_flight",
        "Client requests in flight on this pod's shared upstream sessions"
    )
    .expect("metric registers once"),
    hop_refusals: register_int_counter_vec!(
        "mcp_sidecar_hop_refusals_total",
        "Peer hops refused, by reason: from_client, not_configured, missing, version, too_many_hops, bad_signature, expired, misdirected, body_digest, replayed, replay_cache_full",
        &["reason"]
    )
    .expect("metric registers once"),
    era_probes: register_int_counter_vec!(
        "mcp_sidecar_era_probes_total",
        "Era probes (server/discover) of era: auto routes, by route and verdict",
        &["route", "era"]
    )
    .expect("metric registers once"),
    bridge_sessions: register_int_counter_vec!(
        "mcp_sidecar_bridge_sessions_total",
        "Legacy sessions the era bridge opened for modern clients: established, re_established",
        &["route", "event"]
    )
    .expect("metric registers once"),
    bridge_rounds: register_int_counter_vec!(
        "mcp_sidecar_bridge_input_rounds_total",
        "MRTR rounds of bridged calls: asked, resumed, expired, refused, gone, full",
        &["route", "outcome"]
    )
    .expect("metric registers once"),
    bridge_pending: register_int_gauge!(
        "mcp_sidecar_bridge_pending_calls",
        "Bridged calls waiting on this pod for a modern client's input"
    )
    .expect("metric registers once"),
    bridge_listeners: register_int_gauge!(
        "mcp_sidecar_bridge_listeners",
        "subscriptions/listen streams of modern clients open on this pod"
    )
    .expect("metric registers once"),
    operation_duration: register_histogram_vec!(
        "mcp_server_operation_duration_seconds",
        "MCP server operation duration (mcp.server.operation.duration): time to the answer's headers, by route, MCP method and error type",
        &["route", "mcp_method_name", "error_type"],
        MCP_OPERATION_BUCKETS.to_vec()
    )
    .expect("metric registers once"),
    session_duration: register_histogram_vec!(
        "mcp_server_session_duration_seconds",
        "MCP session duration (mcp.server.session.duration) of sessions owned by this pod, by route and how they ended (deleted, expired, lost)",
        &["route", "end"],
        MCP_SESSION_BUCKETS.to_vec()
    )
    .expect("metric registers once"),
    trace_spans_exported: register_int_counter!(
        "mcp_sidecar_trace_spans_exported_total",
        "Trace spans the OTLP collector took"
    )
    .expect("metric registers once"),
    trace_spans_dropped: register_int_counter_vec!(
        "mcp_sidecar_trace_spans_dropped_total",
        "Trace spans never exported: queue_full (the exporter fell behind), export_failed (the collector refused or did not answer)",
        &["reason"]
    )
    .expect("metric registers once"),
    audit_lines_dropped: register_int_counter!(
        "mcp_sidecar_audit_lines_dropped_total",
        "Audit lines not written to audit.file because its queue was full"
    )
    .expect("metric registers once"),
}
});

/// The Prometheus text exposition of every registered metric.
pub fn render() -> Vec<u8> {
    let mut out = Vec::with_capacity(8 * 1024);
    let families = prometheus::gather();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding into a Vec cannot fail");
    out
}

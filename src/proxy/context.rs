//! What every request carries, whichever way it is served: its id, route, caller, body and
//! envelope, and timings. What only one way of serving needs lives in that way's plan
//! (`plan/`), never here.

use super::body::BodyBuffer;
use super::cors::Cors;
use super::hop::HopState;
use super::reply::Refusal;
use super::telemetry::RequestTelemetry;
use crate::hub::filter::ToolsFilter;
use crate::hub::Caller;
use crate::protocol::jsonrpc::Envelope;
use crate::route::Route;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::sync::Arc;
use std::time::Instant;

/// The facts of one request that admission gathers and every plan reads.
pub struct RequestCtx {
    pub request_id: String,
    pub(super) route: Option<Arc<Route>>,
    pub(super) started: Instant,
    /// When response headers went downstream.
    pub(super) responded: Option<Instant>,
    /// The whole response went downstream (a client closing the connection afterwards is no
    /// error of this request).
    pub(super) response_done: bool,
    /// The response is an SSE stream, which clients end by closing the connection.
    pub(super) sse_response: bool,
    pub(super) body: BodyBuffer,
    /// Content-Length of the request, when it has one.
    pub(super) content_length: Option<usize>,
    /// The whole body has been seen (and its envelope read).
    pub(super) body_complete: bool,
    pub envelope: Option<Envelope>,
    /// Metrics label: the JSON-RPC method, or what the body was instead.
    pub(super) rpc_label: &'static str,
    pub(super) cors: Option<(Arc<Cors>, String)>,
    pub(super) upstream_error: Option<&'static str>,
    /// Arrived on the peer listener with a verified hop.
    pub(super) from_peer: bool,
    pub(super) hop: HopState,
    /// An `initialize` request's raw params and protocol version, kept to capture the session.
    pub(super) init: Option<(String, Option<String>)>,
    /// The legacy SSE session of this request (a stream it opened, or a post it named).
    pub(super) legacy_sid: Option<String>,
    /// The hub user this request acts for: a verified key, or the caller a peer's signed hop
    /// names. `None`: anonymous (a route without auth, or `auth: optional` without a key).
    pub(super) caller: Option<Caller>,
    /// Tools a `tools/call` body calls, on routes that filter tools.
    pub(super) called_tools: Vec<String>,
    /// The body lists tools on a route that filters them: the answer is filtered.
    pub(super) lists_tools: bool,
    pub(super) tools_filter: Option<ToolsFilter>,
    /// A refusal found once a body held back for the upstream was complete (a denied tool).
    pub(super) denied: Option<Refusal>,
    /// A body read in `request_filter`: judged once the caller is known, and rewritten on a
    /// shared route.
    pub(super) raw_body: Option<Bytes>,
    /// A modern-era (2026-07-28) message, read and checked against its headers
    /// (`protocol::modern`); `None` for legacy requests.
    pub(super) modern: Option<Box<crate::protocol::modern::Request>>,
    /// The request's head says it is of the modern era (also when its body was refused).
    pub(super) modern_head: bool,
    /// The request's span, the current attempt's, and what the audit line needs.
    pub(super) telemetry: RequestTelemetry,
}

impl RequestCtx {
    pub(super) fn new() -> RequestCtx {
        RequestCtx {
            request_id: String::new(),
            route: None,
            started: Instant::now(),
            responded: None,
            response_done: false,
            sse_response: false,
            body: BodyBuffer::default(),
            content_length: None,
            body_complete: false,
            envelope: None,
            rpc_label: "none",
            cors: None,
            upstream_error: None,
            from_peer: false,
            hop: Default::default(),
            init: None,
            legacy_sid: None,
            caller: None,
            called_tools: Vec::new(),
            lists_tools: false,
            tools_filter: None,
            denied: None,
            raw_body: None,
            modern: None,
            modern_head: false,
            telemetry: RequestTelemetry::default(),
        }
    }

    /// The route admission found; every request past admission has one.
    pub(super) fn routed(&self) -> Arc<Route> {
        self.route.clone().expect("admitted requests have a route")
    }

    pub(super) fn apply_cors(&self, resp: &mut ResponseHeader) {
        if let Some((cors, origin)) = &self.cors {
            cors.apply(Some(origin), resp);
        }
    }

    pub(super) fn route_label(&self) -> &str {
        self.route.as_ref().map_or("-", |r| r.server_name.as_str())
    }

    /// The client's protocol era, a metrics label.
    pub(super) fn era(&self) -> &'static str {
        if self.modern_head {
            "modern"
        } else {
            "legacy"
        }
    }

    pub(super) fn user_id(&self) -> Option<&str> {
        self.caller.as_ref().map(|c| c.user.id.as_str())
    }
}

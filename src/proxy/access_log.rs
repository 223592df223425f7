//! The end of every request: the request and latency metrics, and one access line saying how
//! it was served (`via=` from its plan).

use super::context::RequestCtx;
use super::plan::Plan;
use crate::metrics::METRICS;
use crate::protocol::headers::MCP_SESSION_ID;
use crate::protocol::shown;
use log::info;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorType;
use std::time::Instant;

/// The client hung up or its connection broke: routine (the access line records it, and only
/// when the answer was not complete).
pub(super) fn closed_by_client(e: &Error) -> bool {
    e.esource() == &pingora::ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

pub(super) fn log(session: &Session, e: Option<&Error>, ctx: &RequestCtx, plan: &Plan) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let elapsed = ctx.responded.unwrap_or_else(Instant::now) - ctx.started;
    let route = ctx.route_label();
    let status_label = status.to_string();
    METRICS
        .requests
        .with_label_values(&[route, ctx.rpc_label, status_label.as_str(), ctx.era()])
        .inc();
    METRICS
        .latency
        .with_label_values(&[route, ctx.rpc_label, ctx.era()])
        .observe(elapsed.as_secs_f64());
    if !log::log_enabled!(target: "access", log::Level::Info) {
        return;
    }
    let req = session.req_header();
    let client = session
        .client_addr()
        .map_or_else(|| "-".to_string(), |a| a.to_string());
    let session_id = req
        .headers
        .get(MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .or(ctx.legacy_sid.as_deref())
        .unwrap_or("-");
    // the path only: a query string may carry a hub key
    info!(
        target: "access",
        "request_id={} client={} method={} path={} route={} rpc={} status={} ttfb_ms={:.1} total_ms={:.1} session={}{}{}{}{}{}{}{}",
        ctx.request_id,
        client,
        req.method,
        shown(req.uri.path(), 256),
        route,
        ctx.rpc_label,
        status,
        elapsed.as_secs_f64() * 1000.0,
        ctx.started.elapsed().as_secs_f64() * 1000.0,
        session_id,
        ctx.user_id().map(|u| format!(" user={u}")).unwrap_or_default(),
        plan.via().map(|v| format!(" via={v}")).unwrap_or_default(),
        if ctx.modern_head { " era=modern" } else { "" },
        if ctx.from_peer { " from_peer=true" } else { "" },
        ctx.upstream_error.map(|k| format!(" upstream_error={k}")).unwrap_or_default(),
        plan.handoff().map(|p| format!(" handoff={p}")).unwrap_or_default(),
        match e {
            // a stream ends when its client closes it: that is how it ends, not an error
            Some(e) if closed_by_client(e) && ctx.sse_response && !ctx.response_done =>
                " closed_by=client".to_string(),
            Some(e) if closed_by_client(e) && ctx.response_done => String::new(),
            Some(e) => format!(" error=\"{}\"", e.etype().as_str()),
            None => String::new(),
        },
    );
}

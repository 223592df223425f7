//! A route's `tool_groups` on a request served on this pod: a `tools/call` of a tool the
//! caller may not use is refused before the upstream sees it, and a `tools/list` answer is
//! filtered on its way out (a JSON body whole, an SSE stream event by event, see
//! `crate::hub::filter`). A request sent to another sidecar is filtered there.

use super::context::RequestCtx;
use super::reply::{Reason, Refusal};
use crate::hub::filter::ToolsFilter;
use crate::metrics::METRICS;
use crate::protocol::jsonrpc::code;
use crate::protocol::shown;
use bytes::Bytes;
use log::info;
use pingora::http::ResponseHeader;

/// A `tools/call` of a tool the caller's groups do not allow: refused here, so the upstream
/// never sees it.
pub(super) fn refusal(ctx: &RequestCtx) -> Option<Refusal> {
    let route = ctx.route.as_ref()?;
    let access = route.policy.tools.as_ref()?;
    let user = ctx.caller.as_ref().map(|c| &*c.user);
    let denied = ctx.called_tools.iter().find(|t| !access.allows(user, t))?;
    METRICS
        .hub_refusals
        .with_label_values(&[route.server_name.as_str(), "tool_denied"])
        .inc();
    info!(
        "request_id={} route={} user={} tools/call \"{}\" denied by tool_groups",
        ctx.request_id,
        route.server_name,
        ctx.user_id().unwrap_or("-"),
        shown(denied, 64)
    );
    Some(
        Refusal::new(
            403,
            code::SERVER_ERROR,
            format!("tool \"{}\" is not available to you", shown(denied, 64)),
        )
        .with_reason(Reason::ToolDenied),
    )
}

/// Arms the filter for a `tools/list` answer of this pod's MCP server.
pub(super) fn arm(ctx: &mut RequestCtx, resp: &mut ResponseHeader, max_held: usize) {
    if !ctx.lists_tools {
        return;
    }
    let ct = resp
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ctx.tools_filter = ToolsFilter::for_content_type(ct, max_held);
    if ctx.tools_filter.is_some() {
        resp.remove_header("content-length");
    }
}

/// Filters the answer's tools as the filter was armed (else leaves the body alone).
pub(super) fn feed(ctx: &mut RequestCtx, body: &mut Option<Bytes>, end_of_stream: bool) {
    let Some(filter) = ctx.tools_filter.as_mut() else {
        return;
    };
    let (Some(route), user) = (ctx.route.as_ref(), ctx.caller.as_ref().map(|c| &*c.user)) else {
        return;
    };
    let Some(access) = route.policy.tools.as_ref() else {
        return;
    };
    let out = filter.feed(
        body.as_deref(),
        end_of_stream,
        &|name| access.allows(user, name),
        &|| {
            crate::protocol::jsonrpc::error_body(
                ctx.envelope.as_ref().and_then(|e| e.request_id()),
                code::INTERNAL_ERROR,
                "tools/list answer too large to filter",
            )
        },
    );
    *body = Some(out);
}

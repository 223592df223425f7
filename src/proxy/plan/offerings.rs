//! `offerings/list`, the hub's custom method: the sidecar answers it itself by asking the
//! client's session for `tools/list`, `prompts/list` and `resources/list` (every page) and
//! combining the three, with the tools filtered as `tools/list` would be.

use super::{Plan, SessionIds};
use crate::protocol::headers::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID, X_REQUEST_ID};
use crate::protocol::jsonrpc::code;
use crate::proxy::context::RequestCtx;
use crate::proxy::reply::{self, Refusal};
use crate::proxy::upstream::upstream_target;
use crate::proxy::Sidecar;
use crate::session::upstream_call;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde_json::{json, Value};

/// The ids of the sidecar's own list requests: `mcp-sidecar-offerings-tools-<uuid>`, …
/// Distinct per list and per call, since they run at once on one session (shared by many
/// clients on `session_mode: shared` routes) and servers key answers by request id.
const LIST_ID: &str = "mcp-sidecar-offerings";
/// Pages followed per list at most (a server that keeps handing out cursors cannot hold the
/// request forever).
const MAX_PAGES: usize = 50;

/// The JSON-RPC message with our id in an answer body (JSON or a finite SSE stream).
fn message_of(answer: &upstream_call::Answer, id: &str) -> Option<Value> {
    let is_ours = |v: &Value| v.get("id").and_then(Value::as_str) == Some(id);
    let sse = answer
        .header("content-type")
        .is_some_and(|ct| ct.contains("text/event-stream"));
    if !sse {
        return serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .filter(is_ours);
    }
    let text = String::from_utf8_lossy(&answer.body);
    text.replace("\r\n", "\n").split("\n\n").find_map(|event| {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        serde_json::from_str::<Value>(&data.join("\n"))
            .ok()
            .filter(is_ours)
    })
}

/// Whether the sidecar answers this request itself: `offerings/list` on a session served
/// here (or without one, which it refuses), never one served by another sidecar, which
/// answers it there.
pub(super) fn asked(ctx: &RequestCtx, plan: &Plan) -> bool {
    ctx.envelope.as_ref().and_then(|e| e.method()) == Some("offerings/list")
        && match plan {
            Plan::Local(_) => true,
            Plan::Recovered(inner) => inner.served_here(),
            Plan::Shared(s) => s.owner().is_none(),
            _ => false,
        }
}

impl Sidecar {
    /// Every item of one list method; a server without the capability (method not found)
    /// has none.
    async fn list_all(
        &self,
        route: &crate::route::Route,
        path: &str,
        headers: &[(&str, &str)],
        method: &str,
        field: &str,
    ) -> Result<Vec<Value>, String> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let id = format!("{LIST_ID}-{field}-{}", uuid::Uuid::new_v4().simple());
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
            let answer = upstream_call::post(
                route.upstream_addr,
                &route.upstream_authority,
                path,
                headers,
                body.to_string().as_bytes(),
                self.sessions.settings.recovery_timeout,
            )
            .await
            .map_err(|e| format!("{method}: {e}"))?;
            if !(200..300).contains(&answer.status) {
                return Err(format!(
                    "{method}: upstream answered HTTP {}",
                    answer.status
                ));
            }
            let msg = message_of(&answer, &id).ok_or_else(|| format!("{method}: no answer"))?;
            if let Some(err) = msg.get("error") {
                if err.get("code").and_then(Value::as_i64) == Some(-32601) {
                    return Ok(items);
                }
                return Err(format!(
                    "{method}: {}",
                    err.get("message").unwrap_or(&Value::Null)
                ));
            }
            let result = msg.get("result").cloned().unwrap_or(Value::Null);
            if let Some(Value::Array(page)) = result.get(field) {
                items.extend(page.iter().cloned());
            }
            match result.get("nextCursor").and_then(Value::as_str) {
                Some(c) if !c.is_empty() => cursor = Some(c.to_string()),
                _ => return Ok(items),
            }
        }
        Ok(items)
    }

    /// Answers `offerings/list` on the client's session (which is on this pod).
    pub(super) async fn answer_offerings(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        on: Option<&SessionIds>,
        upstream_version: Option<&str>,
    ) -> Result<()> {
        let Some(upstream_sid) = on.map(|s| s.upstream.clone()) else {
            let refusal = Refusal::new(
                400,
                code::INVALID_REQUEST,
                "offerings/list needs a session: send initialize first, then its Mcp-Session-Id",
            );
            return reply::send(session, ctx, &refusal).await;
        };
        let (route, path, version) = upstream_target(session, ctx);
        // a bridged modern client's session speaks the legacy version the bridge negotiated
        let version = upstream_version.or(version).map(str::to_string);
        let extra = self.injected(session, ctx, on.map(|s| s.client.as_str()));
        let mut headers: Vec<(&str, &str)> = vec![(MCP_SESSION_ID, upstream_sid.as_str())];
        if let Some(v) = &version {
            headers.push((MCP_PROTOCOL_VERSION, v.as_str()));
        }
        headers.extend(extra.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let (tools, prompts, resources) = tokio::join!(
            self.list_all(&route, &path, &headers, "tools/list", "tools"),
            self.list_all(&route, &path, &headers, "prompts/list", "prompts"),
            self.list_all(&route, &path, &headers, "resources/list", "resources"),
        );
        let (mut tools, prompts, resources) = match (tools, prompts, resources) {
            (Ok(t), Ok(p), Ok(r)) => (t, p, r),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                log::warn!(
                    "request_id={} offerings/list on {} failed: {e}",
                    ctx.request_id,
                    route.server_name
                );
                let refusal = Refusal::new(
                    502,
                    code::SERVER_ERROR,
                    format!(
                        "offerings/list: upstream MCP server {} failed: {e}",
                        route.server_name
                    ),
                );
                return reply::send(session, ctx, &refusal).await;
            }
        };
        if let Some(access) = &route.policy.tools {
            let user = ctx.caller.as_ref().map(|c| &*c.user);
            tools.retain(|t| {
                t.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| access.allows(user, n))
            });
        }
        let id: Value = ctx
            .envelope
            .as_ref()
            .and_then(|e| e.request_id())
            .and_then(|raw| serde_json::from_str(raw).ok())
            .unwrap_or(Value::Null);
        let body = json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {"tools": tools, "prompts": prompts, "resources": resources},
        })
        .to_string();
        let mut resp = ResponseHeader::build(200, Some(5))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(s) = on.filter(|s| !s.client.is_empty()) {
            resp.insert_header(MCP_SESSION_ID, s.client.as_str())?;
        }
        ctx.apply_cors(&mut resp);
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await
    }
}

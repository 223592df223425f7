//! What happens to a request before a plan exists, in this order: its request id; `Host` and
//! `Origin` (the DNS rebinding check) and a CORS preflight; its route, session id and
//! Content-Length; a small body read whole; the peer hop verified; the caller authenticated;
//! then, the caller known, the body read strictly and judged (`protocol::strict`), the session
//! limit, and the tool policy. A body too large to read first is judged the same way once
//! complete (`judge_held_body`), before the upstream gets a byte of it.

use super::body::{envelope_of, looks_like_json, BodyBuffer, BodyProgress};
use super::context::RequestCtx;
use super::reply::Refusal;
use super::{telemetry, tool_filter, Sidecar, Verdict};
use crate::config::LimitsSection;
use crate::hub::policy::AuthMode;
use crate::metrics::METRICS;
use crate::protocol::headers::{self, MCP_SESSION_ID, X_REQUEST_ID};
use crate::protocol::jsonrpc::{code, initialize_params};
use crate::protocol::{modern, shown, strict};
use bytes::Bytes;
use log::info;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorType;

/// Bodies up to this size (by Content-Length) are read before the upstream is chosen. It is
/// Pingora's retry buffer size, which then replays them to the upstream (and on retries).
pub(super) const PRE_READ_LIMIT: usize = 64 * 1024;

/// Seconds a client refused for the session limit is asked to wait.
const SESSION_LIMIT_RETRY_AFTER: u64 = 5;

pub(super) fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers.get(name).map(|v| v.as_bytes())
}

pub(super) fn too_large(limit: usize) -> Refusal {
    Refusal::new(
        413,
        code::INVALID_REQUEST,
        format!("request body exceeds the limit of {limit} bytes"),
    )
}

/// The error that makes `fail_to_proxy` answer 413.
pub(super) fn body_over_limit<T>() -> Result<T> {
    Error::e_explain(ErrorType::HTTPStatus(413), "request body over the limit")
}

/// The params and protocol version of an `initialize`, as they will be stored with the session
/// and replayed in a recovery's headers: bounded in size, the version shaped like a version.
fn checked_initialize(
    full: &[u8],
    limits: &LimitsSection,
) -> Result<(String, Option<String>), Refusal> {
    let invalid = |m: String| Refusal::new(400, code::INVALID_PARAMS, m);
    let (params, version) =
        initialize_params(full).ok_or_else(|| invalid("initialize without params".into()))?;
    if params.len() > limits.max_init_params {
        return Err(invalid(format!(
            "initialize params of {} bytes exceed the limit of {} bytes",
            params.len(),
            limits.max_init_params
        )));
    }
    if let Some(v) = version
        .as_deref()
        .filter(|v| !headers::is_protocol_version(v))
    {
        return Err(invalid(format!(
            "protocolVersion \"{}\" is not a version such as 2025-06-18",
            shown(v, 32)
        )));
    }
    Ok((params, version))
}

impl RequestCtx {
    /// Records what the complete body is, from its envelope alone (cheap; no authentication
    /// has happened yet when a small body is read).
    pub(super) fn complete_body(&mut self, full: &[u8]) {
        self.body_complete = true;
        match envelope_of(full) {
            Some(Ok(env)) => {
                self.rpc_label = env.label();
                self.envelope = Some(env);
            }
            Some(Err(_)) => self.rpc_label = "invalid",
            None if full.is_empty() => {}
            None => self.rpc_label = "non_json",
        }
    }

    /// Reads the complete body strictly, once the caller is authenticated, before anything is
    /// decided by its method or tool names (see `protocol::strict`): a body that is not exactly
    /// one JSON-RPC message or batch is refused, never passed on unjudged. Only a body that is
    /// not JSON at all, on a route that neither authenticates, filters nor shares sessions,
    /// passes without a reading: the sidecar decides nothing by it.
    pub(super) fn judge(&mut self, full: &[u8], limits: &LimitsSection) -> Result<(), Refusal> {
        let Some(route) = self.route.as_ref() else {
            return Ok(());
        };
        if full.is_empty() {
            return Ok(());
        }
        let filtered = route.policy.tools.is_some();
        let guarded = filtered || route.policy.mode != AuthMode::None || route.shared;
        // (a byte order mark counts: a lenient server reads JSON behind one)
        if !guarded && !full.starts_with(b"\xEF\xBB\xBF") && !looks_like_json(full) {
            return Ok(());
        }
        let reading = strict::read(full, limits.max_batch).map_err(|e| {
            self.rpc_label = "invalid";
            METRICS.client_refusals.with_label_values(&["body"]).inc();
            Refusal::new(
                400,
                e.code(),
                format!("request body refused: {}", e.message()),
            )
        })?;
        if filtered {
            self.lists_tools = reading.requests("tools/list");
            self.called_tools = reading.called_tools().map(str::to_string).collect();
        }
        if reading.requests("initialize") {
            self.init = Some(checked_initialize(full, limits)?);
        }
        Ok(())
    }

    /// A modern-era message (its head says so: `protocol::modern::is_modern_head`) is read
    /// and checked against its headers here, before any upstream work and before the hub's
    /// tool policy reads its method or tool name.
    pub(super) fn read_modern(&mut self, req: &RequestHeader, full: &[u8]) -> Result<(), Refusal> {
        if !is_modern(req) {
            return Ok(());
        }
        self.modern_head = true;
        let head = modern::Head {
            version: header(req, headers::MCP_PROTOCOL_VERSION),
            method: header(req, modern::MCP_METHOD),
            name: header(req, modern::MCP_NAME),
        };
        match modern::read(&head, full) {
            Ok(request) => {
                self.modern = Some(Box::new(request));
                Ok(())
            }
            Err(refused) => {
                METRICS.client_refusals.with_label_values(&["modern"]).inc();
                let mut refusal = Refusal::new(refused.status(), refused.code(), refused.message());
                refusal.data = refused.data();
                // the tools of a refused message are not looked at
                self.called_tools.clear();
                Err(refusal)
            }
        }
    }
}

/// Whether a request is a modern-era POST (a GET or DELETE of the legacy era is not).
pub(super) fn is_modern(req: &RequestHeader) -> bool {
    req.method == http::Method::POST
        && modern::is_modern_head(
            header(req, headers::MCP_PROTOCOL_VERSION),
            req.headers.contains_key(MCP_SESSION_ID),
            req.headers.contains_key(modern::MCP_METHOD),
        )
}

impl Sidecar {
    /// Everything `request_filter` decides before choosing a plan. `Proxy`: the request goes
    /// on to a plan; `Answered`: a CORS preflight went out.
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Verdict> {
        let req = session.req_header();
        ctx.request_id = headers::request_id(header(req, X_REQUEST_ID));
        ctx.from_peer = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .is_some_and(|a| a.port() == self.peer_port);
        if let Err(refusal) = self.check_host_and_origin(req, ctx.from_peer) {
            return Ok(Verdict::Refused(refusal));
        }
        let req = session.req_header();
        if let Some(cors) = &self.cors {
            if let Some(origin) = req.headers.get("origin").and_then(|v| v.to_str().ok()) {
                ctx.cors = Some((cors.clone(), origin.to_string()));
                let is_preflight = req.method == http::Method::OPTIONS
                    && req.headers.contains_key("access-control-request-method");
                if is_preflight {
                    if let Some(resp) = cors.preflight(origin) {
                        session.write_response_header(Box::new(resp), true).await?;
                        return Ok(Verdict::Answered);
                    }
                }
            }
        }
        if let Err(refusal) = self.check_head(session.req_header(), ctx) {
            // the body (if any) is unread: the refusal does not reuse this connection
            return Ok(Verdict::Refused(refusal));
        }
        if ctx
            .content_length
            .is_some_and(|n| n > 0 && n <= PRE_READ_LIMIT)
        {
            self.pre_read_body(session, ctx).await?;
        }
        telemetry::begin(session.req_header(), ctx);
        let checked = match self.hops.admit(session, ctx) {
            Ok(()) => {
                let scope = ctx.telemetry.span.scope();
                scope.run(self.authenticate(session, ctx)).await
            }
            Err(refusal) => Err(refusal),
        };
        // the body is read fully only now that the caller is known
        let req = session.req_header();
        let checked = checked
            .and_then(|()| match ctx.raw_body.clone() {
                Some(body) => ctx
                    .judge(&body, &self.limits)
                    .and_then(|()| ctx.read_modern(req, &body)),
                None => Ok(()),
            })
            .and_then(|()| self.admit_new_session(ctx))
            .and_then(|()| tool_filter::refusal(ctx).map_or(Ok(()), Err));
        Ok(match checked {
            Ok(()) => Verdict::Proxy,
            Err(refusal) => Verdict::Refused(refusal),
        })
    }

    /// A body held back until complete (too large to read in `request_filter`, or chunked),
    /// checked against its hop and judged as a pre-read body is. `Err` is the status
    /// `fail_to_proxy` answers with `ctx.denied`: the upstream has the headers but not a byte
    /// of this body.
    pub(super) fn judge_held_body(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
        full: Bytes,
    ) -> Result<Bytes> {
        let full = self.hops.settle(ctx, full)?;
        ctx.complete_body(&full);
        telemetry::body_known(req, ctx, &full);
        let judged = ctx
            .judge(&full, &self.limits)
            .and_then(|()| ctx.read_modern(req, &full))
            .and_then(|()| self.admit_new_session(ctx));
        if let Err(refusal) = judged {
            let status = refusal.status;
            ctx.denied = Some(refusal);
            return Error::e_explain(ErrorType::HTTPStatus(status), "body refused");
        }
        if let Some(refusal) = tool_filter::refusal(ctx) {
            ctx.denied = Some(refusal);
            return Error::e_explain(ErrorType::HTTPStatus(403), "tool denied");
        }
        Ok(full)
    }

    /// Decides, from headers alone, whether the request may go on. `Err` is the refusal.
    fn check_head(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        let path = req.uri.path();
        let route = self.routes.find(path).ok_or_else(|| {
            Refusal::new(404, code::SERVER_ERROR, format!("no route for path {path}"))
        })?;
        ctx.route = Some(route.clone());
        if let Some(sid) = header(req, MCP_SESSION_ID) {
            if !headers::is_valid_session_id(sid) {
                return Err(Refusal::new(
                    400,
                    code::INVALID_REQUEST,
                    "Mcp-Session-Id must be 1 to 256 characters of visible ASCII (0x21-0x7E)",
                ));
            }
        }
        ctx.content_length = header(req, "content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.trim().parse::<usize>().ok());
        if ctx.content_length.is_some_and(|n| n > self.limits.max_body) {
            return Err(too_large(self.limits.max_body));
        }
        Ok(())
    }

    /// The DNS rebinding check the MCP server can no longer make once the sidecar rewrote
    /// `Host`: the client must name this sidecar, and a browser's `Origin` must be allowed.
    /// A verified peer's hop carries what its own pod already checked.
    fn check_host_and_origin(&self, req: &RequestHeader, from_peer: bool) -> Result<(), Refusal> {
        if from_peer {
            return Ok(());
        }
        let host = header(req, "host")
            .and_then(|h| std::str::from_utf8(h).ok())
            .or(req.uri.authority().map(|a| a.as_str()));
        if let Some(host) = host.filter(|h| !self.clients.host_allowed(h)) {
            METRICS.client_refusals.with_label_values(&["host"]).inc();
            return Err(Refusal::new(
                421,
                code::SERVER_ERROR,
                format!("Host \"{}\" is not served here", shown(host, 128)),
            ));
        }
        if let Some(origin) = req.headers.get("origin") {
            let allowed = origin.to_str().is_ok_and(|o| match &self.cors {
                Some(cors) => cors.allows(o),
                None => self.clients.origin_allowed(o),
            });
            if !allowed {
                // the spec's Origin validation: 403
                METRICS.client_refusals.with_label_values(&["origin"]).inc();
                return Err(Refusal::new(403, code::SERVER_ERROR, "origin not allowed"));
            }
        }
        Ok(())
    }

    /// A new session beyond `limits.max_sessions` on this pod: 503, try again (another pod,
    /// or later).
    fn admit_new_session(&self, ctx: &RequestCtx) -> Result<(), Refusal> {
        if ctx.init.is_none()
            || self.sessions.is_draining()
            || self.sessions.local_count() < self.limits.max_sessions
        {
            return Ok(());
        }
        METRICS
            .client_refusals
            .with_label_values(&["session_limit"])
            .inc();
        Err(Refusal::new(
            503,
            code::SERVER_ERROR,
            format!(
                "this pod holds its limit of {} sessions; retry shortly",
                self.limits.max_sessions
            ),
        )
        .with_retry_after(SESSION_LIMIT_RETRY_AFTER))
    }

    /// Reads a small body completely before the upstream is contacted. Pingora keeps it in its
    /// retry buffer and sends it on from there.
    async fn pre_read_body(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        session.enable_retry_buffering();
        let mut body = BodyBuffer::default();
        // a client hanging up mid-body is the client's doing, not a 500
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|e| e.into_down())?
        {
            if body.push(Some(chunk), false, self.limits.max_body) == BodyProgress::TooLarge {
                // more bytes than Content-Length announced
                return body_over_limit();
            }
        }
        match body.push(None, true, self.limits.max_body) {
            BodyProgress::Complete(full) => {
                ctx.complete_body(&full);
                // judged once the caller is known; rewritten later on shared routes
                ctx.raw_body = Some(full);
            }
            _ => return body_over_limit(),
        }
        Ok(())
    }

    /// Who the request acts for (see `crate::hub`). On the peer listener the caller is the one
    /// the signed hop names; client headers are not read there.
    async fn authenticate(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        let route = ctx.routed();
        let req = session.req_header();
        let result = if ctx.from_peer {
            self.hub
                .from_peer(&route.policy, super::hop::user(req))
                .await
        } else {
            self.hub
                .authenticate(&route.policy, &req.headers, req.uri.query())
                .await
        };
        match result {
            Ok(caller) => {
                ctx.caller = caller;
                Ok(())
            }
            Err(e) => {
                info!(
                    "request_id={} route={} hub key refused: {}",
                    ctx.request_id,
                    route.server_name,
                    e.label()
                );
                Err(Refusal::new(e.status(), code::SERVER_ERROR, e.message())
                    .with_challenge(e.challenge(&self.hub.realm)))
            }
        }
    }
}

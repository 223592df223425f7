//! The Pingora proxy. Each phase says what it decides; the work lives in the modules beside
//! this one (body buffering, CORS, replies) and in `route` and `protocol`.
//!
//! A request flows: request id → Origin check and CORS preflight → route → header checks →
//! body limit → small bodies read whole (request_filter); larger or chunked bodies held until
//! complete (request_body_filter), so the envelope is known before the upstream gets a byte of
//! body; path, Host and request id set for the upstream (upstream_request_filter); response
//! headers decorated (response_filter); one access line and the metrics (logging).
//!
//! A request with a session id is routed by the session layer (`crate::session`, which
//! explains every case): to the local MCP server, to the owner pod's sidecar over the signed
//! hop, or through a recovery. Requests arriving on the peer listener must carry a valid hop.

mod body;
mod cors;
mod hop;
mod offerings;
mod relay;
mod reply;
mod shared;

use crate::clients::Clients;
use crate::config::{Config, LimitsSection};
use crate::hub::filter::ToolsFilter;
use crate::hub::policy::{AuthMode, TemplateVars};
use crate::hub::{Caller, Hub};
use crate::legacy;
use crate::metrics::METRICS;
use crate::protocol::headers::{self, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, X_REQUEST_ID};
use crate::protocol::jsonrpc::{code, initialize_params, Envelope};
use crate::protocol::messages::MessageStream;
use crate::protocol::unknown_session::may_be_unknown_session;
use crate::protocol::{shown, strict};
use crate::route::{Route, RouteTable};
use crate::session::{Decision, Sessions, StreamDecision};
use crate::store::{unix_now, SessionRecord, Transport};
use async_trait::async_trait;
use body::{envelope_of, BodyBuffer, BodyProgress};
use bytes::Bytes;
use cors::Cors;
use log::{info, warn};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::ErrorType;
use reply::Refusal;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bodies up to this size (by Content-Length) are read before the upstream is chosen. It is
/// Pingora's retry buffer size, which then replays them to the upstream (and on retries).
const PRE_READ_LIMIT: usize = 64 * 1024;

/// Seconds a client refused for the session limit is asked to wait.
const SESSION_LIMIT_RETRY_AFTER: u64 = 5;

/// The sidecar's proxy logic, shared by all worker threads.
pub struct Sidecar {
    routes: RouteTable,
    sessions: Arc<Sessions>,
    hub: Arc<Hub>,
    /// Requests arriving on this port come from peer sidecars.
    peer_port: u16,
    hops: hop::Hops,
    cors: Option<Arc<Cors>>,
    clients: Clients,
    limits: LimitsSection,
    connect_timeout: Duration,
    upstream_idle: Duration,
    upstream_read: Option<Duration>,
    upstream_write: Duration,
    shared: Arc<crate::shared::Shared>,
}

impl Sidecar {
    pub fn new(config: &Config, sessions: Arc<Sessions>, hub: Arc<Hub>) -> Result<Sidecar, String> {
        let peer_port = config
            .server
            .peer_listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| e.to_string())?
            .port();
        Ok(Sidecar {
            routes: RouteTable::from_config(config)?,
            shared: Arc::new(crate::shared::Shared::new(
                sessions.clone(),
                config.session.shared_ttl,
                config.limits.max_held_message,
            )),
            hops: hop::Hops::new(config, sessions.settings.me.clone()),
            sessions,
            hub,
            peer_port,
            cors: config.cors.as_ref().map(|c| Arc::new(Cors::new(c))),
            clients: Clients::new(&config.clients).map_err(|(field, m)| format!("{field}: {m}"))?,
            limits: config.limits.clone(),
            connect_timeout: config.timeouts.connect,
            upstream_idle: config.timeouts.upstream_idle,
            upstream_read: config.timeouts.upstream_read,
            upstream_write: config.timeouts.upstream_write,
        })
    }
}

/// Where a session's request is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// This pod's MCP server.
    Upstream,
    /// The owner pod's peer listener.
    Owner(String),
}

/// The session a request belongs to, as the session layer routed it.
struct SessionCtx {
    /// What the client sends and must keep seeing.
    client_sid: String,
    /// What the local MCP server knows (differs after a recovery).
    upstream_sid: String,
    target: Target,
    /// How it was routed, for the access line: local, forwarded, recovered.
    via: &'static str,
    /// A request gets one retry through recovery, never more.
    retried: bool,
    /// A legacy SSE message post (session id in the query; never recovered).
    legacy: bool,
}

/// Per-request state.
pub struct RequestCtx {
    pub request_id: String,
    route: Option<Arc<Route>>,
    started: Instant,
    /// When response headers went downstream.
    responded: Option<Instant>,
    /// The whole response went downstream (a client closing the connection afterwards is no
    /// error of this request).
    response_done: bool,
    /// The response is an SSE stream, which clients end by closing the connection.
    sse_response: bool,
    body: BodyBuffer,
    /// Content-Length of the request, when it has one.
    content_length: Option<usize>,
    /// The whole body has been seen (and its envelope read).
    body_complete: bool,
    pub envelope: Option<Envelope>,
    /// Metrics label: the JSON-RPC method, or what the body was instead.
    rpc_label: &'static str,
    cors: Option<(Arc<Cors>, String)>,
    upstream_error: Option<&'static str>,
    /// Arrived on the peer listener with a verified hop.
    from_peer: bool,
    hop: hop::HopState,
    session: Option<SessionCtx>,
    /// An `initialize` request's raw params and protocol version, kept to capture the session.
    init: Option<(String, Option<String>)>,
    /// Set when the next upstream_peer must recover the session first, with the reason.
    recover: Option<&'static str>,
    /// The legacy SSE session of this request (a stream it opened, or a post it carried).
    legacy_sid: Option<String>,
    /// A legacy post's stream turned out to be gone while forwarding (the reason).
    legacy_gone: Option<&'static str>,
    /// This pod drains: a request without a session goes to this live peer instead.
    handoff: Option<String>,
    /// The hub user this request acts for: a verified key, or the caller a peer's signed hop
    /// names. `None`: anonymous (a route without auth, or `auth: optional` without a key).
    caller: Option<Caller>,
    /// Tools a `tools/call` body calls, on routes that filter tools.
    called_tools: Vec<String>,
    /// The body lists tools on a route that filters them: the answer is filtered.
    lists_tools: bool,
    tools_filter: Option<ToolsFilter>,
    /// A refusal found once a body held back for the upstream was complete (a denied tool).
    denied: Option<Refusal>,
    /// A client session of a shared route: the context of its upstream session.
    shared_context: Option<String>,
    /// The request goes to this pod's shared upstream session: ids are rewritten on the way
    /// in and restored on the way out.
    mux_active: bool,
    /// Upstream ids registered for this request, released when it ends.
    mux_ids: Vec<String>,
    /// The rewritten body.
    mux_body: Option<Bytes>,
    /// A body read in `request_filter`: judged once the caller is known, and rewritten on a
    /// shared route.
    raw_body: Option<Bytes>,
    /// The answer being restored for the client (and filtered, on tool-filtering routes).
    mux_stream: Option<MessageStream>,
}

impl RequestCtx {
    fn apply_cors(&self, resp: &mut ResponseHeader) {
        if let Some((cors, origin)) = &self.cors {
            cors.apply(Some(origin), resp);
        }
    }

    fn route_label(&self) -> &str {
        self.route.as_ref().map_or("-", |r| r.server_name.as_str())
    }

    fn user_id(&self) -> Option<&str> {
        self.caller.as_ref().map(|c| c.user.id.as_str())
    }

    /// A `tools/call` of a tool the caller's groups do not allow: refused here, so the upstream
    /// never sees it.
    fn tool_refusal(&self) -> Option<Refusal> {
        let route = self.route.as_ref()?;
        let access = route.policy.tools.as_ref()?;
        let user = self.caller.as_ref().map(|c| &*c.user);
        let denied = self.called_tools.iter().find(|t| !access.allows(user, t))?;
        METRICS
            .hub_refusals
            .with_label_values(&[route.server_name.as_str(), "tool_denied"])
            .inc();
        info!(
            "request_id={} route={} user={} tools/call \"{}\" denied by tool_groups",
            self.request_id,
            route.server_name,
            self.user_id().unwrap_or("-"),
            shown(denied, 64)
        );
        Some(Refusal::new(
            403,
            code::SERVER_ERROR,
            format!("tool \"{}\" is not available to you", shown(denied, 64)),
        ))
    }

    /// Records what the complete body is, from its envelope alone (cheap; no authentication
    /// has happened yet when a small body is read).
    fn complete_body(&mut self, full: &[u8]) {
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
    fn judge(&mut self, full: &[u8], limits: &LimitsSection) -> Result<(), Refusal> {
        let Some(route) = self.route.as_ref() else {
            return Ok(());
        };
        if full.is_empty() {
            return Ok(());
        }
        let filtered = route.policy.tools.is_some();
        let guarded = filtered || route.policy.mode != AuthMode::None || route.shared;
        let looks_like_json = full.starts_with(b"\xEF\xBB\xBF") || envelope_of(full).is_some();
        if !guarded && !looks_like_json {
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

fn too_large(limit: usize) -> Refusal {
    Refusal::new(
        413,
        code::INVALID_REQUEST,
        format!("request body exceeds the limit of {limit} bytes"),
    )
}

/// A legacy post whose stream is gone. The text is FastMCP's own, which clients know.
fn stream_gone() -> Refusal {
    Refusal::new(404, code::SESSION_NOT_FOUND, "Could not find session")
}

fn recovery_failed(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        502,
        code::SERVER_ERROR,
        format!("session could not be recovered: {e}"),
    )
}

/// What the sidecar's own calls to the MCP server need: the route, the upstream path of this
/// request, and the protocol version the client speaks.
fn upstream_target<'a>(
    session: &'a Session,
    ctx: &RequestCtx,
) -> (Arc<Route>, String, Option<&'a str>) {
    // (the hub headers these calls carry come from `Sidecar::injected`)
    let route = ctx
        .route
        .clone()
        .expect("only routed requests reach the MCP server");
    let req = session.req_header();
    let path = route.upstream_path_and_query(req.uri.path(), None);
    let version = req
        .headers
        .get(MCP_PROTOCOL_VERSION)
        .and_then(|v| v.to_str().ok());
    (route, path, version)
}

/// A request naming a session both in `Mcp-Session-Id` and in a legacy message URL: the
/// sidecar would route and bind by one while a legacy server acts on the other.
fn refuse_two_sessions(req: &RequestHeader) -> Result<(), Refusal> {
    match req.uri.query().map(legacy::message_session) {
        Some(Ok(None)) | None => Ok(()),
        Some(_) => Err(Refusal::new(
            400,
            code::INVALID_REQUEST,
            "a request must name exactly one session",
        )),
    }
}

/// The client hung up or its connection broke: routine (the access line records it, and only
/// when the answer was not complete).
fn closed_by_client(e: &Error) -> bool {
    e.esource() == &pingora::ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

/// The error that makes `fail_to_proxy` answer 413.
fn body_over_limit<T>() -> Result<T> {
    Error::e_explain(ErrorType::HTTPStatus(413), "request body over the limit")
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers.get(name).map(|v| v.as_bytes())
}

impl Sidecar {
    /// Decides, from headers alone, whether the request may go on. `Err` is the refusal.
    fn admit(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<(), Refusal> {
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

    /// Decides where a request with a session id goes (see `crate::session`).
    async fn route_session(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        let req = session.req_header();
        let Some(sid) = req
            .headers
            .get(MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
        else {
            return self.route_legacy_post(req, ctx).await;
        };
        refuse_two_sessions(req)?;
        let route = ctx.route.clone().expect("admitted requests have a route");
        let user = ctx.user_id();
        let decision = if ctx.from_peer {
            self.sessions
                .resolve_forwarded(sid, &route.server_name, user)
                .await
        } else {
            self.sessions.resolve(sid, &route.server_name, user).await
        };
        let (decision, via) = match decision {
            Decision::Recover(record) => {
                let path = route.upstream_path_and_query(req.uri.path(), None);
                let extra = self.injected(session, ctx, Some(sid));
                let d = self
                    .sessions
                    .recover(*record, &route, &path, "owner pod gone", &extra)
                    .await
                    .map_err(recovery_failed)?;
                (d, "recovered")
            }
            d => (d, "local"),
        };
        let (upstream_sid, target, via) =
            match decision {
                Decision::Local { upstream_sid } => (upstream_sid, Target::Upstream, via),
                Decision::Forward { owner } => (sid.to_string(), Target::Owner(owner), "forwarded"),
                Decision::Unknown | Decision::Recover(_) => {
                    return Err(Refusal::new(
                        404,
                        code::SESSION_NOT_FOUND,
                        "Session not found",
                    ))
                }
                Decision::StoreUnavailable => return Err(Refusal::new(
                    503,
                    code::SERVER_ERROR,
                    "session store unavailable and the session is not on this pod; retry shortly",
                )),
            };
        ctx.session = Some(SessionCtx {
            client_sid: sid.to_string(),
            upstream_sid,
            target,
            via,
            retried: false,
            legacy: false,
        });
        // a body past Pingora's retry buffer cannot be resent if the MCP server turns out to
        // have forgotten the session, so ask it before sending
        let has_body = ctx.content_length.is_none_or(|n| n > 0) && req.method == http::Method::POST;
        if has_body
            && !ctx.body_complete
            && ctx
                .session
                .as_ref()
                .is_some_and(|s| s.target == Target::Upstream)
        {
            self.recover_if_forgotten(session, ctx)
                .await
                .map_err(recovery_failed)?;
        }
        Ok(())
    }

    /// Routes a legacy SSE message post (`POST /messages/?session_id=…`) to the pod whose
    /// stream holds the session. Its answer travels on that stream, so it cannot be recovered
    /// elsewhere: when the stream is gone the client gets 404 and reconnects.
    async fn route_legacy_post(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<(), Refusal> {
        let named = match req.uri.query().map(legacy::message_session) {
            Some(Err(why)) => return Err(Refusal::new(400, code::INVALID_REQUEST, why)),
            Some(Ok(named)) => named,
            None => None,
        };
        let (param, sid) = match named {
            Some(named) if req.method == http::Method::POST => named,
            _ => return Ok(()),
        };
        let route = ctx.route.clone().expect("admitted requests have a route");
        ctx.legacy_sid = Some(sid.to_string());
        let target = match self
            .sessions
            .resolve_stream(sid, param, &route.server_name, ctx.user_id(), ctx.from_peer)
            .await
        {
            StreamDecision::Local => Target::Upstream,
            StreamDecision::WrongForm => {
                METRICS
                    .sse_failures
                    .with_label_values(&["wrong_form"])
                    .inc();
                return Err(Refusal::new(
                    400,
                    code::INVALID_REQUEST,
                    "the session id in the message URL is not in the form the stream announced",
                ));
            }
            StreamDecision::Forward { owner } => Target::Owner(owner),
            StreamDecision::Gone(reason) => {
                METRICS.sse_failures.with_label_values(&[reason]).inc();
                return Err(stream_gone());
            }
            StreamDecision::StoreUnavailable => {
                METRICS
                    .sse_failures
                    .with_label_values(&["store_unavailable"])
                    .inc();
                return Err(Refusal::new(
                    503,
                    code::SERVER_ERROR,
                    "session store unavailable and the SSE stream is not on this pod; retry shortly",
                ));
            }
        };
        ctx.session = Some(SessionCtx {
            client_sid: sid.to_string(),
            upstream_sid: sid.to_string(),
            via: if matches!(target, Target::Owner(_)) {
                "forwarded"
            } else {
                "local"
            },
            target,
            retried: true,
            legacy: true,
        });
        Ok(())
    }

    /// Probes the local MCP server and recovers the session if it forgot it.
    async fn recover_if_forgotten(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), String> {
        let (route, path, version) = upstream_target(session, ctx);
        let extra = self.injected(session, ctx, None);
        let s = ctx.session.as_mut().expect("routed");
        if self
            .sessions
            .upstream_forgot(&route, &path, &s.upstream_sid, version, &extra)
            .await
        {
            ctx.recover = Some("MCP server forgot the session");
            self.recover_now(session, ctx).await?;
        }
        Ok(())
    }

    /// Runs the recovery `ctx.recover` asks for and points the request at the result.
    async fn recover_now(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), String> {
        let Some(reason) = ctx.recover.take() else {
            return Ok(());
        };
        if ctx.shared_context.is_some() {
            return self.reestablish(session, ctx).await;
        }
        let (route, path, _) = upstream_target(session, ctx);
        let extra = self.injected(session, ctx, None);
        let s = ctx.session.as_mut().expect("only session requests recover");
        let record = match self.sessions.local_record(&s.client_sid) {
            Some(r) => r,
            None => self
                .sessions
                .store()
                .load_session(&s.client_sid)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the session record is gone")?,
        };
        match self
            .sessions
            .recover(record, &route, &path, reason, &extra)
            .await
        {
            Ok(Decision::Local { upstream_sid }) => {
                s.upstream_sid = upstream_sid;
                s.target = Target::Upstream;
            }
            Ok(Decision::Forward { owner }) => {
                s.upstream_sid = s.client_sid.clone();
                s.target = Target::Owner(owner);
            }
            Ok(_) => return Err("the session could not be placed".into()),
            Err(e) => return Err(e.to_string()),
        }
        s.via = "recovered";
        Ok(())
    }

    /// Whether Pingora can resend this request (no body, or one in its retry buffer).
    fn can_resend(&self, session: &Session, ctx: &RequestCtx) -> bool {
        ctx.content_length.is_some_and(|n| n <= PRE_READ_LIMIT)
            || session.req_header().method == http::Method::GET
            || session.req_header().method == http::Method::DELETE
    }

    /// Who the request acts for (see `crate::hub`). On the peer listener the caller is the one
    /// the signed hop names; client headers are not read there.
    async fn authenticate(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        let route = ctx.route.clone().expect("admitted requests have a route");
        let req = session.req_header();
        let result = if ctx.from_peer {
            self.hub.from_peer(&route.policy, hop::user(req)).await
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

    /// The headers the route's templates render for this request. `session_id` overrides the
    /// client-facing session id (a request that is just being routed).
    fn injected(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        session_id: Option<&str>,
    ) -> Vec<(http::HeaderName, String)> {
        let Some(route) = ctx.route.as_ref() else {
            return Vec::new();
        };
        if route.policy.templates.is_empty() {
            return Vec::new();
        }
        let req = session.req_header();
        let vars = TemplateVars {
            user: ctx.caller.as_ref().map(|c| &*c.user),
            session_id: session_id
                .or(ctx.session.as_ref().map(|s| s.client_sid.as_str()))
                .or(ctx.legacy_sid.as_deref()),
            request_id: &ctx.request_id,
            protocol_version: req
                .headers
                .get(MCP_PROTOCOL_VERSION)
                .and_then(|v| v.to_str().ok())
                .or(ctx.init.as_ref().and_then(|(_, v)| v.as_deref())),
        };
        route
            .policy
            .templates
            .iter()
            .filter_map(|t| t.render(&vars).map(|v| (t.header.clone(), v)))
            .collect()
    }

    /// Removes what must not reach the next hop: client headers in the hub's namespace, the
    /// key, and hub keys in the query.
    fn strip_hub(
        &self,
        route: &Route,
        req: &RequestHeader,
        upstream_request: &mut RequestHeader,
    ) -> Result<()> {
        let doomed: Vec<http::HeaderName> = upstream_request
            .headers
            .iter()
            .filter(|(n, v)| self.hub.strips(&route.policy, n, v.as_bytes()))
            .map(|(n, _)| n.clone())
            .collect();
        for name in doomed {
            upstream_request.remove_header(&name);
        }
        if let Some(query) = self.hub.upstream_query(&route.policy, req.uri.query()) {
            let path = upstream_request.uri.path().to_string();
            let target = match query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let uri = target.parse::<http::Uri>().or_err(
                ErrorType::InvalidHTTPHeader,
                "removing the hub key from the query",
            )?;
            upstream_request.set_uri(uri);
        }
        Ok(())
    }

    /// `X-Forwarded-For` and `-Proto` from the real peer; a client's own are kept only when it
    /// is a trusted proxy.
    fn set_forwarded(&self, session: &Session, upstream_request: &mut RequestHeader) -> Result<()> {
        let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        else {
            return Ok(());
        };
        let req = session.req_header();
        let text = |name| header(req, name).and_then(|v| std::str::from_utf8(v).ok());
        let f = self
            .clients
            .forwarded(peer, text("x-forwarded-for"), text("x-forwarded-proto"));
        upstream_request.insert_header("x-forwarded-for", f.forwarded_for)?;
        upstream_request.insert_header("x-forwarded-proto", f.proto)?;
        if !f.keep_forwarded {
            upstream_request.remove_header("forwarded");
        }
        Ok(())
    }

    /// The session record an initialize response creates.
    fn new_record(&self, ctx: &RequestCtx, upstream_sid: &str) -> Option<SessionRecord> {
        let (params, version) = ctx.init.clone()?;
        let now = unix_now();
        Some(SessionRecord {
            session_id: upstream_sid.to_string(),
            upstream_session_id: upstream_sid.to_string(),
            owner: self.sessions.settings.me.clone(),
            server_name: ctx.route.as_ref()?.server_name.clone(),
            transport: Transport::StreamableHttp,
            user: ctx.user_id().map(str::to_string),
            protocol_version: version,
            init_params: Some(params),
            created_at: now,
            last_seen: now,
            ..Default::default()
        })
    }
}

#[async_trait]
impl ProxyHttp for Sidecar {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
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
            session: None,
            init: None,
            recover: None,
            legacy_sid: None,
            legacy_gone: None,
            handoff: None,
            caller: None,
            called_tools: Vec::new(),
            lists_tools: false,
            tools_filter: None,
            denied: None,
            shared_context: None,
            mux_active: false,
            mux_ids: Vec::new(),
            mux_body: None,
            raw_body: None,
            mux_stream: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = headers::request_id(header(req, X_REQUEST_ID));
        ctx.from_peer = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .is_some_and(|a| a.port() == self.peer_port);
        if let Err(refusal) = self.check_host_and_origin(req, ctx.from_peer) {
            session.set_keepalive(None);
            reply::send(session, ctx, &refusal).await?;
            return Ok(true);
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
                        return Ok(true);
                    }
                }
            }
        }
        if let Err(refusal) = self.admit(session.req_header(), ctx) {
            // the body (if any) is unread: do not reuse this connection
            session.set_keepalive(None);
            reply::send(session, ctx, &refusal).await?;
            return Ok(true);
        }
        if ctx
            .content_length
            .is_some_and(|n| n > 0 && n <= PRE_READ_LIMIT)
        {
            self.pre_read_body(session, ctx).await?;
        }
        let checked = match self.hops.admit(session, ctx) {
            Ok(()) => self.authenticate(session, ctx).await,
            Err(refusal) => Err(refusal),
        };
        // the body is read fully only now that the caller is known
        let checked = checked
            .and_then(|()| match ctx.raw_body.clone() {
                Some(body) => ctx.judge(&body, &self.limits),
                None => Ok(()),
            })
            .and_then(|()| self.admit_new_session(ctx));
        let shared_route = ctx.route.as_ref().is_some_and(|r| r.shared);
        let routed = match checked {
            Ok(()) => match ctx.tool_refusal() {
                Some(refusal) => Err(refusal),
                None if shared_route => match self.route_shared(session, ctx).await {
                    Ok(shared::SharedStep::Answered) => return Ok(true),
                    Ok(shared::SharedStep::Proxy) => Ok(()),
                    Err(refusal) => Err(refusal),
                },
                None => self.route_session(session, ctx).await,
            },
            Err(refusal) => Err(refusal),
        };
        if let Err(refusal) = routed {
            session.set_keepalive(None);
            reply::send(session, ctx, &refusal).await?;
            return Ok(true);
        }
        if relay::wants_stream(session.req_header()) {
            if self.sessions.is_draining() {
                // a legacy stream cannot move later: open it on a pod that stays
                let refusal = Refusal::new(
                    503,
                    code::SERVER_ERROR,
                    "this pod is draining; connect again to reach another pod",
                );
                session.set_keepalive(None);
                reply::send(session, ctx, &refusal).await?;
                return Ok(true);
            }
            self.relay_stream(session, ctx).await?;
            return Ok(true);
        }
        if ctx.session.is_none() && !ctx.from_peer {
            // draining: new sessions (and session-less requests) open on a pod that stays
            ctx.handoff = self.sessions.handoff_peer(&ctx.request_id);
        }
        if ctx.envelope.as_ref().and_then(|e| e.method()) == Some("offerings/list")
            && ctx.handoff.is_none()
            && ctx
                .session
                .as_ref()
                .is_none_or(|s| s.target == Target::Upstream && !s.legacy)
        {
            self.answer_offerings(session, ctx).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if ctx.recover.is_some() {
            // a retry: the owner vanished or the MCP server forgot the session
            if let Err(e) = self.recover_now(session, ctx).await {
                warn!("request_id={} session recovery failed: {e}", ctx.request_id);
                return Error::e_explain(
                    ErrorType::HTTPStatus(502),
                    "session could not be recovered",
                );
            }
        }
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        let peer_addr = match (&ctx.handoff, ctx.session.as_ref().map(|s| &s.target)) {
            (Some(peer), _) => Some(peer),
            (None, Some(Target::Owner(owner))) => Some(owner),
            _ => None,
        };
        let addr = match peer_addr {
            Some(a) => a.parse::<std::net::SocketAddr>().or_err(
                ErrorType::InternalError,
                "peer address in the store is not ip:port",
            )?,
            None => route.upstream_addr,
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.idle_timeout = Some(self.upstream_idle);
        peer.options.read_timeout = self.upstream_read;
        peer.options.write_timeout = Some(self.upstream_write);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if ctx.handoff.take().is_some() {
            // the peer taking over is gone too: serve it here after all
            e.set_retry(true);
            return e;
        }
        match ctx.session.as_mut() {
            // a legacy stream lives in its owner's sidecar: if that does not answer, the
            // stream is gone with it
            Some(s) if s.legacy && matches!(s.target, Target::Owner(_)) => {
                ctx.legacy_gone = Some("owner_unreachable");
                self.sessions
                    .drop_stream_record(&s.client_sid, "its owner pod is unreachable");
                e.set_retry(false);
            }
            // the owner's sidecar does not answer: the pod is gone, recover here once
            Some(s) if matches!(s.target, Target::Owner(_)) && !s.retried => {
                s.retried = true;
                ctx.recover = Some("owner pod unreachable");
                e.set_retry(true);
            }
            // the MCP server is on this pod's loopback: retrying a refused connect only delays
            // the 502
            _ => e.set_retry(false),
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.recover.is_some() {
            // upstream_response_filter asked for one retry through recovery
            return e;
        }
        // Pingora's default: never retry what is not idempotent or not fully buffered
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
        _e: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // a retry through recovery is logged by the session layer
        ctx.recover.is_some()
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.body_complete {
            // read in request_filter; this is Pingora replaying its buffer (rewritten for a
            // shared session)
            if ctx.mux_body.is_some() {
                *body = Some(match end_of_stream {
                    true => ctx.mux_body.clone().unwrap_or_default(),
                    false => Bytes::new(),
                });
            }
            return Ok(());
        }
        match ctx
            .body
            .push(body.take(), end_of_stream, self.limits.max_body)
        {
            BodyProgress::Pending => *body = Some(Bytes::new()),
            BodyProgress::TooLarge => return body_over_limit(),
            BodyProgress::Complete(full) => {
                let full = self.hops.settle(ctx, full)?;
                ctx.complete_body(&full);
                let judged = ctx
                    .judge(&full, &self.limits)
                    .and_then(|()| self.admit_new_session(ctx));
                if let Err(refusal) = judged {
                    // the upstream has the headers but not a byte of this body
                    let status = refusal.status;
                    ctx.denied = Some(refusal);
                    return Error::e_explain(ErrorType::HTTPStatus(status), "body refused");
                }
                if let Some(refusal) = ctx.tool_refusal() {
                    // the upstream has the headers but not a byte of this body
                    ctx.denied = Some(refusal);
                    return Error::e_explain(ErrorType::HTTPStatus(403), "tool denied");
                }
                if ctx.mux_active {
                    if let Err(refusal) = self.multiplex(ctx, &full) {
                        let status = refusal.status;
                        ctx.denied = Some(refusal);
                        return Error::e_explain(ErrorType::HTTPStatus(status), "not multiplexed");
                    }
                    *body = ctx.mux_body.clone();
                } else {
                    // a request without a body stays without: an empty chunk written after the
                    // upstream request ended makes Pingora warn
                    let sealed = self.hops.seal(ctx, full);
                    if !sealed.is_empty() {
                        *body = Some(sealed);
                    }
                }
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        hop::strip(upstream_request, ctx);
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        self.strip_hub(route, session.req_header(), upstream_request)?;
        if !ctx.from_peer {
            // a verified peer already set these for its client
            self.set_forwarded(session, upstream_request)?;
        }
        upstream_request.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(peer) = ctx.handoff.clone() {
            return self.hops.sign(session, upstream_request, ctx, &peer);
        }
        if let Some(s) = &ctx.session {
            if let Target::Owner(owner) = &s.target {
                // the owner's sidecar routes the client's own path and injects the caller's
                // headers itself; the caller travels in the signed hop
                let owner = owner.clone();
                return self.hops.sign(session, upstream_request, ctx, &owner);
            }
            if s.upstream_sid != s.client_sid {
                upstream_request.insert_header(MCP_SESSION_ID, s.upstream_sid.as_str())?;
            }
            if ctx.mux_active && session.req_header().method == http::Method::POST {
                // the rewritten body has its own length
                upstream_request.remove_header("content-length");
                upstream_request.insert_header("transfer-encoding", "chunked")?;
            }
        }
        if route.prefix != route.upstream_path {
            let uri = &upstream_request.uri;
            let target = route.upstream_path_and_query(uri.path(), uri.query());
            let uri = target
                .parse::<http::Uri>()
                .or_err(ErrorType::InvalidHTTPHeader, "rewriting the upstream path")?;
            upstream_request.set_uri(uri);
        }
        for (name, value) in self.injected(session, ctx, None) {
            upstream_request.insert_header(name, value)?;
        }
        upstream_request.insert_header("host", route.upstream_authority.as_str())?;
        if ctx.cors.is_some() {
            // the sidecar validated this Origin; the upstream would judge it against its own
            // localhost allow-list and refuse
            upstream_request.remove_header("origin");
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        let suspect = ctx.session.as_ref().is_some_and(|s| {
            s.target == Target::Upstream && !s.retried && may_be_unknown_session(status)
        });
        if suspect && self.can_resend(session, ctx) {
            let (route, path, version) = upstream_target(session, ctx);
            let extra = self.injected(session, ctx, None);
            let s = ctx.session.as_mut().expect("suspect implies a session");
            if self
                .sessions
                .upstream_forgot(&route, &path, &s.upstream_sid, version, &extra)
                .await
            {
                s.retried = true;
                ctx.recover = Some("MCP server forgot the session");
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(status),
                    "MCP server forgot the session",
                );
                e.set_retry(true);
                return Err(e);
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let now = Instant::now();
        ctx.responded = Some(now);
        upstream_response.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        ctx.apply_cors(upstream_response);
        let ok = upstream_response.status.is_success();
        ctx.sse_response = upstream_response
            .headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let served_here = ctx
            .session
            .as_ref()
            .is_none_or(|s| s.target == Target::Upstream)
            && ctx.handoff.is_none();
        if ctx.lists_tools && served_here {
            // the owner pod (or the peer taking over) filters what it serves
            let ct = upstream_response
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            ctx.tools_filter = ToolsFilter::for_content_type(ct, self.limits.max_held_message);
            if ctx.tools_filter.is_some() {
                upstream_response.remove_header("content-length");
            }
        }
        if ctx.mux_active && served_here {
            // the answer's ids (and progress tokens) go back to what the client sent; tool
            // lists are filtered in the same pass
            let ct = upstream_response
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            ctx.mux_stream = MessageStream::for_content_type(ct, self.limits.max_held_message);
            if ctx.mux_stream.is_some() {
                ctx.tools_filter = None;
                upstream_response.remove_header("content-length");
            }
        }
        if self.sessions.is_draining() {
            // the client's next request opens a new connection, which reaches a pod that stays
            session.set_keepalive(None);
        }
        match &ctx.session {
            // a new session: only a 2xx answer to initialize creates one (the Python SDK hands
            // out orphan ids on its 400s); one a peer opened is the peer's
            None if ok && ctx.init.is_some() && ctx.handoff.is_none() => {
                let sid = upstream_response
                    .headers
                    .get(MCP_SESSION_ID)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| headers::is_valid_session_id(v.as_bytes()));
                if let Some(record) = sid.and_then(|sid| self.new_record(ctx, sid)) {
                    self.sessions.capture(record).await;
                }
            }
            Some(s) if s.legacy => {
                let via = match (&s.target, ctx.from_peer) {
                    (Target::Owner(_), _) => "forwarded",
                    (Target::Upstream, true) => "from_peer",
                    (Target::Upstream, false) => "local",
                };
                METRICS.sse_posts.with_label_values(&[via]).inc();
                // the owner answers 404 when the stream ended since it was looked up
                if upstream_response.status.as_u16() == 404 {
                    METRICS
                        .sse_failures
                        .with_label_values(&["stream_closed"])
                        .inc();
                }
            }
            Some(s) if s.target == Target::Upstream => {
                if s.upstream_sid != s.client_sid
                    && upstream_response.headers.contains_key(MCP_SESSION_ID)
                {
                    upstream_response.insert_header(MCP_SESSION_ID, s.client_sid.as_str())?;
                }
                if ok && session.req_header().method == http::Method::DELETE {
                    if let Err(e) = self.sessions.forget(&s.client_sid).await {
                        warn!(
                            "session {} ended upstream but not in the store: {e}",
                            s.client_sid
                        );
                    }
                }
            }
            Some(_) => {
                METRICS.sessions.with_label_values(&["forwarded"]).inc();
                METRICS
                    .forward_latency
                    .observe((now - ctx.started).as_secs_f64());
            }
            None => {}
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        ctx.response_done |= end_of_stream;
        if ctx.mux_stream.is_some() {
            self.restore_body(body, end_of_stream, ctx);
            return Ok(None);
        }
        let Some(filter) = ctx.tools_filter.as_mut() else {
            return Ok(None);
        };
        let (Some(route), user) = (ctx.route.as_ref(), ctx.caller.as_ref().map(|c| &*c.user))
        else {
            return Ok(None);
        };
        let Some(access) = route.policy.tools.as_ref() else {
            return Ok(None);
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
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (mut refusal, kind) = reply::for_proxy_error(e, ctx.route_label());
        if let Some(denied) = ctx.denied.take() {
            refusal = Some(denied);
        }
        if let Some(reason) = ctx.legacy_gone {
            METRICS.sse_failures.with_label_values(&[reason]).inc();
            refusal = refusal.map(|_| stream_gone());
        }
        if e.esource() == &pingora::ErrorSource::Upstream {
            ctx.upstream_error = Some(kind);
            METRICS
                .upstream_errors
                .with_label_values(&[ctx.route_label(), kind])
                .inc();
        }
        let status = match refusal {
            Some(r) if session.response_written().is_none() => {
                // the connection will be closed; say so, or the client reuses it and gets a reset
                session.set_keepalive(None);
                if let Err(we) = reply::send(session, ctx, &r).await {
                    warn!(
                        "request_id={} could not send error response: {we}",
                        ctx.request_id
                    );
                }
                r.status
            }
            // headers already went out (a stream broke midway): nothing more to say
            Some(_) | None => 0,
        };
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// Used in Pingora's own error lines. The default prints the query string, which may
    /// carry a hub key.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!(
            "{} {}, request_id={}",
            req.method,
            shown(req.uri.path(), 256),
            ctx.request_id
        )
    }

    /// A client that goes away mid-request is routine (the access line records it), not an
    /// error worth a log line of its own.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        closed_by_client(e)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.mux_active {
            self.shared.mux.release(&ctx.mux_ids);
            METRICS.shared_in_flight.dec();
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.responded.unwrap_or_else(Instant::now) - ctx.started;
        let route = ctx.route_label();
        let status_label = status.to_string();
        METRICS
            .requests
            .with_label_values(&[route, ctx.rpc_label, status_label.as_str()])
            .inc();
        METRICS
            .latency
            .with_label_values(&[route, ctx.rpc_label])
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
            "request_id={} client={} method={} path={} route={} rpc={} status={} ttfb_ms={:.1} total_ms={:.1} session={}{}{}{}{}{}{}",
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
            ctx.session.as_ref().map(|s| format!(" via={}", s.via)).unwrap_or_default(),
            if ctx.from_peer { " from_peer=true" } else { "" },
            ctx.upstream_error.map(|k| format!(" upstream_error={k}")).unwrap_or_default(),
            ctx.handoff.as_ref().map(|p| format!(" handoff={p}")).unwrap_or_default(),
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
}

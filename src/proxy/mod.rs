//! The Pingora proxy. Each phase hands over to the request's plan: the way it is served,
//! chosen once in `request_filter` (`plan/`, one file per way). What comes before a plan is
//! `admission.rs`; what every request carries is `context.rs`; what every request sent on
//! carries is `upstream.rs`; the access line is `access_log.rs`.
//!
//! A request flows: admission (request id, Host and Origin, CORS preflight, route, header
//! checks, small body read whole, peer hop, caller, strict body judgement, session limit,
//! tool policy) → plan chosen, or answered by the sidecar itself (request_filter); the
//! recovery a retry needs, and the connection (upstream_peer); a body too large to read first
//! held until complete and judged (request_body_filter); the request head (upstream_request
//! _filter); the answer's head and body (response_filter, response_body_filter); one access
//! line and the metrics (logging).

mod access_log;
mod admission;
mod body;
mod context;
mod cors;
mod hop;
mod plan;
mod reply;
mod telemetry;
mod tool_filter;
mod upstream;

use crate::clients::Clients;
use crate::config::{Config, LimitsSection};
use crate::hub::Hub;
use crate::metrics::METRICS;
use crate::protocol::headers::X_REQUEST_ID;
use crate::protocol::shown;
use crate::route::RouteTable;
use crate::session::Sessions;
use async_trait::async_trait;
use body::BodyProgress;
use bytes::Bytes;
use context::RequestCtx;
use cors::Cors;
use log::warn;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use plan::Plan;
use reply::Refusal;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    bridge: Arc<crate::bridge::Bridge>,
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
            bridge: Arc::new(crate::bridge::Bridge::new(
                config.bridge.clone(),
                config.peer_secret().map(str::as_bytes),
                sessions.settings.me.clone(),
                (config.timeouts.connect, config.timeouts.upstream_idle),
                config.limits.max_held_message,
            )),
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

/// What `request_filter` comes to.
enum Verdict {
    /// The request goes on upstream, as its plan says.
    Proxy,
    /// The sidecar answered it.
    Answered,
    /// The sidecar refuses it.
    Refused(Refusal),
}

/// What Pingora keeps for one request: the facts every plan shares, and the plan.
pub struct RequestState {
    ctx: RequestCtx,
    plan: Plan,
}

#[async_trait]
impl ProxyHttp for Sidecar {
    type CTX = RequestState;

    fn new_ctx(&self) -> RequestState {
        RequestState {
            ctx: RequestCtx::new(),
            plan: Plan::Undecided,
        }
    }

    async fn request_filter(&self, session: &mut Session, st: &mut RequestState) -> Result<bool> {
        let verdict = match self.admit(session, &mut st.ctx).await? {
            Verdict::Proxy => {
                let scope = st.ctx.telemetry.span.scope();
                (scope.run(self.choose(session, &mut st.ctx, &mut st.plan))).await?
            }
            verdict => verdict,
        };
        match verdict {
            Verdict::Proxy => Ok(false),
            Verdict::Answered => Ok(true),
            Verdict::Refused(refusal) => {
                // the body may be unread: do not reuse this connection
                session.set_keepalive(None);
                telemetry::answered(&mut st.ctx, &refusal, true);
                reply::send(session, &st.ctx, &refusal).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        st: &mut RequestState,
    ) -> Result<Box<HttpPeer>> {
        let scope = st.ctx.telemetry.span.scope();
        (scope.run(self.resume(session, &st.ctx, &mut st.plan))).await?;
        telemetry::attempt(&mut st.ctx, st.plan.next_sidecar());
        self.peer(&st.ctx, st.plan.next_sidecar())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        st: &mut RequestState,
        mut e: Box<Error>,
    ) -> Box<Error> {
        telemetry::connect_failed(&mut st.ctx);
        let retry = st.plan.connect_failed(self);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        st: &mut RequestState,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if st.plan.is_retry() {
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
        st: &RequestState,
        _e: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // a retry through recovery is logged by the session layer
        st.plan.is_retry()
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        st: &mut RequestState,
    ) -> Result<()> {
        let ctx = &mut st.ctx;
        if ctx.body_complete {
            // read in request_filter; this is Pingora replaying its buffer
            st.plan.replay_body(body, end_of_stream);
            return Ok(());
        }
        match ctx
            .body
            .push(body.take(), end_of_stream, self.limits.max_body)
        {
            BodyProgress::Pending => *body = Some(Bytes::new()),
            BodyProgress::TooLarge => return admission::body_over_limit(),
            BodyProgress::Complete(full) => {
                let full = self.judge_held_body(session.req_header(), ctx, full)?;
                if let Some(out) = st.plan.outgoing_body(self, ctx, full)? {
                    *body = Some(out);
                }
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        st: &mut RequestState,
    ) -> Result<()> {
        self.common_upstream_head(session, upstream_request, &mut st.ctx)?;
        telemetry::sending(upstream_request, &st.ctx)?;
        if let Some(to) = st.plan.next_sidecar() {
            // the next sidecar routes the client's own path and injects the caller's headers
            // itself; the caller travels in the signed hop
            let to = to.to_string();
            return self.hops.sign(session, upstream_request, &mut st.ctx, &to);
        }
        st.plan
            .upstream_request(&session.req_header().method, upstream_request)?;
        self.mcp_server_head(session, upstream_request, &st.ctx, st.plan.client_sid())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        st: &mut RequestState,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        self.check_passed_through(&st.ctx, &st.plan, status);
        let scope = st.ctx.telemetry.span.scope();
        (scope.run(self.check_answer(session, &st.ctx, &mut st.plan, status))).await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        st: &mut RequestState,
    ) -> Result<()> {
        let ctx = &mut st.ctx;
        let now = Instant::now();
        ctx.responded = Some(now);
        upstream_response.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        ctx.apply_cors(upstream_response);
        ctx.sse_response = upstream_response
            .headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if st.plan.served_here() {
            // the owner pod (or the peer taking over) filters what it serves
            tool_filter::arm(ctx, upstream_response, self.limits.max_held_message);
        }
        if self.sessions.is_draining() {
            // the client's next request opens a new connection, which reaches a pod that stays
            session.set_keepalive(None);
        }
        let scope = ctx.telemetry.span.scope();
        (scope.run(st.plan.response(self, session, upstream_response, ctx, now))).await
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        st: &mut RequestState,
    ) -> Result<Option<Duration>> {
        st.ctx.response_done |= end_of_stream;
        if !st.plan.response_body(self, body, end_of_stream, &st.ctx) {
            tool_filter::feed(&mut st.ctx, body, end_of_stream);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        st: &mut RequestState,
    ) -> FailToProxy {
        let ctx = &mut st.ctx;
        let (mut refusal, kind) = reply::for_proxy_error(e, ctx.route_label());
        let denied = ctx.denied.take();
        let was_refused = denied.is_some();
        if let Some(denied) = denied {
            refusal = Some(denied);
        }
        if let Some(reason) = st.plan.legacy_gone() {
            METRICS.sse_failures.with_label_values(&[reason]).inc();
        }
        if let Some(instead) = st.plan.failure(ctx.route_label()) {
            refusal = refusal.map(|_| instead);
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
                telemetry::answered(ctx, &r, was_refused);
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
    fn request_summary(&self, session: &Session, st: &RequestState) -> String {
        let req = session.req_header();
        format!(
            "{} {}, request_id={}",
            req.method,
            shown(req.uri.path(), 256),
            st.ctx.request_id
        )
    }

    /// A client that goes away mid-request is routine (the access line records it), not an
    /// error worth a log line of its own.
    fn suppress_error_log(&self, _session: &Session, _st: &RequestState, e: &Error) -> bool {
        access_log::closed_by_client(e)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, st: &mut RequestState) {
        st.plan.finish(self);
        access_log::log(session, e, &st.ctx, &st.plan);
        telemetry::finish(session, e, &mut st.ctx, &st.plan);
    }
}

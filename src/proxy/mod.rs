//! The Pingora proxy. Each phase says what it decides; the work lives in the modules beside
//! this one (body buffering, CORS, replies) and in `route` and `protocol`.
//!
//! A request flows: request id → Origin check and CORS preflight → route → header checks →
//! body limit → small bodies read whole (request_filter); larger or chunked bodies held until
//! complete (request_body_filter), so the envelope is known before the upstream gets a byte of
//! body; path, Host and request id set for the upstream (upstream_request_filter); response
//! headers decorated (response_filter); one access line and the metrics (logging).

mod body;
mod cors;
mod reply;

use crate::config::Config;
use crate::metrics::METRICS;
use crate::protocol::headers::{self, MCP_SESSION_ID, X_REQUEST_ID};
use crate::protocol::jsonrpc::{code, Envelope};
use crate::route::{Route, RouteTable};
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

/// The sidecar's proxy logic, shared by all worker threads.
pub struct Sidecar {
    routes: RouteTable,
    cors: Option<Arc<Cors>>,
    max_body: usize,
    connect_timeout: Duration,
    upstream_idle: Duration,
    upstream_read: Option<Duration>,
    upstream_write: Duration,
}

impl Sidecar {
    pub fn new(config: &Config) -> Result<Sidecar, String> {
        Ok(Sidecar {
            routes: RouteTable::from_config(config)?,
            cors: config.cors.as_ref().map(|c| Arc::new(Cors::new(c))),
            max_body: config.limits.max_body,
            connect_timeout: config.timeouts.connect,
            upstream_idle: config.timeouts.upstream_idle,
            upstream_read: config.timeouts.upstream_read,
            upstream_write: config.timeouts.upstream_write,
        })
    }
}

/// Per-request state.
pub struct RequestCtx {
    pub request_id: String,
    route: Option<Arc<Route>>,
    started: Instant,
    /// When response headers went downstream.
    responded: Option<Instant>,
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

    /// Records what the complete body is.
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
}

fn too_large(limit: usize) -> Refusal {
    Refusal::new(
        413,
        code::INVALID_REQUEST,
        format!("request body exceeds the limit of {limit} bytes"),
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
                    "Mcp-Session-Id must be visible ASCII (0x21-0x7E)",
                ));
            }
        }
        ctx.content_length = header(req, "content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.trim().parse::<usize>().ok());
        if ctx.content_length.is_some_and(|n| n > self.max_body) {
            return Err(too_large(self.max_body));
        }
        Ok(())
    }

    /// Reads a small body completely before the upstream is contacted. Pingora keeps it in its
    /// retry buffer and sends it on from there.
    async fn pre_read_body(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        session.enable_retry_buffering();
        let mut body = BodyBuffer::default();
        while let Some(chunk) = session.read_request_body().await? {
            if body.push(Some(chunk), false, self.max_body) == BodyProgress::TooLarge {
                // more bytes than Content-Length announced
                return body_over_limit();
            }
        }
        match body.push(None, true, self.max_body) {
            BodyProgress::Complete(full) => ctx.complete_body(&full),
            _ => return body_over_limit(),
        }
        Ok(())
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
            body: BodyBuffer::default(),
            content_length: None,
            body_complete: false,
            envelope: None,
            rpc_label: "none",
            cors: None,
            upstream_error: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = headers::request_id(header(req, X_REQUEST_ID));
        if let Some(cors) = &self.cors {
            if let Some(origin) = req.headers.get("origin").and_then(|v| v.to_str().ok()) {
                if !cors.allows(origin) {
                    // the spec's Origin validation (DNS rebinding): the sidecar is the judge here
                    let refusal = Refusal::new(403, code::SERVER_ERROR, "origin not allowed");
                    session.set_keepalive(None);
                    reply::send(session, ctx, &refusal).await?;
                    return Ok(true);
                }
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
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        let mut peer = HttpPeer::new(route.upstream_addr, false, String::new());
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
        _ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // the upstream is on this pod's loopback: retrying a refused connect only delays the 502
        e.set_retry(false);
        e
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.body_complete {
            // read in request_filter; this is Pingora replaying its buffer
            return Ok(());
        }
        match ctx.body.push(body.take(), end_of_stream, self.max_body) {
            BodyProgress::Pending => *body = Some(Bytes::new()),
            BodyProgress::TooLarge => return body_over_limit(),
            BodyProgress::Complete(full) => {
                ctx.complete_body(&full);
                *body = Some(full);
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
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        if route.prefix != route.upstream_path {
            let uri = &session.req_header().uri;
            let target = route.upstream_path_and_query(uri.path(), uri.query());
            let uri = target
                .parse::<http::Uri>()
                .or_err(ErrorType::InvalidHTTPHeader, "rewriting the upstream path")?;
            upstream_request.set_uri(uri);
        }
        upstream_request.insert_header("host", route.upstream_authority.as_str())?;
        if ctx.cors.is_some() {
            // the sidecar validated this Origin; the upstream would judge it against its own
            // localhost allow-list and refuse
            upstream_request.remove_header("origin");
        }
        upstream_request.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.responded = Some(Instant::now());
        upstream_response.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        ctx.apply_cors(upstream_response);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (refusal, kind) = reply::for_proxy_error(e, ctx.route_label());
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
            req.uri.path(),
            ctx.request_id
        )
    }

    /// A client that goes away mid-request is routine (the access line records it), not an
    /// error worth a log line of its own.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        e.esource() == &pingora::ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
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
            .unwrap_or("-");
        // the path only: a query string may carry a hub key
        info!(
            target: "access",
            "request_id={} client={} method={} path={} route={} rpc={} status={} ttfb_ms={:.1} total_ms={:.1} session={}{}{}",
            ctx.request_id,
            client,
            req.method,
            req.uri.path(),
            route,
            ctx.rpc_label,
            status,
            elapsed.as_secs_f64() * 1000.0,
            ctx.started.elapsed().as_secs_f64() * 1000.0,
            session_id,
            ctx.upstream_error.map(|k| format!(" upstream_error={k}")).unwrap_or_default(),
            e.map(|e| format!(" error=\"{}\"", e.etype().as_str())).unwrap_or_default(),
        );
    }
}

//! A legacy SSE stream (`GET` without `Mcp-Session-Id`, asking for `text/event-stream`),
//! relayed by the sidecar itself from `request_filter` instead of Pingora's proxy loop. Only
//! here can it write keep-alive comments while the upstream is silent, hold the `endpoint`
//! event until the session is registered, and know the moment the stream ends (see
//! `crate::legacy`). The stream's message posts follow it here (`legacy_post.rs`). A stream
//! cannot move to another pod later, so a draining pod refuses to open one.
//!
//! Answers that turn out not to be a stream (a 405, a JSON error) are relayed as they are.

use super::Plan;
use crate::hub::Hub;
use crate::legacy::endpoint_session;
use crate::legacy::sse::{Boundary, EndpointFinder, KEEPALIVE};
use crate::metrics::METRICS;
use crate::peer::HOP_HEADERS;
use crate::protocol::chunked::Chunked;
use crate::protocol::headers::{MCP_SESSION_ID, X_REQUEST_ID};
use crate::protocol::jsonrpc::code;
use crate::proxy::context::RequestCtx;
use crate::proxy::reply::{self, Refusal};
use crate::proxy::{Sidecar, Verdict};
use crate::route::Route;
use crate::session::Sessions;
use crate::store::{unix_now, SessionRecord, Transport};
use bytes::Bytes;
use log::{info, warn};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound for the upstream's response headers to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response head accepted from the upstream.
const HEAD_LIMIT: usize = 64 * 1024;

/// Request headers not sent on: hop-by-hop, framing, and what the sidecar sets itself.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    X_REQUEST_ID,
];

/// Response headers not sent on (hop-by-hop; the body is re-framed downstream).
const NOT_RETURNED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "trailer",
    "upgrade",
];

/// Whether the sidecar relays this request itself: a legacy SSE stream request.
pub(super) fn wanted(req: &RequestHeader) -> bool {
    req.method == http::Method::GET
        && !req.headers.contains_key(MCP_SESSION_ID)
        && req
            .headers
            .get_all("accept")
            .iter()
            .any(|v| v.as_bytes().windows(17).any(|w| w == b"text/event-stream"))
}

/// How the upstream frames its body.
enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// Until the connection closes.
    Close,
    None,
}

/// Ends a registered stream's session however the relay ends (also when Pingora drops it).
struct Registration {
    sessions: Arc<Sessions>,
    sid: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let sessions = self.sessions.clone();
        let sid = std::mem::take(&mut self.sid);
        tokio::spawn(async move { sessions.close_stream(&sid).await });
    }
}

fn upstream_head(
    req: &RequestHeader,
    route: &Route,
    ctx: &RequestCtx,
    hub: &Hub,
    injected: &[(http::HeaderName, String)],
) -> Vec<u8> {
    let query = match hub.upstream_query(&route.policy, req.uri.query()) {
        Some(stripped) => stripped,
        None => req.uri.query().map(str::to_string),
    };
    let path = route.upstream_path_and_query(req.uri.path(), query.as_deref());
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n",
            route.upstream_authority
        )
        .as_bytes(),
    );
    for (header, value) in req.headers.iter() {
        let name = header.as_str();
        // an Origin the sidecar validated would be judged again against the upstream's
        // localhost allow-list
        if NOT_FORWARDED.contains(&name)
            || HOP_HEADERS.contains(&name)
            || (name == "origin" && ctx.cors.is_some())
            || hub.strips(&route.policy, header, value.as_bytes())
        {
            continue;
        }
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    for (name, value) in injected {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(
        format!(
            "{X_REQUEST_ID}: {}\r\nConnection: close\r\n\r\n",
            ctx.request_id
        )
        .as_bytes(),
    );
    head
}

/// Reads the upstream's response head; returns it and the body bytes read past it.
async fn read_head(up: &mut TcpStream) -> std::io::Result<(ResponseHeader, Framing, Vec<u8>)> {
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut raw = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        let n = up.read(&mut buf).await?;
        if n == 0 {
            return Err(invalid(
                "the MCP server closed the connection before answering",
            ));
        }
        raw.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&raw) {
            Ok(httparse::Status::Complete(len)) => {
                let status = parsed.code.unwrap_or(502);
                let mut resp = ResponseHeader::build(status, Some(parsed.headers.len() + 4))
                    .map_err(|_| invalid("bad status"))?;
                let mut framing = Framing::Close;
                for h in parsed.headers.iter() {
                    let name = h.name.to_ascii_lowercase();
                    if name == "transfer-encoding" {
                        if h.value.eq_ignore_ascii_case(b"chunked") {
                            framing = Framing::Chunked(Chunked::default());
                        }
                    } else if name == "content-length" {
                        let n = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or_else(|| invalid("bad content-length"))?;
                        if !matches!(framing, Framing::Chunked(_)) {
                            framing = Framing::Length(n);
                        }
                    }
                    if NOT_RETURNED.contains(&name.as_str()) {
                        continue;
                    }
                    resp.append_header(name, h.value)
                        .map_err(|_| invalid("bad response header"))?;
                }
                if status == 204 || status == 304 || status < 200 {
                    framing = Framing::None;
                }
                let rest = raw.split_off(len);
                return Ok((resp, framing, rest));
            }
            Ok(httparse::Status::Partial) if raw.len() < HEAD_LIMIT => {}
            Ok(httparse::Status::Partial) => return Err(invalid("response head too large")),
            Err(e) => return Err(invalid(&format!("invalid response head: {e}"))),
        }
    }
}

impl Sidecar {
    /// Serves a legacy SSE stream request: refused while draining, else relayed.
    pub(super) async fn relay_stream(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        plan: &mut Plan,
    ) -> Result<Verdict> {
        if self.sessions.is_draining() {
            // a legacy stream cannot move later: open it on a pod that stays
            return Ok(Verdict::Refused(Refusal::new(
                503,
                code::SERVER_ERROR,
                "this pod is draining; connect again to reach another pod",
            )));
        }
        *plan = Plan::LegacyStream;
        self.relay(session, ctx).await?;
        Ok(Verdict::Answered)
    }

    /// Relays a legacy SSE stream request to the route's MCP server.
    async fn relay(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let route = ctx
            .route
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        ctx.rpc_label = "sse_stream";
        // the stream's session id is not known yet: templates naming it are left out
        let injected = self.injected(session, ctx, None);
        let head = upstream_head(session.req_header(), &route, ctx, &self.hub, &injected);
        let query_key = self
            .hub
            .query_key(
                &route.policy,
                &session.req_header().headers,
                session.req_header().uri.query(),
            )
            .map(str::to_string);
        let opened = async {
            let mut up = tokio::time::timeout(
                self.connect_timeout,
                TcpStream::connect(route.upstream_addr),
            )
            .await
            .map_err(|_| {
                (
                    "connect_timeout",
                    std::io::Error::from(std::io::ErrorKind::TimedOut),
                )
            })?
            .map_err(|e| ("connect", e))?;
            up.set_nodelay(true).ok();
            up.write_all(&head).await.map_err(|e| ("write", e))?;
            let (resp, framing, rest) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut up))
                .await
                .map_err(|_| {
                    (
                        "read_timeout",
                        std::io::Error::from(std::io::ErrorKind::TimedOut),
                    )
                })?
                .map_err(|e| ("invalid_response", e))?;
            Ok::<_, (&'static str, std::io::Error)>((up, resp, framing, rest))
        };
        let (mut up, mut resp, mut framing, rest) = match opened.await {
            Ok(x) => x,
            Err((kind, e)) => {
                warn!(
                    "request_id={} MCP server {} unreachable for an SSE stream: {e}",
                    ctx.request_id, route.server_name
                );
                ctx.upstream_error = Some(kind);
                METRICS
                    .upstream_errors
                    .with_label_values(&[route.server_name.as_str(), kind])
                    .inc();
                let refusal = Refusal::new(
                    502,
                    code::SERVER_ERROR,
                    format!("MCP server {} is unreachable", route.server_name),
                );
                session.set_keepalive(None);
                return reply::send(session, ctx, &refusal).await;
            }
        };
        let is_sse = resp.status.as_u16() == 200
            && resp
                .headers
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if !matches!(framing, Framing::Length(_) | Framing::None) {
            // re-framed for the client
            resp.remove_header("content-length");
            resp.insert_header("transfer-encoding", "chunked")?;
        }
        resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        ctx.apply_cors(&mut resp);
        let no_body = matches!(framing, Framing::None | Framing::Length(0));
        session.set_keepalive(None);
        session
            .write_response_header(Box::new(resp), no_body)
            .await?;
        ctx.responded = Some(Instant::now());
        if no_body {
            return Ok(());
        }

        let keepalive =
            Some(self.sessions.settings.sse_keepalive).filter(|k| is_sse && !k.is_zero());
        let mut finder = EndpointFinder::default();
        let mut boundary = Boundary::default();
        let mut registration: Option<Registration> = None;
        let mut closed_by_admin: Option<Arc<tokio::sync::Notify>> = None;
        let mut idle_until =
            tokio::time::Instant::now() + keepalive.unwrap_or(Duration::from_secs(3600));
        let mut pending = rest;
        let mut buf = vec![0u8; 16 * 1024];
        let mut body = Vec::with_capacity(16 * 1024);
        let mut upstream_done = false;
        let rewrite = |endpoint: &str| -> Option<String> {
            if !endpoint.starts_with('/') {
                return None;
            }
            let path = match route.client_path(endpoint) {
                Some(p) => p,
                None => {
                    warn!(
                        "route {}: the endpoint {} is outside the route's upstream path; passed on unchanged",
                        route.prefix, endpoint.split('?').next().unwrap_or("")
                    );
                    return None;
                }
            };
            // a client that authenticates with ?key= posts to the endpoint it is given: the
            // key goes back to that same client so its posts carry it too
            let path = match &query_key {
                Some(k) => format!(
                    "{path}{}key={k}",
                    if path.contains('?') { '&' } else { '?' }
                ),
                None => path,
            };
            (path != endpoint).then_some(path)
        };
        loop {
            // decode what arrived, then send it
            if !pending.is_empty() {
                body.clear();
                match &mut framing {
                    Framing::Chunked(d) => {
                        if let Err(e) = d.decode(&pending, &mut body) {
                            warn!(
                                "request_id={} SSE stream from {}: bad chunked body: {}",
                                ctx.request_id, route.server_name, e.0
                            );
                            ctx.upstream_error = Some("invalid_response");
                            break;
                        }
                        upstream_done = d.is_done();
                    }
                    Framing::Length(left) => {
                        let n = (*left).min(pending.len() as u64);
                        body.extend_from_slice(&pending[..n as usize]);
                        *left -= n;
                        upstream_done = *left == 0;
                    }
                    Framing::Close | Framing::None => body.extend_from_slice(&pending),
                }
                pending.clear();
                let out = if is_sse && !finder.is_done() {
                    let pushed = finder.push(&body, &rewrite);
                    if let Some(endpoint) = pushed.endpoint {
                        match endpoint_session(&endpoint) {
                            Some((param, sid)) => {
                                let now = unix_now();
                                let record = SessionRecord {
                                    session_id: sid.to_string(),
                                    upstream_session_id: sid.to_string(),
                                    owner: self.sessions.settings.me.clone(),
                                    server_name: route.server_name.clone(),
                                    transport: Transport::Sse,
                                    user: ctx.caller.as_ref().map(|c| c.user.id.clone()),
                                    protocol_version: Some("2024-11-05".into()),
                                    init_params: None,
                                    created_at: now,
                                    last_seen: now,
                                    ..Default::default()
                                };
                                closed_by_admin =
                                    Some(self.sessions.open_stream(record, param).await);
                                ctx.legacy_sid = Some(sid.to_string());
                                registration = Some(Registration {
                                    sessions: self.sessions.clone(),
                                    sid: sid.to_string(),
                                });
                            }
                            None => info!(
                                "request_id={} SSE stream from {}: endpoint event without a session id",
                                ctx.request_id, route.server_name
                            ),
                        }
                    }
                    pushed.out
                } else {
                    std::mem::take(&mut body)
                };
                if !out.is_empty() {
                    boundary.feed(&out);
                    if session
                        .write_response_body(Some(Bytes::from(out)), false)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    if let Some(k) = keepalive {
                        idle_until = tokio::time::Instant::now() + k;
                    }
                }
                if upstream_done {
                    break;
                }
            }
            let admin_close = async {
                match &closed_by_admin {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = up.read(&mut buf) => match read {
                    Ok(0) => {
                        if !matches!(framing, Framing::Close) {
                            ctx.upstream_error = Some("closed");
                        }
                        break;
                    }
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(_) => {
                        ctx.upstream_error = Some("closed");
                        break;
                    }
                },
                _ = tokio::time::sleep_until(idle_until), if keepalive.is_some() => {
                    let keep = Bytes::from_static(KEEPALIVE);
                    if boundary.between_events() && session.write_response_body(Some(keep), false).await.is_err() {
                        break;
                    }
                    idle_until = tokio::time::Instant::now() + keepalive.unwrap_or_default();
                },
                // the client hung up
                _ = session.downstream_session.read_body_or_idle(true) => break,
                _ = admin_close => break,
            }
        }
        drop(registration);
        // a clean end for the client when it is still there
        let _ = session.write_response_body(None, true).await;
        Ok(())
    }
}

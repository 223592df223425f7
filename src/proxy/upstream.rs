//! What every request sent on carries, whichever plan sends it: the connection settings, no
//! hop headers and hub secrets from the client, `X-Forwarded-*`, the request id; and, toward
//! this pod's MCP server, the rewritten path, the hub's injected headers and the upstream's
//! `Host`. A request toward another sidecar is signed instead (`hop.rs`).

use super::admission::header;
use super::context::RequestCtx;
use super::{hop, Sidecar};
use crate::hub::policy::TemplateVars;
use crate::protocol::headers::{MCP_PROTOCOL_VERSION, X_REQUEST_ID};
use crate::route::Route;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorType;
use std::sync::Arc;

/// What the sidecar's own calls to the MCP server need: the route, the upstream path of this
/// request, and the protocol version the client speaks.
pub(super) fn upstream_target<'a>(
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

impl Sidecar {
    /// The connection to `to` (another sidecar, `ip:port`), or else to the route's MCP server.
    pub(super) fn peer(&self, ctx: &RequestCtx, to: Option<&str>) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        let addr = match to {
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

    /// The part of the upstream request head every plan sends, also toward another sidecar.
    pub(super) fn common_upstream_head(
        &self,
        session: &Session,
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
        Ok(())
    }

    /// The rest of the head toward this pod's MCP server: its path, the hub's headers for the
    /// caller (`session_id`: the client's session), its `Host`.
    pub(super) fn mcp_server_head(
        &self,
        session: &Session,
        upstream_request: &mut RequestHeader,
        ctx: &RequestCtx,
        session_id: Option<&str>,
    ) -> Result<()> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        if route.prefix != route.upstream_path {
            let uri = &upstream_request.uri;
            let target = route.upstream_path_and_query(uri.path(), uri.query());
            let uri = target
                .parse::<http::Uri>()
                .or_err(ErrorType::InvalidHTTPHeader, "rewriting the upstream path")?;
            upstream_request.set_uri(uri);
        }
        for (name, value) in self.injected(session, ctx, session_id) {
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

    /// The headers the route's templates render for this request; `session_id` is the
    /// client-facing session id (a legacy post's or stream's when not given).
    pub(super) fn injected(
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
            session_id: session_id.or(ctx.legacy_sid.as_deref()),
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
}

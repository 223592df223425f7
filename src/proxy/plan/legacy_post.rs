//! A legacy SSE message post (`POST /messages/?session_id=…`), sent to the pod whose stream
//! holds the session (`Sessions::resolve_stream`): this pod's MCP server when the stream is
//! relayed here (`legacy_stream.rs`), else the owner's sidecar over the signed hop. Its answer
//! travels on that stream, so it cannot be recovered elsewhere: when the stream is gone (also
//! when the owner's sidecar does not answer) the client gets FastMCP's own 404 and reconnects.

use crate::metrics::METRICS;
use crate::protocol::jsonrpc::code;
use crate::proxy::context::RequestCtx;
use crate::proxy::reply::Refusal;
use crate::proxy::Sidecar;
use crate::session::StreamDecision;
use pingora::http::{RequestHeader, ResponseHeader};

pub(crate) struct LegacyPost {
    /// The session the message URL names.
    pub sid: String,
    /// The pod relaying the stream, when not this one.
    pub owner: Option<String>,
    /// The stream turned out gone while forwarding (the reason, a metrics label).
    pub gone: Option<&'static str>,
}

/// A legacy post whose stream is gone. The text is FastMCP's own, which clients know.
pub(crate) fn stream_gone() -> Refusal {
    Refusal::new(404, code::SESSION_NOT_FOUND, "Could not find session")
}

impl Sidecar {
    /// The plan of a request without `Mcp-Session-Id` that names a legacy session in its URL;
    /// `None` for any other request.
    pub(super) async fn choose_legacy_post(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Option<LegacyPost>, Refusal> {
        let named = match req.uri.query().map(crate::legacy::message_session) {
            Some(Err(why)) => return Err(Refusal::new(400, code::INVALID_REQUEST, why)),
            Some(Ok(named)) => named,
            None => None,
        };
        let (param, sid) = match named {
            Some(named) if req.method == http::Method::POST => named,
            _ => return Ok(None),
        };
        let route = ctx.routed();
        ctx.legacy_sid = Some(sid.to_string());
        let owner = match self
            .sessions
            .resolve_stream(sid, param, &route.server_name, ctx.user_id(), ctx.from_peer)
            .await
        {
            StreamDecision::Local => None,
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
            StreamDecision::Forward { owner } => Some(owner),
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
        Ok(Some(LegacyPost {
            sid: sid.to_string(),
            owner,
            gone: None,
        }))
    }
}

impl LegacyPost {
    pub fn via(&self) -> &'static str {
        match self.owner {
            Some(_) => "forwarded",
            None => "local",
        }
    }

    pub fn response(&self, resp: &ResponseHeader, ctx: &RequestCtx) {
        let via = match (&self.owner, ctx.from_peer) {
            (Some(_), _) => "forwarded",
            (None, true) => "from_peer",
            (None, false) => "local",
        };
        METRICS.sse_posts.with_label_values(&[via]).inc();
        // the owner answers 404 when the stream ended since it was looked up
        if resp.status.as_u16() == 404 {
            METRICS
                .sse_failures
                .with_label_values(&["stream_closed"])
                .inc();
        }
    }

    /// A legacy stream lives in its owner's sidecar: if that does not answer, the stream is
    /// gone with it. (This pod's own MCP server refusing is a plain 502.)
    pub fn connect_failed(&mut self, sidecar: &Sidecar) {
        if self.owner.is_some() {
            self.gone = Some("owner_unreachable");
            sidecar
                .sessions
                .drop_stream_record(&self.sid, "its owner pod is unreachable");
        }
    }
}

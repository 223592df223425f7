//! Served by this pod's MCP server: a request on a session this pod owns (the session layer
//! found it in the local table, or adopted it from the store), or a request without a session.
//!
//! Without a session, a 2xx answer to `initialize` creates one: the sidecar records it with
//! its initialize params and caller (`Sessions::capture`), so any pod can recover it later.
//! On a session, the MCP server may know it under another id (after a recovery): the request
//! carries that id and the answer the client's. A DELETE the server accepts ends the session
//! everywhere. An answer saying the server does not know the session is probed and recovered
//! (`recover.rs`).

use super::SessionIds;
use crate::protocol::headers::{self, MCP_SESSION_ID};
use crate::proxy::context::RequestCtx;
use crate::proxy::Sidecar;
use crate::store::{unix_now, SessionRecord, Transport};
use log::warn;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;

pub(crate) struct Local {
    /// `None`: a request without a session (an `initialize`, or a session-less server's).
    pub session: Option<SessionIds>,
}

impl Local {
    /// A session owned here, known to the MCP server as `upstream`.
    pub fn owned(client: &str, upstream: String) -> Local {
        Local {
            session: Some(SessionIds {
                client: client.to_string(),
                upstream,
                retried: false,
            }),
        }
    }

    pub fn upstream_request(&self, upstream_request: &mut RequestHeader) -> Result<()> {
        match &self.session {
            Some(s) => with_upstream_sid(s, upstream_request),
            None => Ok(()),
        }
    }

    pub async fn response(
        &self,
        sidecar: &Sidecar,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        match &self.session {
            Some(s) => answered_on_session(sidecar, session, resp, s).await,
            // a new session: only a 2xx answer to initialize creates one (the Python SDK hands
            // out orphan ids on its 400s)
            None if resp.status.is_success() && ctx.init.is_some() => {
                let sid = resp
                    .headers
                    .get(MCP_SESSION_ID)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| headers::is_valid_session_id(v.as_bytes()));
                if let Some(record) = sid.and_then(|sid| new_record(sidecar, ctx, sid)) {
                    sidecar.sessions.capture(record).await;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// The MCP server's id for the session, when it is not the client's.
pub(super) fn with_upstream_sid(
    s: &SessionIds,
    upstream_request: &mut RequestHeader,
) -> Result<()> {
    if s.upstream != s.client {
        upstream_request.insert_header(MCP_SESSION_ID, s.upstream.as_str())?;
    }
    Ok(())
}

/// This pod's MCP server answered on session `s`: the client sees its own id, and a DELETE
/// the server accepted ends the session everywhere.
pub(super) async fn answered_on_session(
    sidecar: &Sidecar,
    session: &Session,
    resp: &mut ResponseHeader,
    s: &SessionIds,
) -> Result<()> {
    if s.upstream != s.client && resp.headers.contains_key(MCP_SESSION_ID) {
        resp.insert_header(MCP_SESSION_ID, s.client.as_str())?;
    }
    if resp.status.is_success() && session.req_header().method == http::Method::DELETE {
        if let Err(e) = sidecar.sessions.forget(&s.client).await {
            warn!(
                "session {} ended upstream but not in the store: {e}",
                s.client
            );
        }
    }
    Ok(())
}

/// The session record an initialize response creates.
fn new_record(sidecar: &Sidecar, ctx: &RequestCtx, upstream_sid: &str) -> Option<SessionRecord> {
    let (params, version) = ctx.init.clone()?;
    let now = unix_now();
    Some(SessionRecord {
        session_id: upstream_sid.to_string(),
        upstream_session_id: upstream_sid.to_string(),
        owner: sidecar.sessions.settings.me.clone(),
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

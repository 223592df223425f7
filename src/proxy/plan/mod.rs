//! How a request is served: decided once, in `request_filter` right after admission
//! (`Sidecar::choose`), into one value. Each way has its own file, which owns what that way
//! does in every later phase (what goes upstream, what is done to the answer's head and body,
//! what a failed connection means, what the access line says):
//!
//! - `local.rs`: this pod's MCP server serves it, on a session this pod owns or without one
//!   (a new session is captured from its `initialize` answer);
//! - `forward.rs`: another pod owns the session; sent to its sidecar over the signed hop;
//! - `recover.rs`: the session's owner is gone, or the MCP server forgot it: replayed here,
//!   then served as above. Also every retry through recovery, from any plan;
//! - `hand_off.rs`: this pod drains; a request without a session goes to a live peer;
//! - `shared.rs`: a client session of a `session_mode: shared` route, multiplexed onto the
//!   context's one upstream session (or answered by the sidecar itself);
//! - `legacy_post.rs`: a legacy SSE message post, sent to the pod whose stream holds it;
//! - `legacy_stream.rs`: a legacy SSE stream, relayed by the sidecar itself;
//! - `offerings.rs`: `offerings/list`, answered by the sidecar from the session's lists;
//! - `bridged.rs`: a modern (2026-07-28) client's request to a legacy server, served by the
//!   sidecar on a pooled legacy session (or, an MRTR retry, sent to the pod holding its call).
//!
//! A plan can change once during a request, explicitly: a forward whose owner does not
//! answer, or a local request whose MCP server forgot the session, becomes `Retry`, which
//! the next `upstream_peer` turns into `Recovered` (`recover.rs`); a hand-off whose peer does
//! not answer becomes `Local`.
//!
//! A new way of serving is one more variant, one more file, and its arm in `choose` and in
//! the phase methods at the end of this file.

mod bridged;
mod forward;
mod hand_off;
mod legacy_post;
mod legacy_stream;
mod local;
mod offerings;
mod recover;
mod shared;
#[cfg(test)]
mod tests;

use super::context::RequestCtx;
use super::reply::Refusal;
use super::{Sidecar, Verdict};
use crate::protocol::headers::MCP_SESSION_ID;
use crate::protocol::jsonrpc::code;
use crate::session::Decision;
use bytes::Bytes;
use forward::Forwarded;
use hand_off::HandedOff;
use legacy_post::LegacyPost;
use local::Local;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use recover::Retry;
use shared::Shared;
use std::time::Instant;

pub(super) use legacy_post::stream_gone;

/// A client session as a plan holds it.
#[derive(Debug, Clone)]
pub(super) struct SessionIds {
    /// What the client sends and must keep seeing.
    pub client: String,
    /// What the MCP server serving it knows (differs after a recovery, and on shared routes).
    pub upstream: String,
    /// A request gets one retry through recovery, never more.
    pub retried: bool,
}

/// The way one request is served.
pub enum Plan {
    /// Not chosen yet: the request is being admitted, or was refused or answered before a
    /// plan was needed.
    Undecided,
    Local(Local),
    Forwarded(Forwarded),
    /// The session was recovered; the request is then served as the inner plan (`Local`, or
    /// `Forwarded` when another pod recovered it first) says.
    Recovered(Box<Plan>),
    /// The previous plan failed in a way recovery may mend; resolved by the next
    /// `upstream_peer`.
    Retry(Box<Retry>),
    HandedOff(HandedOff),
    Shared(Box<Shared>),
    LegacyPost(LegacyPost),
    /// Relayed by the sidecar in `request_filter`.
    LegacyStream,
    /// Answered by the sidecar in `request_filter`, on the session the inner plan placed.
    Offerings(Box<Plan>),
    /// A modern client's request to a legacy server (`bridged.rs`).
    Bridged(bridged::Bridged),
}

impl Sidecar {
    /// Chooses the plan of an admitted request, and serves it at once when the sidecar
    /// answers it itself.
    pub(super) async fn choose(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        plan: &mut Plan,
    ) -> Result<Verdict> {
        *plan = Plan::Local(Local { session: None });
        if super::admission::is_modern(session.req_header()) {
            if let Some(verdict) = self.choose_modern(session, ctx, plan).await? {
                return Ok(verdict);
            }
        }
        let placed = if ctx.routed().shared {
            match self.choose_shared(session, ctx, plan).await {
                Ok(shared::Step::Answered) => return Ok(Verdict::Answered),
                Ok(shared::Step::Proxy) => Ok(()),
                Err(refusal) => Err(refusal),
            }
        } else {
            self.choose_for_session(session, ctx, plan).await
        };
        if let Err(refusal) = placed {
            return Ok(Verdict::Refused(refusal));
        }
        if legacy_stream::wanted(session.req_header()) {
            return self.relay_stream(session, ctx, plan).await;
        }
        if matches!(plan, Plan::Local(Local { session: None })) && !ctx.from_peer {
            // draining: new sessions (and session-less requests) open on a pod that stays
            if let Some(peer) = self.sessions.handoff_peer(&ctx.request_id) {
                *plan = Plan::HandedOff(HandedOff { peer });
            }
        }
        if offerings::asked(ctx, plan) {
            let on = std::mem::replace(plan, Plan::Undecided);
            let answered = self
                .answer_offerings(session, ctx, on.session(), None)
                .await;
            *plan = Plan::Offerings(Box::new(on));
            return answered.map(|()| Verdict::Answered);
        }
        Ok(Verdict::Proxy)
    }

    /// A request on a route with sessions of its own (not shared): where the session layer
    /// says its session is (`crate::session`), or a legacy post's stream.
    async fn choose_for_session(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        plan: &mut Plan,
    ) -> Result<(), Refusal> {
        let req = session.req_header();
        let Some(sid) = req
            .headers
            .get(MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
        else {
            if let Some(post) = self.choose_legacy_post(req, ctx).await? {
                *plan = Plan::LegacyPost(post);
            }
            return Ok(());
        };
        refuse_two_sessions(req)?;
        let route = ctx.routed();
        let user = ctx.user_id();
        let decision = if ctx.from_peer {
            self.sessions
                .resolve_forwarded(sid, &route.server_name, user)
                .await
        } else {
            self.sessions.resolve(sid, &route.server_name, user).await
        };
        *plan = match decision {
            Decision::Local { upstream_sid } => Plan::Local(Local::owned(sid, upstream_sid)),
            Decision::Forward { owner } => Plan::Forwarded(Forwarded::to(sid, owner)),
            Decision::Recover(record) => self.owner_gone(session, ctx, sid, *record).await?,
            Decision::Unknown => return Err(session_not_found()),
            Decision::StoreUnavailable => return Err(store_unavailable()),
        };
        self.probe_before_sending(session, ctx, plan).await
    }
}

fn session_not_found() -> Refusal {
    Refusal::new(404, code::SESSION_NOT_FOUND, "Session not found")
}

fn store_unavailable() -> Refusal {
    Refusal::new(
        503,
        code::SERVER_ERROR,
        "session store unavailable and the session is not on this pod; retry shortly",
    )
}

/// A request naming a session both in `Mcp-Session-Id` and in a legacy message URL: the
/// sidecar would route and bind by one while a legacy server acts on the other.
fn refuse_two_sessions(req: &RequestHeader) -> Result<(), Refusal> {
    match req.uri.query().map(crate::legacy::message_session) {
        Some(Ok(None)) | None => Ok(()),
        Some(_) => Err(Refusal::new(
            400,
            code::INVALID_REQUEST,
            "a request must name exactly one session",
        )),
    }
}

/// What each phase asks of the plan; each way's own part is in its file.
impl Plan {
    /// Replaces the plan with what it becomes.
    fn turn_into(&mut self, next: impl FnOnce(Plan) -> Plan) {
        let previous = std::mem::replace(self, Plan::Undecided);
        *self = next(previous);
    }

    /// How it was served, for the access line (`via=`).
    pub(super) fn via(&self) -> Option<&'static str> {
        match self {
            Plan::Local(l) => l.session.as_ref().map(|_| "local"),
            Plan::Forwarded(_) => Some("forwarded"),
            Plan::Recovered(_) => Some("recovered"),
            Plan::Retry(r) => r.previous.via(),
            Plan::Shared(s) => Some(s.via),
            Plan::LegacyPost(p) => Some(p.via()),
            Plan::Offerings(on) => on.via(),
            Plan::Bridged(b) => Some(if b.owner.is_some() {
                "bridged_forwarded"
            } else {
                "bridged"
            }),
            Plan::Undecided | Plan::HandedOff(_) | Plan::LegacyStream => None,
        }
    }

    /// The live peer a draining pod handed the request to, for the access line.
    pub(super) fn handoff(&self) -> Option<&str> {
        match self {
            Plan::HandedOff(h) => Some(&h.peer),
            _ => None,
        }
    }

    /// The client session the request is served on.
    fn session(&self) -> Option<&SessionIds> {
        match self {
            Plan::Local(l) => l.session.as_ref(),
            Plan::Forwarded(f) => Some(&f.session),
            Plan::Recovered(inner) | Plan::Offerings(inner) => inner.session(),
            Plan::Retry(r) => r.previous.session(),
            Plan::Shared(s) => Some(&s.session),
            Plan::Undecided
            | Plan::HandedOff(_)
            | Plan::LegacyPost(_)
            | Plan::LegacyStream
            | Plan::Bridged(_) => None,
        }
    }

    /// The client-facing session id the hub's header templates name.
    pub(super) fn client_sid(&self) -> Option<&str> {
        match self {
            Plan::LegacyPost(p) => Some(&p.sid),
            _ => self.session().map(|s| s.client.as_str()),
        }
    }

    /// The sidecar the request goes to over the signed hop, if not this pod's MCP server.
    pub(super) fn next_sidecar(&self) -> Option<&str> {
        match self {
            Plan::Forwarded(f) => Some(&f.owner),
            Plan::Recovered(inner) => inner.next_sidecar(),
            Plan::Retry(r) => r.previous.next_sidecar(),
            Plan::HandedOff(h) => Some(&h.peer),
            Plan::Shared(s) => s.owner(),
            Plan::LegacyPost(p) => p.owner.as_deref(),
            Plan::Bridged(b) => b.owner.as_deref(),
            Plan::Undecided | Plan::Local(_) | Plan::LegacyStream | Plan::Offerings(_) => None,
        }
    }

    /// Whether this pod's MCP server answers (and so this pod filters the answer).
    pub(super) fn served_here(&self) -> bool {
        self.next_sidecar().is_none()
    }

    /// The session's part of the request head toward this pod's MCP server.
    pub(super) fn upstream_request(
        &self,
        method: &http::Method,
        upstream_request: &mut RequestHeader,
    ) -> Result<()> {
        match self {
            Plan::Local(l) => l.upstream_request(upstream_request),
            Plan::Recovered(inner) => inner.upstream_request(method, upstream_request),
            Plan::Shared(s) => s.upstream_request(method, upstream_request),
            _ => Ok(()),
        }
    }

    /// Pingora sends a body read in `request_filter` again from its buffer: what goes instead.
    pub(super) fn replay_body(&self, body: &mut Option<Bytes>, end_of_stream: bool) {
        if let Plan::Shared(s) = self {
            s.replay_body(body, end_of_stream);
        }
    }

    /// A body held until complete (and judged): what goes upstream, if anything.
    pub(super) fn outgoing_body(
        &mut self,
        sidecar: &Sidecar,
        ctx: &mut RequestCtx,
        full: Bytes,
    ) -> Result<Option<Bytes>> {
        if let Plan::Shared(s) = self {
            if s.multiplexes() {
                return s.multiplex_held(sidecar, ctx, &full);
            }
        }
        // a request without a body stays without: an empty chunk written after the upstream
        // request ended makes Pingora warn
        let sealed = sidecar.hops.seal(ctx, full);
        Ok((!sealed.is_empty()).then_some(sealed))
    }

    /// The plan's part of the answer's head.
    pub(super) async fn response(
        &mut self,
        sidecar: &Sidecar,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        now: Instant,
    ) -> Result<()> {
        match self {
            Plan::Local(l) => l.response(sidecar, session, resp, ctx).await,
            Plan::Forwarded(_) => {
                forward::answered(ctx, now);
                Ok(())
            }
            Plan::Recovered(inner) => {
                Box::pin(inner.response(sidecar, session, resp, ctx, now)).await
            }
            Plan::Shared(s) => s.response(sidecar, session, resp, ctx, now).await,
            Plan::LegacyPost(p) => {
                p.response(resp, ctx);
                Ok(())
            }
            Plan::Undecided
            | Plan::Retry(_)
            | Plan::HandedOff(_)
            | Plan::LegacyStream
            | Plan::Offerings(_)
            | Plan::Bridged(_) => Ok(()),
        }
    }

    /// The plan's part of the answer's body; `false` when it leaves the body to the common
    /// handling (the tool filter).
    pub(super) fn response_body(
        &mut self,
        sidecar: &Sidecar,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &RequestCtx,
    ) -> bool {
        match self {
            Plan::Shared(s) => s.restore_body(sidecar, body, end_of_stream, ctx),
            _ => false,
        }
    }

    /// The connection to where the plan sends the request failed: whether to try again
    /// (with the plan this turns the plan into).
    pub(super) fn connect_failed(&mut self, sidecar: &Sidecar) -> bool {
        match self {
            Plan::HandedOff(_) => {
                hand_off::peer_unreachable(self);
                true
            }
            Plan::LegacyPost(p) => {
                p.connect_failed(sidecar);
                false
            }
            Plan::Bridged(_) => false,
            _ => recover::owner_unreachable(self),
        }
    }

    /// Waiting for `upstream_peer` to recover the session and try again.
    pub(super) fn is_retry(&self) -> bool {
        matches!(self, Plan::Retry(_))
    }

    /// A legacy post whose stream turned out gone (the reason, a metrics label).
    pub(super) fn legacy_gone(&self) -> Option<&'static str> {
        match self {
            Plan::LegacyPost(p) => p.gone,
            _ => None,
        }
    }

    /// What the client is told when the plan's next hop failed, when the plan knows better
    /// than the generic proxy error.
    pub(super) fn failure(&self, route: &str) -> Option<Refusal> {
        match self {
            Plan::LegacyPost(p) if p.gone.is_some() => Some(stream_gone()),
            Plan::Bridged(b) if b.owner.is_some() => Some(b.owner_gone(route)),
            _ => None,
        }
    }

    /// The request is over, however it ended.
    pub(super) fn finish(&mut self, sidecar: &Sidecar) {
        match self {
            Plan::Shared(s) => s.finish(sidecar),
            Plan::Recovered(inner) | Plan::Offerings(inner) => inner.finish(sidecar),
            Plan::Retry(r) => r.previous.finish(sidecar),
            _ => {}
        }
    }
}

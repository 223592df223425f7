//! Recovered: a session whose owner pod is gone, or whose MCP server forgot it, is replayed
//! on this pod and the request served on the result. Every way into recovery is here:
//!
//! 1. The store names an owner whose registration is gone (`Decision::Recover`): recovered
//!    before the request is sent (`owner_gone`).
//! 2. The owner's sidecar does not take the connection (`fail_to_connect`): the forward
//!    becomes a `Retry` (`owner_unreachable`).
//! 3. This pod's MCP server answers as if it did not know the session (a 400/404, see
//!    `protocol::unknown_session`): a `ping` on the session asks it again, to be sure; if it
//!    forgot, the request becomes a `Retry` (`check_answer`). Only a request Pingora can send
//!    again (no body, or one in its retry buffer) is retried; a larger body is probed for
//!    before it is sent instead (`probe_before_sending`).
//!
//! A `Retry` is resolved by the next `upstream_peer` (`resume`): the recovery runs and the
//! request goes again, once; a request that fails again gets the failure. The store's half,
//! the lock that makes concurrent requests recover a session once, the replayed `initialize`
//! and `notifications/initialized`, and the claim of the session with the next ownership
//! epoch, is the session layer's `Sessions::recover`. A shared route's upstream session is
//! re-established instead (`shared.rs`).

use super::forward::Forwarded;
use super::local::Local;
use super::{session_not_found, store_unavailable, Plan, SessionIds};
use crate::protocol::jsonrpc::code;
use crate::protocol::unknown_session::{is_unknown_session, may_be_unknown_session};
use crate::proxy::admission::PRE_READ_LIMIT;
use crate::proxy::context::RequestCtx;
use crate::proxy::reply::Refusal;
use crate::proxy::upstream::upstream_target;
use crate::proxy::Sidecar;
use crate::session::Decision;
use crate::store::SessionRecord;
use log::warn;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorType;

const FORGOTTEN: &str = "MCP server forgot the session";

/// The id of the sidecar's own probes, so they never collide with a client's.
const PROBE_ID: &str = "mcp-sidecar-probe";

/// A plan that failed in a way recovery may mend, waiting for `upstream_peer`.
pub(crate) struct Retry {
    pub reason: &'static str,
    pub previous: Plan,
}

fn recovery_failed(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        502,
        code::SERVER_ERROR,
        format!("session could not be recovered: {e}"),
    )
}

/// Whether Pingora can resend this request (no body, or one in its retry buffer).
fn can_resend(session: &Session, ctx: &RequestCtx) -> bool {
    ctx.content_length.is_some_and(|n| n <= PRE_READ_LIMIT)
        || session.req_header().method == http::Method::GET
        || session.req_header().method == http::Method::DELETE
}

impl Plan {
    /// The session, when this pod's MCP server serves it (and so may have forgotten it).
    fn recoverable_here(&mut self) -> Option<&mut SessionIds> {
        match self {
            Plan::Local(l) => l.session.as_mut(),
            Plan::Recovered(inner) => inner.recoverable_here(),
            Plan::Shared(s) if s.owner().is_none() => Some(&mut s.session),
            _ => None,
        }
    }

    /// The session, when the plan sends it to its owner's sidecar.
    fn at_owner(&mut self) -> Option<&mut SessionIds> {
        match self {
            Plan::Forwarded(f) => Some(&mut f.session),
            Plan::Recovered(inner) => inner.at_owner(),
            Plan::Shared(s) if s.owner().is_some() => Some(&mut s.session),
            _ => None,
        }
    }

    fn retry(&mut self, reason: &'static str) {
        self.turn_into(|previous| Plan::Retry(Box::new(Retry { reason, previous })));
    }
}

/// The owner's sidecar does not answer: the pod is gone, recover here once.
pub(super) fn owner_unreachable(plan: &mut Plan) -> bool {
    match plan.at_owner() {
        Some(s) if !s.retried => {
            s.retried = true;
            plan.retry("owner pod unreachable");
            true
        }
        // the MCP server is on this pod's loopback: retrying a refused connect only delays
        // the 502
        _ => false,
    }
}

impl Sidecar {
    /// The store's record names an owner that is gone: recover the session before sending.
    pub(super) async fn owner_gone(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        sid: &str,
        record: SessionRecord,
    ) -> Result<Plan, Refusal> {
        let route = ctx.routed();
        let path = route.upstream_path_and_query(session.req_header().uri.path(), None);
        let extra = self.injected(session, ctx, Some(sid));
        let placed = self
            .sessions
            .recover(record, &route, &path, "owner pod gone", &extra)
            .await
            .map_err(recovery_failed)?;
        match placed {
            Decision::Local { upstream_sid } => Ok(Plan::Recovered(Box::new(Plan::Local(
                Local::owned(sid, upstream_sid),
            )))),
            // another pod recovered it first: a plain forward to that pod
            Decision::Forward { owner } => Ok(Plan::Forwarded(Forwarded::to(sid, owner))),
            Decision::StoreUnavailable => Err(store_unavailable()),
            Decision::Unknown | Decision::Recover(_) => Err(session_not_found()),
        }
    }

    /// A body past Pingora's retry buffer cannot be resent if the MCP server turns out to have
    /// forgotten the session, so it is asked before the body is sent.
    pub(super) async fn probe_before_sending(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        plan: &mut Plan,
    ) -> Result<(), Refusal> {
        let req = session.req_header();
        let has_body = ctx.content_length.is_none_or(|n| n > 0) && req.method == http::Method::POST;
        if !has_body || ctx.body_complete {
            return Ok(());
        }
        let Some(s) = plan.recoverable_here().cloned() else {
            return Ok(());
        };
        if self.forgotten(session, ctx, &s).await {
            self.recover(session, ctx, plan, FORGOTTEN)
                .await
                .map_err(recovery_failed)?;
        }
        Ok(())
    }

    /// An answer of this pod's MCP server that may mean it forgot the session: asked again
    /// with a probe, and if so the request becomes a `Retry` (the error makes Pingora retry).
    pub(in crate::proxy) async fn check_answer(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        plan: &mut Plan,
        status: u16,
    ) -> Result<()> {
        let suspect = plan
            .recoverable_here()
            .is_some_and(|s| !s.retried && may_be_unknown_session(status));
        if !suspect || !can_resend(session, ctx) {
            return Ok(());
        }
        let s = plan
            .recoverable_here()
            .cloned()
            .expect("suspect implies a session");
        if self.forgotten(session, ctx, &s).await {
            if let Some(s) = plan.recoverable_here() {
                s.retried = true;
            }
            plan.retry(FORGOTTEN);
            let mut e = Error::explain(ErrorType::HTTPStatus(status), FORGOTTEN);
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    /// A retry's recovery, before the request goes again. On failure the request keeps the
    /// plan it had and gets 502.
    pub(in crate::proxy) async fn resume(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        plan: &mut Plan,
    ) -> Result<()> {
        if !plan.is_retry() {
            return Ok(());
        }
        let Plan::Retry(retry) = std::mem::replace(plan, Plan::Undecided) else {
            return Ok(());
        };
        let Retry { reason, previous } = *retry;
        *plan = previous;
        // a retry: the owner vanished or the MCP server forgot the session
        if let Err(e) = self.recover(session, ctx, plan, reason).await {
            warn!("request_id={} session recovery failed: {e}", ctx.request_id);
            return Error::e_explain(ErrorType::HTTPStatus(502), "session could not be recovered");
        }
        Ok(())
    }

    /// Asks this pod's MCP server, with a `ping` on the session, whether it still knows it.
    async fn forgotten(&self, session: &Session, ctx: &RequestCtx, s: &SessionIds) -> bool {
        let (route, path, version) = upstream_target(session, ctx);
        let extra = self.injected(session, ctx, Some(&s.client));
        // unique per probe: concurrent probes of one (shared) session must not collide
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":"{PROBE_ID}-{}","method":"ping"}}"#,
            uuid::Uuid::new_v4().simple()
        );
        let answer = self
            .sessions
            .call_upstream(&route, &path, Some(&s.upstream), version, &extra, &body)
            .await;
        answer.is_ok_and(|a| is_unknown_session(a.status, &a.body))
    }

    /// Recovers the plan's session and points the plan at the result (unchanged on failure).
    async fn recover(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        plan: &mut Plan,
        reason: &'static str,
    ) -> Result<(), String> {
        if let Plan::Shared(shared) = plan {
            return self.reestablish(session, ctx, shared).await;
        }
        let ids = plan
            .session()
            .cloned()
            .expect("only session requests recover");
        let (route, path, _) = upstream_target(session, ctx);
        let extra = self.injected(session, ctx, Some(&ids.client));
        let record = match self.sessions.local_record(&ids.client) {
            Some(r) => r,
            None => self
                .sessions
                .store()
                .load_session(&ids.client)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the session record is gone")?,
        };
        let placed = match self
            .sessions
            .recover(record, &route, &path, reason, &extra)
            .await
        {
            Ok(Decision::Local { upstream_sid }) => Plan::Local(Local {
                session: Some(SessionIds {
                    upstream: upstream_sid,
                    ..ids
                }),
            }),
            Ok(Decision::Forward { owner }) => Plan::Forwarded(Forwarded {
                session: SessionIds {
                    upstream: ids.client.clone(),
                    ..ids
                },
                owner,
            }),
            Ok(_) => return Err("the session could not be placed".into()),
            Err(e) => return Err(e.to_string()),
        };
        *plan = Plan::Recovered(Box::new(placed));
        Ok(())
    }
}

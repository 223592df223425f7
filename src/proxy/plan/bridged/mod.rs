//! A modern (2026-07-28) client's request to a legacy MCP server: served by the sidecar
//! itself from `request_filter`, on a pooled legacy session (`crate::bridge`), by whichever
//! pod it reached. Here is everything such a request goes through:
//!
//! - `server/discover`: answered from the pooled session's InitializeResult;
//! - a request (`call.rs`): sent upstream under the bridge's own id (and progress token), its answer
//!   relayed as it comes (progress; log messages only at or above the level the request
//!   asked for), the final result made modern (`resultType`, cache hints, serverInfo, error
//!   codes); one JSON body when nothing preceded the result, else an SSE stream;
//! - a server-to-client request during the call (elicitation, sampling, roots): the call is
//!   held on this pod and the client gets an `InputRequiredResult` with a sealed
//!   `requestState`; its retry, on any pod, is carried here over the signed hop (`owner`),
//!   the answers go upstream, and the held call's stream continues as the retry's answer;
//! - the client closing its stream cancels the call upstream (`notifications/cancelled`);
//! - `subscriptions/listen` (`listen.rs`): the pooled session's GET stream, only the opted-in
//!   notifications, tagged with the subscription, with keep-alive comments;
//! - `offerings/list`: as on a legacy session (`offerings.rs`), on the pooled one;
//! - a client notification: `202`, nothing upstream (cancellation is the stream closing).
//!
//! This file chooses (bridge, carry a retry to its pod, or pass to a modern server), and
//! answers what needs no upstream call of its own. A route whose server is modern passes
//! modern requests through untouched (`local.rs`).

mod call;
mod listen;

use super::{Plan, SessionIds};
use crate::bridge::client::{sse_event, Answer, CallError};
use crate::bridge::{Bridge, Era, Inbox, Legacy, PendingCall, Target};
use crate::hub::filter::filter_message;
use crate::legacy::sse::KEEPALIVE;
use crate::metrics::METRICS;
use crate::protocol::headers::X_REQUEST_ID;
use crate::protocol::jsonrpc::code;
use crate::protocol::modern::{self, CacheHint, Listen, Request, INPUT_REQUESTS};
use crate::protocol::request_state;
use crate::protocol::unknown_session::is_unknown_session;
use crate::proxy::admission::{self, PRE_READ_LIMIT};
use crate::proxy::body::{BodyBuffer, BodyProgress};
use crate::proxy::context::RequestCtx;
use crate::proxy::reply::Refusal;
use crate::proxy::upstream::upstream_target;
use crate::proxy::{tool_filter, Sidecar, Verdict};
use crate::shared::fanout::{Opened, Target as StreamTarget};
use crate::store::unix_now;
use bytes::Bytes;
use log::{info, warn};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A bridged request: answered here, or (an MRTR retry whose call another pod holds) sent
/// to that pod's sidecar over the signed hop.
pub struct Bridged {
    pub owner: Option<String>,
}

fn refused(status: u16, code: i64, message: impl Into<String>) -> Refusal {
    Refusal::new(status, code, message)
}

fn bad_state(route: &str, why: &str) -> Refusal {
    METRICS
        .bridge_rounds
        .with_label_values(&[route, "refused"])
        .inc();
    refused(400, code::INVALID_PARAMS, why)
}

/// The principal and pool context of a caller (the rules of shared routes, plus the hub
/// user where the route injects identity).
fn context_of(ctx: &RequestCtx) -> String {
    let route = ctx.routed();
    let user = ctx.caller.as_ref().map(|c| &*c.user);
    let mut context = crate::shared::context_key(&route.policy, user);
    if route.policy.templates.iter().any(|t| t.needs_user()) {
        context.push_str("|user:");
        context.push_str(ctx.user_id().unwrap_or("-"));
    }
    context
}

/// The answer's cache hints: private whenever it depends on the caller.
fn hint(sidecar: &Sidecar, ctx: &RequestCtx) -> CacheHint {
    let route = ctx.routed();
    CacheHint {
        ttl_ms: sidecar.bridge.settings.cache_ttl.as_millis() as u64,
        private: !route.policy.templates.is_empty() || route.policy.tools.is_some(),
    }
}

/// The answer going downstream: one JSON body when the result is all there is, else an SSE
/// stream begun at the first message before it.
#[derive(Default)]
struct Out {
    streaming: bool,
}

impl Out {
    async fn head(&mut self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let mut resp = ResponseHeader::build(200, Some(5))?;
        resp.insert_header("content-type", "text/event-stream")?;
        resp.insert_header("cache-control", "no-cache")?;
        resp.insert_header("x-accel-buffering", "no")?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        ctx.apply_cors(&mut resp);
        session.write_response_header(Box::new(resp), false).await?;
        ctx.responded = Some(Instant::now());
        ctx.sse_response = true;
        self.streaming = true;
        Ok(())
    }

    async fn event(
        &mut self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        msg: &Value,
    ) -> Result<()> {
        if !self.streaming {
            self.head(session, ctx).await?;
        }
        session
            .write_response_body(Some(sse_event(msg)), false)
            .await
    }

    async fn finish(
        &mut self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        msg: &Value,
    ) -> Result<()> {
        if self.streaming {
            session
                .write_response_body(Some(sse_event(msg)), false)
                .await?;
            session.write_response_body(None, true).await?;
        } else {
            let body = serde_json::to_vec(msg).unwrap_or_default();
            let mut resp = ResponseHeader::build(200, Some(4))?;
            resp.insert_header("content-type", "application/json")?;
            resp.insert_header("content-length", body.len().to_string())?;
            resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
            ctx.apply_cors(&mut resp);
            session.write_response_header(Box::new(resp), false).await?;
            ctx.responded = Some(Instant::now());
            session
                .write_response_body(Some(Bytes::from(body)), true)
                .await?;
        }
        ctx.response_done = true;
        Ok(())
    }
}

impl Sidecar {
    /// A modern request: bridged when the route's server is legacy (`Some`: the verdict),
    /// else `None` and it goes on as any session-less request, to a modern server untouched.
    pub(super) async fn choose_modern(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        plan: &mut Plan,
    ) -> Result<Option<Verdict>> {
        let target = self.bridge_target(session, ctx);
        if self.bridge.era(&target, ctx.routed().era).await == Era::Modern {
            return Ok(None);
        }
        if ctx.modern.is_none() {
            // a body too large to read before admission: read and judged here
            if let Err(refusal) = self.read_whole_body(session, ctx).await? {
                return Ok(Some(Verdict::Refused(refusal)));
            }
        }
        // taken, not copied: nothing after the plan reads the message again
        let Some(req) = ctx.modern.take() else {
            return Ok(None);
        };
        if let Some(sealed) = &req.request_state {
            let route = ctx.routed();
            let state = match self.bridge.open_state(sealed, unix_now()) {
                Ok(s) => s,
                Err(e) => {
                    return Ok(Some(Verdict::Refused(bad_state(
                        &route.server_name,
                        e.message(),
                    ))))
                }
            };
            if state.principal != request_state::principal(ctx.user_id(), &context_of(ctx))
                || state.digest != hex::encode(req.digest())
            {
                return Ok(Some(Verdict::Refused(bad_state(
                    &route.server_name,
                    "Invalid or expired requestState (it belongs to another caller or request)",
                ))));
            }
            if state.pod != self.bridge.me() {
                if ctx.from_peer {
                    // a hop goes one step; a state naming a third pod is not followed
                    return Ok(Some(Verdict::Refused(bad_state(
                        &route.server_name,
                        "Invalid or expired requestState (misdirected)",
                    ))));
                }
                if ctx.raw_body.is_none() {
                    return Ok(Some(Verdict::Refused(refused(
                        413,
                        code::INVALID_REQUEST,
                        format!(
                            "a retry carried to the pod holding its call must fit {PRE_READ_LIMIT} bytes"
                        ),
                    ))));
                }
                *plan = Plan::Bridged(Bridged {
                    owner: Some(state.pod),
                });
                return Ok(Some(Verdict::Proxy));
            }
            *plan = Plan::Bridged(Bridged { owner: None });
            let resumed = self.resume_call(session, ctx, &req, &state).await?;
            return Ok(Some(resumed));
        }
        *plan = Plan::Bridged(Bridged { owner: None });
        let verdict = match req.method.as_str() {
            _ if req.is_notification() => {
                let mut resp = ResponseHeader::build(202, Some(2))?;
                resp.insert_header("content-length", "0")?;
                resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
                ctx.apply_cors(&mut resp);
                session.write_response_header(Box::new(resp), true).await?;
                Verdict::Answered
            }
            "server/discover" => self.discover(session, ctx, &req, target).await?,
            "subscriptions/listen" => self.listen(session, ctx, &req, target).await?,
            "offerings/list" => self.bridged_offerings(session, ctx, &req, target).await?,
            _ => self.call(session, ctx, &req, target).await?,
        };
        Ok(Some(verdict))
    }

    /// Where the bridge's calls for this request go, with the caller's hub headers, the
    /// request id and the client's trace context.
    fn bridge_target(&self, session: &Session, ctx: &RequestCtx) -> Target {
        let (route, path, _) = upstream_target(session, ctx);
        let mut headers: Vec<(String, String)> = self
            .injected(session, ctx, None)
            .into_iter()
            .map(|(n, v)| (n.as_str().to_string(), v))
            .collect();
        headers.push((X_REQUEST_ID.into(), ctx.request_id.clone()));
        let req = session.req_header();
        for name in ["traceparent", "tracestate"] {
            if let Some(v) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
                headers.push((name.into(), v.to_string()));
            }
        }
        Target {
            route,
            path,
            headers,
        }
    }

    /// Reads a body admission left unread (larger than it reads first), and judges it as
    /// admission would have.
    async fn read_whole_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Result<(), Refusal>> {
        let mut body = BodyBuffer::default();
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|e| e.into_down())?
        {
            if body.push(Some(chunk), false, self.limits.max_body) == BodyProgress::TooLarge {
                return Ok(Err(admission::too_large(self.limits.max_body)));
            }
        }
        let BodyProgress::Complete(full) = body.push(None, true, self.limits.max_body) else {
            return Ok(Err(admission::too_large(self.limits.max_body)));
        };
        Ok(self
            .judge_bridged_body(session.req_header(), ctx, &full)
            .and_then(|()| tool_filter::refusal(ctx).map_or(Ok(()), Err)))
    }

    /// The pooled legacy session for this caller.
    async fn pooled(
        &self,
        ctx: &RequestCtx,
        req: &Request,
        target: &Target,
    ) -> Result<(String, Arc<Legacy>), Refusal> {
        let key = Bridge::pool_key(
            &target.route.server_name,
            &context_of(ctx),
            &req.client_capabilities,
        );
        match self
            .bridge
            .session(
                &key,
                target,
                &req.client_capabilities,
                req.client_info.as_ref(),
            )
            .await
        {
            Ok(legacy) => Ok((key, legacy)),
            Err(e) => {
                warn!(
                    "request_id={} route={} could not open a legacy session for a modern client: {e}",
                    ctx.request_id, target.route.server_name
                );
                Err(upstream_failed(&target.route.server_name, &e))
            }
        }
    }

    async fn discover(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        req: &Request,
        target: Target,
    ) -> Result<Verdict> {
        let (_, legacy) = match self.pooled(ctx, req, &target).await {
            Ok(p) => p,
            Err(r) => return Ok(Verdict::Refused(r)),
        };
        let result = modern::discover_result(&legacy.init_result, &legacy.version, hint(self, ctx));
        let msg = modern::response(req.id.as_ref().unwrap_or(&Value::Null), result);
        Out::default().finish(session, ctx, &msg).await?;
        Ok(Verdict::Answered)
    }

    /// `offerings/list` on the pooled session.
    async fn bridged_offerings(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        req: &Request,
        target: Target,
    ) -> Result<Verdict> {
        let (_, legacy) = match self.pooled(ctx, req, &target).await {
            Ok(p) => p,
            Err(r) => return Ok(Verdict::Refused(r)),
        };
        let on = SessionIds {
            client: String::new(),
            upstream: legacy.sid.clone().unwrap_or_default(),
            retried: false,
        };
        self.answer_offerings(session, ctx, Some(&on), Some(&legacy.version))
            .await?;
        Ok(Verdict::Answered)
    }

    /// Judges a body read by the bridge as admission judges one it read.
    fn judge_bridged_body(
        &self,
        req: &pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
        full: &Bytes,
    ) -> Result<(), Refusal> {
        ctx.complete_body(full);
        ctx.judge(full, &self.limits)?;
        ctx.read_modern(req, full)
    }
}

fn upstream_failed(server: &str, e: &CallError) -> Refusal {
    METRICS
        .upstream_errors
        .with_label_values(&[server, "bridge"])
        .inc();
    refused(502, code::SERVER_ERROR, format!("MCP server {server}: {e}"))
}

impl Sidecar {
    /// A modern request passed through untouched (the route's server was probed modern)
    /// answered as a legacy server answers one (`400` "Missing session ID", `404`, `405`):
    /// the verdict no longer holds (the server was replaced by a legacy one), and the next
    /// modern request probes again instead of failing until `bridge.era_ttl` runs out.
    pub(in crate::proxy) fn check_passed_through(
        &self,
        ctx: &RequestCtx,
        plan: &Plan,
        status: u16,
    ) {
        let route = ctx.routed();
        if ctx.modern.is_some()
            && !matches!(plan, Plan::Bridged(_))
            && route.era.is_none()
            && matches!(status, 400 | 404 | 405)
        {
            self.bridge.doubt_era(&route.server_name);
        }
    }
}

impl Bridged {
    /// The retry's owner pod did not answer: its pending call is gone with it.
    pub(super) fn owner_gone(&self, route: &str) -> Refusal {
        METRICS
            .bridge_rounds
            .with_label_values(&[route, "gone"])
            .inc();
        refused(
            400,
            code::INVALID_PARAMS,
            "Invalid or expired requestState: the pod holding the call it continues is gone; send the request again without requestState",
        )
    }
}

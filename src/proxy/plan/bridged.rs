//! A modern (2026-07-28) client's request to a legacy MCP server: served by the sidecar
//! itself from `request_filter`, on a pooled legacy session (`crate::bridge`), by whichever
//! pod it reached. Here is everything such a request goes through:
//!
//! - `server/discover`: answered from the pooled session's InitializeResult;
//! - a request: sent upstream under the bridge's own id (and progress token), its answer
//!   relayed as it comes (progress; log messages only at or above the level the request
//!   asked for), the final result made modern (`resultType`, cache hints, serverInfo, error
//!   codes); one JSON body when nothing preceded the result, else an SSE stream;
//! - a server-to-client request during the call (elicitation, sampling, roots): the call is
//!   held on this pod and the client gets an `InputRequiredResult` with a sealed
//!   `requestState`; its retry, on any pod, is carried here over the signed hop (`owner`),
//!   the answers go upstream, and the held call's stream continues as the retry's answer;
//! - the client closing its stream cancels the call upstream (`notifications/cancelled`);
//! - `subscriptions/listen`: the pooled session's GET stream, only the opted-in
//!   notifications, tagged with the subscription, with keep-alive comments;
//! - `offerings/list`: as on a legacy session (`offerings.rs`), on the pooled one;
//! - a client notification: `202`, nothing upstream (cancellation is the stream closing).
//!
//! A route whose server is modern passes modern requests through untouched (`local.rs`).

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

/// How long a listener waits for the legacy server's GET stream to open.
const LISTEN_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A call in progress upstream, and who is waiting for it downstream.
struct Call {
    answer: Answer,
    legacy: Arc<Legacy>,
    pool_key: String,
    target: Target,
    upstream_id: String,
    token: Option<String>,
    /// Server requests from the session's GET stream (`Bridge::watch`), while the call is
    /// in flight.
    inbox: Inbox,
}

/// The next server request from a call's GET-stream inbox.
async fn from_stream(inbox: &mut Inbox) -> Option<Value> {
    inbox.rx.recv().await
}

/// What pumping a call came to.
enum Pumped {
    Done,
    /// The client went away: the call was cancelled upstream.
    Cancelled,
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
        let Some(req) = ctx.modern.clone() else {
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

    /// A request sent upstream on the pooled session, its answer relayed.
    async fn call(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        req: &Request,
        target: Target,
    ) -> Result<Verdict> {
        let mut call = None;
        for _ in 0..2 {
            let (key, legacy) = match self.pooled(ctx, req, &target).await {
                Ok(p) => p,
                Err(r) => return Ok(Verdict::Refused(r)),
            };
            let upstream_id = self.bridge.next_id("req");
            let token = modern::progress_token(req).map(|_| self.bridge.next_id("progress"));
            let body = modern::legacy_request(req, &upstream_id, token.as_deref());
            // in flight before it is sent: the server may ask at once
            let inbox = legacy.enter();
            match self.bridge.send(&target, &legacy, &body).await {
                Ok(answer) => {
                    call = Some(Call {
                        answer,
                        legacy,
                        pool_key: key,
                        target: target.clone(),
                        upstream_id,
                        token,
                        inbox,
                    });
                    break;
                }
                Err(CallError::Status(status, body)) if is_unknown_session(status, &body) => {
                    // the server forgot the pooled session: a new one, and the request again
                    info!(
                        "request_id={} route={} the MCP server forgot the bridge's legacy session; opening another",
                        ctx.request_id, target.route.server_name
                    );
                    self.bridge.forget(&key, &legacy).await;
                }
                Err(e) => {
                    return Ok(Verdict::Refused(upstream_failed(
                        &target.route.server_name,
                        &e,
                    )))
                }
            }
        }
        let Some(call) = call else {
            return Ok(Verdict::Refused(refused(
                502,
                code::SERVER_ERROR,
                "the MCP server forgot the bridge's session twice in a row",
            )));
        };
        let mut out = Out::default();
        self.pump(session, ctx, req, call, &mut out).await?;
        Ok(Verdict::Answered)
    }

    /// Relays a call's answer until its result, a server request (an MRTR round), or the
    /// client going away.
    async fn pump(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        req: &Request,
        mut call: Call,
        out: &mut Out,
    ) -> Result<Pumped> {
        let client_id = req.id.clone().unwrap_or(Value::Null);
        let max_held = self.limits.max_held_message;
        let route = ctx.routed();
        loop {
            let next = tokio::select! {
                next = call.answer.next(max_held) => next,
                Some(msg) = from_stream(&mut call.inbox) => Ok(Some(msg)),
                _ = session.downstream_session.read_body_or_idle(true) => {
                    info!(
                        "request_id={} route={} the modern client closed its stream; {} cancelled upstream",
                        ctx.request_id, route.server_name, req.method
                    );
                    self.bridge
                        .cancel(&call.target, &call.legacy, &call.upstream_id, "the client closed the request's stream")
                        .await;
                    return Ok(Pumped::Cancelled);
                }
            };
            let msg = match next {
                Ok(Some(msg)) => msg,
                Ok(None) | Err(_) => {
                    let why = match next {
                        Err(e) => e.to_string(),
                        _ => "the MCP server ended the call without an answer".to_string(),
                    };
                    ctx.upstream_error = Some("closed");
                    let error = json!({"code": code::INTERNAL_ERROR, "message": why});
                    out.finish(
                        session,
                        ctx,
                        &modern::error_response(Some(&client_id), error),
                    )
                    .await?;
                    return Ok(Pumped::Done);
                }
            };
            let method = msg.get("method").and_then(Value::as_str);
            let id = msg.get("id");
            match (method, id) {
                // the call's result
                (None, Some(id)) if id.as_str() == Some(call.upstream_id.as_str()) => {
                    let fin = self.final_message(ctx, req, msg, &call.legacy, &client_id);
                    out.finish(session, ctx, &fin).await?;
                    self.bridge.client.release(call.answer).await;
                    return Ok(Pumped::Done);
                }
                // a server request during the call
                (Some(m), Some(server_id)) => {
                    let server_id = server_id.clone();
                    let params = msg.get("params").cloned().unwrap_or(Value::Null);
                    let Some((_, capability)) = INPUT_REQUESTS.iter().find(|(r, _)| *r == m) else {
                        self.answer_server(&call, &server_id, m).await;
                        continue;
                    };
                    if !req.declares(capability)
                        || !modern::INPUT_METHODS.contains(&req.method.as_str())
                    {
                        let error = json!({"code": code::INVALID_REQUEST,
                            "message": format!("the client did not declare the {capability} capability")});
                        self.bridge
                            .notify(
                                &call.target,
                                &call.legacy,
                                &modern::error_response(Some(&server_id), error),
                            )
                            .await;
                        continue;
                    }
                    let key = format!(
                        "{}-{}",
                        capability,
                        self.bridge
                            .next_id("input")
                            .rsplit('-')
                            .next()
                            .unwrap_or("0")
                    );
                    let mut input_requests = Map::new();
                    input_requests.insert(key.clone(), json!({"method": m, "params": params}));
                    match self.hold(ctx, req, call, &key, &server_id, &input_requests) {
                        Ok(state) => {
                            METRICS
                                .bridge_rounds
                                .with_label_values(&[route.server_name.as_str(), "asked"])
                                .inc();
                            let result = modern::input_required(input_requests, &state);
                            out.finish(session, ctx, &modern::response(&client_id, result))
                                .await?;
                            return Ok(Pumped::Done);
                        }
                        Err(back) => {
                            call = *back;
                            METRICS
                                .bridge_rounds
                                .with_label_values(&[route.server_name.as_str(), "full"])
                                .inc();
                            let error = json!({"code": code::SERVER_ERROR,
                                "message": "the sidecar holds its limit of calls waiting for input"});
                            self.bridge
                                .notify(
                                    &call.target,
                                    &call.legacy,
                                    &modern::error_response(Some(&server_id), error),
                                )
                                .await;
                        }
                    }
                }
                (Some("notifications/progress"), None) => {
                    let ours = call.token.as_deref().is_some_and(|t| {
                        msg.pointer("/params/progressToken").and_then(Value::as_str) == Some(t)
                    });
                    if let (true, Some(client_token)) = (ours, modern::progress_token(req)) {
                        let mut msg = msg;
                        msg["params"]["progressToken"] = client_token.clone();
                        out.event(session, ctx, &msg).await?;
                    }
                }
                (Some("notifications/message"), None) => {
                    let params = msg.get("params").cloned().unwrap_or(Value::Null);
                    if modern::log_passes(&params, req.log_level) {
                        out.event(session, ctx, &msg).await?;
                    }
                }
                // other notifications belong to listeners (the GET stream), not to this call
                _ => {}
            }
        }
    }

    /// A server request that is no input request (a `ping`): answered by the bridge.
    async fn answer_server(&self, call: &Call, server_id: &Value, method: &str) {
        let reply = if method == "ping" {
            modern::response(server_id, json!({}))
        } else {
            modern::error_response(
                Some(server_id),
                json!({"code": code::INVALID_REQUEST, "message": format!("{} is not supported by this client", crate::protocol::shown(method, 64))}),
            )
        };
        self.bridge.notify(&call.target, &call.legacy, &reply).await;
    }

    /// Holds a call for the client's input; its sealed state, or the call back when this pod
    /// holds its limit.
    fn hold(
        &self,
        ctx: &RequestCtx,
        req: &Request,
        call: Call,
        key: &str,
        server_id: &Value,
        input_requests: &Map<String, Value>,
    ) -> Result<String, Box<Call>> {
        let mut asked = std::collections::HashMap::new();
        asked.insert(
            key.to_string(),
            (server_id.clone(), input_requests[key].clone()),
        );
        let pending = PendingCall {
            answer: call.answer,
            legacy: call.legacy,
            pool_key: call.pool_key,
            target: call.target,
            method: req.method.clone(),
            upstream_id: call.upstream_id,
            token: call.token,
            asked,
            principal: request_state::principal(ctx.user_id(), &context_of(ctx)),
            digest: hex::encode(req.digest()),
            expires: Instant::now() + self.bridge.settings.input_timeout,
        };
        self.bridge.start_reaper();
        self.bridge.hold(pending, unix_now()).map_err(|p| {
            Box::new(Call {
                inbox: p.legacy.enter(),
                answer: p.answer,
                legacy: p.legacy,
                pool_key: p.pool_key,
                target: p.target,
                upstream_id: p.upstream_id,
                token: p.token,
            })
        })
    }

    /// An MRTR retry for a call this pod holds: the client's answers go upstream as responses
    /// to the server's requests, and the call's stream goes on as this request's answer.
    async fn resume_call(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        req: &Request,
        state: &request_state::State,
    ) -> Result<Verdict> {
        let _round = ctx.telemetry.round();
        let route = ctx.routed();
        let Some(mut pending) = self.bridge.take(state) else {
            return Ok(Verdict::Refused(bad_state(
                &route.server_name,
                "Invalid or expired requestState (the call it continues is no longer waiting)",
            )));
        };
        let responses = req.input_responses.clone().unwrap_or_default();
        let missing: Vec<String> = pending
            .asked
            .keys()
            .filter(|k| !responses.contains_key(*k))
            .cloned()
            .collect();
        if !missing.is_empty() {
            // ask again for what is missing; the call stays held
            let input_requests: Map<String, Value> = pending
                .asked
                .iter()
                .map(|(k, (_, r))| (k.clone(), r.clone()))
                .collect();
            pending.expires = Instant::now() + self.bridge.settings.input_timeout;
            let Ok(state) = self.bridge.hold(pending, unix_now()) else {
                METRICS
                    .bridge_rounds
                    .with_label_values(&[route.server_name.as_str(), "full"])
                    .inc();
                return Ok(Verdict::Refused(refused(
                    503,
                    code::SERVER_ERROR,
                    "the sidecar holds its limit of calls waiting for input",
                )));
            };
            let result = modern::input_required(input_requests, &state);
            let msg = modern::response(req.id.as_ref().unwrap_or(&Value::Null), result);
            Out::default().finish(session, ctx, &msg).await?;
            return Ok(Verdict::Answered);
        }
        METRICS
            .bridge_rounds
            .with_label_values(&[route.server_name.as_str(), "resumed"])
            .inc();
        // in flight again before the answers go: the server may ask at once
        let inbox = pending.legacy.enter();
        for (key, (server_id, _)) in &pending.asked {
            let reply = modern::response(server_id, responses[key].clone());
            self.bridge
                .notify(&pending.target, &pending.legacy, &reply)
                .await;
        }
        let call = Call {
            inbox,
            answer: pending.answer,
            legacy: pending.legacy,
            pool_key: pending.pool_key,
            target: pending.target,
            upstream_id: pending.upstream_id,
            token: pending.token,
        };
        let mut out = Out::default();
        self.pump(session, ctx, req, call, &mut out).await?;
        Ok(Verdict::Answered)
    }

    /// The final message of a call, made modern: tools filtered for the caller, the result
    /// completed, errors mapped.
    fn final_message(
        &self,
        ctx: &RequestCtx,
        req: &Request,
        mut msg: Value,
        legacy: &Legacy,
        client_id: &Value,
    ) -> Value {
        let route = ctx.routed();
        if req.method == "tools/list" {
            if let Some(access) = &route.policy.tools {
                let user = ctx.caller.as_ref().map(|c| &*c.user);
                filter_message(&mut msg, &|name| access.allows(user, name));
            }
        }
        if let Some(mut result) = msg.get("result").cloned() {
            modern::complete_result(
                &req.method,
                &mut result,
                hint(self, ctx),
                &legacy.server_info,
            );
            return modern::response(client_id, result);
        }
        let error = msg
            .get("error")
            .cloned()
            .unwrap_or_else(|| json!({"code": code::INTERNAL_ERROR, "message": "no result"}));
        modern::error_response(Some(client_id), modern::modern_error(&req.method, error))
    }

    /// `subscriptions/listen`: the acknowledgement, then the opted-in notifications of the
    /// pooled session's GET stream, until the client closes the stream.
    async fn listen(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        req: &Request,
        target: Target,
    ) -> Result<Verdict> {
        let listen = match Listen::read(&req.params) {
            Ok(l) => l,
            Err(e) => return Ok(Verdict::Refused(refused(e.status(), e.code(), e.message()))),
        };
        let (key, legacy) = match self.pooled(ctx, req, &target).await {
            Ok(p) => p,
            Err(r) => return Ok(Verdict::Refused(r)),
        };
        let subscription = req.id.clone().unwrap_or(Value::Null);
        let stream = match &legacy.sid {
            Some(sid) => {
                let t = StreamTarget {
                    route: &target.route,
                    path: &target.path,
                    upstream_sid: sid,
                    protocol_version: Some(&legacy.version),
                    headers: target.headers.clone(),
                };
                match self.bridge.fanouts.subscribe(t, LISTEN_OPEN_TIMEOUT).await {
                    Opened::Stream(rx) => Some(rx),
                    Opened::Refused(status) => {
                        warn!("request_id={} route={} the MCP server refused a GET stream ({status}): listeners get no notifications", ctx.request_id, target.route.server_name);
                        None
                    }
                    Opened::Unreachable(e) => {
                        return Ok(Verdict::Refused(refused(502, code::SERVER_ERROR, e)));
                    }
                }
            }
            None => None,
        };
        let mut subscribed = Vec::new();
        for uri in &listen.resource_uris {
            if self.bridge.listen_uri(&key, uri) {
                self.resource_subscription(&target, &legacy, "resources/subscribe", uri)
                    .await;
            }
            subscribed.push(uri.clone());
        }
        let _listening = Listening::new(
            self.bridge.clone(),
            key,
            target.clone(),
            legacy.clone(),
            subscribed,
        );
        let mut out = Out::default();
        out.event(session, ctx, &modern::acknowledged(&subscription, &listen))
            .await?;
        let keepalive = self.sessions.settings.sse_keepalive;
        let mut rx = stream;
        loop {
            let next = async {
                match rx.as_mut() {
                    Some(rx) => rx.recv().await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = next => {
                    let Some(event) = event else {
                        // the upstream stream ended: so does the listen stream
                        break;
                    };
                    let text = String::from_utf8_lossy(&event);
                    let (data, _) = crate::protocol::messages::event_data(&text);
                    let Ok(msg) = serde_json::from_str::<Value>(&data) else { continue };
                    let (Some(method), None) = (msg.get("method").and_then(Value::as_str), msg.get("id")) else { continue };
                    let params = msg.get("params").cloned().unwrap_or(Value::Null);
                    if listen.wants(method, &params)
                        && session.write_response_body(Some(sse_event(&modern::tagged(method, &params, &subscription))), false).await.is_err()
                    {
                        break;
                    }
                }
                _ = tokio::time::sleep(keepalive), if !keepalive.is_zero() => {
                    if session.write_response_body(Some(Bytes::from_static(KEEPALIVE)), false).await.is_err() {
                        break;
                    }
                }
                _ = session.downstream_session.read_body_or_idle(true) => break,
            }
        }
        let _ = session.write_response_body(None, true).await;
        Ok(Verdict::Answered)
    }

    async fn resource_subscription(
        &self,
        target: &Target,
        legacy: &Legacy,
        method: &str,
        uri: &str,
    ) {
        let id = self.bridge.next_id("sub");
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"uri": uri}});
        match self
            .bridge
            .send(
                target,
                legacy,
                &serde_json::to_vec(&body).unwrap_or_default(),
            )
            .await
        {
            Ok(mut answer) => {
                let _ = answer.next(self.limits.max_held_message).await;
                self.bridge.client.release(answer).await;
            }
            Err(e) => warn!(
                "route {}: {method} {} failed: {e}",
                target.route.server_name,
                crate::protocol::shown(uri, 128)
            ),
        }
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

/// A listener's hold on its resource subscriptions: withdrawn upstream when the last
/// listener of a URI leaves, however the listen stream ends.
struct Listening {
    bridge: Arc<Bridge>,
    key: String,
    target: Target,
    legacy: Arc<Legacy>,
    uris: Vec<String>,
}

impl Listening {
    fn new(
        bridge: Arc<Bridge>,
        key: String,
        target: Target,
        legacy: Arc<Legacy>,
        uris: Vec<String>,
    ) -> Listening {
        METRICS.bridge_listeners.inc();
        Listening {
            bridge,
            key,
            target,
            legacy,
            uris,
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        METRICS.bridge_listeners.dec();
        let gone: Vec<String> = self
            .uris
            .iter()
            .filter(|u| self.bridge.unlisten_uri(&self.key, u))
            .cloned()
            .collect();
        if gone.is_empty() {
            return;
        }
        let (bridge, target, legacy) = (
            self.bridge.clone(),
            self.target.clone(),
            self.legacy.clone(),
        );
        tokio::spawn(async move {
            for uri in gone {
                let msg = json!({"jsonrpc": "2.0", "id": bridge.next_id("unsub"),
                    "method": "resources/unsubscribe", "params": {"uri": uri}});
                let body = serde_json::to_vec(&msg).unwrap_or_default();
                if let Ok(mut answer) = bridge.send(&target, &legacy, &body).await {
                    answer.drain().await;
                    bridge.client.release(answer).await;
                }
            }
        });
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

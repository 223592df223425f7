//! A client session of a `session_mode: shared` route (`crate::shared`): the client sessions
//! are the sidecar's own, and share one upstream session per context (the callers' tokens).
//! The sidecar answers `initialize`, `notifications/initialized`, DELETE and GET streams itself
//! (`choose_shared`). Everything else goes to the context's upstream session: on this pod with
//! request ids (and progress tokens) rewritten to unique ones on the way in and restored for the
//! client on the way out, tool lists filtered in the same pass (`Shared::mux`); on the pod that
//! holds it over the signed hop, which does the same there. An upstream session that turns out
//! gone is re-established, not recovered (`reestablish`, which `recover.rs` calls).

use super::local::{answered_on_session, with_upstream_sid};
use super::{forward, refuse_two_sessions, Plan, SessionIds};
use crate::hub::filter::filter_message;
use crate::metrics::METRICS;
use crate::protocol::headers::{MCP_SESSION_ID, X_REQUEST_ID};
use crate::protocol::jsonrpc::code;
use crate::protocol::messages::MessageStream;
use crate::proxy::context::RequestCtx;
use crate::proxy::reply::Refusal;
use crate::proxy::upstream::upstream_target;
use crate::proxy::Sidecar;
use crate::shared::fanout;
use crate::shared::mux::MuxError;
use crate::shared::{context_key, InitSource, Need};
use crate::store::{unix_now, SessionRecord, Transport};
use bytes::Bytes;
use log::{info, warn};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorType;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

/// What choosing a shared route's plan came to.
pub(super) enum Step {
    /// The sidecar answered it.
    Answered,
    /// It goes on as the plan says.
    Proxy,
}

pub(crate) struct Shared {
    /// The context (token names and a digest of their values) whose upstream session it uses.
    context: String,
    /// `upstream`: the context's upstream session.
    pub session: SessionIds,
    /// The pod holding the upstream session, when not this one.
    owner: Option<String>,
    /// For the access line: shared, re-established, forwarded.
    pub via: &'static str,
    /// Requests to this pod's upstream session are multiplexed.
    mux: Option<Mux>,
}

/// A request multiplexed onto this pod's upstream session.
#[derive(Default)]
struct Mux {
    /// Upstream ids registered for this request, released when it ends.
    ids: Vec<String>,
    /// The rewritten body.
    body: Option<Bytes>,
    /// The answer being restored for the client (and filtered, on tool-filtering routes).
    stream: Option<MessageStream>,
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        502,
        code::SERVER_ERROR,
        format!("shared upstream session unavailable: {e}"),
    )
}

impl Shared {
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    pub fn multiplexes(&self) -> bool {
        self.mux.is_some()
    }

    pub fn upstream_request(
        &self,
        method: &http::Method,
        upstream_request: &mut RequestHeader,
    ) -> Result<()> {
        with_upstream_sid(&self.session, upstream_request)?;
        if self.mux.is_some() && method == http::Method::POST {
            // the rewritten body has its own length
            upstream_request.remove_header("content-length");
            upstream_request.insert_header("transfer-encoding", "chunked")?;
        }
        Ok(())
    }

    /// Pingora replays a body read in `request_filter`: the rewritten one goes instead.
    pub fn replay_body(&self, body: &mut Option<Bytes>, end_of_stream: bool) {
        if let Some(rewritten) = self.mux.as_ref().and_then(|m| m.body.as_ref()) {
            *body = Some(match end_of_stream {
                true => rewritten.clone(),
                false => Bytes::new(),
            });
        }
    }

    /// A held body, complete: rewritten, or refused (`fail_to_proxy` answers `ctx.denied`).
    pub fn multiplex_held(
        &mut self,
        sidecar: &Sidecar,
        ctx: &mut RequestCtx,
        full: &[u8],
    ) -> Result<Option<Bytes>> {
        if let Err(refusal) = self.multiplex(sidecar, ctx, full) {
            let status = refusal.status;
            ctx.denied = Some(refusal);
            return Error::e_explain(ErrorType::HTTPStatus(status), "not multiplexed");
        }
        Ok(self.mux.as_ref().and_then(|m| m.body.clone()))
    }

    /// Rewrites a complete body for the shared session (ids unique in it).
    fn multiplex(
        &mut self,
        sidecar: &Sidecar,
        ctx: &RequestCtx,
        body: &[u8],
    ) -> Result<(), Refusal> {
        let client = self.session.client.clone();
        let label = ctx.route_label().to_string();
        match sidecar.shared.mux.rewrite_request(&client, body) {
            Ok(r) => {
                METRICS
                    .shared_requests
                    .with_label_values(&[&label, "multiplexed"])
                    .inc();
                let mux = self.mux.get_or_insert_with(Mux::default);
                mux.ids = r.ids;
                mux.body = Some(Bytes::from(r.body));
                Ok(())
            }
            Err(e) => {
                METRICS
                    .shared_requests
                    .with_label_values(&[&label, "refused"])
                    .inc();
                Err(match e {
                    MuxError::NotJson => Refusal::new(400, code::PARSE_ERROR, "body is not JSON"),
                    MuxError::NotYourRequest(id) => {
                        info!(
                            "request_id={} session {client} answered server request {id}, which was sent to another client; refused",
                            ctx.request_id
                        );
                        Refusal::new(
                            403,
                            code::INVALID_REQUEST,
                            "that server request was not sent to this session",
                        )
                    }
                })
            }
        }
    }

    pub async fn response(
        &mut self,
        sidecar: &Sidecar,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        now: Instant,
    ) -> Result<()> {
        if self.owner.is_some() {
            forward::answered(ctx, now);
            return Ok(());
        }
        if let Some(mux) = self.mux.as_mut() {
            // the answer's ids (and progress tokens) go back to what the client sent; tool
            // lists are filtered in the same pass
            let ct = resp
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            mux.stream = MessageStream::for_content_type(ct, sidecar.limits.max_held_message);
            if mux.stream.is_some() {
                ctx.tools_filter = None;
                resp.remove_header("content-length");
            }
        }
        answered_on_session(sidecar, session, resp, &self.session).await
    }

    /// Restores ids in the upstream's answer for the client (and filters tool lists); `false`
    /// when this answer is not being restored.
    pub fn restore_body(
        &mut self,
        sidecar: &Sidecar,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &RequestCtx,
    ) -> bool {
        let Some(stream) = self.mux.as_mut().and_then(|m| m.stream.as_mut()) else {
            return false;
        };
        let client = &self.session.client;
        let user = ctx.caller.as_ref().map(|c| c.user.clone());
        let access = match (ctx.lists_tools, ctx.route.as_deref()) {
            (true, Some(r)) => r.policy.tools.as_ref(),
            _ => None,
        };
        let id = ctx
            .envelope
            .as_ref()
            .and_then(|e| e.request_id())
            .map(str::to_string);
        let mux = &sidecar.shared.mux;
        let out = stream.feed(
            body.as_deref(),
            end_of_stream,
            None,
            &mut |v| {
                let mut changed = mux.restore(client, v);
                if let Some(a) = access {
                    changed |= filter_message(v, &|n| a.allows(user.as_deref(), n));
                }
                changed
            },
            &|| {
                crate::protocol::jsonrpc::error_body(
                    id.as_deref(),
                    code::INTERNAL_ERROR,
                    "answer too large to pass through a shared session",
                )
            },
        );
        *body = Some(out);
        true
    }

    /// The request is over: its upstream ids are free again.
    pub fn finish(&mut self, sidecar: &Sidecar) {
        if let Some(mux) = self.mux.take() {
            sidecar.shared.mux.release(&mux.ids);
            METRICS.shared_in_flight.dec();
        }
    }
}

impl Sidecar {
    /// The plan of a request on a shared route, or the sidecar's own answer.
    pub(super) async fn choose_shared(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        plan: &mut Plan,
    ) -> Result<Step, Refusal> {
        let route = ctx.routed();
        let req = session.req_header();
        let method = req.method.clone();
        let sid = req
            .headers
            .get(MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let Some(sid) = sid else {
            // a legacy SSE client has a session of its own, as on any route: its posts go to
            // its stream's pod, for its stream's user
            if let Some(post) = self.choose_legacy_post(req, ctx).await? {
                *plan = Plan::LegacyPost(post);
            }
            if method == http::Method::POST && ctx.init.is_some() && ctx.legacy_sid.is_none() {
                self.answer_shared_initialize(session, ctx).await?;
                return Ok(Step::Answered);
            }
            // anything else without a session: the upstream answers it as it would
            return Ok(Step::Proxy);
        };
        refuse_two_sessions(req)?;
        let record = match self
            .sessions
            .shared_client(&sid, &route.server_name, ctx.user_id())
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) => return Err(super::session_not_found()),
            Err(e) => {
                return Err(Refusal::new(
                    503,
                    code::SERVER_ERROR,
                    format!("session store unavailable: {e}"),
                ))
            }
        };
        let context = record
            .context
            .clone()
            .expect("shared clients have a context");
        let label = route.server_name.as_str();
        if method == http::Method::DELETE {
            // the pod that opened the client session keeps it in its local table: it ends it
            // there, so it ends everywhere
            let me = &self.sessions.settings.me;
            if !ctx.from_peer
                && record.owner != *me
                && matches!(
                    self.sessions.store().pod_alive(&record.owner).await,
                    Ok(true)
                )
            {
                *plan = Plan::Shared(Box::new(Shared {
                    context,
                    session: SessionIds {
                        client: sid.clone(),
                        upstream: sid.clone(),
                        retried: true,
                    },
                    owner: Some(record.owner.clone()),
                    via: "forwarded",
                    mux: None,
                }));
                return Ok(Step::Proxy);
            }
            // the client's session ends; the shared upstream session stays for the others
            if let Err(e) = self.sessions.forget(&sid).await {
                return Err(Refusal::new(503, code::SERVER_ERROR, e.to_string()));
            }
            METRICS
                .shared_requests
                .with_label_values(&[label, "answered_here"])
                .inc();
            self.answer(session, ctx, 200, None, &sid).await.ok();
            return Ok(Step::Answered);
        }
        if ctx.envelope.as_ref().and_then(|e| e.method()) == Some("notifications/initialized")
            && matches!(
                ctx.envelope,
                Some(crate::protocol::jsonrpc::Envelope::Notification { .. })
            )
        {
            // the shared session was initialized once, by the sidecar
            METRICS
                .shared_requests
                .with_label_values(&[label, "answered_here"])
                .inc();
            self.answer(session, ctx, 202, None, &sid).await.ok();
            return Ok(Step::Answered);
        }
        let (_, path, _) = upstream_target(session, ctx);
        let extra = self.injected(session, ctx, Some(&sid));
        let need = Need {
            route: &route,
            path: &path,
            context: &context,
            init: InitSource {
                params: record.init_params.as_deref().unwrap_or("{}"),
                protocol_version: record.protocol_version.as_deref(),
            },
            extra: &extra,
        };
        let mut stale = None;
        let (upstream_sid, owner) = loop {
            let usid = self
                .shared
                .upstream(&need, stale.as_deref(), true)
                .await
                .map_err(unavailable)?;
            let decision = if ctx.from_peer {
                self.sessions
                    .resolve_forwarded(&usid, &route.server_name, None)
                    .await
            } else {
                self.sessions.resolve(&usid, &route.server_name, None).await
            };
            match decision {
                crate::session::Decision::Local { upstream_sid } => break (upstream_sid, None),
                crate::session::Decision::Forward { owner } => break (sid.clone(), Some(owner)),
                crate::session::Decision::StoreUnavailable => {
                    return Err(Refusal::new(
                        503,
                        code::SERVER_ERROR,
                        "session store unavailable and the shared session is not on this pod",
                    ))
                }
                // its pod is gone, or its record is: make a new one (once)
                _ if stale.is_none() => stale = Some(usid),
                _ => return Err(unavailable("it could not be placed")),
            }
        };
        let here = owner.is_none();
        let mut shared = Shared {
            context,
            session: SessionIds {
                client: sid.clone(),
                upstream: upstream_sid,
                retried: false,
            },
            via: match (here, stale.is_some()) {
                (false, _) => "forwarded",
                (true, true) => "re-established",
                (true, false) => "shared",
            },
            owner,
            mux: None,
        };
        if method == http::Method::GET {
            if !here {
                // the owner pod fans its stream out
                *plan = Plan::Shared(Box::new(shared));
                return Ok(Step::Proxy);
            }
            METRICS
                .shared_requests
                .with_label_values(&[label, "answered_here"])
                .inc();
            let fan = fanout::Target {
                route: &route,
                path: &path,
                upstream_sid: &shared.session.upstream,
                protocol_version: record.protocol_version.as_deref(),
                headers: extra
                    .iter()
                    .map(|(n, v)| (n.as_str().to_string(), v.clone()))
                    .collect(),
            };
            let streamed = self.stream_shared(session, ctx, fan, &sid).await;
            *plan = Plan::Shared(Box::new(shared));
            streamed?;
            return Ok(Step::Answered);
        }
        let multiplexed = match here {
            true => {
                METRICS.shared_in_flight.inc();
                shared.mux = Some(Mux::default());
                match ctx.raw_body.take() {
                    Some(raw) => shared.multiplex(self, ctx, &raw),
                    None => Ok(()),
                }
            }
            false => Ok(()),
        };
        *plan = Plan::Shared(Box::new(shared));
        multiplexed.map(|()| Step::Proxy)
    }

    /// A client's GET stream on a shared session: the session's one upstream GET stream, fanned
    /// out to every client holding one.
    async fn stream_shared(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        target: fanout::Target<'_>,
        sid: &str,
    ) -> Result<(), Refusal> {
        let timeout = self.sessions.settings.recovery_timeout;
        let mut rx = match self.shared.fanouts.subscribe(target, timeout).await {
            fanout::Opened::Stream(rx) => rx,
            fanout::Opened::Refused(_) => {
                // the server offers no GET stream: neither do we
                self.answer(session, ctx, 405, None, sid).await.ok();
                return Ok(());
            }
            fanout::Opened::Unreachable(e) => return Err(unavailable(e)),
        };
        let write = async {
            let mut resp = ResponseHeader::build(200, Some(6))?;
            resp.insert_header("content-type", "text/event-stream")?;
            resp.insert_header("cache-control", "no-cache")?;
            resp.insert_header("x-accel-buffering", "no")?;
            resp.insert_header("transfer-encoding", "chunked")?;
            resp.insert_header(MCP_SESSION_ID, sid)?;
            resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
            ctx.apply_cors(&mut resp);
            session.set_keepalive(None);
            session.write_response_header(Box::new(resp), false).await?;
            let keepalive = Some(self.sessions.settings.sse_keepalive).filter(|k| !k.is_zero());
            let quiet = keepalive.unwrap_or(Duration::from_secs(3600));
            loop {
                tokio::select! {
                    event = rx.recv() => match event {
                        Ok(e) => {
                            if session.write_response_body(Some(e), false).await.is_err() {
                                break;
                            }
                        }
                        Err(RecvError::Lagged(n)) => {
                            warn!("request_id={} session {sid}: GET stream fell {n} events behind; they are lost", ctx.request_id);
                        }
                        Err(RecvError::Closed) => break,
                    },
                    _ = tokio::time::sleep(quiet), if keepalive.is_some() => {
                        let keep = Bytes::from_static(b": keep-alive\n\n");
                        if session.write_response_body(Some(keep), false).await.is_err() {
                            break;
                        }
                    },
                    // the client hung up
                    _ = session.downstream_session.read_body_or_idle(true) => break,
                }
            }
            let _ = session.write_response_body(None, true).await;
            Ok::<(), Box<pingora::Error>>(())
        };
        write.await.map_err(|e| unavailable(e.to_string()))?;
        Ok(())
    }

    /// A new client of a shared route: its own session id, the shared upstream session's
    /// InitializeResult.
    async fn answer_shared_initialize(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), Refusal> {
        let route = ctx.route.clone().expect("admitted requests have a route");
        let (params, version) = ctx.init.clone().expect("an initialize request");
        let context = context_key(&route.policy, ctx.caller.as_ref().map(|c| &*c.user));
        let (_, path, _) = upstream_target(session, ctx);
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let extra = self.injected(session, ctx, Some(&sid));
        let need = Need {
            route: &route,
            path: &path,
            context: &context,
            init: InitSource {
                params: &params,
                protocol_version: version.as_deref(),
            },
            extra: &extra,
        };
        let mut usid = self
            .shared
            .upstream(&need, None, false)
            .await
            .map_err(unavailable)?;
        let mut result = self.shared.init_result(&usid).await;
        if result.is_none() {
            // the key names a session whose record is gone: make a new one
            usid = self
                .shared
                .upstream(&need, Some(&usid), false)
                .await
                .map_err(unavailable)?;
            result = self.shared.init_result(&usid).await;
        }
        let result = result.ok_or_else(|| unavailable("its InitializeResult is unknown"))?;
        let negotiated = serde_json::from_str::<Value>(&result)
            .ok()
            .and_then(|v| v.get("protocolVersion")?.as_str().map(str::to_string))
            .or(version);
        let now = unix_now();
        self.sessions
            .record_quietly(SessionRecord {
                session_id: sid.clone(),
                upstream_session_id: usid.clone(),
                owner: self.sessions.settings.me.clone(),
                server_name: route.server_name.clone(),
                transport: Transport::StreamableHttp,
                user: ctx.user_id().map(str::to_string),
                protocol_version: negotiated,
                init_params: Some(params),
                context: Some(context.clone()),
                init_result: None,
                created_at: now,
                last_seen: now,
                epoch: 0,
            })
            .await;
        info!(
            "session {sid} confirmed: shares upstream session {usid} of {} (context {context}{})",
            route.server_name,
            ctx.user_id()
                .map_or(String::new(), |u| format!(", user {u}"))
        );
        METRICS
            .shared_requests
            .with_label_values(&[&route.server_name, "answered_here"])
            .inc();
        let id = ctx
            .envelope
            .as_ref()
            .and_then(|e| e.request_id())
            .unwrap_or("null");
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
        self.answer(session, ctx, 200, Some(body), &sid)
            .await
            .map_err(unavailable)
    }

    /// Writes an answer of the sidecar's own on a shared client session.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        status: u16,
        json: Option<String>,
        sid: &str,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(6))?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        resp.insert_header(MCP_SESSION_ID, sid)?;
        if status == 405 {
            resp.insert_header("allow", "POST, DELETE")?;
        }
        let body = json.unwrap_or_default();
        if !body.is_empty() {
            resp.insert_header("content-type", "application/json")?;
        }
        resp.insert_header("content-length", body.len().to_string())?;
        ctx.apply_cors(&mut resp);
        session
            .write_response_header(Box::new(resp), body.is_empty())
            .await?;
        if !body.is_empty() {
            session
                .write_response_body(Some(Bytes::from(body)), true)
                .await?;
        }
        Ok(())
    }

    /// The shared upstream session failed (forgotten upstream): a new one for this request.
    pub(super) async fn reestablish(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        shared: &mut Shared,
    ) -> std::result::Result<(), String> {
        let (route, path, _) = upstream_target(session, ctx);
        let extra = self.injected(session, ctx, Some(&shared.session.client));
        let record = self
            .sessions
            .shared_client(&shared.session.client, &route.server_name, ctx.user_id())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the client session is gone")?;
        let need = Need {
            route: &route,
            path: &path,
            context: &shared.context,
            init: InitSource {
                params: record.init_params.as_deref().unwrap_or("{}"),
                protocol_version: record.protocol_version.as_deref(),
            },
            extra: &extra,
        };
        let usid = self
            .shared
            .upstream(&need, Some(&shared.session.upstream), true)
            .await
            .map_err(|e| e.to_string())?;
        shared.session.upstream = usid;
        shared.owner = None;
        shared.via = "re-established";
        Ok(())
    }
}

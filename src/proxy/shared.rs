//! The proxy side of shared upstream sessions (`crate::shared`): client sessions of a
//! `session_mode: shared` route are the sidecar's own. It answers their `initialize`,
//! `notifications/initialized`, DELETE and GET itself, and sends everything else to the
//! context's upstream session (on the pod that holds it) with request ids rewritten.

use super::reply::Refusal;
use super::{upstream_target, RequestCtx, SessionCtx, Sidecar, Target};
use crate::hub::filter::filter_message;
use crate::metrics::METRICS;
use crate::protocol::headers::{MCP_SESSION_ID, X_REQUEST_ID};
use crate::protocol::jsonrpc::code;
use crate::shared::fanout;
use crate::shared::mux::MuxError;
use crate::shared::{context_key, InitSource, Need};
use crate::store::{unix_now, SessionRecord, Transport};
use bytes::Bytes;
use log::{info, warn};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// What routing a shared route's request came to.
pub(super) enum SharedStep {
    /// The sidecar answered it.
    Answered,
    /// It goes on to the upstream session (or its owner pod), as `ctx.session` says.
    Proxy,
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        502,
        code::SERVER_ERROR,
        format!("shared upstream session unavailable: {e}"),
    )
}

impl Sidecar {
    /// Routes a request on a shared route.
    pub(super) async fn route_shared(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<SharedStep, Refusal> {
        let route = ctx.route.clone().expect("admitted requests have a route");
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
            self.route_legacy_post(req, ctx).await?;
            if method == http::Method::POST && ctx.init.is_some() && ctx.legacy_sid.is_none() {
                self.answer_shared_initialize(session, ctx).await?;
                return Ok(SharedStep::Answered);
            }
            // anything else without a session: the upstream answers it as it would
            return Ok(SharedStep::Proxy);
        };
        super::refuse_two_sessions(req)?;
        let record = match self
            .sessions
            .shared_client(&sid, &route.server_name, ctx.user_id())
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(Refusal::new(
                    404,
                    code::SESSION_NOT_FOUND,
                    "Session not found",
                ))
            }
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
                ctx.shared_context = Some(context);
                ctx.session = Some(SessionCtx {
                    client_sid: sid.clone(),
                    upstream_sid: sid.clone(),
                    via: "forwarded",
                    target: Target::Owner(record.owner.clone()),
                    retried: true,
                    legacy: false,
                });
                return Ok(SharedStep::Proxy);
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
            return Ok(SharedStep::Answered);
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
            return Ok(SharedStep::Answered);
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
        let (upstream_sid, target) = loop {
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
                crate::session::Decision::Local { upstream_sid } => {
                    break (upstream_sid, Target::Upstream)
                }
                crate::session::Decision::Forward { owner } => {
                    break (sid.clone(), Target::Owner(owner))
                }
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
        ctx.shared_context = Some(context);
        ctx.session = Some(SessionCtx {
            client_sid: sid.clone(),
            upstream_sid,
            via: match (&target, stale.is_some()) {
                (Target::Owner(_), _) => "forwarded",
                (Target::Upstream, true) => "re-established",
                (Target::Upstream, false) => "shared",
            },
            target: target.clone(),
            retried: false,
            legacy: false,
        });
        if method == http::Method::GET {
            if target != Target::Upstream {
                // the owner pod fans its stream out
                return Ok(SharedStep::Proxy);
            }
            METRICS
                .shared_requests
                .with_label_values(&[label, "answered_here"])
                .inc();
            let upstream_sid = ctx.session.as_ref().map(|s| s.upstream_sid.clone());
            let fan = fanout::Target {
                route: &route,
                path: &path,
                upstream_sid: upstream_sid.as_deref().unwrap_or_default(),
                protocol_version: record.protocol_version.as_deref(),
                headers: extra
                    .iter()
                    .map(|(n, v)| (n.as_str().to_string(), v.clone()))
                    .collect(),
            };
            self.stream_shared(session, ctx, fan, &sid).await?;
            return Ok(SharedStep::Answered);
        }
        if target == Target::Upstream {
            METRICS.shared_in_flight.inc();
            ctx.mux_active = true;
            if let Some(raw) = ctx.raw_body.take() {
                self.multiplex(ctx, &raw)?;
            }
        }
        Ok(SharedStep::Proxy)
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

    /// Rewrites a complete body for the shared session (ids unique in it).
    pub(super) fn multiplex(&self, ctx: &mut RequestCtx, body: &[u8]) -> Result<(), Refusal> {
        let client = ctx
            .session
            .as_ref()
            .map(|s| s.client_sid.clone())
            .unwrap_or_default();
        let label = ctx.route_label().to_string();
        match self.shared.mux.rewrite_request(&client, body) {
            Ok(r) => {
                METRICS
                    .shared_requests
                    .with_label_values(&[&label, "multiplexed"])
                    .inc();
                ctx.mux_ids = r.ids;
                ctx.mux_body = Some(Bytes::from(r.body));
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

    /// Restores ids in the upstream's answer for the client (and filters tool lists).
    pub(super) fn restore_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) {
        let client = ctx
            .session
            .as_ref()
            .map(|s| s.client_sid.clone())
            .unwrap_or_default();
        let user = ctx.caller.as_ref().map(|c| c.user.clone());
        let route = ctx.route.clone();
        let access = match (ctx.lists_tools, route.as_deref()) {
            (true, Some(r)) => r.policy.tools.as_ref(),
            _ => None,
        };
        let id = ctx
            .envelope
            .as_ref()
            .and_then(|e| e.request_id())
            .map(str::to_string);
        let mux = &self.shared.mux;
        let Some(stream) = ctx.mux_stream.as_mut() else {
            return;
        };
        let out = stream.feed(
            body.as_deref(),
            end_of_stream,
            None,
            &mut |v| {
                let mut changed = mux.restore(&client, v);
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
    }

    /// The shared upstream session failed (forgotten upstream): a new one for this request.
    pub(super) async fn reestablish(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), String> {
        let (route, path, _) = upstream_target(session, ctx);
        let extra = self.injected(session, ctx, None);
        let context = ctx.shared_context.clone().ok_or("no shared context")?;
        let s = ctx.session.as_ref().ok_or("no session")?;
        let record = self
            .sessions
            .shared_client(&s.client_sid, &route.server_name, ctx.user_id())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the client session is gone")?;
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
        let stale = s.upstream_sid.clone();
        let usid = self
            .shared
            .upstream(&need, Some(&stale), true)
            .await
            .map_err(|e| e.to_string())?;
        let s = ctx.session.as_mut().expect("checked above");
        s.upstream_sid = usid;
        s.target = Target::Upstream;
        s.via = "re-established";
        Ok(())
    }
}

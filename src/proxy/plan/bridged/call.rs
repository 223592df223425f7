//! A bridged call: sent on the pooled session, its answer relayed message by message, held
//! on this pod for an MRTR round and resumed by the retry (from any pod, over the hop),
//! cancelled upstream when the client goes away.

use super::*;

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
    /// A request sent upstream on the pooled session, its answer relayed.
    pub(super) async fn call(
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
    pub(super) async fn resume_call(
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
}

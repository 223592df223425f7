//! `subscriptions/listen` on a pooled legacy session: its GET stream, only the opted-in
//! notifications, tagged with the subscription; resource subscriptions counted per URI.

use super::*;

/// How long a listener waits for the legacy server's GET stream to open.
const LISTEN_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

impl Sidecar {
    /// `subscriptions/listen`: the acknowledgement, then the opted-in notifications of the
    /// pooled session's GET stream, until the client closes the stream.
    pub(super) async fn listen(
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

//! The era bridge: modern (2026-07-28) clients served by this pod's legacy MCP server. What
//! the bridge keeps between requests lives here; what one bridged request goes through is
//! `proxy/plan/bridged/`; the protocol shapes are `protocol::modern` and
//! `protocol::request_state`.
//!
//! - **The era of a route's server** (`era: auto`): probed once with `server/discover`, the
//!   verdict kept for `bridge.era_ttl`, and probed again sooner when it stops holding.
//! - **Pooled legacy sessions.** Modern requests carry no session; the bridge sends them on
//!   a legacy session it opens itself, one per pod and pool key: the route, the caller's
//!   context (token values, the hub user where the route injects identity; the rules of
//!   shared routes, `crate::shared::context_key`) and the capabilities the client declares
//!   (which the legacy server is told). One per pod, not one per deployment: a request never
//!   waits on Redis or crosses to another pod, and each pod's MCP server is its own anyway.
//!   Request ids and progress tokens are the bridge's own, so clients sharing a session never
//!   see each other's messages. A session the server forgot is opened again.
//! - **Pending calls** (MRTR). A server-to-client request during a call becomes an
//!   `InputRequiredResult`; the upstream call stays open here, under a handle that the sealed
//!   `requestState` names with this pod's address. The retry may reach any pod; the hop
//!   carries it here. Unanswered calls are cancelled upstream after `bridge.input_timeout`.
//! - **Listeners**: `subscriptions/listen` rides the pooled session's GET stream, opened once
//!   and fanned out (`crate::shared::fanout`); `resources/subscribe` is sent once per URI and
//!   withdrawn when its last listener leaves.

pub mod client;

use crate::config::BridgeSection;
use crate::metrics::METRICS;
use crate::protocol::modern::{self, MODERN_VERSION};
use crate::protocol::request_state::{self, State, StateError};
use crate::route::Route;
use crate::shared::fanout::Fanouts;
use client::{Answer, CallError, Client};
use log::{info, warn};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the server behind a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    Legacy,
    Modern,
}

impl Era {
    pub fn label(self) -> &'static str {
        match self {
            Era::Legacy => "legacy",
            Era::Modern => "modern",
        }
    }
}

/// Where and how the bridge calls a route's MCP server for one caller.
#[derive(Debug, Clone)]
pub struct Target {
    pub route: Arc<Route>,
    /// The upstream path.
    pub path: String,
    /// The caller's injected hub headers, the request id, trace context.
    pub headers: Vec<(String, String)>,
}

/// A pooled legacy session.
#[derive(Debug)]
pub struct Legacy {
    /// `None`: the server keeps no sessions (stateless), and none is sent.
    pub sid: Option<String>,
    /// The legacy version the server negotiated.
    pub version: String,
    pub init_result: Value,
    pub server_info: Value,
    /// The calls in flight on the session that take server requests arriving on its GET
    /// stream (requests the server relates to no call), by a number of their own.
    inflight: Mutex<Vec<(u64, mpsc::UnboundedSender<Value>)>>,
}

/// What a call in flight receives from its session's GET stream; it stops receiving when
/// dropped.
pub struct Inbox {
    pub rx: mpsc::UnboundedReceiver<Value>,
    n: u64,
    legacy: Arc<Legacy>,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        lock(&self.legacy.inflight).retain(|(n, _)| *n != self.n);
    }
}

impl Legacy {
    /// A call in flight on this session: server requests on the GET stream reach it while it
    /// is the only one.
    pub fn enter(self: &Arc<Self>) -> Inbox {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inflight).push((n, tx));
        Inbox {
            rx,
            n,
            legacy: Arc::clone(self),
        }
    }

    /// Hands a server request from the GET stream to the call in flight, when exactly one
    /// is: with none, or several, nobody can tell whose it is.
    fn deliver(&self, msg: &Value) -> bool {
        let inflight = lock(&self.inflight);
        match inflight.as_slice() {
            [(_, tx)] => tx.send(msg.clone()).is_ok(),
            _ => false,
        }
    }
}

/// A pooled session's slot: established once, under its own lock.
type Slot = Arc<tokio::sync::Mutex<SlotState>>;

#[derive(Default)]
struct SlotState {
    legacy: Option<Arc<Legacy>>,
    /// Sessions established in this slot so far.
    established: u64,
}

/// A call waiting for a modern client's input.
pub struct PendingCall {
    pub answer: Answer,
    pub legacy: Arc<Legacy>,
    pub pool_key: String,
    pub target: Target,
    pub method: String,
    /// The bridge's id of the call upstream.
    pub upstream_id: String,
    /// The bridge's progress token upstream, when the client asked for progress.
    pub token: Option<String>,
    /// Input request key → the server's request id, and the input request as the client
    /// got it (asked again when the retry lacks its answer).
    pub asked: HashMap<String, (Value, Value)>,
    pub principal: String,
    pub digest: String,
    pub expires: Instant,
}

pub struct Bridge {
    pub client: Client,
    pub fanouts: Arc<Fanouts>,
    pub settings: BridgeSection,
    me: String,
    state_key: Vec<u8>,
    eras: Mutex<HashMap<String, (Era, Instant)>>,
    pools: Mutex<HashMap<String, Slot>>,
    pending: Mutex<HashMap<String, PendingCall>>,
    /// Resource URI subscriptions per pooled session: (pool key, uri) → listeners.
    subscriptions: Mutex<HashMap<(String, String), usize>>,
    ids: AtomicU64,
    reaping: std::sync::atomic::AtomicBool,
    /// Tells this process's ids apart from another's on the same legacy session.
    nonce: String,
}

/// How long the sidecar waits on its own calls (initialize, discover, a cancellation).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Bridge {
    pub fn new(
        settings: BridgeSection,
        secret: Option<&[u8]>,
        me: String,
        timeouts: (Duration, Duration),
        max_held: usize,
    ) -> Bridge {
        let state_key = match secret {
            Some(s) => {
                use hmac::{Hmac, Mac};
                let mut m = Hmac::<sha2::Sha256>::new_from_slice(s).expect("any key length");
                m.update(b"mcp-sidecar bridge requestState key");
                m.finalize().into_bytes().to_vec()
            }
            // one pod without a peer secret: its own key (retries must come back here anyway)
            None => uuid::Uuid::new_v4().as_bytes().to_vec(),
        };
        Bridge {
            client: Client::new(timeouts.0, timeouts.1, max_held),
            fanouts: Arc::new(Fanouts::new(max_held)),
            settings,
            me,
            state_key,
            eras: Mutex::default(),
            pools: Mutex::default(),
            pending: Mutex::default(),
            subscriptions: Mutex::default(),
            ids: AtomicU64::new(0),
            reaping: Default::default(),
            nonce: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
        }
    }

    /// This pod's peer address, which sealed states name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// A fresh id for the bridge's messages on a pooled session.
    pub fn next_id(&self, what: &str) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        format!("mcp-sidecar-bridge-{what}-{}-{n}", self.nonce)
    }

    // ---- the era of a route's server ----

    /// The era of the route's server: configured, or probed and cached.
    pub async fn era(&self, target: &Target, configured: Option<Era>) -> Era {
        if let Some(era) = configured {
            return era;
        }
        let cached = lock(&self.eras)
            .get(target.route.server_name.as_str())
            .copied();
        if let Some((era, at)) = cached {
            if at.elapsed() < self.settings.era_ttl {
                return era;
            }
        }
        let name = target.route.server_name.clone();
        let era = self.probe(target).await;
        if let Some(era) = era {
            info!(
                "route {name}: the MCP server speaks the {} era",
                era.label()
            );
            METRICS
                .era_probes
                .with_label_values(&[name.as_str(), era.label()])
                .inc();
            lock(&self.eras).insert(name, (era, Instant::now()));
        }
        // unreachable: not cached; the request itself will find the server down
        era.unwrap_or(Era::Legacy)
    }

    /// The cached verdict no longer holds (a legacy answer to a modern request, or an
    /// initialize refused): the next request probes again.
    pub fn doubt_era(&self, route: &str) {
        if lock(&self.eras).remove(route).is_some() {
            info!("route {route}: the MCP server's era is probed again");
        }
    }

    async fn probe(&self, target: &Target) -> Option<Era> {
        let body = json!({"jsonrpc": "2.0", "id": self.next_id("discover"),
            "method": "server/discover", "params": {"_meta": {
                modern::meta::PROTOCOL_VERSION: MODERN_VERSION,
                modern::meta::CLIENT_CAPABILITIES: {}}}});
        let mut headers = target.headers.clone();
        headers.push(("mcp-protocol-version".into(), MODERN_VERSION.into()));
        headers.push(("mcp-method".into(), "server/discover".into()));
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let call = self
            .client
            .post(&target.route, &target.path, &headers, &body);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(mut answer)) => {
                let msg = answer.next(self.client.max_held()).await;
                self.client.release(answer).await;
                let modern = msg.ok().flatten().is_some_and(|m| {
                    m.pointer("/result/supportedVersions")
                        .and_then(Value::as_array)
                        .is_some_and(|v| v.iter().any(|v| v == MODERN_VERSION))
                });
                Some(if modern { Era::Modern } else { Era::Legacy })
            }
            Ok(Err(CallError::Status(_, body))) => {
                // a modern server answers a modern error; anything else is legacy
                let modern_error = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.pointer("/error/code").and_then(Value::as_i64))
                    .is_some_and(|c| {
                        c == modern::code::UNSUPPORTED_VERSION || c == modern::code::HEADER_MISMATCH
                    });
                Some(if modern_error {
                    Era::Modern
                } else {
                    Era::Legacy
                })
            }
            Ok(Err(_)) | Err(_) => None,
        }
    }

    // ---- pooled legacy sessions ----

    /// The pool key of a caller: route, context and declared capabilities.
    pub fn pool_key(route: &str, context: &str, capabilities: &Value) -> String {
        use sha2::{Digest, Sha256};
        let caps =
            serde_json::to_vec(&modern::legacy_capabilities(capabilities)).unwrap_or_default();
        let digest = hex::encode(Sha256::digest(&caps));
        format!("{route}|{context}|{}", &digest[..16])
    }

    /// The pooled session for `key`, established when there is none yet (once, however
    /// many requests ask at the same time).
    pub async fn session(
        self: &Arc<Self>,
        key: &str,
        target: &Target,
        capabilities: &Value,
        client_info: Option<&Value>,
    ) -> Result<Arc<Legacy>, CallError> {
        let slot = lock(&self.pools)
            .entry(key.to_string())
            .or_default()
            .clone();
        let mut held = slot.lock().await;
        if let Some(legacy) = held.legacy.as_ref() {
            return Ok(legacy.clone());
        }
        let legacy = match self.establish(target, capabilities, client_info).await {
            Ok(l) => Arc::new(l),
            Err(e) => {
                // a server that refuses initialize may have changed era
                if matches!(e, CallError::Status(..)) {
                    self.doubt_era(&target.route.server_name);
                }
                return Err(e);
            }
        };
        let event = if held.established > 0 {
            "re_established"
        } else {
            "established"
        };
        held.established += 1;
        METRICS
            .bridge_sessions
            .with_label_values(&[target.route.server_name.as_str(), event])
            .inc();
        info!(
            "route {}: legacy session {} {event} for modern clients (pool {})",
            target.route.server_name,
            legacy.sid.as_deref().unwrap_or("(stateless)"),
            crate::protocol::shown(key, 96)
        );
        // before any call goes on the session: what the server sends on its GET stream
        self.watch(target, &legacy).await;
        held.legacy = Some(legacy.clone());
        Ok(legacy)
    }

    /// Opens the pooled session's GET stream and keeps it for the session's life: a server
    /// request there (one the server relates to no call: FastMCP 1.x's `list_roots()`, or
    /// `create_message` without a related request id) goes to the call in flight when there
    /// is exactly one, and is refused otherwise, so that the server never waits for ever. A
    /// `ping` is answered here.
    async fn watch(self: &Arc<Self>, target: &Target, legacy: &Arc<Legacy>) {
        let Some(sid) = &legacy.sid else { return };
        let t = crate::shared::fanout::Target {
            route: &target.route,
            path: &target.path,
            upstream_sid: sid,
            protocol_version: Some(&legacy.version),
            headers: target.headers.clone(),
        };
        let mut rx = match self.fanouts.subscribe(t, CALL_TIMEOUT).await {
            crate::shared::fanout::Opened::Stream(rx) => rx,
            crate::shared::fanout::Opened::Refused(status) => {
                info!(
                    "route {}: the MCP server has no GET stream ({status}) for the bridge's session",
                    target.route.server_name
                );
                return;
            }
            crate::shared::fanout::Opened::Unreachable(e) => {
                warn!(
                    "route {}: the GET stream of the bridge's session did not open: {e}",
                    target.route.server_name
                );
                return;
            }
        };
        let (bridge, target, legacy) = (Arc::clone(self), target.clone(), Arc::clone(legacy));
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let event = match rx.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                };
                let text = String::from_utf8_lossy(&event);
                let (data, _) = crate::protocol::messages::event_data(&text);
                let Ok(msg) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                let (Some(method), Some(id)) =
                    (msg.get("method").and_then(Value::as_str), msg.get("id"))
                else {
                    continue;
                };
                let reply = if method == "ping" {
                    modern::response(id, json!({}))
                } else if legacy.deliver(&msg) {
                    continue;
                } else {
                    modern::error_response(
                        Some(id),
                        json!({"code": crate::protocol::jsonrpc::code::INVALID_REQUEST,
                            "message": format!("{} relates to no call, and the sidecar cannot tell which of its modern clients it is for; send it related to the call", crate::protocol::shown(method, 64))}),
                    )
                };
                bridge.notify(&target, &legacy, &reply).await;
            }
        });
    }

    /// Drops a pooled session the server no longer knows (only if it is still the pooled
    /// one: a concurrent request may have re-established it already).
    pub async fn forget(&self, key: &str, legacy: &Arc<Legacy>) {
        let slot = lock(&self.pools).get(key).cloned();
        if let Some(slot) = slot {
            let mut held = slot.lock().await;
            if held.legacy.as_ref().is_some_and(|l| Arc::ptr_eq(l, legacy)) {
                held.legacy = None;
            }
        }
    }

    async fn establish(
        &self,
        target: &Target,
        capabilities: &Value,
        client_info: Option<&Value>,
    ) -> Result<Legacy, CallError> {
        let info = client_info.cloned().unwrap_or_else(
            || json!({"name": "mcp-sidecar-bridge", "version": env!("CARGO_PKG_VERSION")}),
        );
        let init = json!({"jsonrpc": "2.0", "id": self.next_id("init"), "method": "initialize",
            "params": {"protocolVersion": modern::LEGACY_VERSIONS[0],
                "capabilities": modern::legacy_capabilities(capabilities),
                "clientInfo": info}});
        let body = serde_json::to_vec(&init).unwrap_or_default();
        let exchange = async {
            let mut answer = self
                .client
                .post(&target.route, &target.path, &target.headers, &body)
                .await?;
            let sid = answer.session_id.clone();
            let mut result = None;
            while let Some(msg) = answer.next(self.client.max_held()).await? {
                if msg.get("id").is_some() && msg.get("method").is_none() {
                    result = Some(msg);
                    break;
                }
            }
            self.client.release(answer).await;
            Ok::<_, CallError>((sid, result))
        };
        let (sid, msg) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| CallError::Unreachable("initialize timed out".into()))??;
        let result = msg
            .as_ref()
            .and_then(|m| m.get("result"))
            .cloned()
            .ok_or_else(|| CallError::Garbled("initialize answered without a result".into()))?;
        let version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .filter(|v| modern::is_legacy_version(v))
            .unwrap_or(modern::LEGACY_VERSIONS[0])
            .to_string();
        let server_info = result.get("serverInfo").cloned().unwrap_or(Value::Null);
        let legacy = Legacy {
            sid,
            version,
            init_result: result,
            server_info,
            inflight: Mutex::default(),
        };
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.notify(target, &legacy, &initialized).await;
        Ok(legacy)
    }

    /// The headers of a message on a pooled session.
    pub fn session_headers(target: &Target, legacy: &Legacy) -> Vec<(String, String)> {
        let mut headers = target.headers.clone();
        if let Some(sid) = &legacy.sid {
            headers.push(("mcp-session-id".into(), sid.clone()));
        }
        headers.push(("mcp-protocol-version".into(), legacy.version.clone()));
        headers
    }

    /// Sends a message on a pooled session and returns the answer (a request's).
    pub async fn send(
        &self,
        target: &Target,
        legacy: &Legacy,
        body: &[u8],
    ) -> Result<Answer, CallError> {
        let headers = Self::session_headers(target, legacy);
        self.client
            .post(&target.route, &target.path, &headers, body)
            .await
    }

    /// Sends a notification or a response on a pooled session; its `202` is read and the
    /// connection reused. Failures are logged, not returned: nothing waits on them.
    pub async fn notify(&self, target: &Target, legacy: &Legacy, msg: &Value) {
        let body = serde_json::to_vec(msg).unwrap_or_default();
        let sent = tokio::time::timeout(CALL_TIMEOUT, self.send(target, legacy, &body)).await;
        match sent {
            Ok(Ok(mut answer)) => {
                answer.drain().await;
                self.client.release(answer).await;
            }
            Ok(Err(e)) => warn!(
                "route {}: a message to the MCP server on a bridged session failed: {e}",
                target.route.server_name
            ),
            Err(_) => warn!(
                "route {}: a message to the MCP server on a bridged session timed out",
                target.route.server_name
            ),
        }
    }

    /// Tells the server a call is cancelled.
    pub async fn cancel(&self, target: &Target, legacy: &Legacy, upstream_id: &str, why: &str) {
        let msg = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": upstream_id, "reason": why}});
        self.notify(target, legacy, &msg).await;
    }

    // ---- pending calls (MRTR) ----

    /// Keeps a call waiting for the client's input; returns its sealed `requestState`, or
    /// the call back when this pod holds its limit of pending calls.
    pub fn hold(&self, call: PendingCall, now_unix: u64) -> Result<String, Box<PendingCall>> {
        let mut pending = lock(&self.pending);
        if pending.len() >= self.settings.max_pending {
            return Err(Box::new(call));
        }
        let handle = uuid::Uuid::new_v4().simple().to_string();
        let state = State {
            pod: self.me.clone(),
            handle: handle.clone(),
            principal: call.principal.clone(),
            digest: call.digest.clone(),
            expires: now_unix + self.settings.input_timeout.as_secs().max(1),
        };
        pending.insert(handle, call);
        METRICS.bridge_pending.set(pending.len() as i64);
        Ok(request_state::seal(&self.state_key, &state))
    }

    /// Starts cancelling expired pending calls (once per process).
    pub fn start_reaper(self: &Arc<Self>) {
        if !self.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(Arc::clone(self).reap());
        }
    }

    /// Verifies a `requestState` a client echoed.
    pub fn open_state(&self, sealed: &str, now_unix: u64) -> Result<State, StateError> {
        request_state::open(&self.state_key, sealed, now_unix)
    }

    /// Takes a pending call to resume it, if it is still here and still belongs to the
    /// principal and request the state names.
    pub fn take(&self, state: &State) -> Option<PendingCall> {
        let mut pending = lock(&self.pending);
        let ok = pending
            .get(&state.handle)
            .is_some_and(|c| c.principal == state.principal && c.digest == state.digest);
        let call = if ok {
            pending.remove(&state.handle)
        } else {
            None
        };
        METRICS.bridge_pending.set(pending.len() as i64);
        call
    }

    /// Cancels, upstream, calls whose client did not come back in time. Runs for the life
    /// of the process.
    pub async fn reap(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let expired: Vec<PendingCall> = {
                let mut pending = lock(&self.pending);
                let now = Instant::now();
                let gone: Vec<String> = pending
                    .iter()
                    .filter(|(_, c)| c.expires <= now)
                    .map(|(h, _)| h.clone())
                    .collect();
                let calls = gone.iter().filter_map(|h| pending.remove(h)).collect();
                METRICS.bridge_pending.set(pending.len() as i64);
                calls
            };
            for call in expired {
                METRICS
                    .bridge_rounds
                    .with_label_values(&[call.target.route.server_name.as_str(), "expired"])
                    .inc();
                info!(
                    "route {}: a {} waiting for a modern client's input expired; cancelled upstream",
                    call.target.route.server_name, call.method
                );
                self.cancel(
                    &call.target,
                    &call.legacy,
                    &call.upstream_id,
                    "the client did not answer the input request in time",
                )
                .await;
                // dropping the answer closes its connection
            }
        }
    }

    // ---- resource subscriptions of listeners ----

    /// Counts a listener of `uri` on a pooled session; `true` when it is the first (the
    /// bridge then subscribes upstream).
    pub fn listen_uri(&self, key: &str, uri: &str) -> bool {
        let mut subs = lock(&self.subscriptions);
        let n = subs.entry((key.to_string(), uri.to_string())).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// A listener of `uri` left; `true` when it was the last (the bridge then unsubscribes).
    pub fn unlisten_uri(&self, key: &str, uri: &str) -> bool {
        let mut subs = lock(&self.subscriptions);
        let k = (key.to_string(), uri.to_string());
        match subs.get_mut(&k) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                subs.remove(&k);
                true
            }
            None => false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

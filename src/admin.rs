//! The admin listener: liveness, readiness, Prometheus metrics, and the admin API behind a
//! token. It listens on its own address so it can stay off the Service that clients reach.

use crate::metrics;
use crate::peer::constant_time_eq;
use crate::session::Sessions;
use crate::store::{unix_now, Backend};
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use log::{info, warn};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct AdminApp {
    sessions: Arc<Sessions>,
    token: Option<String>,
    /// Configuration weaknesses, repeated in readiness so they stay visible after startup.
    warnings: Vec<String>,
    /// Routes require keys and only the Redis registry has them: readiness checks that it is
    /// not empty, at most once per `REGISTRY_CHECK_EVERY` (the check scans).
    registry_check: Option<Mutex<Option<(Instant, bool)>>>,
}

const REGISTRY_CHECK_EVERY: Duration = Duration::from_secs(10);

const EMPTY_REGISTRY: &str = "the hub key registry in Redis is empty while routes require keys: every user gets 401. Redis lost its data (a restart without persistence?): restore with `mcp-sidecar keys import`";

impl AdminApp {
    pub fn new(sessions: Arc<Sessions>, token: Option<&str>) -> AdminApp {
        AdminApp {
            sessions,
            token: token.map(str::to_string),
            warnings: Vec::new(),
            registry_check: None,
        }
    }

    /// Checks in readiness that the key registry is not empty (`Config::registry_required`).
    pub fn with_registry_check(mut self, required: bool) -> AdminApp {
        self.registry_check = required.then(|| Mutex::new(None));
        self
    }

    /// Whether the registry was found empty (answers cached; a store error says nothing).
    async fn registry_empty(&self) -> bool {
        let Some(check) = &self.registry_check else {
            return false;
        };
        let cached = *check.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, has)) = cached {
            if at.elapsed() < REGISTRY_CHECK_EVERY {
                return !has;
            }
        }
        match self.sessions.store().has_hub_keys().await {
            Ok(has) => {
                if !has && cached.is_none_or(|(_, had)| had) {
                    warn!("{EMPTY_REGISTRY}");
                }
                *check.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), has));
                !has
            }
            Err(_) => cached.is_some_and(|(_, has)| !has),
        }
    }

    pub fn with_warnings(mut self, warnings: Vec<String>) -> AdminApp {
        self.warnings = warnings;
        self
    }

    /// Ready unless the process is broken. A Redis outage reports `degraded` with 200: taking
    /// every pod out of the Service because Redis blinked would turn a partial outage (no
    /// cross-pod continuity) into a total one. Configuration warnings do not change the status.
    async fn readiness(&self) -> (StatusCode, Value) {
        let (status, mut body) = self.store_readiness().await;
        let mut warnings = self.warnings.clone();
        if body["status"] == "ready" && self.registry_empty().await {
            warnings.push(EMPTY_REGISTRY.to_string());
        }
        if !warnings.is_empty() {
            body["warnings"] = json!(warnings);
        }
        (status, body)
    }

    async fn store_readiness(&self) -> (StatusCode, Value) {
        if self.sessions.is_draining() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "draining"}),
            );
        }
        let store = self.sessions.store();
        match (store.backend(), store.ping().await) {
            (Backend::Memory, _) => (
                StatusCode::OK,
                json!({"status": "ready", "store": "memory",
                       "note": "single-pod mode: sessions are not shared with other pods"}),
            ),
            (Backend::Redis, Ok(())) => {
                (StatusCode::OK, json!({"status": "ready", "store": "redis"}))
            }
            (Backend::Redis, Err(e)) => (
                StatusCode::OK,
                json!({"status": "degraded", "store": "redis", "reason": e.to_string()}),
            ),
        }
    }

    /// `X-Auth-Token` (the seeds' header) or `Authorization: Bearer`, compared in constant time.
    /// `None` when authorized, else the refusal.
    fn refusal(&self, session: &ServerSession) -> Option<Response<Vec<u8>>> {
        let Some(expected) = &self.token else {
            return Some(fail(
                StatusCode::FORBIDDEN,
                "admin API disabled: set admin.token",
            ));
        };
        let headers = &session.req_header().headers;
        let given = headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            });
        match given {
            Some(g) if constant_time_eq(g.trim().as_bytes(), expected.as_bytes()) => None,
            _ => Some(fail(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token",
            )),
        }
    }

    async fn api(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        let store = self.sessions.store();
        match (method, path.strip_prefix("/api/admin/")) {
            (&Method::GET, Some("sessions")) => match store.list_sessions().await {
                Ok(list) => {
                    let now = unix_now();
                    let data: Vec<Value> = list
                        .into_iter()
                        .map(|(r, ttl)| {
                            json!({
                                "sessionId": r.session_id,
                                "upstreamSessionId": r.upstream_session_id,
                                "owner": r.owner,
                                "epoch": r.epoch,
                                "serverName": r.server_name,
                                "transport": r.transport.as_str(),
                                "user": r.user,
                                "protocolVersion": r.protocol_version,
                                "ageSeconds": now.saturating_sub(r.created_at),
                                "lastSeenSecondsAgo": now.saturating_sub(r.last_seen),
                                "ttl": ttl.map(|t| t.as_secs()),
                            })
                        })
                        .collect();
                    ok(json!(data))
                }
                Err(e) => fail(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            },
            (&Method::POST, Some("drain")) => {
                let r = self.sessions.drain().await;
                ok(json!({
                    "draining": true,
                    "started": r.started,
                    "peers": r.peers,
                    "sessions": r.sessions,
                    "sseStreams": r.streams,
                }))
            }
            (&Method::DELETE, Some(rest)) if rest.starts_with("sessions/") => {
                let sid = &rest["sessions/".len()..];
                match self.sessions.forget(sid).await {
                    Ok(true) => ok(json!({"sessionId": sid})),
                    Ok(false) => fail(StatusCode::NOT_FOUND, "no such session"),
                    Err(e) => fail(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
                }
            }
            (&Method::GET, Some("upstream-sessions")) => match store.list_upstream_sessions().await
            {
                Ok(list) => ok(json!(list
                    .into_iter()
                    .map(|u| json!({
                        "serverName": u.server_name,
                        "contextKey": u.context_key,
                        "sessionId": u.session_id,
                        "ttl": u.ttl.map(|t| t.as_secs()),
                    }))
                    .collect::<Vec<_>>())),
                Err(e) => fail(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            },
            (&Method::DELETE, Some(rest)) if rest.starts_with("upstream-sessions/") => {
                let rest = percent_decode(&rest["upstream-sessions/".len()..]);
                let Some((server, context)) = rest.split_once('/') else {
                    return fail(
                        StatusCode::NOT_FOUND,
                        "use /api/admin/upstream-sessions/:serverName/:contextKey",
                    );
                };
                match store.delete_upstream_session(server, context, None).await {
                    Ok(true) => {
                        info!("upstream session of {server} {context} deleted through the admin API; the next request re-establishes it");
                        ok(json!({"serverName": server, "contextKey": context}))
                    }
                    Ok(false) => fail(StatusCode::NOT_FOUND, "no such upstream session"),
                    Err(e) => fail(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
                }
            }
            (&Method::GET, Some("pods")) => match store.list_pods().await {
                Ok(pods) => {
                    let me = &self.sessions.settings.me;
                    let data: Vec<Value> = pods
                        .into_iter()
                        .map(|p| {
                            json!({
                                "address": p.address,
                                "self": &p.address == me,
                                "info": serde_json::from_str::<Value>(&p.info).unwrap_or(Value::String(p.info)),
                                "ttl": p.ttl.map(|t| t.as_secs_f64()),
                            })
                        })
                        .collect();
                    ok(json!(data))
                }
                Err(e) => fail(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            },
            _ => fail(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }
}

/// `%XX` escapes decoded (context keys may arrive escaped); anything malformed stays as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .expect("static response parts are valid")
}

fn respond_json(status: StatusCode, v: Value) -> Response<Vec<u8>> {
    respond(status, "application/json", v.to_string().into_bytes())
}

fn ok(data: Value) -> Response<Vec<u8>> {
    respond_json(StatusCode::OK, json!({"success": true, "data": data}))
}

fn fail(status: StatusCode, error: &str) -> Response<Vec<u8>> {
    respond_json(status, json!({"success": false, "error": error}))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if path.starts_with("/api/admin/") {
            if let Some(refusal) = self.refusal(session) {
                return refusal;
            }
            return self.api(&method, &path).await;
        }
        if method != Method::GET {
            return fail(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        match path.as_str() {
            "/healthz" => respond_json(StatusCode::OK, json!({"status": "ok"})),
            "/readyz" => {
                let (status, body) = self.readiness().await;
                respond_json(status, body)
            }
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(),
            ),
            _ => fail(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

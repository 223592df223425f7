//! Shared upstream sessions (`session_mode: shared`): every client of a route and context
//! shares one upstream MCP session, to save upstream memory, without ever seeing another
//! client's answers.
//!
//! - The context: `shared` when the route injects no user token, else
//!   `tok:<sorted token names>:<digest of the names and values>`, so users with different
//!   credentials never share a session.
//! - Redis: `mcp:upstream:session:{serverName}:{contextKey}` holds the upstream
//!   `Mcp-Session-Id` (the seeds' schema) with a sliding TTL. The upstream session itself is an
//!   ordinary session record (`mcp:session:{id}`) owned by the pod whose MCP server holds it,
//!   so requests from other pods are forwarded there over the peer hop; that pod multiplexes
//!   (`mux`).
//! - Establishing: the first client's `initialize` is sent upstream once, under a lock in the
//!   store, so concurrent first requests on any pod make one session. Later clients are
//!   answered by the sidecar with the stored InitializeResult and their own session id.
//! - Re-establishing: when the upstream forgot the session, its owner pod is gone, or the key
//!   was deleted (admin API), the next request initializes a new one (logged
//!   "re-established") and goes on; clients keep their session ids.

pub mod fanout;
pub mod mux;

use crate::hub::policy::RoutePolicy;
use crate::hub::user::HubUser;
use crate::metrics::METRICS;
use crate::protocol::headers::{is_valid_session_id, MCP_SESSION_ID};
use crate::protocol::messages::event_data;
use crate::route::Route;
use crate::session::{Injected, Sessions};
use crate::store::{unix_now, SessionRecord, Transport};
use crate::telemetry::trace::{self, KeyValue, SpanKind};
use log::{info, warn};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A pod re-reads (and slides) a context's key at most this often, so an admin delete or a
/// re-establish on another pod is noticed within it.
const RECHECK: Duration = Duration::from_secs(1);

const ESTABLISH_ID: &str = "\"mcp-sidecar-shared-init\"";

/// The context a caller's requests share an upstream session in.
pub fn context_key(policy: &RoutePolicy, user: Option<&HubUser>) -> String {
    let names: BTreeSet<&str> = policy
        .templates
        .iter()
        .flat_map(|t| t.token_names())
        .collect();
    if names.is_empty() {
        return "shared".to_string();
    }
    let mut h = Sha256::new();
    for name in &names {
        let value = user.and_then(|u| u.tokens.get(*name)).map(String::as_str);
        h.update(name.as_bytes());
        h.update([0]);
        match value {
            Some(v) => {
                h.update([1]);
                h.update(v.as_bytes());
            }
            None => h.update([0]),
        }
        h.update([0]);
    }
    let digest = hex::encode(h.finalize());
    let names: Vec<&str> = names.into_iter().collect();
    format!("tok:{}:{}", names.join(","), &digest[..32])
}

/// What a shared upstream session is initialized with: a client's `initialize` params.
pub struct InitSource<'a> {
    pub params: &'a str,
    pub protocol_version: Option<&'a str>,
}

/// A request for a context's upstream session: where its MCP server is, and what to
/// initialize a new one with.
pub struct Need<'a> {
    pub route: &'a Route,
    /// The upstream path the sidecar's own requests go to.
    pub path: &'a str,
    pub context: &'a str,
    pub init: InitSource<'a>,
    /// The caller's injected headers (its tokens).
    pub extra: &'a [Injected],
}

#[derive(Debug)]
pub enum SharedError {
    Unreachable(std::io::Error),
    Refused(u16),
    /// Another pod was establishing it and did not finish in time.
    Timeout,
    Store(String),
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharedError::Unreachable(e) => write!(f, "the MCP server could not be reached: {e}"),
            SharedError::Refused(s) => write!(f, "the MCP server answered initialize with {s}"),
            SharedError::Timeout => {
                f.write_str("another pod is establishing it; timed out waiting")
            }
            SharedError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// The shared layer of one sidecar.
pub struct Shared {
    pub mux: mux::Mux,
    pub fanouts: Arc<fanout::Fanouts>,
    sessions: Arc<Sessions>,
    ttl: Duration,
    /// (server, context) → (upstream session id, when last read from the store).
    known: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl Shared {
    /// `max_held`: the largest GET stream event held while it arrives.
    pub fn new(sessions: Arc<Sessions>, ttl: Duration, max_held: usize) -> Shared {
        Shared {
            mux: mux::Mux::new(),
            fanouts: Arc::new(fanout::Fanouts::new(max_held)),
            sessions,
            ttl,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (String, Instant)>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, server: &str, context: &str, sid: &str) {
        self.known().insert(
            (server.to_string(), context.to_string()),
            (sid.to_string(), Instant::now()),
        );
    }

    /// The context's upstream session as the store has it (read at most once per `RECHECK`,
    /// which also slides its TTL). When the store is down, the last one known.
    pub async fn current(
        &self,
        server: &str,
        context: &str,
    ) -> Result<Option<String>, SharedError> {
        let k = (server.to_string(), context.to_string());
        if let Some((sid, at)) = self.known().get(&k) {
            if at.elapsed() < RECHECK {
                return Ok(Some(sid.clone()));
            }
        }
        match self
            .sessions
            .store()
            .get_upstream_session(server, context, self.ttl)
            .await
        {
            Ok(Some(sid)) => {
                self.known().insert(k, (sid.clone(), Instant::now()));
                Ok(Some(sid))
            }
            Ok(None) => {
                self.known().remove(&k);
                Ok(None)
            }
            Err(e) => match self.known().get(&k) {
                Some((sid, _)) => Ok(Some(sid.clone())),
                None => Err(SharedError::Store(e.to_string())),
            },
        }
    }

    /// The context's upstream session; established here when there is none. `stale`: the one
    /// that just failed (forgotten upstream, owner gone); a different one is used, or a new
    /// one made. `had_one`: the caller is a client of the context already, so a missing
    /// session (deleted through the admin API, expired) is re-established.
    pub async fn upstream(
        &self,
        need: &Need<'_>,
        stale: Option<&str>,
        had_one: bool,
    ) -> Result<String, SharedError> {
        let (server, context) = (need.route.server_name.as_str(), need.context);
        if let Some(old) = stale {
            let _ = self
                .sessions
                .store()
                .delete_upstream_session(server, context, Some(old))
                .await;
            {
                let mut known = self.known();
                let k = (server.to_string(), context.to_string());
                if known.get(&k).is_some_and(|(sid, _)| sid == old) {
                    known.remove(&k);
                }
            }
            // its record too: nobody is to forward to it or recover it any more
            let _ = self.sessions.store().delete_session(old).await;
            self.sessions.drop_local(old);
        }
        let usable =
            |sid: &Option<String>| sid.as_ref().filter(|s| Some(s.as_str()) != stale).cloned();
        if let Some(sid) = usable(&self.current(server, context).await.unwrap_or(None)) {
            return Ok(sid);
        }
        let store = self.sessions.store().clone();
        let lock = format!("establish:{server}:{context}");
        let token = format!("{}/{}", self.sessions.settings.me, uuid::Uuid::new_v4());
        let wait = self.sessions.settings.recovery_timeout;
        let deadline = Instant::now() + wait;
        loop {
            match store.try_lock(&lock, &token, wait * 2).await {
                Ok(true) => {
                    // someone may have finished just before we got the lock
                    let now = store
                        .get_upstream_session(server, context, self.ttl)
                        .await
                        .ok()
                        .flatten();
                    let result = match usable(&now) {
                        Some(sid) => Ok(sid),
                        None => self.establish(need, stale, had_one).await,
                    };
                    let _ = store.unlock(&lock, &token).await;
                    if let Ok(sid) = &result {
                        self.remember(server, context, sid);
                    }
                    return result;
                }
                // without the store there is no one to coordinate with
                Err(_) => return self.establish(need, stale, had_one).await,
                Ok(false) => {}
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            if let Ok(now) = store.get_upstream_session(server, context, self.ttl).await {
                if let Some(sid) = usable(&now) {
                    self.remember(server, context, &sid);
                    return Ok(sid);
                }
            }
            if Instant::now() >= deadline {
                return Err(SharedError::Timeout);
            }
        }
    }

    /// Initializes a new upstream session on this pod's MCP server and publishes it.
    async fn establish(
        &self,
        need: &Need<'_>,
        stale: Option<&str>,
        had_one: bool,
    ) -> Result<String, SharedError> {
        let span = trace::current_child("mcp_sidecar.shared.establish", SpanKind::Internal);
        span.set(|| {
            vec![KeyValue::new(
                "mcp_sidecar.shared.reestablished",
                stale.is_some() || had_one,
            )]
        });
        let result = span
            .scope()
            .run(self.establish_once(need, stale, had_one))
            .await;
        span.end(result.as_ref().err().map(|_| "establish_failed"));
        result
    }

    async fn establish_once(
        &self,
        need: &Need<'_>,
        stale: Option<&str>,
        had_one: bool,
    ) -> Result<String, SharedError> {
        let Need {
            route,
            path,
            context,
            init,
            extra,
        } = need;
        let started = Instant::now();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{ESTABLISH_ID},"method":"initialize","params":{}}}"#,
            init.params
        );
        let answer = self
            .sessions
            .call_upstream(route, path, None, None, extra, &body)
            .await
            .map_err(SharedError::Unreachable)?;
        let sid = answer
            .header(MCP_SESSION_ID)
            .filter(|s| (200..300).contains(&answer.status) && is_valid_session_id(s.as_bytes()))
            .ok_or(SharedError::Refused(answer.status))?
            .to_string();
        let result = initialize_result(&answer.body).ok_or(SharedError::Refused(answer.status))?;
        let version = serde_json::from_str::<serde_json::Value>(&result)
            .ok()
            .and_then(|v| v.get("protocolVersion")?.as_str().map(str::to_string))
            .or(init.protocol_version.map(str::to_string));
        let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let answer = self
            .sessions
            .call_upstream(
                route,
                path,
                Some(&sid),
                version.as_deref(),
                extra,
                initialized,
            )
            .await
            .map_err(SharedError::Unreachable)?;
        if !(200..300).contains(&answer.status) {
            return Err(SharedError::Refused(answer.status));
        }
        let now = unix_now();
        self.sessions
            .record_quietly(SessionRecord {
                session_id: sid.clone(),
                upstream_session_id: sid.clone(),
                owner: self.sessions.settings.me.clone(),
                server_name: route.server_name.clone(),
                transport: Transport::StreamableHttp,
                user: None,
                protocol_version: version,
                init_params: Some(init.params.to_string()),
                context: None,
                init_result: Some(result),
                created_at: now,
                last_seen: now,
                epoch: 0,
            })
            .await;
        if let Err(e) = self
            .sessions
            .store()
            .set_upstream_session(&route.server_name, context, &sid, self.ttl)
            .await
        {
            warn!("shared upstream session {sid} could not be saved to the store: {e}");
        }
        let took = started.elapsed().as_millis();
        match stale.or(had_one.then_some("(deleted or expired)")) {
            Some(old) => {
                METRICS
                    .shared_sessions
                    .with_label_values(&["re-established"])
                    .inc();
                info!(
                    "upstream session re-established for {} context {context}: {old} -> {sid} on {}, took {took} ms",
                    route.server_name, self.sessions.settings.me
                )
            }
            None => {
                METRICS
                    .shared_sessions
                    .with_label_values(&["established"])
                    .inc();
                info!(
                    "shared upstream session {sid} established for {} context {context} on {}, took {took} ms",
                    route.server_name, self.sessions.settings.me
                )
            }
        }
        Ok(sid)
    }

    /// The InitializeResult a shared upstream session answered (JSON text).
    pub async fn init_result(&self, upstream_sid: &str) -> Option<String> {
        if let Some(r) = self.sessions.local_record(upstream_sid) {
            return r.init_result;
        }
        self.sessions
            .store()
            .load_session(upstream_sid)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.init_result)
    }
}

/// The `result` of an initialize answer, JSON or SSE.
fn initialize_result(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let json = if text.trim_start().starts_with('{') {
        text.to_string()
    } else {
        text.split("\n\n")
            .map(|e| event_data(&e.replace('\r', "")).0)
            .find(|d| d.contains("\"result\""))?
    };
    let v: serde_json::Value = serde_json::from_str(&json).ok()?;
    Some(v.get("result")?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::policy::Template;

    fn user(tokens: &[(&str, &str)]) -> HubUser {
        HubUser {
            id: "u".into(),
            name: "u".into(),
            active: true,
            expires_at: None,
            groups: vec![],
            tokens: tokens
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn context_keys_separate_token_values_and_ignore_order_and_other_tokens() {
        let none = RoutePolicy::default();
        assert_eq!(context_key(&none, Some(&user(&[("A", "1")]))), "shared");
        let policy = RoutePolicy {
            templates: vec![
                Template::parse("x-b", "{token.B}").unwrap(),
                Template::parse("authorization", "Bearer {token.A} {user.id}").unwrap(),
            ],
            ..Default::default()
        };
        let k1 = context_key(&policy, Some(&user(&[("A", "1"), ("B", "2"), ("C", "x")])));
        let k2 = context_key(&policy, Some(&user(&[("B", "2"), ("A", "1")])));
        let k3 = context_key(&policy, Some(&user(&[("A", "1"), ("B", "3")])));
        assert!(k1.starts_with("tok:A,B:"), "{k1}");
        assert_eq!(k1, k2);
        assert_ne!(k1, k3);
        // values cannot be shifted between names
        let k4 = context_key(&policy, Some(&user(&[("A", "12")])));
        let k5 = context_key(&policy, Some(&user(&[("A", "1"), ("B", "2")])));
        assert_ne!(k4, k5);
        assert!(!k1.contains('1') || !k1.ends_with(":1"));
    }

    #[test]
    fn initialize_results_from_json_and_sse() {
        let r = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18"}}"#;
        assert_eq!(
            initialize_result(r.as_bytes()).unwrap(),
            r#"{"protocolVersion":"2025-06-18"}"#
        );
        let sse = format!("event: message\r\ndata: {r}\r\n\r\n");
        assert!(initialize_result(sse.as_bytes())
            .unwrap()
            .contains("2025-06-18"));
        assert!(initialize_result(b"nope").is_none());
    }
}

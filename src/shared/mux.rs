//! Request-id multiplexing for a shared upstream session. Every client numbers its JSON-RPC
//! requests from 0 or 1, and an MCP server keys its answers by request id, so clients sharing
//! one upstream session would steal each other's answers. On the owner pod every client
//! request gets an id that is unique in the process (`mx<pod tag>-<n>`, a string no client
//! would pick) and its progress token likewise; the answer, progress notifications and
//! cancellations are translated back for the client that sent the request. Server-initiated
//! requests seen on a client's answer stream are remembered as that client's, so only that
//! client may answer them.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Server requests nobody answered are forgotten after this long.
const SERVER_REQUEST_TTL: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Pending {
    client: String,
    /// The client's own id.
    id: Value,
    /// (upstream token, the client's token).
    progress: Option<(String, Value)>,
}

#[derive(Default)]
struct Tables {
    /// Upstream id → the client request it stands for.
    pending: HashMap<String, Pending>,
    /// (client, the client's id as JSON text) → upstream id: for `notifications/cancelled`.
    by_client: HashMap<(String, String), String>,
    /// Upstream progress token → (client, the client's token).
    progress: HashMap<String, (String, Value)>,
    /// Server request id (JSON text) → the client it was sent to.
    server_requests: HashMap<String, (String, Instant)>,
}

/// What a client's request body became.
#[derive(Debug, Default)]
pub struct Rewritten {
    pub body: Vec<u8>,
    /// Upstream ids registered for it: released when the request ends, answered or not.
    pub ids: Vec<String>,
}

/// Why a client's message cannot go to the shared session.
#[derive(Debug, PartialEq, Eq)]
pub enum MuxError {
    NotJson,
    /// An answer to a server request that was sent to another client.
    NotYourRequest(String),
}

pub struct Mux {
    tag: String,
    next: AtomicU64,
    tables: Mutex<Tables>,
}

impl Default for Mux {
    fn default() -> Self {
        Self::new()
    }
}

fn key(id: &Value) -> String {
    id.to_string()
}

impl Mux {
    pub fn new() -> Mux {
        Mux {
            // unique per process: a shared session re-established on another pod gets ids that
            // cannot meet these
            tag: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
            next: AtomicU64::new(1),
            tables: Mutex::new(Tables::default()),
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, kind: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("mx{}{kind}-{n}", self.tag)
    }

    /// Rewrites a client's message (or batch) for the shared session.
    pub fn rewrite_request(&self, client: &str, body: &[u8]) -> Result<Rewritten, MuxError> {
        let mut v: Value = serde_json::from_slice(body).map_err(|_| MuxError::NotJson)?;
        let mut ids = Vec::new();
        let result = match &mut v {
            Value::Array(items) => items
                .iter_mut()
                .try_for_each(|m| self.rewrite_one(client, m, &mut ids)),
            m => self.rewrite_one(client, m, &mut ids),
        };
        if let Err(e) = result {
            self.release(&ids);
            return Err(e);
        }
        Ok(Rewritten {
            body: serde_json::to_vec(&v).expect("a Value serialises"),
            ids,
        })
    }

    fn rewrite_one(
        &self,
        client: &str,
        msg: &mut Value,
        ids: &mut Vec<String>,
    ) -> Result<(), MuxError> {
        let Some(m) = msg.as_object_mut() else {
            return Ok(());
        };
        let has_method = m.get("method").is_some_and(Value::is_string);
        match (has_method, m.get("id").cloned()) {
            // a request: a fresh id, and a fresh progress token if it asks for progress
            (true, Some(id)) if !id.is_null() => {
                let upstream = self.fresh("");
                let progress = progress_token(m).map(|token| {
                    let fresh = self.fresh("p");
                    set_progress_token(m, Value::String(fresh.clone()));
                    (fresh, token)
                });
                m.insert("id".into(), Value::String(upstream.clone()));
                let mut t = self.tables();
                t.by_client
                    .insert((client.to_string(), key(&id)), upstream.clone());
                if let Some((fresh, token)) = &progress {
                    t.progress
                        .insert(fresh.clone(), (client.to_string(), token.clone()));
                }
                t.pending.insert(
                    upstream.clone(),
                    Pending {
                        client: client.to_string(),
                        id,
                        progress,
                    },
                );
                ids.push(upstream);
            }
            // a notification: a cancellation names the client's id
            (true, _) => {
                if m.get("method").and_then(Value::as_str) == Some("notifications/cancelled") {
                    let asked = m.get("params").and_then(|p| p.get("requestId")).cloned();
                    if let Some(asked) = asked {
                        let t = self.tables();
                        let mapped = t.by_client.get(&(client.to_string(), key(&asked)));
                        // an id that is not pending maps to nothing another client uses
                        let to = mapped
                            .cloned()
                            .unwrap_or_else(|| format!("mx-gone-{asked}"));
                        drop(t);
                        if let Some(p) = m.get_mut("params").and_then(Value::as_object_mut) {
                            p.insert("requestId".into(), Value::String(to));
                        }
                    }
                }
            }
            // an answer to a server request: only from the client the request went to
            (false, Some(id)) => {
                let mut t = self.tables();
                match t.server_requests.get(&key(&id)) {
                    Some((owner, _)) if owner != client => {
                        return Err(MuxError::NotYourRequest(key(&id)));
                    }
                    Some(_) => {
                        t.server_requests.remove(&key(&id));
                    }
                    None => {}
                }
            }
            (false, None) => {}
        }
        Ok(())
    }

    /// Restores one message (or batch) of the upstream's answer stream for `client`. Returns
    /// whether anything changed.
    pub fn restore(&self, client: &str, msg: &mut Value) -> bool {
        match msg {
            Value::Array(items) => {
                let mut changed = false;
                for m in items {
                    changed |= self.restore(client, m);
                }
                changed
            }
            Value::Object(m) => self.restore_one(client, m),
            _ => false,
        }
    }

    fn restore_one(&self, client: &str, m: &mut Map<String, Value>) -> bool {
        let method = m.get("method").and_then(Value::as_str).map(str::to_string);
        match (method, m.get("id").cloned()) {
            // an answer to a client request
            (None, Some(Value::String(upstream))) => {
                let mut t = self.tables();
                let Some(p) = t.pending.remove(&upstream) else {
                    return false;
                };
                t.by_client.remove(&(p.client.clone(), key(&p.id)));
                if let Some((fresh, _)) = &p.progress {
                    t.progress.remove(fresh);
                }
                m.insert("id".into(), p.id);
                true
            }
            // a server request on this client's stream is this client's to answer
            (Some(_), Some(id)) if !id.is_null() => {
                let now = Instant::now();
                let mut t = self.tables();
                if t.server_requests.len() > 10_000 {
                    t.server_requests
                        .retain(|_, (_, at)| now.duration_since(*at) < SERVER_REQUEST_TTL);
                }
                t.server_requests
                    .insert(key(&id), (client.to_string(), now));
                false
            }
            (Some(method), None) => {
                let params = m.get_mut("params").and_then(Value::as_object_mut);
                let Some(params) = params else {
                    return false;
                };
                let t = self.tables();
                match method.as_str() {
                    "notifications/progress" => {
                        let token = params.get("progressToken").and_then(Value::as_str);
                        match token.and_then(|tok| t.progress.get(tok)) {
                            Some((_, original)) => {
                                params.insert("progressToken".into(), original.clone());
                                true
                            }
                            None => false,
                        }
                    }
                    "notifications/cancelled" => {
                        let id = params.get("requestId").and_then(Value::as_str);
                        match id.and_then(|id| t.pending.get(id)) {
                            Some(p) => {
                                params.insert("requestId".into(), p.id.clone());
                                true
                            }
                            None => false,
                        }
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// Forgets a request's ids (it ended: answered, failed, or the client went away).
    pub fn release(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut t = self.tables();
        for id in ids {
            if let Some(p) = t.pending.remove(id) {
                t.by_client.remove(&(p.client.clone(), key(&p.id)));
                if let Some((fresh, _)) = &p.progress {
                    t.progress.remove(fresh);
                }
            }
        }
    }

    /// Requests in flight (a gauge, and a leak check in tests).
    pub fn pending(&self) -> usize {
        self.tables().pending.len()
    }
}

fn progress_token(m: &Map<String, Value>) -> Option<Value> {
    m.get("params")?
        .get("_meta")?
        .get("progressToken")
        .filter(|t| !t.is_null())
        .cloned()
}

fn set_progress_token(m: &mut Map<String, Value>, token: Value) {
    if let Some(meta) = m
        .get_mut("params")
        .and_then(|p| p.get_mut("_meta"))
        .and_then(Value::as_object_mut)
    {
        meta.insert("progressToken".into(), token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rewrite(mux: &Mux, client: &str, v: Value) -> (Value, Vec<String>) {
        let r = mux
            .rewrite_request(client, v.to_string().as_bytes())
            .unwrap();
        (serde_json::from_slice(&r.body).unwrap(), r.ids)
    }

    #[test]
    fn colliding_ids_get_distinct_upstream_ids_and_come_back() {
        let mux = Mux::new();
        let (a, _) = rewrite(
            &mux,
            "A",
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call"}),
        );
        let (b, _) = rewrite(
            &mux,
            "B",
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call"}),
        );
        assert_ne!(a["id"], b["id"]);
        assert!(a["id"].as_str().unwrap().starts_with("mx"));
        // answers come back in any order, each to its own client with the client's id
        let mut answer_b = json!({"jsonrpc":"2.0","id":b["id"],"result":{"v":"b"}});
        assert!(mux.restore("B", &mut answer_b));
        assert_eq!(answer_b["id"], 1);
        let mut answer_a = json!({"jsonrpc":"2.0","id":a["id"],"result":{"v":"a"}});
        assert!(mux.restore("A", &mut answer_a));
        assert_eq!(answer_a, json!({"jsonrpc":"2.0","id":1,"result":{"v":"a"}}));
        assert_eq!(mux.pending(), 0);
        // string ids and batches too
        let (batch, ids) = rewrite(
            &mux,
            "A",
            json!([{"id":"x","method":"ping"},{"method":"notifications/initialized"}]),
        );
        assert_eq!(ids.len(), 1);
        assert_eq!(batch[0]["id"], json!(ids[0]));
        assert!(batch[1].get("id").is_none());
        mux.release(&ids);
        assert_eq!(mux.pending(), 0);
    }

    #[test]
    fn progress_tokens_and_cancellations_are_translated() {
        let mux = Mux::new();
        let (a, ids) = rewrite(
            &mux,
            "A",
            json!({"id":0,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":0}}}),
        );
        let token = a["params"]["_meta"]["progressToken"].clone();
        assert_ne!(token, json!(0));
        let mut note = json!({"method":"notifications/progress","params":{"progressToken":token,"progress":1}});
        assert!(mux.restore("A", &mut note));
        assert_eq!(note["params"]["progressToken"], 0);
        let (cancel, _) = rewrite(
            &mux,
            "A",
            json!({"method":"notifications/cancelled","params":{"requestId":0}}),
        );
        assert_eq!(cancel["params"]["requestId"], json!(ids[0]));
        // another client cancelling "its" id 0 cannot reach A's request
        let (other, _) = rewrite(
            &mux,
            "B",
            json!({"method":"notifications/cancelled","params":{"requestId":0}}),
        );
        assert_ne!(other["params"]["requestId"], json!(ids[0]));
        mux.release(&ids);
        let mut late = json!({"method":"notifications/progress","params":{"progressToken":token}});
        assert!(!mux.restore("A", &mut late));
    }

    #[test]
    fn server_requests_are_answered_only_by_their_client() {
        let mux = Mux::new();
        let mut sampling =
            json!({"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","params":{}});
        assert!(!mux.restore("A", &mut sampling));
        assert_eq!(sampling["id"], 7);
        let answer = json!({"jsonrpc":"2.0","id":7,"result":{}}).to_string();
        assert_eq!(
            mux.rewrite_request("B", answer.as_bytes()).unwrap_err(),
            MuxError::NotYourRequest("7".into())
        );
        let r = mux.rewrite_request("A", answer.as_bytes()).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap()["id"], 7);
        assert!(r.ids.is_empty());
        assert_eq!(
            mux.rewrite_request("A", b"{nope").unwrap_err(),
            MuxError::NotJson
        );
    }
}

//! The bridge's own HTTP/1.1 calls to this pod's legacy MCP server, over Pingora's pooled
//! connector (keep-alive connections are reused, so a bridged request costs no new
//! connection). An answer is read message by message, whether it is one JSON body or an SSE
//! stream, and a call can stay open (an MRTR round) while nothing reads it.

use crate::protocol::messages::{event_data, EventScanner};
use crate::route::Route;
use crate::telemetry::trace::{self, KeyValue, SpanKind};
use bytes::Bytes;
use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use serde_json::Value;
use std::time::Duration;

/// What a call to the legacy server came to, before its body.
#[derive(Debug)]
pub enum CallError {
    /// No connection, or it broke before an answer head.
    Unreachable(String),
    /// The server answered with this status and body (not a 2xx).
    Status(u16, Vec<u8>),
    /// The answer is not JSON-RPC the bridge can read.
    Garbled(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "the MCP server could not be reached: {e}"),
            CallError::Status(s, _) => write!(f, "the MCP server answered {s}"),
            CallError::Garbled(e) => write!(f, "the MCP server's answer is unreadable: {e}"),
        }
    }
}

/// Connections to the legacy servers of this pod.
pub struct Client {
    connector: Connector,
    connect_timeout: Duration,
    idle: Duration,
    max_held: usize,
}

/// One call's answer, read a message at a time.
pub struct Answer {
    http: Box<HttpSession>,
    peer: HttpPeer,
    pub status: u16,
    pub session_id: Option<String>,
    sse: bool,
    held: Vec<u8>,
    scanner: EventScanner,
    done: bool,
    /// Not read to its end: the connection cannot be reused.
    broken: bool,
}

impl Client {
    pub fn new(connect_timeout: Duration, idle: Duration, max_held: usize) -> Client {
        Client {
            connector: Connector::new(None),
            connect_timeout,
            idle,
            max_held,
        }
    }

    fn peer(&self, route: &Route) -> HttpPeer {
        let mut peer = HttpPeer::new(route.upstream_addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.idle_timeout = Some(self.idle);
        peer
    }

    /// POSTs one JSON-RPC message to the route's MCP server and reads the answer head.
    /// A pooled connection that turns out closed is replaced once.
    pub async fn post(
        &self,
        route: &Route,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Answer, CallError> {
        // a child of the request's span; the MCP server continues the trace from it, in the
        // headers and in the message's _meta (the bridge wrote the message anyway)
        let span = trace::current_child("mcp_sidecar.upstream_call", SpanKind::Client);
        let traced = span.with_meta(std::str::from_utf8(body).unwrap_or_default());
        let body = traced.as_deref().map_or(body, str::as_bytes);
        let fields = span.inject();
        let with_trace: Vec<(String, String)>;
        let headers = if fields.is_empty() {
            headers
        } else {
            with_trace = headers
                .iter()
                .cloned()
                .chain(fields.into_iter().map(|(k, v)| (k.to_string(), v)))
                .collect();
            &with_trace
        };
        let result = self.post_once(route, path, headers, body).await;
        span.set(|| {
            let mut a = vec![KeyValue::new(
                "server.address",
                route.upstream_authority.clone(),
            )];
            if let Ok(m) = crate::protocol::jsonrpc::Envelope::parse(body) {
                if let Some(m) = m.method() {
                    a.push(KeyValue::new("mcp.method.name", m.to_string()));
                }
            }
            a
        });
        span.end(match &result {
            Ok(_) => None,
            Err(CallError::Status(..)) => Some("http_error"),
            Err(_) => Some("unreachable"),
        });
        result
    }

    async fn post_once(
        &self,
        route: &Route,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Answer, CallError> {
        let peer = self.peer(route);
        let mut last = String::new();
        for _ in 0..2 {
            let (mut http, reused) = self
                .connector
                .get_http_session(&peer)
                .await
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            let head = request_head(route, path, headers, body.len())
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            let sent = async {
                http.write_request_header(Box::new(head)).await?;
                http.write_body(body).await?;
                http.finish_body().await?;
                http.read_response().await
            }
            .await;
            match sent {
                Ok(_) => {
                    let resp = http.resp_header().expect("read_response read a head");
                    let status = resp.status.as_u16();
                    let sse = resp
                        .headers
                        .get("content-type")
                        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                    let session_id = resp
                        .headers
                        .get(crate::protocol::headers::MCP_SESSION_ID)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let mut answer = Answer {
                        http: Box::new(http),
                        peer,
                        status,
                        session_id,
                        sse,
                        held: Vec::new(),
                        scanner: EventScanner::default(),
                        done: false,
                        broken: false,
                    };
                    if !(200..300).contains(&status) {
                        let body = answer.read_all(64 * 1024).await;
                        return Err(CallError::Status(status, body));
                    }
                    return Ok(answer);
                }
                Err(e) if reused => last = e.to_string(),
                Err(e) => return Err(CallError::Unreachable(e.to_string())),
            }
        }
        Err(CallError::Unreachable(last))
    }

    /// Gives a finished answer's connection back to the pool.
    pub async fn release(&self, mut answer: Answer) {
        if answer.done && !answer.broken && answer.http.is_body_done() {
            self.connector
                .release_http_session(*answer.http, &answer.peer, Some(self.idle))
                .await;
        } else {
            answer.http.shutdown().await;
        }
    }

    pub fn max_held(&self) -> usize {
        self.max_held
    }
}

fn request_head(
    route: &Route,
    path: &str,
    headers: &[(String, String)],
    len: usize,
) -> pingora::Result<RequestHeader> {
    let mut head = RequestHeader::build("POST", path.as_bytes(), Some(headers.len() + 5))?;
    head.insert_header("host", route.upstream_authority.as_str())?;
    head.insert_header("content-type", "application/json")?;
    head.insert_header("accept", "application/json, text/event-stream")?;
    head.insert_header("content-length", len.to_string())?;
    for (name, value) in headers {
        // values come from stored or client data: one that could end a line is refused by
        // the header types, never written
        head.insert_header(name.clone(), value.as_str())?;
    }
    Ok(head)
}

impl Answer {
    /// Whether the answer is an SSE stream (else one JSON body, or none).
    pub fn is_stream(&self) -> bool {
        self.sse
    }

    /// The next JSON-RPC message of the answer; `None` when it ended.
    pub async fn next(&mut self, max_held: usize) -> Result<Option<Value>, CallError> {
        if !self.sse {
            if self.done {
                return Ok(None);
            }
            let body = self.read_all(max_held).await;
            if body.is_empty() {
                return Ok(None);
            }
            return serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| CallError::Garbled(e.to_string()));
        }
        loop {
            if let Some(n) = self.scanner.next_end(&self.held) {
                let event: Vec<u8> = self.held.drain(..n).collect();
                let text = String::from_utf8_lossy(&event);
                let (data, _) = event_data(&text);
                if data.trim().is_empty() {
                    // a comment, or an event without data (a priming event)
                    continue;
                }
                return serde_json::from_str(&data)
                    .map(Some)
                    .map_err(|e| CallError::Garbled(e.to_string()));
            }
            if self.done {
                return Ok(None);
            }
            if self.held.len() > max_held {
                return Err(CallError::Garbled(
                    "an event exceeds limits.max_held_message".into(),
                ));
            }
            match self.http.read_body_bytes().await {
                Ok(Some(chunk)) => self.held.extend_from_slice(&chunk),
                Ok(None) => self.done = true,
                Err(e) => {
                    self.broken = true;
                    return Err(CallError::Unreachable(e.to_string()));
                }
            }
        }
    }

    /// The rest of the body. Cancel-safe: what was read stays held for the next call (a call
    /// waits on its answer and its session's GET stream at once).
    async fn read_all(&mut self, max: usize) -> Vec<u8> {
        while !self.done {
            match self.http.read_body_bytes().await {
                Ok(Some(chunk)) if self.held.len() + chunk.len() <= max => {
                    self.held.extend_from_slice(&chunk)
                }
                Ok(Some(_)) | Err(_) => {
                    self.done = true;
                    self.broken = true;
                    self.held.clear();
                    return Vec::new();
                }
                Ok(None) => self.done = true,
            }
        }
        std::mem::take(&mut self.held)
    }

    /// Reads what is left so the connection can be reused (a 202's empty body).
    pub async fn drain(&mut self) {
        let _ = self.read_all(64 * 1024).await;
    }
}

/// A body of bytes as the bridge writes it downstream.
pub fn sse_event(msg: &Value) -> Bytes {
    let mut out = b"event: message\ndata: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(msg).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

//! Answers the sidecar writes itself: JSON-RPC error bodies with the right HTTP status, and the
//! mapping from proxy failures to those answers.

use super::RequestCtx;
use crate::protocol::headers::X_REQUEST_ID;
use crate::protocol::jsonrpc::{code, error_body, error_body_with_data};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::{ErrorSource, ErrorType};

/// Why the sidecar refused, where spans and the audit log tell it apart (one byte: a refusal
/// travels in `Result`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The caller's `tool_groups` do not allow the tool.
    ToolDenied,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::ToolDenied => "tool_denied",
        }
    }
}

/// A refusal the sidecar answers itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub code: i64,
    pub message: String,
    /// `WWW-Authenticate` of a 401.
    pub challenge: Option<String>,
    /// Seconds for `Retry-After` (a 503 the client may try again).
    pub retry_after: Option<u64>,
    /// The error's `data` member (the supported versions of a modern version refusal).
    pub data: Option<serde_json::Value>,
    /// Why, for spans and the audit log, when the status alone does not say it.
    pub reason: Option<Reason>,
}

impl Refusal {
    pub fn new(status: u16, code: i64, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
            challenge: None,
            retry_after: None,
            data: None,
            reason: None,
        }
    }

    pub fn with_reason(mut self, reason: Reason) -> Refusal {
        self.reason = Some(reason);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Refusal {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_challenge(mut self, challenge: Option<String>) -> Refusal {
        self.challenge = challenge;
        self
    }
}

/// Writes `refusal` as a JSON-RPC error response. The id echoes the request's when known.
pub async fn send(session: &mut Session, ctx: &RequestCtx, refusal: &Refusal) -> Result<()> {
    let id = ctx.envelope.as_ref().and_then(|e| e.request_id());
    let body = match &refusal.data {
        Some(data) => error_body_with_data(id, refusal.code, &refusal.message, data),
        None => error_body(id, refusal.code, &refusal.message),
    };
    let mut resp = ResponseHeader::build(refusal.status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
    if let Some(c) = &refusal.challenge {
        resp.insert_header("www-authenticate", c.as_str())?;
    }
    if let Some(s) = refusal.retry_after {
        resp.insert_header("retry-after", s.to_string())?;
    }
    ctx.apply_cors(&mut resp);
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// The answer for a failure while proxying, and the metrics label of its kind. `None` when the
/// downstream connection is already gone and nothing can be written.
pub fn for_proxy_error(e: &Error, server_name: &str) -> (Option<Refusal>, &'static str) {
    use ErrorType::*;
    if let HTTPStatus(status) = e.etype() {
        let refusal = match status {
            413 => Refusal::new(
                413,
                code::INVALID_REQUEST,
                "request body exceeds the sidecar's limit",
            ),
            s => Refusal::new(
                *s,
                code::SERVER_ERROR,
                format!("request refused with status {s}"),
            ),
        };
        return (Some(refusal), "status");
    }
    match e.esource() {
        ErrorSource::Upstream => {
            let (status, kind, what) = match e.etype() {
                ConnectRefused => (502, "connect_refused", "refused the connection"),
                ConnectTimedout => (
                    504,
                    "connect_timeout",
                    "did not accept the connection in time",
                ),
                ReadTimedout => (504, "read_timeout", "did not answer in time"),
                WriteTimedout => (504, "write_timeout", "did not read the request in time"),
                ConnectionClosed => (502, "closed", "closed the connection"),
                ConnectNoRoute | ConnectError | SocketError | BindError => {
                    (502, "connect_error", "could not be reached")
                }
                _ => (502, "protocol_error", "sent an invalid response"),
            };
            let msg = format!("upstream MCP server {server_name} {what}");
            (Some(Refusal::new(status, code::SERVER_ERROR, msg)), kind)
        }
        ErrorSource::Downstream => match e.etype() {
            WriteError | ReadError | ConnectionClosed => (None, "downstream_closed"),
            ReadTimedout => (
                Some(Refusal::new(
                    408,
                    code::INVALID_REQUEST,
                    "client sent the request too slowly",
                )),
                "downstream_timeout",
            ),
            _ => (
                Some(Refusal::new(
                    400,
                    code::INVALID_REQUEST,
                    "malformed HTTP request",
                )),
                "downstream_invalid",
            ),
        },
        ErrorSource::Internal | ErrorSource::Unset => (
            Some(Refusal::new(
                500,
                code::INTERNAL_ERROR,
                "internal error in the sidecar",
            )),
            "internal",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_map_to_gateway_statuses() {
        let e = Error::new(ErrorType::ConnectRefused).into_up();
        let (r, kind) = for_proxy_error(&e, "demo");
        let r = r.unwrap();
        assert_eq!((r.status, kind), (502, "connect_refused"));
        assert!(r.message.contains("demo"));
        let e = Error::new(ErrorType::ReadTimedout).into_up();
        assert_eq!(for_proxy_error(&e, "demo").0.unwrap().status, 504);
    }

    #[test]
    fn explicit_statuses_are_kept() {
        let e = Error::new(ErrorType::HTTPStatus(413));
        assert_eq!(for_proxy_error(&e, "demo").0.unwrap().status, 413);
    }

    #[test]
    fn dead_downstream_gets_nothing() {
        let e = Error::new(ErrorType::ConnectionClosed).into_down();
        assert!(for_proxy_error(&e, "demo").0.is_none());
    }
}

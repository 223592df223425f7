//! The sidecar's own requests to its local MCP server: replaying a session's initialize and
//! probing whether the server still knows a session. A deliberately small HTTP/1.1 client:
//! loopback only, `Connection: close`, bounded in time and size.

use crate::protocol::chunked::Chunked;
use crate::telemetry::trace::{self, KeyValue, SpanKind};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Answers larger than this are cut (an initialize or ping answer is a few KiB).
const MAX_ANSWER: usize = 1024 * 1024;

/// What the upstream answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Lower-cased header names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// POSTs `body` to `path` and reads the whole answer (JSON or a finite SSE stream). When a
/// request's span is current, the call is a child span of it, and the MCP server gets its
/// trace context in the headers and in the message's `_meta` (the sidecar wrote the message).
pub async fn post(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Answer> {
    let span = trace::current_child("mcp_sidecar.upstream_call", SpanKind::Client);
    let traced = span.with_meta(std::str::from_utf8(body).unwrap_or_default());
    let body = traced.as_deref().map_or(body, str::as_bytes);
    let fields = span.inject();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .copied()
        .chain(fields.iter().map(|(n, v)| (*n, v.as_str())))
        .collect();
    let answer = exchange(addr, authority, path, &headers, body, timeout).await;
    span.set(|| {
        let mut attrs = vec![KeyValue::new("server.address", authority.to_string())];
        if let Some(m) = crate::protocol::jsonrpc::Envelope::parse(body)
            .ok()
            .and_then(|e| e.method().map(str::to_string))
        {
            attrs.push(KeyValue::new("mcp.method.name", m));
        }
        if let Ok(a) = &answer {
            attrs.push(KeyValue::new(
                "http.response.status_code",
                i64::from(a.status),
            ));
        }
        attrs
    });
    span.end(match &answer {
        Ok(a) if a.status >= 400 => Some("http_error"),
        Ok(_) => None,
        Err(_) => Some("io_error"),
    });
    answer
}

async fn exchange(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Answer> {
    // every value here ends up in a header line written by hand: one that could end the line
    // (stored client data, a token) is refused, never sent
    for (name, value) in headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            return Err(invalid(&format!(
                "header {name} has a value that cannot be sent"
            )));
        }
    }
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut raw = Vec::with_capacity(4096);
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 || raw.len() + n > MAX_ANSWER {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            // a server may keep the connection open despite `Connection: close` (Express does
            // for SSE answers): stop at the end of the framed body
            if is_complete(&raw) {
                break;
            }
        }
        parse(&raw)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "upstream did not answer in time",
        )
    })?
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Parses a complete HTTP/1.1 response.
fn parse(raw: &[u8]) -> std::io::Result<Answer> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("incomplete response head"))?;
    let head =
        std::str::from_utf8(&raw[..end]).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Whether `raw` holds a whole response: its head and a body complete by Content-Length or
/// chunked framing. Unframed bodies end with the connection.
fn is_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let Ok(head) = std::str::from_utf8(&raw[..end]) else {
        return false;
    };
    let body = &raw[end + 4..];
    let mut length = None;
    for (name, value) in head.split("\r\n").skip(1).filter_map(|l| l.split_once(':')) {
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            let mut decoder = Chunked::default();
            let mut sink = Vec::new();
            return decoder.decode(body, &mut sink).is_ok() && decoder.is_done();
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    length.is_some_and(|n| body.len() >= n)
}

/// Decodes chunked transfer coding as far as it is complete and valid.
fn dechunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    // on malformed framing, what was decoded before it is kept
    let _ = Chunked::default().decode(data, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_answers() {
        let a = parse(b"HTTP/1.1 200 OK\r\nMcp-Session-Id: abc\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.header("mcp-session-id"), Some("abc"));
        assert_eq!(a.body, b"{}");
        let a = parse(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap();
        assert_eq!(a.status, 404);
        assert_eq!(a.body, b"hello world");
    }

    #[test]
    fn a_framed_answer_is_complete_without_waiting_for_the_connection_to_close() {
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"));
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{"
        ));
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        ));
        let sse = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
        assert!(!is_complete(sse));
        assert!(is_complete(&[&sse[..], b"0\r\n\r\n"].concat()));
        // no framing: the connection's end is the body's end
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\n\r\ndata"));
    }

    #[tokio::test]
    async fn a_header_value_that_could_end_its_line_is_never_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let err = post(
            addr,
            "127.0.0.1",
            "/mcp",
            &[(
                "mcp-protocol-version",
                "2025-06-18\r\nX-MCPHub-User-Id: admin",
            )],
            b"{}",
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("mcp-protocol-version"), "{err}");
        // nothing connected, so nothing was written
        let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(accepted.is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(b"").is_err());
        assert!(parse(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert_eq!(dechunk(b"zz\r\nabc"), b"");
        assert_eq!(dechunk(b"10\r\nabc"), b"abc");
    }
}

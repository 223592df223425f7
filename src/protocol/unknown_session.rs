//! Recognising "this server does not know that session" in every form real MCP servers send it.
//! The README's "Unknown-session answers" table mirrors `PATTERNS`.

/// (HTTP status, text the body contains). Matching is on status plus a substring, so both JSON
/// and plain-text bodies, with any JSON-RPC id, are recognised.
const PATTERNS: &[(u16, &str)] = &[
    // python mcp >= 1.26 (JSON -32600, id "server-error" or null), TS SDK transport (-32001),
    // rmcp ("Not Found: Session not found")
    (404, "Session not found"),
    // python mcp, legacy SSE transport
    (404, "Could not find session"),
    // python mcp <= 1.25, TS example servers and server-everything (-32000)
    (400, "No valid session ID provided"),
    // python mcp, legacy SSE: a session id that is not a UUID hex
    (400, "Invalid session ID"),
];

/// Whether an upstream answer says the session is unknown to it.
pub fn is_unknown_session(status: u16, body: &[u8]) -> bool {
    PATTERNS.iter().any(|(s, text)| {
        *s == status
            && body
                .windows(text.len())
                .any(|w| w.eq_ignore_ascii_case(text.as_bytes()))
    })
}

/// Statuses that may carry such an answer: only these are worth a closer look.
pub fn may_be_unknown_session(status: u16) -> bool {
    PATTERNS.iter().any(|(s, _)| *s == status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_server_answers_are_recognised() {
        // bodies as the servers send them (see notes/mcp-transport.md)
        assert!(is_unknown_session(404, br#"{"jsonrpc":"2.0","id":"server-error","error":{"code":-32600,"message":"Session not found"}}"#));
        assert!(is_unknown_session(
            404,
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Session not found"}}"#
        ));
        assert!(is_unknown_session(
            404,
            br#"{"jsonrpc":"2.0","error":{"code":-32001,"message":"Session not found"},"id":null}"#
        ));
        assert!(is_unknown_session(404, b"Not Found: Session not found"));
        assert!(is_unknown_session(404, b"Could not find session"));
        assert!(is_unknown_session(
            400,
            b"Bad Request: No valid session ID provided"
        ));
        assert!(is_unknown_session(400, br#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":null}"#));
    }

    #[test]
    fn other_errors_are_not() {
        assert!(!is_unknown_session(400, b"Bad Request: Missing session ID"));
        assert!(!is_unknown_session(404, b"Not Found"));
        assert!(!is_unknown_session(200, b"Session not found"));
        assert!(!is_unknown_session(
            400,
            br#"{"error":{"code":-32700,"message":"Parse error"}}"#
        ));
        assert!(may_be_unknown_session(404) && may_be_unknown_session(400));
        assert!(!may_be_unknown_session(500));
    }
}

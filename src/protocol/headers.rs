//! Header names the MCP HTTP transports use, and the checks the sidecar applies to them.

/// Assigned by the server on the initialize response; sent by the client on every later request.
pub const MCP_SESSION_ID: &str = "mcp-session-id";
pub const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";
pub const LAST_EVENT_ID: &str = "last-event-id";
pub const X_REQUEST_ID: &str = "x-request-id";

/// Longest request id taken from a client; longer ones are replaced, not truncated.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Longest session id accepted (SDKs issue 32 to 36 characters); ids are stored, logged and
/// used in store keys, so a client cannot make them arbitrarily long.
pub const MAX_SESSION_ID_LEN: usize = 256;

/// The spec allows only visible ASCII (0x21..=0x7E) in a session id.
pub fn is_valid_session_id(value: &[u8]) -> bool {
    (1..=MAX_SESSION_ID_LEN).contains(&value.len())
        && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Whether a protocol version looks like one (`2025-06-18`): what the sidecar stores from an
/// `initialize` and later writes into a header of its own upstream requests.
pub fn is_protocol_version(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// The client's `X-Request-Id` when it is sane, else a fresh UUID.
pub fn request_id(client_value: Option<&[u8]>) -> String {
    match client_value {
        Some(v) if v.len() <= MAX_REQUEST_ID_LEN && is_valid_session_id(v) => {
            // checked ASCII above
            String::from_utf8_lossy(v).into_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_must_be_visible_ascii() {
        assert!(is_valid_session_id(b"3f2a9c7e-1b2d"));
        assert!(is_valid_session_id(b"!~"));
        assert!(!is_valid_session_id(b""));
        assert!(!is_valid_session_id(b"a b"));
        assert!(!is_valid_session_id(b"a\tb"));
        assert!(!is_valid_session_id("caf\u{e9}".as_bytes()));
        assert!(!is_valid_session_id(b"a\x7f"));
        assert!(is_valid_session_id(&[b'a'; MAX_SESSION_ID_LEN]));
        assert!(!is_valid_session_id(&[b'a'; MAX_SESSION_ID_LEN + 1]));
    }

    #[test]
    fn protocol_versions_are_dates() {
        assert!(is_protocol_version("2025-06-18"));
        assert!(is_protocol_version("2024-11-05"));
        assert!(!is_protocol_version(
            "2025-06-18\r\nX-MCPHub-User-Id: alice"
        ));
        assert!(!is_protocol_version("2025-6-18"));
        assert!(!is_protocol_version("latest"));
        assert!(!is_protocol_version(""));
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        assert_eq!(request_id(Some(b"req-42")), "req-42");
        let generated = request_id(Some(b"has space"));
        assert_eq!(generated.len(), 36);
        assert_ne!(request_id(None), request_id(None));
        assert_eq!(request_id(Some(&[b'a'; 200])).len(), 36);
    }
}

//! Legacy HTTP+SSE (protocol 2024-11-05) across pods.
//!
//! The client holds `GET /sse` open; the server's first event, `endpoint`, names where to post
//! messages (`/messages/?session_id=<32 hex>` from the Python SDK, `/message?sessionId=<uuid>`
//! from the TypeScript SDK), and every answer arrives on the stream. The session lives in the
//! process that holds the stream, so it cannot be replayed elsewhere: the sidecar relays the
//! stream itself (`proxy::relay`), registers the session with its owner pod when the
//! `endpoint` event passes, forwards posts that land on other pods to the owner over the
//! signed peer hop, keeps idle streams alive with comment lines, and removes the session when
//! the stream closes. A post for a session whose owner is gone gets 404 `Could not find
//! session`, which makes clients reconnect.
//!
//! This module holds the pure parts: reading the session id from a message URL, finding and
//! rewriting the `endpoint` event, and tracking SSE event boundaries.

pub mod sse;

/// Query parameters that carry a legacy session id: Python SDK, TypeScript SDK.
const SESSION_PARAMS: [&str; 2] = ["session_id", "sessionId"];

/// The legacy session id in a message URL's query, if it has one the sidecar can route by.
/// Ids are what the SDKs issue (hex, UUIDs): ASCII letters, digits, `-` and `_`, at most 128;
/// anything else is left to the MCP server to refuse.
pub fn session_id_from_query(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (SESSION_PARAMS.contains(&name) && is_routable_id(value)).then_some(value)
    })
}

fn is_routable_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The session id in an `endpoint` event's data (a path with a query, or a full URL).
pub fn session_id_from_endpoint(endpoint: &str) -> Option<&str> {
    let (_, query) = endpoint.split_once('?')?;
    let query = query.split('#').next().unwrap_or(query);
    session_id_from_query(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_of_both_sdks() {
        assert_eq!(
            session_id_from_query("session_id=0123456789abcdef0123456789abcdef"),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(
            session_id_from_query("x=1&sessionId=6f1c2a4e-1b2c-4d5e-8f90-1234567890ab"),
            Some("6f1c2a4e-1b2c-4d5e-8f90-1234567890ab")
        );
        assert_eq!(session_id_from_query("session_id="), None);
        assert_eq!(session_id_from_query("session_id=a%20b"), None);
        assert_eq!(session_id_from_query("session_id=a*b"), None);
        assert_eq!(
            session_id_from_query(&format!("sessionId={}", "a".repeat(129))),
            None
        );
        assert_eq!(session_id_from_query("other=abc"), None);
        assert_eq!(session_id_from_query("key=mcphub_x"), None);
    }

    #[test]
    fn session_ids_in_endpoints() {
        assert_eq!(
            session_id_from_endpoint("/messages/?session_id=ab12"),
            Some("ab12")
        );
        assert_eq!(
            session_id_from_endpoint("http://127.0.0.1:3001/message?sessionId=u-1#frag"),
            Some("u-1")
        );
        assert_eq!(session_id_from_endpoint("/messages/"), None);
    }
}

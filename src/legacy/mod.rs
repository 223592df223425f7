//! Legacy HTTP+SSE (protocol 2024-11-05) across pods.
//!
//! The client holds `GET /sse` open; the server's first event, `endpoint`, names where to post
//! messages (`/messages/?session_id=<32 hex>` from the Python SDK, `/message?sessionId=<uuid>`
//! from the TypeScript SDK), and every answer arrives on the stream. The session lives in the
//! process that holds the stream, so it cannot be replayed elsewhere: the sidecar relays the
//! stream itself (`proxy/plan/legacy_stream.rs`), registers the session with its owner pod when the
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

/// The legacy session a message URL's query names: the parameter and the id. A query naming
/// no session gives `Ok(None)`. Refused (`Err`, the reason): more than one session parameter
/// (in either SDK's spelling, percent-encoded or not: the MCP server decodes names, and would
/// act on a different one than the sidecar judged), or an id that is not what the SDKs issue
/// (ASCII letters, digits, `-` and `_`, at most 128, not encoded).
pub fn message_session(query: &str) -> Result<Option<(&'static str, &str)>, &'static str> {
    let mut found = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(param) = SESSION_PARAMS.iter().find(|p| decoded_eq(name, p)) else {
            continue;
        };
        if found.is_some() {
            return Err("a message URL must name exactly one session");
        }
        if !is_routable_id(value) {
            return Err(
                "the session id in the message URL is not in the form the stream announced",
            );
        }
        found = Some((*param, value));
    }
    Ok(found)
}

/// The legacy session id in a message URL's query, when it names exactly one.
pub fn session_id_from_query(query: &str) -> Option<&str> {
    message_session(query).ok().flatten().map(|(_, id)| id)
}

/// Whether a query parameter name, as the MCP server will decode it (`%XX`, `+`), is `want`.
fn decoded_eq(raw: &str, want: &str) -> bool {
    let raw = raw.as_bytes();
    let mut want = want.bytes();
    let mut i = 0;
    while i < raw.len() {
        let b = match raw[i] {
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        i += 2;
                        b
                    }
                    None => b'%',
                }
            }
            b'+' => b' ',
            b => b,
        };
        if want.next() != Some(b) {
            return false;
        }
        i += 1;
    }
    want.next().is_none()
}

fn is_routable_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The session an `endpoint` event's data announces (a path with a query, or a full URL): the
/// parameter it is posted in, and the id.
pub fn endpoint_session(endpoint: &str) -> Option<(&'static str, &str)> {
    let (_, query) = endpoint.split_once('?')?;
    let query = query.split('#').next().unwrap_or(query);
    message_session(query).ok().flatten()
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
        assert_eq!(message_session("x=1"), Ok(None));
        assert_eq!(
            message_session("session_id=ab"),
            Ok(Some(("session_id", "ab")))
        );
        assert_eq!(
            message_session("sessionId=ab"),
            Ok(Some(("sessionId", "ab")))
        );
        assert_eq!(
            session_id_from_query(&format!("sessionId={}", "a".repeat(129))),
            None
        );
        assert_eq!(session_id_from_query("other=abc"), None);
        assert_eq!(session_id_from_query("session_id_x=abc"), None);
        assert_eq!(session_id_from_query("key=mcphub_x"), None);
    }

    #[test]
    fn a_message_url_names_exactly_one_session_in_one_form() {
        // the bypass: the sidecar judged the first, the server acted on another
        for two in [
            "session_id=mine&session_id=victim",
            "sessionId=mine&session_id=victim",
            "session_id=mine&session%5Fid=victim",
            "session_id=mine&%73ession_id=victim",
            "session_id=mine&sessionId",
            "session_id=same&session_id=same",
        ] {
            assert_eq!(
                message_session(two),
                Err("a message URL must name exactly one session"),
                "{two}"
            );
            assert_eq!(session_id_from_query(two), None);
        }
        // encoded or unroutable ids are refused, not passed on for the server to decode
        for bad in [
            "session_id=%61%62",
            "session%5Fid=a%20b",
            "session_id=",
            "session_id",
        ] {
            assert!(message_session(bad).is_err(), "{bad}");
        }
        assert_eq!(
            message_session("session%5fid=ab"),
            Ok(Some(("session_id", "ab")))
        );
    }

    #[test]
    fn session_ids_in_endpoints() {
        assert_eq!(
            endpoint_session("/messages/?session_id=ab12"),
            Some(("session_id", "ab12"))
        );
        assert_eq!(
            endpoint_session("http://127.0.0.1:3001/message?sessionId=u-1#frag"),
            Some(("sessionId", "u-1"))
        );
        assert_eq!(endpoint_session("/messages/"), None);
    }
}

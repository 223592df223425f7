//! JSON-RPC 2.0 as MCP uses it: reading just the envelope (method, id) of a message without
//! materialising its params, and building error bodies.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Standard and MCP-transport error codes.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Implementation-defined server error; the SDKs use it for transport-level refusals.
    pub const SERVER_ERROR: i64 = -32000;
    /// What the TypeScript SDK answers for an unknown session.
    pub const SESSION_NOT_FOUND: i64 = -32001;
}

/// Methods the sidecar names in metrics; anything else is counted as `other` so a client
/// cannot grow the label set without bound.
const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "offerings/list",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "server/discover",
    "subscriptions/listen",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// The parts of a JSON-RPC message the sidecar routes and counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// A request (has `method` and `id`); `id` is kept as raw JSON so it round-trips exactly.
    Request {
        method: String,
        id: String,
    },
    Notification {
        method: String,
    },
    /// A client's answer to a server-initiated request.
    Response {
        id: String,
    },
    /// A JSON array of messages (2025-03-26 batching).
    Batch {
        len: usize,
    },
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    // every other member (params, result, error) is skipped unparsed
}

/// Why a body is not a JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not JSON at all (callers that must parse answer -32700).
    NotJson(String),
    /// JSON, but not a message object (-32600).
    NotAMessage,
}

impl Envelope {
    /// Reads the envelope of one message or batch. Params are skipped without allocation.
    pub fn parse(body: &[u8]) -> Result<Envelope, EnvelopeError> {
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => {
                let items: Vec<RawMessage> = serde_json::from_slice(body)
                    .map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
                Ok(Envelope::Batch { len: items.len() })
            }
            Some(b'{') => {
                let m: RawMessage = serde_json::from_slice(body).map_err(|e| {
                    if e.is_data() {
                        EnvelopeError::NotAMessage
                    } else {
                        EnvelopeError::NotJson(e.to_string())
                    }
                })?;
                let id = m.id.map(|r| r.get().to_string());
                match (m.method, id) {
                    (Some(method), Some(id)) => Ok(Envelope::Request {
                        method: method.into_owned(),
                        id,
                    }),
                    (Some(method), None) => Ok(Envelope::Notification {
                        method: method.into_owned(),
                    }),
                    (None, Some(id)) => Ok(Envelope::Response { id }),
                    (None, None) => Err(EnvelopeError::NotAMessage),
                }
            }
            Some(_) => Err(EnvelopeError::NotJson(
                "body is not a JSON object or array".into(),
            )),
            None => Err(EnvelopeError::NotJson("empty body".into())),
        }
    }

    pub fn method(&self) -> Option<&str> {
        match self {
            Envelope::Request { method, .. } | Envelope::Notification { method } => Some(method),
            _ => None,
        }
    }

    /// The raw JSON id of a request, for error bodies that must echo it.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Envelope::Request { id, .. } => Some(id),
            _ => None,
        }
    }

    /// A bounded metrics label for this message.
    pub fn label(&self) -> &'static str {
        match self {
            Envelope::Request { method, .. } | Envelope::Notification { method } => {
                method_label(method)
            }
            Envelope::Response { .. } => "response",
            Envelope::Batch { .. } => "batch",
        }
    }
}

/// A known method name as a `'static` label, or `other`.
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// The raw `params` of an `initialize` request and the protocol version it asks for: what a
/// recovery replays. Read only once per session, so a second parse is fine.
pub fn initialize_params(body: &[u8]) -> Option<(String, Option<String>)> {
    #[derive(Deserialize)]
    struct Init<'a> {
        #[serde(borrow)]
        params: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Params {
        #[serde(rename = "protocolVersion")]
        protocol_version: Option<String>,
    }
    let init: Init = serde_json::from_slice(body).ok()?;
    let version = serde_json::from_str::<Params>(init.params.get())
        .ok()
        .and_then(|p| p.protocol_version);
    Some((init.params.get().to_string(), version))
}

/// A JSON-RPC error body. `id` is raw JSON (as kept by [`Envelope`]); `None` gives `null`.
pub fn error_body(id: Option<&str>, code: i64, message: &str) -> Vec<u8> {
    let message = serde_json::to_string(message).expect("a string always serialises");
    format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":{code},"message":{message}}}}}"#,
        id.unwrap_or("null")
    )
    .into_bytes()
}

/// A JSON-RPC error body with a `data` member.
pub fn error_body_with_data(
    id: Option<&str>,
    code: i64,
    message: &str,
    data: &serde_json::Value,
) -> Vec<u8> {
    let message = serde_json::to_string(message).expect("a string always serialises");
    format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":{code},"message":{message},"data":{data}}}}}"#,
        id.unwrap_or("null")
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_requests_notifications_responses_and_batches() {
        let r = Envelope::parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","arguments":{"a":[1,2,{"b":"c"}]}}}"#).unwrap();
        assert_eq!(
            r,
            Envelope::Request {
                method: "tools/call".into(),
                id: "7".into()
            }
        );
        assert_eq!(r.label(), "tools/call");
        let n =
            Envelope::parse(br#" {"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n.method(), Some("notifications/initialized"));
        assert_eq!(n.request_id(), None);
        let resp = Envelope::parse(br#"{"jsonrpc":"2.0","id":"abc","result":{}}"#).unwrap();
        assert_eq!(
            resp,
            Envelope::Response {
                id: "\"abc\"".into()
            }
        );
        let b = Envelope::parse(
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"x"}]"#,
        )
        .unwrap();
        assert_eq!(b, Envelope::Batch { len: 2 });
    }

    #[test]
    fn escaped_method_names_are_decoded() {
        let r = Envelope::parse(br#"{"id":1,"method":"tools\/list"}"#).unwrap();
        assert_eq!(r.method(), Some("tools/list"));
    }

    #[test]
    fn unknown_methods_get_a_bounded_label() {
        let r = Envelope::parse(br#"{"id":1,"method":"x/y/z"}"#).unwrap();
        assert_eq!(r.label(), "other");
    }

    #[test]
    fn bad_bodies_are_classified() {
        assert!(matches!(
            Envelope::parse(b"{not json"),
            Err(EnvelopeError::NotJson(_))
        ));
        assert!(matches!(
            Envelope::parse(b"hello"),
            Err(EnvelopeError::NotJson(_))
        ));
        assert!(matches!(
            Envelope::parse(b""),
            Err(EnvelopeError::NotJson(_))
        ));
        assert_eq!(Envelope::parse(b"{}"), Err(EnvelopeError::NotAMessage));
        assert_eq!(
            Envelope::parse(br#"{"method":5}"#),
            Err(EnvelopeError::NotAMessage)
        );
    }

    #[test]
    fn initialize_params_are_kept_raw() {
        let body = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
        let (params, version) = initialize_params(body).unwrap();
        assert_eq!(
            params,
            r#"{"protocolVersion":"2025-06-18","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}"#
        );
        assert_eq!(version.as_deref(), Some("2025-06-18"));
        assert!(initialize_params(b"{}").is_none());
    }

    #[test]
    fn error_bodies_are_valid_json_rpc() {
        let b = error_body(Some("\"r1\""), code::PARSE_ERROR, "bad \"json\"");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["id"], "r1");
        assert_eq!(v["error"]["code"], -32700);
        assert_eq!(v["error"]["message"], "bad \"json\"");
        let v: serde_json::Value = serde_json::from_slice(&error_body(None, -32000, "x")).unwrap();
        assert!(v["id"].is_null());
    }
}

/// Arbitrary and mutated network bytes: the envelope reader must answer, never panic.
#[cfg(test)]
mod fuzz {
    use super::*;

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const SEEDS: &[&[u8]] = &[
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}}"#,
        br#"[{"jsonrpc":"2.0","id":"a","method":"ping"},{"jsonrpc":"2.0","method":"n"}]"#,
        br#"{"jsonrpc":"2.0","id":null,"result":{"content":[{"type":"text","text":"\u00e9"}]}}"#,
        br#"{"method":"\ud83d\ude00","id":1e400}"#,
    ];
    const TOKENS: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b"\\",
        b":",
        b",",
        b"null",
        b"\xff",
        b"\x00",
        b"\"method\"",
        b"\"id\"",
    ];

    #[test]
    fn never_panics_on_mutated_messages() {
        let mut rng = Rng(0x5eed_cafe_f00d_d00d);
        for round in 0..20_000 {
            let mut input = SEEDS[round % SEEDS.len()].to_vec();
            for _ in 0..=rng.below(4) {
                let pos = rng.below(input.len() + 1);
                match rng.below(3) {
                    0 if !input.is_empty() => {
                        let end = (pos + rng.below(8)).min(input.len());
                        input.drain(pos.min(end)..end);
                    }
                    1 => {
                        let t = TOKENS[rng.below(TOKENS.len())];
                        input.splice(pos..pos, t.iter().copied());
                    }
                    _ => {
                        let b = rng.next() as u8;
                        input.insert(pos, b);
                    }
                }
            }
            let _ = Envelope::parse(&input);
        }
    }

    #[test]
    fn never_panics_on_random_bytes() {
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let len = rng.below(64);
            let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = Envelope::parse(&input);
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut deep = b"{\"id\":1,\"method\":\"x\",\"params\":".to_vec();
        deep.extend(std::iter::repeat_n(b'[', 100_000));
        assert!(Envelope::parse(&deep).is_err());
    }
}

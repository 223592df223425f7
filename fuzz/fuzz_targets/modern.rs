//! The 2026-07-28 reading of a request (`protocol::modern::read`, which admission runs on every
//! modern POST, before hub policy) and the sealed MRTR state (`protocol::request_state::open`,
//! which every pod runs on a `requestState` a client echoes).
//!
//! Properties: never panics; whatever `read` accepts is a request or notification of a method
//! the era knows (a request's `Mcp-Method` equal to its `method`), whose `MCP-Protocol-Version`
//! header is a modern version, whose `_meta` version (if any) equals the header, and, for the
//! methods that name something, whose `Mcp-Name` header decodes to that very name; the params
//! it hands on carry no `io.modelcontextprotocol/` key in `_meta`, no `inputResponses` and no
//! `requestState`. A refusal has a status of 400 or 404 and a negative code. `open` accepts
//! no arbitrary string under the fuzz key, and a sealed state opens to itself only under its
//! own key and before its expiry.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_sidecar::protocol::modern::{self, Head, MODERN_METHODS};
use mcp_sidecar::protocol::request_state::{self, State, StateError};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // three header values and a body, split at the first three 0x00 bytes
    let mut parts = data.splitn(4, |b| *b == 0);
    let (Some(version), Some(method), Some(name), Some(body)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let opt =
        |v: &'static [u8], raw: &'_ [u8]| -> Option<Vec<u8>> { (raw != v).then(|| raw.to_vec()) };
    // a lone "-" stands for an absent header
    let (version, method, name) = (opt(b"-", version), opt(b"-", method), opt(b"-", name));
    let head = Head {
        version: version.as_deref(),
        method: method.as_deref(),
        name: name.as_deref(),
    };
    match modern::read(&head, body) {
        Ok(req) => {
            let v = std::str::from_utf8(version.as_deref().expect("accepted without a version"))
                .expect("an accepted version is UTF-8");
            assert!(modern::is_modern_version(v), "accepted version {v:?}");
            if !req.is_notification() {
                assert!(MODERN_METHODS.contains(&req.method.as_str()));
                assert_eq!(method.as_deref(), Some(req.method.as_bytes()));
            }
            let full: Value = serde_json::from_slice(body).expect("accepted body is JSON");
            if let Some(meta_v) =
                full.pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
            {
                assert_eq!(meta_v.as_str(), Some(v));
            }
            let field = match req.method.as_str() {
                "tools/call" | "prompts/get" => Some("name"),
                "resources/read" => Some("uri"),
                _ => None,
            };
            if let (Some(field), false) = (field, req.is_notification()) {
                let body_name = full["params"][field]
                    .as_str()
                    .expect("a named method has its name");
                let decoded =
                    modern::decode_header_value(name.as_deref().expect("Mcp-Name present"))
                        .expect("an accepted Mcp-Name decodes");
                assert_eq!(decoded, body_name);
                assert_eq!(req.name.as_deref(), Some(body_name));
            }
            assert!(
                !req.params.contains_key("inputResponses")
                    || !modern::INPUT_METHODS.contains(&req.method.as_str())
            );
            assert!(
                !req.params.contains_key("requestState")
                    || !modern::INPUT_METHODS.contains(&req.method.as_str())
            );
            if let Some(Value::Object(meta)) = req.params.get("_meta") {
                assert!(meta.keys().all(|k| !k.starts_with(modern::meta::PREFIX)));
            }
        }
        Err(refused) => {
            assert!(matches!(refused.status(), 400 | 404));
            assert!(refused.code() < 0);
            let _ = refused.message();
        }
    }

    // the sealed state: the body as a state string, and a state built from the input
    let text = String::from_utf8_lossy(body);
    assert!(request_state::open(b"fuzz-key", &text, 0).is_err() || text.starts_with("mcps1."));
    let state = State {
        pod: String::from_utf8_lossy(version.as_deref().unwrap_or_default()).into_owned(),
        handle: String::from_utf8_lossy(method.as_deref().unwrap_or_default()).into_owned(),
        principal: String::from_utf8_lossy(name.as_deref().unwrap_or_default()).into_owned(),
        digest: text.chars().take(64).collect(),
        expires: body.len() as u64,
    };
    let sealed = request_state::seal(b"fuzz-key", &state);
    if sealed.len() <= request_state::MAX_LEN {
        assert_eq!(
            request_state::open(b"fuzz-key", &sealed, state.expires),
            Ok(state.clone())
        );
        assert_eq!(
            request_state::open(b"other-key", &sealed, 0),
            Err(StateError::Invalid)
        );
        assert_eq!(
            request_state::open(b"fuzz-key", &sealed, state.expires + 1),
            Err(StateError::Expired)
        );
    }
});

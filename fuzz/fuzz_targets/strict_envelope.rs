//! Differential: the strict body reading the proxy decides by (`protocol::strict::read`)
//! against the cheap envelope reader (`Envelope::parse`, metrics and a few routing choices)
//! and a plain `serde_json::Value` parse. Whatever strict accepts, the others must read the
//! same way: same method, same id (compared as JSON values), same batch length, same tool
//! names. "Agree or refuse": strict may refuse what the others accept, never the reverse.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_sidecar::protocol::jsonrpc::{Envelope, EnvelopeError};
use mcp_sidecar::protocol::strict::{self, Kind};
use serde_json::Value;

/// A raw JSON id as strict keeps it: parsed once and written back. (Comparing by parsing
/// strict's id again would not do: without serde_json's `float_roundtrip` feature, reading a
/// written float back can move it by one unit in the last place.)
fn normal(raw: &str) -> String {
    serde_json::from_str::<Value>(raw)
        .unwrap_or_else(|e| panic!("id {raw:?} is not JSON: {e}"))
        .to_string()
}

fuzz_target!(|data: &[u8]| {
    let Some((&b, body)) = data.split_first() else {
        return;
    };
    let max_batch = usize::from(b % 8) + 1;
    let reading = strict::read(body, max_batch);
    let envelope = Envelope::parse(body);
    let Ok(reading) = reading else {
        return;
    };

    // a full parse must succeed and read the same facts
    let full: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("strict accepted a body serde_json refuses: {e}"));
    let items: Vec<&Value> = match &full {
        Value::Array(items) => {
            assert!(reading.batch, "an array not read as a batch");
            assert!(!items.is_empty() && items.len() <= max_batch);
            items.iter().collect()
        }
        v => {
            assert!(!reading.batch, "a single message read as a batch");
            vec![v]
        }
    };
    assert_eq!(items.len(), reading.messages.len());
    let mut tools = Vec::new();
    for (m, v) in reading.messages.iter().zip(&items) {
        assert_eq!(v.get("jsonrpc").and_then(Value::as_str), Some("2.0"));
        let method = v.get("method").and_then(Value::as_str);
        assert_eq!(m.method.as_deref(), method, "method differs");
        assert_eq!(m.id, v.get("id").map(Value::to_string), "id differs");
        let kind = match (method, v.get("id")) {
            (Some(_), Some(_)) => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, Some(_)) => Kind::Response,
            (None, None) => panic!("strict accepted a message without method and id"),
        };
        assert_eq!(m.kind, kind);
        let tool = (kind == Kind::Request && method == Some("tools/call")).then(|| {
            v.get("params")
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("")
        });
        assert_eq!(m.tool.as_deref(), tool, "tool name differs");
        tools.extend(tool);
    }
    assert_eq!(reading.called_tools().collect::<Vec<_>>(), tools);

    // the envelope reader must agree
    if reading.batch {
        assert_eq!(
            envelope,
            Ok(Envelope::Batch {
                len: reading.messages.len()
            }),
            "envelope of an accepted batch"
        );
        return;
    }
    let m = &reading.messages[0];
    match (&m.kind, &envelope) {
        (Kind::Request, Ok(Envelope::Request { method, id })) => {
            assert_eq!(m.method.as_deref(), Some(method.as_str()), "request method");
            assert_eq!(m.id, Some(normal(id)), "request id");
        }
        (Kind::Notification, Ok(Envelope::Notification { method })) => {
            assert_eq!(
                m.method.as_deref(),
                Some(method.as_str()),
                "notification method"
            );
        }
        (Kind::Response, Ok(Envelope::Response { id })) => {
            assert_eq!(m.id, Some(normal(id)), "response id");
        }
        (kind, env) => panic!("strict read a {kind:?} {m:?}, the envelope {env:?}"),
    }
});

//! SSE framing and rewriting (`protocol::messages`): arbitrary bytes cut at arbitrary points
//! (the cuts come from the input), a small `max_held`.
//!
//! Properties: never panics; `EventScanner` finds the same event boundaries however the bytes
//! are cut (against the whole input at once); `MessageStream` never holds more than `max_held`
//! plus the chunk just fed; with an edit that changes nothing and no limit hit (the error body
//! never asked for), the output bytes are the input bytes, in both framings.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_sidecar::protocol::messages::{EventScanner, MessageStream};
use mcp_sidecar_fuzz::{pieces, seed};
use serde_json::Value;
use std::cell::Cell;

/// The events `EventScanner` finds when the stream arrives in these pieces, and what is left.
fn events(parts: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut scanner = EventScanner::default();
    let mut held = Vec::new();
    let mut found = Vec::new();
    for part in parts {
        held.extend_from_slice(part);
        while let Some(n) = scanner.next_end(&held) {
            assert!(
                n > 0 && n <= held.len(),
                "event length {n} of {}",
                held.len()
            );
            found.push(held.drain(..n).collect());
        }
    }
    (found, held)
}

fn bump(v: &mut Value) -> bool {
    match v.get_mut("id") {
        Some(id) => {
            *id = Value::from(id.as_i64().unwrap_or(0).wrapping_add(1));
            true
        }
        None => false,
    }
}

fuzz_target!(|data: &[u8]| {
    // byte 0: max_held; byte 1: framing, hint, edit; bytes 2..6: the cuts; the rest: the body
    if data.len() < 2 {
        return;
    }
    // at least 1: the limit in the config must be > 0
    let max_held = match data[0] {
        b if b & 0x80 != 0 => usize::from(b & 0x7f) * 32 + 1,
        b => usize::from(b) + 1,
    };
    let flags = data[1];
    let (cut_seed, body) = seed(&data[2..], 4);
    let parts = pieces(body, cut_seed, 1 + usize::from(flags >> 4) * 4);

    // event boundaries do not depend on the cuts
    let whole = events(&[body]);
    let cut = events(&parts);
    assert_eq!(whole, cut, "event boundaries depend on the cuts");
    let (found, rest) = &whole;
    assert_eq!([found.concat(), rest.clone()].concat(), body);

    let sse = flags & 1 == 0;
    let hint: Option<&[u8]> = (flags & 2 != 0).then_some(b"id");
    let identity = flags & 4 == 0;
    let content_type = if sse {
        "text/event-stream; charset=utf-8"
    } else {
        "application/json"
    };
    let mut stream = MessageStream::for_content_type(content_type, max_held).expect("known type");
    let errors = Cell::new(0usize);
    let error_body = || {
        errors.set(errors.get() + 1);
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"too large"}}"#.to_vec()
    };
    let mut keep = |_: &mut Value| false;
    let mut out = Vec::new();
    let last = flags & 8 != 0;
    for (i, part) in parts.iter().enumerate() {
        let end = last && i + 1 == parts.len();
        let edit: &mut dyn FnMut(&mut Value) -> bool = if identity { &mut keep } else { &mut bump };
        out.extend_from_slice(&stream.feed(Some(part), end, hint, edit, &error_body));
        assert!(
            stream.held_len() <= max_held + part.len(),
            "held {} > max_held {max_held} + chunk {}",
            stream.held_len(),
            part.len()
        );
    }
    if !last || parts.is_empty() {
        let edit: &mut dyn FnMut(&mut Value) -> bool = if identity { &mut keep } else { &mut bump };
        out.extend_from_slice(&stream.feed(None, true, hint, edit, &error_body));
    }
    if identity && errors.get() == 0 {
        assert_eq!(out, body, "an identity edit changed the bytes");
    }
});

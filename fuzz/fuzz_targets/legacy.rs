//! Legacy HTTP+SSE (`legacy`): reading the stream (`sse::Boundary`, `sse::EndpointFinder`) and
//! the session a message URL names (`message_session`, `endpoint_session`,
//! `session_id_from_query`).
//!
//! Properties: never panics. `Boundary` says "between events" exactly where
//! `protocol::messages::EventScanner` (an independent implementation) has taken every byte
//! into complete events. `EndpointFinder` with no rewrite passes the bytes unchanged and finds
//! the same endpoint however the stream is cut; with a rewrite it changes only that. A message
//! URL that names a session (`Ok(Some((_, id)))`) has an id of 1..=128 `[A-Za-z0-9_-]`, and a
//! reference decoder (Python's `parse_qsl`/`unquote`: `+` is a space, `%XX` a byte, anything
//! else literal; every `&`-separated pair, with or without `=`) finds exactly that one session
//! parameter, with that value; `Ok(None)` means the reference finds none.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_sidecar::legacy::sse::{Boundary, EndpointFinder};
use mcp_sidecar::legacy::{endpoint_session, message_session, session_id_from_query};
use mcp_sidecar::protocol::messages::EventScanner;
use mcp_sidecar_fuzz::{pieces, seed};

/// `%XX` and `+` decoded as Python's `unquote_plus` does (bytes, before UTF-8 decoding).
fn unquote_plus(raw: &str) -> Vec<u8> {
    let b = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = |c: u8| (c as char).to_digit(16).unwrap() as u8;
                out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Every pair of the query whose decoded name is a session parameter: (decoded name, raw value).
fn reference_sessions(query: &str) -> Vec<(Vec<u8>, &str)> {
    query
        .split('&')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = unquote_plus(name);
            (name == b"session_id" || name == b"sessionId").then_some((name, value))
        })
        .collect()
}

fn check_query(query: &str) {
    let verdict = message_session(query);
    let reference = reference_sessions(query);
    match verdict {
        Ok(Some((param, id))) => {
            assert!(
                (1..=128).contains(&id.len())
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "unroutable id {id:?} accepted from {query:?}"
            );
            assert_eq!(
                reference.len(),
                1,
                "{query:?}: the sidecar read one session ({param}={id}), a server decodes {reference:?}"
            );
            assert_eq!(reference[0].0, param.as_bytes());
            assert_eq!(reference[0].1, id);
            assert_eq!(unquote_plus(reference[0].1), id.as_bytes());
            assert_eq!(session_id_from_query(query), Some(id));
        }
        Ok(None) => {
            assert!(
                reference.is_empty(),
                "{query:?}: the sidecar read no session, a server decodes {reference:?}"
            );
            assert_eq!(session_id_from_query(query), None);
        }
        Err(_) => assert_eq!(session_id_from_query(query), None),
    }
}

/// Whether the scanner has taken all of `sent` into complete events. A final CR already ends
/// its line for `Boundary` (a following LF is ignored), while the scanner waits to see whether
/// an LF follows: show it one more byte that is no line end, and see whether it took `sent`.
fn scanner_between(sent: &[u8]) -> bool {
    let mut bytes = sent.to_vec();
    bytes.push(b'x');
    let mut scanner = EventScanner::default();
    let mut start = 0;
    while let Some(n) = scanner.next_end(&bytes[start..]) {
        start += n;
    }
    start == sent.len()
}

fn keep(_: &str) -> Option<String> {
    None
}

fn prefixed(e: &str) -> Option<String> {
    Some(format!("/p{e}"))
}

/// Pushes the stream in these pieces: the bytes out and the endpoint found.
fn find(parts: &[&[u8]], rewrite: &dyn Fn(&str) -> Option<String>) -> (Vec<u8>, Option<String>) {
    let mut finder = EndpointFinder::default();
    let mut out = Vec::new();
    let mut endpoint = None;
    for part in parts {
        let pushed = finder.push(part, rewrite);
        out.extend(pushed.out);
        if let Some(e) = pushed.endpoint {
            assert!(endpoint.is_none(), "two endpoints");
            endpoint = Some(e);
        }
    }
    (out, endpoint)
}

fuzz_target!(|data: &[u8]| {
    let (cut_seed, body) = seed(data, 3);
    let parts = pieces(body, cut_seed, 24);

    // the input read as a message URL's query, and as an endpoint
    let text = String::from_utf8_lossy(body);
    check_query(&text);
    if let Some((param, id)) = endpoint_session(&text) {
        let query = text.split_once('?').unwrap().1;
        let query = query.split('#').next().unwrap();
        assert_eq!(message_session(query), Ok(Some((param, id))));
        check_query(query);
    }

    // Boundary against EventScanner, at the cuts (at most 64 of them checked: each check scans
    // the bytes so far again)
    let mut boundary = Boundary::default();
    assert!(boundary.between_events());
    let mut sent = 0;
    let every = parts.len() / 64 + 1;
    for (i, part) in parts.iter().enumerate() {
        boundary.feed(part);
        sent += part.len();
        if i % every == 0 || i + 1 == parts.len() {
            assert_eq!(
                boundary.between_events(),
                scanner_between(&body[..sent]),
                "Boundary and EventScanner disagree after {sent} bytes"
            );
        }
    }

    // the endpoint finder: without a rewrite the bytes pass unchanged (those of an event not
    // yet complete stay held: a prefix), and the endpoint is the same whatever the cuts (the
    // input is far below its 16 KiB give-up limit)
    let (out_whole, endpoint_whole) = find(&[body], &keep);
    assert!(
        body.starts_with(&out_whole),
        "the finder changed the stream without a rewrite"
    );
    let (out_cut, endpoint_cut) = find(&parts, &keep);
    assert_eq!(
        out_cut, out_whole,
        "the finder's output depends on the cuts"
    );
    assert_eq!(
        endpoint_whole, endpoint_cut,
        "the endpoint depends on the cuts"
    );
    if endpoint_whole.is_some() {
        assert_eq!(out_whole, body, "bytes held after the endpoint was found");
    }
    if let Some(e) = &endpoint_whole {
        if let Some((param, id)) = endpoint_session(e) {
            check_query(&format!("{param}={id}"));
        }
    }
    let (out_rw, endpoint_rw) = find(&parts, &prefixed);
    assert_eq!(
        endpoint_rw,
        endpoint_whole.as_ref().map(|e| format!("/p{e}"))
    );
    match &endpoint_whole {
        Some(e) if !e.contains('\u{FFFD}') => assert_eq!(out_rw.len(), body.len() + 2),
        Some(_) => {}
        None => assert_eq!(out_rw, out_whole),
    }
});

//! HTTP/1.1 chunked decoding (`protocol::chunked::Chunked`).
//!
//! Properties: never panics; decoding an input in one piece, byte by byte and in pieces cut
//! where the input says gives the same body bytes, the same first error and the same done
//! state; and round trip: a body encoded as chunked (chunk sizes, hex case, leading zeros,
//! extensions, CRLF or bare LF, trailers all chosen by the input) decodes to exactly that body,
//! done, ignoring whatever follows the end.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_sidecar::protocol::chunked::{Chunked, Malformed};
use mcp_sidecar_fuzz::{pieces, seed, Rng};

fn decode(parts: &[&[u8]]) -> (Vec<u8>, Result<(), Malformed>, bool) {
    let mut d = Chunked::default();
    let mut out = Vec::new();
    for part in parts {
        if let Err(e) = d.decode(part, &mut out) {
            return (out, Err(e), d.is_done());
        }
    }
    (out, Ok(()), d.is_done())
}

fn encode(body: &[u8], rng: &mut Rng) -> Vec<u8> {
    let eol = |rng: &mut Rng| -> &'static [u8] {
        if rng.below(4) == 0 {
            b"\n"
        } else {
            b"\r\n"
        }
    };
    let mut wire = Vec::new();
    let mut rest = body;
    loop {
        let size = if rest.is_empty() {
            0
        } else {
            (1 + rng.below(rest.len().min(64))).min(rest.len())
        };
        let hex = if rng.below(2) == 0 {
            format!("{size:x}")
        } else {
            format!("{size:X}")
        };
        let zeros = rng.below(16 - hex.len());
        wire.extend(std::iter::repeat_n(b'0', zeros));
        wire.extend_from_slice(hex.as_bytes());
        match rng.below(4) {
            0 => wire.extend_from_slice(b";name=value"),
            1 => wire.extend_from_slice(b" ; a=\"q;x\" ;b"),
            2 => wire.extend_from_slice(b"\t"),
            _ => {}
        }
        wire.extend_from_slice(eol(rng));
        if size == 0 {
            break;
        }
        wire.extend_from_slice(&rest[..size]);
        wire.extend_from_slice(eol(rng));
        rest = &rest[size..];
    }
    for _ in 0..rng.below(3) {
        wire.extend_from_slice(b"X-Trailer: 1");
        wire.extend_from_slice(eol(rng));
    }
    wire.extend_from_slice(eol(rng));
    wire
}

fuzz_target!(|data: &[u8]| {
    let (s, input) = seed(data, 4);

    // the same reading however the input is cut
    let whole = decode(&[input]);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(decode(&bytes), whole, "byte by byte differs from one piece");
    let cut = pieces(input, s, 9);
    assert_eq!(decode(&cut), whole, "cut input differs from one piece");

    // round trip, with whatever follows the end ignored
    let mut rng = Rng::new(s);
    let mut wire = encode(input, &mut rng);
    let done_at = wire.len();
    if rng.below(2) == 0 {
        wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
    }
    for parts in [vec![&wire[..]], pieces(&wire, s | 1, 7)] {
        let (out, result, done) = decode(&parts);
        assert_eq!(
            result,
            Ok(()),
            "a valid encoding refused: {:?}",
            String::from_utf8_lossy(&wire[..done_at])
        );
        assert!(done, "a complete encoding not done");
        assert_eq!(out, input, "round trip changed the body");
    }
});

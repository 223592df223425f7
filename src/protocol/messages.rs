//! Editing JSON-RPC messages in a response body on the fly, in either framing a Streamable
//! HTTP server answers with: one JSON body (held whole, edited at its end) or an SSE stream
//! (each event held until complete, edited, and sent on at once). Used by tool filtering and
//! by the shared-session multiplexer, which restores request ids.
//!
//! What is held is bounded (`max_held`): a larger JSON body or SSE event is replaced by an
//! error, never passed on unedited. Events are found in one pass over the bytes, however the
//! stream is cut into chunks.

use bytes::Bytes;
use serde_json::Value;

/// Changes one JSON-RPC message (or batch) in place; returns whether anything changed.
pub type Edit<'a> = dyn FnMut(&mut Value) -> bool + 'a;

/// The state of editing one response body.
#[derive(Debug)]
pub struct MessageStream {
    framing: Framing,
    /// The most bytes held at once: a JSON body, or one SSE event.
    max_held: usize,
}

#[derive(Debug)]
enum Framing {
    /// `application/json`: the whole body is held, edited at its end.
    Json {
        held: Vec<u8>,
        /// The body outgrew the limit: nothing more is held, the answer is an error.
        too_large: bool,
    },
    /// `text/event-stream`: each event is held until complete, then sent on (edited).
    Sse {
        held: Vec<u8>,
        scanner: EventScanner,
        /// The event being received outgrew the limit: its error went out, its bytes are
        /// dropped until it ends.
        dropping: bool,
    },
}

impl MessageStream {
    /// For a response's content type; `None` when it is neither JSON nor SSE.
    pub fn for_content_type(content_type: &str, max_held: usize) -> Option<MessageStream> {
        let ct = content_type.split(';').next().unwrap_or("").trim();
        let framing = if ct.eq_ignore_ascii_case("application/json") {
            Framing::Json {
                held: Vec::new(),
                too_large: false,
            }
        } else if ct.eq_ignore_ascii_case("text/event-stream") {
            Framing::Sse {
                held: Vec::new(),
                scanner: EventScanner::default(),
                dropping: false,
            }
        } else {
            return None;
        };
        Some(MessageStream { framing, max_held })
    }

    /// How many bytes are held at the moment (a JSON body, or the SSE event in progress); the
    /// fuzz targets check it stays bounded.
    pub fn held_len(&self) -> usize {
        match &self.framing {
            Framing::Json { held, .. } | Framing::Sse { held, .. } => held.len(),
        }
    }

    /// Takes the next body chunk and returns what may go downstream now. With a `hint`, an SSE
    /// event whose text does not contain it passes without being parsed, and one that does
    /// but cannot be read is replaced by the error (the edit is a decision, such as filtering,
    /// that must not be skipped).
    pub fn feed(
        &mut self,
        chunk: Option<&[u8]>,
        end: bool,
        hint: Option<&[u8]>,
        edit: &mut Edit,
        error_body: &dyn Fn() -> Vec<u8>,
    ) -> Bytes {
        let max = self.max_held;
        let chunk = chunk.unwrap_or_default();
        match &mut self.framing {
            Framing::Json { held, too_large } => {
                if *too_large || held.len() + chunk.len() > max {
                    *too_large = true;
                    *held = Vec::new();
                } else {
                    held.extend_from_slice(chunk);
                }
                if !end {
                    return Bytes::new();
                }
                if *too_large {
                    return Bytes::from(error_body());
                }
                let body = std::mem::take(held);
                Bytes::from(edit_json(&body, edit).unwrap_or(body))
            }
            Framing::Sse {
                held,
                scanner,
                dropping,
            } => {
                held.extend_from_slice(chunk);
                let mut out = Vec::new();
                let mut start = 0;
                loop {
                    let n = match scanner.next_end(&held[start..]) {
                        Some(n) => n,
                        // the stream ends: what is left is its last event, unterminated
                        None if end && start < held.len() && !*dropping => held.len() - start,
                        None => break,
                    };
                    let event = &held[start..start + n];
                    start += n;
                    if std::mem::take(dropping) {
                        continue;
                    }
                    if n > max {
                        // whole in one chunk, but past the limit all the same
                        push_error_event(&mut out, error_body);
                        continue;
                    }
                    let wanted = hint.is_none_or(|h| event.windows(h.len()).any(|w| w == h));
                    if !wanted {
                        out.extend_from_slice(event);
                        continue;
                    }
                    match edit_event(event, edit) {
                        Edited::Yes(e) => out.extend_from_slice(&e),
                        Edited::No => out.extend_from_slice(event),
                        Edited::Unreadable if hint.is_some() => {
                            push_error_event(&mut out, error_body)
                        }
                        Edited::Unreadable => out.extend_from_slice(event),
                    }
                }
                // one shift per chunk, not one per event
                held.drain(..start);
                if !*dropping && held.len() > max {
                    *dropping = true;
                    push_error_event(&mut out, error_body);
                }
                if *dropping {
                    // keep only what the scanner has not looked at yet
                    held.drain(..scanner.pos);
                    scanner.pos = 0;
                }
                Bytes::from(out)
            }
        }
    }
}

fn push_error_event(out: &mut Vec<u8>, error_body: &dyn Fn() -> Vec<u8>) {
    out.extend_from_slice(b"event: message\ndata: ");
    out.extend_from_slice(&error_body());
    out.extend_from_slice(b"\n\n");
}

/// Finds where SSE events end (a blank line; lines end in CRLF, LF or CR), looking at each
/// byte once however the stream is split into chunks.
#[derive(Debug)]
pub struct EventScanner {
    /// How far into the bytes not yet taken the scan has come.
    pos: usize,
    /// The scan is at the start of a line.
    line_start: bool,
}

impl Default for EventScanner {
    fn default() -> Self {
        EventScanner {
            pos: 0,
            line_start: true,
        }
    }
}

impl EventScanner {
    /// The length of the first complete event in `buf`, which holds the bytes not yet taken:
    /// the caller takes the event off the front once it is returned. Scanning resumes where it
    /// stopped.
    pub fn next_end(&mut self, buf: &[u8]) -> Option<usize> {
        while let Some(&b) = buf.get(self.pos) {
            let terminator = match b {
                b'\n' => 1,
                // a CR may be the first half of a CRLF: wait for the next byte
                b'\r' => match buf.get(self.pos + 1) {
                    None => return None,
                    Some(b'\n') => 2,
                    Some(_) => 1,
                },
                _ => {
                    self.pos += 1;
                    self.line_start = false;
                    continue;
                }
            };
            self.pos += terminator;
            if self.line_start {
                let end = self.pos;
                self.pos = 0;
                return Some(end);
            }
            self.line_start = true;
        }
        None
    }
}

/// Edits one complete JSON body; `None` when it is unparseable or nothing changed.
pub fn edit_json(body: &[u8], edit: &mut Edit) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    edit(&mut v).then(|| serde_json::to_vec(&v).expect("a Value serialises"))
}

/// The lines of an SSE event, whichever line ending it uses.
fn lines(event: &str) -> impl Iterator<Item = &str> {
    event
        .split('\n')
        .flat_map(|l| l.split('\r'))
        .filter(|l| !l.is_empty())
}

/// The JSON of an SSE event's `data:` lines, and its other lines.
pub fn event_data(event: &str) -> (String, Vec<&str>) {
    let mut data = String::new();
    let mut others = Vec::new();
    for line in lines(event) {
        if let Some(d) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        } else {
            others.push(line);
        }
    }
    (data, others)
}

enum Edited {
    Yes(Vec<u8>),
    No,
    /// Data that is not a JSON message.
    Unreadable,
}

/// One SSE event with its message edited. An event without data (a comment, a priming event)
/// needs no change.
fn edit_event(event: &[u8], edit: &mut Edit) -> Edited {
    let Ok(text) = std::str::from_utf8(event) else {
        return Edited::Unreadable;
    };
    let (data, others) = event_data(text);
    if data.is_empty() {
        return Edited::No;
    }
    let Ok(mut v) = serde_json::from_str::<Value>(&data) else {
        return Edited::Unreadable;
    };
    if !edit(&mut v) {
        return Edited::No;
    }
    let mut out = Vec::with_capacity(event.len());
    for line in others {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&serde_json::to_vec(&v).expect("a Value serialises"));
    out.extend_from_slice(b"\n\n");
    Edited::Yes(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(stream: &[u8], cut: usize) -> Vec<Vec<u8>> {
        let mut s = EventScanner::default();
        let mut held = Vec::new();
        let mut events = Vec::new();
        for piece in stream.chunks(cut) {
            held.extend_from_slice(piece);
            while let Some(n) = s.next_end(&held) {
                events.push(held.drain(..n).collect());
            }
        }
        events
    }

    #[test]
    fn events_end_at_blank_lines_in_every_line_ending_and_every_cut() {
        let stream = b"data: a\n\ndata: b\r\n\r\nid: 1\rdata: c\r\rdata: d\r\n\n: ping\n\n";
        let expected: Vec<&[u8]> = vec![
            b"data: a\n\n",
            b"data: b\r\n\r\n",
            b"id: 1\rdata: c\r\r",
            b"data: d\r\n\n",
            b": ping\n\n",
        ];
        for cut in 1..=stream.len() {
            assert_eq!(ends(stream, cut), expected, "cut {cut}");
        }
    }

    fn bump(v: &mut Value) -> bool {
        match v.get_mut("id") {
            Some(id) => {
                *id = Value::from(id.as_i64().unwrap_or(0) + 100);
                true
            }
            None => false,
        }
    }

    fn err() -> Vec<u8> {
        br#"{"error":"too large"}"#.to_vec()
    }

    #[test]
    fn cr_only_events_are_edited() {
        let mut m = MessageStream::for_content_type("text/event-stream", 1024).unwrap();
        // the last CR may be half a CRLF: the event is complete with the next byte
        let out = m.feed(
            Some(b"event: message\rdata: {\"id\":1}\r\r"),
            false,
            None,
            &mut bump,
            &err,
        );
        assert!(out.is_empty());
        let out = m.feed(Some(b"data: {\"id\":2}\r\r"), true, None, &mut bump, &err);
        assert_eq!(
            &out[..],
            b"event: message\ndata: {\"id\":101}\n\ndata: {\"id\":102}\n\n"
        );
    }

    #[test]
    fn a_held_event_past_the_limit_becomes_an_error_and_its_rest_is_dropped() {
        let mut m = MessageStream::for_content_type("text/event-stream", 64).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&m.feed(Some(b"data: {\"id\":1}\n\n"), false, None, &mut bump, &err));
        let big = format!("data: {{\"id\":2,\"x\":\"{}\"}}", "y".repeat(200));
        for piece in big.as_bytes().chunks(16) {
            out.extend_from_slice(&m.feed(Some(piece), false, None, &mut bump, &err));
        }
        out.extend_from_slice(&m.feed(
            Some(b"\n\ndata: {\"id\":3}\n\n"),
            true,
            None,
            &mut bump,
            &err,
        ));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "data: {\"id\":101}\n\nevent: message\ndata: {\"error\":\"too large\"}\n\ndata: {\"id\":103}\n\n"
        );
    }

    #[test]
    fn held_bytes_stay_bounded_while_an_oversized_event_streams_on() {
        let mut m = MessageStream::for_content_type("text/event-stream", 64).unwrap();
        m.feed(Some(b"data: "), false, None, &mut bump, &err);
        for _ in 0..1000 {
            m.feed(Some(&[b'x'; 100]), false, None, &mut bump, &err);
            let Framing::Sse { held, .. } = &m.framing else {
                unreachable!()
            };
            assert!(held.len() <= 164, "{}", held.len());
        }
    }

    #[test]
    fn a_json_answer_past_the_limit_is_an_error() {
        let mut m = MessageStream::for_content_type("application/json", 8).unwrap();
        assert!(m
            .feed(Some(b"{\"id\":1,"), false, None, &mut bump, &err)
            .is_empty());
        let out = m.feed(Some(b"\"x\":2}"), true, None, &mut bump, &err);
        assert_eq!(&out[..], &err()[..]);
        let mut ok = MessageStream::for_content_type("application/json", 64).unwrap();
        let out = ok.feed(Some(b"{\"id\":1}"), true, None, &mut bump, &err);
        assert_eq!(&out[..], b"{\"id\":101}");
    }

    #[test]
    fn an_unreadable_event_is_an_error_when_the_edit_is_a_decision() {
        let mut m = MessageStream::for_content_type("text/event-stream", 1024).unwrap();
        let out = m.feed(
            Some(b"data: {\"tools\": [\n\n"),
            false,
            Some(b"tools"),
            &mut bump,
            &err,
        );
        assert_eq!(
            &out[..],
            b"event: message\ndata: {\"error\":\"too large\"}\n\n"
        );
        // without a decision riding on it, it passes; comments always pass
        let mut m = MessageStream::for_content_type("text/event-stream", 1024).unwrap();
        let out = m.feed(Some(b"data: {\n\n: ping\n\n"), false, None, &mut bump, &err);
        assert_eq!(&out[..], b"data: {\n\n: ping\n\n");
    }

    #[test]
    fn scanning_is_linear_in_the_bytes_received() {
        // a 1 MiB event arriving a byte at a time: each byte is looked at once (a rescan from
        // the start on every chunk would take minutes here)
        let mut m = MessageStream::for_content_type("text/event-stream", 8 << 20).unwrap();
        m.feed(Some(b"data: \""), false, None, &mut bump, &err);
        for _ in 0..(1 << 20) {
            m.feed(Some(b"x"), false, None, &mut bump, &err);
        }
        let out = m.feed(Some(b"\"\n\n"), true, None, &mut bump, &err);
        assert_eq!(out.len(), 7 + (1 << 20) + 3);
    }
}
